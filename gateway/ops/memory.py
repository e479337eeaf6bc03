"""The process's memory: what the C heap keeps after a burst, handed back to the system; and, for operators
chasing a leak, Python's own allocation sites on a signal.

An attack on the node is a burst of threads (an association thread each, the HTTP thread pool, the password
hashes) that allocate and free. glibc's malloc keeps what they freed mapped, in one arena per thread that
contended (up to eight per core), and gives pages back only from the top of each heap: after four 400 MB
instances the node kept some 45 MB it no longer used (issue 28). Three measures, all glibc-only and without
effect elsewhere:

- :func:`limit_malloc_arenas` at start: at most ``MALLOC_ARENAS`` arenas, in the node and (through the
  environment) in every process it starts, unless the operator set ``MALLOC_ARENA_MAX`` already;
- :class:`HeapTrimmer`: a thread that looks at the process's RSS every few seconds and calls ``malloc_trim(0)``
  once it has grown ``slack`` above what it was after the last trim, which returns the free pages inside every
  arena, not only at their tops;
- :func:`release_freed_memory`: the same trim once, after loading at start.

And one Python-level leak of a hostile peer's making: :func:`quiet_value_warnings`.

``SPINE_GATEWAY_TRACEMALLOC=FRAMES`` (a debugging switch, off by default: tracing costs memory and time) makes
``kill -USR1 <pid>`` start :mod:`tracemalloc` with that many frames per allocation, and each further
``kill -USR1`` write the largest allocation sites and what grew since the previous one to standard error
(:func:`trace_allocations_if_asked`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import signal
import sys
import threading
import tracemalloc
import warnings
from collections.abc import Callable, MutableMapping
from typing import TextIO

import structlog

__all__ = ["HeapTrimmer", "limit_malloc_arenas", "quiet_value_warnings", "release_freed_memory", "rss_bytes",
           "trace_allocations_if_asked"]

log = structlog.get_logger("memory")

MALLOC_ARENAS = 2
M_ARENA_MAX = -8  # mallopt's parameter number (glibc malloc.h)
TRACE_ENV = "SPINE_GATEWAY_TRACEMALLOC"
TRACE_SIGNAL = signal.SIGUSR1
TRACE_TOP = 25
MIB = 1024 * 1024


@functools.lru_cache(maxsize=1)
def _libc():  # -> the C library, or None when it is not glibc
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:  # not glibc (musl, macOS): nothing to call
        return None


def _malloc_trim():  # -> the C function, or None
    libc = _libc()
    return libc.malloc_trim if libc is not None else None


def release_freed_memory() -> bool:
    """Return the C heap's free pages to the system (glibc's ``malloc_trim(0)``). Loading the notes engine and
    warming the notes builders frees some megabytes of temporary buffers that glibc otherwise keeps mapped.
    True when glibc released something; False when it had nothing to release or is not the C library."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


def limit_malloc_arenas(environ: MutableMapping[str, str] | None = None, arenas: int = MALLOC_ARENAS) -> int:
    """At most ``arenas`` malloc arenas in this process from now on, and in the processes it starts (they read
    ``MALLOC_ARENA_MAX`` from the environment they inherit). An operator's own ``MALLOC_ARENA_MAX`` is kept.
    Call it before the node starts its threads: an arena, once made, stays. Returns the limit in force (0: not
    glibc, nothing done)."""
    environ = os.environ if environ is None else environ
    libc = _libc()
    if libc is None:
        return 0
    chosen = environ.get("MALLOC_ARENA_MAX", "").strip()
    limit = int(chosen) if chosen.isdigit() and int(chosen) > 0 else arenas
    environ["MALLOC_ARENA_MAX"] = str(limit)
    libc.mallopt(M_ARENA_MAX, limit)
    return limit


def quiet_value_warnings() -> None:
    """Ignore pydicom's warnings about a value that breaks its VR (``Invalid value for VR UI: '1.2.84{.1'``,
    ``The value length (70) exceeds ...``). Each carries the value itself, so each is a new text, and Python's
    warning registry keeps every text it has shown once, for the life of the process: fuzzed association
    requests grew it without bound (and wrote each to standard error). The node refuses such a request anyway;
    the warning says nothing an operator can act on."""
    warnings.filterwarnings("ignore", message=r"(Invalid value for VR|The value length)", category=UserWarning,
                            module=r"pydicom\.valuerep")


