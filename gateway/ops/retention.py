"""Retention: delete the spooled originals of studies whose report was delivered more than N days ago.

Only a study in the ``report_delivered`` state is ever selected; any other state (still receiving, being
de-identified, routed, awaiting a report…) is never touched. The delivery time is
``Study.report_delivered_at``, set when the report reached the source's PACS.

Purging happens in two steps: :func:`plan_purge` lists what would go, :func:`purge` does it (or, with
``dry_run``, only reports). For each study its rows are deleted in one transaction first (re-checking the
state), then its files are unlinked, each only if no remaining ``Instance`` row refers to it: the spool is
content-addressed, so two studies may share a file. A crash between the two steps leaves unreferenced files,
never rows pointing at missing files.
"""

from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import dataclass
from pathlib import Path

import peewee
import structlog

from gateway.ops import audit
from gateway.storage.models import Instance, ReportObject, Series, Study, db

log = structlog.get_logger("retention")
REPORT_DELIVERED = "report_delivered"


@dataclass(frozen=True, order=True)
class SpoolFile:
    """A spooled original: as ``Instance.spool_path`` names it, and on disk."""

    relative: str
    path: Path


@dataclass(frozen=True)
class PurgeItem:
    """One study to purge and the spool files that only it refers to."""

    study_id: int
    study_key: str
    delivered_at: dt.datetime
    instances: int
    bytes: int
    files: tuple[SpoolFile, ...]
    outbound_dir: Path


@dataclass(frozen=True)
class PurgeResult:
    """What :func:`purge` did (or, in a dry run, would do)."""

    dry_run: bool
    studies: tuple[str, ...]
    files_deleted: int
    bytes_freed: int
    skipped: tuple[str, ...] = ()


def _delivered_at_field() -> peewee.Field:
    return Study.report_delivered_at


def _naive_utc(moment: dt.datetime) -> dt.datetime:
    """The database holds naive UTC timestamps."""
    return moment.astimezone(dt.UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _spool_file(spool_dir: Path, relative: str) -> Path | None:
    """The absolute path of a spool-relative path, or None if it would leave the spool."""
    root = Path(spool_dir).resolve()
    candidate = (root / relative).resolve()
    return candidate if candidate.is_relative_to(root) and candidate != root else None


def plan_purge(now: dt.datetime, days: int, *, spool_dir: Path) -> list[PurgeItem]:
    """The studies delivered more than ``days`` days before ``now``, with the files only they refer to.

    Raises:
        ValueError: ``days`` is below 1.
    """
    if days < 1:
        raise ValueError("retention days must be at least 1")
    cutoff = _naive_utc(now) - dt.timedelta(days=days)
    delivered_at = _delivered_at_field()
    items = []
    with db.connection_context():
        studies = list(Study.select().where((Study.state == REPORT_DELIVERED) & (delivered_at < cutoff))
                       .order_by(delivered_at))
        selected = [s.id for s in studies]
        for study in studies:
            instances = list(Instance.select(Instance.spool_path, Instance.size).where(Instance.study == study.id))
            reports = {r.spool_path for r in ReportObject.select(ReportObject.spool_path)
                       .where(ReportObject.study == study.id)}
            paths = {i.spool_path for i in instances} | reports
            shared = set(Instance.select(Instance.spool_path)
                         .where(Instance.spool_path.in_(list(paths)) & Instance.study.not_in(selected)).scalars())
            files = tuple(sorted(SpoolFile(p, f) for p in paths - shared
                                 if (f := _spool_file(spool_dir, p)) is not None))
            items.append(PurgeItem(study.id, study.key, getattr(study, delivered_at.name), len(instances),
                                   sum(i.size for i in instances), files,
                                   Path(spool_dir) / "outbound" / study.key))
    return items


def purge(items: list[PurgeItem], *, dry_run: bool) -> PurgeResult:
    """Delete the rows and then the files of each planned study; with ``dry_run``, change nothing.

    A study whose state changed since planning is skipped. Each purge is audited (action ``purged``).
    """
    if dry_run:
        return PurgeResult(True, tuple(i.study_key for i in items), sum(len(i.files) for i in items),
                           sum(_size(f.path) for i in items for f in i.files))
    purged, skipped, files_deleted, bytes_freed = [], [], 0, 0
    for item in items:
        if not _delete_rows(item):
            skipped.append(item.study_key)
            continue
        deleted, freed = _delete_unreferenced(item.files)
        # The case's de-identified copies and its re-identified report go with it.
        shutil.rmtree(item.outbound_dir, ignore_errors=True)
        files_deleted += deleted
        bytes_freed += freed
        purged.append(item.study_key)
        log.info("study_purged", case=item.study_key, instances=item.instances, count=deleted, bytes=freed)
        audit.record("purged", actor_ae=None, actor_host=None, study_key=item.study_key,
                     detail=f"{item.instances} instances, {deleted} files")
    return PurgeResult(False, tuple(purged), files_deleted, bytes_freed, tuple(skipped))


def _delete_rows(item: PurgeItem) -> bool:
    """Delete the study's rows if it is still delivered; False when it is not (or is gone)."""
    with db.connection_context(), db.atomic():
        still_delivered = Study.select().where((Study.id == item.study_id) & (Study.state == REPORT_DELIVERED))
        if not still_delivered.exists():
            return False
        Instance.delete().where(Instance.study == item.study_id).execute()
        Series.delete().where(Series.study == item.study_id).execute()
        Study.delete().where(Study.id == item.study_id).execute()
    return True


def _delete_unreferenced(files: tuple[SpoolFile, ...]) -> tuple[int, int]:
    """Unlink each file no Instance row refers to any more; return (files deleted, bytes freed)."""
    deleted = freed = 0
    with db.connection_context():
        for spool_file in files:
            if Instance.select().where(Instance.spool_path == spool_file.relative).exists():
                continue  # stored again by another study since planning
            size = _size(spool_file.path)
            try:
                spool_file.path.unlink()
            except FileNotFoundError:
                continue
            deleted += 1
            freed += size
    return deleted, freed


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
