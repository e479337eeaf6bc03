"""One folding of text for every identifier search: what a reader would consider the same letters.

``fold("STRAUß")``, ``fold("Strauss")`` and ``fold("strauss")`` are equal; so are ``Dvořák`` and ``Dvorak``,
``Ñúñez`` and ``Nunez``. Folding is: Unicode compatibility normalisation (NFKC), case folding (which also
turns ß into ss), removal of combining accents (NFKD), then transliteration of what is left outside ASCII
(``anyascii``: ``王伟`` → ``wangwei``, Cyrillic and Greek letter by letter). German umlauts are also
commonly written ae/oe/ue: :func:`spelling_variants` gives both spellings of a value.
"""

from __future__ import annotations

import re
import unicodedata

from anyascii import anyascii

__all__ = ["fold", "has_non_latin_letters", "spelling_variants", "words"]

_UMLAUTS = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue"})
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def fold(text: str) -> str:
    """``text`` lower-cased, without accents, transliterated to ASCII."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    stripped = "".join(c for c in unicodedata.normalize("NFKD", folded) if not unicodedata.combining(c))
    return anyascii(stripped).lower() if not stripped.isascii() else stripped


def spelling_variants(text: str) -> tuple[str, ...]:
    """Folded ``text``, and its ae/oe/ue spelling when it has German umlauts (Müller: muller, mueller)."""
    variants = [fold(text)]
    expanded = fold(text.translate(_UMLAUTS))
    if expanded != variants[0]:
        variants.append(expanded)
    return tuple(variants)


def words(folded: str) -> list[str]:
    """The words of already-folded text (letters and digits; "o'brien" stays one word)."""
    return _WORD.findall(folded.replace("’", "'"))


def has_non_latin_letters(text: str) -> bool:
    """Whether ``text`` has letters outside the Latin script (ideographic, kana, hangul, Cyrillic, ...)."""
    for char in text:
        if char.isalpha() and not char.isascii():
            base = unicodedata.normalize("NFKD", char)[0]
            if not base.isascii() and "LATIN" not in unicodedata.name(base, ""):
                return True
    return False
