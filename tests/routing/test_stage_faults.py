"""Fault injection, stage by stage: a poisoned case never holds up a healthy one.

Each test runs the node's own stages (``GatewayNode._stages``) through the shared stage loop
(``Pipeline.run_all_once``) on two received cases, one healthy and one poisoned at one stage: an exception
injected into that stage's step for the poisoned case only, an unreadable original, a missing outbound file, a
case needing more than 128 presentation contexts, an unusable report. The healthy case is delivered to a real
DCMTK storescp reviewer (and, for the report leg, its report to a second storescp as the source's PACS); the
poisoned one ends in the stage's give-up state with its reason, and ``spine-gateway status`` (a subprocess on
the same database, ``--config`` after the command) shows it under ``needs_attention``.

The last test kills a de-identification worker of a running node (a subprocess, studies sent by DCMTK storescu)
and sees the pool rebuilt and the next study delivered.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
import yaml

from gateway.config import GatewayConfig
from gateway.deid.work import deid_pool
from gateway.demo import write_demo_study
from gateway.node import GatewayNode
from gateway.reports import codes
from gateway.reports.builder import ImageRef, ReportContent, ReportFinding, ReportSRBuilder
from gateway.stages.pipeline import FailurePolicy, Pipeline
from gateway.storage import cases
from gateway.storage.models import (
    CaseState,
    Delivery,
    OutboundObject,
    ReportObject,
    Source,
    Study,
    db,
    open_database,
    sync_sources,
    utcnow,
)
from routing_db import add_instances
from support.peers import DcmtkStoreSCP, GatewayProcess, child_pids, free_port, storescu, wait_until

SECRET = b"0123456789abcdef0123456789abcdef"
MAX_FAILURES = 2


class InjectedFault(RuntimeError):
    """Raised by a stage's step for the poisoned case only."""


def _config_dict(tmp_path: Path, database_url: str, reviewer_port: int, source_port: int) -> dict:
    return {
        "node": {"ae_title": "SPINEGW", "port": free_port()},
        "storage": {"spool_dir": str(tmp_path / "spool"), "database": database_url, "min_free_bytes": 0},
        "logging": {"file": None},
        "deid": {"workers": 0},
        "referrals": {"wait_s": 0, "on_timeout": "route"},
        "routing": {"stable_after_s": 0, "poll_s": 0.1, "echo_interval_s": 3600,
                    "retry": {"initial_s": 0.01, "max_s": 0.02, "max_attempts": 2},
                    "case_failures": {"max_failures": MAX_FAILURES, "initial_s": 0.01, "max_s": 0.02}},
        "sources": [{"name": "st-marys", "ae_title": "STMARYS_PACS",
                     "return": {"ae_title": "HOSP_PACS", "host": "127.0.0.1", "port": source_port}}],
        "reviewers": [{"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": reviewer_port}],
    }


