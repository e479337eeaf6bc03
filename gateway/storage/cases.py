"""The case state machine: which transitions are legal, the one function that makes them, and claims.

Every transition is a conditional UPDATE (``WHERE state = <from>``), so two nodes or two jobs can never
both move the same case, and it is one log event. Stages find their work by state and leave it in the
next state: this module is how they hand over, never by calling each other.

Several nodes may share one database. Before working on a case, a stage *claims* it: a lease written with a
compare-and-set UPDATE (``claimed_by``/``claimed_until``, taken only when free, expired or already ours, and
only while the case is in a state the stage works on and meets the stage's own condition, if any),
renewed while the work goes on and released at the end. A node that dies loses its leases when they expire
and another node picks its cases up. The node's identity is stable across restarts (host and DICOM port), so
a restarted node takes its own cases back at once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import peewee
import structlog

from gateway.errors import GatewayError
from gateway.storage import wakeup
from gateway.storage.models import CaseState as S
from gateway.storage.models import Study, utcnow

log = structlog.get_logger("cases")

TRANSITIONS: dict[str, frozenset[str]] = {
    S.RECEIVING: frozenset({S.COMPLETE, S.REJECTED_NOT_SPINE, S.QUARANTINED}),
    S.COMPLETE: frozenset({S.DEIDENTIFIED, S.QUARANTINED, S.REJECTED_NOT_SPINE}),
    S.DEIDENTIFIED: frozenset({S.NOTES_ATTACHED, S.HELD, S.QUARANTINED}),
    S.HELD: frozenset({S.DEIDENTIFIED, S.NOTES_ATTACHED, S.QUARANTINED, S.ASSIGNED, S.POOLED}),
    S.NOTES_ATTACHED: frozenset({S.ASSIGNED, S.HELD, S.QUARANTINED, S.POOLED}),
    # The pool (pull reviewers): a claim gives the case to its reviewer, to read over DICOMweb; a claim abandoned
    # or given back returns it to the pool (gateway.routing.pool).
    S.POOLED: frozenset({S.DELIVERED, S.HELD, S.QUARANTINED}),
    # The study leg: to the reviewer.
    S.ASSIGNED: frozenset({S.DELIVERING, S.FAILED}),
    S.DELIVERING: frozenset({S.DELIVERED, S.FAILED, S.REPORTED}),
    S.FAILED: frozenset({S.DELIVERING, S.ASSIGNED}),  # spine-gateway retry CASE; or reassigned after the SLA
    S.DELIVERED: frozenset({S.REPORTED, S.DELIVERING, S.ASSIGNED, S.POOLED}),
    # The report leg: home to the source.
    S.REPORTED: frozenset({S.REPORT_DELIVERED, S.REPORT_FAILED}),
    S.REPORT_FAILED: frozenset({S.REPORTED}),  # spine-gateway retry CASE, or a corrected report arrives
    S.REPORT_DELIVERED: frozenset({S.REPORTED}),  # an addendum from the reviewer goes home too
    # spine-gateway release CASE, after a person looked; a notes leak goes back to the notes stage once an
    # operator redacted the notes (gateway.referral.redaction).
    S.QUARANTINED: frozenset({S.COMPLETE, S.DEIDENTIFIED}),
    S.REJECTED_NOT_SPINE: frozenset({S.COMPLETE}),  # spine-gateway release CASE: it is spine after all
}
# Where a case waits for a person; the stage loop's give-up states are among them.
STUCK_STATES = (S.QUARANTINED, S.FAILED, S.REPORT_FAILED)
REPORT_LEG = frozenset({S.REPORTED, S.REPORT_DELIVERED, S.REPORT_FAILED})
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
    The reason is kept whole as ``Study.state_reason``; the stage loop's failure count and back-off start over.

    Raises:
        IllegalTransition: the state machine does not allow this move.
    """
    current = study.state
    if not can_move(current, target):
        raise IllegalTransition(current, target)
    now = utcnow()
    values = {Study.state: target, Study.state_changed_at: now,
              Study.hold_reason: reason if target == S.HELD else None,
              Study.state_reason: reason or None,
              Study.stage_failures: 0, Study.stage_error: None, Study.stage_retry_at: None,
              **{getattr(Study, name): value for name, value in fields.items()}}
    changed = Study.update(values).where((Study.id == study.id) & (Study.state == current)).execute()
    if not changed:
        return False
    wakeup.notify(target)  # the stages consuming ``target`` run once this commits (gateway.storage.wakeup)
    study.state, study.state_changed_at = target, now
    study.state_reason = reason or None
    study.stage_failures, study.stage_error, study.stage_retry_at = 0, None, None
    for name, value in fields.items():
        setattr(study, name, value)
    log.info("case_state_changed", case=study.key, state=target, reason=reason,
             source=study.source.name if study.source_id else None)
    return True


def lock_if_still(study: Study) -> bool:
    """In a transaction: lock the case's row until the commit if it is still in ``study.state``; False when another
    worker has moved it since (on PostgreSQL, after waiting for that worker's transaction to end). Work that
    replaces a case's rows before it moves the case takes this first, so that two nodes never both do it."""
    return Study.update(state=Study.state).where((Study.id == study.id) & (Study.state == study.state)).execute() == 1


DEFAULT_LEASE = dt.timedelta(seconds=120)


