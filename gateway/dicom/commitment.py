"""Storage Commitment Push Model (PS3.4 Annex J): reading a request (N-ACTION), writing and sending its report
(N-EVENT-REPORT). No database and no decision about what is stored: the caller says which instances are
committed and which failed, and why.

The report goes in a new association that the gateway opens to the requester's return address, proposing the
SOP class with the SCP role (SCP/SCU Role Selection, PS3.4 J.3.3 and PS3.7 D.3.3.4): in it the gateway, the
association's requestor, acts as the SCP of the service.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role
from pynetdicom.association import Association

from gateway.config import DicomPeer, NodeConfig, ReviewerConfig
from gateway.dicom import status
from gateway.dicom.net import NODELAY_HANDLER
from gateway.dicom.tls import tls_args

STORAGE_COMMITMENT_PUSH_MODEL = "1.2.840.10008.1.20.1"
WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"  # the SOP Instance the N-ACTION and N-EVENT-REPORT name
REQUEST_STORAGE_COMMITMENT = 1  # Action Type ID
ALL_COMMITTED = 1  # Event Type ID: every instance committed
SOME_FAILED = 2    # Event Type ID: at least one failed
SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]

Reference = tuple[str, str]  # (Referenced SOP Class UID, Referenced SOP Instance UID)


class InvalidCommitmentRequest(ValueError):
    """An N-ACTION the SCP cannot take; ``status`` is its answer (PS3.7 C.5), ``reason`` is logged."""

    def __init__(self, reason: str, code: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = code


class ReportNotDelivered(Exception):
    """The report did not reach the requester (no association, refused, timed out, or a failure status)."""


@dataclass(frozen=True)
class CommitmentRequestData:
    transaction_uid: str
    references: list[Reference]


@dataclass(frozen=True)
class Failure:
    reference: Reference
    reason: int  # Failure Reason (0008,1197): NO_SUCH_OBJECT_INSTANCE, CLASS_INSTANCE_CONFLICT, PROCESSING_FAILURE


def read_request(action_type: int | None, information: Dataset | None, max_instances: int) -> CommitmentRequestData:
    """The transaction and the instances an N-ACTION asks about.

    Raises:
        InvalidCommitmentRequest: not Action Type 1 (0x0123), no Transaction UID or no Referenced SOP Sequence
            (0x0120), an item without both UIDs or more than ``max_instances`` of them (0x0115).
    """
    if action_type != REQUEST_STORAGE_COMMITMENT:
        raise InvalidCommitmentRequest("no_such_action_type", status.NO_SUCH_ACTION_TYPE)
    if information is None:
        raise InvalidCommitmentRequest("missing_action_information", status.MISSING_ATTRIBUTE)
    transaction_uid = str(information.get("TransactionUID", "") or "").strip()
    items = information.get("ReferencedSOPSequence")
    if not transaction_uid or not items:
        raise InvalidCommitmentRequest("missing_transaction_or_references", status.MISSING_ATTRIBUTE)
    if len(transaction_uid) > 64 or len(items) > max_instances:
        raise InvalidCommitmentRequest("too_many_references" if len(items) > max_instances
                                       else "invalid_transaction_uid", status.INVALID_ARGUMENT_VALUE)
    references = []
    for item in items:
        sop_class = str(item.get("ReferencedSOPClassUID", "") or "").strip()
        sop_instance = str(item.get("ReferencedSOPInstanceUID", "") or "").strip()
        if not sop_class or not sop_instance or len(sop_class) > 64 or len(sop_instance) > 64:
            raise InvalidCommitmentRequest("invalid_reference", status.INVALID_ARGUMENT_VALUE)
        references.append((sop_class, sop_instance))
    return CommitmentRequestData(transaction_uid, references)


def report(transaction_uid: str, committed: Sequence[Reference], failed: Sequence[Failure]) -> tuple[int, Dataset]:
    """The Event Type ID and Event Information of the report: type 1 with the Referenced SOP Sequence when
    nothing failed, else type 2 with the Failed SOP Sequence (and the committed ones, if any)."""
    information = Dataset()
    information.TransactionUID = transaction_uid
    if committed:
        information.ReferencedSOPSequence = DicomSequence([_item(ref) for ref in committed])
    if not failed:
        return ALL_COMMITTED, information
    failed_items = []
    for failure in failed:
        item = _item(failure.reference)
        item.FailureReason = failure.reason
        failed_items.append(item)
    information.FailedSOPSequence = DicomSequence(failed_items)
    return SOME_FAILED, information


def _item(reference: Reference) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = reference
    return item


def send_report(node: NodeConfig, peer: DicomPeer, event_type: int, information: Dataset) -> None:
    """Send the report in a new association to ``peer`` (the requester's return address), as the SCP of the
    Storage Commitment Push Model SOP class, and release it.

    Raises:
        ReportNotDelivered: no association, the context not accepted, no answer, or a failure status.
    """
    role = build_role(STORAGE_COMMITMENT_PUSH_MODEL, scu_role=False, scp_role=True)
    _exchange(node, peer, ReportNotDelivered, "the requester", "N-EVENT-REPORT",
              lambda assoc: assoc.send_n_event_report(information, event_type, STORAGE_COMMITMENT_PUSH_MODEL,
                                                      WELL_KNOWN_INSTANCE), ext_neg=[role])


class RequestNotAccepted(Exception):
    """A Storage Commitment request (N-ACTION) to a reviewer did not get a success: no association, the SOP class
    not accepted, no answer, or a failure status."""


def request_commitment(node: NodeConfig, peer: ReviewerConfig, transaction_uid: str,
                       references: Sequence[Reference]) -> None:
    """Ask ``peer`` (as the SCU of the Push Model) to commit ``references``, in a new association; its report
    comes back later, on an association it opens to the gateway.

    Raises:
        RequestNotAccepted: see the class.
    """
    information = Dataset()
    information.TransactionUID = transaction_uid
    information.ReferencedSOPSequence = DicomSequence([_item(reference) for reference in references])
    _exchange(node, peer, RequestNotAccepted, "the reviewer", "N-ACTION",
              lambda assoc: assoc.send_n_action(information, REQUEST_STORAGE_COMMITMENT,
                                                STORAGE_COMMITMENT_PUSH_MODEL, WELL_KNOWN_INSTANCE))


def _exchange(node: NodeConfig, peer: DicomPeer | ReviewerConfig, failure: type[Exception], who: str, what: str,
              send: Callable[[Association], tuple[Any, Any]], ext_neg: list[Any] | None = None) -> None:
    """One Storage Commitment message in a new association to ``peer`` (its TLS as configured), released after;
    anything short of a success status raises ``failure`` with the reason."""
    ae = AE(ae_title=node.ae_title)
    ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = (node.acse_timeout_s, node.dimse_timeout_s,
                                                             node.network_timeout_s)
    ae.connection_timeout = node.acse_timeout_s
    ae.add_requested_context(STORAGE_COMMITMENT_PUSH_MODEL, SYNTAXES)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, ext_neg=ext_neg,
                         evt_handlers=[NODELAY_HANDLER], tls_args=tls_args(peer))
    if not assoc.is_established:
        raise failure("association rejected" if assoc.is_rejected else "no association")
    try:
        if not assoc.accepted_contexts:
            raise failure(f"storage commitment not accepted by {who}")
        answer, _reply = send(assoc)
    except (RuntimeError, ValueError) as exc:
        raise failure(f"{type(exc).__name__}: {exc}") from None
    finally:
        if assoc.is_established:
            assoc.release()
    code = answer.get("Status") if answer else None
    if code is None:
        raise failure(f"no answer to the {what}")
    if code != status.SUCCESS:
        raise failure(f"{what} answered 0x{int(code):04X}")


@dataclass(frozen=True)
class ReceivedReport:
    transaction_uid: str
    committed: list[str]  # SOP Instance UIDs
    failed: list[tuple[str, int]]  # (SOP Instance UID, Failure Reason)


def read_report(event_type: int | None, information: Dataset | None) -> ReceivedReport:
    """A reviewer's N-EVENT-REPORT about a request of ours.

    Raises:
        InvalidCommitmentRequest: not Event Type 1 or 2 (0x0113 no such event type), no Transaction UID (0x0120).
    """
    if event_type not in (ALL_COMMITTED, SOME_FAILED):
        raise InvalidCommitmentRequest("no_such_event_type", status.NO_SUCH_EVENT_TYPE)
    transaction_uid = str((information or Dataset()).get("TransactionUID", "") or "").strip()
    if information is None or not transaction_uid:
        raise InvalidCommitmentRequest("missing_transaction_uid", status.MISSING_ATTRIBUTE)
    committed = [str(item.get("ReferencedSOPInstanceUID", "") or "")
                 for item in information.get("ReferencedSOPSequence") or []]
    failed = [(str(item.get("ReferencedSOPInstanceUID", "") or ""), int(item.get("FailureReason", 0x0110) or 0x0110))
              for item in information.get("FailedSOPSequence") or []]
    return ReceivedReport(transaction_uid, [uid for uid in committed if uid], [f for f in failed if f[0]])
