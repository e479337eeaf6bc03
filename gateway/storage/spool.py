"""The durable spool: received bytes made safe on disk before anything is acknowledged.

Layout under ``storage.spool_dir``::

    objects/ab/<sha256 of the dataset bytes>.dcm   originals, content-addressed (a resend is stored once)
    outbound/<case key>/<pseudonymous UID>.dcm      de-identified objects ready to leave
    quarantine/<date>/<random>.dcm                  refused data kept for diagnosis
    tmp/<node>/                                     files being written, per node; emptied at start-up

A write goes to ``tmp/``, is fsynced, renamed into place, and the directory is fsynced, so a file under
``objects/`` is always complete: a kill -9 at any moment leaves at worst a stray file in ``tmp/``.
File names carry no identifiers, only content hashes and random tokens.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gateway.errors import OutOfResources, SpoolError
from gateway.storage.models import utcnow

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
STALE_TMP_S = 3600


def _safe_tag(node_tag: str) -> str:
    """A node's name as a directory name under ``tmp/``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", node_tag) or "local"


def _entries(directory: Path) -> list[Path]:
    """The files in another node's ``tmp/`` directory, which that node (alive, sharing the spool) may be renaming
    away or removing meanwhile: gone is empty, never an error that stops this node's start."""
    try:
        return list(directory.iterdir())
    except FileNotFoundError:
        return []


