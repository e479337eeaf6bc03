"""Re-identification of a reviewer's report: the pseudonymous study's report becomes the original study's.

The report is patched through the stored mapping (never rebuilt), so the reviewer's content stays as written:

* patient (name, ID, birth date, sex) and study (Study Instance UID, accession number, study date and time,
  study ID, referring physician, study description) take the original values;
* every UID element anywhere in the dataset (Current Requested Procedure Evidence Sequence, Referenced
  SOP/Series/Study UIDs in the content tree, Key Object Selection references) that the de-identifier
  created is mapped back to the original; the report's own Series and SOP Instance UIDs become new
  ``2.25.`` UIDs (derived, so that re-running gives the same UIDs and the PACS stores the report once);
* the de-identifier shifted dates by ``+date_offset_days``: a DA/DT value equal to a shifted original date
  is shifted back; free text (and every other string) is searched for the case's pseudonyms (the case key,
  ``SPINEGW^<key>``, the pseudo patient ID and accession number) and shifted dates, replaced by originals;
* PatientIdentityRemoved, De-identification Method (and its code sequence) and Longitudinal Temporal
  Information Modified are removed; the file meta is rebuilt;
* the values the top level carried before (the pseudonyms the reviewer saw, the reviewer's UIDs) are kept in
  a new item of the Original Attributes Sequence (reason COERCE, as IHE's Import Reconciliation Workflow
  asks), so that the hospital can audit what the gateway changed. They are pseudonyms, never PHI, and go
  only home to the hospital with the report.

Everything here is PHI once it runs: nothing is logged, errors name attribute paths only.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from gateway.deid.engine import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, PATIENT_NAME_PREFIX
from gateway.deid.pseudonym import uuid_derived_uid
from gateway.dicom.charset import specific_character_set
from gateway.dicom.vr import FREE_TEXT_VRS
from gateway.reports.codes import REPORT_CLASSES
from gateway.reports.errors import ReidentificationError

COERCED_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                    "SeriesInstanceUID", "SOPInstanceUID", "AccessionNumber", "StudyDate", "StudyTime", "StudyID",
                    "ReferringPhysicianName", "StudyDescription")
MODIFYING_SYSTEM = "spine-gateway"
REMOVED_DEID_KEYWORDS = ("PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
                         "LongitudinalTemporalInformationModified")
_TEXT_VRS = FREE_TEXT_VRS - {"AE", "CS", "UR"}  # what a reviewer writes: names, descriptions, free text
_MAX_LENGTH = {"SH": 16, "LO": 64, "ST": 1024, "LT": 10240, "PN": 324}


@dataclass(frozen=True)
class CaseMapping:
    """What re-identification needs to know about one case: its originals and its pseudonyms (PHI).

    ``uids`` maps every pseudonymous UID the de-identifier created for the case back to its original.
    """

    case_key: str
    study_uid: str
    pseudo_study_uid: str
    patient_name: str = ""
    patient_id: str = ""
    birth_date: str = ""
    sex: str = ""
    accession_number: str = ""
    study_date: str = ""
    study_time: str = ""
    study_id: str = ""
    referring_physician: str = ""
    study_description: str = ""
    pseudo_patient_id: str = ""
    pseudo_accession_number: str = ""
    date_offset_days: int = 0
    uids: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.case_key or not self.study_uid or not self.pseudo_study_uid:
            raise ValueError("case_key, study_uid and pseudo_study_uid are required")

    @property
    def pseudo_patient_name(self) -> str:
        return f"{PATIENT_NAME_PREFIX}^{self.case_key}"

    def shifted_dates(self) -> dict[str, str]:
        """Shifted date (YYYYMMDD) → original date, for the dates the case is known to carry."""
        result = {}
        for original in (self.study_date, self.birth_date):
            shifted = shift_date(original, self.date_offset_days)
            if shifted and self.date_offset_days:
                result[shifted] = original
        return result


def shift_date(value: str, days: int) -> str | None:
    """``YYYYMMDD`` shifted by ``days``; None when ``value`` is not a full date."""
    try:
        return (dt.datetime.strptime(value.strip(), "%Y%m%d").date() + dt.timedelta(days=days)).strftime("%Y%m%d")
    except (ValueError, OverflowError):
        return None


def derived_report_uid(secret: bytes, kind: str, pseudonymous_uid: str) -> str:
    """A new ``2.25.`` UID for the re-identified report, the same every time for the same input.

    ``kind`` separates the series and instance UIDs derived from one reviewer UID.
    """
    digest = hmac.new(secret, f"report-{kind}\x00{pseudonymous_uid}".encode(), hashlib.sha256).digest()
    return uuid_derived_uid(digest)


def readable_name(person_name: str) -> str:
    """``Family^Given^Middle`` as ``Given Middle Family`` for free text."""
    family, *rest = person_name.split("=")[0].split("^") + [""]
    given = " ".join(part for part in rest[:2] if part)
    return " ".join(part for part in (given, family) if part)


class TextRestorer:
    """Replaces the case's pseudonyms and shifted dates in free text by the originals."""

    def __init__(self, mapping: CaseMapping) -> None:
        name = readable_name(mapping.patient_name) or mapping.patient_id
        pairs: list[tuple[str, str]] = [
            (rf"{PATIENT_NAME_PREFIX}[\^ ]{re.escape(mapping.case_key)}", name),
            (re.escape(mapping.case_key), name),
        ]
        if mapping.pseudo_patient_id:
            pairs.append((re.escape(mapping.pseudo_patient_id), mapping.patient_id))
        if mapping.pseudo_accession_number:
            pairs.append((re.escape(mapping.pseudo_accession_number), mapping.accession_number))
        for shifted, original in mapping.shifted_dates().items():
            for pattern in _date_forms(shifted):
                pairs.append((re.escape(pattern), _same_form(pattern, shifted, original)))
        self._pairs = [(re.compile(rf"(?<![A-Za-z0-9]){p}(?![A-Za-z0-9])"), r) for p, r in pairs]

    def restore(self, text: str) -> str:
        for pattern, replacement in self._pairs:
            text = pattern.sub(_as_it_is(replacement), text)
        return text


