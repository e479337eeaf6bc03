"""Outbound guard: look for a patient's own identifiers anywhere in a dataset about to leave.

Leaks are reported by attribute path (``ReferencedStudySequence[0].StudyDescription``,
``(0009,1001)``, ``file_meta.ImplementationVersionName``, ``ContentSequence[2].ContentSequence[0].TextValue``,
``EncapsulatedDocument/pdf-text``), never by value.

Two views of "the patient's identifiers":

- :class:`PatientIdentifiers`, taken from one original instance (:func:`identifiers_from_dataset`): what
  the de-identification workers check each image against;
- :class:`gateway.privacy.identifiers.IdentifierSet`, everything the node holds for the case (header,
  referral, source): what the notes stage checks every outbound object against, the notes objects as
  written (:func:`find_leaks_in_file`) and the images' text as the workers read it back from their output
  (:func:`searchable_values`, :func:`find_leaks_in_values`). Text is folded (case, accents, ß, transliteration) and the
  search terms
  come from :meth:`IdentifierSet.search_terms`; an Encapsulated PDF is also searched in its extracted text
  (its streams are compressed), reported as ``EncapsulatedDocument/pdf-text``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pydicom
from pydicom.datadict import dictionary_has_tag, dictionary_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from gateway.deid.errors import IdentifierLeakError
from gateway.deid.pseudonym import is_standard_uid
from gateway.dicom import undecoded
from gateway.dicom.vr import TEXT_VRS
from gateway.privacy.identifiers import IdentifierSet

PIXEL_DATA_TAG = 0x7FE00010
MIN_NAME_PART = 3
_BYTE_VRS = frozenset({"OB", "UN", "OW"})
# Values the engine itself writes; a source that already used them as a name is not identified by them.
_PLACEHOLDER_NAMES = frozenset({"ANONYMOUS", "ANONYMIZED", "ANONYMISED", "SPINEGW"})


@dataclass(frozen=True, slots=True)
class PatientIdentifiers:
    """The identifiers of one patient and study, as found in the original objects."""

    name_parts: tuple[str, ...] = ()
    patient_ids: tuple[str, ...] = ()
    accession_numbers: tuple[str, ...] = ()
    birth_dates: tuple[date, ...] = ()
    institution_names: tuple[str, ...] = ()
    referring_physician_name_parts: tuple[str, ...] = ()
    uids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Leak:
    """One identifier found: where, and which kind of identifier (never the value)."""

    path: str
    kind: str


def _bounded(alternatives: list[str], boundary: str) -> re.Pattern[str] | None:
    if not alternatives:
        return None
    return _bounded_pattern(tuple(sorted(set(alternatives), key=len, reverse=True)), boundary)


@functools.lru_cache(maxsize=256)
def _bounded_pattern(alternatives: tuple[str, ...], boundary: str) -> re.Pattern[str]:
    """Compiled once per case: the patient's names, IDs and dates are the same in each of its instances."""
    return re.compile(f"(?<!{boundary})(?:{'|'.join(alternatives)})(?!{boundary})", re.IGNORECASE)


_UID_CHARACTERS = re.compile(r"[0-9.]+")


class _UidMatcher:
    """Whether a text holds one of ``uids`` standing alone (not inside a longer run of digits and dots): the same
    answer as the bounded pattern of the UIDs, without compiling a pattern per instance (each instance has its
    own SOP Instance UID). A UID made only of digits and dots stands alone exactly when it is a whole run of
    digits and dots in the text; any other value (malformed) is searched with the bounded pattern."""

    def __init__(self, uids: Iterable[str]) -> None:
        values = [v for v in uids if v.strip()]
        self._plain = frozenset(v for v in values if _UID_CHARACTERS.fullmatch(v))
        self._other = _bounded([re.escape(v) for v in values if v not in self._plain], "[0-9.]")

    def __bool__(self) -> bool:
        return bool(self._plain) or self._other is not None

    def search(self, text: str) -> bool:
        if self._plain and any(run in self._plain for run in _UID_CHARACTERS.findall(text)):
            return True
        return self._other is not None and self._other.search(text) is not None


