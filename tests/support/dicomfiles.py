"""Reading Part 10 files the way the tests need: the dataset bytes exactly as stored, and spool look-ups."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pydicom


def dataset_bytes(path: Path) -> bytes:
    """The bytes after the File Meta Information: what a C-STORE carries, unchanged."""
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    offset = 128 + 4 + 12 + int(meta.FileMetaInformationGroupLength)
    return Path(path).read_bytes()[offset:]


def sop_instance_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def spool_files(spool_dir: Path) -> list[Path]:
    return sorted((Path(spool_dir) / "objects").rglob("*.dcm"))


def spool_index(spool_dir: Path) -> dict[str, bytes]:
    """SOP Instance UID → dataset bytes of every object in the spool, checking each file's name is its digest."""
    index = {}
    for path in spool_files(spool_dir):
        data = dataset_bytes(path)
        assert hashlib.sha256(data).hexdigest() == path.stem, f"{path.name}: content does not match its digest"
        index[sop_instance_uid(path)] = data
    return index


#: pydicom's bundled files whose pixels take seconds to decode and OCR (colour, large or many frames: 3-30 s each
#: on 2 cores): their cases are in the slow tier.
SLOW_PYDICOM_FILES = frozenset({"examples_ybr_color.dcm", "examples_jpeg2k.dcm", "examples_rgb_color.dcm"})


def pydicom_file_param(path: Path | str) -> object:
    """``path`` as a pytest parameter named by its file name, marked slow when it is one of ``SLOW_PYDICOM_FILES``."""
    import pytest

    name = Path(path).name
    return pytest.param(path, id=name, marks=[pytest.mark.slow] if name in SLOW_PYDICOM_FILES else [])
