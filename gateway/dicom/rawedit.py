"""Setting one top-level text element of a Part 10 file in its encoded bytes, without decoding the rest.

The delivery writes Reason for the Requested Procedure into every de-identified image of a case as it leaves
(``routing.send``). Read and re-encoded by pydicom that is a few milliseconds an image (the pixel data is copied
through); here the file's top-level elements are located by the structural walk (``wellformed``) and the one
element is inserted or replaced in place: a fraction of a millisecond, pixel bytes untouched.
"""

from __future__ import annotations

import io
import struct
import unicodedata

import pydicom

from gateway.dicom.vr import LONG_LENGTH_VR_BYTES, SHORT_MULTI_VALUED_TEXT_VRS, padding
from gateway.dicom.wellformed import DEFLATED, top_level_elements
from gateway.errors import InvalidInstance

_META_START = 132  # 128-byte preamble and "DICM"
_TRANSFER_SYNTAX = 0x00020010
_SPECIFIC_CHARACTER_SET = 0x00080005


def file_meta_end_and_syntax(part10: bytes | memoryview) -> tuple[int, str] | None:
    """Where the dataset starts in ``part10`` and its transfer syntax, or None if the file meta is not the
    standard Explicit VR Little Endian group with its group length first."""
    if len(part10) < _META_START + 12 or part10[128:_META_START] != b"DICM":
        return None
    group, element, vr, _length, group_length = struct.unpack_from("<HH2sHI", part10, _META_START)
    if (group, element, vr) != (0x0002, 0x0000, b"UL"):
        return None
    end = _META_START + 12 + group_length
    pos = _META_START + 12
    while pos + 8 <= end:
        group, element, vr = struct.unpack_from("<HH2s", part10, pos)
        if vr in LONG_LENGTH_VR_BYTES:
            length, header = struct.unpack_from("<I", part10, pos + 8)[0], 12
        else:
            length, header = struct.unpack_from("<H", part10, pos + 6)[0], 8
        if (group << 16 | element) == _TRANSFER_SYNTAX:
            value = bytes(part10[pos + header:pos + header + length])
            return end, value.decode("ascii", "replace").strip("\0 ")
        pos += header + length
    return None


def set_text_element(part10: bytes, tag: int, vr: str, text: str) -> bytes | None:
    """``part10`` with the top-level element ``tag`` (a short-length text ``vr``) set to ``text``, inserted
    in tag order or replacing the one there.

    Returns None when it cannot be done in place (deflated or unusual file meta, a malformed dataset, or
    text beyond ASCII in a file whose character set is not UTF-8): the caller then decodes and re-encodes
    the file with pydicom.
    """
    edit = text_element_edit(part10, tag, vr, text)
    if edit is None:
        return None
    start, end, encoded = edit
    return bytes(part10[:start]) + encoded + bytes(part10[end:])


def text_element_edit(part10: bytes | memoryview, tag: int, vr: str, text: str) -> tuple[int, int, bytes] | None:
    """The edit that sets the top-level element ``tag`` of ``part10`` to ``text`` (see ``set_text_element``),
    as ``(start, end, encoded)``: ``part10[start:end]`` (empty for an insertion) becomes ``encoded``. For a
    caller that writes the pieces out without joining them. None when it cannot be done in place.
    """
    if vr not in SHORT_MULTI_VALUED_TEXT_VRS:
        raise ValueError(f"{vr} values are not handled here")
    located = file_meta_end_and_syntax(part10)
    if located is None or located[1] == DEFLATED:
        return None
    meta_end, syntax = located
    try:
        elements, found = top_level_elements(memoryview(part10)[meta_end:], syntax,
                                             frozenset({_SPECIFIC_CHARACTER_SET}))
    except InvalidInstance:
        return None
    charsets = found.get(_SPECIFIC_CHARACTER_SET, b"").decode("ascii", "replace").split("\\")
    if text.isascii():
        value = text.encode("ascii")
    elif "ISO_IR 192" in (c.strip() for c in charsets):
        value = text.encode("utf-8")
    else:
        return None
    if len(value) > 0xFFFE:
        raise ValueError(f"{len(value)} bytes do not fit a short-length {vr} value")
    padded = value + padding(vr) if len(value) % 2 else value
    encoded = _element_bytes(tag, vr, padded, syntax)
    start = end = len(part10) - meta_end
    for element_tag, element_start, element_end in elements:
        if element_tag >= tag:
            start, end = element_start, element_end if element_tag == tag else element_start
            break
    return meta_end + start, meta_end + end, encoded


def with_text_element(part10: bytes, tag: int, vr: str, text: str) -> bytes:
    """``part10`` with the top-level element ``tag`` set to ``text``: in the encoded bytes where it can be
    (``set_text_element``), else by decoding and re-encoding the object with pydicom, the text folded to ASCII
    (accents dropped) unless the object's character set is UTF-8.

    Raises:
        pydicom.errors.InvalidDicomError, ValueError: ``part10`` cannot be decoded either.
    """
    in_place = set_text_element(part10, tag, vr, text)
    if in_place is not None:
        return in_place
    dataset = pydicom.dcmread(io.BytesIO(part10))
    dataset.add_new(tag, vr, fits_charset(text, dataset.get("SpecificCharacterSet")))
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def fits_charset(text: str, specific_character_set: object) -> str:
    """``text`` as a dataset with this Specific Character Set can hold it (accents folded away unless it is
    UTF-8, ISO_IR 192)."""
    charsets = specific_character_set or ""
    charsets = [charsets] if isinstance(charsets, str) else list(charsets)  # type: ignore[call-overload]
    if "ISO_IR 192" in charsets or text.isascii():
        return text
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def _element_bytes(tag: int, vr: str, value: bytes, syntax: str) -> bytes:
    group, element = tag >> 16, tag & 0xFFFF
    if syntax == "1.2.840.10008.1.2":  # Implicit VR Little Endian
        return struct.pack("<HHI", group, element, len(value)) + value
    endian = ">" if syntax == "1.2.840.10008.1.2.2" else "<"
    return struct.pack(endian + "HH2sH", group, element, vr.encode("ascii"), len(value)) + value
