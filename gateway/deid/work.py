"""The CPU-bound part of de-identification, as plain functions that a process pool can run.

The stage thread keeps the I/O and the database; reading a file, applying the profile, running the guard and
encoding the result happen here, in worker processes (``deid.workers``) so that the work uses every core and
does not compete with the DICOM receiver for the interpreter lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from itertools import islice
from multiprocessing import get_context
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
import structlog
from pydicom.dataset import Dataset

from gateway.budget import OVER_BUDGET
from gateway.deid.engine import Deidentifier, DeidMapping, PatientContext
from gateway.deid.errors import BurnedInRiskError, QuarantineError, TimeBudgetExceeded
from gateway.deid.guard import (
    Leak,
    PatientIdentifiers,
    UnreadablePDFError,
    find_leaks,
    find_leaks_in_texts,
    identifiers_from_dataset,
    searchable_values,
)
from gateway.deid.options import DeidOptions
from gateway.dicom.bulk import detach_pixel_data
from gateway.privacy.identifiers import header_values

log = structlog.get_logger("deid")

IDENTITY_FIELDS = {  # StudyIdentity column -> (keyword, maximum length)
    "patient_name": ("PatientName", 324), "patient_id": ("PatientID", 64), "birth_date": ("PatientBirthDate", 8),
    "sex": ("PatientSex", 16), "accession_number": ("AccessionNumber", 16), "study_date": ("StudyDate", 8),
    "study_time": ("StudyTime", 16), "dicom_study_id": ("StudyID", 16),
    "referring_physician": ("ReferringPhysicianName", 324), "study_description": ("StudyDescription", 64),
    "institution_name": ("InstitutionName", 64),
}


@dataclass
class DeidWork:
    """The outcome for one file: either ``data`` to write, or why it must not leave."""

    data: bytes = b""
    data_path: str | None = None
    """Instead of ``data``, for an object over ``LARGE_OBJECT_BYTES``: a durable file under the spool's
    ``tmp/`` that the worker wrote (its bytes never cross the process boundary), renamed into place by the
    stage. ``size`` and ``sha256`` are then the file's."""
    size: int = 0
    sha256: str = ""
    sop_instance_uid: str = ""
    sop_class_uid: str = ""
    transfer_syntax: str = ""
    mapping: DeidMapping | None = None
    identity: dict[str, str] = field(default_factory=dict)
    header: dict[str, list[str]] = field(default_factory=dict)  # StudyIdentity.header_values of this file
    text_values: list[tuple[str, str]] | None = None
    """Every searchable text of ``data`` as read back from it, (attribute path, text), each text once
    (``guard.searchable_values``): the notes stage checks them against the whole case's identifiers
    (``StudyIdentity.image_text``). None when they cannot be taken (an unreadable PDF): the notes stage then
    reads the file itself."""
    quarantine_reason: str | None = None
    leak_paths: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    """Log events made in the worker, logged by the node when the result comes back (its logging is set up)."""


log = structlog.get_logger("deid")


_deidentifier: Deidentifier | None = None


def init_worker(options_json: str, secret: bytes) -> None:
    """Process-pool initializer: build the de-identifier once per worker."""
    global _deidentifier
    _deidentifier = Deidentifier(DeidOptions.model_validate_json(options_json), secret)


LARGE_OBJECT_BYTES = 16 * 1024 * 1024
"""An original larger than this is written by its worker straight to a file (``DeidWork.data_path``): the
object is then held once, as its dataset, in the worker, and never in the node's process (encoded in memory and
sent back it was held four times: dataset, buffer, bytes, and the node's copy)."""


