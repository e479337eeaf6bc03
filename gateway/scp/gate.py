"""The door before association negotiation: a connection must show an A-ASSOCIATE-RQ before it costs anything.

pynetdicom gives every accepted TCP connection an ``Association`` thread at once, and counts that thread against
``max_associations`` until negotiation ends or the ACSE timeout (30 s) expires. Load balancers' health checks and
port scanners open connections that say nothing, or garbage: 25 of them locked every sender out for half a minute.

Here a connection first waits in the gate, in its own short-lived thread, holding no association slot:

- it must deliver the header of an A-ASSOCIATE-RQ PDU (type 01H, a plausible length, protocol version bit 0) and
  then the PDU's bytes (up to ``PEEKED_PDU_BYTES``) within ``node.negotiation_timeout_s`` of connecting; a TLS
  connection must finish its handshake within the same deadline;
- a connection that closes first, sends anything else, or is too slow (one byte a second) is dropped at once
  when that is known, and at the deadline at the latest;
- each host may have at most ``node.max_pending_per_host`` connections in the gate at once: a new one displaces
  the host's oldest silent connection (``displaced_by_newer``), so that 40 silent connections from a source's
  own host do not keep that source's real association out until the deadline; all hosts together may have
  ``MAX_PENDING_TOTAL``, and more are closed on arrival, before a thread is started for them.

The gate only peeks at the bytes (``MSG_PEEK``): a connection that passes reaches pynetdicom untouched, and
pynetdicom negotiates as before. Over TLS the decrypted bytes cannot be peeked, so there the gate covers the
handshake and the arrival of the first bytes; pynetdicom's network timeout bounds the rest.

Each drop logs ``connection_dropped`` (reason, peer host), at most one line per host and reason every
``DROP_LOG_INTERVAL_S``, counting the drops it stands for.
"""

from __future__ import annotations

import select
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from gateway.ops.metrics import GatewayMetrics

log = structlog.get_logger("scp.gate")

A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_RJ = 0x03
PDU_HEADER = struct.Struct(">BBL")
# Fixed fields of an A-ASSOCIATE-RQ after its 6-byte header: version, reserved, called and calling AE titles,
# 32 reserved bytes (PS3.8 9.3.2); then the variable items, the Application Context Item (10H) first.
RQ_FIXED_FIELDS = 68
APPLICATION_CONTEXT_ITEM = 0x10
MAX_RQ_LENGTH = 1 << 20  # 128 presentation contexts and every extended negotiation fit in far less
PEEKED_PDU_BYTES = 32 * 1024  # waited for in the kernel's buffer (SO_RCVLOWAT); more is pynetdicom's to read
MAX_PENDING_TOTAL = 512  # from all hosts together: a scan from many addresses costs at most this many threads
DROP_LOG_INTERVAL_S = 10.0
_SHORT_POLL_S = 0.02  # where SO_RCVLOWAT is not honoured: look again this often for the missing bytes
_HANGUP = select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0)


