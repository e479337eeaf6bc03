"""HL7 v2 orders over MLLP: a threaded TCP server that stores each ORM^O01 / OMI^O23 as a referral.

MLLP frames a message as ``\\x0b <message> \\x1c \\x0d``; a sender may send any number of messages on
one connection, each answered in turn. Each message is parsed with
:func:`~gateway.referral.hl7.parse_hl7_referral` (hl7apy, separators from MSH-1 and MSH-2) and stored with
:func:`~gateway.referral.intake.store_referral`; the answer is an ACK with MSA-1 ``AA`` when stored, ``AE``
(application error, e.g. a missing field or an unknown source) or ``AR`` (rejected: unsupported message
type, or a message too malformed to read) otherwise, with a one-line reason that names the field, never
its value. Nothing is stored unless the answer is ``AA``. An unexpected failure while answering one
message (the database, say) answers ``AE`` to that message and leaves the connection and the server up.

Limits (:class:`MllpLimits`): a connection idle for ``read_timeout_s`` is closed; a message must be
complete within ``message_deadline_s`` of its first byte (a sender dribbling bytes cannot hold a thread);
more than ``max_message_bytes`` unanswered is refused with ``AR`` and the connection closed. Sockets use
TCP_NODELAY (no Nagle delay on ACKs). :meth:`MllpServer.stop` closes the open connections too.

Why not hl7apy's own server (``hl7apy.mllp.MLLPServer`` with ``AbstractHandler``, hl7apy 1.3.5): its
request handler, which holds all of its framing, answers one message and closes the connection (MLLP
senders keep theirs open and send many); it reads one byte per call into a buffer with no size limit; it
closes without any answer when the bytes do not match its frame pattern (which also refuses an empty
segment line) and when a handler raises without an ``ERR`` handler; it decodes UTF-8 only, so a Latin-1
message raises out of the handler and the sender gets no answer; it routes by the raw MSH-9 text
(``ORM^O01^ORM_O01`` and ``ORM*O01`` are different keys); it sets no TCP_NODELAY; and its handler
threads are not daemons, so closing the server waits for every open connection's timeout. Overriding its
``handle`` would leave nothing of it but ``socketserver.ThreadingTCPServer``, so this module keeps its
own server on that, and all HL7 parsing is hl7apy's (:mod:`gateway.referral.hl7`).
"""

from __future__ import annotations

import datetime as dt
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from gateway.config import Hl7Config
from gateway.mllp.client import END_BLOCK, START_BLOCK, frame
from gateway.ops.serving import serve_in_thread, stop_serving
from gateway.referral.document import Referral
from gateway.referral.errors import HL7ParseError, ReferralValidationError
from gateway.referral.hl7 import build_ack, parse_hl7_referral
from gateway.referral.intake import store_referral
from gateway.storage.models import db

__all__ = ["END_BLOCK", "MAX_MESSAGE_BYTES", "START_BLOCK", "MllpLimits", "MllpServer", "answer_message",
           "frame", "start_hl7_listener", "unframe"]

MAX_MESSAGE_BYTES = 1024 * 1024
READ_TIMEOUT_S = 30.0
MESSAGE_DEADLINE_S = 120.0
STOP_WAIT_S = 5.0  # how long stop() waits for a message being answered when the node stops
log = structlog.get_logger("hl7")

Store = Callable[[Referral], object]


class MllpFramingError(HL7ParseError):
    """Bytes that are not one MLLP frame."""


def unframe(data: bytes) -> bytes:
    """The message inside one MLLP frame.

    Raises:
        MllpFramingError: no start block, or no end block after it.
    """
    start = data.find(START_BLOCK)
    end = data.rfind(END_BLOCK)
    if start < 0 or end < start:
        raise MllpFramingError("MLLP framing: missing start or end block")
    return data[start + 1:end]


def _fallback_nak(reason: str) -> str:
    """A rejecting ACK for a message whose MSH cannot be read (so nothing can be echoed back)."""
    now = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
    return (f"MSH|^~\\&|SPINEGW|SPINEGW|||{now}||ACK|ACK{now}|P|2.5\r"
            f"MSA|AR||{reason[:80]}\r")


def _application_error(message: bytes) -> str:
    """An AE answer to a message that could be read but not stored for a reason of ours."""
    try:
        return build_ack(message, accept=False, error_text="internal error; send again later")
    except HL7ParseError:
        return _fallback_nak("internal error")


def answer_message(message: bytes, facilities: Mapping[str, str], store: Store) -> str:
    """Parse, store and acknowledge one HL7 message; return the ER7 ACK."""
    try:
        referral = parse_hl7_referral(message, facilities)
    except HL7ParseError as exc:
        reject = str(exc).startswith("MSH-9")
        log.info("referral_refused", reason="hl7", status="AR" if reject else "AE", error=type(exc).__name__)
        try:
            return build_ack(message, accept=False, error_text=str(exc), reject=reject)
        except HL7ParseError:
            return _fallback_nak("malformed HL7 message")
    try:
        store(referral)
    except ReferralValidationError as exc:
        log.info("referral_refused", reason="hl7", status="AE", count=len(exc.problems))
        return build_ack(message, accept=False, error_text="; ".join(exc.problems))
    return build_ack(message, accept=True)


