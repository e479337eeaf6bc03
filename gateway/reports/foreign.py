"""Pseudonyms of other cases in a reviewer's report: such a report must not go home.

A reviewer who pastes another case's text, or whose workstation mixes two studies, can send a report quoting
pseudonyms the node issued for another patient: a pseudonymous patient ID, name (``SPINEGW^<key>``) or case key,
accession number, or a Study, Series or SOP Instance UID of another case. Re-identification maps only the
case's own pseudonyms back, so these would reach the hospital as they are, linking its patient to another one.
The report stage refuses such a report (``report_reidentified``, outcome ``failed``, with the attribute path
and the kind of pseudonym, never its value).

The candidates are read from the report (every UID, and every token of its text shaped like a pseudonym) and
looked up in the database in one query per kind: the node never loads every pseudonym it issued.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from pydicom.dataset import Dataset

from gateway.reports.reidentify import string_values, walk
from gateway.storage.models import Study, StudyIdentity, UidMap

# The shapes of the pseudonyms gateway.deid.pseudonym and gateway.storage.models.new_study_key issue.
_PATIENT_ID = re.compile(r"(?<![A-Za-z0-9])SPGW[0-9A-F]{16}(?![A-Za-z0-9])")
_ACCESSION = re.compile(r"(?<![A-Za-z0-9])A[0-9A-F]{15}(?![A-Za-z0-9])")
_CASE_KEY = re.compile(r"(?<![A-Za-z0-9])[0-9a-f]{12}(?![A-Za-z0-9])")  # also in SPINEGW^<key>


def foreign_pseudonym(report: Dataset, study: Study) -> str | None:
    """The first pseudonym of another case in ``report`` (a reviewer's report for ``study``), as
    "<attribute path> (<kind>)", or None. The kinds: ``uid``, ``patient_id``, ``accession_number``,
    ``case_key``."""
    found: dict[tuple[str, str], str] = {}  # (kind, value) -> first attribute path
    for path, value_kind, value in _candidates(report):
        found.setdefault((value_kind, value), path)
    foreign = _foreign_values(study, found)
    for (value_kind, value), path in found.items():
        if (value_kind, value) in foreign:
            return f"{path} ({value_kind})"
    return None


def _candidates(report: Dataset) -> Iterable[tuple[str, str, str]]:
    """(attribute path, kind, value) of every UID and every pseudonym-shaped token of the report's text."""
    for path, _, elem in walk(report):
        if elem.VR == "SQ" or elem.VM == 0 or elem.value is None:
            continue
        values = list(elem.value) if elem.VM > 1 else [elem.value]
        if elem.VR == "UI":
            yield from ((path, "uid", str(v).strip("\0 ")) for v in values)
            continue
        holder = Dataset()
        holder.add(elem)
        for text in map(str, string_values(holder)):
            for kind, pattern in (("patient_id", _PATIENT_ID), ("accession_number", _ACCESSION),
                                  ("case_key", _CASE_KEY)):
                yield from ((path, kind, match) for match in pattern.findall(text))


def _foreign_values(study: Study, found: dict[tuple[str, str], str]) -> set[tuple[str, str]]:
    """Those of ``found`` that the node issued for a case other than ``study`` (a patient ID or an accession
    number equal to the case's own, as another study of the same patient or order has, is the case's own)."""
    def values(kind: str) -> list[str]:
        return [value for k, value in found if k == kind]

    own = StudyIdentity.get_or_none(StudyIdentity.study == study.id)
    own_patient_id = own.pseudo_patient_id if own is not None else ""
    own_accession = own.pseudo_accession_number if own is not None else ""
    foreign: set[tuple[str, str]] = set()
    if uids := values("uid"):
        foreign |= {("uid", u) for u in UidMap.select(UidMap.pseudo_uid).where(
            UidMap.pseudo_uid.in_(uids) & (UidMap.study != study.id)).scalars()}
        foreign |= {("uid", u) for u in Study.select(Study.pseudo_study_uid).where(
            Study.pseudo_study_uid.in_(uids) & (Study.id != study.id)).scalars()}
    if patient_ids := [v for v in values("patient_id") if v != own_patient_id]:
        foreign |= {("patient_id", v) for v in StudyIdentity.select(StudyIdentity.pseudo_patient_id).where(
            StudyIdentity.pseudo_patient_id.in_(patient_ids)).scalars()}
    # The same original accession gives the same pseudonym: equal to the case's own, it is the case's own.
    if accessions := [v for v in values("accession_number") if v != own_accession]:
        foreign |= {("accession_number", v) for v in StudyIdentity.select(
            StudyIdentity.pseudo_accession_number).where(StudyIdentity.pseudo_accession_number.in_(accessions)
                                                         & (StudyIdentity.study != study.id)).scalars()}
    if keys := values("case_key"):
        foreign |= {("case_key", v) for v in Study.select(Study.key).where(
            Study.key.in_(keys) & (Study.id != study.id)).scalars()}
    return foreign
