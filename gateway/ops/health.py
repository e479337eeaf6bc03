"""The node's health checks: what ``GET /healthz`` and ``spine-gateway status`` report.

A check is a plain callable that returns None when healthy and raises :class:`HealthCheckFailed` with a short,
PHI-free finding otherwise. The write probes (a committed row, an fsynced file) run in a thread of their own
with a deadline, so that a hung disk or database makes the check fail instead of holding its caller.
They know nothing of HTTP: the HTTP application (:mod:`gateway.http.health`) serves their verdict, and the
status read-out (:mod:`gateway.ops.status`) runs them from the command line.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import peewee

from gateway.errors import GatewayError


class HealthCheckFailed(GatewayError):
    """A health check's finding; its message is shown in ``/healthz`` (it must carry no PHI)."""


HealthCheck = Callable[[], None]
"""A health check returns None when healthy and raises (preferably :class:`HealthCheckFailed`) otherwise."""


PROBE_BYTES = 4096


class _Probe:
    """Runs a blocking write probe in a thread of its own and waits for it at most ``timeout_s``.

    A probe stuck on a hung disk is not started again while it is still running: the check fails at once, so
    that polling ``/healthz`` cannot pile up threads behind it.
    """

    def __init__(self, name: str, probe: Callable[[], None], timeout_s: float) -> None:
        self.name = name
        self.probe = probe
        self.timeout_s = timeout_s
        self._running: threading.Thread | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            if self._running is not None and self._running.is_alive():
                raise HealthCheckFailed(f"{self.name} write probe still running after {self.timeout_s:g} s")
            self._error = None
            thread = threading.Thread(target=self._run, name=f"health-{self.name}", daemon=True)
            self._running = thread
            thread.start()
        thread.join(self.timeout_s)
        if thread.is_alive():
            raise HealthCheckFailed(f"{self.name} write probe did not finish within {self.timeout_s:g} s")
        if self._error is not None:
            error = self._error
            if isinstance(error, HealthCheckFailed):
                raise error
            raise HealthCheckFailed(f"{self.name} cannot take a write ({type(error).__name__})")

    def _run(self) -> None:
        try:
            self.probe()
        except BaseException as exc:  # noqa: BLE001 - any failure of the probe is the finding
            self._error = exc


def database_check(database: peewee.Database | peewee.DatabaseProxy, probe_name: str | None = None,
                   timeout_s: float = 2.0) -> HealthCheck:
    """Healthy when the database answers ``SELECT 1`` and, with ``probe_name``, commits a write of the
    ``health_probe`` row of that name (a full disk or a read-only database fails it) within ``timeout_s``."""

    def select_one() -> None:
        try:
            with database.connection_context():
                database.execute_sql("SELECT 1")
        except (peewee.PeeweeException, peewee.DatabaseError, AttributeError, OSError) as exc:
            raise HealthCheckFailed(f"database did not answer ({type(exc).__name__})") from None

    if probe_name is None:
        return select_one
    return _Probe("database", lambda: write_database_probe(database, probe_name), timeout_s)


def write_database_probe(database: peewee.Database | peewee.DatabaseProxy, probe_name: str) -> None:
    """Commit a new ``written_at`` on the ``health_probe`` row ``probe_name`` (created when missing).

    Raises:
        peewee.DatabaseError (or a driver's error): the database refused or could not make the write durable.
    """
    from gateway.storage.models import HealthProbe, utcnow

    with database.connection_context(), database.atomic():
        HealthProbe.insert(name=probe_name[:128], written_at=utcnow()).on_conflict(
            conflict_target=[HealthProbe.name], update={HealthProbe.written_at: utcnow()}).execute()


def scp_check(is_accepting: Callable[[], bool]) -> HealthCheck:
    """Healthy when the DICOM SCP reports that it accepts associations."""

    def check() -> None:
        if not is_accepting():
            raise HealthCheckFailed("DICOM SCP is not accepting associations")

    return check


def spool_space_check(spool_dir: Path, min_free_bytes: int, timeout_s: float | None = None) -> HealthCheck:
    """Healthy when the spool's file system has more than ``storage.min_free_bytes`` free and, with
    ``timeout_s``, takes a small fsynced file within that time (a full, read-only or hung disk fails it)."""

    def free_space() -> None:
        try:
            free = shutil.disk_usage(spool_dir).free
        except OSError as exc:
            raise HealthCheckFailed(f"spool directory unreadable ({type(exc).__name__})") from None
        if free < min_free_bytes:
            raise HealthCheckFailed(f"spool free space {free} bytes is below storage.min_free_bytes "
                                    f"({min_free_bytes})")

    if timeout_s is None:
        return free_space

    def space_and_write() -> None:
        free_space()
        write_spool_probe(Path(spool_dir))

    return _Probe("spool", space_and_write, timeout_s)


def write_spool_probe(spool_dir: Path) -> None:
    """Write, fsync and remove a :data:`PROBE_BYTES` file in the spool directory.

    Raises:
        OSError: the spool cannot take the write (full, read-only, gone).
    """
    path = spool_dir / f".health-probe-{os.getpid()}-{threading.get_ident()}"
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(descriptor, b"\0" * PROBE_BYTES)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    finally:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def standard_health_checks(database: peewee.Database | peewee.DatabaseProxy, is_accepting: Callable[[], bool],
                           spool_dir: Path, min_free_bytes: int, *, probe_name: str | None = None,
                           probe_timeout_s: float | None = None) -> dict[str, HealthCheck]:
    """The three checks ``/healthz`` runs in a gateway: ``database``, ``scp``, ``spool``. With ``probe_name``
    and ``probe_timeout_s``, the database and the spool must each take a write within that time."""
    timeout = probe_timeout_s if probe_name is not None else None
    return {"database": database_check(database, probe_name, timeout or 2.0) if timeout else database_check(database),
            "scp": scp_check(is_accepting),
            "spool": spool_space_check(spool_dir, min_free_bytes, timeout)}


def run_health_checks(checks: Mapping[str, HealthCheck]) -> dict[str, Any]:
    """``{"status": "ok"|"unhealthy", "checks": {name: {"ok", "detail"}}, "failed": [...]}`` (no PHI)."""
    results: dict[str, dict[str, Any]] = {}
    for name, check in checks.items():
        try:
            check()
            results[name] = {"ok": True}
        except HealthCheckFailed as failure:
            results[name] = {"ok": False, "detail": str(failure)}
        except Exception as exc:  # noqa: BLE001 - an unexpected failure is still an unhealthy check
            results[name] = {"ok": False, "detail": type(exc).__name__}
    failed = sorted(name for name, result in results.items() if not result["ok"])
    if failed:
        return {"status": "unhealthy", "failed": failed, "checks": results}
    return {"status": "ok", "checks": results}
