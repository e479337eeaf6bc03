"""Burned-in text in the pixels: find it by OCR, blank it, and read the result again (Clean Pixel Data, 113101).

For every frame: window the stored values to 8 bits the way a viewer shows them (VOI LUT, else the header's
window, else the frame's own range; MONOCHROME1 inverted), read the words (:mod:`gateway.deid.ocr_engine`,
both polarities), set every word box plus a margin to the stored value that displays darkest, then read the
cleaned frame again. An identifier of the patient still readable (:mod:`gateway.deid.ocr_match`), or in strict
mode any text at all, refuses the object with :class:`BurnedInTextError`. Pixels outside the boxes keep their
stored values; an object in which nothing was blanked keeps its pixel data bytes as they came.

Compressed pixel data that must change is decoded and the object leaves as Explicit VR Little Endian (never
re-encoded lossily); Lossy Image Compression and its companions are left as they are, which stays true.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydicom import uid as dicom_uid
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi

from gateway.deid.errors import BurnedInRiskError, BurnedInTextError
from gateway.deid.guard import PatientIdentifiers
from gateway.deid.ocr_engine import Reading, Word, engine_for
from gateway.deid.ocr_match import has_text, identifiers_found, is_identifier_piece, search_terms
from gateway.deid.options import OcrOptions

Box = tuple[int, int, int, int]
CLEANING_ROUNDS = 2  # read, blank, read again; blank and read once more when that still finds words
MIN_TEXT_HEIGHT = 6  # pixels: shorter 'words' are noise in the anatomy, not text a person could read
GROWTH = 1.5  # how far, in text heights, a word box may grow over ink beside it
SOLID_COLUMN = 0.85  # a column of the text band this full of ink is anatomy (or a bar), not glyphs


@dataclass(slots=True)
class PixelReport:
    """What the OCR pass did to one object; counts and a verdict only (the text read is never kept)."""

    frames: int = 0
    boxes_found: int = 0
    """Distinct word boxes that look like text (any confidence), over every reading that led to blanking."""
    boxes_blanked: int = 0
    verdict: str = "clean"
    """``clean`` (nothing to blank), ``cleaned`` (boxes blanked, nothing readable left) or ``quarantined``."""
    reason: str = ""
    changed: bool = False
    found_kinds: list[str] = field(default_factory=list)


def clean_burned_in_text(dataset: Dataset, identifiers: PatientIdentifiers, options: OcrOptions) -> PixelReport:
    """Find, blank and re-check burned-in text in every frame of ``dataset`` (changed in place).

    ``identifiers`` are those of the original object (the ones searched for after cleaning).

    Raises:
        BurnedInTextError: an identifier (or, in strict mode, any text) is still readable after cleaning;
            the error's ``report`` holds the counts.
        BurnedInRiskError: the pixels cannot be read (no decoder, 1-bit or palette colour, too many frames).
        OcrUnavailableError: tesseract or its language data is missing.
    """
    frames = _frames(dataset, options)
    report = PixelReport(frames=len(frames))
    engine = engine_for(options.language)
    terms = search_terms(identifiers)
    zoom = _zoom(max(frames.shape[1:3]), options)
    view = _Viewer(dataset)
    left_kinds: set[str] = set()
    any_text_left = False
    for index in range(len(frames)):
        frame = frames[index]
        darkest = view.darkest(frame)
        picture = view.window(frame)
        reading = engine.read(picture, zoom=zoom)
        for _ in range(CLEANING_ROUNDS):
            report.boxes_found += len({w.box for w in reading.words if _text_like(w)})
            boxes = {w.box for w in reading.words if _blankable(w, options) or is_identifier_piece(w.text, terms)}
            if not boxes:
                break
            for box in boxes:
                x0, y0, x1, y1 = _with_margin(_grown(box, picture), options.margin_px, frame.shape)
                frame[y0:y1, x0:x1, ...] = darkest
            report.boxes_blanked += len(boxes)
            report.changed = True
            picture = view.window(frame)
            reading = engine.read(picture, zoom=zoom)  # the check: what a person could still read
        left_kinds |= _identifiers_left(reading, terms)
        any_text_left |= any(_blankable(w, options) for w in reading.words)
    report.found_kinds = sorted(left_kinds)
    if left_kinds or (options.strict and any_text_left):
        report.verdict = "quarantined"
        report.reason = (f"burned-in text: {', '.join(report.found_kinds)} still readable after cleaning"
                         if left_kinds else "burned-in text still readable after cleaning (strict)")
        raise BurnedInTextError(report.reason, report)
    if report.changed:
        _store(dataset, frames)
        report.verdict = "cleaned"
    dataset.BurnedInAnnotation = "NO"
    return report


def _zoom(longer_side: int, options: OcrOptions) -> float:
    if longer_side < options.upscale_below_px:
        return 2
    if options.reduce_from_px and longer_side >= options.reduce_from_px:
        return 0.5
    return 1


def _text_like(word: Word) -> bool:
    """At least two letters or digits, tall enough to be read by a person (noise in the anatomy reads as short,
    flat, low-confidence 'words')."""
    return has_text(word.text) and word.box[3] - word.box[1] >= MIN_TEXT_HEIGHT


def _blankable(word: Word, options: OcrOptions) -> bool:
    """A text-like word read with at least ``min_confidence``."""
    return _text_like(word) and word.confidence >= options.min_confidence


def _grown(box: Box, picture: np.ndarray) -> Box:
    """``box`` widened over the ink of the same text beside it: OCR often drops a word's first or last glyphs.

    The ink is the word's own extreme display level (text is drawn with one value); the box grows left and
    right while such ink continues with gaps no wider than the text is high, over columns that are not solid.
    """
    x0, y0, x1, y1 = box
    band = picture[y0:y1].astype(np.int16)
    inside = band[:, x0:x1]
    if inside.size == 0:
        return box
    background = float(np.median(inside))
    bright = float(inside.max()) - background >= background - float(inside.min())
    ink_level = float(inside.max() if bright else inside.min())
    tolerance = max(8.0, 0.2 * abs(ink_level - background))
    ink = np.abs(band - ink_level) <= tolerance
    fraction = ink.mean(axis=0)
    inky = (fraction > 0) & (fraction <= SOLID_COLUMN)
    height = max(2, y1 - y0)
    return _extend(inky, x0, -1, height), y0, _extend(inky, x1 - 1, +1, height) + 1, y1


def _extend(inky: np.ndarray, edge: int, step: int, height: int) -> int:
    """The last inky column reached from ``edge`` going ``step`` without ``height`` clear columns in a row, and
    no further than ``GROWTH`` times ``height`` (a glyph or two): anatomy of the text's shade is not text."""
    last, clear, column = edge, 0, edge + step
    while 0 <= column < len(inky) and clear <= height and abs(column - edge) <= GROWTH * height:
        if inky[column]:
            last, clear = column, 0
        else:
            clear += 1
        column += step
    return last


