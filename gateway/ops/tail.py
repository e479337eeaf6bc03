"""``spine-gateway tail``: read and follow the JSON-lines routing log, across size-based rotation.

The log is written by :class:`logging.handlers.RotatingFileHandler` (see :mod:`gateway.ops.logs`): when
``routing.jsonl`` is full it is closed, the backups shift (``.1`` → ``.2`` …), it is renamed to
``routing.jsonl.1`` and a new ``routing.jsonl`` is opened. Files are therefore identified here by inode,
never by name: the file being followed keeps being read through its open descriptor after the rename, then
any backups that appeared between it and the new current file are read oldest first, then the new file.
Every line is yielded exactly once and in order. A file truncated in place (copytruncate) is re-read from
its start.

Lines that are not JSON objects are skipped: the log is machine-written, a stray line is not an event.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

LEVELS = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40, "exception": 40, "critical": 50}
LEVEL_STYLES = {"debug": "dim", "info": "green", "warning": "yellow", "warn": "yellow", "error": "bold red",
                "exception": "bold red", "critical": "bold white on red"}
_SINCE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_SINCE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_SNAPSHOT_ATTEMPTS = 50
# Keys shown first, in this order, by format_event; the rest follow as key=value.
_HEAD_KEYS = ("ts", "level", "event")


def parse_since(text: str) -> dt.timedelta:
    """``"30s"``, ``"30m"``, ``"1h"``, ``"2d"``, ``"1w"`` → a positive :class:`datetime.timedelta`.

    Raises:
        ValueError: anything else; the message shows the accepted form.
    """
    match = _SINCE.match(text or "")
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"--since: expected a positive number followed by s, m, h, d or w "
                         f"(e.g. 30m, 1h, 2d), got {text!r}")
    return dt.timedelta(**{_SINCE_UNITS[match.group(2)]: int(match.group(1))})


def level_number(level: str) -> int:
    """Numeric severity of a level name (case-insensitive).

    Raises:
        ValueError: an unknown level name.
    """
    try:
        return LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown level {level!r}: expected one of debug, info, warning, error, critical") from None


@dataclass(frozen=True)
class TailFilter:
    """Which events to show; ``None`` means any.

    Attributes:
        case: a case or study key, matched against the event's ``case`` or ``study`` key.
        source: a configured source name (the event's ``source``).
        reviewer: a configured reviewer name (the event's ``reviewer``).
        min_level: the lowest level shown (``debug``, ``info``, ``warning``, ``error``, ``critical``).
    """

    case: str | None = None
    source: str | None = None
    reviewer: str | None = None
    min_level: str | None = None

    def __post_init__(self) -> None:
        if self.min_level is not None:
            level_number(self.min_level)  # raises ValueError on an unknown name

    def matches(self, event: dict[str, Any]) -> bool:
        if self.case is not None and self.case not in (event.get("case"), event.get("study")):
            return False
        if self.source is not None and event.get("source") != self.source:
            return False
        if self.reviewer is not None and event.get("reviewer") != self.reviewer:
            return False
        if self.min_level is not None:
            level = LEVELS.get(str(event.get("level", "")).lower(), 0)
            if level < level_number(self.min_level):
                return False
        return True


def event_time(event: dict[str, Any]) -> dt.datetime | None:
    """The event's ``ts`` as an aware UTC datetime, or None when absent or unreadable."""
    raw = event.get("ts")
    if not isinstance(raw, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(raw)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


class _LineReader:
    """One open log file: yields complete lines, keeps a partial last line until its newline arrives."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.inode = os.fstat(handle.fileno()).st_ino
        self._partial = b""

    @classmethod
    def open(cls, path: Path, expected_inode: int | None = None) -> _LineReader | None:
        """Open ``path``; None if it is missing or is no longer the file ``expected_inode`` names."""
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed by close()
        except FileNotFoundError:
            return None
        reader = cls(handle)
        if expected_inode is not None and reader.inode != expected_inode:
            reader.close()
            return None
        return reader

    def lines(self, final: bool = False) -> list[bytes]:
        """The complete lines written since the last call; with ``final``, the partial one too."""
        data = self._partial + self.handle.read()
        *complete, self._partial = data.split(b"\n")
        if final and self._partial:
            complete.append(self._partial)
            self._partial = b""
        return [line for line in complete if line.strip()]

    def truncated(self, size_now: int) -> bool:
        return size_now < self.handle.tell()

    def restart(self) -> None:
        self.handle.seek(0)
        self._partial = b""

    def close(self) -> None:
        self.handle.close()


def _snapshot(path: Path) -> list[tuple[Path, int]]:
    """``[(file, inode)]`` of the backups oldest first, then the current file (absent while rotating).

    Names shift during a rotation, so the directory is scanned until two scans agree; if they never do (a
    rotation renaming forty backups while this thread and the writer's take turns), the answer is ``[]``. A
    scan taken while the names shift can miss a file whose name changed between listing and ``stat``, and
    reading on from such a view skipped that file's lines.
    """
    previous: list[tuple[Path, int]] | None = None
    for _ in range(_SNAPSHOT_ATTEMPTS):
        current = _scan(path)
        if current == previous:
            return current
        previous = current
    return []  # still shifting: the caller scans again later rather than trust a torn view


def _scan(path: Path) -> list[tuple[Path, int]]:
    pattern = re.compile(re.escape(path.name) + r"\.(\d+)$")
    backups: list[tuple[int, Path]] = []
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        return []
    for name in names:
        match = pattern.match(name)
        if match:
            backups.append((int(match.group(1)), path.parent / name))
    found: list[tuple[Path, int]] = []
    for _, candidate in sorted(backups, reverse=True):
        try:
            found.append((candidate, os.stat(candidate).st_ino))
        except FileNotFoundError:
            continue
    try:
        found.append((path, os.stat(path).st_ino))
    except FileNotFoundError:
        pass
    return found


class _RotatingLog:
    """The log as one stream of lines across its backups, identified by inode."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.current: _LineReader | None = None
        self.last_inode: int | None = None  # the last file read to its end, kept while no file is open

    def catch_up(self, final: bool) -> list[bytes]:
        """Lines of every file newer than the one being read (all files at first), then of the current one.

        Leaves the current file open for following. ``final`` also returns a trailing partial line.
        """
        lines: list[bytes] = []
        if self.current is not None:
            lines += self.current.lines(final=True)  # renamed, so closed by the writer: complete
            self.last_inode = self.current.inode
            self.current.close()
            self.current = None
        for _ in range(_SNAPSHOT_ATTEMPTS):
            files = _snapshot(self.path)
            if not files or files[-1][0] != self.path:
                continue  # between the rename and the new file's creation
            inodes = [inode for _, inode in files]
            start = inodes.index(self.last_inode) + 1 if self.last_inode in inodes else 0
            for backup, inode in files[start:-1]:
                reader = _LineReader.open(backup, inode)
                if reader is None:
                    break  # renamed under us: scan again from the last file read
                lines += reader.lines(final=True)
                reader.close()
                self.last_inode = inode
            else:
                self.current = _LineReader.open(self.path, files[-1][1])
                if self.current is not None:
                    return lines + self.current.lines(final=final)
        return lines

    def poll(self) -> list[bytes]:
        """New lines since the last poll, following a rotation or truncation."""
        if self.current is None:
            return self.catch_up(final=False)
        lines = self.current.lines()
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            return lines  # mid-rotation: the new file appears in a moment
        if status.st_ino != self.current.inode:
            return lines + self.catch_up(final=False)
        if self.current.truncated(status.st_size):
            self.current.restart()
            lines += self.current.lines()
        return lines

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        event = json.loads(line)
    except (UnicodeDecodeError, ValueError):
        return None
    return event if isinstance(event, dict) else None


def follow_log(path: Path | str, *, follow: bool, filters: TailFilter | None = None,
               since: dt.timedelta | None = None, poll_s: float = 0.2,
               stop: threading.Event | None = None, now: dt.datetime | None = None) -> Iterator[dict[str, Any]]:
    """Yield the log's events (dicts) that pass ``filters`` and are not older than ``since``.

    The rotated backups are read oldest first, then the current file. With ``follow``, the generator then
    waits for new lines (polling every ``poll_s`` seconds) until ``stop`` is set, following rotations.

    Args:
        path: the log file (``logging.file``).
        follow: keep waiting for new events (``tail -f``).
        filters: which events to yield (default: all).
        since: skip events whose ``ts`` is older than this before ``now``; events without ``ts`` are skipped.
        poll_s: seconds between checks for new lines while following.
        stop: set it to end following (checked at every poll).
        now: the reference time for ``since`` (default: the current UTC time).
    """
    filters = filters or TailFilter()
    stop = stop or threading.Event()
    cutoff = (now or dt.datetime.now(dt.UTC)) - since if since is not None else None
    log = _RotatingLog(Path(path))

    def wanted(lines: list[bytes]) -> Iterator[dict[str, Any]]:
        for line in lines:
            event = _parse(line)
            if event is None or not filters.matches(event):
                continue
            if cutoff is not None:
                at = event_time(event)
                if at is None or at < cutoff:
                    continue
            yield event

    try:
        yield from wanted(log.catch_up(final=not follow))
        while follow and not stop.is_set():
            lines = log.poll()
            if lines:
                yield from wanted(lines)
            else:
                stop.wait(poll_s)
        if follow:
            yield from wanted(log.poll())
    finally:
        log.close()


def format_json(event: dict[str, Any]) -> str:
    """The event as one JSON line (``--json``)."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


def format_event(event: dict[str, Any], color: bool) -> str:
    """One human-readable line: time, level, event name, then ``key=value`` pairs; coloured by level."""
    from rich.console import Console
    from rich.text import Text

    level = str(event.get("level", "")).lower()
    text = Text()
    text.append(str(event.get("ts", "-")), style="dim")
    text.append(" ")
    text.append(f"{level.upper() or '-':<8}", style=LEVEL_STYLES.get(level, ""))
    text.append(str(event.get("event", "-")), style="bold")
    for key, value in event.items():
        if key in _HEAD_KEYS:
            continue
        text.append(f" {key}=", style="cyan")
        text.append(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
    if not color:
        return text.plain
    console = Console(file=io.StringIO(), force_terminal=True, color_system="standard", width=1_000_000,
                      soft_wrap=True, highlight=False)
    with console.capture() as captured:
        console.print(text, end="")
    return captured.get()
