"""The reviewer's SLA clock stops when the case's first report arrives (it ran on after the report before)."""

from __future__ import annotations

import datetime as dt

import pytest

from gateway.storage.models import CaseState, ReportObject, Study, utcnow
from gateway.web.views import case_clock, worklist
from routing_db import make_case, open_db


@pytest.fixture
def db(tmp_path):
    database = open_db(f"sqlite:///{tmp_path}/gateway.db")
    with database.connection_context():
        yield database


def _report(study: Study, at: dt.datetime) -> None:
    ReportObject.create(study=study, reviewer="dr-a", calling_ae="REVIEW_A",
                        sop_class_uid="1.2.840.10008.5.1.4.1.1.88.11",
                        sop_instance_uid=f"2.25.{study.id}9", transfer_syntax="1.2.840.10008.1.2.1",
                        spool_path="x", sha256="ab" * 32, size=1, received_at=at)


def test_the_clock_stops_at_the_first_report(db):
    now = utcnow()
    on_time = make_case(CaseState.REPORTED, reviewer="dr-a")
    late = make_case(CaseState.REPORTED, reviewer="dr-a")
    running = make_case(CaseState.DELIVERED, reviewer="dr-a")
    for study, due in ((on_time, now - dt.timedelta(hours=1)), (late, now - dt.timedelta(hours=5)),
                       (running, now + dt.timedelta(hours=2))):
        Study.update(sla_due_at=due).where(Study.id == study.id).execute()
    _report(on_time, now - dt.timedelta(hours=3))  # two hours before a deadline now passed
    _report(late, now - dt.timedelta(hours=4))     # an hour after its deadline
    later = now + dt.timedelta(days=3)
    clock, overdue = case_clock(Study.get_by_id(on_time.id), later)
    assert clock.startswith("stopped at the report") and clock.endswith("2 h 00 min before the deadline")
    assert not overdue, "the deadline passed after the report: not overdue"
    clock, overdue = case_clock(Study.get_by_id(late.id), later)
    assert clock.endswith("late by 1 h 00 min") and overdue
    clock, _ = case_clock(Study.get_by_id(running.id), now)
    assert clock.endswith("left") and "stopped" not in clock
    rows = {row.key: row.clock for row in worklist("dr-a")}
    assert rows[on_time.key].startswith("stopped at the report")
