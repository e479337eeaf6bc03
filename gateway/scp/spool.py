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
from pathlib import Path

from gateway.errors import OutOfResources, SpoolError
from gateway.models import utcnow

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
STALE_TMP_S = 3600


class Spool:
    """Content-addressed, crash-safe storage for received DICOM files."""

    def __init__(self, root: Path, min_free_bytes: int = 0, node_tag: str = "local") -> None:
        self.root = Path(root)
        self.min_free_bytes = min_free_bytes
        self.node_tag = re.sub(r"[^A-Za-z0-9_.-]", "_", node_tag) or "local"
        self.objects = self.root / "objects"
        self.quarantine_dir = self.root / "quarantine"
        self.outbound = self.root / "outbound"
        self.tmp_root = self.root / "tmp"
        self.tmp = self.tmp_root / self.node_tag  # per node: several nodes may share one spool
        self._known_dirs: set[Path] = set()

    def prepare(self) -> int:
        """Create the layout and remove half-written files left by a crash; return how many were removed.

        Our own ``tmp/<node>/`` is emptied; another node's half-written files are removed only when older than
        an hour (that node is gone: a live one renames its files within seconds).
        """
        for directory in (self.root, self.objects, self.quarantine_dir, self.outbound, self.tmp):
            directory.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - STALE_TMP_S
        stale = [p for p in self.tmp.iterdir()]
        stale += [p for d in self.tmp_root.iterdir() if d.is_dir() and d != self.tmp
                  for p in d.iterdir() if p.stat().st_mtime < cutoff]
        for leftover in stale:
            leftover.unlink(missing_ok=True)
        return len(stale)

    def path_for(self, digest: str) -> Path:
        return self.objects / digest[:2] / f"{digest}.dcm"

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def absolute(self, relative: str) -> Path:
        return self.root / relative

    def store(self, data: bytes, digest: str) -> Path:
        """Write ``data`` under its digest, durably. Returns the final path.

        Raises:
            OutOfResources: free space is below the configured floor, or the disk filled up.
            SpoolError: any other I/O failure.
        """
        final = self.path_for(digest)
        if final.exists() and final.stat().st_size == len(data):
            # Complete by construction (renamed only after fsync); make sure its name is durable too.
            self._fsync_dir(final.parent)
            return final
        self._check_free_space(len(data))
        self._ensure_dir(final.parent)
        self._write_atomically(final, data)
        return final

    def write_outbound(self, case_key: str, name: str, data: bytes) -> Path:
        """Write a de-identified object for ``case_key`` durably, replacing any earlier file of that name.

        Raises:
            OutOfResources: below the free-space floor, or the disk filled up.
            SpoolError: any other I/O failure.
        """
        directory = self.outbound / case_key
        self._check_free_space(len(data))
        self._ensure_dir(directory)
        final = directory / name
        self._write_atomically(final, data)
        return final

    def quarantine(self, data: bytes) -> Path:
        """Keep refused data for diagnosis (best effort: never raises)."""
        try:
            day = self.quarantine_dir / utcnow().strftime("%Y-%m-%d")
            self._ensure_dir(day)
            final = day / f"{secrets.token_hex(8)}.dcm"
            self._check_free_space(len(data))
            self._write_atomically(final, data)
            return final
        except (OSError, SpoolError):
            return Path()

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def _check_free_space(self, needed: int) -> None:
        if self.min_free_bytes and self.free_bytes() - needed < self.min_free_bytes:
            raise OutOfResources("free space in the spool is below storage.min_free_bytes")

    def _write_atomically(self, final: Path, data: bytes) -> None:
        tmp = self.tmp / f"{secrets.token_hex(8)}.part"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
            self._fsync_dir(final.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno in _NO_SPACE:
                raise OutOfResources("the spool disk is full") from exc
            raise SpoolError(f"spool write failed: {exc.strerror}") from exc

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
