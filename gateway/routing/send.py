"""Sending outbound objects to a DICOM peer: the one delivery function of both legs of a case.

The study leg (``routing.deliver``: de-identified images and notes to the reviewer) and the report leg
(``reports.stage``: re-identified reports to the source) both call ``send_objects``: one association per
attempt, one C-STORE per object, each response recorded in the object's ledger row (``Delivery``, one per
object and destination, with its own ``attempts``). Each leg keeps its own attempt counter and retry time on
the case (``Leg``), backs off the same way and gives up into its own failure state.

Transfer syntaxes: each (SOP class, stored syntax) pair is proposed with the stored syntax first and
Explicit VR Little Endian second. When the peer accepts the stored syntax the file's bytes go out
undecoded; otherwise the dataset is decoded (pylibjpeg) and sent as Explicit VR Little Endian.

How undecoded bytes go out: with the pynetdicom hooks installed (``gateway.dicom.net.install_fast_paths``), the file is
read into a kept buffer and ``gateway.dicom.net.DirectStores`` writes the C-STORE's PDUs, of the peer's maximum size,
straight to the socket in one gathered send per object, the association's reactor paused once for the whole
attempt. Without them, pynetdicom's ``send_c_store`` sends the file by path (undecoded where pynetdicom has the
documented ``STORE_SEND_CHUNKED_DATASET``, which ``install_fast_paths`` sets on any version, hooks on or off).

Reason for the Requested Procedure: given a ``reason`` (the study leg passes the notes stage's
``Study.notes_reason``), every image gets it in (0040,1002) as it leaves: set in the file's bytes in memory
(``dicom.rawedit``), the element sent between the file's untouched bytes before and after it; on the stock
path pynetdicom reads the edited object from an anonymous in-memory file (``memfd_create``; a temporary file
where there is none). The spool keeps each image exactly as the de-identification wrote it.

The ledger: each response is recorded, but not in its own transaction. Outcomes are written together every
``LEDGER_BATCH`` objects or ``LEDGER_FLUSH_S`` seconds, whichever comes first, and always when the attempt
ends (released, aborted, lease lost, or an error raised). A ``kill -9`` in the middle of an attempt loses at
most the last unwritten batch of outcomes: those objects are sent again by the next attempt (after a restart),
with the same SOP Instance UIDs, and the peer replaces its copies. Nothing is lost and nothing is taken for
sent that was not; only those few objects may arrive twice.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import peewee
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association

from gateway.backoff import Backoff
from gateway.config import DicomPeer, NodeConfig, RetryConfig, ReviewerConfig
from gateway.dicom.net import NODELAY_HANDLER, DirectStores, install_fast_paths
from gateway.dicom.rawedit import file_meta_end_and_syntax, fits_charset, text_element_edit, with_text_element
from gateway.dicom.tls import tls_args
from gateway.routing.errors import RoutingError
from gateway.storage import cases
from gateway.storage.models import CaseState, Delivery, OutboundObject, Study, db, utcnow

SENT, PENDING, FAILED = "sent", "pending", "failed"
# C-STORE statuses that mean stored: success and the warnings (coercion, elements discarded, mismatch).
STORED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})
MAX_CONTEXTS = 128  # PS3.8: at most 128 presentation contexts per association
LEDGER_BATCH = 32      # C-STORE outcomes written to the ledger in one transaction...
LEDGER_FLUSH_S = 0.25  # ...or after this long, whichever comes first (and always when the attempt ends)
REASON_FOR_THE_REQUESTED_PROCEDURE = 0x00401002
IMAGE_KIND = "image"


class TooManyContexts(RoutingError):
    """The objects to send need more presentation contexts than one association can hold."""


@dataclass
class AttemptResult:
    """What one delivery attempt did."""

    status: str          # delivered, partial, no_association, aborted
    sent: int = 0
    remaining: int = 0


@dataclass(frozen=True)
class Leg:
    """One leg of a case: its attempt counter, its retry time and the state it gives up into."""

    name: str
    failed_state: str
    attempts: peewee.Field
    next_attempt_at: peewee.Field
    retry_topic: str  # the wake-up (gateway.storage.wakeup) that runs the leg's stage when the retry is due: the
    # stage sets its timer on its context's hub for the time ``retry_later`` answers

    def attempt_of(self, study: Study) -> int:
        """The number of the attempt about to be made (1-based)."""
        return getattr(study, self.attempts.name) + 1

    def reset(self) -> dict[str, object]:
        """Fields that start the leg's attempts over (for ``cases.move``)."""
        return {self.attempts.name: 0, self.next_attempt_at.name: None}

    def done(self, attempt: int) -> dict[str, object]:
        """Fields of a leg that succeeded at attempt ``attempt`` (for ``cases.move``): the attempts it took are
        kept for the operator to see ("1" for a first-attempt delivery), nothing is due any more."""
        return {self.attempts.name: attempt, self.next_attempt_at.name: None}

    def retry_later(self, study: Study, attempt: int, retry: RetryConfig) -> dt.datetime:
        """Record failed attempt ``attempt`` and when the next one is due; returns that time."""
        next_at = utcnow() + dt.timedelta(seconds=backoff_s(retry, attempt))
        Study.update({self.attempts: attempt, self.next_attempt_at: next_at}).where(Study.id == study.id).execute()
        setattr(study, self.attempts.name, attempt)
        setattr(study, self.next_attempt_at.name, next_at)
        return next_at

    def give_up(self, study: Study, attempt: int, reason: str) -> bool:
        """The leg's failure state, with its attempts kept for the operator to see."""
        return cases.move(study, self.failed_state, reason=reason,
                          **{self.attempts.name: attempt, self.next_attempt_at.name: None})