def _modified(path: Path) -> float:
    """``path``'s modification time; +inf when it went meanwhile (renamed into place by its node: not stale)."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


class Spool:
    """Content-addressed, crash-safe storage for received DICOM files."""

    def __init__(self, root: Path, min_free_bytes: int = 0, node_tag: str = "local") -> None:
        self.root = Path(root)
        self.min_free_bytes = min_free_bytes
        self.node_tag = _safe_tag(node_tag)
        self.objects = self.root / "objects"
        self.quarantine_dir = self.root / "quarantine"
        self.outbound = self.root / "outbound"
        self.tmp_root = self.root / "tmp"
        self.tmp = self.tmp_root / self.node_tag  # per node: several nodes may share one spool
        self._known_dirs: set[Path] = set()
        self._writers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="spool-batch")

    def prepare(self) -> int:
        """Create the layout and remove half-written files left by a crash; return how many were removed.

        Our own ``tmp/<node>/`` is emptied; another node's half-written files are removed only when older than
        an hour (that node is gone: a live one renames its files within seconds).
        """
        for directory in (self.root, self.objects, self.quarantine_dir, self.outbound, self.tmp):
            directory.mkdir(parents=True, exist_ok=True)
        self._prepare_object_buckets()
        cutoff = time.time() - STALE_TMP_S
        stale = [p for p in self.tmp.iterdir()]
        stale += [p for d in self.tmp_root.iterdir() if d.is_dir() and d != self.tmp
                  for p in _entries(d) if _modified(p) < cutoff]
        for leftover in stale:
            leftover.unlink(missing_ok=True)
        return len(stale)

    def remove_partial_of(self, node_tag: str) -> int:
        """Empty ``tmp/<node_tag>/`` (a receiving process of this node that is known to be gone)."""
        tmp = self.tmp_root / _safe_tag(node_tag)
        leftovers = list(tmp.iterdir()) if tmp.is_dir() else []
        for leftover in leftovers:
            leftover.unlink(missing_ok=True)
        return len(leftovers)

    def _prepare_object_buckets(self) -> None:
        """Create the 256 ``objects/xx/`` directories up front (and make them durable once), so that the first
        instances received into a new spool do not each pay for a directory creation and two fsyncs."""
        created = False
        for bucket in range(256):
            directory = self.objects / f"{bucket:02x}"
            if not directory.is_dir():
                directory.mkdir(exist_ok=True)
                created = True
            self._known_dirs.add(directory)
        if created:
            self._fsync_dir(self.objects)

    def path_for(self, digest: str) -> Path:
        return self.objects / digest[:2] / f"{digest}.dcm"

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def absolute(self, relative: str) -> Path:
        return self.root / relative

    def store(self, data: bytes | Sequence[bytes | memoryview], digest: str, *, sync_name: bool = True) -> Path:
        """Write ``data`` under its digest, durably. Returns the final path.

        With ``sync_name`` False the file is whole and fsynced but its name is not yet durable: the caller makes it
        so with ``sync_names`` before anything refers to it (several files' names in one go).

        Raises:
            OutOfResources: free space is below the configured floor, or the disk filled up.
            SpoolError: any other I/O failure.
        """
        final = self.path_for(digest)
        size = len(data) if isinstance(data, (bytes, bytearray, memoryview)) else sum(len(part) for part in data)
        if final.exists() and final.stat().st_size == size:
            # Complete by construction (renamed only after fsync); make sure its name is durable too.
            if sync_name:
                self._fsync_dir(final.parent)
            return final
        self.check_free_space(size)
        self._ensure_dir(final.parent)
        self._write_atomically(final, data, sync_name=sync_name)
        return final

    def sync_names(self, paths: Iterable[Path]) -> None:
        """Make the names of files ``store`` wrote with ``sync_name`` False durable: each directory fsynced once
        (after the first, the journal usually holds the others' renames already).

        Raises:
            SpoolError: the directory could not be synced.
        """
        try:
            for directory in sorted({path.parent for path in paths}):
                self._fsync_dir(directory)
        except OSError as exc:
            raise self.io_error(exc) from exc

    def write_temporary(self, parts: Sequence[bytes | memoryview]) -> Path:
        """Write ``parts`` one after the other into a new file under ``tmp/`` and fsync it; return its path.

        The first half of ``store`` for a caller that learns the digest meanwhile: ``place`` finishes it.

        Raises:
            OutOfResources: below the free-space floor, or the disk filled up.
            SpoolError: any other I/O failure.
        """
        self.check_free_space(sum(len(part) for part in parts))
        return self._write_synced(parts)

    def place(self, written: Path, digest: str) -> Path:
        """Rename a file from ``write_temporary`` to its content address and make the name durable.

        Raises:
            OutOfResources: the disk filled up.
            SpoolError: any other I/O failure.
        """
        final = self.path_for(digest)
        self._rename_durably([written], [final])  # same digest already there: replaced by identical bytes
        return final

    def discard(self, written: Path) -> None:
        written.unlink(missing_ok=True)

    def write_outbound(self, case_key: str, name: str, data: bytes) -> Path:
        """Write a de-identified object for ``case_key`` durably, replacing any earlier file of that name.

        Raises:
            OutOfResources: below the free-space floor, or the disk filled up.
            SpoolError: any other I/O failure.
        """
        return self.write_outbound_batch(case_key, [(name, data)])[0]

    def write_outbound_batch(self, case_key: str, objects: Sequence[tuple[str, bytes | Path]]) -> list[Path]:
        """``write_outbound`` for several objects at once: each file is written and fsynced (several at a
        time, so that the file system can commit them together), then renamed into place, and the directory
        is fsynced once for all. Each file is whole under its name; the names are all durable on return.
        An object given as a ``Path`` is a file already written and fsynced under ``tmp/`` (a large object
        encoded by its de-identification worker): it is only renamed into place.

        Raises:
            OutOfResources: below the free-space floor, or the disk filled up while writing (every earlier
                file of the same names is then left as it was).
            SpoolError: any other I/O failure.
        """
        if not objects:
            return []
        directory = self.outbound / case_key
        in_memory = [data for _, data in objects if not isinstance(data, Path)]
        try:
            self.check_free_space(sum(len(data) for data in in_memory))
        except OutOfResources:
            _remove_written(objects)
            raise
        self._ensure_dir(directory)
        pending = [data if isinstance(data, Path) else self._writers.submit(self._write_synced, (data,))
                   for _, data in objects]
        written: list[Path] = []
        failure: OutOfResources | SpoolError | None = None
        for item in pending:
            try:
                written.append(item if isinstance(item, Path) else item.result())
            except (OutOfResources, SpoolError) as exc:
                failure = failure or exc
        if failure is not None:
            for tmp in written:
                tmp.unlink(missing_ok=True)
            raise failure
        finals = [directory / name for name, _ in objects]
        self._rename_durably(written, finals)
        return finals

    def quarantine(self, data: bytes) -> Path:
        """Keep refused data for diagnosis (best effort: never raises)."""
        try:
            day = self.quarantine_dir / utcnow().strftime("%Y-%m-%d")
            self._ensure_dir(day)
            final = day / f"{secrets.token_hex(8)}.dcm"
            self.check_free_space(len(data))
            self._write_atomically(final, data)
            return final
        except (OSError, SpoolError):
            return Path()

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def check_free_space(self, needed: int) -> None:
        if self.min_free_bytes and self.free_bytes() - needed < self.min_free_bytes:
            raise OutOfResources("free space in the spool is below storage.min_free_bytes")

    def _write_atomically(self, final: Path, data: bytes | Sequence[bytes | memoryview], *,
                          sync_name: bool = True) -> None:
        tmp = self._write_synced((data,) if isinstance(data, (bytes, bytearray, memoryview)) else data)
        self._rename_durably([tmp], [final], sync_names=sync_name)

    def _rename_durably(self, written: Sequence[Path], finals: Sequence[Path], *, sync_names: bool = True) -> None:
        """Rename fsynced temporary files to their final names (all in one directory) and fsync that
        directory once (unless ``sync_names`` is False: ``sync_names()`` later). On failure the temporary files not
        yet renamed are removed.

        Raises:
            OutOfResources: the disk filled up.
            SpoolError: any other I/O failure.
        """
        try:
            self._ensure_dir(finals[0].parent)
            for tmp, final in zip(written, finals):
                os.rename(tmp, final)
            if sync_names:
                self._fsync_dir(finals[0].parent)
        except OSError as exc:
            for tmp in written:
                tmp.unlink(missing_ok=True)
            raise self.io_error(exc) from exc

    def _write_synced(self, parts: Sequence[bytes | memoryview]) -> Path:
        """A new file under ``tmp/`` holding ``parts`` in order, fsynced. Removed again on failure."""
        tmp = self.tmp / f"{secrets.token_hex(8)}.part"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                _write_all(fd, parts)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise self.io_error(exc) from exc
        return tmp

    @staticmethod
    def io_error(exc: OSError) -> OutOfResources | SpoolError:
        if exc.errno in _NO_SPACE:
            return OutOfResources("the spool disk is full")
        return SpoolError(f"spool write failed: {exc.strerror}")

    def _ensure_dir(self, directory: Path) -> None:
        if directory in self._known_dirs:
            return
        if not directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True)
            self._fsync_dir(directory.parent)
        self._known_dirs.add(directory)

    @staticmethod
    def _fsync_dir(directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_all(fd: int, parts: Sequence[bytes | memoryview]) -> None:
    """``os.writev`` until every byte of ``parts`` is written (a write may be short)."""
    views = [memoryview(part).cast("B") for part in parts if len(part)]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


def _remove_written(objects: Sequence[tuple[str, bytes | Path]]) -> None:
    """The already-written temporary files of a batch that will not be placed."""
    for _, data in objects:
        if isinstance(data, Path):
            data.unlink(missing_ok=True)
