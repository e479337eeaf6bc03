"""The node's hot paths do not read the whole history: every query that the stages' claims, ``status`` (the
operators' page builds the same snapshot), the portal's lists and a purge's planning make is checked against its
query plan, on SQLite and PostgreSQL, over a database holding a synthetic history (cases delivered and reported,
with their instances, outbound objects, ledger, assignments, audit rows and prior fetches).

A query that scans a history table whole fails the test, unless it is one of the few listed in ``WHOLE_TABLE``
with why. PostgreSQL's planner prefers a sequential scan on a table this small whatever the indexes, so its plans are
read with ``enable_seqscan`` off: a sequential scan left then has no index to use. On PostgreSQL each query is also
run (``EXPLAIN ANALYZE``) and fails when it read half a history table or more: an index walked in order and
filtered after it reads the history as surely as a scan (the referrer's "images without a referral" did, before
``study.has_referral``), and so does an index whose key every history row shares (the objects awaiting a Storage
Commitment answer, before the partial index: every ledger row is ``sent``). How the cost grows with a real
history's size is measured by ``bench/history.py``, not here."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from pathlib import Path

import peewee
import pytest

from gateway.config import GatewayConfig
from gateway.ops.retention import plan_purge
from gateway.ops.status import collect_status
from gateway.routing.spine import SpineFilter
from gateway.stages.assign import AssignmentStage
from gateway.stages.commitment import CommitmentStage
from gateway.stages.completion import CompletionStage
from gateway.stages.context import NodeContext
from gateway.stages.critical import CriticalNoticeStage
from gateway.stages.deid import DeidStage
from gateway.stages.deliver import DeliveryStage
from gateway.stages.oru import OruStage
from gateway.stages.priors import PriorsStage
from gateway.stages.referral import NotesStage
from gateway.stages.reports import ReportStage
from gateway.stages.sla import SlaStage
from gateway.storage.models import (
    Assignment,
    AuditEvent,
    CaseState,
    CriticalResult,
    Delivery,
    Instance,
    OutboundObject,
    PriorFetch,
    Referral,
    Series,
    Source,
    Study,
    db,
    utcnow,
)
from gateway.storage.spool import Spool
from gateway.web import views

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "routing"))
from routing_db import open_db  # noqa: E402

CASES = 120
INSTANCES = 4
PAGE = 20  # the referrer's list's page here: a bounded query reads far fewer rows of a table than CASES
HISTORY_TABLES = {"study", "series", "instance", "outbound_object", "delivery", "audit_event", "uid_map", "assignment",
                  "referral", "prior_fetch", "prior_study", "report_object", "study_identity", "study_match_keys",
                  "result_message", "quarantined_object", "critical_result", "critical_notice", "commitment_request"}
# Read whole on purpose, each an index-only scan where an index exists: status's counts by state of the cases, of the
# priors' fetches and of the Storage Commitment requests, and the objects ever refused. Listed so that any other whole
# scan fails (the instances by state and the spool's bytes are read from ``instance_tally``, not counted).
WHOLE_TABLE = (
    re.compile(r'^SELECT "t1"\."state", COUNT\("t1"\."id"\) FROM "\w+" AS "t1" GROUP BY "t1"\."state"$'),
    re.compile(r'^SELECT COUNT\(1\) FROM \(SELECT 1 FROM "quarantined_object" AS "t1"\) AS "_wrapped"'),
)


@pytest.fixture
def history(database_url, tmp_path):
    database = open_db(database_url)
    with database.connection_context():
        _fill(Source.get(Source.name == "st-marys"))
        if isinstance(database, peewee.PostgresqlDatabase):
            database.execute_sql("ANALYZE")
        yield database
    database.close_all()


def _fill(source: Source) -> None:
    now = utcnow()
    for n in range(CASES):
        delivered = now - dt.timedelta(days=n * 3)
        study = Study.create(study_uid=f"2.25.1{n}", source=source, calling_ae="STMARYS_PACS",
                             state=CaseState.REPORT_DELIVERED, report_delivered_at=delivered, reviewer="dr-a",
                             first_received_at=delivered - dt.timedelta(days=1), pseudo_study_uid=f"2.25.2{n}")
        series = Series.create(study=study, series_uid=f"2.25.3{n}", modality="MR")
        Assignment.create(study=study, reviewer="dr-a", reason="history", active=False, ended_reason="reported")
        PriorFetch.create(study=study, source="st-marys", state="done", deadline_at=delivered)
        if n == CASES - 1:  # not acknowledged: on the referrer's first page however old
            CriticalResult.create(study=study, flagged_by="cli")
        Referral.create(source=source, accession_number=f"HA{n}", patient_id=f"HP{n}", document="{}",
                        received_via="http", received_at=delivered - dt.timedelta(days=2), state="matched",
                        study=study, matched_at=delivered - dt.timedelta(days=1))
        AuditEvent.insert_many([{"action": action, "study_key": study.key, "detail": "history"}
                                for action in ("received", "deidentified", "sent", "report_delivered")]).execute()
        for i in range(INSTANCES):
            instance = Instance.create(
                study=study, series=series, sop_instance_uid=f"2.25.4{n}.{i}",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.4", transfer_syntax="1.2.840.10008.1.2.1", size=1000,
                sha256=f"{n:032x}{i:032x}",
                spool_path=f"objects/{n % 256:02x}/{n:032x}{i:032x}.dcm", calling_ae="STMARYS_PACS",
                state="deidentified")
            outbound = OutboundObject.create(
                study=study, instance=instance, sop_instance_uid=f"2.25.5{n}.{i}", sop_class_uid=instance.sop_class_uid,
                transfer_syntax=instance.transfer_syntax, spool_path=f"outbound/{study.key}/{i}.dcm", sha256="0" * 64,
                size=1000)
            Delivery.create(outbound=outbound, destination="reviewer:dr-a", state="sent", sent_at=delivered,
                            commitment_uid=f"2.25.6{n}", commitment_requested_at=delivered, committed_at=delivered)


class _Statements(logging.Handler):
    """The SQL peewee runs (its logger, at DEBUG): (statement, parameters)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[tuple[str, tuple]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, tuple) and len(record.msg) == 2:
            self.seen.append((record.msg[0], tuple(record.msg[1] or ())))


