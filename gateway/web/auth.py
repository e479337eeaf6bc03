"""Sign-in, sessions, CSRF tokens and the login rate limit.

A session is a random token in an HttpOnly, SameSite=Lax cookie (Secure over https or with
``http.secure_cookies``); the database keeps only its SHA-256, the user and the session's CSRF token, which
every form carries back in a hidden field (a POST without it, or with another, is refused with 403).
Wrong passwords are counted per user name and client address over a sliding minute: past
``http.login_attempts_per_minute`` the next attempt is refused before the password is even checked.
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

from gateway.models import WebSession, WebUser, utcnow

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
    """Wrong passwords per (user name, address) over the last minute; thread-safe, per process."""

    def __init__(self, per_minute: int, clock=time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._failures: dict[tuple[str, str], collections.deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str]) -> collections.deque[float]:
        failures = self._failures.setdefault(key, collections.deque())
        horizon = self.clock() - WINDOW_S
        while failures and failures[0] <= horizon:
            failures.popleft()
        return failures

    def allowed(self, name: str, address: str) -> bool:
        """False once ``per_minute`` wrong passwords were given for this name from this address this minute."""
        with self._lock:
            return len(self._recent((name.lower(), address))) < self.per_minute

    def failed(self, name: str, address: str) -> None:
        with self._lock:
            self._recent((name.lower(), address)).append(self.clock())
            if len(self._failures) > 10000:  # forget idle keys so that a flood of names cannot grow this
                for key in [k for k, v in self._failures.items() if not v]:
                    del self._failures[key]

    def succeeded(self, name: str, address: str) -> None:
        with self._lock:
            self._failures.pop((name.lower(), address), None)
