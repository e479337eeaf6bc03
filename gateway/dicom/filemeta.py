"""The Part 10 file preamble and File Meta Information for a received dataset, encoded directly.

The C-STORE handler needs these ~200 bytes in front of every received dataset. pydicom's
``write_file_meta_info`` on pynetdicom's ``event.file_meta`` builds two Datasets to produce them, a
quarter of a millisecond per instance; the group is fixed in shape (PS3.10 7.1: Explicit VR Little
Endian, these elements in this order), so it is written here. ``tests/scp/test_scp_fastpath.py`` checks
the bytes are the same as pydicom's.
"""

from __future__ import annotations

import struct

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

PREAMBLE = b"\x00" * 128 + b"DICM"


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _ui(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _sh(text: str) -> bytes:
    raw = text.encode("ascii")
    return raw + b" " if len(raw) % 2 else raw


_VERSION = struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01"
_IMPLEMENTATION = (_element(0x0012, b"UI", _ui(str(PYNETDICOM_IMPLEMENTATION_UID)))
                   + _element(0x0013, b"SH", _sh(PYNETDICOM_IMPLEMENTATION_VERSION)))


def part10_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """Preamble, "DICM" and the file meta group (0002,0000-0013) for a dataset received by C-STORE.

    Raises:
        UnicodeEncodeError: a UID that is not ASCII (the caller refuses the instance).
    """
    group = (_VERSION
             + _element(0x0002, b"UI", _ui(sop_class_uid))
             + _element(0x0003, b"UI", _ui(sop_instance_uid))
             + _element(0x0010, b"UI", _ui(transfer_syntax_uid))
             + _IMPLEMENTATION)
    length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(group))
    return PREAMBLE + length + group
