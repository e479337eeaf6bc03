"""The pool worklist's workitems: the UPS state machine (PS3.4 Annex CC), its event log, and its conditional moves.

A workitem is SCHEDULED when its case enters the pool, IN PROGRESS once a pull reviewer claims it with a Transaction
UID, COMPLETED when that reviewer's report arrived, CANCELED when the case left the pool otherwise (its claimer gave
it back, or the case was quarantined or reassigned). CANCELED and COMPLETED are final. One exception to the
standard, the node's own: an abandoned claim (``routing.pool_claim_timeout_s``) returns the workitem from IN PROGRESS
to SCHEDULED, so that the case stays in the pool under the UID its subscribers know.

:func:`change_refused` is the whole table of what a state change request may do (the statuses of PS3.4 CC.2.1.3
and CC.2.4.3), kept pure so that every (state, request) pair is tested. Every move here is a conditional UPDATE
(``WHERE state = <from>``), so two claims of the same workitem can never both win. Every state change and every
cancellation request appends one :class:`WorkitemEvent`, which subscribers read.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import uuid
from dataclasses import dataclass

from gateway.errors import GatewayError
from gateway.storage.models import Study, Workitem, WorkitemEvent, utcnow

SCHEDULED, IN_PROGRESS, CANCELED, COMPLETED = "SCHEDULED", "IN PROGRESS", "CANCELED", "COMPLETED"
STATES = (SCHEDULED, IN_PROGRESS, CANCELED, COMPLETED)
OPEN = (SCHEDULED, IN_PROGRESS)
FINAL = (CANCELED, COMPLETED)

UPS_PUSH_SOP_CLASS = "1.2.840.10008.5.1.4.34.6.1"
UPS_EVENT_SOP_CLASS = "1.2.840.10008.5.1.4.34.6.4"
GLOBAL_SUBSCRIPTION_UID = "1.2.840.10008.5.1.4.34.5"  # the well-known UID of "every workitem" (PS3.4 CC.3.1)
STATE_REPORT, CANCEL_REQUESTED = 1, 2  # Event Type IDs of the UPS Event SOP Class (PS3.4 CC.2.4.3)

# The statuses of PS3.4 CC.2.1.3 / CC.2.4.3 (N-ACTION Change State and Request Cancel), with their meaning.
MAY_NO_LONGER_BE_UPDATED = 0xC300
WRONG_TRANSACTION_UID = 0xC301
ALREADY_IN_PROGRESS = 0xC302
ONLY_SCHEDULED_BY_CREATE = 0xC303
NOT_IN_PROGRESS = 0xC310
ALREADY_COMPLETED = 0xC311
NOT_CANCELABLE = 0xC313  # here: a reviewer may not cancel a SCHEDULED pool workitem for everybody
ALREADY_CANCELED_WARNING = 0xB304
ALREADY_COMPLETED_WARNING = 0xB306
STATUS_TEXT = {
    MAY_NO_LONGER_BE_UPDATED: "the workitem may no longer be updated",
    WRONG_TRANSACTION_UID: "the correct Transaction UID was not provided",
    ALREADY_IN_PROGRESS: "the workitem is already IN PROGRESS",
    ONLY_SCHEDULED_BY_CREATE: "a workitem becomes SCHEDULED only when the node creates it",
    NOT_IN_PROGRESS: "the workitem is not IN PROGRESS",
    ALREADY_COMPLETED: "the workitem is already COMPLETED",
    NOT_CANCELABLE: "a SCHEDULED pool workitem is not canceled by a reviewer: leave it in the pool",
    ALREADY_CANCELED_WARNING: "the workitem is already CANCELED",
    ALREADY_COMPLETED_WARNING: "the workitem is already COMPLETED",
}


class WorkitemRefused(GatewayError):
    """A state change or cancellation a caller asked for that the workitem's state does not allow; ``status`` is
    the UPS status (a Cxxx failure; a Bxxx warning means there was nothing to do)."""

    def __init__(self, status: int, detail: str | None = None) -> None:
        super().__init__(detail or STATUS_TEXT.get(status, f"status {status:04X}"))
        self.status = status

    @property
    def warning(self) -> bool:
        return self.status >> 12 == 0xB


def change_refused(current: str, target: str, *, holds_transaction: bool) -> int | None:
    """The status refusing a request to change a workitem in ``current`` to ``target`` (None: allowed);
    ``holds_transaction``: the request carries the Transaction UID of the claim (for the moves out of IN PROGRESS).
    A Bxxx warning: the workitem is already in ``target`` (success, nothing changes)."""
    if target == SCHEDULED:
        return ONLY_SCHEDULED_BY_CREATE
    if current == SCHEDULED:
        return None if target == IN_PROGRESS else NOT_IN_PROGRESS
    if current == IN_PROGRESS:
        if target == IN_PROGRESS:
            return ALREADY_IN_PROGRESS
        return None if holds_transaction else WRONG_TRANSACTION_UID
    if current == target and holds_transaction:
        return ALREADY_CANCELED_WARNING if target == CANCELED else ALREADY_COMPLETED_WARNING
    return MAY_NO_LONGER_BE_UPDATED


def cancel_request_refused(current: str) -> int | None:
    """The status refusing a cancellation request on a workitem in ``current`` (None: the request goes to the
    performer as a Cancel Requested event; the performer decides, PS3.4 CC.2.4.3)."""
    if current == COMPLETED:
        return ALREADY_COMPLETED
    if current == CANCELED:
        return ALREADY_CANCELED_WARNING
    if current == SCHEDULED:
        return NOT_CANCELABLE
    return None


def transaction_digest(transaction_uid: str) -> str:
    return hashlib.sha256(transaction_uid.encode()).hexdigest()


def holds(workitem: Workitem, transaction_uid: str | None) -> bool:
    """Does ``transaction_uid`` open ``workitem``'s claim (compared in constant time)?"""
    if not transaction_uid or not workitem.transaction_sha256:
        return False
    return hmac.compare_digest(transaction_digest(transaction_uid), workitem.transaction_sha256)


