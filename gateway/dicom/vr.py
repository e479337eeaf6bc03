"""The one table of DICOM value representations (PS3.5 6.2) the gateway's byte-level code reads.

Each row says how a VR is encoded (the explicit VR header with a 4-byte length, PS3.5 7.1.2), whether its
value is characters, whether several values are joined by backslashes, and whether its characters follow a
fixed grammar (dates, times, numbers, UIDs, ages) rather than being free text. The sets below are drawn
from it; nowhere else lists VRs.
"""

from __future__ import annotations

from typing import NamedTuple


class VR(NamedTuple):
    long_length: bool   # explicit VR: two reserved bytes and a 4-byte length (else a 2-byte length)
    text: bool          # the value is characters
    multi_valued: bool  # several values may be joined by "\"
    formatted: bool     # characters with a fixed grammar (date, time, number, UID, age), not free text


_BINARY = VR(False, False, False, False)
_LONG_BINARY = VR(True, False, False, False)

TABLE: dict[str, VR] = {
    "AE": VR(False, True, True, False),
    "AS": VR(False, True, True, True),
    "AT": _BINARY,
    "CS": VR(False, True, True, False),
    "DA": VR(False, True, True, True),
    "DS": VR(False, True, True, True),
    "DT": VR(False, True, True, True),
    "FD": _BINARY,
    "FL": _BINARY,
    "IS": VR(False, True, True, True),
    "LO": VR(False, True, True, False),
    "LT": VR(False, True, False, False),
    "OB": _LONG_BINARY,
    "OD": _LONG_BINARY,
    "OF": _LONG_BINARY,
    "OL": _LONG_BINARY,
    "OV": _LONG_BINARY,
    "OW": _LONG_BINARY,
    "PN": VR(False, True, True, False),
    "SH": VR(False, True, True, False),
    "SL": _BINARY,
    "SQ": _LONG_BINARY,
    "SS": _BINARY,
    "ST": VR(False, True, False, False),
    "SV": _LONG_BINARY,
    "TM": VR(False, True, True, True),
    "UC": VR(True, True, True, False),
    "UI": VR(False, True, True, True),
    "UL": _BINARY,
    "UN": _LONG_BINARY,
    "UR": VR(True, True, False, False),
    "US": _BINARY,
    "UT": VR(True, True, False, False),
    "UV": _LONG_BINARY,
}

LONG_LENGTH_VRS = frozenset(name for name, vr in TABLE.items() if vr.long_length)
SHORT_LENGTH_VRS = frozenset(name for name, vr in TABLE.items() if not vr.long_length)
# The same, as the two bytes an explicit VR header carries (the structural walk compares raw bytes).
LONG_LENGTH_VR_BYTES = frozenset(name.encode("ascii") for name in LONG_LENGTH_VRS)
SHORT_LENGTH_VR_BYTES = frozenset(name.encode("ascii") for name in SHORT_LENGTH_VRS)
# Every VR whose value is characters (where a patient's identifiers can be written).
TEXT_VRS = frozenset(name for name, vr in TABLE.items() if vr.text)
# Characters without a grammar: names, codes, descriptions, free text.
FREE_TEXT_VRS = frozenset(name for name, vr in TABLE.items() if vr.text and not vr.formatted)
# Text values with a 2-byte length that may hold several values: what an in-place edit sets.
SHORT_MULTI_VALUED_TEXT_VRS = frozenset(name for name, vr in TABLE.items()
                                        if vr.text and vr.multi_valued and not vr.long_length)


def padding(vr: str) -> bytes:
    """The byte that pads a value of ``vr`` to even length: a space for text, NUL for UIDs and binary."""
    return b" " if TABLE[vr].text and vr != "UI" else b"\0"
