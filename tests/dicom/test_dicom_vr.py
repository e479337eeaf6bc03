"""The VR table derived from pydicom's sets says, for every VR, what the hand-kept table said before it."""

from __future__ import annotations

import pytest

from gateway.dicom import vr
from gateway.dicom.vr import VR

_BINARY = VR(False, False, False, False)
_LONG_BINARY = VR(True, False, False, False)

# The hand-kept table this module held until issue 24 (long_length, text, multi_valued, formatted), checked
# against PS3.5 Table 6.2-1 and 7.1.2: the derivation must reproduce it row by row.
HAND_KEPT: dict[str, VR] = {
    "AE": VR(False, True, True, False), "AS": VR(False, True, True, True), "AT": _BINARY,
    "CS": VR(False, True, True, False), "DA": VR(False, True, True, True), "DS": VR(False, True, True, True),
    "DT": VR(False, True, True, True), "FD": _BINARY, "FL": _BINARY, "IS": VR(False, True, True, True),
    "LO": VR(False, True, True, False), "LT": VR(False, True, False, False), "OB": _LONG_BINARY,
    "OD": _LONG_BINARY, "OF": _LONG_BINARY, "OL": _LONG_BINARY, "OV": _LONG_BINARY, "OW": _LONG_BINARY,
    "PN": VR(False, True, True, False), "SH": VR(False, True, True, False), "SL": _BINARY, "SQ": _LONG_BINARY,
    "SS": _BINARY, "ST": VR(False, True, False, False), "SV": _LONG_BINARY, "TM": VR(False, True, True, True),
    "UC": VR(True, True, True, False), "UI": VR(False, True, True, True), "UL": _BINARY, "UN": _LONG_BINARY,
    "UR": VR(True, True, False, False), "US": _BINARY, "UT": VR(True, True, False, False), "UV": _LONG_BINARY,
}


def test_derived_table_has_every_vr_and_no_other():
    assert sorted(vr.TABLE) == sorted(HAND_KEPT)
    assert all(type(name) is str for name in vr.TABLE)  # plain strings, not pydicom's VR enum members


@pytest.mark.parametrize("name", sorted(HAND_KEPT))
def test_derived_row_equals_the_hand_kept_row(name):
    assert vr.TABLE[name] == HAND_KEPT[name]


def test_sets_drawn_from_the_table():
    assert vr.LONG_LENGTH_VR_BYTES == {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                                       b"UR", b"UT", b"UV"}
    assert vr.LONG_LENGTH_VR_BYTES | vr.SHORT_LENGTH_VR_BYTES == {n.encode() for n in HAND_KEPT}
    assert vr.FREE_TEXT_VRS == {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"}
    assert vr.SHORT_MULTI_VALUED_TEXT_VRS == {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "PN", "SH", "TM",
                                              "UI"}
    assert vr.padding("UI") == b"\0" and vr.padding("PN") == b" " and vr.padding("OB") == b"\0"
