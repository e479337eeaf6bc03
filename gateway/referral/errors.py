"""Exceptions raised by the referral library.

Messages name fields and attribute paths, never the values of free-text or identifying fields.
"""

from __future__ import annotations

from gateway.errors import GatewayError


class ReferralError(GatewayError):
    """Base class of every error raised by :mod:`gateway.referral`."""


class ReferralValidationError(ReferralError):
    """A referral document failed validation.

    ``problems`` holds one line per problem, each starting with the field path
    (for example ``clinical.pain.intensity: must be between 0 and 10 (got 14)``).
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid referral: " + "; ".join(self.problems))


class HL7ParseError(ReferralError):
    """An HL7 v2 message could not be parsed or lacks a required field (one-line reason)."""