def _date_forms(value: date) -> list[str]:
    return [
        value.strftime("%Y%m%d"),
        value.strftime("%Y-%m-%d"),
        value.strftime("%d/%m/%Y"),
        value.strftime("%d.%m.%Y"),
    ]


def _flexible_spaces(text: str) -> str:
    return r"\s+".join(re.escape(word) for word in text.split())


def _long_enough(values: tuple[str, ...]) -> list[str]:
    """IDs shorter than 3 characters would match inside any number; they are not searched for."""
    return [re.escape(v.strip()) for v in values if len(v.strip()) >= MIN_NAME_PART]


def _compile(identifiers: PatientIdentifiers) -> list[tuple[str, re.Pattern[str] | _UidMatcher]]:
    word = "[A-Za-z0-9]"
    names = [re.escape(p) for p in identifiers.name_parts if len(p) >= MIN_NAME_PART]
    referring = [re.escape(p) for p in identifiers.referring_physician_name_parts if len(p) >= MIN_NAME_PART]
    candidates = {
        "patient name": _bounded(names, word),
        "patient id": _bounded(_long_enough(identifiers.patient_ids), word),
        "accession number": _bounded(_long_enough(identifiers.accession_numbers), word),
        "birth date": _bounded([re.escape(f) for d in identifiers.birth_dates for f in _date_forms(d)], "[0-9]"),
        "institution name": _bounded([_flexible_spaces(v) for v in identifiers.institution_names if v.strip()], word),
        "referring physician name": _bounded(referring, word),
    }
    patterns: list[tuple[str, re.Pattern[str] | _UidMatcher]] = [
        (kind, pattern) for kind, pattern in candidates.items() if pattern is not None]
    uids = _UidMatcher(identifiers.uids)
    return [*patterns, ("uid", uids)] if uids else patterns


def _element_name(elem: DataElement) -> str:
    if elem.tag.is_private or not _keyword(elem.tag):
        return f"({elem.tag.group:04X},{elem.tag.element:04X})"
    return _keyword(elem.tag)


@functools.lru_cache(maxsize=4096)
def _keyword(tag: int) -> str:
    """``DataElement.keyword``, looked up once per tag (it was a tenth of the guard's time)."""
    return dictionary_keyword(tag) if dictionary_has_tag(tag) else ""


def _searchable_text(elem: DataElement) -> str | None:
    if elem.tag == PIXEL_DATA_TAG or elem.value is None:
        return None
    value = elem.value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("latin-1") if elem.VR in _BYTE_VRS or elem.VR in TEXT_VRS else None
    if elem.VR in TEXT_VRS:
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            return "\\".join(str(part) for part in value)
        return str(value)
    return None


def _walk(dataset: Dataset, prefix: str) -> Iterator[tuple[str, DataElement]]:
    for elem in dataset:
        path = f"{prefix}{_element_name(elem)}"
        if elem.VR == "SQ":
            for index, item in enumerate(elem.value):
                yield from _walk(item, f"{path}[{index}].")
        else:
            yield path, elem


def find_leaks(dataset: Dataset, identifiers: PatientIdentifiers | IdentifierSet) -> list[Leak]:
    """Every place in ``dataset`` (file meta included) where one of ``identifiers`` appears.

    Strings are matched case-insensitively; name parts shorter than 3 characters are ignored and
    names, IDs and accession numbers must stand as whole words. OB/OW/UN values are searched as
    latin-1 text, except Pixel Data. With an :class:`IdentifierSet`, text is folded first and an
    Encapsulated PDF's extracted text is searched too.
    """
    if isinstance(identifiers, IdentifierSet):
        return _find_in_case(dataset, identifiers)
    patterns = _compile(identifiers)
    if not patterns:
        return []  # nothing to look for: the dataset is not even walked
    return _leaks(searchable_values(dataset, pdf=False), patterns)


