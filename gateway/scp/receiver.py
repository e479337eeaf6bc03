"""Making one received instance durable: check its identity, spool its bytes, commit its row.

The C-STORE handler gives this module the bytes exactly as received (never decoded to pixels) and gets
back a status. The order is the promise: file fsynced and renamed, then the row committed, then (and only
then) success.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import peewee
import pydicom
import structlog
from pydicom.errors import InvalidDicomError

from gateway.dicom import status
from gateway.dicom.wellformed import check_well_formed
from gateway.errors import InvalidInstance, OutOfResources, SpoolError
from gateway.scp.commit import DEFAULT_MAX_GROUP, GroupCommit, Waiting
from gateway.stages.context import NodeContext, WithNodeContext
from gateway.storage.models import Instance, InstanceState, Series, Study, StudyMatchKeys, utcnow
from gateway.storage.spool import Spool

_log = structlog.get_logger("scp")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
STUDY_UID, SERIES_UID, SOP_INSTANCE_UID, SOP_CLASS_UID, MODALITY = (
    0x0020000D, 0x0020000E, 0x00080018, 0x00080016, 0x00080060)
# What a referral is matched by (gateway.referral.matching), kept with the study row when it is created.
ACCESSION_NUMBER, PATIENT_ID, STUDY_DATE = 0x00080050, 0x00100020, 0x00080020
HEADER_TAGS = frozenset({STUDY_UID, SERIES_UID, SOP_INSTANCE_UID, SOP_CLASS_UID, MODALITY,
                         ACCESSION_NUMBER, PATIENT_ID, STUDY_DATE})


@dataclass(frozen=True)
class InstanceHeader:
    """The identifying attributes a received instance must carry."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str | None
    match_keys: MatchKeys | None = None


@dataclass(frozen=True)
class MatchKeys:
    """The header values a referral is matched by (PHI: kept in ``StudyMatchKeys``, never logged)."""

    accession_number: str = ""
    patient_id: str = ""
    study_date: str = ""


@dataclass(frozen=True)
class ReceivedInstance:
    """One C-STORE request as the network layer hands it over."""

    meta: bytes                     # preamble, "DICM" and the file meta group: what precedes the dataset on disk
    dataset: bytes | memoryview     # the dataset bytes exactly as received
    context_sop_class: str          # the SOP class of the presentation context it arrived on
    affected_sop_instance: str
    transfer_syntax: str
    calling_ae: str
    # A data set too large to hold, already in a file of the spool's tmp/ (``gateway.dicom.net.BoundedDataSet``:
    # ``path`` holding ``meta`` and the data set, ``size``, ``digest()``, ``finish()``); ``dataset`` is then empty.
    spilled: Any = None

    @property
    def size(self) -> int:
        return len(self.meta) + (self.spilled.size if self.spilled is not None else len(self.dataset))

    @property
    def part10(self) -> bytes:
        """The whole Part 10 file in one buffer (a copy: the hot path writes ``meta`` and ``dataset`` apart)."""
        return self.meta + bytes(self.dataset)


@dataclass(frozen=True)
class StoreResult:
    study_key: str
    duplicate: bool = False
    version: int = 1
    new_study_id: int | None = None  # this instance created the study row (its referral is looked for then)


@dataclass
class AssociationCache:
    """Row ids already committed during one association, to spare a query per instance."""

    studies: dict[str, tuple[int, str]] = field(default_factory=dict)
    series: dict[str, int] = field(default_factory=dict)
    touched: dict[int, float] = field(default_factory=dict)  # study id -> monotonic time of the last touch


def read_header(part10: bytes | Path) -> InstanceHeader:
    """Parse the header (never the pixel data) of a Part 10 file, in memory or on disk, and check the UIDs.

    Raises:
        InvalidInstance: undecodable (0xC000 family) or missing/invalid UIDs.
    """
    try:
        ds = pydicom.dcmread(part10 if isinstance(part10, Path) else io.BytesIO(part10), stop_before_pixels=True)
        values = {
            "study_uid": ds.get("StudyInstanceUID"),
            "series_uid": ds.get("SeriesInstanceUID"),
            "sop_instance_uid": ds.get("SOPInstanceUID"),
            "sop_class_uid": ds.get("SOPClassUID"),
        }
        modality = ds.get("Modality")
        keys = MatchKeys(*(str(ds.get(keyword) or "").strip()[:64]
                           for keyword in ("AccessionNumber", "PatientID", "StudyDate")))
    except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError, OverflowError,
            NotImplementedError, AttributeError, IndexError, UnicodeError, OSError) as exc:
        raise InvalidInstance("malformed_dataset", status.CANNOT_UNDERSTAND, type(exc).__name__) from None
    return _checked_header(values, modality, keys)


