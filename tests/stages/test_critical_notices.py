"""Critical results' notices against a real SMTP server and webhook receiver (threads of the test): sent once,
retried with a back-off while the address does not answer (each failed attempt at warning), failed after
``max_attempts``; escalation only when not acknowledged in time; nothing but the source and a link."""

from __future__ import annotations

import datetime as dt

import pytest
from structlog.testing import capture_logs

from gateway.config import GatewayConfig
from gateway.stages.critical import CriticalNoticeStage, flag_critical
from gateway.storage.models import CriticalNotice, CriticalResult, Referral, Source, Study, db, open_database, utcnow
from support.mailsink import SmtpSink, WebhookSink
from support.peers import free_port


def _config(smtp_port: int, hooks: list[str], **critical) -> GatewayConfig:
    return GatewayConfig.model_validate({
        "critical": {"smtp_port": smtp_port, "initial_s": 0.01, "max_s": 0.01, "max_attempts": 2,
                     "portal_url": "https://gw.example", **critical},
        "sources": [{"name": "st-marys", "ae_title": "HOSP_PACS", "critical_emails": ["rad@stmarys.example"],
                     "critical_webhooks": hooks}]})


@pytest.fixture
def case(tmp_path):
    database = open_database(f"sqlite:///{tmp_path}/gateway.db")
    with database.connection_context():
        source = Source.create(name="st-marys", ae_title="HOSP_PACS")
        study = Study.create(study_uid="1.2.3", source=source, calling_ae="HOSP_PACS", state="reported")
        referral = Referral.create(source=source, accession_number="A1", patient_id="MRN1", document="{}",
                                   received_via="cli", study=study, state="matched")
        yield study, referral
    database.close()


def _run_until_settled(stage: CriticalNoticeStage) -> None:
    for _ in range(50):
        stage.run_once(utcnow() + dt.timedelta(seconds=1))
        if not CriticalNotice.select().where(CriticalNotice.state == "pending").exists():
            return


def test_the_notices_go_once_with_a_link_and_no_phi(case):
    study, referral = case
    smtp, hook = SmtpSink().start(), WebhookSink().start()
    try:
        config = _config(smtp.port, [hook.url])
        with db.atomic():
            assert flag_critical(study, "on-call surgeon 020 7946 0000", "web:dr-a", config.sources) is not None
            assert flag_critical(study, "again", "web:dr-a", config.sources) is None, "one flag per case"
        stage = CriticalNoticeStage(config.critical)
        _run_until_settled(stage)
        (message,), (body,) = smtp.messages, hook.bodies
    finally:
        smtp.stop()
        hook.stop()
    link = f"https://gw.example/referrer/referrals/{referral.id}"
    assert link in message.get_content() and body == {"event": "critical_result", "source": "st-marys",
                                                      "flagged_at": body["flagged_at"], "link": link}
    assert "020 7946" not in message.as_string() and "MRN1" not in message.as_string()
    assert {n.state for n in CriticalNotice.select()} == {"sent"}


def test_an_address_that_does_not_answer_is_retried_at_warning_then_failed(case):
    study, _ = case
    config = _config(free_port(), ["ftp://nowhere"])
    flag_critical(study, "x", "cli", config.sources)
    with capture_logs() as logs:
        _run_until_settled(CriticalNoticeStage(config.critical))
    failed = [e for e in logs if e["event"] == "critical_notice_failed"]
    assert len(failed) == 4 and {e["log_level"] for e in failed} == {"warning"}, "every failed attempt, 2 each"
    assert [e["status"] for e in failed if e["peer"] == "email"] == ["retrying", "failed"]
    assert {(n.state, n.attempts) for n in CriticalNotice.select()} == {("failed", 2)}


def test_escalated_only_when_not_acknowledged_in_time(case):
    study, _ = case
    smtp = SmtpSink().start()
    try:
        config = _config(smtp.port, [], escalate_after_s=60, ops_emails=["ops@hospital.example"])
        critical = flag_critical(study, "x", "cli", config.sources)
        stage = CriticalNoticeStage(config.critical)
        assert stage.escalate(utcnow()) == 0, "not yet"
        assert stage.escalate(utcnow() + dt.timedelta(seconds=61)) == 1
        assert stage.escalate(utcnow() + dt.timedelta(seconds=120)) == 0, "once"
        _run_until_settled(stage)
        assert [m["To"] for m in smtp.messages if "not acknowledged" in m["Subject"]] == ["ops@hospital.example"]
        other = Study.create(study_uid="1.2.4", source=study.source, calling_ae="HOSP_PACS", state="reported")
        flag_critical(other, "y", "cli", config.sources)
        CriticalResult.update(acknowledged_at=utcnow()).where(CriticalResult.study == other).execute()
        assert stage.escalate(utcnow() + dt.timedelta(seconds=61)) == 0, "acknowledged: no escalation"
    finally:
        smtp.stop()
    assert critical is not None
