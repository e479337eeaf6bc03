"""Keyed, deterministic pseudonyms: the same input and secret always give the same output."""

from __future__ import annotations

import hashlib
import hmac

STANDARD_UID_ROOT = "1.2.840.10008."
_MIN_SECRET_BYTES = 16


def _digest(secret: bytes, domain: str, *parts: str) -> bytes:
    """HMAC-SHA256 over length-prefixed parts, so ("ab", "c") and ("a", "bc") never collide."""
    message = bytearray(domain.encode("ascii"))
    for part in parts:
        encoded = part.encode("utf-8")
        message += len(encoded).to_bytes(4, "big") + encoded
    return hmac.new(secret, bytes(message), hashlib.sha256).digest()


def uuid_derived_uid(digest: bytes) -> str:
    """A ``2.25.<int>`` UID (PS3.5 B.2) from the first 128 bits, marked as an RFC 9562 version 8 UUID."""
    value = int.from_bytes(digest[:16], "big")
    value &= ~(0xF << 76)
    value |= 0x8 << 76  # version 8: custom
    value &= ~(0x3 << 62)
    value |= 0x2 << 62  # RFC variant
    return f"2.25.{value}"


class Pseudonymizer:
    """Derives every pseudonym of the gateway from one secret.

    Args:
        secret: at least 16 bytes; losing it makes the pseudonyms impossible to reproduce.

    Raises:
        ValueError: the secret is too short.
    """

    def __init__(self, secret: bytes) -> None:
        if len(secret) < _MIN_SECRET_BYTES:
            raise ValueError(f"secret must be at least {_MIN_SECRET_BYTES} bytes")
        self._secret = bytes(secret)

    def uid(self, original: str) -> str:
        """The pseudonym of a UID (at most 44 characters)."""
        return uuid_derived_uid(_digest(self._secret, "uid", original))

    def patient_id(self, source: str, original_id: str) -> str:
        """The patient pseudonym, stable across studies from the same source (LO, 20 characters)."""
        return "SPGW" + _digest(self._secret, "patient", source, original_id).hex()[:16].upper()

    def accession(self, source: str, original_accession: str) -> str:
        """The accession pseudonym (SH, 16 characters)."""
        return "A" + _digest(self._secret, "accession", source, original_accession).hex()[:15].upper()

    def date_offset_days(self, source: str, original_id: str, lowest: int, highest: int) -> int:
        """The per-patient date shift, a whole number of days in ``[lowest, highest]``."""
        value = int.from_bytes(_digest(self._secret, "date-offset", source, original_id)[:8], "big")
        return lowest + value % (highest - lowest + 1)


def is_standard_uid(value: str) -> bool:
    """True for UIDs defined by DICOM itself (SOP classes, transfer syntaxes, coding schemes...)."""
    return value.startswith(STANDARD_UID_ROOT)
