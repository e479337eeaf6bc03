"""Setting Reason for the Requested Procedure in a file's bytes gives what pydicom's re-encoding gives."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from gateway.dicom.rawedit import file_meta_end_and_syntax, set_text_element
from gateway.dicom.wellformed import top_level_elements
from gateway.routing.send import REASON_FOR_THE_REQUESTED_PROCEDURE, with_reason

FILES = ["CT_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_jp2klossless.dcm",
         "SC_rgb_rle.dcm", "JPEG2000.dcm"]


def _by_pydicom(path: Path, reason: str) -> pydicom.Dataset:
    dataset = pydicom.dcmread(path)
    dataset.ReasonForTheRequestedProcedure = reason
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def _same(left: pydicom.Dataset, right: pydicom.Dataset) -> None:
    assert left.file_meta.TransferSyntaxUID == right.file_meta.TransferSyntaxUID
    assert [e.tag for e in left] == [e.tag for e in right]
    for element in left:
        assert element.value == right[element.tag].value, element.tag


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("reason", ["L4-L5 disc herniation?", "URGENT: cauda equina syndrome suspected"])
def test_the_reason_set_in_place_reads_back_as_pydicom_would_write_it(tmp_path, name, reason):
    path = tmp_path / name
    shutil.copy(get_testdata_file(name), path)
    in_place = with_reason(path.read_bytes(), reason)
    assert in_place is not None
    _same(pydicom.dcmread(io.BytesIO(in_place)), _by_pydicom(path, reason))
    original = path.read_bytes()
    assert in_place.endswith(original[-256:]), "the pixel data is left as it was"


@pytest.mark.parametrize("name", FILES[:3])
def test_an_existing_reason_is_replaced_not_repeated(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(with_reason(Path(get_testdata_file(name)).read_bytes(), "First reason, odd"))
    again = set_text_element(path.read_bytes(), REASON_FOR_THE_REQUESTED_PROCEDURE, "LO", "Second")
    dataset = pydicom.dcmread(io.BytesIO(again))
    assert dataset.ReasonForTheRequestedProcedure == "Second"
    meta_end, syntax = file_meta_end_and_syntax(again)
    elements, _ = top_level_elements(again[meta_end:], syntax)
    assert [tag for tag, _, _ in elements].count(REASON_FOR_THE_REQUESTED_PROCEDURE) == 1


def test_text_beyond_ascii_is_left_to_pydicom_unless_the_file_is_utf8(tmp_path):
    path = tmp_path / "ct.dcm"
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    dataset.SpecificCharacterSet = "ISO_IR 100"
    dataset.save_as(path)
    assert set_text_element(path.read_bytes(), REASON_FOR_THE_REQUESTED_PROCEDURE, "LO", "Névralgie") is None
    assert pydicom.dcmread(io.BytesIO(with_reason(path.read_bytes(), "Névralgie"))).ReasonForTheRequestedProcedure \
        == "Nevralgie"  # pydicom's path, accents folded as before
    dataset.SpecificCharacterSet = "ISO_IR 192"
    dataset.save_as(path)
    in_place = set_text_element(path.read_bytes(), REASON_FOR_THE_REQUESTED_PROCEDURE, "LO", "Névralgie")
    assert pydicom.dcmread(io.BytesIO(in_place)).ReasonForTheRequestedProcedure == "Névralgie"


def test_a_file_that_cannot_be_walked_is_left_to_pydicom(tmp_path):
    original = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    assert set_text_element(original[:-100], REASON_FOR_THE_REQUESTED_PROCEDURE, "LO", "x") is None
    assert set_text_element(b"not dicom", REASON_FOR_THE_REQUESTED_PROCEDURE, "LO", "x") is None
