"""STOW-RS (PS3.18 §10.5): a reviewer's report, through the same intake as a report sent by C-STORE.

Each part of the ``multipart/related; type="application/dicom"`` body is C-STOREd to the node's own DICOM port
with the calling AE title of the reviewer the caller is (as the portal's report form does,
:func:`gateway.reports.create.send_as_reviewer`): the SCP's report intake decides (a report class, the case
assigned to that reviewer and waiting for its report; else 0x0124 and a ``report_refused`` audit row), stores it
durably, and the report stage re-identifies it and sends it home. The answer is the STOW-RS response data set:
ReferencedSOPSequence for what was stored, FailedSOPSequence with the DIMSE status as FailureReason for the rest;
200 all stored, 202 some, 409 none.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian

from gateway.config import GatewayConfig
from gateway.dicom import status
from gateway.reports.create import send_as_reviewer
from gateway.reports.errors import ReportBuildError

MAX_PARTS = 20  # a report is an SR, a PDF and a Key Object Selection: a few objects
CANNOT_UNDERSTAND = status.CANNOT_UNDERSTAND
PROCESSING_FAILURE = status.PROCESSING_FAILURE
STORED = frozenset({status.SUCCESS, 0xB000, 0xB006, 0xB007})  # success and the storage warnings
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)


class BadStow(ValueError):
    """A body that is not a multipart/related of application/dicom parts (400, 415)."""

    def __init__(self, message: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass
class Outcome:
    """What became of one part: its SOP class and instance (when readable) and the DIMSE status (None: none)."""

    sop_class_uid: str
    sop_instance_uid: str
    status: int | None


def parts_of(content_type: str, body: bytes) -> list[bytes]:
    """The parts of a multipart/related body whose type is application/dicom.

    Raises:
        BadStow: not multipart/related of application/dicom (415), no boundary, or no part (400).
    """
    kind = content_type.split(";")[0].strip().lower()
    if kind != "multipart/related" or ("application/dicom" not in content_type.lower()
                                       or "application/dicom+" in content_type.lower()):
        raise BadStow('send multipart/related; type="application/dicom"', 415)
    found = _BOUNDARY.search(content_type)
    if found is None:
        raise BadStow("the multipart body has no boundary")
    delimiter = b"--" + found.group(1).encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        head, separator, payload = chunk.partition(b"\r\n\r\n")
        if not separator:
            raise BadStow("a part without headers")
        if payload.endswith(b"\r\n"):
            payload = payload[:-2]
        part_type = _part_type(head)
        if part_type and part_type != "application/dicom":
            raise BadStow(f"a part of type {part_type}: only application/dicom is stored", 415)
        parts.append(payload)
    if not parts:
        raise BadStow("no part in the body")
    if len(parts) > MAX_PARTS:
        raise BadStow(f"at most {MAX_PARTS} objects in one request")
    return parts


def _part_type(head: bytes) -> str:
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-type":
            return value.split(";")[0].strip().lower()
    return ""


def _dataset(part: bytes) -> Dataset | None:
    try:  # force: a part may be the file meta and the data set without the preamble (pydicom's dcmwrite default)
        dataset = pydicom.dcmread(io.BytesIO(part), force=True)
    except (InvalidDicomError, ValueError, EOFError, KeyError, TypeError, AttributeError, OSError):
        return None
    if "SOPInstanceUID" not in dataset or "SOPClassUID" not in dataset:
        return None
    syntax = dataset.file_meta.get("TransferSyntaxUID")
    if syntax is None or not syntax.is_compressed:
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian  # sent on the context the sender proposes
    return dataset


def store(parts: list[bytes], calling_ae: str, config: GatewayConfig, study_uid: str | None) -> list[Outcome]:
    """C-STORE each readable part to the node's own SCP as ``calling_ae`` (see the module docstring). A part
    that is not DICOM, or of another study than ``study_uid`` when given, is not sent (0xC000, 0xA900).

    Raises:
        ReportBuildError: the node's DICOM port cannot be reached.
    """
    outcomes: list[Outcome] = []
    to_send: list[tuple[Outcome, Dataset]] = []
    for part in parts:
        dataset = _dataset(part)
        if dataset is None:
            outcomes.append(Outcome("", "", CANNOT_UNDERSTAND))
            continue
        outcome = Outcome(str(dataset.SOPClassUID), str(dataset.SOPInstanceUID), None)
        outcomes.append(outcome)
        if study_uid is not None and str(dataset.get("StudyInstanceUID", "")) != study_uid:
            outcome.status = status.DATASET_DOES_NOT_MATCH_SOP_CLASS  # PS3.18: not of the study in the path
            continue
        if str(dataset.file_meta.TransferSyntaxUID) != ExplicitVRLittleEndian:
            outcome.status = CANNOT_UNDERSTAND  # a compressed report: no report class is
            continue
        to_send.append((outcome, dataset))
    if to_send:
        statuses = send_as_reviewer([dataset for _, dataset in to_send], calling_ae, config)
        for (outcome, _), answer in zip(to_send, statuses + [None] * (len(to_send) - len(statuses)), strict=True):
            outcome.status = answer
    return outcomes


def response(outcomes: list[Outcome], retrieve_url) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the STOW-RS response data set (DICOM JSON) of ``outcomes``."""
    answer = Dataset()
    stored = [o for o in outcomes if o.status in STORED]
    failed = [o for o in outcomes if o not in stored]
    if stored:
        answer.ReferencedSOPSequence = [_reference(o) for o in stored]
    if failed:
        items = []
        for outcome in failed:
            item = _reference(outcome)
            item.FailureReason = outcome.status if outcome.status is not None else PROCESSING_FAILURE
            items.append(item)
        answer.FailedSOPSequence = items
    answer.RetrieveURL = retrieve_url
    code = 200 if not failed else 202 if stored else 409
    return code, answer.to_json_dict()


def _reference(outcome: Outcome) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = outcome.sop_class_uid
    item.ReferencedSOPInstanceUID = outcome.sop_instance_uid
    return item


__all__ = ["BadStow", "Outcome", "ReportBuildError", "parts_of", "response", "store"]