def _hot_paths(tmp_path: Path) -> None:
    config = GatewayConfig.model_validate({
        "storage": {"spool_dir": str(tmp_path / "spool"), "database": "sqlite:///unused.db"},
        "sources": [{"name": "st-marys", "ae_title": "STMARYS_PACS",
                     "query_retrieve": {"ae_title": "STMARYS_QR", "host": "127.0.0.1", "port": 9}}],
        "reviewers": [{"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": 9}]})
    context = NodeContext.of_process()
    spool = Spool(tmp_path / "spool")
    now = utcnow()
    stages = [
        CompletionStage(config.routing, SpineFilter(config.routing, config.storage.spool_dir), context=context),
        DeidStage(config.deid.options(), b"k" * 32, spool, context=context),
        NotesStage.of(config, spool, context=context),
        AssignmentStage(config.reviewers, config.routing, context=context),
        DeliveryStage.of(config, context=context), SlaStage(config.reviewers, config.routing, context=context),
        ReportStage.of(config, spool, b"k" * 32, context=context), OruStage.of(config, spool, context=context),
        CommitmentStage.of(config, context=context), CriticalNoticeStage(config.critical, context=context)]
    for stage in stages:
        if hasattr(stage, "due"):
            stage.due(now)
    PriorsStage.of(config, spool, context=context).run_once(now)
    collect_status(tmp_path / "spool", config.reviewers)
    views.attention_cases()
    views.referrer_cases("st-marys", limit=PAGE)
    views.referrer_cases("st-marys", now - dt.timedelta(days=30), limit=PAGE)
    views.worklist("dr-a")
    views.waiting_referrals(config.referrals.wait_s)
    plan_purge(dt.datetime.now(dt.UTC), 330, spool_dir=tmp_path / "spool")  # the oldest few cases: a day's purge


