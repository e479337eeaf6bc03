"""Exceptions raised by the de-identification engine.

Messages name attributes, paths or reasons, never values: a message may end up in a log.
"""

from __future__ import annotations


class DeidError(Exception):
    """Base of every error raised by :mod:`gateway.deid`."""


class QuarantineError(DeidError):
    """The object must not leave the gateway; ``reason`` says why (no PHI)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BurnedInRiskError(QuarantineError):
    """The object may carry identifiers burned into its pixels or document body.

    When raised by the OCR pass, ``report`` is its :class:`gateway.deid.ocr.PixelReport` (counts, no text).
    """

    report: object = None


class BurnedInTextError(BurnedInRiskError):
    """Text is still readable in the pixels after cleaning; ``reason`` names what kind, never the text.

    ``report`` is the :class:`gateway.deid.ocr.PixelReport` of the pass (counts, no text).
    """

    def __init__(self, reason: str, report: object = None) -> None:
        super().__init__(reason)
        self.report = report


class OcrUnavailableError(BurnedInRiskError):
    """The OCR engine or its language data is missing: images that need reading cannot be checked."""


class UnsupportedObjectError(QuarantineError):
    """The object cannot be de-identified safely (e.g. a DICOMDIR or no SOP Instance UID)."""


class IdentifierLeakError(QuarantineError):
    """The outbound guard found a patient identifier; ``paths`` name where, never what."""

    def __init__(self, paths: list[str]) -> None:
        super().__init__(f"identifier found at {len(paths)} path(s): {', '.join(paths)}")
        self.paths = paths


class TableError(DeidError):
    """The bundled Annex E table is malformed."""


class TimeBudgetExceeded(DeidError):
    """A batch of a case's instances ran past ``deid.time_budget_s`` in the worker processes (which were
    killed); the case is quarantined with this message as its reason."""
