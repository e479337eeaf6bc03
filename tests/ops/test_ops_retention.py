"""Retention purge: only delivered studies past retention lose their rows and spool files."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pytest

from gateway.ops.retention import REPORT_DELIVERED, plan_purge, purge
from gateway.storage.models import AuditEvent, Instance, Series, Study, db, open_database

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
OLD = dt.datetime(2026, 9, 1, 12, 0)  # naive UTC, as stored
RECENT = dt.datetime(2026, 11, 25, 12, 0)
OTHER_STATES = ["receiving", "deidentifying", "routed", "awaiting_report", "report_received",
                "delivery_failed", "REPORT_DELIVERED", "report_delivered ", ""]


@pytest.fixture
def spool(tmp_path) -> Path:
    database = open_database(f"sqlite:///{tmp_path}/gw.db", max_connections=4)
    root = tmp_path / "spool"
    root.mkdir()
    yield root
    database.close_all()


_counter = iter(range(1, 10**6))


def _study(spool: Path, state: str, received_at: dt.datetime, contents: list[bytes]) -> Study:
    """A study with one series and an instance per content; identical contents share a spool file."""
    n = next(_counter)
    with db.connection_context():
        study = Study.create(study_uid=f"2.25.{n}", calling_ae="NORTH", state=state,
                             first_received_at=received_at, last_received_at=received_at,
                             report_delivered_at=received_at if state == "report_delivered" else None)
        series = Series.create(study=study, series_uid=f"2.25.{n}.1", modality="MR")
        for i, content in enumerate(contents):
            digest = hashlib.sha256(content).hexdigest()
            relative = f"objects/{digest[:2]}/{digest}.dcm"
            (spool / relative).parent.mkdir(parents=True, exist_ok=True)
            (spool / relative).write_bytes(content)
            Instance.create(study=study, series=series, sop_instance_uid=f"2.25.{n}.1.{i}",
                            sop_class_uid="1.2.840.10008.5.1.4.1.1.4", transfer_syntax="1.2.840.10008.1.2.1",
                            size=len(content), sha256=digest, spool_path=relative, calling_ae="NORTH")
    return study


def _files(spool: Path) -> set[str]:
    return {p.relative_to(spool).as_posix() for p in (spool / "objects").rglob("*.dcm")}


def _keys() -> set[str]:
    with db.connection_context():
        return {s.key for s in Study.select()}


@pytest.mark.parametrize("state", OTHER_STATES)
def test_a_study_in_any_other_state_is_never_selected(spool, state):
    study = _study(spool, state, OLD, [b"one", b"two"])
    before = _files(spool)
    assert plan_purge(NOW, 1, spool_dir=spool) == []
    result = purge(plan_purge(NOW, 1, spool_dir=spool), dry_run=False)
    assert result.studies == () and result.files_deleted == 0
    assert _files(spool) == before and _keys() == {study.key}


def test_a_delivered_study_past_retention_loses_its_rows_and_files(spool):
    old = _study(spool, REPORT_DELIVERED, OLD, [b"a1", b"a2", b"a3"])
    recent = _study(spool, REPORT_DELIVERED, RECENT, [b"r1"])
    waiting = _study(spool, "receiving", OLD, [b"w1"])
    for study in (old, waiting):  # de-identified copies, and for the old one its re-identified report
        (spool / "outbound" / study.key).mkdir(parents=True)
        (spool / "outbound" / study.key / "report.dcm").write_bytes(b"report")
    [item] = plan_purge(NOW, 30, spool_dir=spool)
    assert (item.study_key, item.instances, item.bytes, len(item.files)) == (old.key, 3, 6, 3)
    assert all(f.path.is_relative_to(spool) for f in item.files)

    result = purge([item], dry_run=False)

    assert (result.studies, result.files_deleted, result.bytes_freed) == ((old.key,), 3, 6)
    assert _keys() == {recent.key, waiting.key}
    with db.connection_context():
        assert Instance.select().where(Instance.study == old.id).count() == 0
        assert Series.select().where(Series.study == old.id).count() == 0
        audit_row = AuditEvent.get(AuditEvent.study_key == old.key)
    assert audit_row.action == "purged"
    remaining = _files(spool)
    assert len(remaining) == 2 and not any(f.relative in remaining for f in item.files)
    assert not (spool / "outbound" / old.key).exists()
    assert (spool / "outbound" / waiting.key / "report.dcm").exists()


def test_retention_is_counted_from_the_delivery_time(spool):
    study = _study(spool, REPORT_DELIVERED, RECENT, [b"x"])  # 3 days before NOW
    assert plan_purge(NOW, 4, spool_dir=spool) == []
    assert [i.study_key for i in plan_purge(NOW, 2, spool_dir=spool)] == [study.key]


def test_dry_run_deletes_nothing(spool):
    study = _study(spool, REPORT_DELIVERED, OLD, [b"d1", b"d2"])
    before = _files(spool)
    result = purge(plan_purge(NOW, 30, spool_dir=spool), dry_run=True)
    assert result.dry_run and result.studies == (study.key,)
    assert (result.files_deleted, result.bytes_freed) == (2, 4)
    assert _files(spool) == before and _keys() == {study.key}
    with db.connection_context():
        assert AuditEvent.select().count() == 0


def test_a_file_shared_with_a_remaining_study_is_kept(spool):
    delivered = _study(spool, REPORT_DELIVERED, OLD, [b"shared", b"own"])
    waiting = _study(spool, "receiving", OLD, [b"shared"])
    [item] = plan_purge(NOW, 30, spool_dir=spool)
    assert len(item.files) == 1  # only "own"
    purge([item], dry_run=False)
    assert _keys() == {waiting.key}
    shared = hashlib.sha256(b"shared").hexdigest()
    assert _files(spool) == {f"objects/{shared[:2]}/{shared}.dcm"}
    assert delivered.key not in _keys()


def test_a_study_whose_state_changed_after_planning_is_skipped(spool):
    study = _study(spool, REPORT_DELIVERED, OLD, [b"c1"])
    items = plan_purge(NOW, 30, spool_dir=spool)
    with db.connection_context():
        Study.update(state="report_received").where(Study.id == study.id).execute()
    result = purge(items, dry_run=False)
    assert result.studies == () and result.skipped == (study.key,)
    assert len(_files(spool)) == 1 and _keys() == {study.key}


def test_a_spool_path_leaving_the_spool_is_never_deleted(spool, tmp_path):
    outside = tmp_path / "precious.dcm"
    outside.write_bytes(b"keep me")
    study = _study(spool, REPORT_DELIVERED, OLD, [b"in"])
    with db.connection_context():
        Instance.update(spool_path="../precious.dcm").where(Instance.study == study.id).execute()
    [item] = plan_purge(NOW, 30, spool_dir=spool)
    assert item.files == ()
    purge([item], dry_run=False)
    assert outside.read_bytes() == b"keep me"


def test_days_must_be_positive(spool):
    with pytest.raises(ValueError, match="at least 1"):
        plan_purge(NOW, 0, spool_dir=spool)
