"""The Storage Commitment SCP's side of the association: an N-ACTION (Request Storage Commitment) from a source
is kept in the database and answered at once; the commitment stage (``gateway.stages.commitment``) checks the
instances and sends the report in a new association to the source's ``return`` address.

Statuses answered to N-ACTION:
    0x0000  the request is kept; its report (N-EVENT-REPORT) follows in a new association
    0x0123  no such action type (only Action Type 1, Request Storage Commitment, exists)
    0x0120  no Transaction UID or no Referenced SOP Sequence
    0x0115  an item without both UIDs, a UID over 64 characters, or more than ``commitment.max_instances``
    0x0124  refused, not authorized: a reviewer, or a source without a ``return`` address (the gateway reports
            only in a new association: see docs/conformance-statement.md)
    0x0110  processing failure: the request could not be kept (database unavailable)

Statuses answered to N-EVENT-REPORT (a reviewer's report on a request of ours, ``reviewers[].storage_commitment``):
    0x0000  recorded in the delivery ledger (a transaction we do not know changes nothing, and is logged)
    0x0113  no such event type (only 1 and 2 exist)
    0x0120  no Transaction UID
    0x0124  refused, not authorized: the caller is not a reviewer
    0x0110  processing failure: the report could not be recorded (database unavailable; the reviewer may send it
            again)
"""

from __future__ import annotations

from collections.abc import Sequence

import peewee
import structlog
from pydicom.dataset import Dataset
from pynetdicom import evt

from gateway.config import CommitmentConfig, SourceConfig
from gateway.dicom import status
from gateway.dicom.commitment import InvalidCommitmentRequest, read_report, read_request
from gateway.ops import audit
from gateway.scp.policy import Caller
from gateway.stages.context import NodeContext, WithNodeContext
from gateway.storage import commitments
from gateway.storage.models import CaseState, Study, utcnow
from gateway.storage.wakeup import COMMITMENT

log = structlog.get_logger("scp")


class CommitmentIntake(WithNodeContext):
    """Takes a source's N-ACTION: checks it, keeps it, answers. ``commitment``, ``sources``: those sections of
    the configuration; ``context``: the node's (its database and wake-ups)."""

    def __init__(self, commitment: CommitmentConfig, sources: Sequence[SourceConfig], *,
                 context: NodeContext | None = None) -> None:
        self.max_instances = commitment.max_instances
        self.with_return = {source.ae_title for source in sources if source.return_ is not None}
        self._context = context

    def take(self, event: evt.Event, caller: Caller, peer: str) -> tuple[int, Dataset | None]:
        """The N-ACTION's answer: see the module's docstring for the statuses."""
        if caller.role != "source" or caller.ae_title not in self.with_return:
            reason = "not_a_source" if caller.role != "source" else "no_return_address"
            return self._refused(caller, peer, status.NOT_AUTHORIZED, reason)
        try:
            request = read_request(event.action_type, self._information(event), self.max_instances)
        except InvalidCommitmentRequest as invalid:
            return self._refused(caller, peer, invalid.status, invalid.reason)
        try:
            with self.context.database.connection_context():
                row, new = commitments.record_request(caller.name, caller.ae_title, request.transaction_uid,
                                                      request.references)
            self.context.notify(COMMITMENT)  # the commitment stage sends the report now, not at its next poll
        except peewee.DatabaseError as exc:
            log.error("commitment_not_kept", source=caller.name, error=type(exc).__name__,
                      status=status.PROCESSING_FAILURE)
            return status.PROCESSING_FAILURE, None
        log.info("commitment_requested", source=caller.name, instances=len(request.references),
                 status=status.SUCCESS, reason=None if new else "repeated_transaction")
        self._audit("commitment_requested", caller, peer, "success",
                    f"commitment request {row.id}: {len(request.references)} instance(s)"
                    + ("" if new else ", repeated transaction: reported again"))
        return status.SUCCESS, None

    def take_report(self, event: evt.Event, caller: Caller, peer: str) -> tuple[int, Dataset | None]:
        """A reviewer's N-EVENT-REPORT: see the module's docstring for the statuses."""
        if caller.role != "reviewer":
            return self._refused(caller, peer, status.NOT_AUTHORIZED, "not_a_reviewer")
        try:
            report = read_report(event.event_type, self._information(event, "event_information"))
        except InvalidCommitmentRequest as invalid:
            return self._refused(caller, peer, invalid.status, invalid.reason)
        try:
            with self.context.database.connection_context():
                committed, failed, studies = commitments.record_reviewer_report(
                    f"reviewer:{caller.name}", report.transaction_uid, report.committed, report.failed)
                self._wake_delivery(studies)
        except peewee.DatabaseError as exc:
            log.error("commitment_report_not_recorded", reviewer=caller.name, error=type(exc).__name__,
                      status=status.PROCESSING_FAILURE)
            return status.PROCESSING_FAILURE, None
        known = bool(committed or failed)
        log.info("commitment_report_received", reviewer=caller.name, instances=committed, count=failed,
                 status=status.SUCCESS, reason=None if known else "unknown_transaction")
        self._audit("commitment_report_received", caller, peer, "success" if known and not failed else "failed",
                    f"{committed} committed, {failed} not committed" if known else "unknown transaction")
        return status.SUCCESS, None

    def _wake_delivery(self, study_ids: list[int]) -> None:
        """The cases concerned are due now: the delivery stage moves them on (done, or objects sent again)."""
        if not study_ids:
            return
        now = utcnow()
        Study.update(next_attempt_at=now).where(Study.id.in_(study_ids)
                                                & (Study.state == CaseState.DELIVERING)).execute()
        self.context.wake_at(CaseState.DELIVERING, now)

    @staticmethod
    def _information(event: evt.Event, name: str = "action_information") -> Dataset | None:
        """The Action (or Event) Information, decoded; None when it cannot be (treated as missing)."""
        try:
            information = getattr(event, name)
            information.get("TransactionUID")  # pydicom decodes lazily: the first read may raise
            return information
        except Exception:  # noqa: BLE001 - a hostile data set: any decoding error is a missing attribute
            return None

    def _refused(self, caller: Caller, peer: str, code: int, reason: str) -> tuple[int, None]:
        log.warning("commitment_refused", **{"reviewer" if caller.role == "reviewer" else "source": caller.name},
                    status=code, reason=reason)
        self._audit("commitment_refused", caller, peer, "refused", reason)
        return code, None

    @staticmethod
    def _audit(action: str, caller: Caller, peer: str, outcome: str, detail: str) -> None:
        try:
            audit.record(action, actor_ae=caller.ae_title, actor_host=peer, study_key=None, outcome=outcome,
                         detail=detail)
        except Exception:  # noqa: BLE001 - audit.record has already logged why
            pass
