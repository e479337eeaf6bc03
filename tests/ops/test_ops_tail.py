"""``follow_log``: filters, ``--since``, and following a real RotatingFileHandler across rotations."""

from __future__ import annotations

import datetime as dt
import json
import logging
import logging.handlers
import re
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.ops.logs import FormatOnceRotatingFileHandler
from gateway.ops.tail import TailFilter, follow_log, format_event, format_json, parse_since

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
DEADLINE_S = 30.0


def _ts(minutes_ago: int) -> str:
    return (NOW - dt.timedelta(minutes=minutes_ago)).isoformat().replace("+00:00", "Z")


EVENTS = [
    {"ts": _ts(300), "level": "info", "event": "instance_stored", "study": "aaa111", "source": "north"},
    {"ts": _ts(90), "level": "warning", "event": "instance_refused", "source": "south", "reason": "x"},
    {"ts": _ts(45), "level": "info", "event": "routed", "case": "bbb222", "reviewer": "dr-one"},
    {"ts": _ts(10), "level": "error", "event": "delivery_failed", "case": "bbb222", "reviewer": "dr-two"},
    {"ts": _ts(1), "level": "debug", "event": "poll", "study": "aaa111", "source": "north"},
]


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "routing.jsonl"
    lines = [json.dumps(e) for e in EVENTS]
    lines.insert(2, "not json at all")  # skipped, never fatal
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _names(path: Path, **kwargs) -> list[str]:
    return [e["event"] for e in follow_log(path, follow=False, now=NOW, **kwargs)]


def test_reads_every_event_in_order_and_skips_non_json(log_file):
    assert _names(log_file) == [e["event"] for e in EVENTS]


@pytest.mark.parametrize(("filters", "expected"), [
    (TailFilter(case="aaa111"), ["instance_stored", "poll"]),
    (TailFilter(case="bbb222"), ["routed", "delivery_failed"]),
    (TailFilter(source="north"), ["instance_stored", "poll"]),
    (TailFilter(reviewer="dr-two"), ["delivery_failed"]),
    (TailFilter(min_level="warning"), ["instance_refused", "delivery_failed"]),
    (TailFilter(min_level="ERROR"), ["delivery_failed"]),
    (TailFilter(min_level="debug"), [e["event"] for e in EVENTS]),
    (TailFilter(case="bbb222", min_level="error"), ["delivery_failed"]),
    (TailFilter(source="nowhere"), []),
])
def test_filters(log_file, filters, expected):
    assert _names(log_file, filters=filters) == expected


def test_since_keeps_only_recent_events(log_file):
    assert _names(log_file, since=parse_since("1h")) == ["routed", "delivery_failed", "poll"]
    assert _names(log_file, since=parse_since("5m")) == ["poll"]
    assert _names(log_file, since=parse_since("2d")) == [e["event"] for e in EVENTS]


def test_unknown_level_is_refused():
    with pytest.raises(ValueError, match="unknown level"):
        TailFilter(min_level="loud")


@pytest.mark.parametrize(("text", "expected"), [
    ("1h", dt.timedelta(hours=1)), ("30m", dt.timedelta(minutes=30)), ("2d", dt.timedelta(days=2)),
    ("45s", dt.timedelta(seconds=45)), ("1w", dt.timedelta(weeks=1)), (" 3h ", dt.timedelta(hours=3)),
])
def test_parse_since_examples(text, expected):
    assert parse_since(text) == expected


@pytest.mark.parametrize("text", ["", "h", "1", "0h", "-1h", "1.5h", "1y", "1hh", "one hour"])
def test_parse_since_refuses_with_the_accepted_form(text):
    with pytest.raises(ValueError, match=r"--since: expected .* \(e\.g\. 30m, 1h, 2d\)"):
        parse_since(text)


@given(st.integers(min_value=1, max_value=10**6), st.sampled_from("smhdw"))
def test_parse_since_round_trips(number, unit):
    seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    assert parse_since(f"{number}{unit}").total_seconds() == number * seconds


@given(st.text(max_size=12))
def test_parse_since_any_text_parses_or_raises_value_error(text):
    try:
        assert parse_since(text) > dt.timedelta(0)
    except ValueError:
        pass


def test_format_event_plain_and_coloured():
    event = {"ts": _ts(0), "level": "error", "event": "delivery_failed", "case": "bbb222", "attempt": 3}
    plain = format_event(event, color=False)
    assert plain == f"{_ts(0)} ERROR   delivery_failed case=bbb222 attempt=3"
    coloured = format_event(event, color=True)
    assert "\x1b[" in coloured
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == plain
    assert json.loads(format_json(event)) == event


# --- rotation ---------------------------------------------------------------------------------------


# the standard library's, and the gateway's own (``configure_logging``), which renders each record once
ROTATING_HANDLERS = [logging.handlers.RotatingFileHandler, FormatOnceRotatingFileHandler]


