"""Shared pieces of the hardening tests and benches: a reviewer that counts what it receives, a raw DICOM
upper-layer client for hostile input, the ledger of what the gateway acknowledged, and the checks that
compare the three (acknowledged, stored, delivered).

The counting reviewer is a pynetdicom SCP in the test process: it records every C-STORE it answers, so a
second copy of an object on the wire is seen (a DICOM store would silently keep one), and it can be told to
abort the association after N instances to play a reviewer that misbehaves.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.dsutils import decode, encode
from pynetdicom.sop_class import Verification

from gateway.dicom.net import ACCEPTED_TRANSFER_SYNTAXES, NODELAY_HANDLER
from gateway.storage.models import make_database
from support.peers import free_port

SOURCE_AE = "STMARYS_PACS"
GATEWAY_AE = "SPINEGW"
REVIEWER_AE = "REVIEW_A"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
VERIFICATION = "1.2.840.10008.1.1"

# The whole pipeline in seconds rather than minutes, and no referral to wait for.
FAST_PIPELINE = {
    "routing": {"stable_after_s": 0.5, "poll_s": 0.2, "echo_interval_s": 1.0,
                "retry": {"initial_s": 0.2, "max_s": 1.0, "max_attempts": 1000}},
    "referrals": {"wait_s": 0, "on_timeout": "route"},
}


def reviewer_config(port: int, name: str = "dr-a", ae_title: str = REVIEWER_AE) -> dict:
    # max_open_cases high: the load runs send more cases than the default of ten a reviewer may hold.
    return {"name": name, "ae_title": ae_title, "host": "127.0.0.1", "port": port, "max_open_cases": 1000}


def fast_extra(http_port: int | None = None, **sections: dict) -> dict:
    extra = {**FAST_PIPELINE, "http": {"host": "127.0.0.1", "port": http_port or free_port()}}
    for name, values in sections.items():
        extra[name] = {**extra.get(name, {}), **values}
    return extra


def thread_count(pid: int) -> int:
    """Threads of process ``pid``, from /proc."""
    return len(os.listdir(f"/proc/{pid}/task"))


def thread_stacks(pid: int, stderr_path: Path, settle_s: float = 1.0) -> str:
    """Every thread's stack in process ``pid`` (a node started by ``spine-gateway serve``, which dumps them to its
    stderr on SIGUSR2 with faulthandler): what to show when its threads do not fall back."""
    before = stderr_path.stat().st_size if stderr_path.exists() else 0
    os.kill(pid, signal.SIGUSR2)
    time.sleep(settle_s)  # the dump is written by the signal handler in one go; a diagnostic, not synchronisation
    with open(stderr_path, "rb") as stderr:
        stderr.seek(before)
        return stderr.read().decode(errors="replace")


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident set (VmHWM) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def query(database_url: str, sql: str, params: tuple = ()) -> list[tuple]:
    database = make_database(database_url, max_connections=2)
    try:
        with database.connection_context():
            return list(database.execute_sql(sql, params).fetchall())
    finally:
        database.close_all()


class CountingReviewer:
    """A reviewer workstation that records the SOP Instance UID of every C-STORE it answers with success.

    ``abort_after``: while set, the reviewer sends A-ABORT on the (n+1)-th C-STORE of each association
    (that instance is not recorded: it was not stored).
    """

    def __init__(self, ae_title: str = REVIEWER_AE, abort_after: int | None = None) -> None:
        self.ae_title = ae_title
        self.abort_after = abort_after
        self.port = free_port()
        self.received: list[str] = []
        self.aborts = 0
        self._lock = threading.Lock()
        self._per_assoc: Counter = Counter()
        self._server = None

    def start(self) -> CountingReviewer:
        ae = AE(ae_title=self.ae_title)
        ae.maximum_associations = 50
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[NODELAY_HANDLER, (evt.EVT_C_STORE, self._on_store)])
        return self

    def _on_store(self, event: evt.Event) -> int:
        with self._lock:
            key = id(event.assoc)
            if self.abort_after is not None and self._per_assoc[key] >= self.abort_after:
                self.aborts += 1
                abort = True
            else:
                self._per_assoc[key] += 1
                self.received.append(str(event.request.AffectedSOPInstanceUID))
                abort = False
        if abort:
            event.assoc.abort()
        return 0x0000

    def distinct(self) -> set[str]:
        with self._lock:
            return set(self.received)

    def resent(self) -> int:
        """Objects that arrived more than once on the wire (at-least-once delivery after a crash)."""
        with self._lock:
            return len(self.received) - len(set(self.received))

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None


@dataclass
class DeliveryAccount:
    """What was acknowledged to senders, stored in the gateway and delivered to the reviewer."""

    acknowledged: set[str]
    stored: set[str]
    delivered_images: Counter            # original SOP Instance UID -> distinct pseudonymous objects received
    unexplained: set[str] = field(default_factory=set)  # objects at the reviewer that no instance maps to
    resent: int = 0

    @property
    def lost(self) -> set[str]:
        return {uid for uid in self.acknowledged if self.delivered_images[uid] == 0}

    @property
    def duplicated(self) -> set[str]:
        return {uid for uid, count in self.delivered_images.items() if count > 1}

    @property
    def not_stored(self) -> set[str]:
        return self.acknowledged - self.stored

    def summary(self) -> str:
        return (f"acknowledged={len(self.acknowledged)} stored={len(self.stored)} "
                f"delivered={sum(1 for c in self.delivered_images.values() if c)} "
                f"duplicated={len(self.duplicated)} lost={len(self.lost)} "
                f"not_stored={len(self.not_stored)} unexplained_at_reviewer={len(self.unexplained)} "
                f"resent_on_wire={self.resent}")


def account(database_url: str, acknowledged: set[str], reviewer: CountingReviewer) -> DeliveryAccount:
    """Map the reviewer's pseudonymous objects back to original instances through the UID map."""
    stored = {uid for (uid,) in query(database_url, "SELECT DISTINCT sop_instance_uid FROM instance")}
    pseudo_to_original = dict(query(database_url, "SELECT pseudo_uid, original_uid FROM uid_map"))
    notes = {uid for (uid,) in query(database_url,
                                     "SELECT sop_instance_uid FROM outbound_object WHERE kind <> 'image'")}
    delivered: Counter = Counter({uid: 0 for uid in acknowledged})
    unexplained = set()
    for pseudo in reviewer.distinct():
        original = pseudo_to_original.get(pseudo)
        if original in stored:
            delivered[original] += 1
        elif pseudo not in notes:
            unexplained.add(pseudo)
    return DeliveryAccount(acknowledged, stored, delivered, unexplained, reviewer.resent())


