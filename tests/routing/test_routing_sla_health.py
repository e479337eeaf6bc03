"""SLA breaches (flag, reassign), peer health by C-ECHO against a real storescp, and the retry command."""

from __future__ import annotations

import datetime as dt

import pytest
from structlog.testing import capture_logs

from gateway.config import GatewayConfig, ReviewerConfig, RoutingConfig
from gateway.stages.assign import AssignmentStage
from gateway.stages.health import HealthStage
from gateway.stages.sla import SlaStage
from gateway.storage.models import Assignment, CaseState, PeerHealth, Study, utcnow
from routing_db import make_case, open_db
from support.peers import DcmtkStoreSCP, GatewayProcess, free_port


def _reviewer(name: str, port: int = 104) -> ReviewerConfig:
    return ReviewerConfig(name=name, ae_title=name.upper().replace("-", "_"), host="127.0.0.1", port=port)


@pytest.fixture
def db(tmp_path):
    database = open_db(f"sqlite:///{tmp_path}/gw.db")
    with database.connection_context():
        yield database


def test_breach_is_flagged_once_and_reassigned_when_configured(db):
    reviewers = [_reviewer("dr-a"), _reviewer("dr-b")]
    routing = RoutingConfig(sla_h={"urgent": 1, "routine": 2}, reassign_after_sla=True)
    study = make_case()
    AssignmentStage(reviewers, routing).run_once(utcnow())
    first = Study.get_by_id(study.id)
    assert first.sla_due_at - utcnow() > dt.timedelta(hours=1, minutes=59)
    Study.update(state=CaseState.DELIVERED).where(Study.id == study.id).execute()
    later = utcnow() + dt.timedelta(hours=3)
    with capture_logs() as logs:
        assert SlaStage(reviewers, routing).run_once(later) == 2  # flagged, then reassigned
        assert SlaStage(reviewers, routing).run_once(later) == 0
    breach, = [e for e in logs if e["event"] == "sla_breached"]
    assert breach["log_level"] == "warning" and breach["reviewer"] == first.reviewer
    moved = Study.get_by_id(study.id)
    assert moved.state == CaseState.ASSIGNED and moved.reviewer != first.reviewer
    old, new = Assignment.select().order_by(Assignment.id)
    assert (old.active, old.ended_reason) == (False, "sla_breached")
    assert new.active and new.reviewer == moved.reviewer and new.reason.startswith("sla_breached")


def test_breach_without_reassignment_only_flags(db):
    routing = RoutingConfig()
    study = make_case(CaseState.DELIVERED, reviewer="dr-a")
    Study.update(sla_due_at=utcnow() - dt.timedelta(minutes=1)).where(Study.id == study.id).execute()
    assert SlaStage([_reviewer("dr-a"), _reviewer("dr-b")], routing).run_once(utcnow()) == 1
    row = Study.get_by_id(study.id)
    assert row.sla_flagged_at is not None and row.reviewer == "dr-a" and row.state == CaseState.DELIVERED


def test_peer_health_by_c_echo_logs_down_and_up(tmp_path, db):
    scp = DcmtkStoreSCP(tmp_path / "scp", ae_title="DR_A")
    config = GatewayConfig.model_validate({
        "sources": [{"name": "st-marys", "ae_title": "STMARYS_PACS",
                     "return": {"ae_title": "PACS", "host": "127.0.0.1", "port": free_port()}}],
        "reviewers": [{"name": "dr-a", "ae_title": "DR_A", "host": "127.0.0.1", "port": scp.port}],
        "routing": {"echo_interval_s": 0.01}})
    stage = HealthStage.of(config)
    with capture_logs() as logs:
        stage.run_once(utcnow())
        assert {p.name: p.ok for p in PeerHealth.select()} == {"reviewer:dr-a": False, "source:st-marys": False}
        scp.start()
        try:
            stage._last_run = None
            assert stage.run_once(utcnow()) == 1
        finally:
            scp.stop()
    assert PeerHealth.get(PeerHealth.name == "reviewer:dr-a").ok is True
    events = [(e["event"], e["peer"]) for e in logs if e["event"] in ("peer_down", "peer_up")]
    assert events == [("peer_down", "reviewer:dr-a"), ("peer_down", "source:st-marys"), ("peer_up", "reviewer:dr-a")]
    stage.interval = 3600
    assert stage.run_once(utcnow()) == 0


def test_retry_command(tmp_path):
    url = f"sqlite:///{tmp_path}/gw.db"
    database = open_db(url)
    with database.connection_context():
        failed = make_case(CaseState.FAILED, reviewer="dr-a")
        Study.update(delivery_attempts=12).where(Study.id == failed.id).execute()
        delivered = make_case(CaseState.DELIVERED, reviewer="dr-a")
    node = GatewayProcess(tmp_path / "gw", url)
    node.write_config()
    assert node.cli("retry", failed.key).returncode == 0
    refused = node.cli("retry", delivered.key, check=False)
    assert refused.returncode == 2 and "only a failed or report_failed case" in refused.stderr
    assert node.cli("retry", "nosuchcase", check=False).returncode == 2
    with database.connection_context():
        row = Study.get_by_id(failed.id)
        assert (row.state, row.delivery_attempts) == (CaseState.DELIVERING, 0)
