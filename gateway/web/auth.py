"""Sign-in, sessions, CSRF tokens and the login rate limit.

A session is a random token in an HttpOnly, SameSite=Lax cookie (Secure over https or with
``http.secure_cookies``); the database keeps only its SHA-256, the user and the session's CSRF token, which
every form carries back in a hidden field (a POST without it, or with another, is refused with 403).
Sign-in attempts are counted as they start, per user name and address, per address and over all addresses, over
a sliding minute (:class:`LoginLimiter`): past a limit the attempt is refused (429) before any password is hashed.
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from gateway.storage.models import WebSession, WebUser, utcnow

COOKIE = "spine_session"
ANONYMOUS_CSRF_COOKIE = "spine_csrf"  # the sign-in form's CSRF token (double-submit: cookie and hidden field)
WINDOW_S = 60.0


@dataclass(frozen=True)
class SignedIn:
    """The user behind a request, and their session's CSRF token."""

    user: WebUser
    csrf_token: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(user: WebUser, hours: float) -> str:
    """A new session for ``user``; returns the cookie's token (call inside a database connection)."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    WebSession.delete().where(WebSession.expires_at < now).execute()
    WebSession.create(token_sha256=_digest(token), user=user, csrf_token=new_csrf_token(),
                      expires_at=now + dt.timedelta(hours=hours))
    return token


def session_of(token: str | None) -> SignedIn | None:
    """The signed-in user of a cookie token, if the session is live and the account enabled."""
    if not token or len(token) > 128:
        return None
    row = (WebSession.select(WebSession, WebUser).join(WebUser)
           .where((WebSession.token_sha256 == _digest(token)) & (WebSession.expires_at > utcnow())).first())
    if row is None or not row.user.enabled:
        return None
    return SignedIn(row.user, row.csrf_token)


def end_session(token: str | None) -> None:
    if token:
        WebSession.delete().where(WebSession.token_sha256 == _digest(token)).execute()


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_ok(expected: str, given: object) -> bool:
    """The form's token is the session's (or, before sign-in, the CSRF cookie's)."""
    return bool(expected) and bool(given) and hmac.compare_digest(expected.encode(), str(given).encode())


class LoginLimiter:
    """Sign-in attempts over a sliding minute, counted when an attempt starts, before any password is hashed.

    Three counts, each with its own limit: per (user name, address) (``http.login_attempts_per_minute``; a
    successful sign-in clears it), per client address (``..._per_address_per_minute``) and over all addresses
    (``..._global_per_minute``). The global limit applies to addresses that gave a wrong password this minute:
    a flood from many addresses is held by it, while a user whose address has not failed still gets in (each
    address's first attempt costs at most one hash, in the bounded pool). Counting before the hash is what makes the
    limits hold under parallel attempts:
    counted after it, 40 parallel wrong passwords for one user got 28 hashes (issue 28). Thread-safe, per process.
    """

    def __init__(self, per_minute: int, per_address: int | None = None, global_per_minute: int | None = None,
                 clock=time.monotonic) -> None:
        self.per_minute = per_minute
        self.per_address = per_address if per_address is not None else max(per_minute * 3, per_minute)
        self.global_per_minute = global_per_minute if global_per_minute is not None else per_minute * 12
        self.clock = clock
        self._by_name: dict[tuple[str, str], collections.deque[float]] = {}
        self._by_address: dict[str, collections.deque[float]] = {}
        self._everyone: collections.deque[float] = collections.deque()
        self._refusals_noted: dict[str, float] = {}
        self._wrong_by_address: dict[str, float] = {}
        self._lock = threading.Lock()

    def note_refusal(self, address: str) -> bool:
        """True for the first refusal of ``address`` in a window: audit that one, not each of a flood's thousands
        (one audit row per refused attempt put the database's writes behind the flood)."""
        with self._lock:
            now = self.clock()
            if now - self._refusals_noted.get(address, now - WINDOW_S - 1) <= WINDOW_S:
                return False
            if len(self._refusals_noted) > 10000:
                self._refusals_noted.clear()
            self._refusals_noted[address] = now
            return True

    def _recent(self, attempts: collections.deque[float]) -> collections.deque[float]:
        horizon = self.clock() - WINDOW_S
        while attempts and attempts[0] <= horizon:
            attempts.popleft()
        return attempts

    def admit(self, name: str, address: str) -> float | None:
        """Count an attempt and return None, or refuse it (not counted) with the seconds until one is allowed."""
        with self._lock:
            counts: tuple[tuple[collections.deque[float], int], ...]  # the global count is dropped below
            counts = ((self._recent(self._by_name.setdefault((name.lower(), address), collections.deque())),
                       self.per_minute),
                      (self._recent(self._by_address.setdefault(address, collections.deque())), self.per_address),
                      (self._recent(self._everyone), self.global_per_minute))
            if self.clock() - self._wrong_by_address.get(address, -2 * WINDOW_S) > WINDOW_S:
                counts = counts[:2]  # an address without a wrong password this minute: the global limit spares it
            full = [attempts for attempts, limit in counts if len(attempts) >= limit]
            if full:
                return max(1.0, max(attempts[0] for attempts in full) + WINDOW_S - self.clock())
            now = self.clock()
            for attempts, _ in counts:
                attempts.append(now)
            if len(counts) == 2:
                self._everyone.append(now)
            self._forget_idle()
            return None

    def allowed(self, name: str, address: str) -> bool:
        """True when an attempt would be admitted now (nothing is counted)."""
        with self._lock:
            return (len(self._recent(self._by_name.get((name.lower(), address), collections.deque())))
                    < self.per_minute
                    and len(self._recent(self._by_address.get(address, collections.deque()))) < self.per_address
                    and (self.clock() - self._wrong_by_address.get(address, -2 * WINDOW_S) > WINDOW_S
                         or len(self._recent(self._everyone)) < self.global_per_minute))

    def suspect(self, address: str) -> bool:
        """``address`` gave a wrong password within the last minute."""
        with self._lock:
            return self.clock() - self._wrong_by_address.get(address, -2 * WINDOW_S) <= WINDOW_S

    def wrong_password(self, address: str) -> None:
        """An admitted attempt from ``address`` gave a wrong password: the global limit applies to it now."""
        with self._lock:
            if len(self._wrong_by_address) > 10000:
                horizon = self.clock() - WINDOW_S
                self._wrong_by_address = {a: t for a, t in self._wrong_by_address.items() if t > horizon}
            self._wrong_by_address[address] = self.clock()

    def failed(self, name: str, address: str) -> None:
        """Count one attempt that gave a wrong password (for callers that check without :meth:`admit`)."""
        self.admit(name, address)
        self.wrong_password(address)

    def succeeded(self, name: str, address: str) -> None:
        """The right password: the name's count from this address starts again (the address's does not)."""
        with self._lock:
            self._by_name.pop((name.lower(), address), None)

    def _forget_idle(self) -> None:
        """Drop keys with no attempt in the window, so that a flood of names or addresses cannot grow the maps."""
        tables: tuple[dict[Any, collections.deque[float]], ...] = (self._by_name, self._by_address)
        for table in tables:
            if len(table) > 10000:
                for key in [k for k, v in table.items() if not self._recent(v)]:
                    del table[key]
