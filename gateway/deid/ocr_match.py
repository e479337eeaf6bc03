"""Is an identifier of the patient still readable in OCR text? Tolerant of what OCR gets wrong.

Both the identifier and the text are folded the same way before they are compared: upper case, separators
dropped, and the letters OCR confuses with digits mapped to those digits (``O``→``0``, ``I``/``L``→``1``,
``S``→``5``, ...). A birth date is looked for in the forms a device writes it (19620314, 14/03/1962,
03/14/1962, 1962-03-14, 14.03.62, 14 MAR 1962, ...). Long identifiers also match with one character wrong.

The identifiers come in as one parameter (:class:`gateway.deid.guard.PatientIdentifiers` today), turned into
:class:`SearchTerm` by :func:`search_terms`: a fuller identifier set can replace it there alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from gateway.deid.guard import PatientIdentifiers

_CONFUSABLE = str.maketrans({"O": "0", "Q": "0", "D": "0", "I": "1", "L": "1", "|": "1", "!": "1", "J": "1",
                             "Z": "2", "S": "5", "B": "8", "G": "6", "T": "7"})
_NOT_ALNUM = re.compile(r"[^0-9A-Z]+")
MIN_TERM = 3  # shorter identifiers would match inside any text
SUBSTRING_FROM = 4  # shorter terms must stand as a whole word
FUZZY_FROM = 6  # terms this long also match with one character substituted, added or dropped
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


def fold(text: str) -> str:
    """``text`` as compared: upper case, only letters and digits, OCR's usual confusions merged."""
    return _NOT_ALNUM.sub("", text.upper()).translate(_CONFUSABLE)


@dataclass(frozen=True, slots=True)
class SearchTerm:
    """One identifier to look for: its kind (logged) and its folded form (PHI, never logged)."""

    kind: str
    folded: str


def birth_date_forms(value: date) -> list[str]:
    """The ways a device writes a date into a picture."""
    day, month, year, short = f"{value.day:02d}", f"{value.month:02d}", f"{value.year:04d}", f"{value.year % 100:02d}"
    name = _MONTHS[value.month - 1]
    forms = [year + month + day, day + month + year, month + day + year, day + month + short, month + day + short,
             short + month + day, day + name + year, day + name + short, name + day + year,
             f"{value.day}{value.month}{year}", f"{value.month}{value.day}{year}"]
    return list(dict.fromkeys(forms))


def search_terms(identifiers: PatientIdentifiers) -> tuple[SearchTerm, ...]:
    """What to look for in the pixels: names, IDs, accession numbers, birth date forms, institutions."""
    raw: list[tuple[str, str]] = []
    raw += [("patient name", part) for part in identifiers.name_parts]
    raw += [("patient id", value) for value in identifiers.patient_ids]
    raw += [("accession number", value) for value in identifiers.accession_numbers]
    raw += [("birth date", form) for birth in identifiers.birth_dates for form in birth_date_forms(birth)]
    raw += [("institution name", value) for value in identifiers.institution_names]
    raw += [("referring physician name", part) for part in identifiers.referring_physician_name_parts]
    terms = {(kind, fold(value)) for kind, value in raw}
    return tuple(SearchTerm(kind, folded) for kind, folded in sorted(terms) if len(folded) >= MIN_TERM)


def identifiers_found(words: Iterable[str], lines: Iterable[str], terms: tuple[SearchTerm, ...]) -> set[str]:
    """The kinds of identifier that ``words`` or ``lines`` (OCR text, PHI) still show."""
    folded_words = {fold(word) for word in words} - {""}
    folded_lines = [fold(line) for line in lines]
    found: set[str] = set()
    for term in terms:
        if term.kind in found:
            continue
        if _term_in(term.folded, folded_words, folded_lines):
            found.add(term.kind)
    return found


def is_identifier_piece(word: str, terms: tuple[SearchTerm, ...]) -> bool:
    """Whether ``word`` (OCR text, PHI) is an identifier or a piece of one of at least :data:`MIN_TERM`
    characters (OCR often splits an ID or a date in two, each half read with little confidence)."""
    folded = fold(word)
    if len(folded) < MIN_TERM:
        return False
    return folded in {term.folded for term in terms} or any(folded in term.folded for term in terms) \
        or bool(identifiers_found([word], [], terms))


def _term_in(term: str, words: set[str], lines: list[str]) -> bool:
    if term in words:
        return True
    if len(term) >= SUBSTRING_FROM and any(term in line for line in lines):
        return True
    if len(term) >= FUZZY_FROM:
        return any(_within_one_edit(term, candidate) for text in (*words, *lines)
                   for candidate in _windows(text, len(term)))
    return False


def _windows(text: str, size: int) -> Iterable[str]:
    """Every stretch of ``text`` one shorter, as long as, and one longer than ``size``."""
    for length in (size - 1, size, size + 1):
        for start in range(0, max(0, len(text) - length) + 1):
            piece = text[start:start + length]
            if len(piece) == length:
                yield piece


def _within_one_edit(a: str, b: str) -> bool:
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b)) <= 1
    short, long = (a, b) if len(a) < len(b) else (b, a)
    return any(long[:i] + long[i + 1:] == short for i in range(len(long)))


def has_text(word: str) -> bool:
    """A word worth blanking or, in strict mode, worth refusing: at least two letters or digits."""
    return sum(ch.isalnum() for ch in word) >= 2
