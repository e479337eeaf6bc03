"""Value-level operations: dummy values by VR, date shifting and descriptor cleaning."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

_MAX_LENGTH = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "PN": 64, "ST": 1024, "LT": 10240, "UC": 10240}
_TEXT_DUMMY = "ANONYMIZED"
_DUMMY_BY_VR: dict[str, Any] = {
    "PN": "ANONYMOUS",
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000Y",
    "IS": "0",
    "DS": "0",
    "US": 0,
    "SS": 0,
    "UL": 0,
    "SL": 0,
    "UV": 0,
    "SV": 0,
    "FL": 0.0,
    "FD": 0.0,
    "AT": 0,
    "OB": b"\x00\x00",
    "OW": b"\x00\x00",
    "OD": b"\x00" * 8,
    "OF": b"\x00" * 4,
    "OL": b"\x00" * 4,
    "OV": b"\x00" * 8,
    "UN": b"\x00\x00",
}


def dummy_value(vr: str) -> Any:
    """A non-empty placeholder valid for ``vr``. UI and SQ are handled by the engine."""
    if vr == "SQ":
        return Sequence([Dataset()])
    if vr in _DUMMY_BY_VR:
        return _DUMMY_BY_VR[vr]
    return _TEXT_DUMMY[: _MAX_LENGTH.get(vr, len(_TEXT_DUMMY))]


def _shift_one_date(text: str, days: int) -> str | None:
    digits = text.strip().replace(".", "")  # also accept the retired YYYY.MM.DD form
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        shifted = dt.datetime.strptime(digits, "%Y%m%d").date() + dt.timedelta(days=days)
    except ValueError:
        return None
    return shifted.strftime("%Y%m%d") if shifted.year >= 1 else None


def shift_date(value: str, days: int) -> str | None:
    """Shift a DA value (possibly multi-valued); None when any part cannot be read."""
    parts = [_shift_one_date(part, days) for part in value.split("\\")]
    return None if any(part is None for part in parts) else "\\".join(parts)  # type: ignore[arg-type]


def shift_datetime(value: str, days: int) -> str | None:
    """Shift the date part of a DT value, keeping time and offset; None when the date is partial."""
    shifted: list[str] = []
    for part in value.split("\\"):
        part = part.strip()
        new_date = _shift_one_date(part[:8], days)
        if new_date is None:
            return None
        shifted.append(new_date + part[8:])
    return "\\".join(shifted)


SAFE_DESCRIPTOR_WORDS = frozenset(
    """
    SAG SAGITTAL AX AXIAL AXL TRA TRANS TRANSVERSE COR CORONAL OBL OBLIQUE T1 T2 T1W T2W T2* PD PDW STIR
    FLAIR TIRM DIXON WATER FAT IN OPP OUT PHASE W F DWI DTI ADC TRACE SWI GRE FFE TFE SE TSE FSE SSFSE
    HASTE SPACE CUBE VISTA MPR MPRAGE VIBE 3D 2D FS FATSAT SPIR SPAIR SPECTRAL C+ GD GAD CONTRAST PRE
    POST DYN DYNAMIC DELAYED MYELO MYELOGRAPHY MIP MINIP VR SCOUT LOC LOCALIZER LOCALISER SURVEY TRUFI
    CALIBRATION CAL REF HIGH LOW RES HR THIN THICK MM CM SLAB MULTI SINGLE PLANE RECON REFORMAT
    ROUTINE STANDARD BONE SOFT TISSUE LUNG WINDOW KERNEL SHARP SMOOTH HELICAL SPIRAL AXIAL DOSE
    CT MR MRI XR DX CR X-RAY RADIOGRAPH AP PA LAT LATERAL LEFT RIGHT LT RT L R BILAT BILATERAL
    FLEX FLEXION EXT EXTENSION NEUTRAL STANDING SUPINE PRONE UPRIGHT WEIGHT-BEARING
    SPINE L-SPINE C-SPINE T-SPINE LS-SPINE WHOLE-SPINE SPINAL CORD CERVICAL THORACIC LUMBAR LUMBOSACRAL
    SACRAL SACRUM COCCYX PELVIS SI SIJ HIP HEAD NECK BRAIN ABDOMEN CHEST THORAX DISC DISCS FORAMINA
    FACET FACETS NERVE ROOT ROOTS C1 C2 C3 C4 C5 C6 C7 T3 T4 T5 T6 T7 T8 T9 T10 T11 T12 L1 L2 L3 L4 L5
    S1 S2 W O WO WITH WITHOUT AND OR OF THE TO FOR ON IV ORAL SERIES SEQ SEQUENCE IMAGE IMAGES
    VIEW VIEWS PROTOCOL EXAM STUDY ORIGINAL PRIMARY SECONDARY DERIVED NONE MOCO NORM FIL ND DIS2D DIS3D
    """.split()
)
_SHORT_MEASUREMENT = re.compile(r"^\d{1,3}(\.\d{1,2})?(MM|CM|MS|S|D|T|X)?$")
_SPLIT = re.compile(r"[\s_,;:/()\[\]+=|]+")
_LONG_DIGIT_RUN = re.compile(r"\d{4,}")


def is_safe_descriptor(text: str, extra_words: frozenset[str] = frozenset()) -> bool:
    """True when every word of ``text`` is a known safe clinical word or a short measurement.

    Any run of four or more digits (a date, a year, an ID) makes the text unsafe.
    """
    upper = text.upper()
    if _LONG_DIGIT_RUN.search(upper):
        return False
    return all(_is_safe_word(word, extra_words) for word in _SPLIT.split(upper) if word)


def _is_safe_word(word: str, extra_words: frozenset[str]) -> bool:
    if word in SAFE_DESCRIPTOR_WORDS or word in extra_words or _SHORT_MEASUREMENT.match(word):
        return True
    parts = [part for part in word.split("-") if part]
    return len(parts) > 1 and all(_is_safe_word(part, extra_words) for part in parts)
