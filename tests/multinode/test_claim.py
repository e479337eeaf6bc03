"""The delivery's claim is a compare-and-set on the case's state and its ledger, on SQLite and PostgreSQL: a case
another node has just delivered is never claimed again, and the audit records each real transfer once.

Two nodes are played in one process by two lease owners; no reviewer is needed (a case wrongly claimed would be
"delivered" again with nothing to send, which is what these tests catch)."""

from __future__ import annotations

import datetime as dt
import sys
import threading
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.config import GatewayConfig
from gateway.stages.deliver import DeliveryStage
from gateway.stages.pipeline import run_case_stage
from gateway.storage import cases
from gateway.storage.models import AuditEvent, CaseState, Delivery, OutboundObject, Source, Study, db, utcnow

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "routing"))
from routing_db import case_db, make_case  # noqa: E402, F401 - case_db: the fixture below

pytestmark = pytest.mark.usefixtures("case_db")  # the database of database_url, open for each test

NODE_A = cases.LeaseOwner("host-11112", dt.timedelta(seconds=30))
NODE_B = cases.LeaseOwner("host-11113", dt.timedelta(seconds=30))
DESTINATION = "reviewer:dr-a"


def _stage(tmp_path: Path) -> DeliveryStage:
    config = GatewayConfig.model_validate({
        "storage": {"spool_dir": str(tmp_path / "spool"), "database": "sqlite:///unused.db"},
        "sources": [{"name": "st-marys", "ae_title": "STMARYS_PACS"}],
        # a port nobody listens on: a claim wrongly taken fails to send rather than sending
        "reviewers": [{"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": 9}],
    })
    return DeliveryStage.of(config)


def _objects(study: Study, count: int, *, sent: int) -> list[OutboundObject]:
    """``count`` outbound objects of ``study``, the first ``sent`` of them stored by the reviewer."""
    rows = []
    for n in range(count):
        outbound = OutboundObject.create(
            study=study, kind="image", sop_instance_uid=f"2.25.9{study.id}{n}",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.4", transfer_syntax="1.2.840.10008.1.2.1",
            spool_path=f"outbound/{study.key}/{n}.dcm", sha256="0" * 64, size=1)
        Delivery.create(outbound=outbound, destination=DESTINATION, state="sent" if n < sent else "pending",
                        sent_at=utcnow() if n < sent else None, last_status=0 if n < sent else None)
        rows.append(outbound)
    return rows


def _audited_sent(study: Study) -> list[str]:
    return [row.detail for row in AuditEvent.select().where(
        (AuditEvent.study_key == study.key) & (AuditEvent.action == "sent") & (AuditEvent.outcome == "success"))]


def test_a_case_delivered_by_another_node_after_it_was_selected_is_not_claimed_again(tmp_path):
    """The issue's race: node B selects the case while node A delivers it; A finishes (ledger, DELIVERED, lease
    released); B's claim must not be taken, so no second attempt, no delivering -> delivered with 0 objects."""
    stage = _stage(tmp_path)
    study = make_case(CaseState.ASSIGNED, reviewer="dr-a")
    assert cases.claim(study, "delivery", owner=NODE_A, states=stage.claim_states)
    assert cases.move(study, CaseState.DELIVERING, reason="deliver")
    _objects(study, 3, sent=3)  # A's attempt: every object stored, the ledger written
    selected_by_b = stage.due(utcnow())
    assert [s.id for s in selected_by_b] == [study.id]
    assert cases.move(study, CaseState.DELIVERED, reason="all_objects_sent")
    cases.release(study, "delivery", owner=NODE_A)
    changed_at = Study.get_by_id(study.id).state_changed_at

    stage.due = lambda now: selected_by_b  # B goes on with what it selected
    with capture_logs() as logs:
        assert run_case_stage(stage, utcnow(), owner=NODE_B) == 0
    current = Study.get_by_id(study.id)
    assert (current.state, current.state_changed_at, current.claimed_by) == (CaseState.DELIVERED, changed_at, None)
    assert [e for e in logs if e["event"] in ("delivery_attempt", "case_state_changed")] == []
    assert _audited_sent(study) == []


def test_the_claim_is_a_compare_and_set_on_the_state(tmp_path):
    stage = _stage(tmp_path)
    study = make_case(CaseState.ASSIGNED, reviewer="dr-a")
    selected = Study.get_by_id(study.id)
    Study.update(state=CaseState.FAILED).where(Study.id == study.id).execute()  # moved since it was selected
    with cases.claimed(selected, *stage.claim_states, stage="delivery", owner=NODE_B) as mine:
        assert not mine
    assert Study.get_by_id(study.id).claimed_by is None, "a claim on a case no longer due is never written"
    Study.update(state=CaseState.ASSIGNED).where(Study.id == study.id).execute()
    with cases.claimed(selected, *stage.claim_states, stage="delivery", owner=NODE_B,
                       condition=stage.claim_condition(selected, utcnow())) as mine:
        assert mine and selected.state == CaseState.ASSIGNED
        assert Study.get_by_id(study.id).claimed_by == NODE_B.owner("delivery")


