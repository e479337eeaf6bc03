"""DICOM networking details shared by every association the gateway accepts or opens."""

from __future__ import annotations

import copy
import hashlib
import inspect
import io
import os
import queue
import select
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pynetdicom
import pynetdicom._config
import pynetdicom.association
import pynetdicom.dimse
import pynetdicom.dimse_messages
import pynetdicom.dul
import pynetdicom.fsm
import structlog
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import evt
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

from gateway.dicom.command import encode_command_set, store_request_values, store_response_command
from gateway.dicom.filemeta import part10_header
from gateway.errors import ConfigError

log = structlog.get_logger("dicomnet")

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


# pynetdicom's DUL thread sleeps this long between polls when idle (its default is 1 ms). Here its sleep
# ends as soon as the socket is readable or the association queues something to send (``_ReactorClock``),
# so the delay only bounds how late it notices a timer or being stopped.
DUL_POLL_DELAY_S = 0.005
# An acceptor's association thread looks this long at a time for work (pynetdicom's own loop: every 1 ms). Its
# work is woken promptly anyway: a DIMSE message queued, a release or abort from the peer (``wake_reactor_on_
# user_primitive``), a ``send_*`` wanting it paused (``pause_reactor_promptly``). The delay only bounds how late
# it notices its DUL thread gone or the network timeout, and spares each association a thousand wake-ups a
# second, each taking the GIL from the thread that receives the data.
ASSOCIATION_POLL_S = 0.05


