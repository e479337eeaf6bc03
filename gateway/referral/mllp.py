"""HL7 v2 orders over MLLP: a threaded TCP server that stores each ORM^O01 / OMI^O23 as a referral.

MLLP frames a message as ``\\x0b <message> \\x1c \\x0d``. Each message is parsed with
:func:`~gateway.referral.hl7.parse_hl7_referral` and stored with
:func:`~gateway.referral.intake.store_referral`; the answer is an ACK with MSA-1 ``AA`` when stored, ``AE``
(application error, e.g. a missing field or an unknown source) or ``AR`` (rejected: unsupported message
type, or a message too malformed to read) otherwise, with a one-line reason that names the field, never
its value. Nothing is stored unless the answer is ``AA``.
"""

from __future__ import annotations

import datetime as dt
import socket
import socketserver
import threading
from collections.abc import Callable, Mapping

import structlog

from gateway.config import Hl7Config
from gateway.models import db
from gateway.ops.serving import serve_in_thread, stop_serving
from gateway.referral.document import Referral
from gateway.referral.errors import HL7ParseError, ReferralValidationError
from gateway.referral.hl7 import build_ack, parse_hl7_referral
from gateway.referral.intake import store_referral

__all__ = ["END_BLOCK", "MAX_MESSAGE_BYTES", "START_BLOCK", "MllpServer", "answer_message", "frame",
           "start_hl7_listener", "unframe"]

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
MAX_MESSAGE_BYTES = 1024 * 1024
READ_TIMEOUT_S = 30.0
log = structlog.get_logger("hl7")

Store = Callable[[Referral], object]


class MllpFramingError(HL7ParseError):
    """Bytes that are not one MLLP frame."""


def frame(message: str | bytes) -> bytes:
    """Wrap an ER7 message in MLLP framing."""
    data = message.encode("utf-8") if isinstance(message, str) else message
    return START_BLOCK + data + END_BLOCK


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


class _Handler(socketserver.BaseRequestHandler):
    server: _ThreadingServer

    def handle(self) -> None:
        self.request.settimeout(READ_TIMEOUT_S)
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = b""
        while True:
            try:
                chunk = self.request.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            if len(buffer) > MAX_MESSAGE_BYTES:
                self.request.sendall(frame(_fallback_nak("message too large")))
                return
            while END_BLOCK in buffer:
                raw, buffer = buffer.split(END_BLOCK, 1)
                self.request.sendall(frame(self.server.answer(raw + END_BLOCK)))


class _ThreadingServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], answer: Callable[[bytes], str]) -> None:
        self.answer = answer
        super().__init__(address, _Handler)


class MllpServer:
    """The MLLP listener. ``start()`` returns once the socket is bound.

    Args:
        config: the ``hl7`` section (host, port, facilities: MSH-4 → source name).
        store: stores a parsed referral (default: :func:`store_referral` with ``via="hl7"`` in its own
            database connection).
    """

    def __init__(self, config: Hl7Config, store: Store | None = None) -> None:
        if not isinstance(config, Hl7Config):
            raise TypeError("config must be an Hl7Config")
        self.config = config
        self.store = store or _store_in_database
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
        return answer_message(message, self.config.facilities, self.store)

    def start(self) -> None:
        """Bind and serve in a daemon thread."""
        if self._server is not None:
            return
        self._server = _ThreadingServer((self.config.host, self.config.port), self._answer)
        self._thread = serve_in_thread(self._server, "mllp-server")
        log.info("hl7_started", port=self.port, component="hl7")

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._server is None:
            return
        stop_serving(self._server, self._thread)
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