def header_from_values(found: dict[int, bytes]) -> InstanceHeader:
    """The header from the raw top-level values the structural walk collected (``HEADER_TAGS``).

    UIs and CSs are ASCII in every character set DICOM allows, so no decoding beyond that is needed.

    Raises:
        InvalidInstance: missing/invalid UIDs (0xC000).
    """
    def text(tag: int) -> str | None:
        raw = found.get(tag)
        return raw.decode("ascii", "replace").strip("\0 ") if raw else None
    values = {"study_uid": text(STUDY_UID), "series_uid": text(SERIES_UID),
              "sop_instance_uid": text(SOP_INSTANCE_UID), "sop_class_uid": text(SOP_CLASS_UID)}
    # An accession number or patient ID outside ASCII is matched later, from the de-identification's identity.
    # Such a key is left empty here (its bytes depend on the character set), so the identity is used.
    keys = MatchKeys(*(_ascii_or_empty(text(tag))[:64] for tag in (ACCESSION_NUMBER, PATIENT_ID, STUDY_DATE)))
    return _checked_header(values, text(MODALITY), keys)


def _ascii_or_empty(value: str | None) -> str:
    return "" if not value or "\ufffd" in value else value


def parse_header(received: ReceivedInstance) -> InstanceHeader:
    """Check the dataset's structure and read its identity: from the walk's values, or (deflated) by pydicom.

    Raises:
        InvalidInstance: malformed, or missing/invalid UIDs (0xC000).
    """
    found = check_well_formed(received.dataset, received.transfer_syntax, HEADER_TAGS)
    return header_from_values(found) if found is not None else read_header(received.part10)


def _spilled_header(received: ReceivedInstance, path: Path) -> InstanceHeader:
    """``parse_header`` of a spilled instance, on a memory map of its file (a deflated one: by pydicom from the
    file, stopping before the pixel data).

    Raises:
        InvalidInstance: malformed, or missing/invalid UIDs (0xC000).
    """
    import mmap

    if received.transfer_syntax == "1.2.840.10008.1.2.1.99":  # deflated: not walked
        return read_header(path)
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)[len(received.meta):]
        try:
            found = check_well_formed(view, received.transfer_syntax, HEADER_TAGS)
            found = {tag: bytes(value) for tag, value in (found or {}).items()}
        finally:
            view.release()
    return header_from_values(found)


def _checked_header(values: dict, modality: object, keys: MatchKeys | None = None) -> InstanceHeader:
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise InvalidInstance("missing_uids", status.CANNOT_UNDERSTAND, ",".join(missing))
    cleaned = {name: str(value).strip("\0 ") for name, value in values.items()}
    invalid = [name for name, value in cleaned.items() if len(value) > 64 or not _UID.match(value)]
    if invalid:
        raise InvalidInstance("invalid_uids", status.CANNOT_UNDERSTAND, ",".join(invalid))
    return InstanceHeader(**cleaned, modality=str(modality)[:16] if modality else None, match_keys=keys)


def check_context(header: InstanceHeader, received: ReceivedInstance) -> None:
    """The dataset must be what the C-STORE request and its presentation context say it is.

    Raises:
        InvalidInstance: 0xA900 (dataset does not match SOP class) on a contradiction.
    """
    if header.sop_class_uid != received.context_sop_class:
        raise InvalidInstance("sop_class_mismatch", status.DATASET_DOES_NOT_MATCH_SOP_CLASS)
    if header.sop_instance_uid != received.affected_sop_instance:
        raise InvalidInstance("sop_instance_mismatch", status.DATASET_DOES_NOT_MATCH_SOP_CLASS)


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(eq=False)
class PendingRow:
    """An instance whose row waits for the group commit: identity, digest and where its file goes."""

    header: InstanceHeader
    received: ReceivedInstance
    digest: str
    relative_path: str
    cache: AssociationCache


