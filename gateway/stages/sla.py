"""Report deadlines: a case whose reviewer has not reported by ``Study.sla_due_at`` is flagged, once.

The deadline is set at assignment from ``routing.sla_h`` (urgent or routine hours). A breach sets
``Study.sla_flagged_at`` and logs a warning ``sla_breached``. With ``routing.reassign_after_sla`` the case
also goes to another eligible reviewer (a new ``Assignment``; the old one ends with ``sla_breached``) and
is delivered to it by the delivery stage. A case still DELIVERING is reassigned once its attempt settles.
"""

from __future__ import annotations

import datetime as dt

import structlog

from gateway.routing.assignment import (
    OPEN_STATES,
    SLA_BREACHED,
    CaseNeeds,
    sla_due,
)
from gateway.stages.pipeline import run_case_stage
from gateway.stages.reviewer_choice import ReviewerChoosingStage
from gateway.storage import cases
from gateway.storage.models import Assignment, CaseState, Study

log = structlog.get_logger("routing.sla")
# A flagged case still DELIVERING is reassigned once its attempt settles.
REASSIGNABLE = (CaseState.ASSIGNED, CaseState.DELIVERED, CaseState.FAILED)
# A pooled case nobody claimed by its deadline is flagged too (it stays in the pool: it has no reviewer to take it
# from).
FLAGGED_STATES = (*OPEN_STATES, CaseState.POOLED)


class SlaStage(ReviewerChoosingStage):
    """Flags cases past their report deadline and, when configured, reassigns them."""

    name = "sla"

    claim_states = FLAGGED_STATES

    def run_once(self, now: dt.datetime) -> int:
        return run_case_stage(self, now, owner=self.context.owner)

    def due(self, now: dt.datetime) -> list[Study]:
        """Cases past their deadline not yet flagged, then (with ``reassign_after_sla``) flagged cases that can
        go to another reviewer; the reviewers' load is read once for the run."""
        overdue = list(Study.select().where(Study.state.in_(FLAGGED_STATES) & Study.sla_due_at.is_null(False)
                                            & (Study.sla_due_at <= now) & Study.sla_flagged_at.is_null()))
        if not self.routing.reassign_after_sla:
            return overdue
        self.read_load()
        flagged = list(Study.select().where(Study.state.in_(REASSIGNABLE) & Study.sla_flagged_at.is_null(False)))
        return overdue + flagged

    def step(self, study: Study, now: dt.datetime) -> int:
        """Flag the breach (once), then reassign when configured; returns how many of the two happened."""
        changed = 0
        if study.sla_flagged_at is None:
            self._flag(study, now)
            changed += 1
        if self.routing.reassign_after_sla and study.state in REASSIGNABLE:
            changed += self._reassign(study, now)
        return changed

    @staticmethod
    def give_up(study: Study) -> None:
        """A deadline check that keeps failing only backs off: the case itself is not at fault."""
        return None

    @staticmethod
    def _flag(study: Study, now: dt.datetime) -> None:
        Study.update(sla_flagged_at=now).where(Study.id == study.id).execute()
        study.sla_flagged_at = now
        log.warning(SLA_BREACHED, case=study.key, reviewer=study.reviewer, state=study.state)

    def _reassign(self, study: Study, now: dt.datetime) -> bool:
        needs = CaseNeeds.of(study)
        choice = self.pool.choose(needs, now, self._load, self._recent, self._down,
                                  exclude=[study.reviewer or "", *self._pull])
        if choice is None:
            return False
        reason = f"{SLA_BREACHED} {choice.reason}"
        fields = dict(reviewer=choice.reviewer.name, sla_due_at=sla_due(self.routing, needs.urgent, now),
                      sla_flagged_at=None, delivery_attempts=0, next_attempt_at=None)
        if study.state == CaseState.ASSIGNED:
            updated = Study.update(**fields).where((Study.id == study.id) & (Study.state == CaseState.ASSIGNED))
            if not updated.execute():
                return False
        elif not cases.move(study, CaseState.ASSIGNED, reason=SLA_BREACHED, **fields):
            return False
        (Assignment.update(active=False, ended_at=now, ended_reason=SLA_BREACHED)
         .where((Assignment.study == study) & (Assignment.active == True)).execute())  # noqa: E712
        Assignment.create(study=study, reviewer=choice.reviewer.name, reason=reason, assigned_at=now)
        log.info("case_assigned", case=study.key, reviewer=choice.reviewer.name, reason=reason)
        self._load[choice.reviewer.name] = self._load.get(choice.reviewer.name, 0) + 1
        self._recent[choice.reviewer.name] = now
        return True
