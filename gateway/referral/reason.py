"""A short reason for the requested procedure, for Reason for the Requested Procedure (0040,1002).

The reason goes into the header of every image, where no person reviews it: it is made only of the node's own
words (the urgency and the meaning of the first red flag, from :mod:`gateway.referral.codes`), never of the
referral's free text. A nickname the scrubber did not know once went into every image of a case this way.
"""

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
    """At most 64 characters: the urgency mark, then the first red flag's meaning, else a fixed phrase; no free
    text of the notes (see the module's docstring)."""
    if not isinstance(notes, ScrubbedNotes):
        raise TypeError("notes must be a ScrubbedNotes")
    prefix = "URGENT: " if notes.urgency is Urgency.URGENT else ""
    flags = [RED_FLAG_CODES[f.code].meaning for f in notes.flags]
    body = next((_first_sentence(flag) for flag in flags if _first_sentence(flag)), DEFAULT_REASON)
    return _fit(prefix + body, LO_MAX_LENGTH)
