"""A structural check of a received dataset's encoding, before anything trusts it.

pydicom reads leniently: a truncated value, a length running past the end or a tag out of order is
read as best it can. The gateway must not acknowledge such data as an image, so this walks the element
headers (never decoding values): tags ascend within each dataset, every length fits inside its parent,
explicit VRs are real VRs, and undefined-length sequences and encapsulated pixel data are properly
delimited. It costs a few microseconds per element.
"""

from __future__ import annotations

import struct

from gateway.dicom import status
from gateway.dicom.vr import LONG_LENGTH_VR_BYTES, SHORT_LENGTH_VR_BYTES
from gateway.errors import InvalidInstance

UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
MAX_DEPTH = 16
_U16_LITTLE, _U16_BIG = struct.Struct("<H").unpack_from, struct.Struct(">H").unpack_from
_U32_LITTLE, _U32_BIG = struct.Struct("<I").unpack_from, struct.Struct(">I").unpack_from
_TAG_LITTLE, _TAG_BIG = struct.Struct("<HH").unpack_from, struct.Struct(">HH").unpack_from


class _Walker:
    def __init__(self, data: memoryview, implicit: bool, little: bool, wanted: frozenset[int] = frozenset()) -> None:
        self.data = data
        self.implicit = implicit
        self._unpack_u16 = _U16_LITTLE if little else _U16_BIG
        self._unpack_u32 = _U32_LITTLE if little else _U32_BIG
        self._unpack_tag = _TAG_LITTLE if little else _TAG_BIG
        self.wanted = wanted
        self.found: dict[int, bytes] = {}
        self.spans: list[tuple[int, int, int]] = []  # top-level elements: (tag, start, end)
        self._value: tuple[int, int] = (0, 0)  # offset and length of the last defined-length value

    def fail(self, detail: str) -> InvalidInstance:
        return InvalidInstance("malformed_dataset", status.CANNOT_UNDERSTAND, detail)

    def _u16(self, pos: int) -> int:
        return self._unpack_u16(self.data, pos)[0]

    def _u32(self, pos: int) -> int:
        return self._unpack_u32(self.data, pos)[0]

    def tag_at(self, pos: int, end: int) -> int:
        if pos + 8 > end:
            raise self.fail("truncated element header")
        group, element = self._unpack_tag(self.data, pos)
        return (group << 16) | element

    def dataset(self, pos: int, end: int, depth: int, until_item_end: bool = False) -> int:
        """Walk elements from ``pos``; return where the dataset ends."""
        if depth > MAX_DEPTH:
            raise self.fail("sequences nested too deeply")
        last_tag = -1
        while pos < end:
            tag = self.tag_at(pos, end)
            if tag == ITEM_END:
                if not until_item_end:
                    raise self.fail("item delimiter outside an item")
                return pos + 8
            if tag <= last_tag:
                raise self.fail("tags out of order")
            last_tag = tag
            start = pos
            pos = self.element(pos, end, tag, depth)
            if depth == 0:
                self.spans.append((tag, start, pos))
                if tag in self.wanted:
                    value_start, length = self._value
                    self.found[tag] = bytes(self.data[value_start:value_start + length])
        if until_item_end:
            raise self.fail("undefined-length item without a delimiter")
        return pos

    def element(self, pos: int, end: int, tag: int, depth: int) -> int:
        vr: bytes | None = None
        if self.implicit or tag >> 16 == 0xFFFE:
            length, pos = self._u32(pos + 4), pos + 8
        else:
            vr = bytes(self.data[pos + 4:pos + 6])
            if vr in LONG_LENGTH_VR_BYTES:
                if pos + 12 > end:
                    raise self.fail("truncated element header")
                length, pos = self._u32(pos + 8), pos + 12
            elif vr in SHORT_LENGTH_VR_BYTES:
                length, pos = self._u16(pos + 6), pos + 8
            else:
                raise self.fail("invalid VR")
        if length == UNDEFINED:
            self._value = (pos, 0)
            if tag == 0x7FE00010:
                return self.items(pos, end, depth, encapsulated=True)
            if vr in (None, b"SQ", b"UN"):
                return self.items(pos, end, depth, encapsulated=False)
            raise self.fail("undefined length on a value that cannot have one")
        if pos + length > end:
            raise self.fail("value length runs past the end")
        self._value = (pos, length)
        if vr == b"SQ" and length:
            self.items(pos, pos + length, depth, encapsulated=False, defined_end=True)
        return pos + length

    def items(self, pos: int, end: int, depth: int, *, encapsulated: bool, defined_end: bool = False) -> int:
        """Walk sequence items (or encapsulated fragments) until the sequence delimiter or ``end``."""
        while pos < end:
            tag = self.tag_at(pos, end)
            length = self._u32(pos + 4)
            pos += 8
            if tag == SEQUENCE_END:
                return pos
            if tag != ITEM:
                raise self.fail("expected a sequence item")
            if length == UNDEFINED:
                if encapsulated:
                    raise self.fail("undefined-length pixel data fragment")
                pos = self.dataset(pos, end, depth + 1, until_item_end=True)
                continue
            if pos + length > end:
                raise self.fail("item length runs past the end")
            if not encapsulated:
                self.dataset(pos, pos + length, depth + 1)
            pos += length
        if defined_end:
            return pos
        raise self.fail("undefined-length sequence without a delimiter")


DEFLATED = "1.2.840.10008.1.2.1.99"


def top_level_elements(dataset: bytes | memoryview, transfer_syntax: str,
                       wanted: frozenset[int] = frozenset()) -> tuple[list[tuple[int, int, int]], dict[int, bytes]]:
    """Check the structure (as ``check_well_formed`` does) and return every top-level element as
    ``(tag, start, end)`` offsets into ``dataset``, and the raw values of those in ``wanted``.

    Raises:
        InvalidInstance: malformed, or deflated (not walked here).
    """
    walker = _walk(dataset, transfer_syntax, wanted)
    if walker is None:
        raise InvalidInstance("malformed_dataset", status.CANNOT_UNDERSTAND, "deflated: not walked")
    return walker.spans, walker.found


def check_well_formed(dataset: bytes | memoryview, transfer_syntax: str,
                      wanted: frozenset[int] = frozenset()) -> dict[int, bytes] | None:
    """Raise ``InvalidInstance`` (malformed_dataset, 0xC000) unless the encoding is structurally sound.

    Returns the raw values of the top-level elements in ``wanted`` (tags as ``0xGGGGEEEE``) met on the way,
    or None for a deflated dataset, which is not walked here (the header parse inflates and reads it).
    """
    walker = _walk(dataset, transfer_syntax, wanted)
    return None if walker is None else walker.found


def _walk(dataset: bytes | memoryview, transfer_syntax: str, wanted: frozenset[int]) -> _Walker | None:
    if transfer_syntax == DEFLATED:
        return None
    walker = _Walker(memoryview(dataset), implicit=transfer_syntax == "1.2.840.10008.1.2",
                     little=transfer_syntax != "1.2.840.10008.1.2.2", wanted=wanted)
    if len(walker.data) == 0:
        raise walker.fail("empty dataset")
    try:
        walker.dataset(0, len(walker.data), depth=0)
    except struct.error:
        raise walker.fail("truncated element header") from None
    return walker
