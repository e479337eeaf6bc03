"""The pool worklist without a node: the UPS state machine (every state and request), and the pool's database moves
on SQLite: pooling, who sees and claims, two claims at once, the claim's timeout, the report's completion, a claim
given back, the case leaving the pool; the workitem's JSON carries no PHI; the search's matching."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import threading

import pytest

from gateway.config import GatewayConfig
from gateway.dicomweb import ups
from gateway.routing import pool
from gateway.routing.assignment import CaseNeeds, ReviewerPool
from gateway.stages.deliver import DeliveryStage
from gateway.stages.pool import PoolStage
from gateway.stages.sla import SlaStage
from gateway.storage import cases, workitems
from gateway.storage.models import (
    Assignment,
    AuditEvent,
    CaseState,
    OutboundObject,
    Series,
    Study,
    StudyIdentity,
    Workitem,
    WorkitemEvent,
    db,
    utcnow,
)
from gateway.storage.workitems import (
    CANCELED,
    COMPLETED,
    IN_PROGRESS,
    SCHEDULED,
    STATES,
    STATUS_TEXT,
    WorkitemRefused,
)

REVIEWERS = [
    {"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": 4243, "mode": "pull",
     "subspecialties": ["spine"]},
    {"name": "dr-b", "ae_title": "REVIEW_B", "host": "127.0.0.1", "port": 4244, "mode": "pull",
     "subspecialties": ["spine"]},
    {"name": "dr-ct", "ae_title": "REVIEW_C", "host": "127.0.0.1", "port": 4245, "mode": "pull",
     "modalities": ["CT"], "subspecialties": ["spine"]},
    {"name": "dr-push", "ae_title": "REVIEW_P", "host": "127.0.0.1", "port": 4246},
]
CONFIG = GatewayConfig.model_validate({"sources": [{"name": "st-marys", "ae_title": "HOSP_PACS"}],
                                       "reviewers": REVIEWERS})
A, B, CT_ONLY, PUSH = CONFIG.reviewers
NAME, MRN = "DOE^JANE", "MRN0012345"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"


# --- the state machine, every pair ----------------------------------------------------------------------------

EXPECTED = {
    # (current, target, holds the transaction) -> status (None: allowed)
    (SCHEDULED, IN_PROGRESS, False): None,
    (SCHEDULED, COMPLETED, True): workitems.NOT_IN_PROGRESS,
    (SCHEDULED, CANCELED, True): workitems.NOT_IN_PROGRESS,
    (IN_PROGRESS, IN_PROGRESS, True): workitems.ALREADY_IN_PROGRESS,
    (IN_PROGRESS, IN_PROGRESS, False): workitems.ALREADY_IN_PROGRESS,
    (IN_PROGRESS, COMPLETED, True): None,
    (IN_PROGRESS, COMPLETED, False): workitems.WRONG_TRANSACTION_UID,
    (IN_PROGRESS, CANCELED, True): None,
    (IN_PROGRESS, CANCELED, False): workitems.WRONG_TRANSACTION_UID,
    (COMPLETED, COMPLETED, True): workitems.ALREADY_COMPLETED_WARNING,
    (CANCELED, CANCELED, True): workitems.ALREADY_CANCELED_WARNING,
    (COMPLETED, IN_PROGRESS, False): workitems.MAY_NO_LONGER_BE_UPDATED,
    (CANCELED, IN_PROGRESS, False): workitems.MAY_NO_LONGER_BE_UPDATED,
    (COMPLETED, CANCELED, True): workitems.MAY_NO_LONGER_BE_UPDATED,
}


@pytest.mark.parametrize(("current", "target", "holder"), list(itertools.product(STATES, STATES, (True, False))))
def test_every_state_change_request_is_allowed_or_has_its_status(current, target, holder):
    status = workitems.change_refused(current, target, holds_transaction=holder)
    if (current, target, holder) in EXPECTED:
        assert status == EXPECTED[(current, target, holder)]
    assert status is None or status in STATUS_TEXT
    if target == SCHEDULED:
        assert status == workitems.ONLY_SCHEDULED_BY_CREATE, "only the node schedules"
    if current in workitems.FINAL:
        assert status is not None, "a final state never moves"
    if status is None:
        assert (current, target) in {(SCHEDULED, IN_PROGRESS), (IN_PROGRESS, COMPLETED), (IN_PROGRESS, CANCELED)}


def test_cancellation_requests_go_to_the_performer_only_while_in_progress():
    assert workitems.cancel_request_refused(IN_PROGRESS) is None
    assert workitems.cancel_request_refused(SCHEDULED) == workitems.NOT_CANCELABLE
    assert workitems.cancel_request_refused(COMPLETED) == workitems.ALREADY_COMPLETED
    assert workitems.cancel_request_refused(CANCELED) == workitems.ALREADY_CANCELED_WARNING
    assert WorkitemRefused(workitems.ALREADY_CANCELED_WARNING).warning
    assert not WorkitemRefused(workitems.ALREADY_COMPLETED).warning


# --- the pool in the database ---------------------------------------------------------------------------------------


def pooled_case(modality: str = "MR", urgent: bool = False, number: int = 1) -> Workitem:
    study = Study.create(study_uid=f"1.2.826.0.1.{number}", calling_ae="HOSP_PACS", state=CaseState.NOTES_ATTACHED,
                         pseudo_study_uid=f"2.25.{1000 + number}", urgency="urgent" if urgent else "routine")
    Series.create(study=study, series_uid=f"1.2.826.0.2.{number}", modality=modality)
    StudyIdentity.create(study=study, patient_name=NAME, patient_id=MRN, pseudo_patient_id=f"PSEUDO{number}")
    needs = CaseNeeds(frozenset({modality}), "spine", urgent)
    assert pool.put_in_pool(study, needs, utcnow() + dt.timedelta(hours=72), "routine open_cases=0", utcnow())
    return Workitem.get(Workitem.study == study)


def fresh(workitem: Workitem) -> Workitem:
    return Workitem.get_by_id(workitem.id)


def test_a_pooled_case_is_seen_by_its_eligible_pull_reviewers_only(database):
    workitem = pooled_case("MR", urgent=True)
    assert Study.get_by_id(workitem.study_id).state == CaseState.POOLED
    assert (workitem.state, workitem.priority, workitem.modalities) == (SCHEDULED, "HIGH", "MR")
    assert [pool.visible(r, workitem) for r in (A, B, CT_ONLY, PUSH)] == [True, True, False, False]
    assert [e.state for e in WorkitemEvent.select()] == [SCHEDULED]


def test_a_pull_reviewer_is_chosen_whatever_a_c_echo_said_before_it_pulled():
    needs = CaseNeeds(frozenset({"MR"}), "spine", False)
    down = {"reviewer:dr-a", "reviewer:dr-b", "reviewer:dr-push"}
    choice = ReviewerPool(CONFIG.reviewers).choose(needs, utcnow(), {}, {}, down)
    assert choice is not None and choice.reviewer.name == "dr-a"
    push_only = ReviewerPool([PUSH])
    assert push_only.choose(CaseNeeds(frozenset({"MR"}), None, False), utcnow(), {}, {}, down) is None


def test_the_claim_assigns_the_case_and_a_second_claim_is_refused(database):
    workitem = pooled_case()
    expires = pool.claim(workitem, A, "2.25.1", 600, "token:a")
    study = Study.get_by_id(workitem.study_id)
    assert (study.state, study.reviewer) == (CaseState.DELIVERED, "dr-a")
    assert Assignment.get((Assignment.study == study) & Assignment.active).reviewer == "dr-a"
    claimed = fresh(workitem)
    assert (claimed.state, claimed.claimed_by, claimed.claim_expires_at) == (IN_PROGRESS, "dr-a", expires)
    assert claimed.transaction_sha256 != "2.25.1" and workitems.holds(claimed, "2.25.1")
    with pytest.raises(WorkitemRefused) as refused:
        pool.claim(fresh(workitem), B, "2.25.2", 600, "token:b")
    assert refused.value.status == workitems.ALREADY_IN_PROGRESS
    with pytest.raises(WorkitemRefused):  # a stale read of the workitem: the conditional update refuses it
        pool.claim(workitem.__class__(**{**workitem.__data__, "state": SCHEDULED}), B, "2.25.3", 600, "token:b")
    assert Study.get_by_id(workitem.study_id).reviewer == "dr-a"
    assert AuditEvent.select().where(AuditEvent.action == "worklist_claimed").count() == 1


def test_a_claimed_case_is_never_pushed_to_its_pull_reviewer(database, tmp_path):
    workitem = pooled_case()
    study = Study.get_by_id(workitem.study_id)
    OutboundObject.create(study=study, kind="image", sop_instance_uid="2.25.77", sop_class_uid=MR_IMAGE,
                          transfer_syntax="1.2.840.10008.1.2.1", spool_path="x.dcm", sha256="0" * 64, size=1)
    pool.claim(workitem, A, "2.25.1", 600, "token:a")
    delivery = DeliveryStage.of(CONFIG)
    assert delivery.due(utcnow()) == [], "the objects it was never sent are not missing: it reads them over DICOMweb"
    assert not delivery.deliver(Study.get_by_id(study.id))
    assert Study.get_by_id(study.id).state == CaseState.DELIVERED


def test_two_claims_at_once_one_wins(database, tmp_path):
    workitem = pooled_case()
    outcomes: list[str] = []
    start = threading.Barrier(2)

    def claim(reviewer, transaction):
        with db.connection_context():
            start.wait(timeout=30)
            try:
                pool.claim(Workitem.get_by_id(workitem.id), reviewer, transaction, 600, reviewer.name)
                outcomes.append(reviewer.name)
            except WorkitemRefused as exc:
                outcomes.append(f"{exc.status:04X}")

    threads = [threading.Thread(target=claim, args=(r, f"2.25.{i}")) for i, r in enumerate((A, B), start=7)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == sorted([fresh(workitem).claimed_by, "C302"])
    assert Study.get_by_id(workitem.study_id).reviewer == fresh(workitem).claimed_by


def test_an_abandoned_claim_returns_to_the_pool_and_another_reviewer_claims_it(database):
    workitem = pooled_case()
    expires = pool.claim(workitem, A, "2.25.1", 600, "token:a")
    stage = PoolStage()
    assert stage.run_once(expires - dt.timedelta(seconds=1)) == 0, "not yet"
    assert stage.run_once(expires) == 1
    back, study = fresh(workitem), Study.get_by_id(workitem.study_id)
    assert (back.state, back.claimed_by, back.transaction_sha256) == (SCHEDULED, None, None)
    assert (study.state, study.reviewer) == (CaseState.POOLED, None)
    assert not Assignment.select().where(Assignment.active).exists()
    pool.claim(back, B, "2.25.2", 600, "token:b")
    assert Study.get_by_id(workitem.study_id).reviewer == "dr-b"
    assert [e.state for e in WorkitemEvent.select().order_by(WorkitemEvent.id)] == [
        SCHEDULED, IN_PROGRESS, SCHEDULED, IN_PROGRESS]


def test_the_report_completes_the_workitem_and_a_completed_one_is_not_claimable(database):
    workitem = pooled_case()
    pool.claim(workitem, A, "2.25.1", 600, "token:a")
    study = Study.get_by_id(workitem.study_id)
    assert PoolStage().run_once(utcnow()) == 0, "no report yet"
    assert cases.move(study, CaseState.REPORTED, reason="report_received")  # what the report intake does
    assert PoolStage().run_once(utcnow() + dt.timedelta(days=1)) == 1
    assert fresh(workitem).state == COMPLETED
    with pytest.raises(WorkitemRefused) as refused:
        pool.claim(fresh(workitem), B, "2.25.2", 600, "token:b")
    assert refused.value.status == workitems.MAY_NO_LONGER_BE_UPDATED
    assert AuditEvent.select().where(AuditEvent.action == "worklist_completed").count() == 1


def test_a_claim_given_back_cancels_its_workitem_and_pools_the_case_anew(database):
    workitem = pooled_case()
    pool.claim(workitem, A, "2.25.1", 600, "token:a")
    assert pool.give_back(fresh(workitem), pool.GIVEN_BACK, "token:a")
    assert fresh(workitem).state == CANCELED
    again = workitems.open_workitem(Study.get_by_id(workitem.study_id))
    assert again is not None and again.uid != workitem.uid and again.state == SCHEDULED
    assert Study.get_by_id(workitem.study_id).state == CaseState.POOLED


def test_a_case_that_leaves_the_pool_cancels_its_workitem(database):
    workitem = pooled_case()
    study = Study.get_by_id(workitem.study_id)
    assert cases.move(study, CaseState.QUARANTINED, reason="operator")
    assert PoolStage().run_once(utcnow()) == 1
    assert (fresh(workitem).state, fresh(workitem).cancel_reason) == (CANCELED, "case_quarantined")


def test_a_pooled_case_nobody_claimed_by_its_deadline_is_flagged_and_stays_in_the_pool(database):
    workitem = pooled_case()
    study = Study.get_by_id(workitem.study_id)
    routing = CONFIG.routing.model_copy(update={"reassign_after_sla": True})
    stage = SlaStage(CONFIG.reviewers, routing)
    assert stage.run_once(study.sla_due_at - dt.timedelta(seconds=1)) == 0
    assert stage.run_once(study.sla_due_at) == 1
    flagged = Study.get_by_id(study.id)
    assert flagged.sla_flagged_at is not None and flagged.state == CaseState.POOLED
    assert fresh(workitem).state == SCHEDULED


def test_a_reviewer_at_its_max_open_cases_cannot_claim(database):
    full = GatewayConfig.model_validate({**CONFIG.model_dump(mode="json"), "reviewers": [
        {**REVIEWERS[0], "max_open_cases": 1}]}).reviewers[0]
    pool.claim(pooled_case(number=1), full, "2.25.1", 600, "a")
    with pytest.raises(WorkitemRefused):
        pool.claim(pooled_case(number=2), full, "2.25.2", 600, "a")


def test_the_workitem_json_is_pseudonymous_and_hides_the_transaction(database):
    workitem = pooled_case()
    pool.claim(workitem, A, "2.25.424242", 600, "token:a")
    claimed = Workitem.select(Workitem, Study).join(Study).where(Workitem.id == workitem.id).get()
    for reviewer in ("dr-a", "dr-b"):
        text = json.dumps(ups.as_json(claimed, claimed.study.key, "2.25.1001", reviewer, "http://x/studies/2.25.1001"))
        for phi in (NAME, "DOE", MRN, "1.2.826.0.1.1", "1.2.826.0.2.1", "2.25.424242"):
            assert phi not in text
        assert "PSEUDO1" in text and "2.25.1001" in text
        assert ("dr-a" in text) == (reviewer == "dr-a"), "the performer is named to itself only"


def test_the_search_matches_state_priority_and_date_ranges():
    def item(state, priority, due):
        return {ups.STATE: {"vr": "CS", "Value": [state]}, ups.PRIORITY: {"vr": "CS", "Value": [priority]},
                ups.EXPECTED: {"vr": "DT", "Value": [f"{due}000000+0000"]}}

    items = [item(SCHEDULED, "HIGH", "20261208"), item(SCHEDULED, "MEDIUM", "20261210"),
             item(IN_PROGRESS, "MEDIUM", "20261209")]
    search = ups.Search([("ProcedureStepState", SCHEDULED)])
    assert search.keep(items) == items[:2]
    assert ups.Search([("00741200", "MEDIUM")]).keep(items) == items[1:]
    assert ups.Search([("ExpectedCompletionDateTime", "20261209-")]).keep(items) == items[1:]
    assert ups.Search([("ExpectedCompletionDateTime", "-20261209")]).keep(items) == [items[0], items[2]]
    assert ups.Search([("ExpectedCompletionDateTime", "20261208")]).keep(items) == items[:1]
    assert ups.Search([("limit", "1"), ("offset", "1")]).keep(items) == items[1:2]
    unknown = ups.Search([("PatientName", "DOE*")])
    assert unknown.ignored == ["PatientName"] and unknown.keep(items) == items
    for bad in ([("limit", "x")], [("ExpectedCompletionDateTime", "yesterday")]):
        with pytest.raises(ups.BadSearch):
            ups.Search(bad)
