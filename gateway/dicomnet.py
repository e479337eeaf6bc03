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
    event.assoc.dul._run_loop_delay = DUL_POLL_DELAY_S


NODELAY_HANDLER = (evt.EVT_CONN_OPEN, tune_association)
