"""The pool worklist (IHE RRR-WF's idea, served as UPS-RS by :mod:`gateway.dicomweb.worklist`): who may see and
claim a pooled case, and the database moves that put a case in the pool, give it to its claimer, and take it back.

A case goes to the pool when the assignment rules choose a reviewer in ``mode: pull`` (its load, subspecialty,
modalities and hours, as for any reviewer): the case moves NOTES_ATTACHED (or HELD) -> POOLED with a SCHEDULED
workitem. Every pull reviewer *eligible* for it may then see and claim it: enabled, reading every image modality of
the case, holding the subspecialty the referral asks for; a claim also needs the reviewer under ``max_open_cases``
(working hours are not asked: a reviewer claiming is at work). The claim is what the assignment stage does for a
push reviewer, as one transaction of conditional moves: the workitem SCHEDULED -> IN PROGRESS, the case
POOLED -> DELIVERED with its reviewer set (the case is then the reviewer's on DICOMweb and in the portal, and its
report is taken from that reviewer only), a new active ``Assignment``. No stage is called: the pool stage
(:mod:`gateway.stages.pool`) later finds what the report, the claim's timeout or another stage changed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import structlog

from gateway.config import ReviewerConfig
from gateway.ops import audit
from gateway.routing.assignment import CaseNeeds, open_cases, record_assignment
from gateway.storage import cases, workitems
from gateway.storage.models import Assignment, CaseState, Study, StudyIdentity, Workitem, utcnow
from gateway.storage.workitems import WorkitemRefused

log = structlog.get_logger("routing.pool")

POOLED_REASON = "pooled"
CLAIM_REASON = "claimed_from_pool"
TIMED_OUT = "claim_timed_out"
GIVEN_BACK = "claim_given_back"


def _atomic():
    """A transaction on the models' database (the one the case state machine moves cases in)."""
    return Workitem._meta.database.atomic()


def pull_reviewers(reviewers: Sequence[ReviewerConfig]) -> list[str]:
    return [r.name for r in reviewers if r.mode == "pull"]


def eligible(reviewer: ReviewerConfig, workitem: Workitem) -> bool:
    """May ``reviewer`` read the case of ``workitem`` (the assignment rules without load and hours)?"""
    if reviewer.mode != "pull" or not reviewer.enabled:
        return False
    modalities = {m for m in workitem.modalities.split("\\") if m}
    if reviewer.modalities and not modalities <= {m.upper() for m in reviewer.modalities}:
        return False
    wanted = workitem.subspecialty
    return not wanted or wanted.lower() in {s.lower() for s in reviewer.subspecialties}


def visible(reviewer: ReviewerConfig, workitem: Workitem) -> bool:
    """A reviewer sees the workitems it is eligible for, and those it claimed (also once done)."""
    return workitem.claimed_by == reviewer.name or eligible(reviewer, workitem)


def put_in_pool(study: Study, needs: CaseNeeds, due_at: dt.datetime, reason: str, now: dt.datetime) -> bool:
    """NOTES_ATTACHED or HELD -> POOLED with a SCHEDULED workitem, in one transaction; False when another worker
    moved the case first."""
    pseudo_patient = (StudyIdentity.select(StudyIdentity.pseudo_patient_id)
                      .where(StudyIdentity.study == study).scalar()) or ""
    with _atomic():
        if not cases.move(study, CaseState.POOLED, reason=f"{POOLED_REASON} {reason}"[:255], reviewer=None,
                          sla_due_at=due_at, sla_flagged_at=None):
            return False
        workitem = workitems.create(study, workitems.Needs(needs.modalities, needs.subspecialty, needs.urgent),
                                    due_at, pseudo_patient, now)
    log.info("case_pooled", case=study.key, reason=reason, status=workitem.priority)
    return True


def claim(workitem: Workitem, reviewer: ReviewerConfig, transaction_uid: str, timeout_s: float,
          actor: str) -> dt.datetime:
    """Give the case of ``workitem`` to ``reviewer`` (see the module docstring); returns when the claim expires.

    Raises:
        WorkitemRefused: the workitem is not SCHEDULED any more (another claim came first: 0xC302, or it is final),
            or the reviewer is at ``max_open_cases`` (0xC300 with the reason).
    """
    refused = workitems.change_refused(workitem.state, workitems.IN_PROGRESS, holds_transaction=False)
    if refused is not None:
        raise WorkitemRefused(refused)
    if open_cases().get(reviewer.name, 0) >= reviewer.max_open_cases:
        raise WorkitemRefused(workitems.MAY_NO_LONGER_BE_UPDATED,
                              f"the reviewer has max_open_cases ({reviewer.max_open_cases}) open cases")
    now = utcnow()
    expires = now + dt.timedelta(seconds=timeout_s)
    with _atomic():
        study = Study.get_by_id(workitem.study_id)
        if not workitems.take(workitem, reviewer.name, transaction_uid, expires, now):
            raise WorkitemRefused(workitems.ALREADY_IN_PROGRESS)
        if study.state != CaseState.POOLED or not cases.move(
                study, CaseState.DELIVERED, reason=CLAIM_REASON, reviewer=reviewer.name, delivery_attempts=0,
                next_attempt_at=None):
            raise WorkitemRefused(workitems.MAY_NO_LONGER_BE_UPDATED, "the case has left the pool")
        record_assignment(study, reviewer.name, CLAIM_REASON, now)
        audit.record("worklist_claimed", actor_ae=None, actor_host=actor, study_key=study.key,
                     detail=f"workitem IN PROGRESS for reviewer {reviewer.name}, claim until {expires:%H:%M:%S}")
    log.info("case_claimed", case=study.key, reviewer=reviewer.name)
    return expires