class InstanceReceiver(WithNodeContext):
    """Turns a ``ReceivedInstance`` into a spooled file and a committed ``Instance`` row.

    The file and the row are made durable side by side, and success is answered only when both are: the
    handler's thread checks and hashes the dataset while another thread writes and fsyncs the file, then hands
    the row to the group commit (``gateway.scp.commit``), where it is committed together with the rows of every
    other association waiting at that moment. A crash between the two can leave a row whose file was never
    placed; such a receipt was never acknowledged, and ``remove_unplaced_receipts`` deletes it when the node
    that received it starts again (the row names its node). Readers skip a row whose file is not there yet.
    """

    def __init__(self, spool: Spool, source_ids: dict[str, int], node: str | None = None,
                 commit_timeout_s: float | None = None, max_group: int = DEFAULT_MAX_GROUP, *,
                 context: NodeContext | None = None) -> None:
        self._context = context  # the database the rows go to, the metrics the group sizes go to
        self.spool = spool
        self.source_ids = source_ids
        self.node = node
        self.commit_timeout_s = commit_timeout_s  # the longest wait for the database (None: the database's own)
        self.group = GroupCommit(self._commit_group, max_group=max_group, on_group=self._record_group)
        # File writes release the GIL: the file is written on another core while this thread hashes it.
        self._spooling = ThreadPoolExecutor(max_workers=8, thread_name_prefix="spool-write")

    def _record_group(self, rows: int) -> None:
        self.context.metrics.record_commit_group(rows)

    def receive(self, received: ReceivedInstance, cache: AssociationCache) -> StoreResult:
        """Store one instance durably.

        Raises:
            InvalidInstance: refused (the caller answers with its status and quarantines the bytes).
            OutOfResources: disk full, database unavailable, or busy past ``commit_timeout_s`` (0xA700); for a
                failed group commit, every instance of the group. The row is not committed then; a file
                already placed stays in the content-addressed spool, where a resend of the same bytes finds
                it (no row refers to it otherwise).
            SpoolError: other I/O failures (0xA700).
        """
        if received.spilled is not None:
            return self._receive_spilled(received, cache)
        hashing: Future[str] = Future()
        # The file is written from here on, while this thread checks and hashes the dataset (hashlib releases
        # the GIL): it is placed under its digest, or discarded if the instance is refused.
        spooling: Future[Path] = self._spooling.submit(self._spool_file, received, hashing)
        try:
            try:
                header = parse_header(received)
                check_context(header, received)
                digest = sha256_hex(received.dataset)
            except BaseException:
                hashing.cancel()  # the writer discards its temporary file
                raise
            hashing.set_result(digest)
            row = PendingRow(header, received, digest, self.spool.relative(self.spool.path_for(digest)), cache)
            result = self.group.submit(row)
            try:
                spooling.result()
            except (OutOfResources, SpoolError):
                if not result.duplicate:
                    self._forget_row(header.sop_instance_uid, digest)
                raise
            if result.duplicate and not self._still_stored(header.sop_instance_uid, digest):
                result = self.group.submit(row)  # removed meanwhile: this receipt is the one now
            if result.new_study_id is not None:
                match_after_answer(result.new_study_id, self.context.database)
            return result
        finally:
            _settle(spooling)

    def _receive_spilled(self, received: ReceivedInstance, cache: AssociationCache) -> StoreResult:
        """``receive`` for a data set already written to a file as it arrived (hashed on the way): its header is
        walked in that file through a memory map (the walk reads element headers and skips their values, so the
        pixel data's pages are never read in), then the file is made durable and renamed into the spool, and its
        row committed. Raises as ``receive``."""
        spilled = received.spilled
        try:
            path = spilled.finish()
        except OSError as exc:
            raise self.spool.io_error(exc) from exc
        header = _spilled_header(received, path)
        check_context(header, received)
        self.spool.check_free_space(0)
        digest = spilled.digest()
        self.spool.place(path, digest)
        row = PendingRow(header, received, digest, self.spool.relative(self.spool.path_for(digest)), cache)
        result = self.group.submit(row)
        if result.duplicate and not self._still_stored(header.sop_instance_uid, digest):
            result = self.group.submit(row)
        if result.new_study_id is not None:
            match_after_answer(result.new_study_id, self.context.database)
        return result

    def _spool_file(self, received: ReceivedInstance, hashing: Future[str]) -> Path:
        written = self.spool.write_temporary((received.meta, received.dataset))
        try:
            digest = hashing.result()
        except BaseException:
            self.spool.discard(written)
            raise
        return self.spool.place(written, digest)

    def _commit_group(self, group: list[Waiting[PendingRow, StoreResult]]) -> None:
        """The group commit's work (in the leader's thread): every row of ``group`` in one transaction.

        A row refused on its own (a conflicting write twice) gets its own ``SpoolError``; a transaction that
        fails raises ``OutOfResources`` for the whole group, whose cached ids are then forgotten.
        """
        database = self.context.database
        try:
            with database.connection_context(), bounded_database_wait(database, self.commit_timeout_s):
                with _write_transaction(database):
                    for waiting in group:
                        try:
                            waiting.result = self._write_row(waiting.item)
                        except SpoolError as exc:
                            waiting.error = exc
        except peewee.OperationalError as exc:
            self._forget_group(group)
            if is_busy(exc):
                raise OutOfResources(f"database busy past {self.commit_timeout_s} s") from exc
            raise OutOfResources(f"database unavailable: {type(exc).__name__}") from exc
        except (peewee.InterfaceError, peewee.DatabaseError) as exc:
            self._forget_group(group)
            raise OutOfResources(f"database unavailable: {type(exc).__name__}") from exc
        except BaseException:
            self._forget_group(group)
            raise

    def _forget_group(self, group: list[Waiting[PendingRow, StoreResult]]) -> None:
        for waiting in group:
            self._forget(waiting.item.header, waiting.item.cache)  # ids cached in a rolled-back transaction

    def _write_row(self, row: PendingRow) -> StoreResult:
        """Write one row inside the group's transaction (a savepoint of its own on PostgreSQL, whose failed
        statement would otherwise void the whole transaction). A resend of stored bytes is a duplicate.

        Raises:
            SpoolError: the row conflicted with another writer twice.
        """
        header = row.header
        for attempt in (1, 2):
            try:
                with _row_savepoint(self.context.database):
                    versions = self._versions(header.sop_instance_uid)
                    stored = versions.get(row.digest)
                    if stored is not None:
                        return StoreResult(stored[1], duplicate=True, version=stored[0])
                    version = max((v for v, _ in versions.values()), default=0) + 1
                    study_id, study_key, created = self._study(header, row.received, row.cache)
                    series_id = self._series(header, study_id, row.cache)
                    self._insert(header, row, study_id, series_id, version)
                    self._touch_study(study_id, row.cache)
                return StoreResult(study_key, version=version, new_study_id=study_id if created else None)
            except peewee.IntegrityError:
                # Another writer (a node sharing the database) created the same study, series or instance
                # at the same moment: read again.
                self._forget(header, row.cache)
                if attempt == 2:
                    raise SpoolError("the row could not be committed (a conflicting write twice)") from None
        raise SpoolError("unreachable")  # pragma: no cover

    def _insert(self, header: InstanceHeader, row: PendingRow, study_id: int, series_id: int, version: int) -> None:
        """The ``Instance`` row, in plain SQL (peewee's query building cost more than the statement)."""
        received, database = row.received, self.context.database
        database.execute_sql(_INSERT_SQL.format(param=database.param), (
            study_id, series_id, header.sop_instance_uid, header.sop_class_uid, received.transfer_syntax,
            version, received.size, row.digest, row.relative_path, received.calling_ae,
            Instance.received_at.db_value(utcnow()), InstanceState.STORED, self.node))

    def _still_stored(self, sop_instance_uid: str, digest: str) -> bool:
        try:
            with self.context.database.connection_context():
                return digest in self._versions(sop_instance_uid)
        except peewee.PeeweeException as exc:
            raise OutOfResources(f"database unavailable: {type(exc).__name__}") from exc

    def _forget_row(self, sop_instance_uid: str, digest: str) -> None:
        """Take back the row of a receipt whose file could not be written (unless another receipt of the same
        bytes placed the file meanwhile: then the row is good)."""
        if self.spool.path_for(digest).exists():
            return
        try:
            with self.context.database.connection_context():
                Instance.delete().where((Instance.sop_instance_uid == sop_instance_uid)
                                        & (Instance.sha256 == digest) & (Instance.node == self.node)).execute()
        except peewee.PeeweeException:
            pass  # the node's next start removes it (remove_unplaced_receipts)

    def _versions(self, sop_instance_uid: str) -> dict[str, tuple[int, str]]:
        """sha256 → (version, study key) of every stored version of this SOP instance (usually none).

        Plain SQL: asked once per received instance, and peewee's query building cost more than the query.
        """
        database = self.context.database
        cursor = database.execute_sql(_VERSIONS_SQL.format(param=database.param), (sop_instance_uid,))
        return {sha: (version, key) for sha, version, key in cursor.fetchall()}

    @staticmethod
    def _forget(header: InstanceHeader, cache: AssociationCache) -> None:
        cache.studies.pop(header.study_uid, None)
        cache.series.pop(header.series_uid, None)

    def _study(self, header: InstanceHeader, received: ReceivedInstance,
               cache: AssociationCache) -> tuple[int, str, bool]:
        """The study's row id and key, and whether this instance created it (with its ``StudyMatchKeys``)."""
        if header.study_uid in cache.studies:
            return (*cache.studies[header.study_uid], False)
        row = Study.select(Study.id, Study.key).where(Study.study_uid == header.study_uid).first()
        created = row is None
        if created:
            row = Study.create(study_uid=header.study_uid, calling_ae=received.calling_ae,
                               source=self.source_ids.get(received.calling_ae))
            keys = header.match_keys or MatchKeys()
            StudyMatchKeys.create(study=row.id, accession_number=keys.accession_number,
                                  patient_id=keys.patient_id, study_date=keys.study_date)
        cache.studies[header.study_uid] = (row.id, row.key)
        return row.id, row.key, created

    @staticmethod
    def _series(header: InstanceHeader, study_id: int, cache: AssociationCache) -> int:
        if header.series_uid in cache.series:
            return cache.series[header.series_uid]
        row = Series.select(Series.id).where(Series.series_uid == header.series_uid).first()
        if row is None:
            row = Series.create(study=study_id, series_uid=header.series_uid, modality=header.modality)
        cache.series[header.series_uid] = row.id
        return row.id

    @staticmethod
    def _touch_study(study_id: int, cache: AssociationCache) -> None:
        """Keep ``Study.last_received_at`` fresh for the completion stage, at most once a second per study.

        The completion stage waits ``stable_after_s`` (a minute by default) past this time, so a second of
        staleness never completes a study early while instances still flow; it spares an UPDATE per instance.
        """
        now = time.monotonic()
        if now - cache.touched.get(study_id, 0.0) >= 1.0:
            Study.update(last_received_at=utcnow()).where(Study.id == study_id).execute()
            cache.touched[study_id] = now