STUDY_LEG = Leg("study", CaseState.FAILED, Study.delivery_attempts, Study.next_attempt_at, CaseState.DELIVERING)
REPORT_LEG = Leg("report", CaseState.REPORT_FAILED, Study.report_attempts, Study.report_next_attempt_at,
                 CaseState.REPORTED)


def backoff_s(retry: RetryConfig, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): exponential, capped, with jitter.

    The wait is drawn uniformly from the upper half of ``min(max_s, initial_s * 2**(attempt-1))``, so that
    cases failing together do not retry together (``gateway.backoff.Backoff`` with jitter).
    """
    return Backoff(retry.initial_s, retry.max_s, jitter=True).wait_s(attempt, rng)


def send_objects(node: NodeConfig, spool_dir: Path, peer: ReviewerConfig | DicomPeer, destination: str,
                 pending: Sequence[OutboundObject], lease: cases.Lease | None = None, *,
                 reason: str | None = None) -> AttemptResult:
    """C-STORE ``pending`` to ``peer`` over one association, recording each response in the ledger rows
    (``Delivery``, which must exist) of ``destination`` (``reviewer:<name>`` or ``source:<name>``), in batches
    (see the module's docstring). With ``reason``, every image goes out with it in (0040,1002).

    Raises:
        TooManyContexts: the objects need more than 128 presentation contexts.
    """
    if not pending:
        return AttemptResult("delivered")
    install_fast_paths()  # once per process: the hooks, and stored files sent undecoded by the stock path too
    assoc = _associate(node, peer, pending)
    if not assoc.is_established:
        _count_attempt(pending, destination, "no association")
        return AttemptResult("no_association", remaining=len(pending))
    ledger = _LedgerBatch(destination)
    sent = 0
    tried: set[int] = set()
    sender = _Sender(assoc, spool_dir, reason)
    awaited: OutboundObject | None = None  # sent, its response not yet read (DirectStores only)
    try:
        with sender.direct if sender.direct is not None else contextlib.nullcontext():
            for outbound in pending:
                if not assoc.is_established or sender.broken:
                    break
                if lease is not None and not lease.keep():
                    break  # our lease on the case was lost: another node carries on, never both
                prepared = sender.prepare(outbound)  # while the peer stores the object before
                if awaited is not None:
                    sent += sender.finish(awaited, ledger)
                    awaited = None
                    if not assoc.is_established or sender.broken:
                        break
                tried.add(outbound.id)
                outcome = sender.start(outbound, prepared, ledger)
                if outcome is None:
                    awaited = outbound
                else:
                    sent += outcome
            if awaited is not None:
                sent += sender.finish(awaited, ledger)
    finally:
        try:
            if assoc.is_established:
                assoc.release()
        finally:
            sender.close()
            ledger.flush()
    _count_attempt([o for o in pending if o.id not in tried], destination, "association ended")
    remaining = len(pending) - sent
    if remaining == 0:
        return AttemptResult("delivered", sent=sent)
    return AttemptResult("partial" if sent else "aborted", sent=sent, remaining=remaining)


def _associate(node: NodeConfig, peer: ReviewerConfig | DicomPeer,
               objects: Sequence[OutboundObject]) -> Association:
    contexts = _contexts(objects)
    ae = AE(ae_title=node.ae_title)
    ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = (node.acse_timeout_s, node.dimse_timeout_s,
                                                             node.network_timeout_s)
    ae.connection_timeout = node.acse_timeout_s
    ae.maximum_pdu_size = node.max_pdu_bytes
    for sop_class, syntaxes in contexts.items():
        ae.add_requested_context(sop_class, syntaxes)
    return ae.associate(peer.host, peer.port, ae_title=peer.ae_title, evt_handlers=[NODELAY_HANDLER],
                        tls_args=tls_args(peer))


_SEND_ERRORS = (OSError, ValueError, RuntimeError, AttributeError, NotImplementedError, InvalidDicomError)


@dataclass
class _Prepared:
    """An object ready to send: by ``DirectStores`` (its presentation context and data set pieces), else by
    pynetdicom (no pieces), or not at all (the error)."""

    context_id: int = 0
    pieces: list[bytes | memoryview] | None = None
    error: str = ""


class _Sender:
    """Sends one object at a time over ``assoc``: its file's bytes as stored (with the reason set in images,
    given one) when the peer accepted the stored syntax, else the decoded dataset (``transcode``).

    With the hooks installed (``gateway.dicom.net.DirectStores``) the file is read into a kept buffer and its data set
    goes straight to the socket, the reason's element written between the two untouched parts of the
    buffer. Otherwise pynetdicom's ``send_c_store`` sends the file by path, an edited one from an in-memory
    file (``_MemoryFile``)."""

    def __init__(self, assoc: Association, spool_dir: Path, reason: str | None) -> None:
        self.assoc = assoc
        self.spool_dir = spool_dir
        self.reason = reason
        self.direct = DirectStores(assoc) if DirectStores.available(assoc) else None
        self._buffer = _ReadBuffer()
        self._memory: _MemoryFile | None = None

    @property
    def broken(self) -> bool:
        return self.direct is not None and self.direct.broken

    def prepare(self, outbound: OutboundObject) -> _Prepared:
        """What ``start`` sends for ``outbound``: its data set's pieces when ``DirectStores`` sends it (read and
        edited here, so that this overlaps the peer's storing of the object before), else the stock path; or
        the error that keeps it from being sent (a missing file raises FileNotFoundError where it is opened)."""
        if self.direct is None:
            return _Prepared()
        context_id = self.direct.context_id(outbound.sop_class_uid, outbound.transfer_syntax)
        if context_id is None:
            return _Prepared()
        try:
            pieces = _data_set_pieces(self._buffer.read(self.spool_dir / outbound.spool_path),
                                      outbound.transfer_syntax, self._reason_for(outbound))
        except _SEND_ERRORS as exc:
            return _Prepared(error=type(exc).__name__)
        return _Prepared(context_id, pieces) if pieces is not None else _Prepared()

    def start(self, outbound: OutboundObject, prepared: _Prepared, ledger: _LedgerBatch) -> bool | None:
        """Send ``outbound`` as prepared: None when its response is to be read by ``finish``, else whether it
        was stored (recorded in ``ledger``)."""
        if prepared.error:
            return self._record(outbound, ledger, None, prepared.error)
        if prepared.pieces is not None and self.direct is not None:
            if self.direct.send(prepared.context_id, outbound.sop_class_uid, outbound.sop_instance_uid,
                                prepared.pieces):
                return None
            return self._record(outbound, ledger, None, "")
        status: int | None = None
        error = ""
        try:
            status = getattr(self._store_stock(self.spool_dir / outbound.spool_path, outbound,
                                               self._reason_for(outbound)), "Status", None)
        except _SEND_ERRORS as exc:
            error = type(exc).__name__
        return self._record(outbound, ledger, status, error)

    def finish(self, outbound: OutboundObject, ledger: _LedgerBatch) -> bool:
        """Read the response to ``outbound``, sent by ``start``, and record it: whether it was stored."""
        assert self.direct is not None
        return self._record(outbound, ledger, getattr(self.direct.response(), "Status", None), "")

    def _reason_for(self, outbound: OutboundObject) -> str | None:
        return self.reason if outbound.kind == IMAGE_KIND else None

    @staticmethod
    def _record(outbound: OutboundObject, ledger: _LedgerBatch, status: int | None, error: str) -> bool:
        ok = status in STORED_STATUSES
        ledger.record(outbound, ok, status, error or _status_text(status))
        return ok

    def _store_stock(self, path: Path, outbound: OutboundObject, reason: str | None) -> Dataset:
        accepted = _accepted_syntaxes(self.assoc, outbound.sop_class_uid)
        if outbound.transfer_syntax not in accepted:
            payload: Path | Dataset = transcode(path, reason)
        elif reason is None:
            payload = path  # sent from the file, undecoded
        else:
            if self._memory is None:
                self._memory = _MemoryFile(self.spool_dir, self._buffer)
            payload = self._memory.holding_with_reason(path, reason)  # the file's bytes and the reason
        try:
            return self.assoc.send_c_store(payload)
        finally:
            if self.direct is not None and self.assoc.is_established:
                self.direct.__enter__()  # send_c_store let the reactor run again: paused anew

    def close(self) -> None:
        if self._memory is not None:
            self._memory.close()


def _data_set_pieces(part10: memoryview, transfer_syntax: str, reason: str | None) -> list[bytes | memoryview] | None:
    """The data set of ``part10`` (in ``transfer_syntax``), with (0040,1002) set to ``reason`` if given, as
    pieces to send in order: the file's bytes untouched around the one element. None when the file meta is
    not the standard one or names another transfer syntax."""
    located = file_meta_end_and_syntax(part10)
    if located is None or located[1] != transfer_syntax:
        return None
    meta_end = located[0]
    if reason is None:
        return [part10[meta_end:]]
    edit = text_element_edit(part10, REASON_FOR_THE_REQUESTED_PROCEDURE, "LO", reason)
    if edit is None:  # re-encoded by pydicom (see with_text_element)
        edited = with_reason(bytes(part10), reason)
        located = file_meta_end_and_syntax(edited)
        if located is None or located[1] != transfer_syntax:
            return None
        return [memoryview(edited)[located[0]:]]
    start, end, encoded = edit
    return [part10[meta_end:start], encoded, part10[end:]]


def part10_as_sent(part10: bytes, transfer_syntax: str, reason: str | None) -> bytes:
    """The Part 10 object ``part10`` as the study leg sends it: its own file meta, then the data set a reviewer
    receives by C-STORE (with ``reason`` in (0040,1002) when given, edited exactly as :class:`_Sender` edits
    it). DICOMweb serves this, so that a reviewer reading over the web gets the bytes a workstation gets."""
    pieces = _data_set_pieces(memoryview(part10), transfer_syntax, reason)
    if pieces is None:  # no standard file meta: the stock path re-encodes it, as pynetdicom does
        return part10 if reason is None else with_reason(part10, reason)
    located = file_meta_end_and_syntax(part10)
    meta_end = located[0] if located is not None else 0
    return b"".join([part10[:meta_end], *(bytes(piece) for piece in pieces)])


def with_reason(part10: bytes, reason: str) -> bytes:
    """The Part 10 object ``part10`` with Reason for the Requested Procedure (0040,1002) set to ``reason``."""
    return with_text_element(part10, REASON_FOR_THE_REQUESTED_PROCEDURE, "LO", reason)


class _MemoryFile:
    """One in-memory file that holds the object being sent, by path (pynetdicom sends a file by path without
    decoding it): an anonymous ``memfd_create`` file, named ``/proc/self/fd/<fd>``; an unlinked-on-close
    temporary file in the spool's folder where that is not available.

    Its pages and the read buffer are kept from one object to the next (no allocation, no page faults per
    object), and the edited object is written as three pieces (before, the element, after), never joined."""

    def __init__(self, spool_dir: Path, buffer: _ReadBuffer) -> None:
        self._temporary = None
        if hasattr(os, "memfd_create") and Path("/proc/self/fd").is_dir():
            self._fd = os.memfd_create("spine-gateway-outbound", os.MFD_CLOEXEC)
            self.path = Path(f"/proc/self/fd/{self._fd}")
        else:
            self._temporary = tempfile.NamedTemporaryFile(dir=spool_dir, prefix=".sending-", suffix=".dcm")
            self._fd = self._temporary.fileno()
            self.path = Path(self._temporary.name)
        self._buffer = buffer

    def holding_with_reason(self, path: Path, reason: str) -> Path:
        """The file's path, holding the Part 10 object at ``path`` with (0040,1002) set to ``reason``."""
        data = self._buffer.read(path)
        edit = text_element_edit(data, REASON_FOR_THE_REQUESTED_PROCEDURE, "LO", reason)
        if edit is None:
            self._write([with_reason(bytes(data), reason)])
        else:
            start, end, encoded = edit
            self._write([data[:start], encoded, data[end:]])
        return self.path

    def _write(self, pieces: list[bytes | memoryview]) -> None:
        total = sum(len(piece) for piece in pieces)
        written = os.pwritev(self._fd, pieces, 0) if hasattr(os, "pwritev") else 0
        if written < total:  # a short write (or no pwritev): the rest, joined
            rest = memoryview(b"".join(pieces))
            while written < total:
                written += os.pwrite(self._fd, rest[written:], written)
        os.ftruncate(self._fd, total)  # after writing: the pages of a longer object before stay allocated

    def close(self) -> None:
        if self._temporary is not None:
            self._temporary.close()
        else:
            os.close(self._fd)


