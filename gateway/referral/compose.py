"""Compose the notes of one case: what is known about the patient, the scrubbed notes, the guard's identifiers.

The scrubber and the outbound guard must know every identifier the gateway holds for the case: the
study's original header values (``StudyIdentity``), the referral's patient and referrer, and the
institution. This module gathers them, scrubs a referral (or, when none came, the DICOM header's own
notes) and returns :class:`~gateway.referral.scrub.ScrubbedNotes` for the builders.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping

from gateway.deid.guard import PatientIdentifiers
from gateway.models import StudyIdentity
from gateway.referral.codes import NON_URGENT_FLAGS
from gateway.referral.document import Referral, Urgency
from gateway.referral.redflags import FlagFinding, detect_red_flags
from gateway.referral.scrub import KnownIdentifiers, ScrubbedNotes, TextScrubber, scrub_referral

__all__ = [
    "HEADER_NOTE_KEYWORDS",
    "NO_REFERRAL_NOTE",
    "guard_identifiers",
    "known_identifiers",
    "scrub_header_notes",
    "scrub_referral_notes",
]

#: The DICOM header's own notes, used when no referral arrives: keyword → the notes field it fills.
HEADER_NOTE_KEYWORDS: Mapping[str, str] = {
    "AdditionalPatientHistory": "history",
    "ReasonForStudy": "symptoms",
    "RequestedProcedureDescription": "prior_imaging",
    "ReasonForTheRequestedProcedure": "question",
}
NO_REFERRAL_NOTE = "No referral received: these notes come from the DICOM header of the study."


def _dicom_date(value: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(value.strip(), "%Y%m%d").date()
    except ValueError:
        return None


def _split_contacts(contact: str | None) -> list[str]:
    return [part.strip() for part in re.split(r"[,;]", contact or "") if part.strip()]


def known_identifiers(identity: StudyIdentity, referral: Referral | None) -> KnownIdentifiers:
    """Every identifier the gateway holds for the case, for the text scrubber."""
    names = [identity.patient_name, identity.referring_physician]
    ids = [identity.patient_id, identity.accession_number, identity.dicom_study_id]
    births = [_dicom_date(identity.birth_date)]
    contacts: list[str] = []
    institutions = [identity.institution_name]
    if referral is not None:
        names.append(referral.patient.name)
        ids += [referral.patient.id, referral.accession_number]
        births.append(referral.patient.birth_date)
        institutions.append(referral.source)
        if referral.referrer is not None:
            names.append(referral.referrer.name)
            contacts += _split_contacts(referral.referrer.contact)
    # A one-character Study ID such as "1" would scrub every digit 1 from the notes.
    ids = [value for value in ids if len(value.strip()) >= 3]
    return KnownIdentifiers(
        names=tuple(dict.fromkeys(n for n in names if n and n.strip())),
        ids=tuple(dict.fromkeys(v.strip() for v in ids)),
        birth_dates=tuple(dict.fromkeys(b for b in births if b is not None)),
        contacts=tuple(dict.fromkeys(contacts)),
        institutions=tuple(dict.fromkeys(i for i in institutions if i and i.strip())),
    )


def _name_parts(*names: str) -> tuple[str, ...]:
    parts = (part for name in names for part in re.split(r"[\s^,.]+", name or ""))
    return tuple(dict.fromkeys(p for p in parts if len(p) >= 3 and p.lower() not in {"dr", "mr", "mrs", "prof"}))


def guard_identifiers(identity: StudyIdentity, referral: Referral | None,
                      original_uids: Iterable[str] = ()) -> PatientIdentifiers:
    """The outbound guard's view of the case: StudyIdentity plus the referral's patient and referrer."""
    patient_names = [identity.patient_name]
    referring = [identity.referring_physician]
    ids, accessions = [identity.patient_id], [identity.accession_number]
    births = [_dicom_date(identity.birth_date)]
    if referral is not None:
        patient_names.append(referral.patient.name)
        ids.append(referral.patient.id)
        accessions.append(referral.accession_number)
        births.append(referral.patient.birth_date)
        if referral.referrer is not None:
            referring.append(referral.referrer.name)
    return PatientIdentifiers(
        name_parts=_name_parts(*patient_names),
        patient_ids=tuple(v for v in dict.fromkeys(ids) if v),
        accession_numbers=tuple(v for v in dict.fromkeys(accessions) if v),
        birth_dates=tuple(dict.fromkeys(b for b in births if b is not None)),
        institution_names=tuple(v for v in (identity.institution_name,) if v),
        referring_physician_name_parts=_name_parts(*referring),
        uids=tuple(dict.fromkeys(u for u in original_uids if u)),
    )


def _urgency(referral_urgent: bool, flags: Iterable[FlagFinding]) -> Urgency:
    urgent = referral_urgent or any(flag.code not in NON_URGENT_FLAGS for flag in flags)
    return Urgency.URGENT if urgent else Urgency.ROUTINE


def scrub_referral_notes(referral: Referral, known: KnownIdentifiers, date_offset_days: int, *,
                         day_first: bool = True) -> ScrubbedNotes:
    """:func:`gateway.referral.scrub.scrub_referral` with the identifiers of the whole case (the study
    header's too), not only the referral's own, and the date order of the case's source."""
    return scrub_referral(referral, date_offset_days, known=known, day_first=day_first)


def scrub_header_notes(header_notes: Mapping[str, str], known: KnownIdentifiers,
                       date_offset_days: int) -> ScrubbedNotes:
    """Notes from the DICOM header (keywords of :data:`HEADER_NOTE_KEYWORDS`), flagged "no referral".

    Red flags are detected in the header text (none can be declared without a referral).
    """
    unknown = sorted(set(header_notes) - set(HEADER_NOTE_KEYWORDS))
    if unknown:
        raise ValueError(f"not a header notes keyword: {unknown[0]}")
    scrubber = TextScrubber(known, date_offset_days)
    fields: dict[str, str | None] = {}
    phrases: dict = {}
    for keyword, text in header_notes.items():
        if text and text.strip():
            fields[HEADER_NOTE_KEYWORDS[keyword]] = scrubber.scrub(text)
            for detected in detect_red_flags(text):
                phrases.setdefault(detected.code, scrubber.scrub(detected.trigger_phrase))
    fields["history"] = " ".join(filter(None, [NO_REFERRAL_NOTE, fields.get("history")]))
    findings = tuple(FlagFinding(code, False, True, phrase) for code, phrase in sorted(
        phrases.items(), key=lambda item: list(type(item[0])).index(item[0])))
    return ScrubbedNotes(urgency=_urgency(False, findings), flags=findings, **fields)
