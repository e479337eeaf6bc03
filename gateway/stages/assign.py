"""Reviewer assignment: NOTES_ATTACHED (or HELD for want of a reviewer) → ASSIGNED.

Eligible reviewers are enabled, read every image modality of the study, hold the subspecialty the referral
asks for (if any), are under ``max_open_cases``, answered their last C-ECHO (or were never checked), and are
within their working hours in their time zone — or, for an urgent case, are urgent-capable (on call) even
out of hours. Urgent cases are assigned first, then the oldest; each goes to the eligible reviewer with the
fewest open cases, ties broken by round robin (the one least recently assigned, persisted in
``Assignment``). No eligible reviewer: the case is HELD with hold reason ``no_reviewer`` and, as its state
reason, why in words (:meth:`ReviewerPool.why_none`), and retried every tick.
The rules themselves are :mod:`gateway.routing.assignment`; this stage applies them case by case.
"""

from __future__ import annotations

import datetime as dt

import structlog

from gateway.routing.assignment import (
    NO_REVIEWER,
    CaseNeeds,
    Choice,
    record_assignment,
    sla_due,
)
from gateway.routing.pool import put_in_pool
from gateway.stages.pipeline import run_case_stage
from gateway.stages.reviewer_choice import ReviewerChoosingStage
from gateway.storage import cases
from gateway.storage.models import CaseState, Study, utcnow

log = structlog.get_logger("routing.assign")


def _needs_for_order(study: Study) -> CaseNeeds:
    """The case's needs, to order the queue; a case whose needs cannot be read sorts as routine (its own step
    raises again, and the stage loop deals with that case alone)."""
    try:
        return CaseNeeds.of(study)
    except Exception:  # noqa: BLE001 - one unreadable case must not stop the queue
        return CaseNeeds(frozenset(), None, False)


class AssignmentStage(ReviewerChoosingStage):
    """NOTES_ATTACHED and HELD(no_reviewer) → ASSIGNED, or NOTES_ATTACHED → HELD(no_reviewer)."""

    name = "assignment"

    def waiting(self) -> list[tuple[Study, CaseNeeds]]:
        """Cases to assign: urgent first, then oldest."""
        query = Study.select().where(
            (Study.state == CaseState.NOTES_ATTACHED)
            | ((Study.state == CaseState.HELD) & (Study.hold_reason == NO_REVIEWER)))
        pending = [(study, _needs_for_order(study)) for study in query]
        pending.sort(key=lambda pair: (not pair[1].urgent, pair[0].first_received_at, pair[0].id))
        return pending

    claim_states = (CaseState.NOTES_ATTACHED, CaseState.HELD)

    def run_once(self, now: dt.datetime) -> int:
        return run_case_stage(self, now, owner=self.context.owner)

    def due(self, now: dt.datetime) -> list[Study]:
        """The waiting cases; the reviewers' load is read once for the whole run."""
        pending = self.waiting()
        if pending:
            self.read_load()
        return [study for study, _ in pending]

    def step(self, study: Study, now: dt.datetime) -> bool:
        needs = CaseNeeds.of(study)
        choice = self.pool.choose(needs, now, self._load, self._recent, self._down)
        if choice is None:
            return bool(self._hold(study, self.pool.why_none(needs, now, self._load, self._down)))
        if choice.reviewer.mode == "pull":
            # the pool: any eligible pull reviewer claims it (gateway.routing.pool); it counts on nobody's load yet
            return put_in_pool(study, needs, sla_due(self.routing, needs.urgent, now), choice.reason, now)
        if not self._assign(study, choice, needs, now):
            return False
        self._load[choice.reviewer.name] = self._load.get(choice.reviewer.name, 0) + 1
        self._recent[choice.reviewer.name] = utcnow()  # strictly later than every earlier assignment
        return True

    @staticmethod
    def give_up(study: Study) -> str:
        return CaseState.QUARANTINED

    def _hold(self, study: Study, why: str) -> int:
        """Hold the case (``hold_reason`` no_reviewer) with ``why`` as its reason; a held case whose reason
        changed (a reviewer filled up, went out of hours) gets the new one, logged once."""
        if study.state == CaseState.HELD:
            if study.state_reason != why:
                changed = (Study.update(state_reason=why)
                           .where((Study.id == study.id) & (Study.state == CaseState.HELD)).execute())
                if changed:
                    study.state_reason = why
                    log.warning("no_reviewer", case=study.key, reason=why)
            return 0
        if cases.move(study, CaseState.HELD, reason=NO_REVIEWER, state_reason=why):
            log.warning("no_reviewer", case=study.key, reason=why)
            return 1
        return 0

    def _assign(self, study: Study, choice: Choice, needs: CaseNeeds, now: dt.datetime) -> bool:
        name = choice.reviewer.name
        moved = cases.move(study, CaseState.ASSIGNED, reason=choice.reason, reviewer=name,
                           sla_due_at=sla_due(self.routing, needs.urgent, now), sla_flagged_at=None,
                           delivery_attempts=0, next_attempt_at=None)
        if moved:
            record_assignment(study, name, choice.reason, utcnow())
            log.info("case_assigned", case=study.key, reviewer=name, reason=choice.reason)
        return moved