def rss_bytes() -> int:
    """This process's resident set size now (Linux ``/proc/self/statm``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class HeapTrimmer:
    """Trims the C heap (``malloc_trim(0)``) once the RSS has grown ``slack_bytes`` above its level after the
    last trim, looked at every ``interval_s``: a burst's freed memory goes back within seconds of its end, and a
    quiet node is not trimmed at all. The level follows the RSS after each trim, so memory still in use (a
    cache that grew) costs one trim, not one every interval."""

    def __init__(self, interval_s: float = 5.0, slack_bytes: int = 8 * MIB,
                 rss: Callable[[], int] = rss_bytes, trim: Callable[[], bool] = release_freed_memory) -> None:
        self.interval_s, self.slack_bytes = interval_s, slack_bytes
        self._rss, self._trim = rss, trim
        self.level = rss()
        self.trims = 0
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> bool:
        """Trim if the RSS is ``slack_bytes`` above the level; True when it trimmed."""
        now = self._rss()
        if now - self.level < self.slack_bytes:
            self.level = min(self.level, now)
            return False
        self._trim()
        self.trims += 1
        self.level = self._rss()
        log.info("heap_trimmed", component="memory", bytes=max(0, now - self.level), count=self.trims)
        return True

    def start(self) -> HeapTrimmer:
        if _malloc_trim() is not None and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="heap-trimmer", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._halt.wait(self.interval_s):
            self.check()

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(self.interval_s + 1)
            self._thread = None


def trace_allocations_if_asked(environ: MutableMapping[str, str] | None = None, out: TextIO | None = None) -> bool:
    """With ``SPINE_GATEWAY_TRACEMALLOC=FRAMES`` set (1-100), answer ``SIGUSR1`` (module docstring): the first
    signal starts tracing with that many frames per allocation, each later one writes the allocation sites. True
    when the switch is on. Tracing starts on the signal, not at start: loading the engines under tracing takes
    minutes, and what is sought is what a node that runs keeps. The sites are file names, line numbers and sizes:
    no data the node handles."""
    environ = os.environ if environ is None else environ
    frames = environ.get(TRACE_ENV, "").strip()
    if not frames.isdigit() or not 1 <= int(frames) <= 100:
        return False
    dump = AllocationDump(int(frames), out)
    signal.signal(TRACE_SIGNAL, lambda *_: threading.Thread(target=dump.write, name="tracemalloc-dump",
                                                           daemon=True).start())
    return True


class AllocationDump:
    """Starts tracing on its first call; then the largest allocation sites (of what was allocated since tracing
    started and is still held) and the largest growth since the previous call, as text."""

    def __init__(self, frames: int, out: TextIO | None = None) -> None:
        self.frames = frames
        self.key = "traceback" if frames > 1 else "lineno"
        self.out = out
        self._previous: tracemalloc.Snapshot | None = None
        self._lock = threading.Lock()

    def write(self) -> str:
        with self._lock:
            if not tracemalloc.is_tracing():
                tracemalloc.start(self.frames)
                return self._emit([f"tracemalloc pid {os.getpid()}: tracing started ({self.frames} frames), "
                                   f"RSS {rss_bytes() // MIB} MiB; signal again for the allocation sites"])
            snapshot = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, tracemalloc.__file__)])
            lines = [f"tracemalloc pid {os.getpid()}: traced {tracemalloc.get_traced_memory()[0] // MIB} MiB, "
                     f"RSS {rss_bytes() // MIB} MiB; largest sites:"]
            lines += [_stat_line(stat) for stat in snapshot.statistics(self.key)[:TRACE_TOP]]
            if self._previous is not None:
                lines.append("grown since the previous dump:")
                lines += [_stat_line(stat) for stat in snapshot.compare_to(self._previous, self.key)[:TRACE_TOP]]
            self._previous = snapshot
            return self._emit(lines)

    def _emit(self, lines: list[str]) -> str:
        text = "\n".join(lines) + "\n"
        out = self.out or sys.stderr
        out.write(text)
        out.flush()
        return text


def _stat_line(stat: tracemalloc.Statistic | tracemalloc.StatisticDiff) -> str:
    where = " <- ".join(f"{frame.filename}:{frame.lineno}" for frame in stat.traceback[:6])
    grown = f" ({stat.size_diff / 1024:+.0f} KiB)" if isinstance(stat, tracemalloc.StatisticDiff) else ""
    return f"  {stat.size / 1024:9.0f} KiB{grown} in {stat.count} blocks: {where}"