def test_a_claimed_case_holds_the_row_as_it_is_now_related_rows_too():
    study = make_case(CaseState.ASSIGNED, reviewer="dr-a")
    selected = Study.get_by_id(study.id)
    assert selected.source.name == "st-marys"  # the related row, loaded before the claim
    elsewhere = Source.create(name="elsewhere", ae_title="ELSEWHERE")
    Study.update(reviewer="dr-b", delivery_attempts=2, source=elsewhere).where(Study.id == study.id).execute()
    with cases.claimed(selected, CaseState.ASSIGNED, stage="delivery", owner=NODE_A) as mine:
        assert mine
        assert (selected.reviewer, selected.delivery_attempts) == ("dr-b", 2)
        assert selected.claimed_by == NODE_A.owner("delivery"), "the claim's own lease, as written"
        assert selected.source.name == "elsewhere", "not the source loaded before"


def test_the_claim_condition_takes_only_a_case_with_something_to_send(tmp_path):
    stage = _stage(tmp_path)
    now = utcnow()
    delivered = make_case(CaseState.DELIVERED, reviewer="dr-a")
    _objects(delivered, 2, sent=2)
    late = make_case(CaseState.DELIVERED, reviewer="dr-a")
    _objects(late, 3, sent=2)  # a late object, de-identified after the case left
    backing_off = make_case(CaseState.DELIVERING, reviewer="dr-a")
    Study.update(next_attempt_at=now + dt.timedelta(minutes=5)).where(Study.id == backing_off.id).execute()
    due_again = make_case(CaseState.DELIVERING, reviewer="dr-a")
    Study.update(next_attempt_at=now - dt.timedelta(seconds=1)).where(Study.id == due_again.id).execute()
    taken = {}
    for study in (delivered, late, backing_off, due_again):
        taken[study.key] = cases.claim(study, "delivery", owner=NODE_B, states=stage.claim_states,
                                       condition=stage.claim_condition(study, now))
    assert taken == {delivered.key: False, late.key: True, backing_off.key: False, due_again.key: True}


def test_concurrent_claims_on_one_case_one_wins(tmp_path):
    """Three nodes claim the same due case at the same moment, each on its own connection (the test's pool has
    four): exactly one gets it."""
    stage = _stage(tmp_path)
    study = make_case(CaseState.ASSIGNED, reviewer="dr-a")
    barrier, results = threading.Barrier(3, timeout=60), []

    def node(index: int) -> None:
        owner = cases.LeaseOwner(f"host-{11112 + index}", dt.timedelta(seconds=30))
        with db.connection_context():
            selected = Study.get_by_id(study.id)
            barrier.wait()
            results.append(cases.claim(selected, "delivery", owner=owner, states=stage.claim_states,
                                       condition=stage.claim_condition(selected, utcnow())))

    threads = [threading.Thread(target=node, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(results) == [False, False, True]


def test_a_delivery_with_nothing_to_send_writes_no_sent(tmp_path):
    """Reassigned back to a reviewer that holds every object already: the case is delivered, nothing transferred,
    and the audit says no 'sent'."""
    stage = _stage(tmp_path)
    study = make_case(CaseState.ASSIGNED, reviewer="dr-a")
    _objects(study, 2, sent=2)
    assert run_case_stage(stage, utcnow(), owner=NODE_B) == 1
    assert Study.get_by_id(study.id).state == CaseState.DELIVERED
    assert _audited_sent(study) == []


def test_a_transfer_finished_by_a_dead_node_is_audited_once_by_the_node_that_takes_over(tmp_path):
    """Node A sent every object and died before moving the case: B finds nothing left to send, moves it
    DELIVERED and writes the one 'sent' of A's transfer (nobody wrote it); a later run writes none."""
    stage = _stage(tmp_path)
    study = make_case(CaseState.ASSIGNED, reviewer="dr-a")
    assert cases.move(study, CaseState.DELIVERING, reason="deliver")
    _objects(study, 4, sent=4)
    Study.update(claimed_by=NODE_A.owner("delivery"),
                 claimed_until=utcnow() - dt.timedelta(seconds=1)).where(Study.id == study.id).execute()  # expired
    assert run_case_stage(stage, utcnow(), owner=NODE_B) == 1
    assert Study.get_by_id(study.id).state == CaseState.DELIVERED
    assert len(_audited_sent(study)) == 1 and _audited_sent(study)[0].startswith("4 object(s)")
    assert run_case_stage(stage, utcnow(), owner=NODE_B) == 0
    assert len(_audited_sent(study)) == 1