def _identifiers_left(reading: Reading, terms: tuple) -> set[str]:
    return identifiers_found([w.text for w in reading.words], reading.lines, terms)


def _with_margin(box: Box, margin: int, shape: tuple[int, ...]) -> Box:
    x0, y0, x1, y1 = box
    rows, columns = shape[0], shape[1]
    return max(0, x0 - margin), max(0, y0 - margin), min(columns, x1 + margin), min(rows, y1 + margin)


# -- pixels in and out ------------------------------------------------------------------------------------------

def _frames(dataset: Dataset, options: OcrOptions) -> np.ndarray:
    """Every frame as an array (frames, rows, columns[, samples]) of stored values, writable."""
    if "PixelData" not in dataset:
        raise BurnedInRiskError("burned-in text check: no pixel data to read")
    count = int(dataset.get("NumberOfFrames", 1) or 1)
    if count > options.max_frames:
        raise BurnedInRiskError(f"burned-in text check: {count} frames, more than ocr.max_frames")
    photometric = str(dataset.get("PhotometricInterpretation", "")).strip().upper()
    if int(dataset.get("BitsAllocated", 0) or 0) == 1:
        raise BurnedInRiskError("burned-in text check: 1-bit pixels are not read by OCR")
    if photometric == "PALETTE COLOR":
        raise BurnedInRiskError("burned-in text check: PALETTE COLOR pixels are not read by OCR")
    if str(dataset.file_meta.get("TransferSyntaxUID", "")) in _VIDEO_SYNTAXES:
        raise BurnedInRiskError("burned-in text check: video is not read by OCR")
    try:
        pixels = dataset.pixel_array
    except Exception as failure:  # noqa: BLE001 - pydicom and its plugins raise many types on bad data
        raise BurnedInRiskError(
            f"burned-in text check: pixel data cannot be decoded ({type(failure).__name__})") from failure
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    single = pixels.ndim == (3 if samples > 1 else 2)
    return np.array(pixels[None, ...] if single else pixels, copy=True)


