"""DICOM networking details shared by every association the gateway accepts or opens."""

from __future__ import annotations

import socket
from typing import Any

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import evt

# The order matters: pynetdicom, as acceptor, takes the first syntax of this list that the requestor
# proposes. Explicit VR Little Endian first, then the compressed syntaxes (accepted as sent, never
# decoded on receipt), then the legacy ones.
ACCEPTED_TRANSFER_SYNTAXES: list[str] = [
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEG2000,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    RLELossless,
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
]


def set_tcp_nodelay(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: disable Nagle's algorithm on the association's socket.

    Without it, a DIMSE response waits for the peer's delayed ACK and a link crawls at a few dozen
    instances per second instead of hundreds.
    """
    sock: Any = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # the peer may already have gone; the association will notice on its own


# pynetdicom's DUL thread sleeps this long between polls when idle (its default is 1 ms, paid on every
# request and response). A shorter delay costs a little CPU while an association is open, and saves about
# half a millisecond per instance.
DUL_POLL_DELAY_S = 0.0002


def tune_association(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: TCP_NODELAY, and a shorter DUL poll delay."""
    set_tcp_nodelay(event)
    bound_socket_reads(event)
    if event.assoc.is_requestor:
        requeue_stolen_responses(event.assoc)
    event.assoc.dul._run_loop_delay = DUL_POLL_DELAY_S


def requeue_stolen_responses(assoc: Any) -> None:
    """Give back to ``send_c_store`` (and the other ``send_*``) a response that the association's reactor
    thread took off the DIMSE queue first.

    pynetdicom pauses its reactor while a ``send_*`` waits for the response, but the pause can race (the
    reactor may be between its checkpoint and its queue read; pynetdicom issues #435 and #875). The reactor
    then logs "Received unexpected C-STORE service message" and drops the response: the C-STORE the peer
    stored is taken for a failure after ``dimse_timeout``, and the object is sent again. Seen under load in
    bench/load.py. A response taken while a ``send_*`` is waiting (the checkpoint is cleared) goes back on
    the queue for it; anything else is handled as before.
    """
    serve = assoc._serve_request

    def serve_or_requeue(msg: Any, context_id: int) -> None:
        if not msg.is_valid_request and not assoc._reactor_checkpoint.is_set():
            assoc.dimse.msg_queue.put((context_id, msg))
            return
        serve(msg, context_id)

    assoc._serve_request = serve_or_requeue


def bound_socket_reads(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: a socket the server accepted gets the association's network timeout.

    pynetdicom sets it on sockets it connects, not on accepted ones (they inherit blocking mode), and its
    DUL reads a PDU's remaining bytes with a blocking ``recv``: a peer that sends part of a PDU and stalls
    would hold an association slot and a thread forever.
    """
    sock: Any = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    timeout = event.assoc.network_timeout
    if sock is not None and timeout is not None and sock.gettimeout() is None:
        try:
            sock.settimeout(timeout)
        except OSError:
            pass  # already closed by the peer


NODELAY_HANDLER = (evt.EVT_CONN_OPEN, tune_association)
