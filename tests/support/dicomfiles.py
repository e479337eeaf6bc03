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
