"""One frame of an image data set as a picture people look at: the modality LUT, a window (the one asked for,
else the data set's first Window Center/Width, else the frame's range), MONOCHROME1 inverted, colour converted
to RGB. WADO-RS's rendered resource (:mod:`gateway.dicomweb.wado`) and the key images' thumbnails (the referrer's
page, the hospital's copy of the report) draw through it. It knows no case: the caller chooses the data set (a
de-identified one, wherever a reviewer may see it).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.dataset import Dataset

if TYPE_CHECKING:
    from PIL.Image import Image

THUMBNAIL_PX = 192  # the longer side of a key image's thumbnail
LARGE_PX = 1024  # the longer side of a key image opened from its thumbnail


class NotAnImage(ValueError):
    """The data set has no pixel data, or not the frame asked for."""


def frame_image(dataset: Dataset, frame: int = 1, window: tuple[float, float] | None = None) -> Image:
    """Frame ``frame`` (1-based) of ``dataset`` as a Pillow image (``L`` or ``RGB``), in ``window`` (center,
    width) if given.

    Raises:
        NotAnImage: no pixel data, or no such frame.
    """
    from PIL import Image
    from pydicom.pixels import apply_modality_lut

    if "PixelData" not in dataset:
        raise NotAnImage("the instance has no pixel data")
    count = int(dataset.get("NumberOfFrames", 1) or 1)
    if not 1 <= frame <= count:
        raise NotAnImage(f"the instance has {count} frame(s)")
    pixels = dataset.pixel_array
    if count > 1:
        pixels = pixels[frame - 1]
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        values = np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float64)
        center, width = window or stored_window(dataset, values)
        scaled = linear_window(values, center, width)
        if photometric == "MONOCHROME1":
            scaled = 255.0 - scaled
        return Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    from pydicom.pixels import convert_color_space

    rgb = convert_color_space(pixels, photometric, "RGB") if photometric.startswith("YBR") else pixels
    return Image.fromarray(np.asarray(rgb, dtype=np.uint8), mode="RGB")


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, the LINEAR function, onto 0-255 (a width of 1 is a threshold at center - 0.5)."""
    if width <= 1:
        return np.where(values <= center - 0.5, 0.0, 255.0)
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0) * 255.0


def stored_window(dataset: Dataset, values: np.ndarray) -> tuple[float, float]:
    """The data set's first Window Center/Width, else the range of ``values``."""
    center, width = dataset.get("WindowCenter"), dataset.get("WindowWidth")
    if center is not None and width is not None:
        try:
            return _first(center), max(_first(width), 1.0)
        except (TypeError, ValueError):
            pass
    low, high = float(values.min()), float(values.max())
    return (low + high) / 2, max(high - low, 1.0)


def _first(value: Any) -> float:
    """The first of a multi-valued DS (Window Center and Width may hold several windows)."""
    return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, str) else float(value)


def encoded(image: Image, image_format: str, quality: int | None = None) -> bytes:
    """``image`` as ``JPEG`` or ``PNG`` bytes (``quality`` for JPEG)."""
    out = io.BytesIO()
    options: dict[str, Any] = {"quality": quality} if quality is not None and image_format == "JPEG" else {}
    image.save(out, format=image_format, **options)
    return out.getvalue()


def thumbnail_jpeg(dataset: Dataset, longest_side: int = THUMBNAIL_PX) -> bytes:
    """The first frame, in its stored window, scaled down (never up) to ``longest_side`` pixels, as a JPEG.

    Raises:
        NotAnImage: no pixel data.
    """
    image = frame_image(dataset, 1)
    image.thumbnail((longest_side, longest_side))
    return encoded(image, "JPEG", quality=85)
