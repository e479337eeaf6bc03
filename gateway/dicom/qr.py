"""Query/Retrieve as SCU toward a source's PACS, for priors: Study Root C-FIND (STUDY and SERIES level) and C-GET.

No database and no decision: the caller says whose studies to look for and what to do with each instance that
arrives. Every association has TCP_NODELAY (``NODELAY_HANDLER``), the peer's TLS as configured, and is aborted at
the caller's deadline, so that a PACS that stops answering in the middle holds nobody longer than that.

Why C-GET and not C-MOVE: the instances come back on the association the gateway opened, so the PACS needs no
route to the gateway (no AE entry, no firewall opening, no TLS server on the gateway's side for it), and they are
known to be this case's priors by where they arrive rather than recognised among a source's new studies. The
cost: a PACS without C-GET SCP gets no priors (its C-GET context is refused: the case goes without them).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    RLELossless,
)
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from gateway.config import DicomPeer, NodeConfig
from gateway.dicom import status
from gateway.dicom.net import NODELAY_HANDLER
from gateway.dicom.tls import tls_args

# The storage SOP classes a prior of spine imaging is made of (images, their presentation states and reports):
# each proposed with the SCP role for C-GET (PS3.4 C.4.3.1: the C-STOREs come back on the same association).
PRIOR_STORAGE_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.4",      # MR Image
    "1.2.840.10008.5.1.4.1.1.4.1",    # Enhanced MR Image
    "1.2.840.10008.5.1.4.1.1.2",      # CT Image
    "1.2.840.10008.5.1.4.1.1.2.1",    # Enhanced CT Image
    "1.2.840.10008.5.1.4.1.1.1",      # Computed Radiography Image
    "1.2.840.10008.5.1.4.1.1.1.1",    # Digital X-Ray Image - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image - For Processing
    "1.2.840.10008.5.1.4.1.1.7",      # Secondary Capture Image
    "1.2.840.10008.5.1.4.1.1.12.1",   # X-Ray Angiographic Image
    "1.2.840.10008.5.1.4.1.1.11.1",   # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection Document
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
)
TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLosslessSV1, JPEG2000Lossless,
                     JPEGBaseline8Bit, RLELossless]
PENDING = (0xFF00, 0xFF01)


class QueryRetrieveFailed(Exception):
    """No association, the service not accepted, aborted at the deadline, or a failure status. ``reason`` is the
    gateway's own short words (no PHI: never a value the PACS returned)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class FoundStudy:
    """A study the PACS holds (original values: PHI, never logged)."""

    study_uid: str
    study_date: str
    modalities: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class FoundSeries:
    modality: str
    body_part: str


@dataclass(frozen=True)
class Retrieved:
    """How a C-GET ended: the sub-operations the PACS counted (its final response), and those we stored."""

    completed: int
    failed: int
    warning: int
    stored: int


def find_studies(node: NodeConfig, peer: DicomPeer, patient_id: str, timeout_s: float) -> list[FoundStudy]:
    """Every study of ``patient_id`` the PACS holds (Study Root C-FIND, STUDY level).

    Raises:
        QueryRetrieveFailed: see the class.
    """
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.PatientID = patient_id
    for keyword in ("StudyInstanceUID", "StudyDate", "ModalitiesInStudy", "StudyDescription"):
        setattr(identifier, keyword, "")
    return [FoundStudy(str(found.get("StudyInstanceUID", "") or ""), str(found.get("StudyDate", "") or ""),
                       _values(found.get("ModalitiesInStudy")), str(found.get("StudyDescription", "") or ""))
            for found in _find(node, peer, identifier, timeout_s) if found.get("StudyInstanceUID")]


def find_series(node: NodeConfig, peer: DicomPeer, study_uid: str, timeout_s: float) -> list[FoundSeries]:
    """The modality and body part of every series of ``study_uid`` (Study Root C-FIND, SERIES level).

    Raises:
        QueryRetrieveFailed: see the class.
    """
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES"
    identifier.StudyInstanceUID = study_uid
    identifier.SeriesInstanceUID = ""
    identifier.Modality = ""
    identifier.BodyPartExamined = ""
    return [FoundSeries(str(found.get("Modality", "") or "").upper(),
                        str(found.get("BodyPartExamined", "") or "").upper())
            for found in _find(node, peer, identifier, timeout_s)]


