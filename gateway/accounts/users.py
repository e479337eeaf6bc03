"""Portal accounts, for the portal and ``spine-gateway user add|list|disable``: password hashing (argon2id) and
checking.

A referrer account writes for one configured source, a reviewer account is one configured reviewer, an
operator account sees everything the ``status`` command shows. Passwords are stored only as argon2id hashes.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from argon2.low_level import ARGON2_VERSION

from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.storage.models import WebUser, utcnow

ROLES = ("referrer", "reviewer", "ops")
HASHING_NICE = 19
MIN_PASSWORD_LENGTH = 10
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
# argon2id at OWASP's recommended minimum (19 MiB, 2 passes, 1 lane; Password Storage Cheat Sheet), not argon2-cffi's
# default (RFC 9106's second option: 64 MiB, 3 passes, 4 lanes): each check in flight holds its memory, and two
# checks at once during a sign-in flood took the node 134 MB above its warm total, past issue 28's 100 MB. A hash
# stored with other parameters still verifies, and is replaced at its user's next sign-in (:func:`rehash_if_outdated`).
HASH_MEMORY_KIB = 19 * 1024
HASH_PASSES = 2
_HASHER = PasswordHasher(time_cost=HASH_PASSES, memory_cost=HASH_MEMORY_KIB, parallelism=1)


def _dummy_hash(hasher: PasswordHasher) -> str:
    """An argon2id hash with ``hasher``'s parameters that no password matches, checked against when the user
    does not exist, so that an unknown name costs the same time as a known one. Written out rather than
    computed: hashing at import would make every process that imports the portal use argon2's memory once
    (the node's peak memory)."""
    salt = base64.b64encode(secrets.token_bytes(hasher.salt_len)).rstrip(b"=").decode()
    digest = base64.b64encode(secrets.token_bytes(hasher.hash_len)).rstrip(b"=").decode()
    return (f"$argon2id$v={ARGON2_VERSION}$m={hasher.memory_cost},t={hasher.time_cost},p={hasher.parallelism}"
            f"${salt}${digest}")


_DUMMY_HASH = _dummy_hash(_HASHER)


class AccountError(GatewayError):
    """A user's mistake with an account (bad name, role, source, reviewer or password): one line."""


@dataclass(frozen=True)
class Account:
    name: str
    role: str
    source: str | None
    reviewer: str | None
    enabled: bool
    last_login_at: str | None


def hash_password(password: str) -> str:
    """The argon2id hash of ``password`` (with its own salt and parameters).

    Raises:
        AccountError: shorter than :data:`MIN_PASSWORD_LENGTH`.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the password must be at least {MIN_PASSWORD_LENGTH} characters")
    return _HASHER.hash(password)


def rehash_if_outdated(user: WebUser, password: str) -> bool:
    """After a successful sign-in: store ``password``'s hash with today's parameters if ``user``'s was made with
    others (call inside a database connection). True when it was replaced."""
    if not _HASHER.check_needs_rehash(user.password_hash):
        return False
    user.password_hash = _HASHER.hash(password)
    WebUser.update(password_hash=user.password_hash).where(WebUser.id == user.id).execute()
    return True


def check_password(user: WebUser | None, password: str) -> bool:
    """True when ``user`` exists, is enabled and ``password`` is theirs (constant work either way)."""
    try:
        return bool(_HASHER.verify(user.password_hash if user is not None else _DUMMY_HASH, password)) \
            and user is not None and user.enabled
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _give_way_to_others() -> None:
    """Lowest CPU priority for the calling thread (Linux: the nice value is a thread's own)."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASHING_NICE)


class PasswordCheckBusy(GatewayError):
    """Every password-check slot stayed taken for the whole wait: answer 503 with Retry-After."""


class PasswordChecks:
    """Password checks with at most ``concurrency`` argon2id hashes at once (:data:`HASH_MEMORY_KIB` each).

    A flood of sign-ins then costs bounded memory and CPU: the others wait up to ``wait_s`` for a slot and are
    refused (:class:`PasswordCheckBusy`) after it. One client address has at most one check running or waiting
    (a second is refused at once), so the queue is as long as the number of addresses, not of requests, and a
    user from another address is not kept waiting behind a flood's hundreds. Unbounded, 48 parallel sign-ins took the
    node to 1.5 GB and
    /healthz to 13.9 s (issue 28).
    """

    def __init__(self, concurrency: int, wait_s: float) -> None:
        self.concurrency = concurrency
        self.wait_s = wait_s
        self._free = concurrency
        self._turns = threading.Condition()
        self._first_waiting = 0  # checks from addresses with no wrong password this minute, waiting for a slot
        # argon2id runs its lanes in threads of its own, which take the nice value of the thread that starts
        # them: hashed in these threads, a flood's hashes give way to DICOM and pages (C-ECHO 0.8-1.7 s otherwise)
        self.hashing = ThreadPoolExecutor(concurrency, thread_name_prefix="password-check",
                                          initializer=_give_way_to_others)
        self._addresses: set[str] = set()
        self._lock = threading.Lock()

    def check(self, user: WebUser | None, password: str, address: str = "-", first: bool = False) -> bool:
        """:func:`check_password` in a slot. ``first``: the address gave no wrong password lately (the login
        limiter knows); its check takes the next free slot before those of addresses that did, so a sign-in
        flood does not keep a legitimate user waiting past ``wait_s``.

        Raises:
            PasswordCheckBusy: ``address`` has a check running or waiting, or no slot came free within ``wait_s``.
        """
        with self._lock:
            if address in self._addresses:
                raise PasswordCheckBusy("a password check from this address is under way")
            self._addresses.add(address)
        try:
            if not self._take_slot(first):
                raise PasswordCheckBusy(f"no password check slot free within {self.wait_s:g} s")
            try:
                return self.hashing.submit(check_password, user, password).result()
            finally:
                self._give_back_slot()
        finally:
            with self._lock:
                self._addresses.discard(address)

    def _take_slot(self, first: bool) -> bool:
        deadline = time.monotonic() + self.wait_s
        with self._turns:
            self._first_waiting += first
            try:
                while self._free == 0 or (not first and self._first_waiting > 0):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._turns.wait(remaining)
                self._free -= 1
                return True
            finally:
                self._first_waiting -= first

    def _give_back_slot(self) -> None:
        with self._turns:
            self._free += 1
            self._turns.notify_all()


def _check_scope(role: str, flag: str, kind: str, given_role: str, given: str | None, names: list[str]) -> None:
    """A referrer's source or a reviewer's reviewer: given, and configured (the message lists the names)."""
    if given_role != role:
        return
    configured = f"configured: {', '.join(names)}" if names else f"no {kind} is configured"
    if not given:
        raise AccountError(f"a {role} needs {flag}, the name of a configured {kind} ({configured})")
    if given not in names:
        raise AccountError(f"{flag} {given}: no {kind} of that name is configured ({configured})")


def add_user(config: GatewayConfig, name: str, role: str, password: str, *, source: str | None = None,
             reviewer: str | None = None) -> WebUser:
    """Create an account (call inside a database connection).

    Raises:
        AccountError: bad name or role, a referrer without a configured source, a reviewer without a configured
            reviewer, a short password, or the name is taken.
    """
    if not _NAME.match(name or ""):
        raise AccountError("the user name must be 1-64 letters, digits, '.', '_', '@' or '-'")
    if role not in ROLES:
        raise AccountError(f"--role must be one of {', '.join(ROLES)}")
    _check_scope("referrer", "--source", "source", role, source, [s.name for s in config.sources])
    _check_scope("reviewer", "--reviewer", "reviewer", role, reviewer, [r.name for r in config.reviewers])
    if role != "referrer" and source or role != "reviewer" and reviewer:
        raise AccountError("--source is for referrers and --reviewer for reviewers only")
    password_hash = hash_password(password)
    with WebUser._meta.database.atomic():  # the database the accounts' models are bound to
        if WebUser.get_or_none(WebUser.name == name) is not None:
            raise AccountError(f"user {name!r} exists already")
        return WebUser.create(name=name, role=role, source=source, reviewer=reviewer, password_hash=password_hash)


def list_users() -> list[Account]:
    """Every account, by name (call inside a database connection)."""
    return [Account(u.name, u.role, u.source, u.reviewer, u.enabled,
                    u.last_login_at.isoformat() + "Z" if u.last_login_at else None)
            for u in WebUser.select().order_by(WebUser.name)]


def disable_user(name: str) -> None:
    """Disable an account and end its sessions (call inside a database connection).

    Raises:
        AccountError: no such user.
    """
    from gateway.storage.models import WebSession

    with WebUser._meta.database.atomic():  # the database the accounts' models are bound to
        user = WebUser.get_or_none(WebUser.name == name)
        if user is None:
            raise AccountError(f"no user {name!r}")
        WebUser.update(enabled=False).where(WebUser.id == user.id).execute()
        WebSession.delete().where(WebSession.user == user.id).execute()


def record_login(user: WebUser) -> None:
    WebUser.update(last_login_at=utcnow()).where(WebUser.id == user.id).execute()
