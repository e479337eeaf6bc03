"""Storage Commitment toward a reviewer (``reviewers[].storage_commitment``): a delivery counts as done only when
the reviewer has committed every object, and the ledger records it.

Orthanc plays the reviewer: it stores the de-identified study, answers the gateway's N-ACTION and sends its
report (N-EVENT-REPORT) to the gateway on a new association. DCMTK's storescp, which stores but offers no
Storage Commitment, shows the other side: everything stored, nothing committed, the case never delivered.
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from gateway.demo import DemoPatient, write_demo_study
from support.peers import DcmtkStoreSCP, GatewayProcess, Orthanc, free_port, storescu, wait_until

pytestmark = pytest.mark.dicom_e2e  # run a second time with the pynetdicom hooks off (make test-hooks-off)

PATIENT = DemoPatient()
FAST = {"routing": {"stable_after_s": 0.5, "poll_s": 0.2, "echo_interval_s": 1.0,
                    "retry": {"initial_s": 0.2, "max_s": 1.0, "max_attempts": 3}},
        "referrals": {"wait_s": 600}}
REFERRAL = {
    "source": "st-marys", "accession_number": PATIENT.accession, "urgency": "routine",
    "patient": {"id": PATIENT.patient_id, "name": "Doe^Jane", "birth_date": "1971-04-12"},
    "referrer": {"name": "Dr Alan Smith"},
    "clinical": {"history": "Low back pain for 10 weeks.", "question": "L4-L5 disc herniation?"},
}


def _reviewer(port: int, **extra) -> dict:
    return {"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": port, "storage_commitment": True,
            **extra}


def _ledger(node: GatewayProcess) -> list[tuple]:
    with sqlite3.connect(node.workdir / "gateway.db") as connection:
        return list(connection.execute(
            "SELECT state, commitment_uid IS NOT NULL, committed_at IS NOT NULL FROM delivery "
            "WHERE destination = 'reviewer:dr-a'"))


def _send_case(node: GatewayProcess, tmp_path) -> None:
    referral = tmp_path / "referral.json"
    referral.write_text(json.dumps(REFERRAL))
    node.cli("referral", "add", str(referral))
    study = write_demo_study(tmp_path / "lumbar", 3, seed=21, rows=32, cols=32)
    assert storescu("127.0.0.1", node.port, study, calling="STMARYS_PACS").returncode == 0


def test_a_delivery_to_orthanc_is_done_once_orthanc_has_committed_every_object(tmp_path):
    gateway_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", "REVIEW_A", modalities={"gateway": ["SPINEGW", "127.0.0.1", gateway_port]})
    node = GatewayProcess(tmp_path / "gw", f"sqlite:///{tmp_path}/gw/gateway.db", node={"port": gateway_port},
                          reviewers=[_reviewer(orthanc.dicom_port)], extra=FAST)
    node.port = gateway_port
    try:
        orthanc.start()
        node.start()
        _send_case(node, tmp_path)
        wait_until(lambda: node.status()["cases_by_state"] == {"delivered": 1}, 120, "the case delivered")
        ledger = _ledger(node)
        assert ledger and all(row == ("sent", 1, 1) for row in ledger), ledger
        assert len(orthanc.get("/instances")) == len(ledger)
        events = [(e["event"], e.get("state")) for e in node.log_events()]
        asked = events.index(("commitment_requested_from_reviewer", None))
        reported = events.index(("commitment_report_received", None))
        delivered = events.index(("case_state_changed", "delivered"))
        assert asked < reported < delivered, "delivered only after Orthanc's report"
    finally:
        node.stop()
        orthanc.stop()


def test_a_reviewer_that_stores_but_never_commits_never_gets_the_case_delivered(tmp_path):
    scp = DcmtkStoreSCP(tmp_path / "storescp", ae_title="REVIEW_A")
    node = GatewayProcess(tmp_path / "gw", f"sqlite:///{tmp_path}/gw/gateway.db",
                          reviewers=[_reviewer(scp.port)], extra=FAST)
    try:
        scp.start()
        node.config["reviewers"] = [_reviewer(scp.port)]  # storescp may have moved to another free port
        node.start()
        _send_case(node, tmp_path)
        wait_until(lambda: node.status()["cases_by_state"] == {"failed": 1}, 120, "the case failed")
        assert list(scp.out_dir.iterdir()), "storescp stored the objects"
        ledger = _ledger(node)
        assert ledger and all(row == ("sent", 0, 0) for row in ledger), ledger
        assert "commitment_request_failed" in [e["event"] for e in node.log_events()]
    finally:
        node.stop()
        scp.stop()
