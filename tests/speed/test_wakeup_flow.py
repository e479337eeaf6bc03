"""The whole flow driven by wake-ups: with a poll of an hour, a study sent by storescu reaches a storescp reviewer
and the reviewer's report reaches the source's storescp, which only wake-ups can do (each stage runs once at
start, before the study exists). Across two nodes on one PostgreSQL database, the second node's stage is woken
by NOTIFY. With wake-ups off, the poll alone still delivers (a lost wake-up costs one poll, nothing more)."""

from __future__ import annotations

import json

import pydicom
import pytest

from gateway.demo import DemoPatient
from support.peers import DcmtkStoreSCP, GatewayProcess, storescu, wait_until

HOUR = 3600.0
PATIENT = DemoPatient()
REFERRAL = {"source": "st-marys", "accession_number": PATIENT.accession, "urgency": "routine",
            "patient": {"id": PATIENT.patient_id, "name": "Doe^Jane"},
            "clinical": {"history": "Low back pain for 10 weeks.", "question": "L4-L5 disc herniation?"}}
FINDINGS = "findings: [{text: No fracture.}]\nimpressions: [Normal lumbar spine.]\n"


def _files(scp: DcmtkStoreSCP) -> list:
    return [p for p in scp.out_dir.iterdir() if p.is_file()]


def _node(workdir, url, reviewer: DcmtkStoreSCP, source: DcmtkStoreSCP | None, routing: dict,
          enabled: bool = True) -> GatewayProcess:
    sources = [{"name": "st-marys", "ae_title": "STMARYS_PACS", **({"return": {
        "ae_title": source.ae_title, "host": "127.0.0.1", "port": source.port}} if source else {})}]
    return GatewayProcess(workdir, url, sources=sources, reviewers=[
        {"name": "dr-a", "ae_title": reviewer.ae_title, "host": "127.0.0.1", "port": reviewer.port,
         "enabled": enabled}],
        extra={"routing": {"stable_after_s": 1.0, "echo_interval_s": HOUR, **routing},
               "referrals": {"wait_s": 0, "on_timeout": "route"}, "http": {"enabled": False}})


def _states_logged(node: GatewayProcess) -> list[str]:
    return [e["state"] for e in node.log_events() if e["event"] == "case_state_changed"]


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_with_a_poll_of_an_hour_the_study_reaches_the_reviewer_and_the_report_the_source(tmp_path, database_url,
                                                                                      small_study):
    reviewer = DcmtkStoreSCP(tmp_path / "reviewer", ae_title="REVIEW_A").start()
    source = DcmtkStoreSCP(tmp_path / "source", ae_title="STMARYS_PACS").start()
    node = _node(tmp_path / "gw", database_url, reviewer, source, {"poll_s": HOUR})
    try:
        node.start()
        referral = tmp_path / "referral.json"
        referral.write_text(json.dumps(REFERRAL))
        node.cli("referral", "add", str(referral))
        assert storescu("127.0.0.1", node.port, small_study, calling="STMARYS_PACS").returncode == 0
        wait_until(lambda: len(_files(reviewer)) >= len(small_study) + 2, 180,
                   "the study and its notes at the reviewer, through wake-ups only")
        assert len(_files(reviewer)) == len(small_study) + 2  # every image, the notes SR and PDF, once
        wait_until(lambda: _states_logged(node)[-1:] == ["delivered"], 60, "the delivery logged")
        assert _states_logged(node) == ["complete", "deidentified", "notes_attached", "assigned", "delivering",
                                        "delivered"]
        case_key = node.status()["recent_studies"][0]["study"]
        findings = tmp_path / "findings.yaml"
        findings.write_text(FINDINGS)
        node.cli("report", "create", case_key, "--findings", str(findings))
        wait_until(lambda: _files(source), 120, "the re-identified report at the source, through wake-ups only")
        (report,) = _files(source)
        assert pydicom.dcmread(report).PatientID == PATIENT.patient_id
        wait_until(lambda: _states_logged(node)[-1:] == ["report_delivered"], 60, "the case closed")
    finally:
        node.stop()
        source.stop()
        reviewer.stop()


def test_with_wakeups_off_the_poll_still_delivers(tmp_path, small_study):
    reviewer = DcmtkStoreSCP(tmp_path / "reviewer", ae_title="REVIEW_A").start()
    node = _node(tmp_path / "gw", f"sqlite:///{tmp_path}/gw.db", reviewer, None,
                 {"poll_s": 1.0, "wakeups": False}).start()
    node_config = node.config
    try:
        assert node_config["routing"]["wakeups"] is False
        assert storescu("127.0.0.1", node.port, small_study, calling="STMARYS_PACS").returncode == 0
        wait_until(lambda: len(_files(reviewer)) >= len(small_study) + 2, 180, "the study delivered by the poll")
        wait_until(lambda: _states_logged(node)[-1:] == ["delivered"], 60, "the delivery logged")
    finally:
        node.stop()
        reviewer.stop()


def test_the_second_node_is_woken_by_notify(tmp_path, pg_cluster, small_study):
    """Node A receives the study but cannot assign it (its dr-a is disabled); node B, which receives nothing
    and polls once an hour, assigns and delivers it: only A's NOTIFY can have woken B."""
    url = pg_cluster.new_database()
    reviewer = DcmtkStoreSCP(tmp_path / "reviewer", ae_title="REVIEW_A").start()
    routing = {"poll_s": HOUR, "claim_lease_s": 30}
    node_a = _node(tmp_path / "a", url, reviewer, None, routing, enabled=False)
    node_b = _node(tmp_path / "b", url, reviewer, None, routing)
    for node in (node_a, node_b):
        node.config["storage"]["spool_dir"] = str(tmp_path / "shared-spool")
        node.spool_dir = tmp_path / "shared-spool"
        node.config["deid"] = {"secret_file": str(tmp_path / "shared.key")}
    try:
        node_a.start()
        node_b.start()
        assert storescu("127.0.0.1", node_a.port, small_study, calling="STMARYS_PACS").returncode == 0
        wait_until(lambda: len(_files(reviewer)) >= len(small_study) + 2, 180, "the study delivered by node B")
        assert "assigned" in _states_logged(node_b), "node B assigned the case: woken by node A's NOTIFY"
        assert "assigned" not in _states_logged(node_a)
        # Either node may complete the case (both are woken when instances are received: node A in-process or
        # by its receiving process, node B by NOTIFY), but only one does.
        assert (_states_logged(node_a) + _states_logged(node_b)).count("complete") == 1
    finally:
        node_b.stop()
        node_a.stop()
        reviewer.stop()