def new_uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


@dataclass(frozen=True)
class Needs:
    """What a pooled case asks of its reviewer, kept on its workitem (pseudonymous)."""

    modalities: frozenset[str]
    subspecialty: str | None
    urgent: bool


def create(study: Study, needs: Needs, due_at: dt.datetime, pseudo_patient_id: str = "",
           now: dt.datetime | None = None) -> Workitem:
    """A SCHEDULED workitem for ``study`` (in the caller's transaction), and its first event."""
    now = now or utcnow()
    workitem = Workitem.create(uid=new_uid(), study=study, pseudo_patient_id=pseudo_patient_id[:64],
                               state=SCHEDULED, priority="HIGH" if needs.urgent else "MEDIUM",
                               modalities="\\".join(sorted(needs.modalities))[:64], subspecialty=needs.subspecialty,
                               scheduled_at=now, due_at=due_at, changed_at=now)
    record(workitem, STATE_REPORT)
    return workitem


def open_workitem(study: Study) -> Workitem | None:
    """The case's workitem that is not final, if any."""
    return Workitem.get_or_none((Workitem.study == study) & Workitem.state.in_(OPEN))


def take(workitem: Workitem, reviewer: str, transaction_uid: str, expires_at: dt.datetime,
         now: dt.datetime | None = None) -> bool:
    """SCHEDULED -> IN PROGRESS for ``reviewer`` under ``transaction_uid``; False when another claim came first."""
    now = now or utcnow()
    fields = dict(state=IN_PROGRESS, claimed_by=reviewer, claimed_at=now, claim_expires_at=expires_at,
                  transaction_sha256=transaction_digest(transaction_uid), changed_at=now)
    return _move(workitem, SCHEDULED, fields)


def settle(workitem: Workitem, current: str, target: str, reason: str | None = None,
           now: dt.datetime | None = None, expired_by: dt.datetime | None = None) -> bool:
    """``current`` -> ``target`` (COMPLETED, CANCELED, or SCHEDULED again after an abandoned claim, which clears the
    claim); False when the workitem was no longer in ``current`` (or, with ``expired_by``, its claim was renewed
    past that moment)."""
    fields: dict[str, object] = dict(state=target, changed_at=now or utcnow(), claim_expires_at=None)
    if target == SCHEDULED:
        fields.update(claimed_by=None, claimed_at=None, transaction_sha256=None)
    if target == CANCELED:
        fields["cancel_reason"] = (reason or "")[:64] or None
    return _move(workitem, current, fields, reason, expired_by)


def _move(workitem: Workitem, current: str, fields: dict[str, object], reason: str | None = None,
          expired_by: dt.datetime | None = None) -> bool:
    condition = (Workitem.id == workitem.id) & (Workitem.state == current)
    if expired_by is not None:
        condition &= Workitem.claim_expires_at <= expired_by
    changed = Workitem.update({getattr(Workitem, name): value for name, value in fields.items()}).where(
        condition).execute()
    if not changed:
        return False
    for name, value in fields.items():
        setattr(workitem, name, value)
    record(workitem, STATE_REPORT, reason)
    return True


def record(workitem: Workitem, event_type: int, reason: str | None = None) -> WorkitemEvent:
    """Append an event of ``workitem`` (in its present state) to the log subscribers read."""
    return WorkitemEvent.create(workitem=workitem, event_type=event_type, state=workitem.state,
                                reason=(reason or "")[:64] or None)