class Site:
    """The node's stages in this process, a reviewer and the source's PACS (DCMTK storescp each)."""

    def __init__(self, tmp_path: Path, database_url: str) -> None:
        self.tmp_path = tmp_path
        self.reviewer = DcmtkStoreSCP(tmp_path / "reviewer", ae_title="REVIEW_A").start()
        self.pacs = DcmtkStoreSCP(tmp_path / "pacs", ae_title="HOSP_PACS").start()
        raw = _config_dict(tmp_path, database_url, self.reviewer.port, self.pacs.port)
        self.config_path = tmp_path / "gateway.yaml"
        self.config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
        self.config = GatewayConfig.model_validate(raw)
        self.database = open_database(database_url, max_connections=4)
        sync_sources([("st-marys", "STMARYS_PACS")])
        self.node = GatewayNode(self.config)
        self.node.spool.prepare()
        self.node.secret = SECRET
        self.node.work_pool = deid_pool(self.config.deid.options(), SECRET, workers=0)
        self.stages = {stage.name: stage for stage in self.node._stages()}
        self.pipeline = Pipeline(list(self.stages.values()), 0.1,
                                 policy=FailurePolicy.of(self.config.routing.case_failures))

    def receive(self, name: str, seed: int) -> Study:
        """A study as the receiver leaves it: originals in the spool, rows committed, quiet since a while."""
        files = write_demo_study(self.tmp_path / name, 4, seed=seed, rows=32, cols=32)
        header = pydicom.dcmread(files[0], stop_before_pixels=True)
        with db.connection_context():
            before = utcnow()
            source = Source.get(Source.name == "st-marys")
            study = Study.create(study_uid=str(header.StudyInstanceUID), source=source, calling_ae="STMARYS_PACS",
                                 state=CaseState.RECEIVING, first_received_at=before, last_received_at=before)
            add_instances(study, self.node.spool.root, files)
            return Study.get_by_id(study.id)

    def poison_step(self, stage_name: str, poisoned: Study, before: Callable[[Study], None] | None = None,
                    fault: bool = True) -> None:
        """Wrap ``stage_name``'s step: for the poisoned case, run ``before`` (once) and raise (when ``fault``)."""
        stage = self.stages[stage_name]
        original = stage.step
        done: list[bool] = []

        def step(study: Study, now):
            if study.id == poisoned.id:
                if before is not None and not done:
                    done.append(True)
                    before(study)
                if fault:
                    raise InjectedFault("injected")
            return original(study, now)

        stage.step = step

    def run_until(self, predicate: Callable[[], bool], what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pipeline.run_all_once()
            with db.connection_context():
                if predicate():
                    return
            time.sleep(0.02)
        with db.connection_context():
            states = {s.key: (s.state, s.state_reason, s.stage_error, s.stage_failures, s.stage_retry_at)
                      for s in Study.select()}
        raise AssertionError(f"timed out waiting for {what}: {states}")

    def state(self, study: Study) -> Study:
        with db.connection_context():
            return Study.get_by_id(study.id)

    def status(self) -> dict:
        result = subprocess.run([sys.executable, "-m", "gateway", "status", "--json", "--config",
                                 str(self.config_path)], capture_output=True, text=True, timeout=120,
                                cwd=self.tmp_path)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def status_text(self) -> str:
        result = subprocess.run([sys.executable, "-m", "gateway", "status", "--config", str(self.config_path)],
                                capture_output=True, text=True, timeout=120, cwd=self.tmp_path,
                                env={**os.environ, "COLUMNS": "250"})
        assert result.returncode == 0, result.stderr
        return result.stdout

    def delivered_to_reviewer(self, study: Study) -> set[str]:
        """SOP Instance UIDs of ``study``'s outbound objects that the reviewer holds."""
        with db.connection_context():
            expected = {o.sop_instance_uid for o in OutboundObject.select().where(
                (OutboundObject.study == study.id) & (OutboundObject.kind != "report"))}
        held = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                for p in self.reviewer.out_dir.iterdir() if p.is_file()}
        return expected & held

    def add_report(self, study: Study, unusable: bool = False, move: bool = True, seed: int = 0) -> None:
        """The reviewer's report of a delivered case, as the report intake leaves it (REPORTED)."""
        with db.connection_context():
            study = Study.get_by_id(study.id)
            rows = list(OutboundObject.select().where((OutboundObject.study == study.id)
                                                      & (OutboundObject.kind == "image")).order_by(OutboundObject.id))
            images = [pydicom.dcmread(self.node.spool.absolute(row.spool_path)) for row in rows]
            refs = tuple(ImageRef(str(d.SOPClassUID), str(d.SOPInstanceUID), str(d.SeriesInstanceUID))
                         for d in images)
            report = ReportSRBuilder(images[0], ReportContent(
                title=codes.TITLES["mri-spine"], findings=(ReportFinding("Disc extrusion.", refs[:2]),),
                impressions=(f"Extrusion {seed}.",))).build()
            buffer = io.BytesIO()
            report.save_as(buffer, enforce_file_format=True)
            data = b"not a DICOM file at all" if unusable else buffer.getvalue()
            digest = hashlib.sha256(data).hexdigest()
            stored = self.node.spool.store(data, digest)
            ReportObject.create(study=study, reviewer="dr-a", calling_ae="REVIEW_A", sop_class_uid=report.SOPClassUID,
                                sop_instance_uid=report.SOPInstanceUID,
                                transfer_syntax=report.file_meta.TransferSyntaxUID,
                                spool_path=self.node.spool.relative(stored), sha256=digest, size=len(data))
            if move:
                assert cases.move(study, CaseState.REPORTED, reason="report_received")

    def close(self) -> None:
        self.reviewer.stop()
        self.pacs.stop()
        self.database.close()