_VERSIONS_SQL = (f'SELECT i.sha256, i.version, s."key" FROM "{Instance._meta.table_name}" i '
                 f'JOIN "{Study._meta.table_name}" s ON s.id = i.study_id WHERE i.sop_instance_uid = {{param}}')
_INSERT_COLUMNS = (Instance.study, Instance.series, Instance.sop_instance_uid, Instance.sop_class_uid,
                   Instance.transfer_syntax, Instance.version, Instance.size, Instance.sha256, Instance.spool_path,
                   Instance.calling_ae, Instance.received_at, Instance.state, Instance.node)
_INSERT_SQL = 'INSERT INTO "{table}" ({columns}) VALUES ({values})'.format(
    table=Instance._meta.table_name, columns=", ".join(f'"{c.column_name}"' for c in _INSERT_COLUMNS),
    values=", ".join(["{param}"] * len(_INSERT_COLUMNS)))


_matcher: ThreadPoolExecutor | None = None
_matcher_lock = threading.Lock()


def match_after_answer(study_id: int, database: Database) -> None:
    """Match the new study's waiting referral in this process's one matching thread, so that the first instance
    of a study is answered without waiting for it (its row and match keys are already committed)."""
    global _matcher
    with _matcher_lock:
        if _matcher is None:
            _matcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="referral-match")
    _matcher.submit(match_on_arrival, study_id, database)