# -- raw DICOM upper layer (PS3.8 section 9) ---------------------------------------------------------------

def _ae(title: str) -> bytes:
    return title.encode().ljust(16)


def _item(item_type: int, body: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(body)) + body


def associate_rq(calling: str = SOURCE_AE, called: str = GATEWAY_AE,
                 contexts: tuple[tuple[int, str], ...] = ((1, MR_STORAGE), (3, VERIFICATION)),
                 max_pdu: int = 16384) -> bytes:
    """An A-ASSOCIATE-RQ PDU proposing Explicit VR Little Endian for each (context id, abstract syntax)."""
    items = _item(0x10, b"1.2.840.10008.3.1.1.1")
    for context_id, abstract in contexts:
        items += _item(0x20, struct.pack(">BBBB", context_id, 0, 0, 0)
                       + _item(0x30, abstract.encode()) + _item(0x40, EXPLICIT_LE.encode()))
    items += _item(0x50, _item(0x51, struct.pack(">I", max_pdu)))
    body = struct.pack(">HH", 1, 0) + _ae(called) + _ae(calling) + b"\x00" * 32 + items
    return pdu(0x01, body)


def pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, len(body)) + body


def p_data(context_id: int, payload: bytes, *, command: bool, last: bool = True) -> bytes:
    header = (0x01 if command else 0x00) | (0x02 if last else 0x00)
    pdv = struct.pack(">IBB", len(payload) + 2, context_id, header) + payload
    return pdu(0x04, pdv)


def c_store_command(sop_instance_uid: str, message_id: int = 1, sop_class: str = MR_STORAGE) -> bytes:
    command = Dataset()
    command.AffectedSOPClassUID = sop_class
    command.CommandField = 0x0001
    command.MessageID = message_id
    command.Priority = 0
    command.CommandDataSetType = 0x0000
    command.AffectedSOPInstanceUID = sop_instance_uid
    return encode(command, True, True)


def c_echo_command(message_id: int = 1) -> bytes:
    command = Dataset()
    command.AffectedSOPClassUID = VERIFICATION
    command.CommandField = 0x0030
    command.MessageID = message_id
    command.CommandDataSetType = 0x0101
    return encode(command, True, True)


class RawPeer:
    """A TCP connection speaking (or abusing) the DICOM upper layer by hand."""

    def __init__(self, port: int, timeout: float = 10.0, source: str | None = None) -> None:
        """``source``: the local address to connect from (another host, on loopback: 127.0.0.2)."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, data: bytes) -> bool:
        """False when the gateway has already closed the connection."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def read_pdu(self) -> tuple[int, bytes] | None:
        """The next PDU (type, body), or None when the connection closed or timed out."""
        header = self._read_exactly(6)
        if header is None:
            return None
        pdu_type, _, length = struct.unpack(">BBI", header)
        body = self._read_exactly(length)
        return None if body is None else (pdu_type, body)

    def _read_exactly(self, count: int) -> bytes | None:
        data = b""
        try:
            while len(data) < count:
                chunk = self.sock.recv(count - len(data))
                if not chunk:
                    return None
                data += chunk
        except OSError:
            return None
        return data

    def associate(self, **kwargs) -> bool:
        """Send an A-ASSOCIATE-RQ; True when A-ASSOCIATE-AC came back."""
        self.send(associate_rq(**kwargs))
        answer = self.read_pdu()
        return answer is not None and answer[0] == 0x02

    def command_status(self) -> int | None:
        """Read P-DATA-TF PDUs until a whole command set arrives; return its Status (None: no answer)."""
        fragments = b""
        while True:
            answer = self.read_pdu()
            if answer is None or answer[0] != 0x04:
                return None
            body = answer[1]
            pos = 0
            while pos + 6 <= len(body):
                length, _, header = struct.unpack_from(">IBB", body, pos)
                fragments += body[pos + 6:pos + 4 + length]
                pos += 4 + length
                if header & 0x01 and header & 0x02:
                    return int(decode(BytesIO(fragments), True, True).Status)

    def release(self) -> None:
        self.send(pdu(0x05, b"\x00" * 4))
        self.read_pdu()
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

