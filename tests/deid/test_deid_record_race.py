"""Two de-identification runs recording the same objects at once (a run that lost its lease goes on with the chunk
it holds while the case's new holder records the same instances): the second must not fail on the first's rows,
and the case ends with one identity and one outbound row per object. On SQLite and PostgreSQL.

The race is played in one process by two threads on two connections: run A records its chunk and holds its
transaction open; run B records the same chunk (on PostgreSQL B's insert then waits on A's uncommitted row, which
the test waits to see in ``pg_stat_activity``; on SQLite B's transaction waits at its start for A's write lock);
then A commits."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import peewee
import pytest

from gateway.deid.engine import DeidMapping
from gateway.deid.options import DeidOptions
from gateway.deid.work import DeidWork
from gateway.stages.deid import DeidStage
from gateway.storage.models import (
    CaseState,
    Delivery,
    Instance,
    InstanceState,
    OutboundObject,
    Series,
    StudyIdentity,
    db,
)
from gateway.storage.spool import Spool
from support.peers import wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "routing"))
from routing_db import case_db, make_case  # noqa: E402, F401 - case_db: the fixture below

pytestmark = pytest.mark.usefixtures("case_db")  # the database of database_url, open for each test

OBJECTS = 3


def _stage(tmp_path: Path) -> DeidStage:
    return DeidStage(DeidOptions(), b"k" * 32, Spool(tmp_path / "spool"))


def _chunk(study, *, version: int = 1) -> list[tuple[Instance, DeidWork, str]]:
    """``OBJECTS`` stored instances of ``study`` and what a worker made of each (as ``DeidStage._write`` returns)."""
    series = Series.get(Series.study == study)
    written = []
    for n in range(OBJECTS):
        instance = Instance.create(
            study=study, series=series, sop_instance_uid=f"2.25.7{study.id}{n}",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
            transfer_syntax="1.2.840.10008.1.2.1", version=version, size=10, sha256=f"{version}{n}".rjust(64, "0"),
            spool_path=f"objects/{version}-{n}.dcm", calling_ae="STMARYS_PACS")
        mapping = DeidMapping(original_patient_id="P1", patient_id="PSEUDO1", patient_name="PSEUDO^1",
                              uids={f"2.25.7{study.id}{n}": f"2.25.8{study.id}{n}"})
        work = DeidWork(size=10, sha256=f"d{version}{n}".rjust(64, "0"), sop_instance_uid=f"2.25.8{study.id}{n}",
                        sop_class_uid=instance.sop_class_uid, transfer_syntax=instance.transfer_syntax,
                        mapping=mapping, identity={"patient_id": "P1", "patient_name": "Doe^Jane"})
        written.append((instance, work, f"outbound/{study.key}/{work.sop_instance_uid}.dcm"))
    return written


def _blocked_on_a_lock() -> bool:
    if not isinstance(db.obj, peewee.PostgresqlDatabase):
        return True  # SQLite: B waits at its BEGIN IMMEDIATE, whether or not it got there yet
    return db.execute_sql("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                          "AND datname = current_database()").fetchone()[0] >= 1


def test_two_runs_recording_the_same_chunk_leave_one_row_per_object(tmp_path):
    stage = _stage(tmp_path)
    study = make_case(CaseState.COMPLETE)
    chunk = _chunk(study)
    a_recorded, a_may_commit, b_started = threading.Event(), threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def run_a() -> None:
        try:
            with db.connection_context(), db.atomic():
                stage._record(study, chunk)
                a_recorded.set()
                a_may_commit.wait(60)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
            a_recorded.set()

    def run_b() -> None:
        try:
            with db.connection_context():
                b_started.set()
                stage._record(study, chunk)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    first = threading.Thread(target=run_a)
    second = threading.Thread(target=run_b)
    first.start()
    try:
        assert a_recorded.wait(60)
        second.start()
        assert b_started.wait(60)
        wait_until(_blocked_on_a_lock, 60, "run B to wait on run A's rows")
    finally:
        a_may_commit.set()
        first.join(60)
        if second.ident is not None:
            second.join(60)
    assert errors == []
    assert StudyIdentity.select().where(StudyIdentity.study == study).count() == 1
    rows = list(OutboundObject.select().where(OutboundObject.study == study).order_by(OutboundObject.sop_instance_uid))
    assert [row.sop_instance_uid for row in rows] == [work.sop_instance_uid for _, work, _ in chunk]
    assert {row.instance_id for row in rows} == {instance.id for instance, _, _ in chunk}
    assert Instance.select().where((Instance.study == study) & (Instance.state == InstanceState.DEIDENTIFIED)).count() \
        == OBJECTS


def test_a_newer_version_replaces_its_object_and_is_sent_again_but_the_same_one_is_not(tmp_path):
    stage = _stage(tmp_path)
    study = make_case(CaseState.COMPLETE)
    chunk = _chunk(study)
    stage._record(study, chunk)
    for row in OutboundObject.select().where(OutboundObject.study == study):
        Delivery.create(outbound=row, destination="reviewer:dr-a", state="sent")
    stage._record(study, chunk)  # the same instances recorded again (a second run): nothing to send again
    assert {d.state for d in Delivery.select()} == {"sent"}
    newer = _chunk(study, version=2)[:1]  # a newer version of the first object arrived and was de-identified
    stage._record(study, newer)
    replaced = OutboundObject.get(OutboundObject.sop_instance_uid == newer[0][1].sop_instance_uid)
    assert (replaced.instance_id, replaced.sha256) == (newer[0][0].id, newer[0][1].sha256)
    assert sorted(d.state for d in Delivery.select()) == ["pending", "sent", "sent"]
    assert Delivery.get(Delivery.outbound == replaced.id).state == "pending"