def _values(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    items = value if isinstance(value, (list, tuple, MultiValue)) else [value]
    return tuple(str(item).strip().upper() for item in items if str(item).strip())


def _find(node: NodeConfig, peer: DicomPeer, identifier: Dataset, timeout_s: float) -> list[Dataset]:
    ae = _ae(node, timeout_s)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind, [ExplicitVRLittleEndian,
                                                                         ImplicitVRLittleEndian])
    found: list[Dataset] = []
    with _association(ae, peer, timeout_s) as assoc:
        for answer, match in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
            code = answer.get("Status") if answer else None
            if code is None:
                raise QueryRetrieveFailed("no answer to the C-FIND (timed out or aborted)")
            if code in PENDING:
                if match is not None:
                    found.append(match)
            elif code != status.SUCCESS:
                raise QueryRetrieveFailed(f"C-FIND answered 0x{int(code):04X}")
    return found


def get_study(node: NodeConfig, peer: DicomPeer, study_uid: str, store: Callable[[bytes], int],
              timeout_s: float) -> Retrieved:
    """Retrieve every instance of ``study_uid`` (Study Root C-GET, STUDY level). ``store`` gets each instance as
    DICOM Part 10 bytes, as the PACS encoded it, and answers the C-STORE's status (it must return success only
    once the instance is durable).

    Raises:
        QueryRetrieveFailed: see the class; also when the PACS ends with a failure status and nothing was stored.
    """
    stored = [0]

    def on_store(event: evt.Event) -> int:
        code = store(event.encoded_dataset(include_meta=True))
        if code == status.SUCCESS:
            stored[0] += 1
        return code

    ae = _ae(node, timeout_s)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet, [ExplicitVRLittleEndian,
                                                                        ImplicitVRLittleEndian])
    for sop_class in PRIOR_STORAGE_CLASSES:
        ae.add_requested_context(sop_class, TRANSFER_SYNTAXES)
    roles = [build_role(sop_class, scp_role=True) for sop_class in PRIOR_STORAGE_CLASSES]
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    final: Dataset | None = None
    with _association(ae, peer, timeout_s, ext_neg=roles, handlers=[(evt.EVT_C_STORE, on_store)]) as assoc:
        for answer, _ in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet):
            if not answer or answer.get("Status") is None:
                raise QueryRetrieveFailed("no answer to the C-GET (timed out or aborted)")
            final = answer
    code = int(final.get("Status")) if final is not None else None
    completed, failed, warning = (int(final.get(keyword, 0) or 0) if final is not None else 0 for keyword in
                                  ("NumberOfCompletedSuboperations", "NumberOfFailedSuboperations",
                                   "NumberOfWarningSuboperations"))
    counts = Retrieved(completed, failed, warning, stored[0])
    if code not in (status.SUCCESS, 0xB000) and not stored[0]:
        raise QueryRetrieveFailed("C-GET answered " + (f"0x{code:04X}" if code is not None else "nothing"))
    return counts


def _ae(node: NodeConfig, timeout_s: float) -> AE:
    ae = AE(ae_title=node.ae_title)
    limit = max(timeout_s, 0.5)
    ae.acse_timeout = min(node.acse_timeout_s, limit)
    ae.dimse_timeout = min(node.dimse_timeout_s, limit)
    ae.network_timeout = min(node.network_timeout_s, limit)
    ae.connection_timeout = min(node.acse_timeout_s, limit)
    ae.maximum_pdu_size = node.max_pdu_bytes
    return ae


@contextmanager
def _association(ae: AE, peer: DicomPeer, timeout_s: float, *, ext_neg: list[Any] | None = None,
                 handlers: list[Any] | None = None) -> Iterator[Association]:
    """An established association to ``peer``, aborted when ``timeout_s`` has passed, released after.

    Raises:
        QueryRetrieveFailed: no association, or the service's context not accepted.
    """
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, ext_neg=ext_neg,
                         evt_handlers=[NODELAY_HANDLER, *(handlers or [])], tls_args=tls_args(peer))
    if not assoc.is_established:
        raise QueryRetrieveFailed("association rejected" if assoc.is_rejected else "no association")
    deadline = threading.Timer(max(timeout_s, 0.5), assoc.abort)
    deadline.daemon = True
    deadline.start()
    try:
        if not any(cx.abstract_syntax in (StudyRootQueryRetrieveInformationModelFind,
                                          StudyRootQueryRetrieveInformationModelGet)
                   for cx in assoc.accepted_contexts):
            raise QueryRetrieveFailed("query/retrieve not accepted by the PACS")
        yield assoc
    except (RuntimeError, ValueError) as exc:
        raise QueryRetrieveFailed(f"{type(exc).__name__}") from None
    finally:
        deadline.cancel()
        if assoc.is_established:
            assoc.release()
        if assoc.is_aborted:
            raise QueryRetrieveFailed("aborted (the PACS did not finish within the wait)")
