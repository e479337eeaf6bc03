"""QIDO-RS (PS3.18 §10.6): studies, series and instances of the caller's cases, as application/dicom+json.

Matching: any attribute by keyword or tag (``PatientID=...``, ``0020000D=...``), single values with ``*`` and
``?`` wildcards, UID lists (``a,b``), date and time ranges (``20260101-20261231``); ``limit``, ``offset`` and
``includefield`` (a keyword or tag, or ``all``); ``fuzzymatching`` is accepted and ignored. An attribute the
results do not carry matches nothing but an empty query value.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from gateway.dicomweb.objects import CaseObjects, Served

CONTROL = frozenset({"limit", "offset", "includefield", "fuzzymatching"})
STUDY_FIELDS = ("SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName",
                "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
                "StudyDescription")
SERIES_FIELDS = ("SpecificCharacterSet", "Modality", "SeriesDescription", "SeriesNumber", "SeriesInstanceUID",
                 "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime")
INSTANCE_FIELDS = ("SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns",
                   "BitsAllocated", "NumberOfFrames")


class BadQuery(ValueError):
    """A query parameter that cannot be understood (400)."""


def tag_of(name: str) -> int:
    """The tag a query key names: a keyword, or eight hex digits.

    Raises:
        BadQuery: neither.
    """
    if len(name) == 8 and all(c in "0123456789abcdefABCDEF" for c in name):
        return int(Tag(int(name, 16)))
    tag = tag_for_keyword(name)
    if tag is None:
        raise BadQuery(f"unknown attribute {name!r}")
    return int(tag)


def _value_of(dataset: Mapping[str, Any], tag: int) -> list[str] | None:
    element = dataset.get(f"{tag:08X}")
    if element is None:
        return None
    values = element.get("Value") or []
    out = []
    for value in values:
        if isinstance(value, dict):
            out.append(str(value.get("Alphabetic", "")))
        else:
            out.append(str(value))
    return out


def _matches(values: list[str] | None, wanted: str, vr: str) -> bool:
    if wanted == "":
        return True
    if not values:
        return False
    if vr == "UI":
        return any(v in wanted.split(",") for v in values)
    if vr in ("DA", "TM", "DT") and "-" in wanted:
        low, _, high = wanted.partition("-")
        return any((not low or v >= low) and (not high or v[:len(high)] <= high) for v in values)
    pattern = wanted.replace("\\", "")
    if vr == "PN":
        return any(fnmatch.fnmatchcase(v.lower(), pattern.lower()) for v in values)
    return any(fnmatch.fnmatchcase(v, pattern) for v in values)


class Query:
    """The parsed query of one QIDO request."""

    def __init__(self, params: Iterable[tuple[str, str]]) -> None:
        self.filters: list[tuple[int, str, str]] = []
        self.include: set[int] = set()
        self.include_all = False
        self.limit: int | None = None
        self.offset = 0
        for key, value in params:
            if key == "includefield":
                for name in filter(None, value.split(",")):
                    if name == "all":
                        self.include_all = True
                    else:
                        self.include.add(tag_of(name))
            elif key in ("limit", "offset"):
                if not value.isdigit():
                    raise BadQuery(f"{key} must be a whole number")
                if key == "limit":
                    self.limit = int(value)
                else:
                    self.offset = int(value)
            elif key not in CONTROL:
                tag = tag_of(key)
                self.filters.append((tag, value, _vr(tag)))

    def keep(self, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
        chosen = [r for r in results if all(_matches(_value_of(r, tag), wanted, vr)
                                            for tag, wanted, vr in self.filters)]
        end = None if self.limit is None else self.offset + self.limit
        return chosen[self.offset:end]

    def fields(self, base: Iterable[str]) -> set[int]:
        return {_tag(k) for k in base} | self.include | {tag for tag, _, _ in self.filters}


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword  # the module's own keywords
    return int(tag)


def _vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _json(header: Dataset, tags: set[int] | None) -> dict[str, Any]:
    """The DICOM JSON of ``header``'s top-level attributes in ``tags`` (all when None), no sequences' bulk data."""
    chosen = Dataset()
    elements = header if tags is None else (header[tag] for tag in sorted(tags) if tag in header)
    for element in elements:
        if element.tag.group != 0x0002 and element.VR not in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
            chosen.add(element)
    return chosen.to_json_dict()


def _put(result: dict[str, Any], keyword: str, vr: str, values: list[Any]) -> None:
    result[f"{_tag(keyword):08X}"] = {"vr": vr, "Value": values} if values else {"vr": vr}


def study_result(case: CaseObjects, query: Query, url: Callable[..., str]) -> dict[str, Any] | None:
    if not case.objects:
        return None
    first = next((o for o in case.objects if o.row.kind == "image"), case.objects[0])
    result = _json(first.header, None if query.include_all else query.fields(STUDY_FIELDS))
    modalities = sorted({str(o.header.get("Modality", "")) for o in case.objects} - {""})
    _put(result, "ModalitiesInStudy", "CS", modalities)
    _put(result, "NumberOfStudyRelatedSeries", "IS", [len(list(case.series_uids()))])
    _put(result, "NumberOfStudyRelatedInstances", "IS", [len(case.objects)])
    _put(result, "RetrieveURL", "UR", [url(str(case.study.pseudo_study_uid))])
    return result


def series_results(case: CaseObjects, query: Query, url: Callable[..., str]) -> list[dict[str, Any]]:
    results = []
    for series_uid in case.series_uids():
        members = case.series(series_uid)
        tags = None if query.include_all else query.fields(SERIES_FIELDS) | query.fields(STUDY_FIELDS)
        result = _json(members[0].header, tags)
        _put(result, "NumberOfSeriesRelatedInstances", "IS", [len(members)])
        _put(result, "RetrieveURL", "UR", [url(str(case.study.pseudo_study_uid), series_uid)])
        results.append(result)
    return results


def instance_results(case: CaseObjects, members: list[Served], query: Query,
                     url: Callable[..., str]) -> list[dict[str, Any]]:
    results = []
    base = (*INSTANCE_FIELDS, "StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber")
    for served in members:
        result = _json(served.header, None if query.include_all else query.fields(base))
        _put(result, "RetrieveURL", "UR", [url(str(case.study.pseudo_study_uid), served.series_uid,
                                                served.sop_instance_uid)])
        results.append(result)
    return results
