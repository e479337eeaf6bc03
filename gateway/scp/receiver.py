"""Making one received instance durable: check its identity, spool its bytes, commit its row.

The C-STORE handler gives this module the bytes exactly as received (never decoded to pixels) and gets
back a status. The order is the promise: file fsynced and renamed, then the row committed, then (and only
then) success.
"""

from __future__ import annotations

import hashlib
import io
import re
import time
from dataclasses import dataclass, field

import peewee
import pydicom
from pydicom.errors import InvalidDicomError

from gateway import status
from gateway.errors import InvalidInstance, OutOfResources, SpoolError
from gateway.models import Instance, Series, Study, db, utcnow
from gateway.scp.spool import Spool
from gateway.scp.wellformed import check_well_formed

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


@dataclass(frozen=True)
class InstanceHeader:
    """The identifying attributes a received instance must carry."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str | None


@dataclass(frozen=True)
class ReceivedInstance:
    """One C-STORE request as the network layer hands it over."""

    part10: bytes            # preamble + file meta + dataset bytes exactly as received
    dataset_length: int      # how many trailing bytes of ``part10`` are the dataset
    context_sop_class: str   # the SOP class of the presentation context it arrived on
    affected_sop_instance: str
    transfer_syntax: str
    calling_ae: str


@dataclass(frozen=True)
class StoreResult:
    study_key: str
    duplicate: bool = False
    version: int = 1


@dataclass
class AssociationCache:
    """Row ids already committed during one association, to spare a query per instance."""

    studies: dict[str, tuple[int, str]] = field(default_factory=dict)
    series: dict[str, int] = field(default_factory=dict)
    touched: dict[int, float] = field(default_factory=dict)  # study id -> monotonic time of the last touch


def read_header(part10: bytes) -> InstanceHeader:
    """Parse the header (never the pixel data) and check the UIDs.

    Raises:
        InvalidInstance: undecodable (0xC000 family) or missing/invalid UIDs.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(part10), stop_before_pixels=True)
        values = {
            "study_uid": ds.get("StudyInstanceUID"),
            "series_uid": ds.get("SeriesInstanceUID"),
            "sop_instance_uid": ds.get("SOPInstanceUID"),
            "sop_class_uid": ds.get("SOPClassUID"),
        }
        modality = ds.get("Modality")
    except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError, OverflowError,
            NotImplementedError, AttributeError, IndexError, UnicodeError, OSError) as exc:
        raise InvalidInstance("malformed_dataset", status.CANNOT_UNDERSTAND, type(exc).__name__) from None
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise InvalidInstance("missing_uids", status.CANNOT_UNDERSTAND, ",".join(missing))
    cleaned = {name: str(value).strip("\0 ") for name, value in values.items()}
    invalid = [name for name, value in cleaned.items() if len(value) > 64 or not _UID.match(value)]
    if invalid:
        raise InvalidInstance("invalid_uids", status.CANNOT_UNDERSTAND, ",".join(invalid))
    return InstanceHeader(**cleaned, modality=str(modality)[:16] if modality else None)


def check_context(header: InstanceHeader, received: ReceivedInstance) -> None:
    """The dataset must be what the C-STORE request and its presentation context say it is.

    Raises:
        InvalidInstance: 0xA900 (dataset does not match SOP class) on a contradiction.
    """
    if header.sop_class_uid != received.context_sop_class:
        raise InvalidInstance("sop_class_mismatch", status.DATASET_DOES_NOT_MATCH_SOP_CLASS)
    if header.sop_instance_uid != received.affected_sop_instance:
        raise InvalidInstance("sop_instance_mismatch", status.DATASET_DOES_NOT_MATCH_SOP_CLASS)


