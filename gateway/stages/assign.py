"""Reviewer assignment: NOTES_ATTACHED (or HELD for want of a reviewer) → ASSIGNED.

Eligible reviewers are enabled, read every image modality of the study, hold the subspecialty the referral
asks for (if any), are under ``max_open_cases``, answered their last C-ECHO (or were never checked), and are
within their working hours in their time zone — or, for an urgent case, are urgent-capable (on call) even
out of hours. Urgent cases are assigned first, then the oldest; each goes to the eligible reviewer with the
fewest open cases, ties broken by round robin (the one least recently assigned, persisted in
``Assignment``). No eligible reviewer: the case is HELD with reason ``no_reviewer`` and retried every tick.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import peewee
import structlog

from gateway.storage import cases
from gateway.config import ReviewerConfig, RoutingConfig
from gateway.storage.models import Assignment, CaseState, PeerHealth, Referral, Series, Study, utcnow
from gateway.stages.pipeline import run_case_stage

log = structlog.get_logger("routing.assign")

NO_REVIEWER = "no_reviewer"
# A case counts against a reviewer's capacity from assignment until the report comes back.
OPEN_STATES = (CaseState.ASSIGNED, CaseState.DELIVERING, CaseState.DELIVERED, CaseState.FAILED)
# Objects that are not images say nothing about who can read the study.
NON_IMAGE_MODALITIES = frozenset({"SR", "KO", "PR", "DOC", "OT", "REG", "SEG"})


def reviewer_peer(name: str) -> str:
    """The ``PeerHealth.name`` and ``Delivery.destination`` of a reviewer."""
    return f"reviewer:{name}"


def within_hours(reviewer: ReviewerConfig, now_utc: dt.datetime) -> bool:
    """Is ``now_utc`` (naive UTC) inside ``reviewer.hours`` in ``reviewer.timezone``? Ranges may span midnight."""
    start_text, end_text = reviewer.hours.split("-")
    start, end = _minutes(start_text), _minutes(end_text)
    if (start, end) == (0, 24 * 60) or start == end:
        return True
    local = now_utc.replace(tzinfo=dt.UTC).astimezone(zoneinfo.ZoneInfo(reviewer.timezone))
    minute = local.hour * 60 + local.minute
    return start <= minute < end if start < end else (minute >= start or minute < end)


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def open_cases() -> dict[str, int]:
    """Reviewer name → cases assigned to it and not yet reported."""
    query = (Study.select(Study.reviewer, peewee.fn.COUNT(Study.id))
             .where(Study.state.in_(OPEN_STATES) & Study.reviewer.is_null(False))
             .group_by(Study.reviewer))
    return dict(query.tuples())


def last_assigned() -> dict[str, dt.datetime]:
    """Reviewer name → when it was last given a case (the round-robin memory)."""
    query = (Assignment.select(Assignment.reviewer, peewee.fn.MAX(Assignment.assigned_at))
             .group_by(Assignment.reviewer))
    return dict(query.tuples())


def unhealthy_peers() -> set[str]:
    return {name for (name,) in PeerHealth.select(PeerHealth.name).where(PeerHealth.ok == False).tuples()}  # noqa: E712


@dataclass(frozen=True)
class CaseNeeds:
    """What a case asks of its reviewer."""

    modalities: frozenset[str]
    subspecialty: str | None
    urgent: bool

    @classmethod
    def of(cls, study: Study) -> CaseNeeds:
        modalities = frozenset(
            m.strip().upper() for (m,) in Series.select(Series.modality).where(Series.study == study).tuples()
            if m and m.strip().upper() not in NON_IMAGE_MODALITIES)
        referral = Referral.get_or_none(Referral.study == study)
        subspecialty = referral.subspecialty if referral is not None and referral.subspecialty else None
        urgent = study.urgency == "urgent" or (referral is not None and referral.urgency == "urgent")
        return cls(modalities, subspecialty, urgent)


@dataclass(frozen=True)
class Choice:
    reviewer: ReviewerConfig
    reason: str


class ReviewerPool:
    """The configured reviewers and the rules that pick one for a case."""

    def __init__(self, reviewers: Sequence[ReviewerConfig]) -> None:
        self.reviewers = list(reviewers)

    def by_name(self, name: str | None) -> ReviewerConfig | None:
        return next((r for r in self.reviewers if r.name == name), None)

    def choose(self, needs: CaseNeeds, now: dt.datetime, load: dict[str, int], recent: dict[str, dt.datetime],
               down: set[str], exclude: Iterable[str] = ()) -> Choice | None:
        """The best eligible reviewer for a case with ``needs``, or None. ``load`` is open cases by name."""
        excluded = set(exclude)
        eligible: list[tuple[ReviewerConfig, bool]] = []
        for reviewer in self.reviewers:
            if reviewer.name in excluded or not self._can_take(reviewer, needs, load, down):
                continue
            in_hours = within_hours(reviewer, now)
            if in_hours or (needs.urgent and reviewer.urgent):
                eligible.append((reviewer, in_hours))
        if not eligible:
            return None
        never = dt.datetime.min
        order = {r.name: i for i, r in enumerate(self.reviewers)}
        eligible.sort(key=lambda pair: (load.get(pair[0].name, 0), recent.get(pair[0].name, never),
                                        order[pair[0].name]))
        best, in_hours = eligible[0]
        tied = sum(1 for r, _ in eligible if load.get(r.name, 0) == load.get(best.name, 0)) > 1
        parts = ["urgent" if needs.urgent else "routine", f"open_cases={load.get(best.name, 0)}",
                 "in_hours" if in_hours else "on_call_out_of_hours"]
        if needs.subspecialty:
            parts.append("subspecialty")
        if tied:
            parts.append("round_robin")
        return Choice(best, " ".join(parts))

    @staticmethod
    def _can_take(reviewer: ReviewerConfig, needs: CaseNeeds, load: dict[str, int], down: set[str]) -> bool:
        if not reviewer.enabled or reviewer_peer(reviewer.name) in down:
            return False
        if load.get(reviewer.name, 0) >= reviewer.max_open_cases:
            return False
        if reviewer.modalities and not needs.modalities <= {m.upper() for m in reviewer.modalities}:
            return False
        wanted = needs.subspecialty
        return not wanted or wanted.lower() in {s.lower() for s in reviewer.subspecialties}


def sla_due(routing: RoutingConfig, urgent: bool, now: dt.datetime) -> dt.datetime:
    hours = routing.sla_h.urgent if urgent else routing.sla_h.routine
    return now + dt.timedelta(hours=hours)


def record_assignment(study: Study, reviewer: str, reason: str, now: dt.datetime) -> Assignment:
    """End the case's active assignment (if any) and make ``reviewer`` the active one."""
    (Assignment.update(active=False, ended_at=now, ended_reason="reassigned")
     .where((Assignment.study == study) & (Assignment.active == True)).execute())  # noqa: E712
    return Assignment.create(study=study, reviewer=reviewer, reason=reason, assigned_at=now)