class _ReadBuffer:
    """One buffer that a file is read into, kept from one object to the next (no allocation, no page faults
    per object)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def read(self, path: Path) -> memoryview:
        """The bytes of the file at ``path``, valid until the next ``read``."""
        with open(path, "rb", buffering=0) as source:
            size = os.fstat(source.fileno()).st_size
            if len(self._buffer) < size:
                self._buffer = bytearray(size)
            data = memoryview(self._buffer)[:size]
            read = 0
            while read < size:
                count = source.readinto(data[read:])
                if not count:
                    raise OSError(f"{path.name} shrank while being read")
                read += count
        return data


class _LedgerBatch:
    """C-STORE outcomes of one attempt, written to the ledger (``Delivery``) in batched transactions."""

    def __init__(self, destination: str) -> None:
        self.destination = destination
        self._outcomes: list[tuple[int, bool, int | None, str, dt.datetime]] = []
        self._since = time.monotonic()

    def record(self, outbound: OutboundObject, ok: bool, status: int | None, detail: str) -> None:
        self._outcomes.append((outbound.id, ok, status, detail, utcnow()))
        if len(self._outcomes) >= LEDGER_BATCH or time.monotonic() - self._since >= LEDGER_FLUSH_S:
            self.flush()

    def flush(self) -> None:
        """Write what is recorded, in one transaction: stored objects grouped by status, failures one by one."""
        outcomes, self._outcomes = self._outcomes, []
        self._since = time.monotonic()
        if not outcomes:
            return
        stored: dict[int | None, list[int]] = {}
        for outbound_id, ok, status, _, _ in outcomes:
            if ok:
                stored.setdefault(status, []).append(outbound_id)
        sent_at = max(at for *_, at in outcomes)
        mine = Delivery.destination == self.destination
        with db.atomic():
            for status, ids in stored.items():
                Delivery.update({Delivery.attempts: Delivery.attempts + 1, Delivery.last_status: status,
                                 Delivery.state: SENT, Delivery.last_error: None, Delivery.sent_at: sent_at}).where(
                    mine & Delivery.outbound.in_(ids)).execute()
            for outbound_id, ok, status, detail, _ in outcomes:
                if not ok:
                    Delivery.update({Delivery.attempts: Delivery.attempts + 1, Delivery.last_status: status,
                                     Delivery.state: FAILED, Delivery.last_error: detail[:255]}).where(
                        mine & (Delivery.outbound == outbound_id)).execute()


def unsent_objects(study: Study, destination: str, which: peewee.Expression) -> list[OutboundObject]:
    """The case's outbound objects matching ``which`` that the ledger does not show as sent to
    ``destination``, in creation order; their ledger rows are created as needed."""
    objects = list(OutboundObject.select().where((OutboundObject.study == study) & which)
                   .order_by(OutboundObject.id))
    sent = set(Delivery.select(Delivery.outbound).where(
        (Delivery.destination == destination) & (Delivery.state == SENT)
        & Delivery.outbound.in_([o.id for o in objects])).scalars()) if objects else set()
    pending = [o for o in objects if o.id not in sent]
    if pending:
        # The missing ledger rows, in one statement (an existing row, failed or pending, is kept as it is).
        rows = [{"outbound": o.id, "destination": destination} for o in pending]
        with db.atomic():
            for start in range(0, len(rows), 200):
                Delivery.insert_many(rows[start:start + 200]).on_conflict_ignore().execute()
    return pending


def _contexts(objects: Sequence[OutboundObject]) -> dict[str, list[str]]:
    """SOP class → transfer syntaxes to propose (stored ones first, Explicit VR Little Endian as fallback)."""
    contexts: dict[str, list[str]] = {}
    for outbound in objects:
        syntaxes = contexts.setdefault(outbound.sop_class_uid, [])
        if outbound.transfer_syntax not in syntaxes:
            syntaxes.append(outbound.transfer_syntax)
    for syntaxes in contexts.values():
        if ExplicitVRLittleEndian not in syntaxes:
            syntaxes.append(ExplicitVRLittleEndian)
    if len(contexts) > MAX_CONTEXTS:
        raise TooManyContexts(f"a case needs {len(contexts)} presentation contexts; at most {MAX_CONTEXTS} fit")
    return contexts


def _accepted_syntaxes(assoc: Association, sop_class: str) -> set[str]:
    return {str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts if cx.abstract_syntax == sop_class}


def transcode(path: Path, reason: str | None = None) -> Dataset:
    """The file's dataset with its pixel data decompressed, to be sent as Explicit VR Little Endian (with
    ``reason`` in Reason for the Requested Procedure, if given)."""
    ds = pydicom.dcmread(path)
    if reason is not None:
        ds.ReasonForTheRequestedProcedure = fits_charset(reason, ds.get("SpecificCharacterSet"))
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    if syntax.is_compressed:
        # pylibjpeg / pydicom decoders; the syntax becomes Explicit VR Little Endian. The SOP Instance UID stays:
        # a change of transfer syntax is not a new instance, and the ledger knows the object by it.
        ds.decompress(generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _status_text(status: int | None) -> str:
    return "no response" if status is None else f"0x{status:04X}"


def _count_attempt(objects: Sequence[OutboundObject], destination: str, detail: str) -> None:
    """An attempt that did not reach these objects still counts on their ledger rows."""
    if objects:
        Delivery.update({Delivery.attempts: Delivery.attempts + 1, Delivery.last_error: detail}).where(
            Delivery.outbound.in_([o.id for o in objects]) & (Delivery.destination == destination)).execute()
