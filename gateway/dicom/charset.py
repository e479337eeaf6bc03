"""Choosing the DICOM Specific Character Set (0008,0005) for text written by the builders.

The narrowest set that holds every value is used: none (default repertoire) for ASCII, ISO_IR 100
(Latin-1) when that suffices, else ISO_IR 192 (UTF-8). Narrow sets keep older readers and DCMTK's
VR checker (which does not check UTF-8) working.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["specific_character_set"]


def _encodes(values: list[str], encoding: str) -> bool:
    try:
        for value in values:
            value.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


def specific_character_set(values: Iterable[object]) -> str | None:
    """The narrowest Specific Character Set for ``values`` (non-strings are ignored)."""
    texts = [str(v) for v in values if isinstance(v, str) or type(v).__name__ == "PersonName"]
    if _encodes(texts, "ascii"):
        return None
    if _encodes(texts, "latin-1"):
        return "ISO_IR 100"
    return "ISO_IR 192"
