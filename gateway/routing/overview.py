"""The routing part of ``spine-gateway status``: reviewer load, queues, oldest waiting cases, peer health.

Cases appear by their random key only. Everything is read from the database at call time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import peewee

from gateway.config import ReviewerConfig
from gateway.routing.assignment import NO_REVIEWER, OPEN_STATES, SLA_BREACHED, open_cases
from gateway.storage.models import Assignment, CaseState, PeerHealth, Study, tuple_rows

# States where a case sits until the gateway (not a person or a reviewer) moves it on.
FINAL_STATES = (CaseState.REPORT_DELIVERED, CaseState.REJECTED_NOT_SPINE)


def open_states() -> list[str]:
    """Every state but the final ones, named (``state IN``, which the state's index serves, where ``NOT IN`` the final
    states read every case of the history)."""
    return [value for name, value in vars(CaseState).items()
            if not name.startswith("_") and isinstance(value, str) and value not in FINAL_STATES]


def _iso(moment: Any) -> str | None:
    return None if moment is None else moment.isoformat() + "Z"


def reviewer_rows(reviewers: Sequence[ReviewerConfig]) -> list[dict[str, Any]]:
    load = open_cases()
    flagged: dict[str, int] = dict(tuple_rows(
        Study.select(Study.reviewer, peewee.fn.COUNT(Study.id))
        .where(Study.state.in_(OPEN_STATES) & Study.sla_flagged_at.is_null(False)).group_by(Study.reviewer)))
    ended: dict[str, int] = dict(tuple_rows(
        Assignment.select(Assignment.reviewer, peewee.fn.COUNT(Assignment.id))
        .where(Assignment.ended_reason == SLA_BREACHED).group_by(Assignment.reviewer)))
    health = {row.name: row for row in PeerHealth.select()}
    rows = []
    for reviewer in reviewers:
        peer = health.get(f"reviewer:{reviewer.name}")
        rows.append({
            "reviewer": reviewer.name, "enabled": reviewer.enabled, "open_cases": load.get(reviewer.name, 0),
            "max_open_cases": reviewer.max_open_cases,
            "sla_breaches": flagged.get(reviewer.name, 0) + ended.get(reviewer.name, 0),
            "echo_ok": None if peer is None else peer.ok, "echo_at": None if peer is None else _iso(peer.checked_at),
        })
    return rows


def queue_depth() -> dict[str, int]:
    waiting_assignment = Study.select().where(
        (Study.state == CaseState.NOTES_ATTACHED)
        | ((Study.state == CaseState.HELD) & (Study.hold_reason == NO_REVIEWER))).count()
    waiting_delivery = Study.select().where(Study.state.in_((CaseState.ASSIGNED, CaseState.DELIVERING))).count()
    return {"waiting_assignment": waiting_assignment, "waiting_delivery": waiting_delivery}


def oldest_waiting() -> dict[str, dict[str, Any]]:
    """State → the case that has been in it longest (and since when)."""
    oldest: dict[str, dict[str, Any]] = {}
    query = (Study.select(Study.state, Study.key, Study.state_changed_at, Study.hold_reason, Study.state_reason)
             .where(Study.state.in_(open_states())).order_by(Study.state_changed_at))
    for state, key, since, hold_reason, state_reason in tuple_rows(query):
        if state not in oldest:
            oldest[state] = {"case": key, "since": _iso(since), "reason": hold_reason or state_reason}
    return oldest


def peer_rows() -> list[dict[str, Any]]:
    return [{"peer": row.name, "ok": row.ok, "checked_at": _iso(row.checked_at), "changed_at": _iso(row.changed_at),
             "detail": row.detail} for row in PeerHealth.select().order_by(PeerHealth.name)]


def routing_snapshot(reviewers: Sequence[ReviewerConfig]) -> dict[str, Any]:
    """JSON-ready routing status (call inside a database connection)."""
    return {"reviewers": reviewer_rows(reviewers), "queue": queue_depth(), "oldest_waiting": oldest_waiting(),
            "peers": peer_rows()}
