"""Exceptions of the reports package. Messages name cases by key and attributes by path, never a value."""

from __future__ import annotations

from gateway.dicom import status
from gateway.errors import GatewayError, InvalidInstance


class ReportError(GatewayError):
    """Base of the errors raised by the reports package."""


class ReidentificationError(ReportError):
    """A report cannot be re-identified (not a report class, no mapping, a pseudonym left behind)."""


class FindingsError(ReportError):
    """The findings file of ``report create`` is unreadable or invalid; the message is one line."""


class ReportBuildError(ReportError):
    """The report cannot be built from the case (no outbound images, unknown key image, no reviewer)."""


class ReportRefused(InvalidInstance):
    """A C-STORE the report intake refuses (0x0124 unless said otherwise); ``reason`` is a short code.

    ``event`` is the name the SCP logs and audits the refusal under.
    """

    event = "report_refused"

    def __init__(self, reason: str, code: int = status.NOT_AUTHORIZED, *, study_key: str | None = None) -> None:
        super().__init__(reason, code)
        self.study_key = study_key
