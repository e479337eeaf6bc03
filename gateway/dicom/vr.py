"""The one table of DICOM value representations (PS3.5 6.2) the gateway's byte-level code reads.

Each row says how a VR is encoded (the explicit VR header with a 4-byte length, PS3.5 7.1.2), whether its
value is characters, whether several values are joined by backslashes, and whether its characters follow a
fixed grammar (dates, times, numbers, UIDs, ages) rather than being free text. The sets below are drawn
from it; nowhere else lists VRs.

The rows are derived from pydicom's own VR sets (``pydicom.valuerep``, pydicom 3.0), so that the byte-level
walk and pydicom's reader agree on every VR:

- the VRs: ``STANDARD_VR`` (the 34 of PS3.5 Table 6.2-1; the ambiguous "US or SS" kinds are not VRs on the wire);
- ``long_length``: ``EXPLICIT_VR_LENGTH_32``;
- ``text``: ``STR_VR``;
- ``multi_valued``: text not in ``ALLOW_BACKSLASH`` (LT, ST, UT, where a backslash is a character);
- ``formatted``: the text VRs that hold numbers (``FLOAT_VR`` or ``INT_VR``: DS, IS), and the ones below.

What pydicom does not say, kept here:

- ``_SINGLE_VALUED_TEXT``: UR always has a VM of one (PS3.5 6.4), which pydicom's sets do not say (it is not
  in ``ALLOW_BACKSLASH``), so it is not multi-valued;
- ``_GRAMMAR_TEXT``: AS, DA, DT, TM, UI have a fixed grammar (age, date, date-time, time, UID); pydicom has no
  set for them (``DEFAULT_CHARSET_VR`` also holds AE, CS and UR, which are names, codes and addresses);
- ``padding``: UI is padded with NUL, every other text VR with a space (PS3.5 6.2).
"""

from __future__ import annotations

from typing import NamedTuple

from pydicom.valuerep import (
    ALLOW_BACKSLASH,
    EXPLICIT_VR_LENGTH_32,
    FLOAT_VR,
    INT_VR,
    STANDARD_VR,
    STR_VR,
)


class VR(NamedTuple):
    long_length: bool   # explicit VR: two reserved bytes and a 4-byte length (else a 2-byte length)
    text: bool          # the value is characters
    multi_valued: bool  # several values may be joined by "\"
    formatted: bool     # characters with a fixed grammar (date, time, number, UID, age), not free text


_SINGLE_VALUED_TEXT = frozenset({"UR"})
_GRAMMAR_TEXT = frozenset({"AS", "DA", "DT", "TM", "UI"})


def _row(name: str) -> VR:
    text = name in STR_VR
    return VR(
        long_length=name in EXPLICIT_VR_LENGTH_32,
        text=text,
        multi_valued=text and name not in ALLOW_BACKSLASH and name not in _SINGLE_VALUED_TEXT,
        formatted=text and (name in FLOAT_VR or name in INT_VR or name in _GRAMMAR_TEXT),
    )


TABLE: dict[str, VR] = {name: _row(name) for name in sorted(str(vr.value) for vr in STANDARD_VR)}

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