def _aliases(sql: str) -> dict[str, str]:
    return {alias: table for table, alias in re.findall(r'(?:FROM|JOIN) "(\w+)" AS "(\w+)"', sql)}


def _limited_in_index_order(sql: str, line: str) -> bool:
    """Whether SQLite's ``SCAN t USING INDEX <table>_<column>`` walks the index in the order of an ``ORDER BY
    <column> ... LIMIT`` of the statement: it stops after the limit (the 20 cases received last)."""
    used = re.match(r"SCAN (\w+) USING (?:COVERING )?INDEX (\w+)", line)
    if used is None:
        return False
    alias, index = used.groups()
    table = _aliases(sql).get(alias, "")
    column = index[len(table) + 1:] if table and index.startswith(table + "_") else ""
    return bool(column) and re.search(rf'ORDER BY "{alias}"\."{column}"(?: DESC)? LIMIT', sql) is not None


def _whole_scans(sql: str, parameters: tuple) -> list[str]:
    """The history tables ``sql`` reads whole, from its plan."""
    aliases = _aliases(sql)
    if isinstance(db.obj, peewee.PostgresqlDatabase):
        plan = [row[0] for row in db.execute_sql("EXPLAIN " + sql, parameters).fetchall()]
        scanned = [m.group(1) for line in plan if (m := re.search(r'Seq Scan on (\w+)', line))]
    else:
        plan = [row[-1] for row in db.execute_sql("EXPLAIN QUERY PLAN " + sql, parameters).fetchall()]
        scanned = [aliases.get(m.group(1), m.group(1)) for line in plan
                   if (m := re.match(r"SCAN (\w+)", line)) and not _limited_in_index_order(sql, line)]
    return [table for table in scanned if table in HISTORY_TABLES]


def _rows_read(sql: str, parameters: tuple) -> dict[str, int]:
    """PostgreSQL: the rows of each history table that ``sql`` read, run (``EXPLAIN ANALYZE``), where it read half the
    table or more: an index walked in order and filtered after it (a list whose rows the filter refuses) reads the
    history as surely as a sequential scan, and its plan shows no scan."""
    (plan,), = db.execute_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, parameters).fetchall()
    plan = plan if isinstance(plan, list) else json.loads(plan)
    read: dict[str, int] = {}
    nodes = [plan[0]["Plan"]]
    while nodes:
        node = nodes.pop()
        nodes.extend(node.get("Plans", []))
        if node.get("Relation Name") in HISTORY_TABLES:
            rows = (node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)) * node.get("Actual Loops", 1)
            read[node["Relation Name"]] = read.get(node["Relation Name"], 0) + rows
    return {table: rows for table, rows in read.items() if rows and rows >= _rows_in(table) / 2 >= CASES / 2}


def _rows_in(table: str) -> int:
    return int(db.execute_sql(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0])


def test_no_hot_path_reads_the_whole_history(history, tmp_path):
    statements = _Statements()
    logger = logging.getLogger("peewee")
    level = logger.level
    logger.addHandler(statements)
    logger.setLevel(logging.DEBUG)
    try:
        _hot_paths(tmp_path)
    finally:
        logger.removeHandler(statements)
        logger.setLevel(level)
    selects = {sql: parameters for sql, parameters in statements.seen if sql.lstrip().upper().startswith("SELECT")}
    assert len(selects) > 30  # the paths ran (the stages' claims, status, the portal's lists, purge)
    if isinstance(db.obj, peewee.PostgresqlDatabase):
        db.execute_sql("SET enable_seqscan = off")
    offenders = {}
    for sql, parameters in selects.items():
        if any(pattern.search(sql) for pattern in WHOLE_TABLE):
            continue
        scanned = _whole_scans(sql, parameters)
        if isinstance(db.obj, peewee.PostgresqlDatabase):
            scanned += sorted(_rows_read(sql, parameters).items())
        if scanned:
            offenders[sql[-300:]] = scanned
    assert offenders == {}
