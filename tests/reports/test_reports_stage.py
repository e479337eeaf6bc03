"""ReportStage on SQLite and PostgreSQL against a real DCMTK storescp as the source's return destination:
re-identify, deliver once through the ledger, back off while the PACS is down, REPORT_FAILED after the last
attempt (the report leg's own counters; the study leg's untouched), and the operator's retry bringing the report
home without walking the study leg's states."""

from __future__ import annotations

import datetime as dt

import pydicom
import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from structlog.testing import capture_logs

from gateway.config import GatewayConfig
from gateway.demo import DemoPatient
from gateway.ops.metrics import GatewayMetrics
from gateway.stages.context import NodeContext
from gateway.stages.deliver import DeliveryStage, retry_case
from gateway.stages.reports import ReportStage
from gateway.storage import cases, wakeup
from gateway.storage.models import CaseState, Delivery, OutboundObject, ReportObject, Study, db, utcnow
from support.peers import DcmtkStoreSCP, free_port

pytestmark = pytest.mark.dicom_e2e  # run a second time with the pynetdicom hooks off (make test-hooks-off)

PATIENT = DemoPatient()


def _config(tmp_path, port: int, max_attempts: int = 3, initial_s: float = 0.01) -> GatewayConfig:
    return GatewayConfig.model_validate({
        "storage": {"spool_dir": str(tmp_path / "spool"), "min_free_bytes": 0},
        "routing": {"retry": {"initial_s": initial_s, "max_s": max(initial_s, 0.02), "max_attempts": max_attempts}},
        "sources": [{"name": "st-marys", "ae_title": "HOSP_PACS",
                     "return": {"ae_title": "STORESCP", "host": "127.0.0.1", "port": port}}],
        "reviewers": [{"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": 104}]})


def _run(stage: ReportStage) -> int:
    return stage.run_once(utcnow())


def test_reports_stage_delivers_once_backs_off_fails_and_retries(tmp_path, report_spool, reported_case):
    spool = report_spool
    case = reported_case()
    study = case.study
    scp = DcmtkStoreSCP(tmp_path / "hospital", ae_title="STORESCP")
    try:
        # The hospital is down: attempts back off, then the case fails.
        down = ReportStage.of(_config(tmp_path, free_port(), max_attempts=2), spool, case.secret)
        assert _run(down) == 0
        study = Study.get_by_id(study.id)
        assert study.state == CaseState.REPORTED and study.report_attempts == 1
        assert study.delivery_attempts == 0 and study.report_next_attempt_at is not None, "its own counter"
        assert ReportObject.get().state == "reidentified"
        (outbound,) = OutboundObject.select().where(OutboundObject.kind == "report")
        row = Delivery.get(Delivery.outbound == outbound)
        assert (row.destination, row.attempts) == ("source:st-marys", 1), "the ledger row counts the attempt"
        Study.update(report_next_attempt_at=None).where(Study.id == study.id).execute()
        assert _run(down) == 1
        study = Study.get_by_id(study.id)
        assert (study.state, study.state_reason) == (CaseState.REPORT_FAILED, "report_delivery_failed")
        assert Delivery.get(Delivery.outbound == outbound).attempts == 2

        # Up again, the operator retries the report leg: REPORT_FAILED → REPORTED, then home.
        scp.start()
        up_config = _config(tmp_path, scp.port)
        up = ReportStage.of(up_config, spool, case.secret)
        assert retry_case(study) == "report"
        assert Study.get_by_id(study.id).state == CaseState.REPORTED and study.report_attempts == 0
        images_delivery = DeliveryStage.of(up_config)
        assert study.id not in {s.id for s in images_delivery.due(utcnow())}, "a report is no image to resend"
        assert images_delivery.pending_objects(study, up_config.reviewers[0]) == [], "never to a reviewer"
        assert _run(up) == 1  # home
        study = Study.get_by_id(study.id)
        assert study.state == CaseState.REPORT_DELIVERED and study.report_delivered_at is not None
        assert study.report_attempts == 1, "home at the first attempt after the operator's retry"
        assert Delivery.get(Delivery.outbound == outbound).state == "sent"
        assert _run(up) == 0, "nothing is sent twice"
        received = list(scp.out_dir.iterdir())
        assert len(received) == 1
        home = pydicom.dcmread(received[0])
        assert home.PatientID == PATIENT.patient_id and home.StudyInstanceUID == case.originals[0].StudyInstanceUID
        assert home.SOPInstanceUID == outbound.sop_instance_uid
    finally:
        scp.stop()


def test_reports_stage_without_return_destination_fails_the_case(tmp_path, report_spool, reported_case):
    config = GatewayConfig.model_validate({
        "storage": {"spool_dir": str(tmp_path / "spool")},
        "sources": [{"name": "st-marys", "ae_title": "HOSP_PACS"}],
        "reviewers": [{"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": 104}]})
    case = reported_case()
    assert _run(ReportStage.of(config, report_spool, case.secret)) == 1
    assert Study.get_by_id(case.study.id).state == CaseState.REPORT_FAILED
    assert not OutboundObject.select().where(OutboundObject.kind == "report").exists()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_every_failed_report_attempt_is_logged_at_warning(tmp_path, report_spool, reported_case):
    """Not only the final give-up: an operator tailing at warning sees the peer failing from the first attempt."""
    case = reported_case()
    with capture_logs() as logs:
        _run(ReportStage.of(_config(tmp_path, free_port(), max_attempts=5), report_spool, case.secret))
    (attempt,) = [e for e in logs if e["event"] == "report_delivery_attempt"]
    assert attempt["log_level"] == "warning" and attempt["attempt"] == 1 and attempt["status"] != "delivered"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_failed_report_attempt_sets_its_retry_timer_on_the_hub_of_its_context(tmp_path, report_spool,
                                                                                reported_case):
    assert wakeup.current() is None, "no process hub: the timer can only reach the context's"
    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.start()
    hub = wakeup.Wakeups("node-ctx-11112", db.obj, scheduler=scheduler).start()
    try:
        context = NodeContext(db, cases.LeaseOwner("node-ctx-11112", dt.timedelta(seconds=45)), hub,
                              GatewayMetrics(db.obj))
        case = reported_case()
        # a retry an hour away: its timer is still pending when the test looks
        stage = ReportStage.of(_config(tmp_path, free_port(), max_attempts=5, initial_s=3600), report_spool,
                               case.secret, context=context)
        assert _run(stage) == 0
        due = Study.get_by_id(case.study.id).report_next_attempt_at
        (when,) = [when.replace(tzinfo=None) for when, topic in hub.pending_timers() if topic == CaseState.REPORTED]
        assert due is not None and abs((when - due).total_seconds()) < 0.1, "the retry runs when due"
    finally:
        hub.stop()
        scheduler.shutdown(wait=True)
