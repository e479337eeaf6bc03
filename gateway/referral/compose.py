"""Compose the notes of one case: a scrubbed referral or, when none came, the DICOM header's own notes.

The identifiers come from the case's one identifier set (``gateway.privacy``), built by the notes stage;
this module scrubs with them and returns :class:`~gateway.referral.scrub.ScrubbedNotes` for the builders.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gateway.referral.codes import NON_URGENT_FLAGS, RedFlag
from gateway.referral.document import Referral, Urgency
from gateway.referral.redflags import FlagFinding, detect_red_flags
from gateway.referral.scrub import KnownIdentifiers, ScrubbedNotes, TextScrubber, scrub_referral

__all__ = [
    "HEADER_NOTE_KEYWORDS",
    "NO_REFERRAL_NOTE",
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
    fields: dict[str, Any] = {}  # ScrubbedNotes' text fields by name
    phrases: dict[RedFlag, str] = {}
    for keyword, text in header_notes.items():
        if text and text.strip():
            fields[HEADER_NOTE_KEYWORDS[keyword]] = scrubber.scrub(text)
            for detected in detect_red_flags(text):
                phrases.setdefault(detected.code, scrubber.scrub(detected.trigger_phrase))
    fields["history"] = " ".join(filter(None, [NO_REFERRAL_NOTE, fields.get("history")]))
    findings = tuple(FlagFinding(code, False, True, phrase) for code, phrase in sorted(
        phrases.items(), key=lambda item: list(RedFlag).index(item[0])))
    return ScrubbedNotes(urgency=_urgency(False, findings), flags=findings, **fields)
