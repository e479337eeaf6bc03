"""The reviewers' DICOMweb bearer tokens: issued, listed and revoked by ops (``spine-gateway dicomweb token``).

A token is ``<token_id>.<secret>``: 8 random hex characters that name its row (shown by ``list``, used to
revoke) and 32 random bytes (URL-safe base64) of secret. The database keeps the secret's SHA-256 only; the token
is printed once, at issue. A request's token is checked from its ``Authorization`` header alone: its row found by
the id, the secret's digest compared in constant time (:func:`hmac.compare_digest`), the row not revoked and its
reviewer still configured (a reviewer ``enabled: false`` gets no new cases but still reads its own). Call inside a
database connection.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.storage.models import DicomwebToken, utcnow

_TOKEN = re.compile(r"(?P<id>[0-9a-f]{8})\.(?P<secret>[A-Za-z0-9_-]{20,64})")
_LABEL = re.compile(r"[\w .,:/()+-]{0,64}")
LAST_USED_RESOLUTION_S = 60  # ``last_used_at`` is rewritten at most once a minute per token (a viewer asks often)


class TokenError(GatewayError):
    """A token cannot be issued or revoked as asked (an unknown reviewer or token id, a bad label)."""


@dataclass(frozen=True)
class TokenInfo:
    """What ``list`` shows of a token (never its secret)."""

    token_id: str
    reviewer: str
    label: str
    issued_at: str
    issued_by: str
    revoked_at: str | None
    last_used_at: str | None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def issue(config: GatewayConfig, reviewer: str, label: str = "", issued_by: str = "") -> str:
    """A new token for the configured ``reviewer``; returns the whole token (the only time it exists in clear).

    Raises:
        TokenError: ``reviewer`` is not configured, or ``label`` is too long or has other characters.
    """
    if reviewer not in {r.name for r in config.reviewers}:
        raise TokenError(f"no reviewer named {reviewer!r} in the configuration")
    if not _LABEL.fullmatch(label):
        raise TokenError("label: at most 64 letters, digits, spaces and .,:/()+-")
    token_id = secrets.token_hex(4)
    while DicomwebToken.get_or_none(DicomwebToken.token_id == token_id) is not None:
        token_id = secrets.token_hex(4)
    secret = secrets.token_urlsafe(32)
    DicomwebToken.create(token_id=token_id, secret_sha256=_digest(secret), reviewer=reviewer, label=label,
                         issued_by=issued_by[:64])
    return f"{token_id}.{secret}"


def revoke(token_id: str) -> TokenInfo:
    """Revoke the token ``token_id`` (from its next request on); revoking it again changes nothing.

    Raises:
        TokenError: no token has this id.
    """
    row = DicomwebToken.get_or_none(DicomwebToken.token_id == token_id)
    if row is None:
        raise TokenError(f"no DICOMweb token {token_id!r}")
    if row.revoked_at is None:
        DicomwebToken.update(revoked_at=utcnow()).where(DicomwebToken.id == row.id).execute()
        row = DicomwebToken.get_by_id(row.id)
    return _info(row)


def listed(reviewer: str | None = None) -> list[TokenInfo]:
    """Every token (of one reviewer when given), oldest first."""
    rows = DicomwebToken.select().order_by(DicomwebToken.issued_at, DicomwebToken.id)
    if reviewer is not None:
        rows = rows.where(DicomwebToken.reviewer == reviewer)
    return [_info(row) for row in rows]


def _info(row: DicomwebToken) -> TokenInfo:
    def stamp(moment) -> str | None:
        return None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")

    return TokenInfo(row.token_id, row.reviewer, row.label, stamp(row.issued_at) or "", row.issued_by,
                     stamp(row.revoked_at), stamp(row.last_used_at))


def reviewer_of(token: str, config: GatewayConfig) -> str | None:
    """The reviewer a presented token acts as, or None (unknown, wrong secret, revoked, reviewer no longer configured).
    The secret's digest is compared in constant time; a malformed token costs no database query."""
    matched = _TOKEN.fullmatch(token)
    if matched is None:
        return None
    row = DicomwebToken.get_or_none(DicomwebToken.token_id == matched["id"])
    given = _digest(matched["secret"])
    expected = row.secret_sha256 if row is not None else "0" * 64
    if not hmac.compare_digest(given.encode(), expected.encode()) or row is None or row.revoked_at is not None:
        return None
    if row.reviewer not in {r.name for r in config.reviewers}:
        return None
    now = utcnow()
    if row.last_used_at is None or (now - row.last_used_at).total_seconds() >= LAST_USED_RESOLUTION_S:
        DicomwebToken.update(last_used_at=now).where(DicomwebToken.id == row.id).execute()
    return str(row.reviewer)