@pytest.fixture
def site(tmp_path, database_url):
    made = Site(tmp_path, database_url)
    yield made
    made.close()


def _corrupt_first_original(site: Site, study: Study) -> None:
    with db.connection_context():
        instance = Study.get_by_id(study.id).instances.order_by("id").first()
        site.node.spool.absolute(instance.spool_path).write_bytes(b"\x00" * 64 + b"garbage, not DICOM")


def _remove_one_outbound_file(site: Site, study: Study) -> None:
    row = OutboundObject.select().where((OutboundObject.study == study.id)
                                        & (OutboundObject.kind == "image")).order_by(OutboundObject.id).first()
    site.node.spool.absolute(row.spool_path).unlink()


def _add_129_sop_classes(site: Site, study: Study) -> None:
    row = OutboundObject.select().where((OutboundObject.study == study.id)
                                        & (OutboundObject.kind == "image")).first()
    for n in range(129):
        OutboundObject.create(study=study.id, kind="image", sop_instance_uid=f"2.25.{900000 + n}{study.id}",
                              sop_class_uid=f"1.2.826.0.1.3680043.10.1234.{n + 1}", transfer_syntax=row.transfer_syntax,
                              spool_path=row.spool_path, sha256=row.sha256, size=row.size)


# (poison id, stage, how, state the poisoned case ends in, its reason)
STUDY_LEG_POISONS = [
    ("completion-exception", "completion", "raise", CaseState.QUARANTINED, "completion:InjectedFault"),
    ("deid-exception", "deid", "raise", CaseState.QUARANTINED, "deid:InjectedFault"),
    ("deid-unreadable-original", "deid", _corrupt_first_original, CaseState.QUARANTINED, "deid:InvalidDicomError"),
    ("notes-exception", "notes", "raise", CaseState.QUARANTINED, "notes:InjectedFault"),
    ("assignment-exception", "assignment", "raise", CaseState.QUARANTINED, "assignment:InjectedFault"),
    ("delivery-exception", "delivery", "raise", CaseState.FAILED, "delivery:InjectedFault"),
    ("delivery-missing-outbound-file", "delivery", _remove_one_outbound_file, CaseState.FAILED, "max_attempts"),
    ("delivery-129-presentation-contexts", "delivery", _add_129_sop_classes, CaseState.FAILED,
     "delivery:TooManyContexts"),
]


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("poison", "stage", "how", "end_state", "reason"), STUDY_LEG_POISONS,
                         ids=[p[0] for p in STUDY_LEG_POISONS])
def test_a_poisoned_case_does_not_hold_up_a_healthy_one(site, poison, stage, how, end_state, reason):
    poisoned = site.receive("poisoned", seed=41)  # first in every queue
    healthy = site.receive("healthy", seed=42)
    if how == "raise":
        site.poison_step(stage, poisoned)
    elif how is _corrupt_first_original:
        how(site, poisoned)
    else:
        site.poison_step(stage, poisoned, before=lambda study: how(site, study), fault=False)

    site.run_until(lambda: Study.get_by_id(healthy.id).state == CaseState.DELIVERED
                   and Study.get_by_id(poisoned.id).state == end_state, f"healthy delivered, poisoned {end_state}")

    assert len(site.delivered_to_reviewer(healthy)) > 4, "the healthy case's images, notes SR and PDF"
    with db.connection_context():
        expected = OutboundObject.select().where(OutboundObject.study == healthy.id).count()
    assert len(site.delivered_to_reviewer(healthy)) == expected
    row = site.state(poisoned)
    assert row.state_reason == reason
    if stage != "delivery":
        assert not site.delivered_to_reviewer(poisoned), "nothing of the poisoned case left"
    if poison == "delivery-missing-outbound-file":
        with db.connection_context():
            errors = {d.last_error for d in Delivery.select().join(OutboundObject).where(
                (OutboundObject.study == poisoned.id) & (Delivery.state == "failed"))}
        assert errors == {"FileNotFoundError"}

    status = site.status()
    (listed,) = [r for r in status["needs_attention"] if r["case"] == poisoned.key]
    assert (listed["state"], listed["reason"]) == (end_state, reason)
    assert status["cases_by_state"][CaseState.DELIVERED] == 1
    text = site.status_text()
    assert poisoned.key in text and reason in text


