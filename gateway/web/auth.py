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
import math
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from gateway.storage.models import WebSession, WebUser, utcnow

COOKIE = "spine_session"
ANONYMOUS_CSRF_COOKIE = "spine_csrf"  # the sign-in form's CSRF token (double-submit: cookie and hidden field)
WINDOW_S = 60.0
MAX_TRACKED_KEYS = 10_000  # per table of the login limiter: a few megabytes at most
REFUSAL_ROWS_PER_MINUTE = 60  # audit rows of refused sign-ins, all addresses together (past it: one row for the rest)
OTHER_ADDRESSES = "*"         # the key under which refusals past that budget are counted
V = TypeVar("V")


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

    Memory is bounded whatever the names and addresses: a refused attempt adds no key, and each table keeps at
    most ``max_keys`` keys, the least recently seen dropped first (:class:`_RecentTable`). A flood of random
    names or addresses therefore costs at most a few megabytes; a dropped key only starts its count again.
    """

    def __init__(self, per_minute: int, per_address: int | None = None, global_per_minute: int | None = None,
                 clock=time.monotonic, max_keys: int = MAX_TRACKED_KEYS) -> None:
        self.per_minute = per_minute
        self.per_address = per_address if per_address is not None else max(per_minute * 3, per_minute)
        self.global_per_minute = global_per_minute if global_per_minute is not None else per_minute * 12
        self.clock = clock
        self._by_name: _RecentTable[list[float]] = _RecentTable(max_keys)  # (lower-case name, address) -> times
        self._by_address: _RecentTable[list[float]] = _RecentTable(max_keys)   # address -> attempt times
        self._everyone: collections.deque[float] = collections.deque()
        self._wrong_by_address: _RecentTable[list[float]] = _RecentTable(max_keys)  # address -> [its last wrong]
        self._lock = threading.Lock()
        self.refusals = RefusedSignIns(clock, max_keys)

    def tracked_keys(self) -> int:
        """Keys held in all tables together (for tests and operators: bounded by 4 x ``max_keys``)."""
        with self._lock:
            held = sum(len(table) for table in (self._by_name, self._by_address, self._wrong_by_address))
        return held + self.refusals.tracked_keys()

    def _last(self, table: _RecentTable[list[float]], key: object) -> float:
        times = table.get(key)
        return times[-1] if times else -math.inf

    def _recent(self, attempts: list[float]) -> list[float]:
        horizon = self.clock() - WINDOW_S
        kept = [when for when in attempts if when > horizon]
        attempts[:] = kept
        return attempts

    def _counts(self, name: str, address: str) -> list[tuple[list[float], int]]:
        """Each count that applies to an attempt of ``name`` from ``address``, with its limit (nothing added)."""
        counts: list[tuple[list[float], int]] = [
            (self._recent(self._by_name.get((name.lower(), address)) or []), self.per_minute),
            (self._recent(self._by_address.get(address) or []), self.per_address)]
        if self.clock() - self._last(self._wrong_by_address, address) <= WINDOW_S:
            counts.append((self._recent_everyone(), self.global_per_minute))
        return counts

    def _recent_everyone(self) -> list[float]:
        horizon = self.clock() - WINDOW_S
        while self._everyone and self._everyone[0] <= horizon:
            self._everyone.popleft()
        return list(self._everyone)

    def admit(self, name: str, address: str) -> float | None:
        """Count an attempt and return None, or refuse it (not counted) with the seconds until one is allowed."""
        with self._lock:
            counts = self._counts(name, address)
            full = [attempts for attempts, limit in counts if len(attempts) >= limit]
            if full:
                return max(1.0, max(attempts[0] for attempts in full) + WINDOW_S - self.clock())
            now = self.clock()
            key = (name.lower(), address)
            self._by_name.put(key, [*counts[0][0], now])
            self._by_address.put(address, [*counts[1][0], now])
            self._everyone.append(now)
            return None

    def allowed(self, name: str, address: str) -> bool:
        """True when an attempt would be admitted now (nothing is counted)."""
        with self._lock:
            return all(len(attempts) < limit for attempts, limit in self._counts(name, address))

    def suspect(self, address: str) -> bool:
        """``address`` gave a wrong password within the last minute."""
        with self._lock:
            return self.clock() - self._last(self._wrong_by_address, address) <= WINDOW_S

    def wrong_password(self, address: str) -> None:
        """An admitted attempt from ``address`` gave a wrong password: the global limit applies to it now."""
        with self._lock:
            self._wrong_by_address.put(address, [self.clock()])

    def failed(self, name: str, address: str) -> None:
        """Count one attempt that gave a wrong password (for callers that check without :meth:`admit`)."""
        self.admit(name, address)
        self.wrong_password(address)

    def succeeded(self, name: str, address: str) -> None:
        """The right password: the name's count from this address starts again (the address's does not)."""
        with self._lock:
            self._by_name.pop((name.lower(), address))


class _RecentTable(Generic[V]):
    """A map of at most ``max_keys`` keys in the order they were last written: writing one more drops the key
    written least recently (a plain dict keeps insertion order; a write moves its key to the end)."""

    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        self._items: dict[object, V] = {}

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: object) -> V | None:
        return self._items.get(key)

    def oldest(self) -> tuple[object, V] | None:
        """The key written least recently, with its value."""
        return next(iter(self._items.items()), None)

    def put(self, key: object, times: V) -> None:
        self._items.pop(key, None)
        self._items[key] = times
        while len(self._items) > self.max_keys:
            del self._items[next(iter(self._items))]

    def pop(self, key: object) -> None:
        self._items.pop(key, None)


@dataclass
class _Held:
    """An address's minute of refused sign-ins: when its audited one came, and the refusals held back since."""

    started: float
    counts: collections.Counter[str] = field(default_factory=collections.Counter)