class InstanceReceiver:
    """Turns a ``ReceivedInstance`` into a spooled file and a committed ``Instance`` row."""

    def __init__(self, spool: Spool, source_ids: dict[str, int]) -> None:
        self.spool = spool
        self.source_ids = source_ids

    def receive(self, received: ReceivedInstance, cache: AssociationCache) -> StoreResult:
        """Store one instance durably.

        Raises:
            InvalidInstance: refused (the caller answers with its status and quarantines the bytes).
            OutOfResources: disk full or database unavailable (0xA700).
            SpoolError: other I/O failures (0xA700).
        """
        dataset = memoryview(received.part10)[len(received.part10) - received.dataset_length:]
        check_well_formed(dataset, received.transfer_syntax)
        header = read_header(received.part10)
        check_context(header, received)
        digest = hashlib.sha256(dataset).hexdigest()
        try:
            with db.connection_context():
                versions = self._versions(header.sop_instance_uid)
                if digest in versions:
                    return StoreResult(versions[digest][1], duplicate=True, version=versions[digest][0])
                path = self.spool.store(received.part10, digest)
                version = max((v for v, _ in versions.values()), default=0) + 1
                return self._commit(header, received, digest, self.spool.relative(path), version, cache)
        except peewee.OperationalError as exc:
            raise OutOfResources(f"database unavailable: {type(exc).__name__}") from exc
        except (peewee.InterfaceError, peewee.DatabaseError) as exc:
            raise OutOfResources(f"database unavailable: {type(exc).__name__}") from exc

    @staticmethod
    def _versions(sop_instance_uid: str) -> dict[str, tuple[int, str]]:
        """sha256 → (version, study key) of every stored version of this SOP instance (usually none)."""
        rows = (Instance.select(Instance.sha256, Instance.version, Study.key).join(Study)
                .where(Instance.sop_instance_uid == sop_instance_uid).tuples())
        return {sha: (version, key) for sha, version, key in rows}

    def _commit(self, header: InstanceHeader, received: ReceivedInstance, digest: str, relative_path: str,
                version: int, cache: AssociationCache) -> StoreResult:
        for attempt in (1, 2):
            try:
                with _write_transaction():
                    study_id, study_key = self._study(header, received, cache)
                    series_id = self._series(header, study_id, cache)
                    Instance.insert(
                        study=study_id, series=series_id, sop_instance_uid=header.sop_instance_uid,
                        sop_class_uid=header.sop_class_uid, transfer_syntax=received.transfer_syntax,
                        version=version, size=len(received.part10), sha256=digest, spool_path=relative_path,
                        calling_ae=received.calling_ae, received_at=utcnow(),
                    ).execute()
                    self._touch_study(study_id, cache)
                return StoreResult(study_key, version=version)
            except peewee.IntegrityError:
                # Another association created the same study or series at the same moment: re-read it.
                self._forget(header, cache)
                if attempt == 2:
                    stored = self._versions(header.sop_instance_uid).get(digest)
                    if stored is not None:
                        return StoreResult(stored[1], duplicate=True, version=stored[0])
                    raise SpoolError("the row could not be committed (a conflicting write twice)") from None
                version = max((v for v, _ in self._versions(header.sop_instance_uid).values()), default=0) + 1
            except Exception:
                self._forget(header, cache)  # ids cached inside a rolled-back transaction are void
                raise
        raise SpoolError("unreachable")  # pragma: no cover

    @staticmethod
    def _forget(header: InstanceHeader, cache: AssociationCache) -> None:
        cache.studies.pop(header.study_uid, None)
        cache.series.pop(header.series_uid, None)

    def _study(self, header: InstanceHeader, received: ReceivedInstance, cache: AssociationCache) -> tuple[int, str]:
        if header.study_uid in cache.studies:
            return cache.studies[header.study_uid]
        row = Study.select(Study.id, Study.key).where(Study.study_uid == header.study_uid).first()
        if row is None:
            row = Study.create(study_uid=header.study_uid, calling_ae=received.calling_ae,
                               source=self.source_ids.get(received.calling_ae))
        cache.studies[header.study_uid] = (row.id, row.key)
        return row.id, row.key

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


def _write_transaction():
    """A transaction that reads then writes. On SQLite it takes the write lock up front (BEGIN IMMEDIATE):
    a deferred transaction that reads first cannot upgrade while another association writes, and SQLite
    then fails at once with "database is locked" instead of waiting ``busy_timeout``, which under
    concurrent associations turned good instances into 0xA700."""
    if isinstance(db.obj, peewee.SqliteDatabase):
        return db.atomic("IMMEDIATE")
    return db.atomic()


def elapsed_ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