_VIDEO_SYNTAXES = frozenset({
    dicom_uid.MPEG2MPML, dicom_uid.MPEG2MPMLF, dicom_uid.MPEG2MPHL, dicom_uid.MPEG2MPHLF,
    dicom_uid.MPEG4HP41, dicom_uid.MPEG4HP41F, dicom_uid.MPEG4HP41BD, dicom_uid.MPEG4HP41BDF,
    dicom_uid.MPEG4HP422D, dicom_uid.MPEG4HP422DF, dicom_uid.MPEG4HP423D, dicom_uid.MPEG4HP423DF,
    dicom_uid.MPEG4HP42STEREO, dicom_uid.MPEG4HP42STEREOF, dicom_uid.HEVCMP51, dicom_uid.HEVCM10P51,
})


def _store(dataset: Dataset, frames: np.ndarray) -> None:
    """Write the cleaned frames back as native (uncompressed) pixel data, Explicit VR Little Endian when the
    original was compressed; colour leaves as RGB, interleaved."""
    if dataset.file_meta.TransferSyntaxUID.is_compressed:
        # pydicom's own decompression sets the syntax (Explicit VR Little Endian), the element's VR and length,
        # and the photometric interpretation; its pixels are then replaced by the cleaned ones.
        dataset.decompress(generate_instance_uid=False)
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    if samples > 1:
        dataset.PhotometricInterpretation = "RGB"  # pydicom hands colour out as RGB, whatever it was stored as
        dataset.PlanarConfiguration = 0
    order: Literal[">", "<"] = ">" if dataset.file_meta.TransferSyntaxUID == dicom_uid.ExplicitVRBigEndian else "<"
    data = frames.astype(frames.dtype.newbyteorder(order), copy=False).tobytes()
    dataset.PixelData = data + b"\0" if len(data) % 2 else data


class _Viewer:
    """The 8-bit picture a viewer shows of a frame, and the stored value it shows darkest."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.monochrome1 = str(dataset.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1"
        self.colour = int(dataset.get("SamplesPerPixel", 1) or 1) > 1
        slope = float(dataset.get("RescaleSlope", 1) or 1)
        self.brighter_when_higher = (slope >= 0) != self.monochrome1
        self.voi_lut = "VOILUTSequence" in dataset and len(dataset.VOILUTSequence) > 0
        self.window_range = _first_window(dataset)

    def window(self, frame: np.ndarray) -> np.ndarray:
        if self.colour:
            luminance = frame[..., :3].astype(np.float32).mean(axis=-1)
            return _stretch(luminance, 0.0, float(max(255, luminance.max())))
        values = apply_modality_lut(frame, self.dataset).astype(np.float32)
        if self.voi_lut:
            lut = self.dataset.VOILUTSequence[0]
            top = float(2 ** int(lut.LUTDescriptor[2]) - 1)
            picture = _stretch(apply_voi(values, self.dataset, index=0).astype(np.float32), 0.0, top)
        elif self.window_range is not None:
            picture = _stretch(values, *self.window_range)
        else:
            picture = _stretch(values, float(values.min()), float(values.max()))
        return 255 - picture if self.monochrome1 else picture

    def darkest(self, frame: np.ndarray) -> int | float:
        if self.colour:
            return 0
        return frame.min() if self.brighter_when_higher else frame.max()


def _first_window(dataset: Dataset) -> tuple[float, float] | None:
    center, width = dataset.get("WindowCenter"), dataset.get("WindowWidth")
    if center is None or width is None or center == "" or width == "":
        return None
    try:
        c = float(center[0] if isinstance(center, (list, tuple)) or type(center).__name__ == "MultiValue" else center)
        w = float(width[0] if isinstance(width, (list, tuple)) or type(width).__name__ == "MultiValue" else width)
    except (TypeError, ValueError, IndexError):
        return None
    if w <= 1:
        return None
    return c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2


def _stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - low) * (255.0 / (high - low))
    return np.clip(scaled, 0, 255).round().astype(np.uint8)