def give_back(workitem: Workitem, reason: str, actor: str, now: dt.datetime | None = None) -> bool:
    """Take the case of an IN PROGRESS workitem back from its claimer into the pool: DELIVERED -> POOLED, the
    assignment ended. An abandoned claim (``TIMED_OUT``) returns the same workitem to SCHEDULED; a claim its
    reviewer canceled (``GIVEN_BACK``) ends that workitem CANCELED and the case gets a new SCHEDULED one. False
    when the case or the workitem moved meanwhile (the report came first)."""
    now = now or utcnow()
    with _atomic() as transaction:
        study = Study.get_by_id(workitem.study_id)
        if study.state != CaseState.DELIVERED or study.reviewer != workitem.claimed_by:
            return False
        claimer = workitem.claimed_by
        target = workitems.SCHEDULED if reason == TIMED_OUT else workitems.CANCELED
        # a time-out only of a claim still past its end: a renewal that came meanwhile wins
        if not workitems.settle(workitem, workitems.IN_PROGRESS, target, reason, now,
                                expired_by=now if reason == TIMED_OUT else None):
            return False
        if not cases.move(study, CaseState.POOLED, reason=reason, reviewer=None):
            transaction.rollback()
            return False
        (Assignment.update(active=False, ended_at=now, ended_reason=reason)
         .where((Assignment.study == study) & (Assignment.active == True)).execute())  # noqa: E712
        if target == workitems.CANCELED:
            workitems.create(study, workitems.Needs(frozenset(m for m in workitem.modalities.split("\\") if m),
                                                    workitem.subspecialty, workitem.priority == "HIGH"),
                             workitem.due_at, workitem.pseudo_patient_id, now)
        audit.record(f"worklist_{reason}", actor_ae=None, actor_host=actor, study_key=study.key,
                     detail=f"workitem back in the pool from reviewer {claimer}")
    log.info("case_pooled", case=study.key, reason=reason, reviewer=claimer)
    return True


def renew(workitem: Workitem, reviewer: str, timeout_s: float, now: dt.datetime | None = None,
          transaction_sha256: str | None = None) -> dt.datetime | None:
    """The claimer says it is still working on the case: its claim now ends ``timeout_s`` from ``now``. None when
    ``reviewer`` does not hold the workitem any more (the claim ran out and the pool stage took it back, or it was
    given back, or the report completed it), or, with ``transaction_sha256``, holds it under another claim (it ran
    out and was claimed again: an update with the old Transaction UID renews nothing). A conditional UPDATE, so
    the timeout and a renewal never both win."""
    now = now or utcnow()
    expires = now + dt.timedelta(seconds=timeout_s)
    same_claim = (Workitem.transaction_sha256 == transaction_sha256) if transaction_sha256 else True
    renewed = Workitem.update(claim_expires_at=expires).where(
        (Workitem.id == workitem.id) & (Workitem.state == workitems.IN_PROGRESS)
        & (Workitem.claimed_by == reviewer) & same_claim).execute()
    if not renewed:
        return None
    workitem.claim_expires_at = expires
    log.info("claim_renewed", case=workitem.study.key, reviewer=reviewer)
    return expires


def held_by(reviewer: str, study: Study) -> Workitem | None:
    """The case's workitem that ``reviewer`` holds IN PROGRESS, if any."""
    return Workitem.get_or_none((Workitem.study == study) & (Workitem.state == workitems.IN_PROGRESS)
                                & (Workitem.claimed_by == reviewer))


def complete(workitem: Workitem, actor: str, now: dt.datetime | None = None) -> bool:
    """IN PROGRESS -> COMPLETED once the claimer's report is in (the case is on its report leg)."""
    with _atomic():
        study = Study.get_by_id(workitem.study_id)
        if study.state not in cases.REPORT_LEG or study.reviewer != workitem.claimed_by:
            return False
        if not workitems.settle(workitem, workitems.IN_PROGRESS, workitems.COMPLETED, "report_received", now):
            return False
        audit.record("worklist_completed", actor_ae=None, actor_host=actor, study_key=study.key,
                     detail=f"workitem COMPLETED by the report of reviewer {workitem.claimed_by}")
    log.info("workitem_completed", case=study.key, reviewer=workitem.claimed_by)
    return True


def cancel_left(workitem: Workitem, study: Study, now: dt.datetime | None = None) -> bool:
    """CANCELED: the case left the pool another way (quarantined, reassigned after its SLA, held)."""
    reason = f"case_{study.state}"
    with _atomic():
        if not workitems.settle(workitem, workitem.state, workitems.CANCELED, reason, now):
            return False
        audit.record("worklist_canceled", actor_ae=None, actor_host=None, study_key=study.key,
                     detail=f"workitem CANCELED: the case is {study.state}")
    log.info("workitem_canceled", case=study.key, reason=reason)
    return True
