"""Report deadlines: a case whose reviewer has not reported by ``Study.sla_due_at`` is flagged, once.

The deadline is set at assignment from ``routing.sla_h`` (urgent or routine hours). A breach sets
``Study.sla_flagged_at`` and logs a warning ``sla_breached``. With ``routing.reassign_after_sla`` the case
also goes to another eligible reviewer (a new ``Assignment``; the old one ends with ``sla_breached``) and
is delivered to it by the delivery stage. A case still DELIVERING is reassigned once its attempt settles.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import structlog

from gateway import cases
from gateway.config import ReviewerConfig, RoutingConfig
from gateway.models import Assignment, CaseState, Study
from gateway.routing.assign import (
    OPEN_STATES,
    CaseNeeds,
    ReviewerPool,
    last_assigned,
    open_cases,
    sla_due,
    unhealthy_peers,
)

log = structlog.get_logger("routing.sla")
SLA_BREACHED = "sla_breached"


class SlaStage:
    """Flags cases past their report deadline and, when configured, reassigns them."""

    name = "sla"

    def __init__(self, reviewers: Sequence[ReviewerConfig], routing: RoutingConfig) -> None:
        self.pool = ReviewerPool(reviewers)
        self.routing = routing

    def run_once(self, now: dt.datetime) -> int:
        overdue = list(Study.select().where(Study.state.in_(OPEN_STATES) & Study.sla_due_at.is_null(False)
                                            & (Study.sla_due_at <= now) & Study.sla_flagged_at.is_null()))
        changed = 0
        for study in overdue:
            Study.update(sla_flagged_at=now).where(Study.id == study.id).execute()
            study.sla_flagged_at = now
            log.warning(SLA_BREACHED, case=study.key, reviewer=study.reviewer, state=study.state)
            changed += 1
        if self.routing.reassign_after_sla:
            changed += self._reassign_flagged(now)
        return changed

    def _reassign_flagged(self, now: dt.datetime) -> int:
        flagged = Study.select().where(Study.state.in_((CaseState.ASSIGNED, CaseState.DELIVERED, CaseState.FAILED))
                                       & Study.sla_flagged_at.is_null(False))
        load, recent, down = open_cases(), last_assigned(), unhealthy_peers()
        moved = 0
        for study in list(flagged):  # fetched whole before writing (SQLite: see CompletionStage.run_once)
            needs = CaseNeeds.of(study)
            choice = self.pool.choose(needs, now, load, recent, down, exclude=[study.reviewer or ""])
            if choice is None:
                continue
            reason = f"{SLA_BREACHED} {choice.reason}"
            fields = dict(reviewer=choice.reviewer.name, sla_due_at=sla_due(self.routing, needs.urgent, now),
                          sla_flagged_at=None, delivery_attempts=0, next_attempt_at=None)
            if study.state == CaseState.ASSIGNED:
                updated = Study.update(**fields).where((Study.id == study.id) & (Study.state == CaseState.ASSIGNED))
                if not updated.execute():
                    continue
            elif not cases.move(study, CaseState.ASSIGNED, reason=SLA_BREACHED, **fields):
                continue
            (Assignment.update(active=False, ended_at=now, ended_reason=SLA_BREACHED)
             .where((Assignment.study == study) & (Assignment.active == True)).execute())  # noqa: E712
            Assignment.create(study=study, reviewer=choice.reviewer.name, reason=reason, assigned_at=now)
            log.info("case_assigned", case=study.key, reviewer=choice.reviewer.name, reason=reason)
            load[choice.reviewer.name] = load.get(choice.reviewer.name, 0) + 1
            recent[choice.reviewer.name] = now
            moved += 1
        return moved