def deidentify_file(path: str, source: str, case_label: str, tmp_dir: str | None = None) -> DeidWork:
    """Read one original from the spool, de-identify it, check it with the outbound guard, encode it
    (into ``tmp_dir`` when the original is over ``LARGE_OBJECT_BYTES``)."""
    assert _deidentifier is not None, "init_worker was not called"
    options = _deidentifier.options
    large = tmp_dir is not None and os.path.getsize(path) > LARGE_OBJECT_BYTES
    original = pydicom.dcmread(path, defer_size=_BULK_BYTES if large else None)
    detached = detach_pixel_data(original, path) if large and _deidentifier.leaves_pixels(original) else None
    # Everything needed from the original is taken first: it is then de-identified in place (no copy of the
    # pixel data).
    identifiers = identifiers_from_dataset(original, include_uids=not options.retain_uids,
                                           include_institution=not options.retain_institution_id)
    identity = {column: str(original.get(keyword, "") or "")[:size]
                for column, (keyword, size) in IDENTITY_FIELDS.items()}
    header = header_values(original)
    sop_class = str(original.get("SOPClassUID", "") or "")
    try:
        result = _deidentifier.deidentify(original, PatientContext(source, case_label), copy_dataset=False)
    except QuarantineError as refusal:
        report = refusal.report if isinstance(refusal, BurnedInRiskError) else None
        return DeidWork(quarantine_reason=refusal.reason, events=_pixel_events(report, case_label, sop_class))
    events = _pixel_events(result.pixels, case_label, sop_class)
    described: dict[str, Any] = dict(sop_instance_uid=str(result.dataset.SOPInstanceUID),
                     sop_class_uid=str(result.dataset.SOPClassUID),
                     transfer_syntax=str(result.dataset.file_meta.TransferSyntaxUID), mapping=result.mapping,
                     identity=identity, header=header, events=events)
    if large and tmp_dir is not None:
        leaks = find_leaks(result.dataset, identifiers)
        if leaks:
            return DeidWork(leak_paths=[f"{leak.path} ({leak.kind})" for leak in leaks], events=events)
        window = detached.window() if detached is not None else None
        if window is not None:
            result.dataset.add(window)  # the original's pixel data, unread, written in chunks
        try:
            written, size, sha256 = encode_to_file(result.dataset, tmp_dir)
        finally:
            if window is not None:
                window.value.close()
        del result, original  # the dataset's memory goes before the file is read back
        with open(written, "rb") as stored:
            text_values = encoded_text_values(stored)
        return DeidWork(data_path=str(written), size=size, sha256=sha256, text_values=text_values, **described)
    data = encode(result.dataset)
    # The guard reads the bytes that will leave, once: the instance's own identifiers are searched for in the
    # texts that the notes stage's check of the whole case is then given (``text_values``).
    leaks, text_values = checked_text_values(io.BytesIO(data), identifiers)
    if leaks:
        return DeidWork(leak_paths=[f"{leak.path} ({leak.kind})" for leak in leaks], events=events)
    return DeidWork(data=data, size=len(data), sha256=hashlib.sha256(data).hexdigest(), text_values=text_values,
                    **described)


def checked_text_values(encoded: BinaryIO, identifiers: PatientIdentifiers
                        ) -> tuple[list[Leak], list[tuple[str, str]] | None]:
    """The leaks of ``identifiers`` in the encoded object (read whole; as :func:`find_leaks` reports them), and
    its searchable texts (:func:`encoded_text_values`)."""
    dataset = pydicom.dcmread(encoded)
    try:
        values: list[tuple[str, str]] | None = searchable_values(dataset)
    except UnreadablePDFError:
        values = None
    texts = searchable_values(dataset, pdf=False) if values is None else \
        [(path, text) for path, text in values if not path.endswith(PDF_TEXT_SUFFIX)]
    return find_leaks_in_texts(texts, identifiers), None if values is None else _first_paths(values)


PDF_TEXT_SUFFIX = "/pdf-text"  # an element's path never holds a "/": only the extracted text of a PDF


def encoded_text_values(encoded: BinaryIO) -> list[tuple[str, str]] | None:
    """The searchable texts of the encoded object, read back from the bytes that will be written
    (not from the dataset that made them), each text once with the first path it was found at; None when
    an Encapsulated PDF in it cannot be read."""
    dataset = pydicom.dcmread(encoded, stop_before_pixels=True)
    try:
        values = searchable_values(dataset)
    except UnreadablePDFError:
        return None
    return _first_paths(values)


