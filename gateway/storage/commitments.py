"""Storage Commitment requests in the database: kept when the N-ACTION arrives, checked against the instance
table and the spool when their report is built, marked when the report is answered.

An instance is committed when a row of it, received from the requesting source, is in a durable state
(``stored``, ``deidentified`` or ``quarantined``: its original is in the spool either way) and its spool file
exists. A SOP Instance UID the source never stored here (or another source stored) is a failure with reason
0x0112; one stored under another SOP class 0x0119; a row whose file is gone 0x0110.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import peewee

from gateway.storage.models import (
    CommitmentRequest,
    CommitmentState,
    Delivery,
    Instance,
    InstanceState,
    OutboundObject,
    Source,
    Study,
    db,
    tuple_rows,
    utcnow,
)

DURABLE_STATES = (InstanceState.STORED, InstanceState.DEIDENTIFIED, InstanceState.QUARANTINED)
NO_SUCH_OBJECT_INSTANCE = 0x0112  # as gateway.dicom.status; storage does not import the dicom layer
CLASS_INSTANCE_CONFLICT = 0x0119
PROCESSING_FAILURE = 0x0110
CHUNK = 500  # UIDs per query (SQLite's limit on bound parameters)
SENT, PENDING = "sent", "pending"  # the delivery ledger's states, as gateway.routing.send

Reference = tuple[str, str]  # (SOP Class UID, SOP Instance UID)


@dataclass(frozen=True)
class Checked:
    """The outcome for each requested instance: committed, or failed with its Failure Reason."""

    committed: list[Reference]
    failed: list[tuple[Reference, int]]


def record_request(source: str, calling_ae: str, transaction_uid: str,
                   references: Sequence[Reference]) -> tuple[CommitmentRequest, bool]:
    """Keep the request durably (its own transaction). A request repeating a transaction UID of the same source
    replaces the one kept and is reported again from the start. Returns the row and whether it is new."""
    payload = json.dumps([list(reference) for reference in references])
    with db.atomic():
        row = CommitmentRequest.get_or_none((CommitmentRequest.source == source)
                                            & (CommitmentRequest.transaction_uid == transaction_uid))
        if row is None:
            return CommitmentRequest.create(source=source, calling_ae=calling_ae, transaction_uid=transaction_uid,
                                            sop_references=payload), True
        CommitmentRequest.update(
            sop_references=payload, calling_ae=calling_ae, state=CommitmentState.PENDING, attempts=0,
            next_attempt_at=utcnow(), last_error=None, reported_at=None, event_type=None, failed_count=None,
        ).where(CommitmentRequest.id == row.id).execute()
        return CommitmentRequest.get_by_id(row.id), False


def references_of(request: CommitmentRequest) -> list[Reference]:
    return [(str(sop_class), str(sop_instance)) for sop_class, sop_instance in json.loads(request.sop_references)]


def check(source: str, references: Sequence[Reference], spool_root: Path) -> Checked:
    """Which of ``references`` the gateway holds durably for ``source`` (see the module's docstring)."""
    held: dict[str, list[tuple[str, str]]] = {}
    uids = sorted({sop_instance for _, sop_instance in references})
    for start in range(0, len(uids), CHUNK):
        query = (Instance.select(Instance.sop_instance_uid, Instance.sop_class_uid, Instance.spool_path)
                 .join(Study).join(Source)
                 .where(Instance.sop_instance_uid.in_(uids[start:start + CHUNK]), Source.name == source,
                        Instance.state.in_(DURABLE_STATES)))
        for row in query:
            held.setdefault(row.sop_instance_uid, []).append((row.sop_class_uid, row.spool_path))
    committed: list[Reference] = []
    failed: list[tuple[Reference, int]] = []
    for reference in references:
        reason = _failure(reference, held.get(reference[1], []), spool_root)
        if reason is None:
            committed.append(reference)
        else:
            failed.append((reference, reason))
    return Checked(committed, failed)


def _failure(reference: Reference, rows: list[tuple[str, str]], spool_root: Path) -> int | None:
    if not rows:
        return NO_SUCH_OBJECT_INSTANCE
    same_class = [path for sop_class, path in rows if sop_class == reference[0]]
    if not same_class:
        return CLASS_INSTANCE_CONFLICT
    if not any((spool_root / path).is_file() for path in same_class):
        return PROCESSING_FAILURE
    return None


def due(now: dt.datetime, limit: int = 20) -> list[CommitmentRequest]:
    """Pending requests whose report may be tried now, oldest first."""
    return list(CommitmentRequest.select()
                .where((CommitmentRequest.state == CommitmentState.PENDING)
                       & (CommitmentRequest.next_attempt_at <= now))
                .order_by(CommitmentRequest.next_attempt_at).limit(limit))


def claim(request: CommitmentRequest, now: dt.datetime, lease: dt.timedelta) -> bool:
    """Take the request for one try: its next attempt is moved past the lease, if no other node has done so
    first (several nodes on one database send each report once; a node killed mid-try frees it after the
    lease)."""
    taken = (CommitmentRequest.update(next_attempt_at=now + lease)
             .where((CommitmentRequest.id == request.id) & (CommitmentRequest.state == CommitmentState.PENDING)
                    & (CommitmentRequest.next_attempt_at == request.next_attempt_at))
             .execute())
    return taken == 1


def mark_reported(request: CommitmentRequest, event_type: int, failed_count: int) -> None:
    CommitmentRequest.update(state=CommitmentState.REPORTED, attempts=CommitmentRequest.attempts + 1,
                             reported_at=utcnow(), last_error=None, event_type=event_type,
                             failed_count=failed_count).where(CommitmentRequest.id == request.id).execute()


def mark_not_delivered(request: CommitmentRequest, error: str, retry_at: dt.datetime | None) -> int:
    """One more failed try: retried at ``retry_at``, or ``failed`` when None. Returns the attempts made."""
    attempts = request.attempts + 1
    CommitmentRequest.update(
        attempts=attempts, last_error=error[:500],
        state=CommitmentState.PENDING if retry_at is not None else CommitmentState.FAILED,
        next_attempt_at=retry_at if retry_at is not None else request.next_attempt_at,
    ).where(CommitmentRequest.id == request.id).execute()
    return attempts


def summary() -> dict[str, object]:
    """For ``status``: the sources' requests by state, the pending and failed ones with their attempts and last
    error (by source and row id: the transaction UID is not shown), and the objects sent to reviewers that were
    asked about and are not committed yet (``awaiting_reviewers``)."""
    by_state: dict[str, int] = dict(tuple_rows(
        CommitmentRequest.select(CommitmentRequest.state, peewee.fn.COUNT(CommitmentRequest.id))
        .group_by(CommitmentRequest.state)))
    open_rows = (CommitmentRequest.select()
                 .where(CommitmentRequest.state.in_([CommitmentState.PENDING, CommitmentState.FAILED]))
                 .order_by(CommitmentRequest.requested_at).limit(50))
    awaiting = (Delivery.select().where((Delivery.state == SENT) & Delivery.commitment_uid.is_null(False)
                                        & Delivery.committed_at.is_null()).count())
    return {
        "by_state": by_state,
        "awaiting_reviewers": awaiting,
        "open": [{"id": row.id, "source": row.source, "state": row.state, "attempts": row.attempts,
                  "instances": len(json.loads(row.sop_references)),
                  "requested_at": row.requested_at.isoformat() + "Z",
                  "next_attempt_at": row.next_attempt_at.isoformat() + "Z" if row.state == "pending" else None,
                  "last_error": row.last_error} for row in open_rows],
    }


# Toward reviewers with ``storage_commitment``: the delivery ledger (``Delivery``) records the commitment.



def uncommitted(study_id: int, destination: str) -> list[tuple[Delivery, OutboundObject]]:
    """The case's objects sent to ``destination`` and not yet committed there, with their ledger rows."""
    rows = (Delivery.select(Delivery, OutboundObject).join(OutboundObject)
            .where((OutboundObject.study == study_id) & (Delivery.destination == destination)
                   & (Delivery.state == SENT) & Delivery.committed_at.is_null())
            .order_by(OutboundObject.id))
    return [(row, row.outbound) for row in rows]


def mark_asked(delivery_ids: Sequence[int], transaction_uid: str | None, at: dt.datetime | None) -> None:
    """The objects asked about in ``transaction_uid`` at ``at`` (both None: not asked, after all)."""
    with db.atomic():
        for start in range(0, len(delivery_ids), CHUNK):
            Delivery.update(commitment_uid=transaction_uid, commitment_requested_at=at).where(
                Delivery.id.in_(list(delivery_ids[start:start + CHUNK]))).execute()


def record_reviewer_report(destination: str, transaction_uid: str, committed: Sequence[str],
                           failed: Sequence[tuple[str, int]]) -> tuple[int, int, list[int]]:
    """A reviewer's report on one of our requests: committed objects get ``committed_at``; failed ones go back to
    pending in the ledger (sent again at the next attempt). Only rows of that transaction and destination
    change. Returns (committed, failed, the ids of the cases concerned)."""
    now = utcnow()
    mine = (Delivery.destination == destination) & (Delivery.commitment_uid == transaction_uid)
    changed = [0, 0]
    studies: set[int] = set()
    with db.atomic():
        for index, uids in ((0, list(committed)), (1, [uid for uid, _ in failed])):
            for start in range(0, len(uids), CHUNK):
                objects = OutboundObject.select(OutboundObject.id).where(
                    OutboundObject.sop_instance_uid.in_(uids[start:start + CHUNK]))
                rows = list(tuple_rows(Delivery.select(Delivery.id, OutboundObject.study).join(OutboundObject)
                                       .where(mine & Delivery.outbound.in_(objects))))
                ids = [row_id for row_id, _ in rows]
                studies.update(study_id for _, study_id in rows)
                if not ids:
                    continue
                if index == 0:
                    Delivery.update(committed_at=now).where(Delivery.id.in_(ids)).execute()
                else:
                    Delivery.update(state=PENDING, commitment_uid=None, commitment_requested_at=None, sent_at=None,
                                    last_error="not committed by the reviewer").where(Delivery.id.in_(ids)).execute()
                changed[index] += len(ids)
    return changed[0], changed[1], sorted(studies)