@dataclass(frozen=True)
class MllpLimits:
    """What one connection may cost (see the module docstring)."""

    read_timeout_s: float = READ_TIMEOUT_S
    message_deadline_s: float = MESSAGE_DEADLINE_S
    max_message_bytes: int = MAX_MESSAGE_BYTES


class _Handler(socketserver.BaseRequestHandler):
    """One connection: read frames, answer each in turn, until the peer closes or a limit is hit."""

    server: _ThreadingServer

    def setup(self) -> None:
        self.server.opened(self.request)

    def finish(self) -> None:
        self.server.closed(self.request)

    def handle(self) -> None:
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        limits = self.server.limits
        buffer = b""
        deadline: float | None = None  # when the unanswered bytes in ``buffer`` must have become a message
        while chunk := self._receive(limits, deadline):
            buffer += chunk
            deadline = deadline or time.monotonic() + limits.message_deadline_s
            if len(buffer) > limits.max_message_bytes:
                log.info("referral_refused", reason="hl7", status="AR", error="MessageTooLarge", bytes=len(buffer))
                self.request.sendall(frame(_fallback_nak("message too large")))
                return
            if END_BLOCK in buffer:
                *messages, buffer = buffer.split(END_BLOCK)
                for raw in messages:
                    self.request.sendall(frame(self.server.answer(raw + END_BLOCK)))
                deadline = time.monotonic() + limits.message_deadline_s if buffer else None

    def _receive(self, limits: MllpLimits, deadline: float | None) -> bytes:
        """The next bytes, or b"" when the peer closed, went idle, or let the message deadline pass."""
        timeout = limits.read_timeout_s if deadline is None else min(limits.read_timeout_s,
                                                                      deadline - time.monotonic())
        if timeout <= 0:
            log.info("hl7_connection_closed", reason="message deadline", component="hl7")
            return b""
        try:
            self.request.settimeout(timeout)
            return self.request.recv(65536)
        except OSError:
            return b""


class _ThreadingServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], answer: Callable[[bytes], str], limits: MllpLimits) -> None:
        self.answer = answer
        self.limits = limits
        self._open: dict[socket.socket, threading.Thread] = {}
        self._open_lock = threading.Lock()
        self._closing = False
        super().__init__(address, _Handler)

    def opened(self, connection: socket.socket) -> None:
        with self._open_lock:
            if self._closing:  # accepted just before stop(): read nothing from it
                _shut_reads(connection)
            self._open[connection] = threading.current_thread()

    def closed(self, connection: socket.socket) -> None:
        with self._open_lock:
            self._open.pop(connection, None)

    def close_connections(self, wait_s: float) -> None:
        """End every open connection's reads, then wait up to ``wait_s`` for its thread (an answer under
        way is finished, not cut off in the middle of storing)."""
        with self._open_lock:
            self._closing = True
            open_now = list(self._open.items())
        for connection, _ in open_now:
            _shut_reads(connection)
        until = time.monotonic() + wait_s
        for _, thread in open_now:
            thread.join(max(0.0, until - time.monotonic()))


def _shut_reads(connection: socket.socket) -> None:
    """Make the connection's pending and next reads return b"" (its answers can still be sent)."""
    try:
        connection.shutdown(socket.SHUT_RD)
    except OSError:
        pass


class MllpServer:
    """The MLLP listener. ``start()`` returns once the socket is bound.

    Args:
        config: the ``hl7`` section (host, port, facilities: MSH-4 → source name).
        store: stores a parsed referral (default: :func:`store_referral` with ``via="hl7"`` in its own
            database connection).
        limits: per-connection limits (default: :class:`MllpLimits` ()).
    """

    def __init__(self, config: Hl7Config, store: Store | None = None, limits: MllpLimits | None = None) -> None:
        if not isinstance(config, Hl7Config):
            raise TypeError("config must be an Hl7Config")
        self.config = config
        self.store = store or _store_in_database
        self.limits = limits or MllpLimits()
        self._server: _ThreadingServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when ``hl7.port`` is 0)."""
        if self._server is None:
            raise RuntimeError("the MLLP server is not started")
        return int(self._server.server_address[1])

    def _answer(self, raw: bytes) -> str:
        try:
            message = unframe(raw)
        except MllpFramingError:
            return _fallback_nak("MLLP framing error")
        try:
            return answer_message(message, self.config.facilities, self.store)
        except Exception as exc:  # noqa: BLE001 - one message's failure must not end the connection
            log.error("hl7_answer_failed", status="AE", error=type(exc).__name__, component="hl7")
            return _application_error(message)

    def start(self) -> None:
        """Bind and serve in a daemon thread."""
        if self._server is not None:
            return
        self._server = _ThreadingServer((self.config.host, self.config.port), self._answer, self.limits)
        self._thread = serve_in_thread(self._server, "mllp-server")
        log.info("hl7_started", port=self.port, component="hl7")

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._server is None:
            return
        stop_serving(self._server, self._thread)
        self._server.close_connections(STOP_WAIT_S)
        self._server = None
        self._thread = None


def _store_in_database(referral: Referral) -> object:
    with db.connection_context():
        return store_referral(referral, "hl7")


def start_hl7_listener(config: Hl7Config) -> MllpServer | None:
    """Start the MLLP listener when ``hl7.enabled``; return it (to stop later), else None."""
    if not config.enabled:
        return None
    server = MllpServer(config)
    server.start()
    return server
