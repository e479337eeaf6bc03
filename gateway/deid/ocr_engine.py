"""Tesseract, offline, through tesserocr (compiled against Debian's libtesseract): words and lines on an
8-bit picture, read in both polarities so that white-on-black and black-on-white text are found alike.

One engine per process, made on first use (loading the language data takes a few hundred milliseconds) and
guarded by a lock (a tesseract handle is not thread-safe). The text read is PHI: it is returned to the caller,
never logged.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_THREAD_LIMIT", "1")  # one core per worker process; the pool spreads the work

import threading  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from gateway.deid.errors import OcrUnavailableError  # noqa: E402

# Page segmentation mode 11 (sparse text): text anywhere, in no particular order; the layout of a page would
# only waste time on an X-ray.
SPARSE_TEXT_PSM = 11
ZOOMS = (0.5, 1, 2)  # half size (large, noisy images: fast), as is, double size (small text reads better)


@dataclass(frozen=True, slots=True)
class Word:
    """One word as tesseract read it: its box in image pixels (ends excluded), confidence and text (PHI)."""

    box: tuple[int, int, int, int]
    confidence: float
    text: str


@dataclass(frozen=True, slots=True)
class Reading:
    """Everything read on one picture: its words, and its lines as text (PHI)."""

    words: tuple[Word, ...]
    lines: tuple[str, ...]


class OcrEngine:
    """A tesseract handle for one language; :meth:`read` is safe to call from several threads.

    Raises:
        OcrUnavailableError: tesserocr is not installed or the language data is missing.
    """

    def __init__(self, language: str) -> None:
        try:
            import tesserocr
        except ImportError as missing:  # pragma: no cover - a broken installation
            raise OcrUnavailableError("OCR unavailable: tesserocr is not installed") from missing
        self._tesserocr = tesserocr
        try:
            self._api = tesserocr.PyTessBaseAPI(lang=language, psm=SPARSE_TEXT_PSM)
        except RuntimeError as missing:
            raise OcrUnavailableError(f"OCR unavailable: no tesseract language data {language!r}") from missing
        self._lock = threading.Lock()

    def read(self, picture: np.ndarray, *, zoom: float = 1) -> Reading:
        """Words and lines of an 8-bit 2-D ``picture``, read as it is and inverted, at ``zoom`` (one of
        :data:`ZOOMS`); boxes are in ``picture``'s pixels whatever the zoom."""
        if zoom not in ZOOMS:
            raise ValueError(f"zoom must be one of {ZOOMS}")
        image = Image.fromarray(np.ascontiguousarray(picture, dtype=np.uint8), mode="L")
        if zoom > 1:
            image = image.resize((image.width * 2, image.height * 2), Image.Resampling.BICUBIC)
        elif zoom < 1:
            image = image.reduce(2)  # the mean of each 2 x 2 block
        inverse = Image.fromarray(255 - np.asarray(image), mode="L")
        readings = [self._read_once(each, zoom) for each in (image, inverse)]
        return Reading(words=tuple(w for r in readings for w in r.words),
                       lines=tuple(line for r in readings for line in r.lines))

    def _read_once(self, image: Image.Image, zoom: float) -> Reading:
        level = self._tesserocr.RIL
        with self._lock:
            self._api.SetImage(image)
            self._api.Recognize()
            words = list(self._results(level.WORD, zoom))
            lines = [text for _, _, text in self._results(level.TEXTLINE, zoom)]
            self._api.Clear()
        return Reading(words=tuple(Word(box, confidence, text) for box, confidence, text in words),
                       lines=tuple(lines))

    def _results(self, level: int, zoom: float):
        iterator = self._api.GetIterator()
        if iterator is None:
            return
        for result in self._tesserocr.iterate_level(iterator, level):
            try:
                text = result.GetUTF8Text(level)
            except RuntimeError:  # "No text returned": an empty element
                continue
            box = result.BoundingBox(level)
            if not text or not text.strip() or box is None:
                continue
            x0, y0, x1, y1 = box
            scaled = (int(x0 // zoom), int(y0 // zoom), int(-(-x1 // zoom)), int(-(-y1 // zoom)))
            yield scaled, float(result.Confidence(level)), text.strip()


_engines: dict[str, OcrEngine] = {}
_engines_lock = threading.Lock()


def engine_for(language: str) -> OcrEngine:
    """This process's engine for ``language``, made on first use."""
    with _engines_lock:
        engine = _engines.get(language)
        if engine is None:
            engine = _engines[language] = OcrEngine(language)
        return engine