def _needs_for_order(study: Study) -> CaseNeeds:
    """The case's needs, to order the queue; a case whose needs cannot be read sorts as routine (its own step
    raises again, and the stage loop deals with that case alone)."""
    try:
        return CaseNeeds.of(study)
    except Exception:  # noqa: BLE001 - one unreadable case must not stop the queue
        return CaseNeeds(frozenset(), None, False)


class AssignmentStage:
    """NOTES_ATTACHED and HELD(no_reviewer) → ASSIGNED, or NOTES_ATTACHED → HELD(no_reviewer)."""

    name = "assignment"

    def __init__(self, reviewers: Sequence[ReviewerConfig], routing: RoutingConfig) -> None:
        self.pool = ReviewerPool(reviewers)
        self.routing = routing
        self._load: dict[str, int] = {}
        self._recent: dict[str, dt.datetime] = {}
        self._down: set[str] = set()

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
        return run_case_stage(self, now)

    def due(self, now: dt.datetime) -> list[Study]:
        """The waiting cases; the reviewers' load is read once for the whole run."""
        pending = self.waiting()
        if pending:
            self._load, self._recent, self._down = open_cases(), last_assigned(), unhealthy_peers()
        return [study for study, _ in pending]

    def step(self, study: Study, now: dt.datetime) -> bool:
        needs = CaseNeeds.of(study)
        choice = self.pool.choose(needs, now, self._load, self._recent, self._down)
        if choice is None:
            return bool(self._hold(study))
        if not self._assign(study, choice, needs, now):
            return False
        self._load[choice.reviewer.name] = self._load.get(choice.reviewer.name, 0) + 1
        self._recent[choice.reviewer.name] = utcnow()  # strictly later than every earlier assignment
        return True

    @staticmethod
    def give_up(study: Study) -> str:
        return CaseState.QUARANTINED

    def _hold(self, study: Study) -> int:
        if study.state == CaseState.HELD:
            return 0
        if cases.move(study, CaseState.HELD, reason=NO_REVIEWER):
            log.warning("no_reviewer", case=study.key)
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
