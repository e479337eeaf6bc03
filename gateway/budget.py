"""Work with a time budget, in worker processes that can be stopped: one case never delays another (issue 28).

A stage hands the CPU-heavy part of one case (scrubbing its notes, say) to ``BudgetedWorkers`` and goes on with
the other cases; it collects the result on a later run. A case whose work is still running after the budget has
its worker killed (SIGKILL: a thread cannot be stopped, a process can) and is quarantined by the stage with the
reason ``time budget exceeded``. Each worker is a one-process pool of its own, so killing one never breaks the
others' work.

Memory: the workers start lazily (on the first case) from a ``forkserver`` that imported ``preload`` once (the
scrubber's model and word lists), so each worker shares those pages with it instead of loading its own copy;
a killed worker is replaced on the next submit, from the same server. The first submit only starts that warm-up
(in a thread) and answers "busy": no job's budget pays for the loading, and the stage is woken when it is done.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import structlog

log = structlog.get_logger("budget")

OVER_BUDGET = "time budget exceeded"
ORPHAN_CHECK_S = 1.0


def default_workers() -> int:
    """One worker per core (the work waits in them, the node's threads do not)."""
    return max(1, os.cpu_count() or 1)


def _start_worker(node_pid: int) -> None:
    """Worker initializer: leave when the node is gone (killed outright, it cannot stop its workers; a worker's
    parent is the fork server, so the node's own pid is watched)."""
    def watch_node() -> None:
        while True:
            try:
                os.kill(node_pid, 0)
            except ProcessLookupError:
                os._exit(0)
            time.sleep(ORPHAN_CHECK_S)

    threading.Thread(target=watch_node, name="node-watch", daemon=True).start()


def _ready() -> bool:
    return True


@dataclass
class Job:
    """One case's work in a worker: its future, its worker and when it started (monotonic seconds)."""

    future: Future
    worker: ProcessPoolExecutor
    started: float = field(default_factory=time.monotonic)

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started


class BudgetedWorkers:
    """Up to ``workers`` jobs at once, each in its own worker process, keyed by case.

    Args:
        workers: how many jobs may run at once (one process each).
        budget_s: how long a job may run before ``over_budget`` says so.
        preload: modules the fork server imports once (their import loads what every job needs).
        on_done: called (in a pool thread) when a job ends, to wake the stage that collects it.
    """

    def __init__(self, workers: int, budget_s: float, preload: Sequence[str] = (),
                 on_done: Callable[[], None] | None = None) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        if budget_s <= 0:
            raise ValueError("budget_s must be positive")
        self.workers, self.budget_s, self.on_done = workers, budget_s, on_done
        self._preload = list(preload)
        self._context: Any = None
        self._idle: list[ProcessPoolExecutor] = []
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._warming: threading.Thread | None = None
        self._warm = threading.Event()
        self.killed = 0  # workers stopped over budget, for operators and tests

    def _worker(self) -> ProcessPoolExecutor | None:
        """An idle worker, a new one while fewer than ``workers`` exist, else None."""
        if self._idle:
            return self._idle.pop()
        if len(self._jobs) >= self.workers:
            return None
        if self._context is None:
            self._context = multiprocessing.get_context("forkserver")
            self._context.set_forkserver_preload(self._preload)
        return ProcessPoolExecutor(1, mp_context=self._context, initializer=_start_worker, initargs=(os.getpid(),))

    def warm(self, timeout_s: float = 300.0) -> None:
        """Start the fork server (it loads ``preload``) and one worker now, so that no job's budget pays for
        the loading (the first ``submit`` runs it in a thread)."""
        with self._lock:
            worker = self._worker()
        if worker is None:
            return
        try:
            worker.submit(_ready).result(timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001 - only a head start: the first job starts the server instead
            log.warning("worker_warm_up_failed", component="budget", error=type(exc).__name__)
            worker.shutdown(wait=False, cancel_futures=True)
            return
        with self._lock:
            self._idle.append(worker)
        self._warm.set()

    def _warm_in_background(self) -> None:
        """The first submit's warm-up, once; the stage is woken when it ends."""
        def warm_then_wake() -> None:
            self.warm()
            self._warm.set()  # even a failed warm-up: the next submit starts the server itself
            if self.on_done is not None:
                self.on_done()

        self._warming = threading.Thread(target=warm_then_wake, name="budget-warm-up", daemon=True)
        self._warming.start()

    @property
    def warming_started(self) -> bool:
        return self._warming is not None or self._warm.is_set()

    def start_warming(self) -> None:
        """Start the warm-up in the background now (once), when work for the workers is on its way, so that the
        first job does not wait for it."""
        with self._lock:
            if not self.warming_started:
                self._warm_in_background()

    def submit(self, key: str, function: Callable[..., Any], *args: Any) -> bool:
        """Start ``function(*args)`` for ``key`` in a worker; False when every worker is busy (try later) or
        ``key`` has a job already."""
        with self._lock:
            if not self._warm.is_set():
                if self._warming is None:
                    self._warm_in_background()
                return False
            if key in self._jobs:
                return False
            worker = self._worker()
            if worker is None:
                return False
            future = worker.submit(function, *args)
            self._jobs[key] = Job(future, worker)
        if self.on_done is not None:
            future.add_done_callback(lambda _future: self.on_done())  # type: ignore[misc]
        return True

    def job(self, key: str) -> Job | None:
        with self._lock:
            return self._jobs.get(key)

    def over_budget(self, key: str) -> bool:
        job = self.job(key)
        return job is not None and not job.future.done() and job.elapsed_s() > self.budget_s

    def take(self, key: str) -> Any:
        """The finished job's result (its worker goes back to the idle ones).

        Raises:
            whatever the job raised (``BrokenProcessPool`` when its worker died).
        """
        with self._lock:
            job = self._jobs.pop(key)
            if job.future.exception() is None:
                self._idle.append(job.worker)
            else:
                job.worker.shutdown(wait=False, cancel_futures=True)
        return job.future.result()

    def stop(self, key: str) -> None:
        """Kill the worker running ``key``'s job (its result is never taken); the next submit starts another."""
        with self._lock:
            job = self._jobs.pop(key, None)
        if job is None:
            return
        for pid in list(getattr(job.worker, "_processes", None) or {}):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        job.worker.shutdown(wait=False, cancel_futures=True)
        self.killed += 1
        log.warning("worker_stopped", component="budget", reason=OVER_BUDGET,
                    duration_ms=int(job.elapsed_s() * 1000))

    def worker_pids(self) -> list[int]:
        """Every live worker's pid (busy and idle)."""
        with self._lock:
            executors = [job.worker for job in self._jobs.values()] + list(self._idle)
        return [pid for executor in executors for pid in (getattr(executor, "_processes", None) or {})]

    def shutdown(self) -> None:
        with self._lock:
            keys = list(self._jobs)
            idle, self._idle = self._idle, []
        for key in keys:
            self.stop(key)
        for worker in idle:
            worker.shutdown(wait=True, cancel_futures=True)