def tune_association(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: TCP_NODELAY and bounded socket reads always; with the hooks installed
    (``install_fast_paths``), also whole-PDU socket reads and a DUL that wakes when there is work."""
    set_tcp_nodelay(event)
    bound_socket_reads(event)
    if not fast_paths_installed():
        return
    read_pdus_whole(event)
    if event.assoc.is_requestor:
        requeue_stolen_responses(event.assoc)
        pause_reactor_promptly(event.assoc)
        send_data_directly(event.assoc)
    else:
        serve_stores_in_dul_thread(event.assoc)
        read_pdata_without_copies(event.assoc)
        pause_reactor_promptly(event.assoc)
        wake_reactor_on_user_primitive(event.assoc)
    wake_dul_on_send(event.assoc.dul)
    abort_on_events_out_of_state(event.assoc.dul)
    event.assoc.bind(evt.EVT_CONN_CLOSE, close_wake_line)
    event.assoc.dul._run_loop_delay = DUL_POLL_DELAY_S


# Events that stand for a primitive the local user queued for the DUL (``_process_recv_primitive`` looks at it on
# ``to_provider_queue`` and leaves it there for the action to take) and for a PDU the peer sent (left on
# ``_recv_pdu`` for the action): an event dropped must take its item with it, or the next turn finds it again.
_LOCAL_EVENTS = frozenset({"Evt1", "Evt2", "Evt7", "Evt8", "Evt9", "Evt11", "Evt14", "Evt15"})
_PEER_PDU_EVENTS = frozenset({"Evt3", "Evt4", "Evt6", "Evt10", "Evt12", "Evt13", "Evt16"})
_INVALID_PDU_EVENT = "Evt19"    # PS3.8 9.2: an unrecognised or invalid PDU; AA-8 in an open association
_AWAITING_CLOSE = "Sta13"       # an A-ABORT (or A-RELEASE-RP) sent: nothing left to say to the peer


def abort_on_events_out_of_state(dul: Any) -> None:
    """Give ``dul``'s state machine a ``do_action`` that survives an event its transition table has no entry for.

    pynetdicom raises ``InvalidEventError`` there, in the DUL thread, which dies with a traceback and leaves the
    association to end without an abort and its socket open. Fuzz input races it: a peer sends an A-RELEASE-RQ
    and then an invalid PDU; the DUL answers the second with an A-ABORT (AA-8, state 13) while the association's
    thread answers the first, and that A-RELEASE response (Evt14) arrives in state 13. Here such an event is
    logged and dropped with the primitive or PDU it stands for; if the association is still open (any state but
    idle, awaiting transport, awaiting close), it is aborted as for an invalid PDU (Evt19: an A-ABORT to the peer,
    an A-P-ABORT to the association, the ARTIM timer), so the DUL and association threads end as after any
    abort."""
    machine = dul.state_machine
    stock = machine.do_action
    table = pynetdicom.fsm.TRANSITION_TABLE

    def do_action(event: str) -> None:
        state = machine.current_state
        if (event, state) in table:
            stock(event)
            return
        _take_item_of(dul, event)
        abort = state != _AWAITING_CLOSE and (_INVALID_PDU_EVENT, state) in table
        log.warning("association_event_unexpected", state=state, kind=event,
                    reason="aborted as for an invalid PDU" if abort else "dropped: the association is ending")
        if abort:
            stock(_INVALID_PDU_EVENT)

    machine.do_action = do_action


def _take_item_of(dul: Any, event: str) -> None:
    """Remove what ``event`` stands for from its queue: the user's primitive at the head of ``to_provider_queue``
    (only the DUL thread takes from it, so the head is the one the event was made from) or the peer's PDU."""
    source = dul.to_provider_queue if event in _LOCAL_EVENTS else dul._recv_pdu if event in _PEER_PDU_EVENTS else None
    if source is not None:
        try:
            source.get_nowait()
        except queue.Empty:
            pass


def wake_dul_on_send(dul: Any) -> None:
    """Give the DUL thread a wake-up line: every primitive queued for sending also writes a byte to a
    socket pair that the DUL's sleep watches beside the peer's socket (see ``_wait_for_bytes``)."""
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    outgoing = dul.to_provider_queue
    queue_put = outgoing.put

    def put_and_wake(item: Any, block: bool = True, timeout: float | None = None) -> None:
        queue_put(item, block, timeout)
        try:
            writer.send(b"\0")
        except OSError:  # full (the DUL has many wake-ups pending already) or closed: either way it wakes
            pass

    outgoing.put = put_and_wake
    dul._gateway_wake = reader
    dul._gateway_wake_writer = writer
    weakref.finalize(dul, reader.close)  # a backstop: close_wake_line closes both when the connection does
    weakref.finalize(dul, writer.close)


def wake_reactor_on_user_primitive(assoc: Any) -> None:
    """Wake the association's thread when its DUL thread hands it an A-RELEASE, A-ABORT or A-P-ABORT (every
    primitive the DUL puts on ``to_user_queue``), as a queued DIMSE message does; then let that thread look for
    work every ``ASSOCIATION_POLL_S`` instead of every millisecond (``_wait_for_message``)."""
    messages = assoc.dimse.msg_queue
    primitives = assoc.dul.to_user_queue
    queue_put = primitives.put

    def put_and_wake(item: Any, block: bool = True, timeout: float | None = None) -> None:
        queue_put(item, block, timeout)
        with messages.not_empty:
            messages.not_empty.notify_all()

    primitives.put = put_and_wake
    assoc._gateway_poll_s = ASSOCIATION_POLL_S


def close_wake_line(event: evt.Event) -> None:
    """EVT_CONN_CLOSE handler: close the DUL's wake-up socket pair with the connection (not at garbage
    collection, which for the association's reference cycles may come much later)."""
    for name in ("_gateway_wake", "_gateway_wake_writer"):
        sock = getattr(event.assoc.dul, name, None)
        if sock is not None:
            sock.close()


class _StoresServedInline(queue.Queue):
    """An acceptor's DIMSE message queue that serves C-STORE requests at once, in the thread that decoded them.

    pynetdicom's DUL thread decodes a request and queues it; the association's thread takes it, runs the
    handler and queues the response; the DUL thread takes that and sends it. Two hand-offs between threads
    per instance, each waiting for a sleeping thread to be scheduled again (a third of a millisecond here,
    on every instance of a serial transfer). A sender waits for each response before sending more, so the
    DUL thread has nothing else to do meanwhile: it runs the C-STORE service itself and then sends the
    response on its next turn. Every other message goes through the queue as before.
    """

    def __init__(self, assoc: Any) -> None:
        super().__init__()
        self._assoc = assoc

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        context_id, message = item
        if isinstance(message, C_STORE) and message.is_valid_request and self._assoc.is_established:
            try:
                self._assoc._serve_request(message, context_id)
            except Exception as exc:  # noqa: BLE001 - the DUL thread must carry on, as the reactor would
                log.error("store_service_failed", error=type(exc).__name__)
            return
        super().put(item, block, timeout)


def serve_stores_in_dul_thread(assoc: Any) -> None:
    """Install ``_StoresServedInline`` as ``assoc``'s DIMSE message queue (before any message arrives)."""
    pending = assoc.dimse.msg_queue
    inline = _StoresServedInline(assoc)
    while not pending.empty():  # nothing is expected this early, but keep anything that is
        inline.put(pending.get_nowait())
    assoc.dimse.msg_queue = inline


def send_data_directly(assoc: Any) -> None:
    """Let a requestor's thread send its P-DATA PDUs itself instead of queueing each for the DUL thread.

    pynetdicom queues every PDU of a C-STORE for the DUL thread to encode and send, one per turn of its
    loop: a 512x512 image goes as 32 PDUs to a peer that takes 16 KiB PDUs (DCMTK's default), 32 hand-offs
    between threads. In the data-transfer state (Sta6) a P-DATA leaves the state machine where it was, so
    it is sent here directly when nothing is queued ahead of it; a lock keeps each PDU's bytes whole
    against the DUL thread's own sends. Anything else (release, abort) is queued as before.
    """
    dul = assoc.dul
    transport = dul.socket
    lock = threading.Lock()
    dul._gateway_send_lock = lock  # DirectStores writes whole C-STOREs under the same lock
    transport_send = transport.send

    def send_whole(bytestream: bytes) -> None:
        with lock:
            transport_send(bytestream)

    transport.send = send_whole
    queue_pdu = dul.send_pdu

    def send_pdu(primitive: Any) -> None:
        if (isinstance(primitive, P_DATA) and threading.current_thread() is not dul
                and dul.state_machine.current_state == "Sta6" and dul.to_provider_queue.empty()):
            dul._send(P_DATA_TF(primitive))
            return
        queue_pdu(primitive)

    dul.send_pdu = send_pdu


# --- Requestor side: a delivery's C-STOREs written straight to the socket (``DirectStores``) ---

# A P-DATA-TF PDU holding one PDV: PDU type 04H, reserved, PDU length; PDV item length, presentation context
# ID, message control header (bit 0: command, bit 1: last fragment). PS3.8 9.3.5 and E.2.
_PDATA_PDV_HEADER = struct.Struct(">BBIIBB")
_SENDMSG_BUFFERS = 512  # buffers per sendmsg call, well under the kernel's IOV_MAX (1024)
# C-STORE-RQ command elements (PS3.7 9.3.1.1), Implicit VR Little Endian: tag and 32-bit length.
_COMMAND_ELEMENT = struct.Struct("<HHI")
_C_STORE_RQ = 0x0001
_MEDIUM_PRIORITY = 0x0002
_DATA_SET_PRESENT = 0x0001


def c_store_command(message_id: int, sop_class_uid: str, sop_instance_uid: str,
                    priority: int = _MEDIUM_PRIORITY) -> bytes:
    """The encoded command set of a C-STORE-RQ with a data set: the bytes pynetdicom's ``send_c_store`` sends."""
    def uid(value: str) -> bytes:
        raw = value.encode("ascii")
        return raw + b"\0" if len(raw) % 2 else raw

    def element(tag: int, value: bytes) -> bytes:
        return _COMMAND_ELEMENT.pack(0, tag, len(value)) + value

    body = b"".join((
        element(0x0002, uid(sop_class_uid)),
        element(0x0100, struct.pack("<H", _C_STORE_RQ)),
        element(0x0110, struct.pack("<H", message_id)),
        element(0x0700, struct.pack("<H", priority)),
        element(0x0800, struct.pack("<H", _DATA_SET_PRESENT)),
        element(0x1000, uid(sop_instance_uid)),
    ))
    return element(0x0000, struct.pack("<I", len(body))) + body


def pdata_pdus(context_id: int, pieces: Sequence[bytes | memoryview], *, command: bool,
               max_pdu_length: int) -> list[bytes | memoryview]:
    """One message part (a command set or a data set, given as ``pieces`` sent in order, never joined) as
    P-DATA-TF PDUs of at most ``max_pdu_length`` (the peer's; 0: no limit) with one PDV each, as buffers for
    one gathered send: each PDU's 12-byte header, then slices of the pieces. The fragments are those
    pynetdicom makes (``max_pdu_length - 6`` bytes each, the last one marked)."""
    views = [memoryview(piece).cast("B") for piece in pieces if len(piece)]
    remaining = sum(len(view) for view in views)
    fragment = max_pdu_length - 6 if max_pdu_length > 6 else max(remaining, 1)
    flag = 0x01 if command else 0x00
    buffers: list[bytes | memoryview] = []
    index = position = 0
    while True:
        size = min(fragment, remaining)
        remaining -= size
        buffers.append(_PDATA_PDV_HEADER.pack(0x04, 0, size + 6, size + 2, context_id,
                                              flag | (0x02 if not remaining else 0)))
        while size:
            view = views[index]
            take = min(size, len(view) - position)
            buffers.append(view[position:position + take])
            position += take
            size -= take
            if position == len(view):
                index, position = index + 1, 0
        if not remaining:
            return buffers


def send_buffers(sock: socket.socket, buffers: Sequence[bytes | memoryview]) -> None:
    """Write every byte of ``buffers`` to ``sock`` in order, in as few ``sendmsg`` calls as the kernel allows
    (``sendall`` of the joined bytes on TLS, which has no ``sendmsg``). Raises OSError as ``sendall`` does."""
    if isinstance(sock, ssl.SSLSocket):
        sock.sendall(b"".join(buffers))
        return
    pending = list(buffers)
    start = 0
    while start < len(pending):
        batch = pending[start:start + _SENDMSG_BUFFERS]
        sent = sock.sendmsg(batch)
        for buffer in batch:  # skip what went, keep the rest of a buffer sent in part
            if sent >= len(buffer):
                sent -= len(buffer)
                start += 1
                continue
            if sent:
                pending[start] = memoryview(buffer)[sent:]
            break


class DirectStores:
    """The C-STOREs of one delivery over a requestor association, sent without pynetdicom's per-PDU path.

    ``send_c_store`` pauses the association's reactor before each store and waits until it has; splits the data
    set into P-DATA primitives that are encoded and sent one by one (32 for a 525 KB image to a peer that
    takes 16 KiB PDUs, DCMTK's default), and takes a file by path only (so an edited object had to be written
    to a file first). Here the reactor is paused once, for the whole delivery (``with DirectStores(assoc)``);
    each store's command set and data set, given as encoded pieces, go out as P-DATA-TF PDUs of the peer's
    size in one gathered ``sendmsg``; the response is taken off the DIMSE queue, where the DUL thread puts it
    (or ``(None, None)`` when the association is aborted or its connection closes) and read as
    ``send_c_store`` reads it. Only with the hooks installed and the association tuned (``available``).
    """

    def __init__(self, assoc: Any) -> None:
        self.assoc = assoc
        self.broken = False  # no response (timeout, abort, connection closed): no further store is sent
        self.sent = 0        # C-STOREs sent this way
        self._lock: threading.Lock = assoc.dul._gateway_send_lock
        self._max_pdu = int(assoc.acceptor.maximum_length or 0)
        self._message_id = 0
        self._contexts = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])): cx.context_id
                          for cx in assoc.accepted_contexts}

    @staticmethod
    def available(assoc: Any) -> bool:
        """Whether ``assoc`` is a requestor association tuned with the hooks this needs."""
        return (fast_paths_installed() and assoc.is_requestor and assoc.is_established
                and getattr(assoc.dul, "_gateway_send_lock", None) is not None
                and isinstance(getattr(assoc.dul.socket, "socket", None), socket.socket))

    def __enter__(self) -> DirectStores:
        assoc = self.assoc
        assoc._reactor_checkpoint.clear()  # pause_reactor_promptly wakes the reactor to see it
        while not assoc._is_paused and assoc.is_established and not assoc._kill:
            time.sleep(0.0001)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.assoc._reactor_checkpoint.set()

    def context_id(self, sop_class_uid: str, transfer_syntax_uid: str) -> int | None:
        """The accepted presentation context for the pair, None if there is none."""
        return self._contexts.get((sop_class_uid, transfer_syntax_uid))

    def store(self, context_id: int, sop_class_uid: str, sop_instance_uid: str,
              data_set: Sequence[bytes | memoryview]) -> Dataset:
        """C-STORE the data set encoded as ``data_set`` (pieces sent in order, in the context's transfer syntax).
        Returns what ``send_c_store`` returns: the response's status elements, or an empty Dataset when no
        response came (the association is then aborted, as ``send_c_store`` does, and ``broken`` is set)."""
        if not self.send(context_id, sop_class_uid, sop_instance_uid, data_set):
            return Dataset()
        return self.response()

    def send(self, context_id: int, sop_class_uid: str, sop_instance_uid: str,
             data_set: Sequence[bytes | memoryview]) -> bool:
        """The request half of ``store``: True once every byte is with the kernel (the pieces may then be
        reused), when ``response`` must follow; False when it could not be sent (``broken`` is then set)."""
        assoc = self.assoc
        if self.broken or not assoc.is_established or assoc.dul.state_machine.current_state != "Sta6":
            self.broken = True
            return False
        self._message_id = self._message_id % 0xFFFF + 1
        command = c_store_command(self._message_id, sop_class_uid, sop_instance_uid)
        buffers = pdata_pdus(context_id, [command], command=True, max_pdu_length=self._max_pdu)
        buffers += pdata_pdus(context_id, data_set, command=False, max_pdu_length=self._max_pdu)
        transport = assoc.dul.socket
        try:
            with self._lock:
                send_buffers(transport.socket, buffers)
        except (OSError, ValueError):  # as pynetdicom's own send: the transport connection is closed (Evt17)
            transport.event_queue.put("Evt17")
            self._no_response()
            return False
        return True

    def response(self) -> Dataset:
        """The response half of ``store``, after a ``send`` that returned True."""
        assoc = self.assoc
        try:
            _, response = assoc.dimse.msg_queue.get(timeout=assoc.dimse_timeout)
        except queue.Empty:
            response = None
        if response is None:
            return self._no_response()
        self.sent += 1
        return assoc._check_received_status(response)

    def _no_response(self) -> Dataset:
        self.broken = True
        self.assoc._reactor_checkpoint.set()  # the reactor takes over, and handles the abort or close
        self.assoc._handle_no_response()
        return Dataset()