def _as_it_is(value: str) -> Callable[[re.Match[str]], str]:
    """A ``re.sub`` replacement that inserts ``value`` unchanged (a string replacement would read its backslashes)."""
    return lambda _match: value


def _date_forms(yyyymmdd: str) -> list[str]:
    y, m, d = yyyymmdd[:4], yyyymmdd[4:6], yyyymmdd[6:]
    return [yyyymmdd, f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{d}/{m}/{y}"]


def _same_form(form: str, shifted: str, original: str) -> str:
    return _date_forms(original)[_date_forms(shifted).index(form)]


def walk(dataset: Dataset, path: str = "") -> Iterator[tuple[str, Dataset, DataElement]]:
    """Every data element of ``dataset`` and its sequences, depth first, with its path (keywords only)."""
    for elem in list(dataset):
        here = f"{path}{elem.keyword or elem.tag}"
        yield here, dataset, elem
        if elem.VR == "SQ":
            for index, item in enumerate(elem.value):
                yield from walk(item, f"{here}[{index}].")


def string_values(dataset: Dataset) -> Iterator[object]:
    """Every value of every string element (text and person names) of ``dataset`` and its sequences."""
    for _, _, elem in walk(dataset):
        if elem.VR in _TEXT_VRS and elem.VM and elem.value is not None:
            yield from _values(elem)


class Reidentifier:
    """Turns a pseudonymous report of one case into the original study's report.

    Args:
        mapping: the case's originals and pseudonyms.
        secret: the gateway's pseudonym key (the report's new UIDs are derived from it).
        report_uids: pseudonymous SOP Instance UIDs of the case's other reports → their new UIDs, so that
            a Key Object Selection referencing the reviewer's SR points at the re-identified SR.
    """

    def __init__(self, mapping: CaseMapping, secret: bytes, report_uids: Mapping[str, str] | None = None) -> None:
        if not secret:
            raise ValueError("secret must not be empty")
        self.mapping = mapping
        self.secret = secret
        self.report_uids = dict(report_uids or {})
        self.text = TextRestorer(mapping)
        self.dates = mapping.shifted_dates()

    def new_uids(self, dataset: Dataset) -> tuple[str, str]:
        """The (Series, SOP Instance) UIDs the re-identified copy of ``dataset`` gets."""
        return (derived_report_uid(self.secret, "series", str(dataset.SeriesInstanceUID)),
                derived_report_uid(self.secret, "instance", str(dataset.SOPInstanceUID)))

    def reidentify(self, report: Dataset) -> Dataset:
        """A re-identified copy of ``report`` (which is left unchanged).

        Raises:
            ReidentificationError: not a report class, not of this case, or a pseudonym left behind.
        """
        self._check(report)
        series_uid, sop_uid = self.new_uids(report)
        uids = {**self.mapping.uids, self.mapping.pseudo_study_uid: self.mapping.study_uid, **self.report_uids,
                str(report.SeriesInstanceUID): series_uid, str(report.SOPInstanceUID): sop_uid}
        ds = copy.deepcopy(report)
        for keyword in REMOVED_DEID_KEYWORDS:
            if keyword in ds:
                delattr(ds, keyword)
        for _path, _parent, elem in walk(ds):
            self._restore_element(elem, uids)
        self._set_patient_and_study(ds)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = series_uid, sop_uid
        self._set_character_set(ds)
        self._rebuild_file_meta(ds)
        self._check_no_pseudonym_left(ds)
        record_coercion(ds, report)  # after the check: the item holds the pseudonyms on purpose
        return ds

    def _check(self, report: Dataset) -> None:
        sop_class = str(report.get("SOPClassUID", ""))
        if sop_class not in REPORT_CLASSES:
            raise ReidentificationError("SOPClassUID: not a report storage class")
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            if not report.get(keyword):
                raise ReidentificationError(f"{keyword}: missing")
        if str(report.StudyInstanceUID) != self.mapping.pseudo_study_uid:
            raise ReidentificationError("StudyInstanceUID: not the case's pseudonymous study")

    def _restore_element(self, elem, uids: Mapping[str, str]) -> None:
        if elem.VM == 0 or elem.value is None:
            return
        if elem.VR == "UI":
            values = list(elem.value) if elem.VM > 1 else [elem.value]
            restored = [uids.get(str(v).strip("\0 "), str(v)) for v in values]
            elem.value = restored if elem.VM > 1 else restored[0]
        elif elem.VR == "DA":
            elem.value = "\\".join(self.dates.get(str(v), str(v)) for v in _values(elem))
        elif elem.VR == "DT":
            elem.value = "\\".join(self.dates.get(str(v)[:8], str(v)[:8]) + str(v)[8:] for v in _values(elem))
        elif elem.VR == "PN":
            elem.value = [self._restore_name(str(v)) for v in _values(elem)] if elem.VM > 1 \
                else self._restore_name(str(elem.value))
        elif elem.VR in _TEXT_VRS:
            limit = _MAX_LENGTH.get(elem.VR)
            restore = lambda v: self.text.restore(str(v))[:limit] if limit else self.text.restore(str(v))  # noqa: E731
            elem.value = [restore(v) for v in _values(elem)] if elem.VM > 1 else restore(elem.value)

    def _restore_name(self, value: str) -> str:
        return self.mapping.patient_name if value.strip() == self.mapping.pseudo_patient_name else value

    def _set_patient_and_study(self, ds: Dataset) -> None:
        m = self.mapping
        ds.PatientName, ds.PatientID = m.patient_name, m.patient_id
        ds.PatientBirthDate, ds.PatientSex = m.birth_date, m.sex
        ds.StudyInstanceUID, ds.AccessionNumber = m.study_uid, m.accession_number
        ds.StudyDate, ds.StudyTime, ds.StudyID = m.study_date, m.study_time, m.study_id
        ds.ReferringPhysicianName = m.referring_physician
        if m.study_description:
            ds.StudyDescription = m.study_description
        elif "StudyDescription" in ds:
            del ds.StudyDescription

    @staticmethod
    def _set_character_set(ds: Dataset) -> None:
        """The narrowest set holding the restored values (the reviewer's may not hold the patient's name)."""
        charset = specific_character_set(string_values(ds))
        if charset is not None:
            ds.SpecificCharacterSet = charset

    @staticmethod
    def _rebuild_file_meta(ds: Dataset) -> None:
        meta = FileMetaDataset()
        meta.FileMetaInformationVersion = b"\x00\x01"
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
        ds.file_meta = meta
        if hasattr(ds, "preamble"):
            ds.preamble = b"\x00" * 128

    def _check_no_pseudonym_left(self, ds: Dataset) -> None:
        m = self.mapping
        pseudo_uids = set(m.uids) | {m.pseudo_study_uid}
        markers = [v for v in (m.pseudo_patient_id, m.pseudo_accession_number, m.pseudo_patient_name) if v]
        for path, _, elem in walk(ds):
            if elem.VM == 0 or elem.value is None:
                continue
            if elem.VR == "UI" and any(str(v) in pseudo_uids for v in _values(elem)):
                raise ReidentificationError(f"{path}: pseudonymous UID left after re-identification")
            if elem.VR in _TEXT_VRS and any(marker in str(v) for v in _values(elem) for marker in markers):
                raise ReidentificationError(f"{path}: pseudonym left after re-identification")


def record_coercion(ds: Dataset, before: Dataset, now: dt.datetime | None = None) -> None:
    """Append to ``ds``'s Original Attributes Sequence the values of :data:`COERCED_KEYWORDS` that ``before``
    held and ``ds`` no longer holds (PS3.3 C.12.1: Modified Attributes Sequence, reason COERCE)."""
    modified = Dataset()
    for keyword in COERCED_KEYWORDS:
        if keyword in before and (keyword not in ds or ds[keyword].value != before[keyword].value):
            modified.add(copy.deepcopy(before[keyword]))
    if len(modified) == 0:
        return
    item = Dataset()
    item.ModifiedAttributesSequence = [modified]
    item.AttributeModificationDateTime = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%d%H%M%S.%f+0000")
    item.ModifyingSystem = MODIFYING_SYSTEM
    item.ReasonForTheAttributeModification = "COERCE"
    ds.OriginalAttributesSequence = [*ds.get("OriginalAttributesSequence", []), item]


def _values(elem) -> list:
    return list(elem.value) if elem.VM > 1 else [elem.value]
