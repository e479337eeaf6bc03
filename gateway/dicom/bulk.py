"""Pixel data left in its file: a large original is de-identified without its pixel data ever being read.

A 400 MB multi-frame MR read whole costs its worker 400 MB. When de-identification leaves the pixels as they
are (no burned-in text to clean for the object), the header is read with the pixel data deferred
(``pydicom.dcmread(defer_size=...)``), the deferred element is taken out before the header is touched
(``detach_pixel_data``) and put back afterwards as a window on the original file (``FileWindow``), which
pydicom writes to the output in chunks (a buffered element value, pydicom 3).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset

PIXEL_DATA = 0x7FE00010
UNDEFINED_LENGTH = 0xFFFFFFFF


class FileWindow(io.BufferedIOBase):
    """The bytes ``[start, start + length)`` of a file, read-only and seekable, as one buffered stream."""

    def __init__(self, path: str, start: int, length: int) -> None:
        super().__init__()
        self._file = open(path, "rb")  # noqa: SIM115 - closed with the window
        self._start, self._length, self._position = start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._length}[whence]
        self._position = max(0, min(self._length, base + offset))
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        remaining = self._length - self._position
        size = remaining if size is None or size < 0 else min(size, remaining)
        if size <= 0:
            return b""
        self._file.seek(self._start + self._position)
        data = self._file.read(size)
        self._position += len(data)
        return data

    def read1(self, size: int = -1) -> bytes:
        return self.read(size)

    def close(self) -> None:
        self._file.close()
        super().close()


@dataclass(frozen=True)
class DetachedPixelData:
    """Where a deferred Pixel Data value lies in its file, and its VR."""

    path: str
    start: int
    length: int
    vr: str

    def window(self) -> DataElement:
        return DataElement(PIXEL_DATA, self.vr, FileWindow(self.path, self.start, self.length))


def detach_pixel_data(dataset: Dataset, path: str) -> DetachedPixelData | None:
    """Take a deferred, native (defined-length, little endian) Pixel Data element out of ``dataset`` read from
    ``path`` with ``defer_size``, unread; None (``dataset`` unchanged) for anything else: pixel data read
    already, encapsulated, big endian, or followed by other elements (trailing padding)."""
    raw = dataset.get_item(PIXEL_DATA, keep_deferred=True)
    if not isinstance(raw, RawDataElement) or raw.value is not None or raw.length == UNDEFINED_LENGTH:
        return None
    if not raw.is_little_endian or max(dataset.keys()) != PIXEL_DATA:
        return None
    vr = raw.VR or ("OW" if int(dataset.get("BitsAllocated", 16) or 16) > 8 else "OB")
    del dataset[PIXEL_DATA]
    return DetachedPixelData(path, raw.value_tell, raw.length, str(vr))