def pause_reactor_promptly(assoc: Any) -> None:
    """A requestor's ``send_*`` first asks the association's reactor to pause and waits until it has: make
    the reactor's wait (``_wait_for_message``) end at that request, not at the end of its millisecond.
    Paid before every C-STORE a delivery sends."""
    checkpoint = assoc._reactor_checkpoint
    clear = checkpoint.clear
    messages = assoc.dimse.msg_queue

    def clear_and_wake() -> None:
        clear()
        with messages.not_empty:
            messages.not_empty.notify_all()

    checkpoint.clear = clear_and_wake


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


# A PDU's bytes are read in one buffer of this size at first, grown as they actually arrive: the length comes
# from the peer, and a claimed 4 GiB PDU must not reserve 4 GiB before a byte of it is sent.
FIRST_READ_BUFFER = 2 * 1024 * 1024


def read_pdus_whole(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: read each PDU with ``recv_into`` in as few calls as the kernel allows.

    pynetdicom reads a PDU 4 KiB per ``recv`` and appends each piece to a ``bytearray``: about 130 system calls
    and copies for a 512x512 16-bit image, a third of its receiving time.
    """
    assoc_socket: Any = getattr(event.assoc.dul, "socket", None)
    if assoc_socket is not None and getattr(assoc_socket, "socket", None) is not None:
        assoc_socket.recv = lambda nr_bytes: recv_exactly(assoc_socket.socket, nr_bytes)


_PDU_HEADER = struct.Struct(">BBL")
_PDV_ITEM_HEADER = struct.Struct(">LB")
_P_DATA_TF = 0x04
_PDU_TYPES = (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07)


class _ReceivedPData:
    """A P-DATA-TF PDU as read by ``read_pdata_without_copies``: what the state machine takes of a received one
    (``to_primitive``, in DT-2 and AR-6), its PDV values kept as views of the bytes read."""

    __slots__ = ("values",)

    def __init__(self, body: memoryview) -> None:
        """Split ``body`` (the PDU after its 6-byte header) into PDV items, as ``P_DATA_TF.decode`` does.

        Raises:
            ValueError: an item shorter than its header or running past the end (pynetdicom: Evt19).
        """
        self.values: list[tuple[int, memoryview]] = []
        position, end = 0, len(body)
        while position < end:
            if position + 5 > end:
                raise ValueError("truncated PDV item header")
            length, context_id = _PDV_ITEM_HEADER.unpack_from(body, position)
            if length < 1 or position + 4 + length > end:
                raise ValueError("PDV item length does not fit the PDU")
            self.values.append((context_id, body[position + 5:position + 4 + length]))
            position += 4 + length

    def to_primitive(self) -> P_DATA:
        primitive = P_DATA()
        primitive.presentation_data_value_list = []
        primitive.presentation_data_value_list.extend(self.values)  # type: ignore[arg-type]  # memoryviews, unchecked, as P_DATA_TF appends
        return primitive


def read_pdata_without_copies(assoc: Any) -> None:
    """Give an acceptor's DUL a ``_read_pdu_data`` that reads each PDU into one buffer and hands a P-DATA-TF's
    fragments on as views of it (``_ReceivedPData``).

    pynetdicom copies each received PDU five times before the DIMSE layer appends its fragments to the data
    set (the read appended to the header, turned into bytes, the body sliced off, each item sliced, the
    message control header sliced off): a quarter of a millisecond per 525 KB instance. Every other PDU type,
    and every PDU while anyone is bound to ``EVT_DATA_RECV`` or ``EVT_PDU_RECV``, is decoded by pynetdicom's
    own ``_decode_pdu``; the events put on the state machine's queue are those of pynetdicom's
    ``_read_pdu_data``.
    """
    dul = assoc.dul
    dul._read_pdu_data = lambda: _read_pdu(dul)


def _read_pdu(dul: Any) -> None:
    """``DULServiceProvider._read_pdu_data`` (whose steps and events it keeps) with P-DATA-TF read in place."""
    transport = dul.socket
    try:
        header = transport.recv(6)
    except (OSError, TimeoutError):
        log.warning("pdu_read_failed", reason="connection closed before the entire PDU was received")
        dul.event_queue.put("Evt17")
        return
    if len(header) != 6:
        dul.event_queue.put("Evt17")
        return
    pdu_type, _, pdu_length = _PDU_HEADER.unpack(header)
    if pdu_type not in _PDU_TYPES:
        log.warning("pdu_read_failed", reason="unknown PDU type")
        dul.event_queue.put("Evt19")
        return
    try:
        body = transport.recv(pdu_length)
    except (OSError, TimeoutError):
        log.warning("pdu_read_failed", reason="connection closed before the entire PDU was received")
        dul.event_queue.put("Evt17")
        return
    if len(body) != pdu_length:
        log.warning("pdu_read_failed", reason="the received PDU is shorter than its length")
        dul.event_queue.put("Evt17")
        return
    try:
        if pdu_type == _P_DATA_TF and not _pdu_receipt_watched(dul.assoc):
            pdu, event = _ReceivedPData(memoryview(body)), "Evt10"
        else:
            pdu, event = dul._decode_pdu(bytearray(header) + body)
            if event == "Evt16":
                # An A-ABORT's source and reason are checked only when the state machine's AA-3 turns it into a
                # primitive, where an invalid one raises and kills the DUL thread without an abort event (its
                # association then ends unannounced): checked here, it is an undecodable PDU (Evt19) instead.
                pdu.to_primitive()
        dul.event_queue.put(event)
    except Exception as exc:  # noqa: BLE001 - as pynetdicom: any undecodable PDU is Evt19
        log.warning("pdu_read_failed", reason="undecodable PDU", error=type(exc).__name__)
        dul.event_queue.put("Evt19")
        return
    dul._recv_pdu.put(pdu)


def _pdu_receipt_watched(assoc: Any) -> bool:
    return bool(assoc.get_handlers(evt.EVT_DATA_RECV) or assoc.get_handlers(evt.EVT_PDU_RECV))


def recv_exactly(sock: socket.socket, nr_bytes: int) -> bytearray:
    """Read ``nr_bytes`` from ``sock``; fewer only if the peer closes first (as pynetdicom's own ``recv``)."""
    buffer = bytearray(min(nr_bytes, FIRST_READ_BUFFER))
    received = 0
    while received < nr_bytes:
        if received == len(buffer):
            buffer.extend(bytes(min(len(buffer), nr_bytes - received)))  # at most doubles what has arrived
        with memoryview(buffer) as view:
            count = sock.recv_into(view[received:])
        if not count:
            del buffer[received:]
            break
        received += count
    return buffer


# --- Acceptor side: a received data set bounded in size, and written to the spool once it is large ---

# A data set is held in memory up to this size (every image of an ordinary study, one copy in the kernel's
# buffer size order); beyond it, it goes on to a file in the spool as it arrives, so that four 400 MB instances
# received at once cost the process four times this, not 1.6 GB.
SPILL_AFTER_BYTES = 16 * 1024 * 1024


class BoundedDataSet(io.BytesIO):
    """A C-STORE request's data set as pynetdicom's ``decode_msg`` writes it, fragment by fragment.

    - Up to ``SPILL_AFTER_BYTES`` it is an ordinary ``BytesIO`` (the hot path reads its buffer, as before).
    - Past that, its bytes so far and every later fragment go to a new file in ``spill_dir`` (the spool's own
      ``tmp/``), preceded by the Part 10 header from ``meta`` (called once, when it spills), and are hashed on
      the way (SHA-256 of the data set alone, as the spool names files): the receiver then renames that file
      into the spool instead of writing the bytes again (``path``, ``meta``, ``size``, ``digest``).
    - Past ``limit`` bytes it keeps nothing more (``too_large``): what it held is dropped, the rest of the
      message is read and counted only, and the handler refuses it.
    - A write failure (a full disk) is kept in ``failed`` and ends the keeping the same way.
    """

    def __init__(self, limit: int, spill_dir: Path, meta: Callable[[], bytes]) -> None:
        super().__init__()
        self.limit = limit
        self.size = 0  # data set bytes received so far
        self.too_large = False
        self.failed: OSError | None = None
        self.meta = b""
        self.path: Path | None = None
        self._spill_dir = spill_dir
        self._make_meta = meta
        self._fd = -1
        self._hash: Any = None

    @property
    def spilled(self) -> bool:
        return self.path is not None

    def write(self, data: Any) -> int:
        count = len(data)
        self.size += count
        if self.too_large or self.failed is not None:
            return count
        if self.size > self.limit:
            self.too_large = True
            self._drop()
            return count
        if self.path is None and self.size <= SPILL_AFTER_BYTES:
            return super().write(data)
        try:
            if self.path is None:
                self._spill()
            self._append(data)
        except OSError as exc:
            self.failed = exc
            self._drop()
        return count

    def digest(self) -> str:
        return self._hash.hexdigest()

    def finish(self) -> Path:
        """Make the spilled file durable (fsync) and close it; returns its path.

        Raises:
            OSError: the write or the fsync failed.
        """
        if self.failed is not None:
            raise self.failed
        fd, self._fd = self._fd, -1
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return self.path  # type: ignore[return-value]

    def discard(self) -> None:
        """Remove the spilled file (best effort): refused, failed, or the association ended mid-message."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def _spill(self) -> None:
        self.meta = self._make_meta()
        path = self._spill_dir / f"{os.urandom(8).hex()}.part"
        self._fd, self.path = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640), path
        self._hash = hashlib.sha256()
        _write_fd(self._fd, memoryview(self.meta))
        with self.getbuffer() as held:
            self._append(held)
        self.seek(0)
        self.truncate(0)  # frees the buffer

    def _append(self, data: Any) -> None:
        self._hash.update(data)
        _write_fd(self._fd, memoryview(data).cast("B"))

    def _drop(self) -> None:
        self.discard()
        self.seek(0)
        self.truncate(0)


def _write_fd(fd: int, view: memoryview) -> None:
    while len(view):
        view = view[os.write(fd, view):]


def bound_received_data_sets(event: evt.Event, limit: int, spill_dir: Path) -> None:
    """EVT_CONN_OPEN handler of an SCP: each data set this association receives is a ``BoundedDataSet`` (at most
    ``limit`` bytes kept; spilled to ``spill_dir`` past ``SPILL_AFTER_BYTES``). Only with the hooks installed
    (``install_fast_paths``): stock pynetdicom keeps each data set whole in memory, and the C-STORE handler
    refuses one over ``limit`` only once it has arrived."""
    if not fast_paths_installed() or event.assoc.is_requestor:
        return
    assoc = event.assoc
    dimse = assoc.dimse
    stock_receive = dimse.receive_primitive

    def receive_primitive(primitive: Any) -> None:
        if dimse.message is None:
            message = DIMSEMessage()
            message.data_set = BoundedDataSet(limit, spill_dir, lambda: _message_meta(message, assoc))
            dimse.message = message
        stock_receive(primitive)

    dimse.receive_primitive = receive_primitive  # type: ignore[method-assign]  # this association's own hook
    assoc.bind(evt.EVT_CONN_CLOSE, _discard_unfinished_data_set)


def _message_meta(message: Any, assoc: Any) -> bytes:
    """The Part 10 header of the C-STORE request being received (its command set is decoded before its data
    set arrives)."""
    command = message.command_set
    context = assoc._accepted_cx[message.context_id]
    return part10_header(str(command.AffectedSOPClassUID or ""), str(command.AffectedSOPInstanceUID or ""),
                         str(context.transfer_syntax[0]))


def _discard_unfinished_data_set(event: evt.Event) -> None:
    """EVT_CONN_CLOSE: a message cut off by the end of its association leaves no file behind."""
    message = getattr(event.assoc.dimse, "message", None)
    data_set = getattr(message, "data_set", None)
    if isinstance(data_set, BoundedDataSet):
        data_set.discard()


class _ReactorClock:
    """Stands in for the ``time`` module inside pynetdicom's association and DUL modules.

    Their reactor threads poll: the association's sleeps 1 ms between looks at its DIMSE queue, the DUL's
    sleeps its poll delay between looks at the socket. A C-STORE request therefore waited up to a millisecond
    after its last byte before its handler ran, on every instance of a serial transfer. Here the same sleeps
    end early as soon as there is something to do: the association's when a DIMSE message is queued, the DUL's
    when the socket is readable. Every other sleep (and every other use of ``time``) is the real one.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        me = threading.current_thread()
        caller = sys._getframe(1).f_code.co_name
        if caller == "_run_reactor" and isinstance(me, pynetdicom.association.Association):
            _wait_for_message(me, seconds)
        elif caller == "run_reactor" and isinstance(me, pynetdicom.dul.DULServiceProvider):
            _wait_for_bytes(me, seconds)
        else:
            time.sleep(seconds)


def _wait_for_message(assoc: Any, seconds: float) -> None:
    messages = getattr(getattr(assoc, "dimse", None), "msg_queue", None)
    if messages is None:
        time.sleep(seconds)
        return
    longer = getattr(assoc, "_gateway_poll_s", None)  # set by wake_reactor_on_user_primitive
    with messages.not_empty:  # holds the queue's mutex: hence _qsize(), as Queue's own methods do
        if not messages._qsize() and assoc._reactor_checkpoint.is_set():  # cleared: a send_* wants it paused
            # A primitive already waiting (put before this look) gets the short wait; one put after it
            # notifies under this same mutex, so it cannot slip in between the look and the wait.
            if longer is not None and not assoc.dul.to_user_queue.qsize():
                seconds = longer
            messages.not_empty.wait(seconds)
        if messages._qsize():
            # A put notifies one waiter; if that was this reactor, a send_*() blocked on the same queue
            # would miss it. Pass it on (Queue.get re-checks, so an extra wake-up costs nothing).
            messages.not_empty.notify()


def _wait_for_bytes(dul: Any, seconds: float) -> None:
    sock = getattr(getattr(dul, "socket", None), "socket", None)
    if sock is None:
        time.sleep(seconds)
        return
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return  # decrypted bytes already buffered, which select cannot see
    wake = getattr(dul, "_gateway_wake", None)  # absent on an association not tuned by tune_association
    watched = [sock] if wake is None or wake.fileno() < 0 else [sock, wake]
    try:
        readable, _, _ = select.select(watched, [], [], seconds)
    except (OSError, ValueError):  # closed under us: the DUL loop sees it on its next look
        time.sleep(seconds)
        return
    if wake is not None and wake in readable:
        try:
            while wake.recv(4096):
                pass
        except OSError:  # drained (BlockingIOError) or closed
            pass


def store_request_to_primitive(message: Any) -> Any:
    """``C_STORE_RQ.message_to_primitive`` with the command set read directly (``store_request_values``)
    instead of element by element through pydicom: a tenth of a millisecond on every C-STORE received.
    A command set not plainly a C-STORE-RQ goes to pynetdicom's own, as do its errors: the primitive's own
    setters check each value, as there."""
    values = store_request_values(message.encoded_command_set.getvalue())
    if values is None:
        return _STOCK_MESSAGE_TO_PRIMITIVE(message)
    primitive = C_STORE()
    for name, value in values.items():
        setattr(primitive, name, value)
    primitive.DataSet = message.data_set
    primitive._context_id = message.context_id
    primitive._dataset_path = message._data_set_path
    primitive._dataset_file = message._data_set_file
    return primitive


def send_msg_store_responses_directly(dimse: Any, primitive: Any, context_id: int) -> None:
    """``DIMSEServiceProvider.send_msg`` that sends a plain C-STORE response (no error comment or offending
    element, a command set that fits one PDU, nobody bound to ``EVT_DIMSE_SENT``) as one P-DATA of its encoded
    command set (``store_response_command``), without building pynetdicom's message object and its pydicom
    dataset (a tenth of a millisecond per C-STORE answered). Every other message goes through pynetdicom's own."""
    if (type(primitive) is C_STORE and primitive.MessageIDBeingRespondedTo is not None
            and primitive.ErrorComment is None and primitive.OffendingElement is None
            and not dimse.assoc.get_handlers(evt.EVT_DIMSE_SENT)):
        command = store_response_command(primitive.MessageIDBeingRespondedTo, primitive.Status,  # type: ignore[arg-type]  # an answer has one
                                         primitive.AffectedSOPClassUID, primitive.AffectedSOPInstanceUID)
        max_pdu = dimse.maximum_pdu_size
        if command is not None and (not max_pdu or len(command) <= max_pdu - 6):
            pdata = P_DATA()
            pdata.presentation_data_value_list.append((context_id, b"\x03" + command))
            dimse.dul.send_pdu(pdata)
            return
    _STOCK_SEND_MSG(dimse, primitive, context_id)


# The methods the two above replace, as pynetdicom defines them (kept before any install).
_STOCK_MESSAGE_TO_PRIMITIVE = pynetdicom.dimse_messages.DIMSEMessage.message_to_primitive
_STOCK_SEND_MSG = pynetdicom.dimse.DIMSEServiceProvider.send_msg


_CONTEXT_ATTRIBUTES = frozenset({"_context_id", "_abstract_syntax", "_transfer_syntax", "result", "_scu_role",
                                 "_scp_role", "_as_scp", "_as_scu"})


class ContextsCopiedCheaply(list):
    """An SCP's supported presentation contexts, which pynetdicom deep-copies for every connection it accepts
    (``RequestHandler._create_association``): 171 contexts whose every UID is made and validated again, about
    14 ms of CPU for each association, a sender's or a probe's. The UIDs are immutable strings, so a copy of each
    context with a list of transfer syntaxes of its own is as independent, for a small part of that."""

    def __deepcopy__(self, memo: dict) -> list:
        copies = []
        for context in self:
            twin = copy.copy(context)
            twin._transfer_syntax = list(context._transfer_syntax)
            copies.append(twin)
        return copies


def copy_contexts_cheaply(server: Any) -> None:
    """Make ``server`` (an ``AssociationServer``) copy its contexts for each association the cheap way
    (``ContextsCopiedCheaply``), when the hooks are installed."""
    if fast_paths_installed() and not isinstance(server.contexts, ContextsCopiedCheaply):
        server.contexts = ContextsCopiedCheaply(server.contexts)


SUPPORTED_PYNETDICOM = ("3.0.4",)  # the versions whose internals the hooks below were written against and tested on

# ``off`` turns every hook off for the process (and, inherited, for the nodes and receiving processes it starts):
# the path a pynetdicom upgrade takes, which ``make test`` runs the DICOM end-to-end tests on a second time.
HOOKS_SWITCH = "SPINE_GATEWAY_PYNETDICOM_HOOKS"
_SWITCH_VALUES = {"on": True, "off": False}

# pynetdicom's documented configuration (``pynetdicom._config``, "Configuration Options" in its API reference),
# set on every version that has it, hooks on or off: not internals, so an upgrade keeps them.
DOCUMENTED_SETTINGS: dict[str, object] = {
    # Its per-PDU and per-message log handlers format every PDU and command set for DEBUG and INFO lines that
    # the gateway keeps at WARNING anyway (``gateway.ops.logs``): a tenth of a bare association's time.
    "LOG_HANDLER_LEVEL": "none",
    # send_c_store(path) sends the file's data set bytes as stored instead of decoding and re-encoding them (a
    # delivery sends a path only over a context that accepted the file's own transfer syntax). Without it, the
    # file is decoded and sent encoded again in the same syntax: slower, same data.
    "STORE_SEND_CHUNKED_DATASET": True,
}


@dataclass(frozen=True)
class FastPaths:
    """What ``install_fast_paths`` found: whether the hooks are in effect, and if not, why (``missing``: the
    pynetdicom attributes not as the hooks expect; ``switched_off``: ``SPINE_GATEWAY_PYNETDICOM_HOOKS=off``)."""

    installed: bool
    version: str
    missing: tuple[str, ...] = ()
    switched_off: bool = False


_installed: FastPaths | None = None
_install_lock = threading.Lock()


def install_fast_paths() -> FastPaths:
    """Install the gateway's pynetdicom hooks, once per process, if pynetdicom is a version they were made for
    and has every attribute they replace or call; else leave pynetdicom stock and log one warning.

    The hooks: pynetdicom's reactor sleeps wake early (``_ReactorClock``); command sets encode quickly
    (``encode_command_set``); a received C-STORE's command set is read and its response written directly
    (``store_request_to_primitive``, ``send_msg_store_responses_directly``); stored files are sent without being
    decoded; its per-PDU and per-message log
    handlers are left out (they format every PDU and command set for DEBUG and INFO lines that the gateway
    keeps at WARNING anyway, ``gateway.ops.logs``: a tenth of a bare association's time); and each association
    is tuned when its connection opens (``tune_association``: among others, an event its state machine has no
    entry for aborts the association instead of killing its DUL thread, ``abort_on_events_out_of_state``), a
    requestor's ready for a delivery's C-STOREs
    to go straight to its socket (``DirectStores``); and an SCP's contexts are copied for each association
    without validating every UID again (``copy_contexts_cheaply``); an SCP's server is registered with its AE
    as ``AE.start_server`` does (``register_server``). Stock pynetdicom is slower, never wrong: every caller
    asks ``fast_paths_installed`` (or a function here that does) before relying on a hook. The documented
    settings (``DOCUMENTED_SETTINGS``) are set in either case.
    Call it when the node starts (``GatewayNode.start``) and wherever else associations should be fast.

    Raises:
        ConfigError: ``SPINE_GATEWAY_PYNETDICOM_HOOKS`` is set to neither ``on`` nor ``off``.
    """
    global _installed
    with _install_lock:
        if _installed is None:
            _installed = _check_and_install()
        return _installed


def fast_paths_installed() -> bool:
    """Whether the hooks are in effect in this process (``install_fast_paths`` ran, and found them right)."""
    return _installed is not None and _installed.installed


def hooks_switched_on(environ: Mapping[str, str] | None = None) -> bool:
    """``SPINE_GATEWAY_PYNETDICOM_HOOKS``: ``on`` (or unset) lets the hooks be installed, ``off`` keeps pynetdicom
    stock. Any other value is refused rather than guessed (a misspelt ``off`` must not run hooked).

    Raises:
        ConfigError: the variable holds another value.
    """
    value = (os.environ if environ is None else environ).get(HOOKS_SWITCH, "on").strip().lower()
    if value not in _SWITCH_VALUES:
        raise ConfigError(f"{HOOKS_SWITCH}={value!r}: expected 'on' or 'off'")
    return _SWITCH_VALUES[value]


def _check_and_install() -> FastPaths:
    apply_documented_settings()
    version = str(getattr(pynetdicom, "__version__", "unknown"))
    if not hooks_switched_on():
        log.warning("pynetdicom_hooks_not_installed", version=version, reason=f"{HOOKS_SWITCH}=off",
                    error="running stock pynetdicom (slower)")
        return FastPaths(False, version, switched_off=True)
    missing = tuple(missing_hook_points())
    if version not in SUPPORTED_PYNETDICOM or missing:
        differs = f"lacks {', '.join(missing)}" if missing else "is not a version the hooks know"
        reason = f"pynetdicom {version} {differs}"
        log.warning("pynetdicom_hooks_not_installed", version=version, reason=reason,
                    error=f"supported: {', '.join(SUPPORTED_PYNETDICOM)}; running stock pynetdicom (slower)")
        return FastPaths(False, version, missing)
    for module in (pynetdicom.association, pynetdicom.dul):
        if not isinstance(module.time, _ReactorClock):
            module.time = _ReactorClock()  # type: ignore[attr-defined]
    pynetdicom.dimse_messages.encode = encode_command_set
    pynetdicom.dimse_messages.C_STORE_RQ.message_to_primitive = store_request_to_primitive  # type: ignore
    pynetdicom.dimse.DIMSEServiceProvider.send_msg = send_msg_store_responses_directly  # type: ignore
    return FastPaths(True, version)


def apply_documented_settings() -> list[str]:
    """Set each of ``DOCUMENTED_SETTINGS`` that this pynetdicom has with a value of the same type; returns the
    names set (one it lacks is left out: pynetdicom's default then holds, see each setting's comment)."""
    applied = []
    for name, value in DOCUMENTED_SETTINGS.items():
        if isinstance(getattr(pynetdicom._config, name, None), type(value)):
            setattr(pynetdicom._config, name, value)
            applied.append(name)
    return applied


def register_server(ae: Any, server: Any) -> bool:
    """Register ``server`` (made by ``ae.make_server``) with ``ae`` as ``AE.start_server(block=False)`` does, so
    that ``AE.shutdown()`` stops it and its own ``shutdown()`` finds it to remove. pynetdicom offers no public
    way to run a server of one's own class in the background (``start_server`` fixes the class), and the list is
    private (``AE._servers``): registered only with the hooks installed. Returns whether it was; when not, stop
    the server with ``stop_unregistered_server``."""
    if not fast_paths_installed():
        return False
    ae._servers.append(server)
    return True


def stop_unregistered_server(server: Any) -> None:
    """Stop a server that ``register_server`` left unregistered: what ``AssociationServer.shutdown`` does but
    remove it from its AE's list (socketserver's ``shutdown``, then ``server_close``)."""
    socketserver.BaseServer.shutdown(server)
    server.server_close()


def missing_hook_points() -> list[str]:
    """Every pynetdicom attribute the hooks replace or rely on that is absent or not of the expected shape."""
    from pynetdicom.ae import ApplicationEntity as AE
    from pynetdicom.association import Association
    from pynetdicom.dimse_messages import DIMSEMessage
    from pynetdicom.dul import DULServiceProvider
    from pynetdicom.presentation import PresentationContext
    from pynetdicom.transport import AssociationServer, AssociationSocket, RequestHandler

    missing: list[str] = []

    def need(ok: Any, name: str) -> None:
        try:
            good = bool(ok())
        except Exception:  # noqa: BLE001 - any failure to look means the attribute is not as expected
            good = False
        if not good:
            missing.append(name)

    def calls(function: Any, *names: str) -> bool:
        return set(names) <= set(function.__code__.co_names)

    need(lambda: isinstance(pynetdicom.association.time, (type(time), _ReactorClock)), "association.time")
    need(lambda: isinstance(pynetdicom.dul.time, (type(time), _ReactorClock)), "dul.time")
    need(lambda: calls(Association._run_reactor, "time", "sleep", "_serve_request"), "Association._run_reactor")
    need(lambda: calls(DULServiceProvider.run_reactor, "time", "sleep", "_run_loop_delay"),
         "DULServiceProvider.run_reactor")
    need(lambda: callable(pynetdicom.dimse_messages.encode) and calls(DIMSEMessage.encode_msg, "encode"),
         "dimse_messages.encode")
    need(lambda: pynetdicom.dimse_messages.C_STORE_RQ.message_to_primitive
         in (_STOCK_MESSAGE_TO_PRIMITIVE, store_request_to_primitive)
         and calls(_STOCK_MESSAGE_TO_PRIMITIVE, "command_set", "data_set", "_context_id", "_dataset_path",
                   "_dataset_file", "_data_set_path", "_data_set_file")
         and _dimse_keywords("C-STORE-RQ") == _STORE_RQ_KEYWORDS, "C_STORE_RQ.message_to_primitive")
    need(lambda: pynetdicom.dimse.DIMSEServiceProvider.send_msg in (_STOCK_SEND_MSG, send_msg_store_responses_directly)
         and list(inspect.signature(_STOCK_SEND_MSG).parameters) == ["self", "primitive", "context_id"]
         and calls(_STOCK_SEND_MSG, "primitive_to_message", "EVT_DIMSE_SENT", "encode_msg", "send_pdu",
                   "maximum_pdu_size")
         and _dimse_keywords("C-STORE-RSP") == _STORE_RSP_KEYWORDS, "DIMSEServiceProvider.send_msg")
    need(lambda: hasattr(pynetdicom._config, "LOG_HANDLER_LEVEL"), "_config.LOG_HANDLER_LEVEL")
    need(lambda: hasattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET"), "_config.STORE_SEND_CHUNKED_DATASET")
    need(lambda: list(inspect.signature(Association._serve_request).parameters) == ["self", "msg", "context_id"],
         "Association._serve_request")
    need(lambda: calls(DULServiceProvider._read_pdu_data, "socket", "recv", "_decode_pdu", "event_queue",
                       "_recv_pdu", "put")
         and list(inspect.signature(DULServiceProvider._read_pdu_data).parameters) == ["self"]
         and list(inspect.signature(DULServiceProvider._decode_pdu).parameters) == ["self", "bytestream"]
         and all(calls(action, "_recv_pdu", "to_primitive") for action in (pynetdicom.fsm.DT_2, pynetdicom.fsm.AR_6))
         and pynetdicom.fsm.TRANSITION_TABLE[("Evt10", "Sta6")] == "DT-2"
         and pynetdicom.dul._PDU_TYPES[b"\x04"] == (P_DATA_TF, "Evt10")
         and pynetdicom.dul._PDU_TYPES[b"\x07"] == (pynetdicom.pdu.A_ABORT_RQ, "Evt16")
         and calls(pynetdicom.fsm.AA_3, "_recv_pdu", "to_primitive"), "DULServiceProvider._read_pdu_data")
    need(lambda: callable(AssociationSocket.recv) and callable(DULServiceProvider._send), "DULServiceProvider._send")
    need(lambda: isinstance(C_STORE.is_valid_request, property), "C_STORE.is_valid_request")
    need(lambda: list(inspect.signature(Association._check_received_status).parameters) == ["self", "rsp"],
         "Association._check_received_status")
    need(lambda: calls(Association._handle_no_response, "abort"), "Association._handle_no_response")
    need(lambda: calls(AssociationSocket.send, "socket", "event_queue"), "AssociationSocket.send")
    need(lambda: calls(Association.send_c_store, "_reactor_checkpoint", "_is_paused", "send_msg", "get_msg"),
         "Association.send_c_store")
    need(lambda: calls(AssociationServer.shutdown, "_servers", "remove") and calls(AE.shutdown, "_servers")
         and isinstance(AE()._servers, list), "AE._servers")
    need(lambda: calls(RequestHandler._create_association, "deepcopy", "server", "contexts")
         and set(vars(PresentationContext())) == _CONTEXT_ATTRIBUTES, "RequestHandler._create_association")
    need(lambda: calls(pynetdicom.dimse.DIMSEServiceProvider.receive_primitive, "message", "DIMSEMessage",
                       "decode_msg")
         and calls(DIMSEMessage.decode_msg, "write", "data_set", "_data_set_file")
         and not pynetdicom._config.STORE_RECV_CHUNKED_DATASET
         and isinstance(DIMSEMessage().data_set, io.BytesIO), "DIMSEServiceProvider.receive_primitive")
    probe = _probe_association()
    if probe is None:
        missing.append("Association(ae, 'acceptor')")
        return missing
    need(lambda: isinstance(probe._reactor_checkpoint, threading.Event), "Association._reactor_checkpoint")
    need(lambda: isinstance(probe._is_paused, bool) and isinstance(probe._kill, bool), "Association._is_paused")
    need(lambda: isinstance(probe.acceptor.maximum_length, int), "ServiceUser.maximum_length")
    need(lambda: isinstance(probe.dimse.msg_queue, queue.Queue), "DIMSEServiceProvider.msg_queue")
    need(lambda: isinstance(probe.dul.to_provider_queue, queue.Queue), "DULServiceProvider.to_provider_queue")
    need(lambda: isinstance(probe.dul.to_user_queue, queue.Queue)
         and calls(DULServiceProvider.peek_next_pdu, "to_user_queue")
         and calls(DULServiceProvider.receive_pdu, "to_user_queue"), "DULServiceProvider.to_user_queue")
    need(lambda: isinstance(probe.dul._run_loop_delay, float), "DULServiceProvider._run_loop_delay")
    need(lambda: isinstance(probe.dul._recv_pdu, queue.Queue)
         and list(inspect.signature(probe.dul.state_machine.do_action).parameters) == ["event"]
         and calls(pynetdicom.fsm.StateMachine.do_action, "TRANSITION_TABLE", "InvalidEventError")
         and calls(DULServiceProvider.run_reactor, "state_machine", "do_action")
         and calls(DULServiceProvider._process_recv_primitive, "to_provider_queue", "event_queue")
         and all(pynetdicom.fsm.TRANSITION_TABLE[(_INVALID_PDU_EVENT, state)] == "AA-8"
                 for state in ("Sta3", "Sta5", "Sta6", "Sta7", "Sta8", "Sta9", "Sta10", "Sta11", "Sta12")),
         "StateMachine.do_action")
    need(lambda: probe.dimse.message is None and isinstance(probe._accepted_cx, dict), "DIMSEServiceProvider.message")
    need(lambda: isinstance(probe.dul.state_machine.current_state, str), "StateMachine.current_state")
    need(lambda: callable(probe.dul.send_pdu) and hasattr(probe.dul, "socket"), "DULServiceProvider.send_pdu")
    need(lambda: isinstance(probe.is_established, bool) and isinstance(probe.is_requestor, bool),
         "Association.is_established")
    return missing


_STORE_RQ_KEYWORDS = ("CommandGroupLength", "AffectedSOPClassUID", "CommandField", "MessageID", "Priority",
                      "CommandDataSetType", "AffectedSOPInstanceUID", "MoveOriginatorApplicationEntityTitle",
                      "MoveOriginatorMessageID")
_STORE_RSP_KEYWORDS = ("CommandGroupLength", "AffectedSOPClassUID", "CommandField", "MessageIDBeingRespondedTo",
                       "CommandDataSetType", "Status", "AffectedSOPInstanceUID", "OffendingElement",
                       "ErrorComment")


def _dimse_keywords(message: str) -> tuple[str, ...]:
    """The command elements pynetdicom gives a DIMSE message (``_COMMAND_SET_KEYWORDS``)."""
    return tuple(pynetdicom.dimse_messages._COMMAND_SET_KEYWORDS[message])


def _probe_association() -> Any:
    """An acceptor ``Association`` never started, to look at the attributes its constructor sets."""
    try:
        return pynetdicom.association.Association(pynetdicom.AE(), "acceptor")
    except Exception:  # noqa: BLE001 - a constructor that changed shape: the hooks cannot be checked
        return None


NODELAY_HANDLER = (evt.EVT_CONN_OPEN, tune_association)