def _first_paths(values: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Each text of ``values`` once, with the first path it was found at."""
    first_paths: dict[str, str] = {}
    for path, text in values:
        first_paths.setdefault(text, path)
    return [(path, text) for text, path in first_paths.items()]


def _pixel_events(report: Any, case: str, sop_class: str) -> list[dict[str, Any]]:
    """The one log event of an OCR decision: counts and the verdict, never the text read."""
    if report is None:
        return []
    return [{"event": "burned_in_text", "case": case, "sop_class": sop_class, "frames": report.frames,
             "boxes_found": report.boxes_found, "boxes_blanked": report.boxes_blanked, "verdict": report.verdict,
             "reason": report.reason or None}]


def log_events(results: Iterable[Any]) -> Iterator[Any]:
    """Pass ``results`` through, logging (in this process) the events each one brought from its worker."""
    for result in results:
        for event in getattr(result, "events", ()) or ():
            fields = {key: value for key, value in event.items() if value is not None}
            log.info(fields.pop("event"), **fields)
        yield result


def encode(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def encode_to_file(dataset: Dataset, tmp_dir: str) -> tuple[Path, int, str]:
    """``dataset`` encoded into a new file under ``tmp_dir``, fsynced: durable before the stage renames it;
    with its size and SHA-256, taken from the bytes as they are written (a 400 MB file is not read back).

    Its bulk values (pixel data) are handed to pydicom as buffers sharing their bytes, which it writes to the
    file in chunks; given as bytes, pydicom encodes each element into a buffer of its own first, a second copy
    of a 400 MB instance."""
    for element in dataset:
        if element.VR in _BULK_VRS and isinstance(element.value, bytes) and len(element.value) > _BULK_BYTES:
            element.value = io.BytesIO(element.value)  # shares the bytes (copy on write)
    target = Path(tmp_dir) / f"{secrets.token_hex(8)}.part"
    try:
        with open(target, "xb") as out:
            hashing = HashingWriter(out)
            dataset.save_as(hashing, enforce_file_format=True)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    if hashing.rewound:
        return target, os.path.getsize(target), file_sha256(target)
    return target, hashing.size, hashing.digest.hexdigest()


class HashingWriter(io.RawIOBase):
    """A file being written, hashed and counted on the way. pydicom writes forwards only today; should a
    version seek back to patch a length, ``rewound`` says the digest no longer covers the file."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self._raw = raw
        self.digest = hashlib.sha256()
        self.size = 0
        self.rewound = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        written = self._raw.write(data)
        self.digest.update(memoryview(data).cast("B")[:written])
        self.size += written
        return written

    def tell(self) -> int:
        return self._raw.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        position = self._raw.seek(offset, whence)
        if position != self.size:
            self.rewound = True
        return position


_BULK_VRS = ("OB", "OW")
_BULK_BYTES = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stored:
        while chunk := stored.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class WorkPool:
    """Runs work functions in worker processes, or inline when ``workers`` is 0 (tests, tiny deployments).

    A pool whose worker died (killed, out of memory) is broken for good in ``ProcessPoolExecutor``: ``run``
    then builds a new one and tries the batch once more; a batch that breaks the new pool too raises
    ``BrokenProcessPool`` (the stage loop backs that case off and, in the end, quarantines it).
    """

    def __init__(self, workers: int, initializer: Callable[..., None], initargs: tuple[Any, ...]) -> None:
        self.workers = workers
        self._initializer, self._initargs = initializer, initargs
        self._lock = threading.Lock()
        self.rebuilt = 0  # how many times a broken pool was replaced
        if workers > 0:
            self._executor: ProcessPoolExecutor | None = self._new_executor()
        else:
            self._executor = None
            initializer(*initargs)

    def _new_executor(self) -> ProcessPoolExecutor:
        # spawn, not fork: the node is multi-threaded (pynetdicom, scheduler, HTTP) when the pool starts.
        return ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"), initializer=_start_worker,
                                   initargs=(os.getpid(), self._initializer, *self._initargs))

    def map(self, function: Callable[..., Any], *iterables: Iterable[Any], timeout_s: float | None = None
            ) -> Iterator[Any]:
        if self._executor is None:
            return log_events(map(function, *iterables))
        return log_events(self._executor.map(function, *iterables, chunksize=4, timeout=timeout_s))

    def run(self, function: Callable[..., Any], *iterables: Iterable[Any], timeout_s: float | None = None
            ) -> list[Any]:
        """``function`` over ``iterables`` (zipped), all results in order; a broken pool is rebuilt once.
        With ``timeout_s`` (worker processes only: work in this process cannot be stopped) the whole batch must
        be done within it; else the workers are killed and replaced.

        Raises:
            BrokenProcessPool: the rebuilt pool broke as well.
            TimeBudgetExceeded: the batch ran past ``timeout_s``.
        """
        first, *rest = iterables
        items = list(first)
        arguments = [items, *(list(islice(column, len(items))) for column in rest)]  # kept for a second try
        try:
            return self._run_within(function, arguments, timeout_s)
        except BrokenProcessPool:
            self._rebuild()
            return self._run_within(function, arguments, timeout_s)

    def _run_within(self, function: Callable[..., Any], arguments: list[list[Any]], timeout_s: float | None
                    ) -> list[Any]:
        try:
            return list(self.map(function, *arguments, timeout_s=timeout_s))
        except FuturesTimeout:
            self.stop_workers()
            raise TimeBudgetExceeded(f"deid: {OVER_BUDGET} ({timeout_s:g} s)") from None

    def stop_workers(self) -> None:
        """Kill every worker (their work is abandoned) and start a new pool."""
        for pid in self.worker_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        log.warning("worker_stopped", component="deid", reason=OVER_BUDGET)
        self._rebuild()

    def _rebuild(self) -> None:
        with self._lock:
            broken = self._executor
            if broken is None:
                return
            self._executor = self._new_executor()
            self.rebuilt += 1
        broken.shutdown(wait=False, cancel_futures=True)
        log.warning("worker_pool_rebuilt", component="deid", count=self.rebuilt)

    def worker_pids(self) -> list[int]:
        """The worker processes' ids (for operators and tests); empty when working inline."""
        processes = getattr(self._executor, "_processes", None) or {}
        return list(processes)

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)


