"""One case never delays another in time (issue 28): the notes of each case are scrubbed in a worker process
with a time budget.

A running gateway (SQLite) gets two referrals and two studies from the same source in one storescu run, the
pathological one first: its clinical history is 20,000 characters of capitalised words (each a candidate name
for the scrubber, minutes of work), the other is an ordinary referral. The healthy case gets its notes while the
pathological one is still being scrubbed; the pathological one is then quarantined with the reason "time budget
exceeded", no sooner than its budget, and its worker is killed. The workers start with the first case.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pydicom
import pytest

from gateway.demo import DemoPatient, write_demo_study
from gateway.storage.models import Study, make_database
from support.peers import GatewayProcess, free_port, storescu, wait_until

BUDGET_S = 4.0
HEALTHY = DemoPatient()
PATHOLOGICAL = dataclasses.replace(DemoPatient(), name="ROE^RICHARD", patient_id="MRN0099881",
                                   accession="A7654321", birth_date="19600203", sex="M")
ADVERSARIAL_HISTORY = ("Smith Jones Brown Taylor Wilson Davies Evans Thomas " * 400)[:20_000]


def referral(patient: DemoPatient, history: str) -> dict:
    return {"source": "st-marys", "accession_number": patient.accession, "urgency": "routine",
            "patient": {"id": patient.patient_id, "name": patient.name,
                        "birth_date": f"{patient.birth_date[:4]}-{patient.birth_date[4:6]}-{patient.birth_date[6:]}"},
            "referrer": {"name": "Dr Alan Smith"},
            "clinical": {"history": history, "question": "L4-L5 disc herniation?"}}


def descendants(pid: int) -> set[int]:
    """Every process under ``pid`` (the notes workers are the fork server's children, the node's grandchildren)."""
    try:
        children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return set()
    return set(children).union(*(descendants(child) for child in children))


def forked(pid: int) -> set[int]:
    """The notes fork server and its workers under ``pid`` (their command line names the fork server)."""
    def is_forked(child: int) -> bool:
        try:
            return b"multiprocessing.forkserver" in Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            return False
    return {child for child in descendants(pid) if is_forked(child)}


def cases(node: GatewayProcess) -> dict[str, tuple[str, str | None]]:
    """Every case by its original Study Instance UID: (state, reason), read from the database."""
    database = make_database(node.config["storage"]["database"], max_connections=1)
    with database.connection_context():
        rows = database.execute_sql(f"SELECT study_uid, state, state_reason FROM {Study._meta.table_name}")
        return {uid: (state, reason) for uid, state, reason in rows.fetchall()}


@pytest.fixture
def node(tmp_path):
    node = GatewayProcess(tmp_path / "gw", f"sqlite:///{tmp_path}/gateway.db", reviewers=[], extra={
        "http": {"enabled": False, "port": free_port()},
        "routing": {"stable_after_s": 0.5, "poll_s": 0.5},
        "referrals": {"wait_s": 600, "time_budget_s": BUDGET_S, "workers": 2}})
    try:
        yield node.start()
    finally:
        node.stop()


def test_a_pathological_case_is_quarantined_after_its_budget_while_a_healthy_one_goes_through(node, tmp_path):
    bad = write_demo_study(tmp_path / "bad", 2, seed=41, rows=64, cols=64, patient=PATHOLOGICAL)
    good = write_demo_study(tmp_path / "good", 2, seed=42, rows=64, cols=64, patient=HEALTHY)
    for name, patient, history in (("bad", PATHOLOGICAL, ADVERSARIAL_HISTORY),
                                   ("good", HEALTHY, "Low back pain for 10 weeks, worse on sitting.")):
        path = tmp_path / f"{name}-referral.json"
        path.write_text(json.dumps(referral(patient, history)))
        node.cli("referral", "add", str(path))
    assert not forked(node.proc.pid), "no notes worker before a case needs one"

    sent = storescu("127.0.0.1", node.port, [*bad, *good], calling="STMARYS_PACS")
    assert sent.returncode == 0, sent.stderr
    bad_uid, good_uid = (str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
                         for files in (bad, good))

    wait_until(lambda: cases(node).get(good_uid, ("",))[0] not in ("", "receiving", "complete", "deidentified"),
               120, "the healthy case past its notes")
    healthy_done = time.monotonic()
    assert cases(node)[good_uid][0] != "quarantined"
    assert cases(node)[bad_uid][0] in ("deidentified", "held"), "the pathological case is still being scrubbed"

    wait_until(lambda: cases(node)[bad_uid][0] == "quarantined", 120, "the pathological case quarantined")
    state, reason = cases(node)[bad_uid]
    assert "time budget exceeded" in reason
    stopped = [e for e in node.log_events() if e["event"] == "worker_stopped"]
    assert len(stopped) == 1 and stopped[0]["duration_ms"] >= BUDGET_S * 1000
    assert [e["reason"] for e in node.log_events() if e["event"] == "case_over_budget"] == ["time budget exceeded"]
    assert time.monotonic() >= healthy_done
    audit = node.cli("audit", "--json").stdout
    assert "time budget exceeded" in audit
    # the killed worker is gone: left are the fork server and the worker that served the healthy case (a new one
    # starts only when a case needs it)
    wait_until(lambda: len(forked(node.proc.pid)) == 2, 30, "the killed worker gone")
