"""Table loading, option resolution, value operations and burned-in risk detection."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from pydicom import dcmread
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
)

from gateway.deid import (
    BlankRegion,
    BurnedInRiskError,
    Deidentifier,
    DeidOptions,
    PatientContext,
    PrivateTagRule,
    UnsupportedObjectError,
)
from gateway.deid.actions import Action, compile_actions, resolve_combined
from gateway.deid.table import TagPattern, load_table
from gateway.deid.values import dummy_value, is_safe_descriptor, shift_date, shift_datetime

SECRET = b"units-secret-0123456789abcdef0123"


def test_table_has_every_row_and_the_four_patterns() -> None:
    rows = load_table()
    assert len(rows) == 657
    assert {row.pattern for row in rows if row.pattern} == set(TagPattern)
    assert load_table() is rows  # parsed once


def test_pattern_matching() -> None:
    assert TagPattern.CURVE_DATA.matches(0x50223000)
    assert TagPattern.OVERLAY_DATA.matches(0x60023000) and not TagPattern.OVERLAY_DATA.matches(0x60024000)
    assert TagPattern.PRIVATE.matches(0x00091001) and not TagPattern.PRIVATE.matches(0x00080018)


@pytest.mark.parametrize(
    ("keyword_tag", "code", "expected"),
    [
        (0x00080023, "Z/D", Action.DUMMY),  # Content Date: Type 1 in enhanced images
        (0x00180010, "Z/D", Action.ZERO),  # Contrast/Bolus Agent: Type 2
        (0x00080080, "X/Z/D", Action.REMOVE),  # Institution Name: Type 3
        (0x00081140, "X/Z/U*", Action.UID),
        (0x00100010, "Z", Action.ZERO),
    ],
)
def test_combined_codes(keyword_tag: int, code: str, expected: Action) -> None:
    assert resolve_combined(keyword_tag, code) is expected


def test_options_override_the_basic_action() -> None:
    institution = 0x00080080
    assert compile_actions(DeidOptions()).by_tag[institution].action is Action.REMOVE
    assert compile_actions(DeidOptions(retain_institution_id=True)).by_tag[institution].action is Action.KEEP
    study_date = 0x00080020
    assert compile_actions(DeidOptions()).by_tag[study_date].action is Action.SHIFT_DATE
    without = compile_actions(DeidOptions(retain_longitudinal_modified_dates=False))
    assert without.by_tag[study_date].action is Action.ZERO


@pytest.mark.parametrize(
    "text", ["SAG T2 TSE", "AX T1 FS", "L-SPINE STIR", "COR FLAIR 3MM", "t2_tse_sag", "MR LUMBAR SPINE W/O", ""]
)
def test_safe_descriptors(text: str) -> None:
    assert is_safe_descriptor(text)


@pytest.mark.parametrize(
    "text", ["SAG T2 SMITH", "AX T1 20240102", "ID 123456", "Dr Who spine", "LUMBAR 1961", "T2 JOHN-DOE"]
)
def test_unsafe_descriptors(text: str) -> None:
    assert not is_safe_descriptor(text)


@given(prefix=st.sampled_from(["SAG", "AX T2", ""]), digits=st.from_regex(r"[0-9]{4,12}", fullmatch=True))
def test_any_long_digit_run_makes_a_descriptor_unsafe(prefix: str, digits: str) -> None:
    assert not is_safe_descriptor(f"{prefix} {digits}")
    assert not is_safe_descriptor(f"{prefix}{digits}")


@given(st.text(max_size=40))
def test_a_name_makes_any_descriptor_unsafe(text: str) -> None:
    # Whatever the text (the check must not crash on it), a surname among its words makes it unsafe.
    assert not is_safe_descriptor(f"{text} SMITH")
    assert not is_safe_descriptor(f"SMITH {text}")


@given(day=st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2100, 1, 1)), days=st.integers(-3650, -365))
def test_date_shift_round_trips(day: dt.date, days: int) -> None:
    text = day.strftime("%Y%m%d")
    shifted = shift_date(text, days)
    assert shifted is not None and shift_date(shifted, -days) == text
    assert shift_datetime(text + "235959", days) == shifted + "235959"


def test_extra_descriptor_words() -> None:
    assert is_safe_descriptor("SAG BLADE", frozenset({"BLADE"}))


def test_date_shifts() -> None:
    assert shift_date("20240301", -1) == "20240229"
    assert shift_date("20240301\\20240302", -366) == "20230301\\20230302"
    assert shift_date("2024.03.01", -1) == "20240229"
    assert shift_date("2024", -1) is None and shift_date("20241301", -1) is None
    assert shift_datetime("20240301120000.5+0100", -1) == "20240229120000.5+0100"
    assert shift_datetime("202403", -1) is None


@pytest.mark.parametrize(("vr", "limit"), [("SH", 16), ("AE", 16), ("CS", 16), ("LO", 64), ("PN", 64)])
def test_dummy_values_fit_the_vr(vr: str, limit: int) -> None:
    assert 0 < len(dummy_value(vr)) <= limit


@given(st.integers(min_value=-100000, max_value=-1), st.integers(min_value=0, max_value=5000))
def test_date_offset_range_is_validated(low: int, span: int) -> None:
    options = DeidOptions(min_date_offset_days=low, max_date_offset_days=min(low + span, -1))
    assert options.max_date_offset_days < 0


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValidationError):
        DeidOptions(min_date_offset_days=-10, max_date_offset_days=10)
    with pytest.raises(ValidationError):
        DeidOptions(no_such_option=True)
    with pytest.raises(ValidationError):
        PrivateTagRule(creator="X", group=0x0010, element_offset=1)


def test_bad_context_and_secret_are_refused() -> None:
    with pytest.raises(ValueError):
        PatientContext(source=" ")
    with pytest.raises(ValueError):
        PatientContext(source="A", case_label="BAD^LABEL")
    with pytest.raises(ValueError):
        Deidentifier(None, b"short")


def _image(sop_class: str, modality: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.Modality = modality
    return ds


@pytest.mark.parametrize(
    ("sop_class", "modality", "extra"),
    [
        (SecondaryCaptureImageStorage, "OT", {}),
        (UltrasoundImageStorage, "US", {}),
        (EncapsulatedPDFStorage, "DOC", {}),
        (CTImageStorage, "CT", {"BurnedInAnnotation": "YES"}),
        (CTImageStorage, "CT", {"ImageType": ["DERIVED", "SECONDARY", "SCREEN SAVE"]}),
        (CTImageStorage, "CT", {"SeriesDescription": "Dose Report"}),
    ],
)
def test_burned_in_risk_is_refused(sop_class: str, modality: str, extra: dict) -> None:
    ds = _image(sop_class, modality)
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    with pytest.raises(BurnedInRiskError) as raised:
        Deidentifier(None, SECRET).deidentify(ds, PatientContext("SITE"))
    assert raised.value.reason
    with pytest.raises(BurnedInRiskError) as raised:  # blanking, but no rectangles for this device
        Deidentifier(DeidOptions(burned_in="blank"), SECRET).deidentify(ds, PatientContext("SITE"))
    assert "no blank_regions entry" in raised.value.reason


def _screen(syntax: str) -> Dataset:
    """A 32x32 secondary capture from an 'ACME VIEWER 3' whose top-left corner carries burned-in text."""
    ds = _image(SecondaryCaptureImageStorage, "OT")
    ds.Manufacturer, ds.ManufacturerModelName = "ACME Medical", "VIEWER 3"
    ds.BurnedInAnnotation = "YES"
    ds.Rows = ds.Columns = 32
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.full((32, 32), 700, dtype="<u2").tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if syntax != ExplicitVRLittleEndian:
        ds.compress(syntax)
    return ds


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless])
def test_burned_in_text_is_blanked_in_the_configured_rectangles(syntax: str) -> None:
    region = BlankRegion(manufacturer="acme", model="viewer", rows=32, columns=32, rectangles=((0, 0, 16, 8),))
    options = DeidOptions(burned_in="blank", blank_regions=(region,))
    out = Deidentifier(options, SECRET).deidentify(_screen(syntax), PatientContext("SITE")).dataset
    pixels = out.pixel_array
    assert (pixels[0:8, 0:16] == 0).all()
    assert (pixels[8:, :] == 700).all() and (pixels[:8, 16:] == 700).all()
    assert out.BurnedInAnnotation == "NO"
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert "113101" in [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    other_size = BlankRegion(manufacturer="acme", rows=64, columns=64, rectangles=((0, 0, 16, 8),))
    with pytest.raises(BurnedInRiskError):
        Deidentifier(DeidOptions(burned_in="blank", blank_regions=(other_size,)), SECRET).deidentify(
            _screen(syntax), PatientContext("SITE"))


def test_blank_region_rectangles_must_fit_the_image() -> None:
    with pytest.raises(ValueError, match="not inside"):
        BlankRegion(rows=32, columns=32, rectangles=((0, 0, 40, 8),))


def test_unsupported_objects() -> None:
    with pytest.raises(UnsupportedObjectError):
        Deidentifier(None, SECRET).deidentify(Dataset(), PatientContext("SITE"))
    dicomdir = dcmread(next(p for p in get_testdata_files() if Path(p).name == "DICOMDIR"))
    with pytest.raises(UnsupportedObjectError):
        Deidentifier(None, SECRET).deidentify(dicomdir, PatientContext("SITE"))


def test_unknown_public_tag_is_removed_and_unlisted_uids_are_pseudonymised() -> None:
    ds = _image(CTImageStorage, "CT")
    ds.add_new(0x00231234 - 0x00010000, "LO", "who knows")  # (0022,1234): not in the dictionary
    ds.ReferencedSOPClassUID = CTImageStorage
    ds.TransactionUID = "1.2.826.0.1.3680043.8.498.77"  # (0008,1195) is not in Table E.1-1
    out = Deidentifier(None, SECRET).deidentify(ds, PatientContext("SITE")).dataset
    assert 0x00221234 not in out
    assert out.ReferencedSOPClassUID == CTImageStorage
    assert out.TransactionUID.startswith("2.25.")
    assert out.SOPInstanceUID.startswith("2.25.")