def match_on_arrival(study_id: int, database: Database) -> None:
    """Match the new study's waiting referral now that its row and match keys are committed.

    The match is a database operation of ``gateway.referral.matching`` (models only), done once per study, after
    the commit. It never costs the instance its success: a failure is logged, and the completion and notes
    stages match again (also when the process ends before its matching thread came to it).
    """
    from gateway.referral.matching import match_arrived_study

    try:
        with database.connection_context():
            match_arrived_study(study_id)
    except peewee.PeeweeException as exc:
        _log.warning("referral_match_failed", error=type(exc).__name__)


Database = peewee.Database | peewee.DatabaseProxy


def _is_sqlite(database: Database) -> bool:
    """Whether ``database`` (or the database a proxy stands for) is SQLite."""
    return isinstance(database.obj if isinstance(database, peewee.DatabaseProxy) else database,
                      peewee.SqliteDatabase)


def _row_savepoint(database: Database):
    """Around one row of a group: a savepoint on PostgreSQL (a failed statement there voids the transaction
    up to the last savepoint); nothing on SQLite, which undoes only the failed statement."""
    if _is_sqlite(database):
        return contextlib.nullcontext()
    return database.savepoint()


def _write_transaction(database: Database):
    """A transaction that reads then writes. On SQLite it takes the write lock up front (BEGIN IMMEDIATE):
    a deferred transaction that reads first cannot upgrade while another association writes, and SQLite
    then fails at once with "database is locked" instead of waiting ``busy_timeout``, which under
    concurrent associations turned good instances into 0xA700."""
    if _is_sqlite(database):
        return database.atomic("IMMEDIATE")
    return _BoundedPostgresTransaction(database)