class Dropped(Exception):
    """A connection refused at the gate; ``reason`` names why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Throttle:
    """Lets one event per key through each interval and counts the ones it held back, so that a peer repeating
    itself in a loop (reconnecting, sending garbage) costs one log line every ``interval_s``, not one each time."""

    interval_s: float = DROP_LOG_INTERVAL_S
    _last: dict[object, float] = field(default_factory=dict)
    _unlogged: dict[object, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def due(self, key: object) -> int | None:
        """The number of events of ``key`` this one stands for (itself and those held back since the last one
        let through), or None when it is held back."""
        now = time.monotonic()
        with self._lock:
            count = self._unlogged.get(key, 0) + 1
            if now - self._last.get(key, -self.interval_s) < self.interval_s:
                self._unlogged[key] = count
                return None
            self._last[key] = now
            self._unlogged.pop(key, None)
            if len(self._last) > 10_000:  # a scan from many addresses: forget the oldest
                for stale in sorted(self._last, key=self._last.__getitem__)[:5_000]:
                    self._last.pop(stale, None)
                    self._unlogged.pop(stale, None)
        return count


@dataclass
class _DropLog:
    """One ``connection_dropped`` line per (host, reason) each interval, with the count it stands for."""

    throttle: Throttle = field(default_factory=Throttle)

    def record(self, host: str, reason: str) -> None:
        count = self.throttle.due((host, reason))
        if count is not None:
            log.warning("connection_dropped", reason=reason, peer=host, count=count)


class NegotiationGate:
    """Admits connections to negotiation; see the module docstring. ``metrics``: where each drop is counted
    (the node's, or a receiving process's that forwards them to the node)."""

    def __init__(self, timeout_s: float, max_pending_per_host: int, *, metrics: GatewayMetrics) -> None:
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.max_pending_per_host = max_pending_per_host
        self._pending: dict[str, list[Any]] = {}  # host -> its connections in the gate, oldest first
        self._total = 0
        self._lock = threading.Lock()
        self._drops = _DropLog()

    def enter(self, host: str, sock: Any = None) -> bool:
        """Take a place in the gate for ``sock`` from ``host``. When the host's places are all taken, the host's
        oldest connection that has sent nothing (else its oldest) is displaced: shut down, its place given to
        ``sock``, so that a host's silent connections cannot lock out its own real sender (which sends its
        request at once and leaves the gate). False (and the drop recorded) only when the gate is full."""
        displaced = None
        with self._lock:
            waiting = self._pending.setdefault(host, [])
            if len(waiting) >= self.max_pending_per_host and waiting:
                displaced = _oldest_silent(waiting)
                waiting.remove(displaced)
                self._total -= 1
            if self._total >= MAX_PENDING_TOTAL:
                admitted = False
                if not waiting:
                    self._pending.pop(host, None)
            else:
                waiting.append(sock)
                self._total += 1
                admitted = True
        if displaced is not None:
            _shut(displaced)
            self.dropped(host, "displaced_by_newer")
        if not admitted:
            self.dropped(host, "too_many_pending")
        return admitted

    def leave(self, host: str, sock: Any = None) -> bool:
        """Give ``sock``'s place back; False if it no longer had one (it was displaced)."""
        with self._lock:
            waiting = self._pending.get(host, [])
            if sock not in waiting:
                return False
            waiting.remove(sock)
            self._total = max(0, self._total - 1)
            if not waiting:
                self._pending.pop(host, None)
            return True

    def pending(self, host: str) -> int:
        with self._lock:
            return len(self._pending.get(host, ()))

    def total_pending(self) -> int:
        """Connections of every host still waiting to negotiate."""
        with self._lock:
            return self._total

    def dropped(self, host: str, reason: str) -> None:
        self.metrics.record_association("dropped")
        self._drops.record(host, reason)

    def wait_for_request(self, sock: socket.socket, started: float) -> None:
        """Return once ``sock`` holds an A-ASSOCIATE-RQ (or, over TLS, its first bytes) within the deadline.

        Raises:
            Dropped: closed, garbage, or too slow (``reason`` says which).
        """
        deadline = started + self.timeout_s
        if isinstance(sock, ssl.SSLSocket):
            _handshake(sock, deadline)
            if not sock.pending():
                _wait_readable(sock, deadline)
            return
        header = _peek_at_least(sock, PDU_HEADER.size, deadline)
        pdu_type, _, length = PDU_HEADER.unpack_from(header)
        if pdu_type != A_ASSOCIATE_RQ or not RQ_FIXED_FIELDS < length <= MAX_RQ_LENGTH:
            raise Dropped("not_an_association_request")
        wanted = PDU_HEADER.size + min(length, PEEKED_PDU_BYTES)
        request = _peek_at_least(sock, min(wanted, PDU_HEADER.size + RQ_FIXED_FIELDS + 1), deadline)
        version = struct.unpack_from(">H", request, PDU_HEADER.size)[0]
        if not version & 1 or request[PDU_HEADER.size + RQ_FIXED_FIELDS] != APPLICATION_CONTEXT_ITEM:
            raise Dropped("not_an_association_request")
        _peek_at_least(sock, wanted, deadline)


