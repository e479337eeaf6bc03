"""A large original de-identified with its pixel data left in the file (``gateway.dicom.bulk``): the same bytes
as the in-memory path, written without the pixel data being read."""

from __future__ import annotations

import hashlib
import io
import tracemalloc
from pathlib import Path

import pydicom
import pytest

from gateway.deid import work
from gateway.deid.options import DeidOptions
from gateway.deid.work import HashingWriter
from gateway.demo import write_demo_study
from gateway.dicom.bulk import FileWindow, detach_pixel_data

pytestmark = pytest.mark.slow  # a 20 MB original de-identified four times: about 15 s


@pytest.fixture(scope="module")
def large_mr(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("large")
    template = pydicom.dcmread(write_demo_study(folder / "demo", 1, seed=11)[0])
    frame = bytes(template.PixelData)
    frames = (work.LARGE_OBJECT_BYTES + 4_000_000) // len(frame)
    template.NumberOfFrames = frames
    template.PixelData = frame * frames
    path = folder / "large.dcm"
    template.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module", autouse=True)
def worker():
    work.init_worker(DeidOptions().model_dump_json(), b"s" * 32)


def test_a_large_original_comes_out_byte_for_byte_as_in_memory_without_its_pixels_read(large_mr, tmp_path):
    in_memory = work.deidentify_file(str(large_mr), "HOSP", "C0001")
    tracemalloc.start()
    try:
        streamed = work.deidentify_file(str(large_mr), "HOSP", "C0001", str(tmp_path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    written = Path(streamed.data_path).read_bytes()
    assert written == in_memory.data
    assert streamed.size == len(written) and streamed.sha256 == hashlib.sha256(written).hexdigest()
    assert streamed.text_values == in_memory.text_values and streamed.mapping == in_memory.mapping
    size = large_mr.stat().st_size
    assert peak < size // 8, f"the worker held {peak >> 20} MB of a {size >> 20} MB original"


def test_an_original_whose_pixels_are_checked_is_read_whole_and_comes_out_alike(large_mr, tmp_path):
    """Ultrasound (burned-in text likely: its pixels are read by the OCR pass) is never left in its file: the
    pixels are read and the result is the in-memory path's, byte for byte."""
    dataset = pydicom.dcmread(large_mr)
    dataset.Modality = "US"
    path = tmp_path / "us.dcm"
    dataset.save_as(path, enforce_file_format=True)
    deferred = pydicom.dcmread(path, defer_size=1 << 20)
    assert not work._deidentifier.leaves_pixels(deferred)
    streamed = work.deidentify_file(str(path), "HOSP", "C0002", str(tmp_path))
    in_memory = work.deidentify_file(str(path), "HOSP", "C0002")
    assert [event["event"] for event in in_memory.events] == ["burned_in_text"]
    assert streamed.events == in_memory.events and streamed.quarantine_reason == in_memory.quarantine_reason
    assert Path(streamed.data_path).read_bytes() == in_memory.data


def test_detach_takes_only_a_deferred_native_last_element(large_mr, tmp_path):
    assert detach_pixel_data(pydicom.dcmread(large_mr), str(large_mr)) is None  # read already
    deferred = pydicom.dcmread(large_mr, defer_size=1 << 20)
    detached = detach_pixel_data(deferred, str(large_mr))
    assert detached is not None and "PixelData" not in deferred and detached.vr in ("OB", "OW")
    with open(large_mr, "rb") as original:
        original.seek(detached.start)
        head = original.read(1000)
    window = FileWindow(str(large_mr), detached.start, detached.length)
    assert window.read(1000) == head and window.tell() == 1000
    assert window.seek(0, 2) == detached.length and window.read(10) == b""
    window.seek(-4, 2)
    assert len(window.read()) == 4
    window.close()
    padded = pydicom.dcmread(large_mr)
    padded.DataSetTrailingPadding = b"\0" * 4  # an element after the pixel data: not a plain window
    path = tmp_path / "padded.dcm"
    padded.save_as(path, enforce_file_format=True)
    assert detach_pixel_data(pydicom.dcmread(path, defer_size=1 << 20), str(path)) is None


def test_a_writer_that_seeks_back_says_its_digest_no_longer_covers_the_file(tmp_path):
    with open(tmp_path / "out.bin", "wb") as out:
        hashing = HashingWriter(out)
        hashing.write(b"abcd")
        hashing.seek(0, io.SEEK_END)
        assert not hashing.rewound
        hashing.seek(1)
        hashing.write(b"X")
    assert hashing.rewound
