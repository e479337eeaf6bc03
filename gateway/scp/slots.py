"""``node.max_associations`` for the whole node, when several processes accept on its port.

Each process counts its own open associations in a slot of a small file in memory (4 bytes a process, a
``memfd`` the node makes and its receiving processes inherit); a new association is admitted only if the sum of
all slots is under the limit, read and written under an exclusive ``flock`` so that two processes admitting at
the same instant cannot both take the last place. The node empties a slot of a receiving process that died (its
associations died with it) and marks it ``NOT_ACCEPTING`` until the process starts again.

The same file counts each peer's associations, so that one calling AE title or one calling host holds at most
its share of the limit (``node.peer_share``) in all processes together: after the per-process counts, each
process has a table of ``(peer key hash, count)`` entries for the associations it holds (two entries an
association at most: its AE title and its host), emptied with its slot when it dies.

The same counts share the connections out: a process accepts a new connection only while no other process
accepting on the port serves fewer associations (:meth:`AssociationSlots.least_busy`), so that five senders
starting together are spread over every process instead of where the kernel happened to wake first.

The file's last part holds the node's association-rate buckets (``gateway.scp.rate``), so that a peer's rate is
counted once for all the processes: ``RATE_BUCKETS`` entries of ``(peer key hash, tokens, when counted)``, a key
kept in a window of ``RATE_PROBES`` entries from its hash; when a window is full, its entry refilled or seen
longest ago gives way.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import struct
import tempfile
import threading
from collections.abc import Callable

_SLOT = struct.Struct("<i")
_PEER = struct.Struct("<Qi4x")  # a peer key's hash (0: free entry) and this process's associations of it
KEYS_PER_ASSOCIATION = 2  # the calling AE title and the calling host
NODE_FULL = "node"  # take_within's answer when node.max_associations are all taken
NOT_ACCEPTING = -1  # a receiving process not started yet, or gone: neither counted nor waited for
_BUCKET = struct.Struct("<Qdd")  # a peer key's hash (0: free entry), its tokens, when they were counted
RATE_BUCKETS = 4096
RATE_PROBES = 8


class AssociationSlots:
    """The node's open associations, counted per process in ``path``; this process counts in slot ``number``."""

    def __init__(self, fd: int, processes: int, number: int, limit: int) -> None:
        self._fd = fd
        self.processes = processes
        self.number = number
        self.limit = limit
        self._lock = threading.Lock()

    @classmethod
    def create(cls, processes: int, limit: int) -> AssociationSlots:
        """The node's own (slot 0), every slot empty: no process accepts yet."""
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("spine-gateway-associations", os.MFD_CLOEXEC)
        else:
            fd = os.dup(tempfile.TemporaryFile().fileno())
        slots = cls(fd, processes, 0, limit)
        os.ftruncate(fd, slots._rate_offset + RATE_BUCKETS * _BUCKET.size)
        for number in range(1, processes):
            slots._write(number, NOT_ACCEPTING)
        return slots

    @classmethod
    def inherited(cls, fd: int, processes: int, number: int, limit: int) -> AssociationSlots:
        """A receiving process's, on the node's file (``fd`` inherited). Opened again, not used as inherited: a
        ``flock`` belongs to an open file, which the inherited descriptor would share with the node."""
        own = os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
        os.close(fd)
        return cls(own, processes, number, limit)

    def fileno(self) -> int:
        return self._fd

    def accepting(self) -> None:
        """This process accepts on the port from now on (a receiving process, once its server runs)."""
        with self._locked():
            self._write(self.number, max(0, self._counts()[self.number]))

    def take(self) -> bool:
        """One more association in this process, if the node has room for it; True when taken."""
        return self.take_within({}) is None

    def take_within(self, peers: dict[str, int]) -> str | None:
        """One more association in this process, if the node has room for it and each of ``peers`` (key ->
        its share) holds fewer associations than its share. Returns None when taken, else what is full:
        ``NODE_FULL`` or the key of the first peer at its share."""
        with self._locked():
            counts = self._counts()
            if sum(max(0, count) for count in counts) >= self.limit:
                return NODE_FULL
            for key, share in peers.items():
                if self._peer_total(_key_hash(key)) >= share:
                    return key
            self._write(self.number, max(0, counts[self.number]) + 1)
            for key in peers:
                self._count_peer(_key_hash(key), +1)
            return None

    def give_back(self, peers: tuple[str, ...] | list[str] = ()) -> None:
        """One association of this process (and of each of ``peers``, as given to ``take_within``) has ended."""
        with self._locked():
            self._write(self.number, max(0, self._counts()[self.number] - 1))
            for key in peers:
                self._count_peer(_key_hash(key), -1)

    def peer_total(self, key: str) -> int:
        """Associations of peer ``key`` in every process."""
        with self._locked():
            return self._peer_total(_key_hash(key))

    def empty(self, number: int) -> None:
        """Slot ``number``'s process is gone: its associations with it, and it accepts no more until it starts
        again."""
        with self._locked():
            self._write(number, NOT_ACCEPTING)
            os.pwrite(self._fd, bytes(self._table_size), self._table_offset(number))

    def total(self) -> int:
        with self._locked():
            return sum(max(0, count) for count in self._counts())

    def least_busy(self, negotiating: int = 0) -> bool:
        """No other process accepting on the port serves fewer associations than this one, counting this one's
        ``negotiating`` connections (accepted, not yet associated) as associations."""
        with self._locked():
            counts = self._counts()
        others = [count for number, count in enumerate(counts) if number != self.number and count >= 0]
        return not others or max(0, counts[self.number]) + negotiating <= min(others)

    def rate_buckets(self) -> SharedRateBuckets:
        """The node's association-rate buckets, kept in this file (``gateway.scp.rate.Buckets``)."""
        return SharedRateBuckets(self)

    def close(self) -> None:
        os.close(self._fd)

    @property
    def _rate_offset(self) -> int:
        return self._table_offset(self.processes)

    def _counts(self) -> list[int]:
        data = os.pread(self._fd, self.processes * _SLOT.size, 0).ljust(self.processes * _SLOT.size, b"\0")
        return [value for (value,) in _SLOT.iter_unpack(data)]

    def _write(self, number: int, value: int) -> None:
        os.pwrite(self._fd, _SLOT.pack(value), number * _SLOT.size)

    @property
    def _table_size(self) -> int:
        return _peer_table_size(self.limit)

    def _table_offset(self, number: int) -> int:
        return self.processes * _SLOT.size + number * self._table_size

    def _table(self, number: int) -> list[tuple[int, int]]:
        data = os.pread(self._fd, self._table_size, self._table_offset(number)).ljust(self._table_size, b"\0")
        return list(_PEER.iter_unpack(data))

    def _peer_total(self, key_hash: int) -> int:
        return sum(count for number in range(self.processes) for hashed, count in self._table(number)
                   if hashed == key_hash and count > 0)

    def _count_peer(self, key_hash: int, change: int) -> None:
        """Add ``change`` to this process's count of the peer; an entry at zero is freed."""
        table = self._table(self.number)
        index = next((i for i, (hashed, _) in enumerate(table) if hashed == key_hash), None)
        if index is None:
            if change < 0:
                return
            index = next((i for i, (hashed, _) in enumerate(table) if hashed == 0), None)
            if index is None:  # cannot happen: an entry per key of each association this process holds
                return
            count = 0
        else:
            count = table[index][1]
        count = max(0, count + change)
        entry = _PEER.pack(key_hash if count else 0, count)
        os.pwrite(self._fd, entry, self._table_offset(self.number) + index * _PEER.size)

    def _locked(self) -> _FileLock:
        return _FileLock(self._fd, self._lock)


