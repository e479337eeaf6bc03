"""Who may read a case and who is free: the rules of reviewer assignment, read and written in the database.

The assignment stage (:mod:`gateway.stages.assign`) and the SLA stage (:mod:`gateway.stages.sla`) apply them;
the routing overview of ``spine-gateway status`` reads the same load and the same states.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import peewee

from gateway.config import ReviewerConfig, RoutingConfig
from gateway.storage.models import Assignment, CaseState, PeerHealth, Referral, Series, Study, tuple_rows

NO_REVIEWER = "no_reviewer"
# What the SLA stage logs, and writes before the new reason, when it takes a case from a reviewer past its SLA.
SLA_BREACHED = "sla_breached"
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
    return dict(tuple_rows(query))


def last_assigned() -> dict[str, dt.datetime]:
    """Reviewer name → when it was last given a case (the round-robin memory)."""
    query = (Assignment.select(Assignment.reviewer, peewee.fn.MAX(Assignment.assigned_at))
             .group_by(Assignment.reviewer))
    return dict(tuple_rows(query))


def unhealthy_peers() -> set[str]:
    return set(PeerHealth.select(PeerHealth.name).where(PeerHealth.ok == False).scalars())  # noqa: E712


@dataclass(frozen=True)
class CaseNeeds:
    """What a case asks of its reviewer."""

    modalities: frozenset[str]
    subspecialty: str | None
    urgent: bool

    @classmethod
    def of(cls, study: Study) -> CaseNeeds:
        modalities = frozenset(
            m.strip().upper() for m in Series.select(Series.modality).where(Series.study == study).scalars()
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

    def why_none(self, needs: CaseNeeds, now: dt.datetime, load: dict[str, int], down: set[str]) -> str:
        """Why no reviewer can take a case with ``needs`` now, in the words every surface shows (the log, ``status``,
        the operators' and the referrer's pages): what the case asks, and how many of the pool match.

        A need no configured reviewer meets at all comes first ("no reviewer with subspecialty spine is
        configured: 0 of 1 reviewers match"); otherwise each reviewer's first obstacle is counted.
        """
        total = len(self.reviewers)
        if not total:
            return "no reviewer is configured"
        wanted = needs.subspecialty
        if wanted and not any(wanted.lower() in {s.lower() for s in r.subspecialties} for r in self.reviewers):
            return f"no reviewer with subspecialty {wanted} is configured: 0 of {total} reviewers match"
        if needs.modalities and not any(_reads(r, needs) for r in self.reviewers):
            modalities = ", ".join(sorted(needs.modalities))
            return f"no reviewer reading {modalities} is configured: 0 of {total} reviewers match"
        obstacles: dict[str, int] = {}
        for reviewer in self.reviewers:
            obstacle = _obstacle(reviewer, needs, now, load, down)
            if obstacle:
                obstacles[obstacle] = obstacles.get(obstacle, 0) + 1
        detail = ", ".join(f"{count} {obstacle}" for obstacle, count in obstacles.items())
        return f"no reviewer free now: 0 of {total} reviewers can take it ({detail})"

    @staticmethod
    def _can_take(reviewer: ReviewerConfig, needs: CaseNeeds, load: dict[str, int], down: set[str]) -> bool:
        if not reviewer.enabled or _down(reviewer, down):
            return False
        if load.get(reviewer.name, 0) >= reviewer.max_open_cases:
            return False
        if reviewer.modalities and not needs.modalities <= {m.upper() for m in reviewer.modalities}:
            return False
        wanted = needs.subspecialty
        return not wanted or wanted.lower() in {s.lower() for s in reviewer.subspecialties}


def _down(reviewer: ReviewerConfig, down: set[str]) -> bool:
    """A push reviewer whose last C-ECHO failed; a pull reviewer is never checked (it has no PACS the node sends
    to), so a check from before it pulled does not count."""
    return reviewer.mode == "push" and reviewer_peer(reviewer.name) in down


def _reads(reviewer: ReviewerConfig, needs: CaseNeeds) -> bool:
    return not reviewer.modalities or needs.modalities <= {m.upper() for m in reviewer.modalities}


def _obstacle(reviewer: ReviewerConfig, needs: CaseNeeds, now: dt.datetime, load: dict[str, int],
              down: set[str]) -> str:
    """The first rule that keeps ``reviewer`` from the case, in words ('' when none does)."""
    wanted = needs.subspecialty
    if wanted and wanted.lower() not in {s.lower() for s in reviewer.subspecialties}:
        return f"without subspecialty {wanted}"
    if not _reads(reviewer, needs):
        return f"not reading {', '.join(sorted(needs.modalities))}"
    if not reviewer.enabled:
        return "disabled"
    if _down(reviewer, down):
        return "not answering C-ECHO"
    if load.get(reviewer.name, 0) >= reviewer.max_open_cases:
        return "at max_open_cases"
    if not within_hours(reviewer, now) and not (needs.urgent and reviewer.urgent):
        return "out of working hours"
    return ""


def sla_due(routing: RoutingConfig, urgent: bool, now: dt.datetime) -> dt.datetime:
    hours = routing.sla_h.urgent if urgent else routing.sla_h.routine
    return now + dt.timedelta(hours=hours)


def record_assignment(study: Study, reviewer: str, reason: str, now: dt.datetime) -> Assignment:
    """End the case's active assignment (if any) and make ``reviewer`` the active one."""
    (Assignment.update(active=False, ended_at=now, ended_reason="reassigned")
     .where((Assignment.study == study) & (Assignment.active == True)).execute())  # noqa: E712
    return Assignment.create(study=study, reviewer=reviewer, reason=reason, assigned_at=now)


SPINE_IMAGING = ("MR", "CT", "CR", "DX")  # what a spine study is made of (the README's MRI, CT and X-ray)


def unsatisfiable_rules(reviewers: Sequence[ReviewerConfig]) -> list[str]:
    """What the configured pool can never take, one line each (``check-config`` warns, the node logs them at
    start): such cases are held for ever, each with the reason :meth:`ReviewerPool.why_none` gives."""
    enabled = [r for r in reviewers if r.enabled]
    if not reviewers:
        return ["no reviewer is configured: every case is held (no_reviewer)"]
    if not enabled:
        return [f"every reviewer is disabled (0 of {len(reviewers)} enabled): every case is held (no_reviewer)"]
    warnings = []
    if not any(r.subspecialties for r in reviewers):
        warnings.append(f"no reviewer lists a subspecialty (0 of {len(reviewers)}): a referral asking for one "
                        "(\"subspecialty\": ...) is held until a reviewer lists it")
    unread = [m for m in SPINE_IMAGING if not any(not r.modalities or m in {x.upper() for x in r.modalities}
                                                  for r in enabled)]
    if unread:
        warnings.append(f"no enabled reviewer reads {', '.join(unread)}: such studies are held (no_reviewer)")
    always_on = any(_minutes(r.hours.split("-")[0]) == _minutes(r.hours.split("-")[1]) % (24 * 60)
                    for r in enabled)
    if not always_on and not any(r.urgent for r in enabled):
        warnings.append("no enabled reviewer is on call (urgent: true) nor always on: an urgent case out of every "
                        "reviewer's hours waits until one starts")
    return warnings