def find_leaks_in_texts(values: Iterable[tuple[str, str]], identifiers: PatientIdentifiers) -> list[Leak]:
    """Every identifier of ``identifiers`` (one instance's) in ``values`` ((attribute path, text) pairs, as
    :func:`searchable_values` gives them), as :func:`find_leaks` reports them."""
    return _leaks(values, _compile(identifiers))


def _leaks(values: Iterable[tuple[str, str]], patterns: list[tuple[str, re.Pattern[str] | _UidMatcher]]
           ) -> list[Leak]:
    return [Leak(path, kind) for path, text in values for kind, pattern in patterns if pattern.search(text)]


def _sources(dataset: Dataset) -> list[tuple[Dataset, str]]:
    sources: list[tuple[Dataset, str]] = [(dataset, "")]
    file_meta = getattr(dataset, "file_meta", None)
    if file_meta is not None:
        sources.insert(0, (file_meta, "file_meta."))
    return sources


def _find_in_case(dataset: Dataset, identifiers: IdentifierSet) -> list[Leak]:
    return find_leaks_in_values(searchable_values(dataset), identifiers)


def searchable_values(dataset: Dataset, *, pdf: bool = True) -> list[tuple[str, str]]:
    """Every text the case-level guard searches in ``dataset`` (file meta included), as (attribute path,
    text): the values :func:`find_leaks` reads, and (``pdf``) an Encapsulated PDF's extracted text at
    ``<path>/pdf-text``. The pixel data is never among them.

    Raises:
        UnreadablePDFError: an Encapsulated PDF whose text cannot be extracted.
    """
    values: list[tuple[str, str]] = []
    for source, prefix in _sources(dataset):
        for path, elem in _walk(source, prefix):
            text = _searchable_text(elem)
            if text:
                values.append((path, text))
            if pdf and elem.tag == ENCAPSULATED_DOCUMENT_TAG and _is_pdf(source):
                values.append((f"{path}/pdf-text", pdf_text(elem.value)))
    return values


def find_leaks_in_values(values: Iterable[tuple[str, str]], identifiers: IdentifierSet) -> list[Leak]:
    """Every identifier of ``identifiers`` in ``values`` ((attribute path, text) pairs, e.g. recorded by the
    de-identification workers from their encoded output, ``searchable_values``)."""
    return [Leak(path, kind) for path, text in values for kind in identifiers.kinds_found(text)]


ENCAPSULATED_DOCUMENT_TAG = 0x00420011


class UnreadablePDFError(ValueError):
    """An Encapsulated PDF whose text cannot be extracted: it cannot be checked, so it must not leave."""


def _is_pdf(dataset: Dataset) -> bool:
    return str(dataset.get("MIMETypeOfEncapsulatedDocument", "") or "").strip().lower() == "application/pdf"


