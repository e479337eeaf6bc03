"""The case state machine: which transitions are legal, and the one function that makes them.

Every transition is a conditional UPDATE (``WHERE state = <from>``), so two nodes or two jobs can never
both move the same case, and it is one log event. Stages find their work by state and leave it in the
next state: this module is how they hand over, never by calling each other.
"""

from __future__ import annotations

import structlog

from gateway.errors import GatewayError
from gateway.models import CaseState as S
from gateway.models import Study, utcnow

log = structlog.get_logger("cases")

TRANSITIONS: dict[str, frozenset[str]] = {
    S.RECEIVING: frozenset({S.COMPLETE, S.REJECTED_NOT_SPINE}),
    S.COMPLETE: frozenset({S.DEIDENTIFIED, S.QUARANTINED, S.REJECTED_NOT_SPINE, S.HELD, S.RECEIVING}),
    S.DEIDENTIFIED: frozenset({S.NOTES_ATTACHED, S.HELD, S.QUARANTINED}),
    S.HELD: frozenset({S.COMPLETE, S.DEIDENTIFIED, S.NOTES_ATTACHED, S.QUARANTINED, S.ASSIGNED}),
    S.NOTES_ATTACHED: frozenset({S.ASSIGNED, S.HELD}),
    S.ASSIGNED: frozenset({S.DELIVERING, S.HELD}),
    S.DELIVERING: frozenset({S.DELIVERED, S.FAILED, S.QUARANTINED, S.REPORTED}),
    S.FAILED: frozenset({S.DELIVERING, S.ASSIGNED}),
    S.DELIVERED: frozenset({S.REPORTED, S.DELIVERING, S.ASSIGNED}),
    S.REPORTED: frozenset({S.REPORT_DELIVERED, S.FAILED}),
    S.REPORT_DELIVERED: frozenset({S.REPORTED}),  # an addendum from the reviewer goes home too
    S.QUARANTINED: frozenset({S.COMPLETE}),
    S.REJECTED_NOT_SPINE: frozenset({S.COMPLETE}),
}
ALL_STATES = frozenset(TRANSITIONS)


class IllegalTransition(GatewayError):
    """A stage asked for a transition the state machine does not allow."""

    def __init__(self, current: str, target: str) -> None:
        super().__init__(f"a case cannot go from {current!r} to {target!r}")
        self.current = current
        self.target = target


def can_move(current: str, target: str) -> bool:
    return target in TRANSITIONS.get(current, frozenset())


def move(study: Study, target: str, *, reason: str | None = None, **fields: object) -> bool:
    """Move ``study`` from its current state to ``target`` (and set ``fields``) if nobody moved it first.

    Returns False when another worker changed the state in the meantime (the caller leaves the case alone).

    Raises:
        IllegalTransition: the state machine does not allow this move.
    """
    current = study.state
    if not can_move(current, target):
        raise IllegalTransition(current, target)
    now = utcnow()
    values = {Study.state: target, Study.state_changed_at: now,
              Study.hold_reason: reason if target == S.HELD else None,
              **{getattr(Study, name): value for name, value in fields.items()}}
    changed = Study.update(values).where((Study.id == study.id) & (Study.state == current)).execute()
    if not changed:
        return False
    study.state, study.state_changed_at = target, now
    for name, value in fields.items():
        setattr(study, name, value)
    log.info("case_state_changed", case=study.key, state=target, reason=reason,
             source=study.source.name if study.source_id else None)
    return True