class SharedRateBuckets:
    """``gateway.scp.rate.Buckets`` in the node's association file, under its lock: every process that accepts
    on the port reads and spends the same buckets."""

    def __init__(self, slots: AssociationSlots) -> None:
        self._slots = slots

    def locked(self) -> contextlib.AbstractContextManager[None]:
        return self._slots._locked()

    def get(self, key: str) -> tuple[float, float] | None:
        key_hash = _key_hash(key)
        return next(((tokens, counted) for hashed, tokens, counted in self._window(key_hash)[1]
                     if hashed == key_hash), None)

    def put(self, key: str, bucket: tuple[float, float],
            forgettable: Callable[[tuple[float, float]], bool]) -> None:
        key_hash = _key_hash(key)
        start, window = self._window(key_hash)
        index = self._place(key_hash, window, forgettable)
        os.pwrite(self._slots.fileno(), _BUCKET.pack(key_hash, *bucket),
                  self._slots._rate_offset + (start + index) * _BUCKET.size)

    @staticmethod
    def _place(key_hash: int, window: list[tuple[int, float, float]],
               forgettable: Callable[[tuple[float, float]], bool]) -> int:
        """The key's own entry in its window, else a free or refilled one, else the one counted longest ago."""
        for wanted in (lambda e: e[0] == key_hash, lambda e: e[0] == 0, lambda e: forgettable((e[1], e[2]))):
            index = next((i for i, entry in enumerate(window) if wanted(entry)), None)
            if index is not None:
                return index
        return min(range(len(window)), key=lambda i: window[i][2])

    def _window(self, key_hash: int) -> tuple[int, list[tuple[int, float, float]]]:
        start = key_hash % (RATE_BUCKETS - RATE_PROBES + 1)  # a window never wraps past the end
        size = RATE_PROBES * _BUCKET.size
        data = os.pread(self._slots.fileno(), size, self._slots._rate_offset + start * _BUCKET.size).ljust(size, b"\0")
        return start, list(_BUCKET.iter_unpack(data))


def _peer_table_size(limit: int) -> int:
    return limit * KEYS_PER_ASSOCIATION * _PEER.size


def _key_hash(key: str) -> int:
    """A peer key's 64-bit hash, never 0 (the free entry's mark)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") or 1


class _FileLock:
    """The thread lock (flock is per open file, shared by this process's threads) and then the file lock."""

    def __init__(self, fd: int, lock: threading.Lock) -> None:
        self._fd, self._lock = fd, lock

    def __enter__(self) -> None:
        self._lock.acquire()
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc_info: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._lock.release()

