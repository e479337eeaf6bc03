"""A short reason for the requested procedure, for Reason for the Requested Procedure (0040,1002)."""

from __future__ import annotations

import re

from gateway.referral.codes import RED_FLAG_CODES
from gateway.referral.document import Urgency
from gateway.referral.scrub import ScrubbedNotes

__all__ = ["LO_MAX_LENGTH", "short_reason"]

#: Maximum length of a DICOM LO value.
LO_MAX_LENGTH = 64
DEFAULT_REASON = "Spine imaging second opinion"
_NOT_LO = re.compile(r"[\\\x00-\x1f\x7f]+")  # LO forbids backslash and control characters
_SENTENCE_END = re.compile(r"(?<=[.?!])\s")


def _first_sentence(text: str) -> str:
    cleaned = " ".join(_NOT_LO.sub(" ", text).split())
    return _SENTENCE_END.split(cleaned, maxsplit=1)[0].strip()


def _fit(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[: limit - 3].rsplit(" ", 1)[0] if " " in text[: limit - 3] else text[: limit - 3]
    return cut.rstrip(" ,;:-") + "..."


def short_reason(notes: ScrubbedNotes) -> str:
    """At most 64 characters: urgency mark, then the question, else the first red flag or history.

    ``notes`` must already be scrubbed; the result contains nothing that is not in them.
    """
    if not isinstance(notes, ScrubbedNotes):
        raise TypeError("notes must be a ScrubbedNotes")
    prefix = "URGENT: " if notes.urgency is Urgency.URGENT else ""
    candidates = [notes.question, *(RED_FLAG_CODES[f.code].meaning for f in notes.flags), notes.history,
                  notes.symptoms]
    body = next((_first_sentence(c) for c in candidates if c and _first_sentence(c)), DEFAULT_REASON)
    return _fit(prefix + body, LO_MAX_LENGTH)
