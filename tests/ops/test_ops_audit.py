"""Audit rows written and queried; the ``audit`` log event passes the strict PHI guard."""

from __future__ import annotations

import json
import logging

import pytest
import structlog
from structlog.testing import capture_logs

from gateway.config import LoggingConfig
from gateway.ops import audit
from gateway.ops.logs import LOG_KEYS, configure_logging
from gateway.storage.models import AuditEvent, db, open_database

PHI_DETAIL = "DOE^JOHN 1960-01-01 MRN 123456"


@pytest.fixture
def database(tmp_path):
    database = open_database(f"sqlite:///{tmp_path}/gw.db", max_connections=4)
    yield database
    database.close_all()


@pytest.fixture
def strict_json_log(tmp_path):
    """The real logging chain, strict (unknown keys raise), writing JSON lines to a file."""
    path = tmp_path / "routing.jsonl"
    root = logging.getLogger()
    saved_structlog, saved_handlers, saved_level = structlog.get_config(), list(root.handlers), root.level
    noisy = {name: logging.getLogger(name).level for name in ("pynetdicom", "peewee", "apscheduler")}
    for handler in saved_handlers:
        root.removeHandler(handler)  # configure_logging closes what it removes; keep the suite's own
    configure_logging(LoggingConfig(file=path, level="debug"), strict=True, console=False)
    yield path
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in saved_handlers:
        root.addHandler(handler)
    root.setLevel(saved_level)
    for name, level in noisy.items():
        logging.getLogger(name).setLevel(level)
    structlog.configure(**saved_structlog)


def test_record_writes_a_row(database):
    audit.record("received", actor_ae="NORTHPACS", actor_host="10.0.0.5", study_key="ab12cd34ef56",
                 detail="12 instances")
    with db.connection_context():
        row = AuditEvent.get()
    assert (row.action, row.actor_ae, row.actor_host, row.study_key, row.outcome, row.detail) == (
        "received", "NORTHPACS", "10.0.0.5", "ab12cd34ef56", "success", "12 instances")


def test_query_by_case_oldest_first_and_limited(database):
    for action in ("received", "deidentified", "sent"):
        audit.record(action, actor_ae="NORTHPACS", actor_host=None, study_key="case1")
    audit.record("refused", actor_ae="EVIL", actor_host="10.9.9.9", study_key=None, outcome="refused")
    audit.record("received", actor_ae="SOUTHPACS", actor_host=None, study_key="case2")
    assert [e["action"] for e in audit.query("case1", limit=10)] == ["received", "deidentified", "sent"]
    assert [e["action"] for e in audit.query("case1", limit=2)] == ["deidentified", "sent"]
    everything = audit.query(None, limit=100)
    assert len(everything) == 5 and everything[-1]["study"] == "case2"
    assert everything[3] == {"at": everything[3]["at"], "action": "refused", "actor_ae": "EVIL",
                             "actor_host": "10.9.9.9", "study": None, "outcome": "refused", "detail": ""}
    assert everything[3]["at"].endswith("Z")
    assert audit.query("unknown") == []


def test_log_event_uses_allowlisted_keys_and_never_the_detail(database):
    with capture_logs() as logs:
        audit.record("sent", actor_ae="REVIEW1", actor_host="10.0.0.7", study_key="ab12", outcome="failed",
                     detail=PHI_DETAIL)
    [event] = logs
    assert event == {"event": "audit", "log_level": "info", "reason": "sent", "calling_ae": "REVIEW1",
                     "peer": "10.0.0.7", "case": "ab12", "status": "failed"}
    assert set(event) - {"log_level"} <= LOG_KEYS
    with db.connection_context():
        assert AuditEvent.get().detail == PHI_DETAIL[:255]  # kept in the row, for the audit trail only


def test_log_event_passes_the_strict_guard_into_the_json_file(database, strict_json_log):
    audit.record("received", actor_ae="NORTHPACS", actor_host="10.0.0.5", study_key="ab12cd34ef56",
                 detail=PHI_DETAIL)
    logging.getLogger().handlers[0].flush()
    [line] = strict_json_log.read_text().splitlines()
    event = json.loads(line)
    assert event["event"] == "audit" and event["reason"] == "received" and event["case"] == "ab12cd34ef56"
    assert set(event) <= LOG_KEYS
    assert "DOE" not in line and "123456" not in line


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"action": "Received!"}, "snake_case"),
    ({"action": ""}, "snake_case"),
    ({"action": "x" * 33}, "snake_case"),
    ({"action": "sent", "outcome": "maybe"}, "outcome must be one of"),
])
def test_invalid_arguments_are_refused_before_writing(database, kwargs, message):
    with pytest.raises(ValueError, match=message):
        audit.record(**{"actor_ae": None, "actor_host": None, "study_key": None, **kwargs})
    with db.connection_context():
        assert AuditEvent.select().count() == 0


def test_write_failure_raises_and_is_logged(tmp_path):
    database = open_database(f"sqlite:///{tmp_path}/gw.db")
    with database.connection_context():
        database.execute_sql("DROP TABLE audit_event")
    with capture_logs() as logs, pytest.raises(audit.AuditWriteError, match="could not be written"):
        audit.record("sent", actor_ae="REVIEW1", actor_host=None, study_key="ab12")
    assert [e["event"] for e in logs] == ["audit_write_failed"]
    database.close_all()


def test_query_limit_must_be_positive(database):
    with pytest.raises(ValueError, match="at least 1"):
        audit.query(None, limit=0)


def test_record_joins_the_callers_transaction(database):
    database.connect()
    try:
        with database.atomic() as transaction:
            audit.record("received", actor_ae="NORTHPACS", actor_host=None, study_key="tx1")
            transaction.rollback()  # the caller's rollback takes the audit row with it
        assert not database.is_closed()
    finally:
        database.close()
    assert audit.query("tx1") == []
