"""Deadlines and per-client caps at the HTTP protocol layer, below the application.

Uvicorn bounds the size of a request head (h11's incomplete event size) and the idle time between keep-alive
requests, but not how long a client may take to send its head or its body, nor how many connections one client
address holds: 300 sockets dribbling one header line every 10 s took every connection slot of the node
(issue 28). :func:`guarded_protocol` returns uvicorn's h11 protocol with three additions, all run in the event
loop's thread (so the counts need no lock):

- a connection beyond ``max_connections_per_client`` from one address is closed at once, before it is read;
- the request line and headers must be in within ``request_header_timeout_s`` (counted from the connection,
  or from the end of the previous response on a keep-alive connection), else 408 and close;
- the body must be in within ``request_body_timeout_s`` of the headers, else 408 (if nothing was answered
  yet) and close; the application then sees the client disconnect.

Every admitted connection gets TCP_NODELAY (:func:`_no_delay`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import Counter
from dataclasses import dataclass

import h11
import structlog
from uvicorn.protocols.http.h11_impl import H11Protocol

log = structlog.get_logger("http")

HEAD_TOO_LARGE_RESPONSE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\n"
                           b"content-length: 24\r\nconnection: close\r\n\r\nrequest head too large\r\n")
TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\ncontent-length: 16\r\n"
                    b"connection: close\r\n\r\nrequest timeout\n")
HEAD, BODY = "request_head", "request_body"


@dataclass(frozen=True)
class ConnectionLimits:
    """What one HTTP connection may take: time for its head and body, and its client's number of connections."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections_per_client: int = 32
    max_head_bytes: int = 16 * 1024


class ClientConnections:
    """Open connections per client address (used from the event loop's thread only)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._open: Counter[str] = Counter()
        self.total = 0  # all addresses together: read from other threads (one int, no lock needed to read it)

    def admit(self, address: str) -> bool:
        """Count a new connection from ``address``; False (and not counted) when it already holds ``cap``."""
        if self._open[address] >= self.cap:
            return False
        self._open[address] += 1
        self.total += 1
        return True

    def release(self, address: str) -> None:
        self.total -= 1
        self._open[address] -= 1
        if self._open[address] <= 0:
            del self._open[address]

    def open_from(self, address: str) -> int:
        return self._open[address]


def guarded_protocol(limits: ConnectionLimits, clients: ClientConnections) -> type[H11Protocol]:
    """Uvicorn's h11 protocol class with the deadlines and the per-client cap of ``limits`` (module docstring)."""

    class GuardedH11Protocol(H11Protocol):
        _address = "-"
        _admitted = False
        _deadline: asyncio.TimerHandle | None = None
        _deadline_phase: str | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._address = self.client[0] if self.client else "-"
            self._admitted = clients.admit(self._address)
            if not self._admitted:
                _note_refusal("too_many_connections", self._address)
                transport.abort()
                return
            _no_delay(transport)
            self._keep_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_deadline()
            if self._admitted:
                self._admitted = False
                clients.release(self._address)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if not self._admitted or self.transport.is_closing():
                return
            if self.conn.their_state is h11.IDLE and self._head_too_large(data):
                _note_refusal("request_head_too_large", self._address)
                self.transport.write(HEAD_TOO_LARGE_RESPONSE)
                self.transport.close()
                return
            super().data_received(data)
            self._keep_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._keep_deadline()

        def _keep_deadline(self) -> None:
            """Arm the deadline of the phase the client is in (head, body), or none once its request is in."""
            if self.transport is None or self.transport.is_closing():
                self._cancel_deadline()
                return
            their_state = self.conn.their_state
            phase = HEAD if their_state is h11.IDLE else BODY if their_state is h11.SEND_BODY else None
            if phase == self._deadline_phase:
                return
            self._cancel_deadline()
            if phase is not None:
                seconds = limits.header_timeout_s if phase == HEAD else limits.body_timeout_s
                self._deadline = self.loop.call_later(seconds, self._deadline_passed, phase)
                self._deadline_phase = phase

        def _cancel_deadline(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = None
            self._deadline_phase = None

        def _deadline_passed(self, phase: str) -> None:
            self._deadline = None
            self._deadline_phase = None
            if self.transport.is_closing():
                return
            answered = self.cycle is not None and self.cycle.response_started and phase == BODY
            started_head = phase == HEAD and self.conn.their_state is h11.IDLE and self._has_partial_head()
            if (phase == BODY and not answered) or started_head:
                self.transport.write(TIMEOUT_RESPONSE)
            _note_refusal(f"{phase}_timeout", self._address)
            self.transport.close()

        def _head_too_large(self, data: bytes) -> bool:
            """h11 bounds a head only while it arrives in pieces; one that comes whole is bounded here."""
            pending = self.conn.trailing_data[0]
            if len(pending) + len(data) <= limits.max_head_bytes:
                return False
            window = (bytes(pending) + data)[:limits.max_head_bytes + 4]
            return b"\r\n\r\n" not in window

        def _has_partial_head(self) -> bool:
            return bool(self.conn.trailing_data[0])

    return GuardedH11Protocol


_last_noted: dict[tuple[str, str], float] = {}
NOTE_EVERY_S = 10.0


def _no_delay(transport: asyncio.BaseTransport) -> None:
    """TCP_NODELAY on an accepted connection. Without it (the listening socket is handed to uvicorn ready-made,
    and the accepted ones came without it), a small answer written as head then body waited for the client's
    delayed ACK: a 3 KB DICOMweb metadata answer took 52 ms instead of 14, a rendered JPEG 60 instead of 8."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _note_refusal(reason: str, address: str) -> None:
    """One log line per reason and address every :data:`NOTE_EVERY_S` (a flood must not flood the log)."""
    now = asyncio.get_running_loop().time() if _loop_running() else 0.0
    key = (reason, address)
    if now - _last_noted.get(key, -NOTE_EVERY_S) < NOTE_EVERY_S:
        return
    if len(_last_noted) > 1000:
        _last_noted.clear()
    _last_noted[key] = now
    log.warning("http_connection_dropped", reason=reason, peer=address, component="http")


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