def _rotating_logger(path: Path, max_bytes: int, backups: int,
                     handler_class: type = FormatOnceRotatingFileHandler) -> tuple[logging.Logger, logging.Handler]:
    handler = handler_class(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.Logger(f"tail-test-{path}")  # not registered globally
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger, handler


def _line(i: int) -> str:
    return json.dumps({"ts": _ts(0), "level": "info", "event": "tick", "count": i, "study": "k" * 12})


@pytest.mark.parametrize("handler_class", ROTATING_HANDLERS)
def test_reads_rotated_backups_oldest_first_when_not_following(tmp_path, handler_class):
    path = tmp_path / "routing.jsonl"
    logger, handler = _rotating_logger(path, max_bytes=400, backups=50, handler_class=handler_class)
    for i in range(60):
        logger.info(_line(i))
    handler.close()
    assert len(list(tmp_path.glob("routing.jsonl.*"))) > 5
    assert [e["count"] for e in follow_log(path, follow=False)] == list(range(60))
    assert all(p.stat().st_size <= 400 for p in tmp_path.glob("routing.jsonl*"))


def test_follows_across_rotations_every_line_once_in_order(tmp_path):
    """A writer thread logs in bursts (several rotations each) while follow_log reads; after each burst it
    waits until the reader has caught up, so rotations happen both between and during polls."""
    path = tmp_path / "routing.jsonl"
    logger, handler = _rotating_logger(path, max_bytes=300, backups=40)
    total, burst = 600, 30
    seen: list[int] = []
    progress = threading.Condition()
    stop = threading.Event()

    def write() -> None:
        for start in range(0, total, burst):
            for i in range(start, start + burst):
                logger.info(_line(i))
            with progress:
                progress.wait_for(lambda start=start: len(seen) >= start + burst or stop.is_set(), timeout=DEADLINE_S)

    writer = threading.Thread(target=write)
    watchdog = threading.Timer(DEADLINE_S, stop.set)
    watchdog.start()
    writer.start()
    try:
        for event in follow_log(path, follow=True, stop=stop, poll_s=0.005):
            with progress:
                seen.append(event["count"])
                progress.notify_all()
            if len(seen) >= total:
                stop.set()
    finally:
        stop.set()
        watchdog.cancel()
        writer.join()
        handler.close()
    assert len(list(tmp_path.glob("routing.jsonl.*"))) > 10
    assert seen == list(range(total))


def test_a_directory_view_torn_by_a_rotation_is_never_read_from(tmp_path, monkeypatch):
    """While the backups' names shift, each scan can miss a file renamed between the listing and its ``stat``.
    When two scans never agree, nothing is read until they do (a torn view once made the reader skip a
    backup's lines; the test above caught it about once in six runs)."""
    import gateway.ops.tail as tail

    path = tmp_path / "routing.jsonl"
    logger, handler = _rotating_logger(path, max_bytes=300, backups=10)
    for i in range(8):
        logger.info(_line(i))
    handler.close()
    real_scan = tail._scan
    scans = iter(range(10_000))

    def torn_scan(scanned: Path) -> list[tuple[Path, int]]:
        files = real_scan(scanned)
        missing = next(scans) % (len(files) - 1)
        return files[:missing] + files[missing + 1:]  # a different backup missing each time

    monkeypatch.setattr(tail, "_scan", torn_scan)
    assert tail._snapshot(path) == []
    assert list(follow_log(path, follow=False)) == []  # nothing rather than a gap
    monkeypatch.setattr(tail, "_scan", real_scan)
    assert [event["count"] for event in follow_log(path, follow=False)] == list(range(8))


def test_follow_restarts_a_file_truncated_in_place(tmp_path):
    path = tmp_path / "routing.jsonl"
    path.write_text(_line(0) + "\n" + _line(1) + "\n")
    stop = threading.Event()
    watchdog = threading.Timer(DEADLINE_S, stop.set)
    watchdog.start()
    seen = []
    try:
        for event in follow_log(path, follow=True, stop=stop, poll_s=0.005):
            seen.append(event["count"])
            if seen == [0, 1]:
                path.write_text(_line(2) + "\n")  # truncates, shorter than what was read
            if len(seen) == 3:
                stop.set()
    finally:
        watchdog.cancel()
    assert seen == [0, 1, 2]


def test_follow_waits_for_a_partial_line_to_be_completed(tmp_path):
    path = tmp_path / "routing.jsonl"
    first, second = _line(0), _line(1)
    path.write_text(first + "\n" + second[:20])
    stop = threading.Event()
    watchdog = threading.Timer(DEADLINE_S, stop.set)
    watchdog.start()
    seen = []
    try:
        for event in follow_log(path, follow=True, stop=stop, poll_s=0.005):
            seen.append(event["count"])
            if seen == [0]:
                with path.open("a") as handle:
                    handle.write(second[20:] + "\n")
            if len(seen) == 2:
                stop.set()
    finally:
        watchdog.cancel()
    assert seen == [0, 1]