def pdf_text(document: bytes) -> str:
    """The text of a PDF as a reader sees it: every page's text (tables included) and the document info.

    Raises:
        UnreadablePDFError: pypdf cannot read the document.
    """
    import io as _io

    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    data = bytes(document).rstrip(b"\x00")
    try:
        reader = PdfReader(_io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
        info = [str(value) for value in (reader.metadata or {}).values()]
    except (PyPdfError, ValueError, KeyError, TypeError) as exc:
        raise UnreadablePDFError(f"PDF text cannot be extracted ({type(exc).__name__})") from None
    return "\n".join([*pages, *info])


def find_leaks_in_file(path: str | Path, identifiers: IdentifierSet, *, pixel_data: bool = False) -> list[Leak]:
    """Every leak in the Part 10 file at ``path`` as it will leave (read back from the disk).

    The pixel data itself is never searched; with ``pixel_data=False`` (images) the file is read up to it,
    since nothing after it changes once the image was de-identified (and checked) by the workers. An
    Encapsulated PDF whose text cannot be extracted is reported as a leak at ``EncapsulatedDocument/pdf-text``
    with kind ``unreadable pdf``: what cannot be checked does not leave.
    """
    dataset = pydicom.dcmread(str(path), stop_before_pixels=not pixel_data)
    try:
        return find_leaks(dataset, identifiers)
    except UnreadablePDFError:
        return [Leak("EncapsulatedDocument/pdf-text", "unreadable pdf")]


def assert_no_leaks(dataset: Dataset, identifiers: PatientIdentifiers) -> None:
    """Raise :class:`IdentifierLeakError` naming the paths when :func:`find_leaks` finds anything."""
    leaks = find_leaks(dataset, identifiers)
    if leaks:
        raise IdentifierLeakError(sorted({leak.path for leak in leaks}))


def _name_parts(value: object) -> list[str]:
    parts = re.split(r"[\^=\s,]+", str(value or ""))
    return [part for part in parts if len(part) >= MIN_NAME_PART and part.upper() not in _PLACEHOLDER_NAMES]


def _parse_date(value: object) -> date | None:
    text = str(value or "").strip()
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def _uid_elements(dataset: Dataset) -> Iterator[DataElement]:
    """Every UI element of ``dataset`` and of its sequences' items (others may be left out undecoded)."""
    for elem in undecoded.elements(dataset, lambda tag, vr: vr == "UI"):
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _uid_elements(item)
        else:
            yield elem


def _instance_uids(dataset: Dataset) -> Iterator[str]:
    for elem in _uid_elements(dataset):
        if elem.VR != "UI" or elem.VM == 0:
            continue
        keyword = _keyword(elem.tag)
        if "ClassUID" in keyword or keyword == "TransferSyntaxUID":
            continue
        values = elem.value if elem.VM > 1 else [elem.value]
        yield from (str(v).strip() for v in values if str(v).strip() and not is_standard_uid(str(v)))


def identifiers_from_dataset(
    dataset: Dataset, *, include_uids: bool = True, include_institution: bool = True
) -> PatientIdentifiers:
    """Collect the identifiers of the patient and study from an original (not de-identified) dataset.

    Pass ``include_uids=False`` under Retain UIDs and ``include_institution=False`` under Retain
    Institution Identity, where those values are meant to stay.
    """
    names = _name_parts(dataset.get("PatientName"))
    for keyword in ("OtherPatientNames", "PatientBirthName"):
        names += _name_parts(dataset.get(keyword))
    patient_ids = [str(dataset.get("PatientID", "") or "").strip()]
    patient_ids += [str(v).strip() for v in _values(dataset.get("OtherPatientIDs"))]
    birth = _parse_date(dataset.get("PatientBirthDate"))
    uids: list[str] = []
    if include_uids:
        uids = list(dict.fromkeys(_instance_uids(dataset)))
        meta = getattr(dataset, "file_meta", None)
        if meta is not None and meta.get("MediaStorageSOPInstanceUID"):
            uids.append(str(meta.MediaStorageSOPInstanceUID))
    institution = str(dataset.get("InstitutionName", "") or "").strip() if include_institution else ""
    return PatientIdentifiers(
        name_parts=tuple(dict.fromkeys(names)),
        patient_ids=tuple(v for v in patient_ids if v),
        accession_numbers=tuple(v for v in [str(dataset.get("AccessionNumber", "") or "").strip()] if v),
        birth_dates=(birth,) if birth else (),
        institution_names=(institution,) if institution else (),
        referring_physician_name_parts=tuple(_name_parts(dataset.get("ReferringPhysicianName"))),
        uids=tuple(dict.fromkeys(uids)),
    )


def _values(value: object) -> list[object]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return list(value)  # type: ignore[call-overload]  # a MultiValue, matched by name
    return [value]
