"""An MLLP client: one message out, its one answer (the ACK) back, within one deadline.

The gateway's own messages to a hospital (the report as ORU^R01) go out through it. One connection per
message: senders of results hold no connection open between messages, so a receiver that restarts costs
nothing but one attempt. TCP_NODELAY is set (no Nagle delay between the frame and its end block).

It imports nothing of the MLLP server (``gateway.mllp.server``, a way in): the stages use it, and the server
takes its framing constants from here.
"""

from __future__ import annotations

import socket
import time

from gateway.errors import MllpError, MllpTimeout

__all__ = ["END_BLOCK", "MAX_ANSWER_BYTES", "START_BLOCK", "exchange", "frame"]

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
MAX_ANSWER_BYTES = 1024 * 1024  # an ACK is a few hundred bytes; anything near this is not one


def frame(message: str | bytes) -> bytes:
    """Wrap an ER7 message in MLLP framing."""
    data = message.encode("utf-8") if isinstance(message, str) else message
    return START_BLOCK + data + END_BLOCK


def exchange(host: str, port: int, message: bytes, timeout_s: float) -> bytes:
    """Send ``message`` in one MLLP frame and return the first framed answer (without its framing).

    ``timeout_s`` bounds the whole exchange: connecting, sending and reading the answer.

    Raises:
        MllpTimeout: no complete answer before the deadline.
        MllpError: the connection was refused, reset or closed before a whole frame came back, or the answer
            is too large to be an acknowledgement.
    """
    deadline = time.monotonic() + timeout_s
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as connection:
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection.settimeout(_remaining(deadline))
            connection.sendall(frame(message))
            return _read_answer(connection, deadline)
    except TimeoutError as exc:
        raise MllpTimeout(f"no answer within {timeout_s:g} s") from exc
    except OSError as exc:
        raise MllpError(f"connection failed: {type(exc).__name__}") from exc


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    return remaining


def _read_answer(connection: socket.socket, deadline: float) -> bytes:
    """Bytes up to the first end block; what comes before the start block is line noise and is dropped."""
    buffer = b""
    while END_BLOCK not in buffer:
        connection.settimeout(_remaining(deadline))
        chunk = connection.recv(65536)
        if not chunk:
            raise MllpError("the peer closed the connection before a whole answer")
        buffer += chunk
        if len(buffer) > MAX_ANSWER_BYTES:
            raise MllpError("the answer is too large to be an acknowledgement")
    answer = buffer[:buffer.index(END_BLOCK)]
    start = answer.find(START_BLOCK)
    if start < 0:
        raise MllpError("the answer has no MLLP start block")
    return answer[start + 1:]