@dataclass(frozen=True)
class LeaseOwner:
    """Who claims cases and for how long: the node's name (``<host>-<DICOM port>``; a receiving process has its
    own) and ``routing.claim_lease_s``. A claim is written as ``<node_id>/<stage>``."""

    node_id: str
    lease: dt.timedelta = DEFAULT_LEASE

    def __post_init__(self) -> None:
        object.__setattr__(self, "node_id", self.node_id[:64])

    def owner(self, stage: str) -> str:
        return f"{self.node_id}/{stage}"[:64] if stage else self.node_id


def process_owner() -> LeaseOwner:
    """The owner of a process that built no node context (a test, a CLI command): ``<host>:<pid>``. A node and each
    of its receiving processes claim with their context's owner, handed to every claim (``owner=``)."""
    return LeaseOwner(f"{socket.gethostname()}:{os.getpid()}")


def claim(study: Study, stage: str = "", lease: dt.timedelta | None = None, *,
          owner: LeaseOwner, states: tuple[str, ...] = (),
          condition: peewee.Expression | None = None) -> bool:
    """Take (or renew) ``stage``'s lease on ``study``; False when another stage or live node holds it.

    One compare-and-set UPDATE: with ``states``, only while the case is in one of them; with ``condition`` (a
    stage's own test of what makes a case due, e.g. the delivery's "something left to send"), only while that
    holds too: a case another node has just finished is not taken at all (rather than taken, then found done)."""
    now, lease, holder = utcnow(), lease or owner.lease, owner.owner(stage)
    free = Study.claimed_until.is_null() | (Study.claimed_until < now) | (Study.claimed_by == holder)
    where = (Study.id == study.id) & free
    if states:
        where &= Study.state.in_(states)
    if condition is not None:
        where &= condition
    return Study.update(claimed_by=holder, claimed_until=now + lease).where(where).execute() == 1


def renew(study: Study, stage: str = "", lease: dt.timedelta | None = None, *, owner: LeaseOwner) -> bool:
    """Extend our lease; False when it was lost (expired and taken by another node): stop working then."""
    return Study.update(claimed_until=utcnow() + (lease or owner.lease)).where(
        (Study.id == study.id) & (Study.claimed_by == owner.owner(stage))).execute() == 1


def lease_end(study: Study) -> dt.datetime | None:
    """When the lease on ``study`` ends (None: nobody holds it)."""
    return Study.select(Study.claimed_until).where(Study.id == study.id).scalar()


def release(study: Study, stage: str = "", *, owner: LeaseOwner) -> None:
    holder = owner.owner(stage)
    Study.update(claimed_by=None, claimed_until=None).where(
        (Study.id == study.id) & (Study.claimed_by == holder)).execute()


def release_all_of_this_node(owner: LeaseOwner) -> int:
    """At start-up: leases this node held before it stopped are void."""
    node_id = owner.node_id
    return Study.update(claimed_by=None, claimed_until=None).where(
        (Study.claimed_by == node_id) | Study.claimed_by.startswith(f"{node_id}/")).execute()


@contextlib.contextmanager
def claimed(study: Study, *states: str, stage: str = "", owner: LeaseOwner,
            condition: peewee.Expression | None = None) -> Iterator[bool]:
    """``with claimed(study, <states>, stage=...) as mine:`` work on the case only if ``mine``: the lease is
    ours, taken only while the case is in one of ``states`` and meets ``condition`` (another node may have moved
    it since it was selected; see ``claim``). One stage at a time holds a case, in this node as across nodes
    (completion takes no lease: ``CaseStage.takes_lease``).
    Once ``mine``, ``study`` holds the row as it is now, under the lease. The lease is released afterwards."""
    mine = claim(study, stage, owner=owner, states=states, condition=condition)
    if not mine and wakeup.current() is not None:
        # Held by another stage or node, whose release wakes this stage; should that wake-up be lost, the
        # stage still looks again when the lease ends (instead of at its next poll, an hour away perhaps).
        # (Not taken with no live lease on it: the case is no longer this stage's; nothing to look at again.)
        end = lease_end(study)
        if end is not None and end >= utcnow():
            wakeup.again_after_lease(stage, end)
    wakeup.claim_taken()
    try:
        if mine:
            _refresh(study)
        yield mine
    finally:
        with wakeup.releasing_claim():  # wake-ups for moves made under the claim go out once it is released
            if mine:
                release(study, stage, owner=owner)


def _refresh(study: Study) -> None:
    """``study``'s fields as the database holds them now (it was selected before the claim: its state, attempts
    or times may have changed since)."""
    row = Study.select().where(Study.id == study.id).dicts().get_or_none()  # a foreign key as its id: no join
    for name, value in (row or {}).items():
        setattr(study, name, value)  # a foreign key whose id changed drops the related row it had loaded


class Lease:
    """Keeps a claim alive during long work: ``keep()`` renews it once a third of the lease has passed, and
    says False when it was lost (then stop: another node has taken the case over)."""

    def __init__(self, study: Study, stage: str, owner: LeaseOwner) -> None:
        self.study, self.stage = study, stage
        self.owner = owner
        self.renewed = time.monotonic()

    def keep(self) -> bool:
        if time.monotonic() - self.renewed < self.owner.lease.total_seconds() / 3:
            return True
        self.renewed = time.monotonic()
        return renew(self.study, self.stage, owner=self.owner)