_wait_bound = threading.local()  # the bound in force in this thread (see bounded_database_wait)


class _BoundedPostgresTransaction:
    """``database.atomic()`` whose lock and statement waits end at the thread's bound (``SET LOCAL``, so they end
    with the transaction)."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def __enter__(self) -> None:
        self._atomic = self.database.atomic()
        self._atomic.__enter__()
        milliseconds = getattr(_wait_bound, "milliseconds", None)
        if milliseconds:
            self.database.execute_sql(f"SET LOCAL lock_timeout = {milliseconds}; "
                                      f"SET LOCAL statement_timeout = {milliseconds}")

    def __exit__(self, *exc_info: object) -> bool | None:
        return self._atomic.__exit__(*exc_info)


@contextlib.contextmanager
def bounded_database_wait(database: Database, seconds: float | None) -> Iterator[None]:
    """Within the block, a wait for the database (SQLite's lock, PostgreSQL's locks and statements) ends after
    ``seconds`` with ``peewee.OperationalError`` (see ``is_busy``) instead of stalling the association.

    SQLite's ``busy_timeout`` is the connection's, so it is set for the block and put back after it (the
    pooled connection serves other threads next). Must run inside ``database.connection_context()``.
    """
    if not seconds:
        yield
        return
    milliseconds = max(1, int(seconds * 1000))
    sqlite = _is_sqlite(database)
    previous = None
    if sqlite:
        previous = _sqlite_busy_timeout(database)
        database.execute_sql(f"PRAGMA busy_timeout = {milliseconds}")
    _wait_bound.milliseconds = milliseconds
    try:
        yield
    finally:
        _wait_bound.milliseconds = None
        if sqlite and previous is not None:
            try:
                database.execute_sql(f"PRAGMA busy_timeout = {int(previous)}")
            except peewee.PeeweeException:
                pass  # the connection is broken: the pool discards it


def _sqlite_busy_timeout(database: Database) -> int:
    """The busy timeout every pooled SQLite connection is opened with (``models.make_database``), read once."""
    global _SQLITE_BUSY_TIMEOUT_MS
    if _SQLITE_BUSY_TIMEOUT_MS is None:
        _SQLITE_BUSY_TIMEOUT_MS = int(database.execute_sql("PRAGMA busy_timeout").fetchone()[0])
    return _SQLITE_BUSY_TIMEOUT_MS


_SQLITE_BUSY_TIMEOUT_MS: int | None = None


def is_busy(exc: BaseException) -> bool:
    """The database error is a wait cut short: SQLite's lock held past ``busy_timeout``, or PostgreSQL's
    ``lock_timeout``/``statement_timeout``."""
    text = str(exc).lower()
    return "database is locked" in text or "lock timeout" in text or "statement timeout" in text


def _settle(future: Future) -> None:
    """Wait for a background step to finish, whatever became of it (its errors are the caller's business)."""
    try:
        future.result()
    except BaseException:  # noqa: BLE001 - already reported through the path that awaited it, or moot
        pass


def remove_unplaced_receipts(spool: Spool, node: str) -> int:
    """Delete rows this node committed for instances whose file it never placed (it died in between).

    Such an instance was never acknowledged (success waits for both), so its sender still holds it. Run at
    start-up, before the node serves: only this node's rows, since another node's may be in flight.
    """
    stored = (Instance.select(Instance.id, Instance.spool_path)
              .where((Instance.node == node) & (Instance.state == InstanceState.STORED)).tuples())
    unplaced = [row_id for row_id, relative in stored if not spool.absolute(relative).exists()]
    for start in range(0, len(unplaced), 500):
        Instance.delete().where(Instance.id.in_(unplaced[start:start + 500])).execute()
    return len(unplaced)


def elapsed_ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
