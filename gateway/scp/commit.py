"""Group commit: the rows of instances received on every association made durable by one transaction.

A C-STORE is answered only once its row is committed, and on SQLite (WAL, ``synchronous=FULL``) and on
PostgreSQL every commit waits for its own flush to disk. One commit per instance, each association thread
committing on its own, had the threads queueing for the write lock (SQLite's ``BEGIN IMMEDIATE``) and the
disk flushing once per instance. Here the handlers hand their rows to ``GroupCommit.submit`` and wait; one of
them at a time (the leader) writes every row waiting at that moment in one transaction, commits once, and
then releases each waiting handler with its own outcome. Rows that arrive while a group is being committed
wait for the next group, whose leader is the first of them (leader/follower, as in database group commit:
no thread of its own, and a single association pays no hand-off at all).

Nothing is answered before the commit that holds its row has returned; a commit that fails fails every row
of its group (each handler answers 0xA700); a kill at any moment leaves committed rows or none.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_MAX_GROUP = 64  # rows per transaction: bounds a group's time and the rows one failure takes down


class Waiting(Generic[T, R]):
    """One submitted item: ``result`` or ``error`` once its group is committed (or has failed)."""

    __slots__ = ("item", "result", "error", "_done", "_lead")

    def __init__(self, item: T) -> None:
        self.item = item
        self.result: R | None = None
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._lead = False

    def outcome(self) -> R:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


class GroupCommit(Generic[T, R]):
    """Leader/follower group commit over ``commit``.

    ``commit(group)`` runs in the leader's thread, one group at a time, in arrival order. It sets ``result``
    (or, for a failure of that row alone, ``error``) on each ``Waiting`` of the group; if it raises, every row
    of the group gets that exception (the transaction is void). ``on_group(size)`` is told each group's size.
    """

    def __init__(self, commit: Callable[[list[Waiting[T, R]]], None], *, max_group: int = DEFAULT_MAX_GROUP,
                 on_group: Callable[[int], None] | None = None) -> None:
        if max_group < 1:
            raise ValueError(f"max_group must be at least 1 (got {max_group})")
        self._commit = commit
        self._max_group = max_group
        self._on_group = on_group
        self._lock = threading.Lock()
        self._queue: list[Waiting[T, R]] = []
        self._leading = False  # a leader is committing; invariant: the queue is empty unless one is

    def submit(self, item: T) -> R:
        """Commit ``item`` with whatever else is waiting; return its result once committed.

        Raises:
            Whatever ``commit`` raised for the group, or set as this item's ``error``.
        """
        me: Waiting[T, R] = Waiting(item)
        with self._lock:
            self._queue.append(me)
            lead = not self._leading
            self._leading = True
        if not lead:
            me._done.wait()
            if not me._lead:
                return me.outcome()
        self._lead_one_group()
        return me.outcome()

    def _lead_one_group(self) -> None:
        with self._lock:
            group = self._queue[:self._max_group]
            del self._queue[:self._max_group]
        try:
            self._commit(group)
        except BaseException as exc:  # noqa: BLE001 - handed to every waiter of the group, raised in each
            for waiting in group:
                waiting.result, waiting.error = None, exc
        finally:
            with self._lock:
                if self._queue:  # arrived meanwhile: the first of them leads the next group
                    successor = self._queue[0]
                    successor._lead = True
                    successor._done.set()
                else:
                    self._leading = False
            for waiting in group:
                waiting._lead = False
                waiting._done.set()
            if self._on_group is not None:
                try:
                    self._on_group(len(group))
                except Exception:  # noqa: BLE001 - a statistic must not fail the commit
                    pass