def requested_ae_titles(sock: Any) -> tuple[str, str] | None:
    """The called and calling AE titles of the A-ASSOCIATE-RQ that ``wait_for_request`` found waiting on ``sock``
    (peeked, left in place), or None over TLS, where the request cannot be peeked."""
    if isinstance(sock, ssl.SSLSocket):
        return None
    start = PDU_HEADER.size + 4  # after the protocol version and the reserved field
    try:
        request = sock.recv(start + 32, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError:
        return None
    if len(request) < start + 32:
        return None
    called, calling = request[start:start + 16], request[start + 16:start + 32]
    return called.decode("ascii", "replace").strip(), calling.decode("ascii", "replace").strip()


def reject(sock: Any, result: int, source: int, diagnostic: int) -> None:
    """Answer the request waiting on ``sock`` with an A-ASSOCIATE-RJ PDU (PS3.8 9.3.4) written straight to the
    socket, without reading the request: the caller closes the connection next."""
    try:
        sock.sendall(PDU_HEADER.pack(A_ASSOCIATE_RJ, 0, 4) + bytes((0, result, source, diagnostic)))
    except OSError:
        pass  # the peer has gone already: nothing to answer


def _oldest_silent(waiting: list[Any]) -> Any:
    """The first of ``waiting`` (oldest first) with no byte received yet, else the oldest."""
    for sock in waiting:
        try:
            if sock is not None and not isinstance(sock, ssl.SSLSocket):
                sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                continue  # it has sent something (or closed): a sender, maybe slow
        except BlockingIOError:
            return sock
        except OSError:
            return sock
        return sock
    return waiting[0]


def _shut(sock: Any) -> None:
    """End a displaced connection: its thread in the gate sees the hang-up and leaves."""
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _peek_at_least(sock: socket.socket, count: int, deadline: float) -> bytes:
    """The first ``count`` bytes waiting on ``sock``, left in place for pynetdicom to read.

    Raises:
        Dropped: the peer closed first ("closed_before_request") or the deadline passed ("negotiation_timeout").
    """
    lowat = _set_rcvlowat(sock, count)
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN | _HANGUP)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Dropped("negotiation_timeout")
            events = poller.poll(remaining * 1000)
            if not events:
                continue  # the deadline check above ends it
            try:
                seen = sock.recv(count, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue  # readable a moment ago, not now: look again
            except OSError:
                raise Dropped("closed_before_request") from None
            if len(seen) >= count:
                return seen
            if not seen or events[0][1] & _HANGUP:
                raise Dropped("closed_before_request")
            # Readable yet short, and still open: SO_RCVLOWAT not honoured (or capped by the buffer size).
            time.sleep(min(_SHORT_POLL_S, max(0.0, deadline - time.monotonic())))
    finally:
        if lowat:
            _set_rcvlowat(sock, 1)


def _set_rcvlowat(sock: socket.socket, count: int) -> bool:
    """Make poll() report ``sock`` readable only once ``count`` bytes (or EOF) are there. False if unsupported."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, count)
    except (OSError, AttributeError):
        return False
    return True


def _handshake(sock: ssl.SSLSocket, deadline: float) -> None:
    sock.setblocking(False)
    try:
        while True:
            try:
                sock.do_handshake()
                return
            except ssl.SSLWantReadError:
                _wait(sock, select.POLLIN, deadline)
            except ssl.SSLWantWriteError:
                _wait(sock, select.POLLOUT, deadline)
            except (ssl.SSLError, OSError):
                raise Dropped("tls_handshake_failed") from None
    finally:
        sock.setblocking(True)


def _wait_readable(sock: Any, deadline: float) -> None:
    _wait(sock, select.POLLIN, deadline)


def _wait(sock: Any, event: int, deadline: float) -> None:
    poller = select.poll()
    poller.register(sock, event | _HANGUP)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise Dropped("negotiation_timeout")
    events = poller.poll(remaining * 1000)
    if not events:
        raise Dropped("negotiation_timeout")
    if events[0][1] & _HANGUP and not events[0][1] & event:
        raise Dropped("closed_before_request")
