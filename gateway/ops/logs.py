"""Structured logging, configured once at start-up.

Every event is one JSON object a line in ``logging.file`` (rotated by size), and on the console either the
same JSON or structlog's coloured rendering for humans. Events use a fixed set of keys; a guard just before
the renderer drops any other key (and raises under test), and redacts any value shaped like a DICOM UID that
is neither a standard UID nor one of our ``2.25.`` pseudonyms. Logs from pynetdicom, peewee and apscheduler go
through the same chain.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import structlog

from gateway.config import LoggingConfig

LOG_KEYS = frozenset({
    # the fixed keys of a routing event (the case's key is always ``case``; old files may say ``study``)
    "ts", "level", "event", "case", "source", "reviewer", "state", "status", "attempt",
    "duration_ms", "error",
    # context for receiving and operations
    "logger", "calling_ae", "called_ae", "peer", "reason", "instances", "bytes", "sop_class",
    "transfer_syntax", "ae_title", "port", "version", "count", "free_bytes", "exception", "path",
    "component", "from_version", "to_version", "tls",
    # the kind of identifier the outbound guard hit (person_name, id, date, ...), never its value
    "kind",
    # burned-in text (OCR) decisions: counts and a verdict, never the text
    "frames", "boxes_found", "boxes_blanked", "verdict",
})
_UID = re.compile(r"\b[0-2](?:\.(?:0|[1-9]\d*)){3,}\b")
_SAFE_UID_PREFIXES = ("1.2.840.10008.", "2.25.")
REDACTED = "[redacted]"


class LogKeyError(ValueError):
    """Raised in strict mode (tests) when an event carries a key or value the guard refuses."""


def _redact_uids(text: str) -> str:
    return _UID.sub(lambda m: m.group(0) if m.group(0).startswith(_SAFE_UID_PREFIXES) else REDACTED, text)


class PhiGuard:
    """A structlog processor that keeps only allowlisted keys and redacts non-standard UIDs from values."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key in [k for k in event_dict if k not in LOG_KEYS and not k.startswith("_")]:
            if self.strict:
                raise LogKeyError(f"log key {key!r} is not in the allowlist (gateway.ops.logs.LOG_KEYS)")
            del event_dict[key]
        for key, value in event_dict.items():
            if isinstance(value, str) and not key.startswith("_"):
                cleaned = _redact_uids(value)
                if cleaned != value:
                    if self.strict and key not in ("event", "exception", "error"):
                        raise LogKeyError(f"log value of {key!r} carries a non-pseudonymous UID")
                    event_dict[key] = cleaned
        return event_dict


def _foreign_name(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    record = event_dict.get("_record")
    if record is not None:
        event_dict["logger"] = record.name
        event_dict.pop("positional_args", None)
    return event_dict


def configure_logging(config: LoggingConfig, *, strict: bool = False, console: bool = True,
                      defaults: dict[str, str] | None = None, rotate: bool = True) -> None:
    """Set up structlog and the standard library's logging for the whole process.

    ``defaults``: keys every event of this process carries unless it sets them itself. ``rotate=False``: another
    process (the node) rotates ``config.file``; this one appends to it and reopens it when it has been rotated
    (a receiving process, ``gateway.scp.receiving_process``).
    """
    level = getattr(logging, config.level.upper())
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts")
    shared: list[Any] = [structlog.contextvars.merge_contextvars, structlog.stdlib.add_log_level, timestamper]
    if defaults:
        shared.append(_with_defaults(dict(defaults)))
    guard = PhiGuard(strict)
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, guard,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=not strict,
    )
    global _foreign_chain
    _foreign_chain = [*shared, _foreign_name, structlog.processors.format_exc_info, guard]
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    if config.file is not None:
        path = Path(config.file)
        path.parent.mkdir(parents=True, exist_ok=True)
        file_handler: logging.Handler = FormatOnceRotatingFileHandler(
            path, maxBytes=config.max_bytes, backupCount=config.backups, encoding="utf-8") if rotate \
            else logging.handlers.WatchedFileHandler(path, encoding="utf-8")
        file_handler.setFormatter(_formatter(structlog.processors.JSONRenderer()))
        root.addHandler(file_handler)
    if console:
        human = config.format == "console" and sys.stderr.isatty()
        renderer = structlog.dev.ConsoleRenderer() if human else structlog.processors.JSONRenderer()
        console_handler = logging.StreamHandler(sys.stderr)
        console_handler.setFormatter(_formatter(renderer))
        console_handler.addFilter(_not_from_pynetdicom)
        root.addHandler(console_handler)
    # pynetdicom's DEBUG and INFO output prints original UIDs and AE details: keep it at WARNING.
    for noisy in ("pynetdicom", "peewee", "highdicom"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    transport = logging.getLogger("pynetdicom.transport")
    if _unreachable_peer_lines not in transport.filters:
        transport.addFilter(_unreachable_peer_lines)
    # APScheduler warns each time a tick is skipped because the stage's previous run is still going: that is
    # the design (one run per stage at a time), not news.
    logging.getLogger("apscheduler").setLevel(max(level, logging.ERROR))


_foreign_chain: list[Any] = []


def _with_defaults(defaults: dict[str, str]) -> Any:
    def add(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key, value in defaults.items():
            event_dict.setdefault(key, value)
        return event_dict
    return add


def _formatter(renderer: Any) -> logging.Formatter:
    return structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=_foreign_chain,
    )


class FormatOnceRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """``RotatingFileHandler`` that renders each record once. The standard one renders it twice (once to see
    whether it would overflow the file, once to write it) and looks the file up twice on disk, for every
    line: a third of the cost of each event, paid on every instance received. Rotation is decided the same
    way (this line would reach ``maxBytes``); only a regular file is ever rotated, as there."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
            if self.stream is None:
                self.stream = self._open()
            if self.maxBytes > 0:
                self.stream.seek(0, 2)  # the end as written by anyone (another process may append too)
                if self.stream.tell() + len(line) >= self.maxBytes and self._regular_file():
                    self.doRollover()
            self.stream.write(line)
            self.flush()
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - as logging's own handlers: reported, never raised into the caller
            self.handleError(record)

    def _regular_file(self) -> bool:
        return not os.path.exists(self.baseFilename) or os.path.isfile(self.baseFilename)


def _not_from_pynetdicom(record: logging.LogRecord) -> bool:
    """Console filter: pynetdicom's own lines go to the log file only. The console carries the gateway's
    events, which say the same in one line each (``peer_down``, ``delivery_failed``, ``association_rejected``)."""
    return not record.name.startswith("pynetdicom")


def _unreachable_peer_lines(record: logging.LogRecord) -> bool:
    """Drop pynetdicom's two or three ERROR lines for each connection it could not open (its ``connect``):
    the gateway logs one event per unreachable peer (``peer_down``, ``delivery_failed``) instead, and a peer down
    for an hour would otherwise write them at every health check and every delivery attempt."""
    return not (record.funcName == "connect" and record.levelno >= logging.ERROR)


def get_logger(component: str) -> Any:
    return structlog.get_logger(component)