ORPHAN_CHECK_S = 1.0


def _start_worker(node_pid: int, initializer: Callable[..., None], *initargs: Any) -> None:
    """Worker-process initializer: exit when the node is gone, then run ``initializer``.

    A node killed outright (kill -9, out of memory) cannot shut its pool down, and its workers would wait
    on their pipe for ever, each holding a de-identifier and a hundred megabytes; a restarted node starts
    a new pool beside them. They watch their parent instead, and leave when it is no longer ``node_pid``
    (given by the node: a worker still starting when the node died already has another parent).
    """
    def watch_parent() -> None:
        while os.getppid() == node_pid:
            time.sleep(ORPHAN_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()
    initializer(*initargs)


def default_workers() -> int:
    """One worker per core. The stage works on a study once its instances have stopped coming (at completion, or
    early once it pauses), so the workers seldom compete with its receiving threads; on two cores a second
    worker took the 300-instance study through the pool in 6.2 s instead of 8.6 s (bench/deid.py, issue 29)."""
    return max(1, os.cpu_count() or 1)


def deid_pool(options: DeidOptions, secret: bytes, workers: int | None = None) -> WorkPool:
    """The node's pool of worker processes (``workers``: None for the default, 0 to work in this process)."""
    return WorkPool(default_workers() if workers is None else workers, init_worker,
                    (options.model_dump_json(), secret))