REPORT_LEG_POISONS = [
    ("reports-exception", "raise", "reports:InjectedFault"),
    ("reports-unusable-report", "unusable", "report_unusable"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("poison", "how", "reason"), REPORT_LEG_POISONS, ids=[p[0] for p in REPORT_LEG_POISONS])
def test_a_poisoned_report_does_not_hold_up_a_healthy_one(site, poison, how, reason):
    poisoned, healthy = site.receive("poisoned", seed=43), site.receive("healthy", seed=44)
    site.run_until(lambda: Study.select().where(Study.state == CaseState.DELIVERED).count() == 2, "both delivered")
    site.add_report(poisoned, unusable=how == "unusable")
    site.add_report(healthy)
    if how == "raise":
        site.poison_step("reports", poisoned)

    site.run_until(lambda: Study.get_by_id(healthy.id).state == CaseState.REPORT_DELIVERED
                   and Study.get_by_id(poisoned.id).state == CaseState.REPORT_FAILED, "healthy report home")

    home = [pydicom.dcmread(p) for p in site.pacs.out_dir.iterdir() if p.is_file()]
    assert len(home) == 1, "only the healthy case's report went home"
    assert home[0].StudyInstanceUID == site.state(healthy).study_uid, "re-identified into the original study"
    row = site.state(poisoned)
    assert (row.state_reason, row.delivery_attempts) == (reason, 1), "the study leg keeps its one attempt, untouched"
    (listed,) = [r for r in site.status()["needs_attention"] if r["case"] == poisoned.key]
    assert (listed["state"], listed["reason"]) == (CaseState.REPORT_FAILED, reason)

    # retry knows the leg: REPORT_FAILED → REPORTED (never DELIVERING); the fault gone, the report goes home.
    if how == "raise":
        del site.stages["reports"].step  # the fault is gone
        result = subprocess.run([sys.executable, "-m", "gateway", "retry", poisoned.key, "--config",
                                 str(site.config_path)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "report" in result.stdout, result.stderr
        assert site.state(poisoned).state == CaseState.REPORTED
        site.run_until(lambda: Study.get_by_id(poisoned.id).state == CaseState.REPORT_DELIVERED, "retried home")
        assert len([p for p in site.pacs.out_dir.iterdir() if p.is_file()]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_report_arriving_while_the_last_one_goes_home_is_not_stranded(site):
    """The intake saw REPORTED and did not move the case; the stage had already read the received reports and
    moved it to REPORT_DELIVERED: the late report takes the case back to REPORTED and goes home too."""
    case = site.receive("two-reports", seed=49)
    site.run_until(lambda: Study.get_by_id(case.id).state == CaseState.DELIVERED, "delivered")
    site.add_report(case)
    site.run_until(lambda: Study.get_by_id(case.id).state == CaseState.REPORT_DELIVERED, "the first report home")
    site.add_report(case, move=False, seed=1)  # the race: the case stays REPORT_DELIVERED
    site.run_until(lambda: len([p for p in site.pacs.out_dir.iterdir() if p.is_file()]) == 2
                   and Study.get_by_id(case.id).state == CaseState.REPORT_DELIVERED, "the second report home")
    assert site.state(case).state_reason == "report_delivered"


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_stage_failure_backs_off_the_case_then_gives_up(site):
    """The loop's bookkeeping: failures counted on the case, a retry time set, the case skipped until then."""
    poisoned = site.receive("poisoned", seed=45)
    site.poison_step("completion", poisoned)
    site.pipeline = Pipeline(list(site.stages.values()), 0.1,
                             policy=FailurePolicy(MAX_FAILURES, initial_s=600, max_s=600))
    site.pipeline.run_all_once()
    row = site.state(poisoned)
    assert (row.state, row.stage_failures, row.stage_error) == (CaseState.RECEIVING, 1, "completion:InjectedFault")
    assert row.stage_retry_at is not None and row.stage_retry_at > utcnow()
    site.pipeline.run_all_once()
    assert site.state(poisoned).stage_failures == 1, "not tried again before its retry time"
    listed = [r for r in site.status()["needs_attention"] if r["case"] == poisoned.key]
    assert listed and listed[0]["failures"] == 1 and listed[0]["last_error"] == "completion:InjectedFault"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_wake_runs_a_stage_at_once(site):
    """``wake()`` is the one call that runs a stage now: with a poll of an hour, only the wake can move the case."""
    completion = site.stages["completion"]
    runs: list[object] = []
    due = completion.due
    completion.due = lambda now: runs.append(now) or due(now)
    pipeline = Pipeline([completion], 3600, policy=FailurePolicy.of(site.config.routing.case_failures))
    loop = pipeline.loops["completion"]
    pipeline.start()
    try:
        wait_until(lambda: runs and not loop._running.locked(), 30, "the first scheduled run to end")
        case = site.receive("woken", seed=47)
        time.sleep(0.5)
        assert site.state(case).state == CaseState.RECEIVING, "no scheduled run before an hour"
        pipeline.wake("completion")
        wait_until(lambda: site.state(case).state == CaseState.COMPLETE, 30, "the woken stage to complete the case")
        assert len(runs) == 2
    finally:
        pipeline.stop()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_deidentification_histogram_counts_instances(site):
    from gateway.stages.context import NodeContext

    metrics = site.stages["deid"].context.metrics  # the site's stages have no node context: the process's

    def observed() -> float:
        return metrics.registry.get_sample_value("spine_gateway_deidentification_seconds_count") or 0.0

    before = observed()
    healthy = site.receive("healthy", seed=46)
    site.run_until(lambda: Study.get_by_id(healthy.id).state == CaseState.DELIVERED, "the case delivered")
    assert observed() - before == 4, "one observation per de-identified instance, as its help says"
    assert "instance" in metrics.deid_seconds._documentation
    assert metrics is NodeContext.of_process().metrics


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_full_disk_backs_a_case_off_but_never_gives_it_up(site):
    """ENOSPC is the node's trouble, not the case's: past max_failures the case still waits, then goes on."""
    case = site.receive("disk-full", seed=48)
    full: list[int] = []

    def disk_full(study):
        full.append(1)
        raise OSError(errno.ENOSPC, "No space left on device")

    stage = site.stages["deid"]
    original = stage.step
    stage.step = lambda study, now: disk_full(study) if len(full) < MAX_FAILURES + 2 else original(study, now)
    site.run_until(lambda: Study.get_by_id(case.id).stage_failures >= MAX_FAILURES + 1, "failures past the limit")
    assert site.state(case).state == CaseState.COMPLETE, "not quarantined for a full disk"
    site.run_until(lambda: Study.get_by_id(case.id).state == CaseState.DELIVERED, "space back: delivered")


def _worker_pids(node_pid: int) -> list[int]:
    """The node's de-identification worker processes (spawned: ``multiprocessing.spawn``)."""
    return child_pids(node_pid, b"spawn_main")


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_killed_deid_worker_is_replaced_and_the_next_case_goes_through(tmp_path, database_url):
    reviewer = DcmtkStoreSCP(tmp_path / "reviewer", ae_title="REVIEW_A").start()
    node = GatewayProcess(tmp_path / "gw", database_url, reviewers=[
        {"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": reviewer.port}],
        extra={"deid": {"workers": 1}, "referrals": {"wait_s": 0},
               "routing": {"stable_after_s": 0.5, "poll_s": 0.2, "echo_interval_s": 3600}})
    try:
        node.start(timeout=60)
        first = write_demo_study(tmp_path / "first", 4, seed=51, rows=32, cols=32)
        second = write_demo_study(tmp_path / "second", 4, seed=52, rows=32, cols=32)
        assert storescu("127.0.0.1", node.port, first, calling="STMARYS_PACS").returncode == 0
        wait_until(lambda: node.status()["cases_by_state"].get("delivered") == 1, 120, "the first case delivered")
        workers = _worker_pids(node.proc.pid)
        assert workers, "the node de-identifies in a worker process"
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        assert storescu("127.0.0.1", node.port, second, calling="STMARYS_PACS").returncode == 0
        wait_until(lambda: node.status()["cases_by_state"].get("delivered") == 2, 120,
                   "the second case delivered by a rebuilt pool")
        assert any(e["event"] == "worker_pool_rebuilt" for e in node.log_events())
        assert not [e for e in node.log_events() if e["event"] == "case_given_up"]
        new_workers = _worker_pids(node.proc.pid)
        assert new_workers and not set(new_workers) & set(workers)
    finally:
        node.stop()
        reviewer.stop()