class RefusedSignIns:
    """Which refused sign-ins (too many attempts, password checks busy, wrong name or password) become an audit row.

    The first refusal of an address opens its minute and is audited at once; the rest of that minute are counted
    in memory, and the count goes into the address's next audited refusal (its next minute), or into a row of its
    own (:meth:`due`) once another minute has passed without one. Past :data:`REFUSAL_ROWS_PER_MINUTE` first
    refusals over all addresses, further addresses are counted together under :data:`OTHER_ADDRESSES`. A flood of
    refused sign-ins thus makes at most one audit row per address per minute, and a bounded number in all: one
    audit row per refused attempt put the database's write lock behind the flood, and a legitimate source's
    C-STORE waited behind them for its commit (issue 28: 8.5 s for 20 instances, against 0.1 s quiet). Thread-safe;
    memory bounded by ``max_keys`` addresses (an address dropped for room loses its held count).
    """

    def __init__(self, clock=time.monotonic, max_keys: int = MAX_TRACKED_KEYS,
                 rows_per_minute: int = REFUSAL_ROWS_PER_MINUTE) -> None:
        self.clock = clock
        self.rows_per_minute = rows_per_minute
        self._held: _RecentTable[_Held] = _RecentTable(max_keys)
        self._rows: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    def tracked_keys(self) -> int:
        with self._lock:
            return len(self._held)

    def note(self, address: str, reason: str) -> str | None:
        """Count a refusal of ``address`` for ``reason``: the detail of the audit row to write now, or None when
        it is held back (counted for a later row)."""
        with self._lock:
            now = self.clock()
            held = self._held.get(address)
            if held is not None and now - held.started < WINDOW_S:
                held.counts[reason] += 1
                return None
            while self._rows and self._rows[0] <= now - WINDOW_S:
                self._rows.popleft()
            if len(self._rows) >= self.rows_per_minute:
                self._hold_for_others(now, reason, held)
                return None
            self._rows.append(now)
            self._held.put(address, _Held(now))
            return reason + (f"; {_summary(held.counts)}" if held is not None and held.counts else "")

    def _hold_for_others(self, now: float, reason: str, held: _Held | None) -> None:
        others = self._held.get(OTHER_ADDRESSES)
        if others is None:
            others = _Held(now)
            self._held.put(OTHER_ADDRESSES, others)
        others.counts[reason] += 1
        if held is not None:
            others.counts.update(held.counts)
            held.counts.clear()

    def due(self) -> list[tuple[str, str]]:
        """(address, detail) of each held-back count whose minute ended a minute ago or more without the address
        coming back: to audit now, once (call at any sign-in; amortised constant work)."""
        rows = []
        with self._lock:
            now = self.clock()
            while (oldest := self._held.oldest()) is not None and now - oldest[1].started >= 2 * WINDOW_S:
                address, held = oldest
                self._held.pop(address)
                if held.counts:
                    rows.append((str(address), _summary(held.counts)))
        return rows


def _summary(counts: collections.Counter[str]) -> str:
    return (f"{sum(counts.values())} further refused sign-in(s), not recorded one by one: "
            + ", ".join(f"{count} {reason}" for reason, count in counts.most_common()))
