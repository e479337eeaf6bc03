"""WADO-RS (PS3.18 §10.4): instances, metadata, frames and rendered images of the caller's cases.

* Instances (study, series or one): ``multipart/related; type="application/dicom"``, each part one Part 10 object
  in its stored transfer syntax, exactly the bytes a C-STORE reviewer receives (:mod:`gateway.dicomweb.objects`).
  An ``Accept`` that names only other transfer syntaxes answers 406 (the node does not transcode).
* Metadata: ``application/dicom+json``; bulk data (binary values of more than ``BULK_THRESHOLD`` bytes, the pixel
  data always) is left out: a viewer reads pixels through the frames resource.
* Frames: ``multipart/related; type="application/octet-stream"``, one part per frame asked, uncompressed (a
  compressed image is decoded).
* Rendered (an instance's first frame, or one frame): ``image/jpeg`` (default) or ``image/png``, in the window of
  the ``window=center,width[,function]`` parameter, else the data set's first Window Center/Width, else the frame's
  range; MONOCHROME1 inverted; ``quality`` (1-100) for JPEG.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from gateway.dicom import render
from gateway.dicomweb.objects import CaseObjects, Served

BULK_THRESHOLD = 1024
BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
RENDERED_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG"}


class NotAcceptable(ValueError):
    """The Accept header allows nothing the node can send (406)."""


class BadFrames(ValueError):
    """A frame list that is not 1-based numbers within the instance (400 when malformed, 404 when out of range)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def boundary() -> str:
    return secrets.token_hex(16)


def accepted_syntaxes(accept: str) -> set[str] | None:
    """The transfer syntaxes an ``Accept`` header allows for application/dicom (None: any)."""
    if not accept or "transfer-syntax" not in accept.lower():
        return None
    allowed: set[str] = set()
    for choice in accept.split(","):
        for parameter in choice.split(";"):
            name, _, value = parameter.strip().partition("=")
            if name.strip().lower() == "transfer-syntax":
                value = value.strip().strip('"')
                if value == "*":
                    return None
                allowed.add(value)
    return allowed


def check_acceptable(objects: list[Served], accept: str) -> None:
    """Raises NotAcceptable when ``accept`` names transfer syntaxes and one of ``objects`` is in none of them."""
    allowed = accepted_syntaxes(accept)
    if allowed is not None and any(o.transfer_syntax not in allowed for o in objects):
        raise NotAcceptable("the instances are served in their stored transfer syntax only")


def single_part(accept: str) -> bool:
    """True when ``accept`` asks for one instance as a single ``application/dicom`` part, not multipart (PS3.18
    allows it for an instance; the portal's viewer loads a series instance by instance this way, and draws the
    first before the rest arrive)."""
    ranges = [r.split(";")[0].strip().lower() for r in accept.split(",") if r.strip()]
    return "application/dicom" in ranges and not any(r.startswith("multipart/") or r == "*/*" for r in ranges)


def multipart_instances(case: CaseObjects, objects: list[Served], mark: str) -> Iterator[bytes]:
    """The body of a multipart/related answer of ``objects``, read one file at a time."""
    for served in objects:
        yield (f"--{mark}\r\nContent-Type: application/dicom; transfer-syntax={served.transfer_syntax}"
               "\r\n\r\n").encode()
        yield case.part10(served)
        yield b"\r\n"
    yield f"--{mark}--\r\n".encode()


def multipart_frames(frames: list[bytes], mark: str) -> bytes:
    parts = [f"--{mark}\r\nContent-Type: application/octet-stream\r\n\r\n".encode() + frame + b"\r\n"
             for frame in frames]
    return b"".join(parts) + f"--{mark}--\r\n".encode()


def metadata(case: CaseObjects, objects: list[Served]) -> list[dict[str, Any]]:
    """The DICOM JSON of each object's header, bulk data left out."""
    return [_without_bulk(served.header).to_json_dict() for served in objects]


def _without_bulk(header: Dataset) -> Dataset:
    copy = Dataset()
    for element in header:
        if element.tag.group == 0x0002 or element.tag == 0x7FE00010:
            continue
        if element.VR in BINARY_VRS and element.value is not None and len(element.value) > BULK_THRESHOLD:
            continue
        if element.VR == "SQ":
            from pydicom.dataelem import DataElement

            copy.add(DataElement(element.tag, "SQ", [_without_bulk(item) for item in element.value]))
            continue
        copy.add(element)
    return copy


def frame_numbers(text: str) -> list[int]:
    """``1,3,5`` → [1, 3, 5]. Raises BadFrames (400) when malformed."""
    try:
        numbers = [int(part) for part in text.split(",")]
    except ValueError:
        raise BadFrames("frame numbers are whole numbers, comma separated", 400) from None
    if not numbers or any(n < 1 for n in numbers) or len(numbers) > 10_000:
        raise BadFrames("frame numbers start at 1", 400)
    return numbers


def frames_of(dataset: Dataset, numbers: list[int]) -> list[bytes]:
    """The frames ``numbers`` (1-based) of ``dataset``, uncompressed. Raises BadFrames (404) out of range or when
    the object has no pixel data."""
    if "PixelData" not in dataset:
        raise BadFrames("the instance has no pixel data", 404)
    count = int(dataset.get("NumberOfFrames", 1) or 1)
    if any(n > count for n in numbers):
        raise BadFrames(f"the instance has {count} frame(s)", 404)
    syntax = dataset.file_meta.TransferSyntaxUID
    if not syntax.is_compressed and int(dataset.BitsAllocated) % 8 == 0:
        size = (int(dataset.Rows) * int(dataset.Columns) * int(dataset.get("SamplesPerPixel", 1))
                * int(dataset.BitsAllocated) // 8)
        data = dataset.PixelData
        return [bytes(data[(n - 1) * size:n * size]) for n in numbers]
    pixels = dataset.pixel_array
    if count == 1:
        pixels = pixels[np.newaxis, ...]
    return [np.ascontiguousarray(pixels[n - 1]).tobytes() for n in numbers]


def rendered(dataset: Dataset, frame: int, media_type: str, window: str | None, quality: int | None) -> bytes:
    """Frame ``frame`` (1-based) of ``dataset`` as a JPEG or PNG image (see the module docstring), drawn by
    :mod:`gateway.dicom.render`.

    Raises:
        BadFrames: no pixel data, or no such frame (404); a malformed window (400).
    """
    try:
        image = render.frame_image(dataset, frame, _window(window))
    except render.NotAnImage as exc:
        raise BadFrames(str(exc), 404) from None
    return render.encoded(image, RENDERED_TYPES[media_type], quality)


def _window(asked: str | None) -> tuple[float, float] | None:
    """The ``window`` parameter's center and width; None without one (the data set's own is used)."""
    if not asked:
        return None
    parts = asked.split(",")
    try:
        center, width = float(parts[0]), float(parts[1])
    except (IndexError, ValueError):
        raise BadFrames("window is center,width[,function]", 400) from None
    if width < 1:
        raise BadFrames("the window's width is at least 1", 400)
    return center, width


def rendered_type(accept: str) -> str:
    """The rendered media type ``accept`` asks for: JPEG unless only PNG is accepted. Raises NotAcceptable."""
    if not accept or "*/*" in accept or "image/*" in accept or "image/jpeg" in accept:
        return "image/jpeg"
    if "image/png" in accept:
        return "image/png"
    raise NotAcceptable("rendered images are image/jpeg or image/png")
