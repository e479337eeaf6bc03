"""Matching and the notes stage in-process: real database, spool and de-identification; both orders, timeouts.

Each test builds its case as the node does (originals in the spool, the real DeidStage), then runs the
NotesStage and checks the case state, the referral row, the outbound objects and the log events.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
import yaml
from structlog.testing import capture_logs

from gateway.budget import BudgetedWorkers
from gateway.demo import write_demo_study
from gateway.ops.status import collect_status
from gateway.referral.document import validate_referral_data
from gateway.referral.errors import ReferralValidationError
from gateway.referral.intake import store_referral
from gateway.referral.matching import expire_referrals
from gateway.referral.review import ApprovalRefused, approve_notes, preview_notes
from gateway.scp.receiver import AssociationCache, InstanceReceiver, ReceivedInstance
from gateway.stages.referral import NotesStage, is_approved
from gateway.storage.models import (
    AuditEvent,
    CaseState,
    OutboundObject,
    Referral,
    Source,
    Study,
    StudyIdentity,
    StudyMatchKeys,
    db,
    utcnow,
)
from referral_cases import SOURCE, SOURCE_AE, close_world, make_world, referral_document
from support.peers import wait_until


@pytest.fixture(scope="module")
def study_files(tmp_path_factory):
    return write_demo_study(tmp_path_factory.mktemp("notes-study"), 3, seed=4, rows=32, cols=32)


@pytest.fixture
def world_factory(tmp_path):
    def make(**referrals):
        world = make_world(tmp_path, **referrals)
        db.connect(reuse_if_open=True)
        return world

    yield make
    close_world()


def _store(**changes) -> Referral:
    return store_referral(validate_referral_data(referral_document(**changes)), "cli")


def _events(logs, name):
    return [entry for entry in logs if entry["event"] == name]


def _notes_objects(study):
    return {row.kind: row for row in OutboundObject.select().where(
        (OutboundObject.study == study.id) & (OutboundObject.kind != "image"))}


def test_referral_first_then_study(world_factory, study_files):
    world = world_factory(wait_s=3600)
    row = _store()
    assert row.state == "waiting" and row.study_id is None
    study = world.deidentified_case(study_files)
    with capture_logs() as logs:
        assert NotesStage.of(world.config, world.spool).run_once(utcnow()) == 1
    study = Study.get_by_id(study.id)
    assert study.state == CaseState.NOTES_ATTACHED
    assert study.urgency == "urgent"  # declared progressive deficit, detected cauda equina
    assert Referral.get_by_id(row.id).study_id == study.id
    assert [e["case"] for e in _events(logs, "referral_matched")] == [study.key]
    flags = {e["reason"] for e in _events(logs, "red_flag")}
    assert {"cauda_equina", "progressive_neurological_deficit", "cancer_history"} <= flags
    objects = _notes_objects(study)
    assert set(objects) == {"notes_sr", "notes_pdf"}
    sr = pydicom.dcmread(world.spool.absolute(objects["notes_sr"].spool_path))
    assert sr.StudyInstanceUID == study.pseudo_study_uid
    # The reason for (0040,1002), which the delivery sets in every image as it leaves.
    assert study.notes_reason.startswith("URGENT: ") and len(study.notes_reason) <= 64


def test_study_first_then_referral(world_factory, study_files):
    world = world_factory(wait_s=3600)
    study = world.deidentified_case(study_files)
    stage = NotesStage.of(world.config, world.spool)
    assert stage.run_once(utcnow()) == 1
    assert Study.get_by_id(study.id).hold_reason == "awaiting_referral"
    assert stage.run_once(utcnow()) == 0  # still waiting: no move, no new object
    assert _notes_objects(study) == {}
    with capture_logs() as logs:
        row = _store()
    assert row.state == "matched" and row.study_id == study.id
    assert [e["case"] for e in _events(logs, "referral_received")] == [study.key]
    assert stage.run_once(utcnow()) == 1
    assert Study.get_by_id(study.id).state == CaseState.NOTES_ATTACHED


def test_match_by_patient_id_and_study_date_when_accession_differs(world_factory, study_files):
    world = world_factory(wait_s=3600)
    _store(accession_number="OTHER-ACC", study_date="2026-11-19")  # wrong day: no match
    row = _store(accession_number="OTHER-ACC")
    study = world.deidentified_case(study_files)
    with capture_logs() as logs:
        NotesStage.of(world.config, world.spool).run_once(utcnow())
    assert Referral.get_by_id(row.id).study_id == study.id
    assert _events(logs, "referral_matched")[0]["reason"] == "patient_id_study_date"


def test_no_match_from_another_source(world_factory, study_files):
    world = world_factory(wait_s=3600)
    study = world.deidentified_case(study_files)
    with pytest.raises(ReferralValidationError) as refused:
        _store(source="elsewhere")
    assert refused.value.problems == ["source: not a configured source"]
    assert Referral.select().count() == 0
    NotesStage.of(world.config, world.spool).run_once(utcnow())
    assert Study.get_by_id(study.id).hold_reason == "awaiting_referral"


def test_timeout_route_uses_the_header_notes(world_factory, study_files):
    world = world_factory(wait_s=0.01, on_timeout="route")
    study = world.deidentified_case(study_files)
    with capture_logs() as logs:
        NotesStage.of(world.config, world.spool).run_once(utcnow() + dt.timedelta(seconds=1))
    study = Study.get_by_id(study.id)
    assert study.state == CaseState.NOTES_ATTACHED
    assert _events(logs, "referral_wait_timeout")[0]["reason"] == "route"
    sr = pydicom.dcmread(world.spool.absolute(_notes_objects(study)["notes_sr"].spool_path))
    texts = [item.TextValue for section in sr.ContentSequence if "ContentSequence" in section
             for item in section.ContentSequence if "TextValue" in item]
    assert any("No referral received" in text for text in texts)
    assert any("Low back pain radiating to the left leg" in text for text in texts)  # AdditionalPatientHistory


@pytest.mark.slow  # waits out the referral's hold
def test_timeout_hold(world_factory, study_files):
    world = world_factory(wait_s=0.01, on_timeout="hold")
    study = world.deidentified_case(study_files)
    stage = NotesStage.of(world.config, world.spool)
    stage.run_once(utcnow() + dt.timedelta(seconds=1))
    study = Study.get_by_id(study.id)
    assert (study.state, study.hold_reason) == (CaseState.HELD, "no_referral")
    assert stage.run_once(utcnow() + dt.timedelta(seconds=2)) == 0  # stays held
    assert _notes_objects(study) == {}
    # a late referral still releases a held case
    assert _store().study_id == study.id
    assert stage.run_once(utcnow()) == 1
    assert Study.get_by_id(study.id).state == CaseState.NOTES_ATTACHED


def test_the_wait_timeout_is_logged_once_while_the_notes_are_scrubbed_in_a_worker(world_factory, study_files):
    """The case stays where it is while a worker scrubs its notes (or while the workers start); the stage passes
    over it again and again, and says once that its referral wait is over."""
    world = world_factory(wait_s=0.01, on_timeout="route")
    study = world.deidentified_case(study_files)
    workers = BudgetedWorkers(1, 120.0, preload=["gateway.referral.notes_preload"])
    stage = NotesStage.of(world.config, world.spool, workers)
    passes, deadline = 0, time.monotonic() + 120
    try:
        with capture_logs() as logs:
            while Study.get_by_id(study.id).state != CaseState.NOTES_ATTACHED:
                assert time.monotonic() < deadline, "the worker never gave the notes back"
                stage.run_once(utcnow() + dt.timedelta(seconds=1))
                passes += 1
                time.sleep(0.05)
    finally:
        workers.shutdown()
    assert passes > 3  # the workers' start and the scrubbing took several passes
    assert [e["case"] for e in _events(logs, "referral_wait_timeout")] == [study.key]


@pytest.mark.slow  # starts the notes workers' fork server
def test_the_notes_workers_start_while_a_first_case_is_still_received(world_factory, study_files):
    """Issue 29: the workers (seconds of loading) are started when a first case arrives, not when its notes are due,
    where they took 5 s of a study sent with a 2 s stability wait; with no case on its way, none is started."""
    world = world_factory()
    workers = BudgetedWorkers(1, 120.0, preload=["gateway.referral.notes_preload"])
    stage = NotesStage.of(world.config, world.spool, workers)
    try:
        stage.run_once(utcnow())
        assert not workers.warming_started and workers.worker_pids() == []
        study = world.receive_complete(study_files)
        Study.update(state=CaseState.RECEIVING).where(Study.id == study.id).execute()
        stage.run_once(utcnow())
        assert workers.warming_started
        wait_until(lambda: workers.worker_pids(), 120, "the notes worker to start")
        assert Study.get_by_id(study.id).state == CaseState.RECEIVING  # the stage only started its workers
    finally:
        workers.shutdown()


def test_referral_expires_without_study(world_factory):
    world = world_factory(wait_s=5)
    row = _store()
    stage = NotesStage.of(world.config, world.spool)
    stage.run_once(utcnow())
    assert Referral.get_by_id(row.id).state == "waiting"
    with capture_logs() as logs:
        stage.run_once(utcnow() + dt.timedelta(seconds=6))
    assert Referral.get_by_id(row.id).state == "expired"
    assert [e["source"] for e in _events(logs, "referral_expired")] == ["st-marys"]


def test_approval_holds_until_approved(world_factory, study_files):
    world = world_factory(wait_s=3600, require_approval=True)
    _store()
    study = world.deidentified_case(study_files)
    stage = NotesStage.of(world.config, world.spool)
    stage.run_once(utcnow())
    study = Study.get_by_id(study.id)
    assert (study.state, study.hold_reason) == (CaseState.HELD, "awaiting_approval")
    assert _notes_objects(study) == {}
    preview = preview_notes(stage, study.key)
    history = dict((name, (original, scrubbed)) for name, original, scrubbed in preview.rows)["history"]
    assert "MRN0012345" in history[0] and "MRN0012345" not in history[1]
    assert not preview.approved
    approve_notes(study.key, user="operator1")
    row = Referral.get(Referral.study == study.id)
    assert row.approved_by == "operator1" and row.approved_at is not None
    assert AuditEvent.select().where(AuditEvent.action == "notes_approved").count() == 1
    assert stage.run_once(utcnow()) == 1
    assert Study.get_by_id(study.id).state == CaseState.NOTES_ATTACHED


def test_guard_hit_quarantines_the_case_naming_the_path_only(world_factory, study_files):
    world = world_factory(wait_s=3600)
    _store()
    study = world.deidentified_case(study_files)
    # A faulty de-identification left the original accession number in the evidence image: the SR copies it.
    evidence = OutboundObject.select().where((OutboundObject.study == study.id)
                                             & (OutboundObject.kind == "image")).order_by(OutboundObject.id).first()
    path = world.spool.absolute(evidence.spool_path)
    dataset = pydicom.dcmread(path)
    dataset.AccessionNumber = "A1234567"
    dataset.save_as(path, enforce_file_format=True)
    with capture_logs() as logs:
        NotesStage.of(world.config, world.spool).run_once(utcnow())
    study = Study.get_by_id(study.id)
    assert study.state == CaseState.QUARANTINED
    moved = [e for e in _events(logs, "case_state_changed") if e["state"] == CaseState.QUARANTINED]
    assert moved[0]["reason"] == "notes_leak notes_sr:AccessionNumber (id)"
    assert study.state_reason == "notes_leak notes_sr:AccessionNumber (id)"
    assert [(e["path"], e["kind"]) for e in _events(logs, "outbound_leak")] == [("notes_sr:AccessionNumber", "id")]
    audit_row = AuditEvent.get((AuditEvent.action == "quarantined") & (AuditEvent.study_key == study.key))
    assert audit_row.detail == "outbound guard hit in notes_sr:AccessionNumber (id)"
    assert "A1234567" not in repr(logs) and "A1234567" not in audit_row.detail
    assert _notes_objects(study) == {}

    with pytest.raises(ApprovalRefused, match="never approved as it stands"):
        approve_notes(study.key, user="operator1")
    refused = AuditEvent.get((AuditEvent.action == "notes_approved") & (AuditEvent.study_key == study.key))
    assert refused.outcome == "refused" and refused.detail == "by operator1; a guard hit (notes_leak) is not approved"
    assert not is_approved(study, Referral.get(Referral.study == study.id))
    assert Referral.get(Referral.study == study.id).approved_at is None
    assert Study.get_by_id(study.id).state == CaseState.QUARANTINED


def _cli(world, tmp_path, *args: str) -> subprocess.CompletedProcess:
    """``spine-gateway`` run as an operator runs it, on the world's database and spool."""
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "storage": {"database": world.config.storage.database, "spool_dir": str(world.config.storage.spool_dir),
                    "min_free_bytes": 0},
        "logging": {"file": str(tmp_path / "cli-log.jsonl")},
        "sources": [{"name": SOURCE, "ae_title": SOURCE_AE}]}))
    return subprocess.run([sys.executable, "-m", "gateway", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize(("reason", "approvable"), [
    ("notes_leak notes_pdf:EncapsulatedDocument/pdf-text (person_name)", False),
    ("identifier_leak image:OtherPatientIDsSequence[0].PatientID (id)", False),
    ("notes: time budget exceeded (30 s)", True),
])
def test_notes_approve_refuses_a_guard_hit_in_one_line(world_factory, study_files, tmp_path, reason, approvable):
    """``notes approve`` on a quarantined case: a guard hit (in the notes or in the images) is refused with one
    line and exit code 2, audited; another quarantine (the notes over their time budget) may be approved."""
    world = world_factory(wait_s=3600)
    study = world.deidentified_case(study_files)
    Study.update(state=CaseState.QUARANTINED, state_reason=reason).where(Study.id == study.id).execute()
    done = _cli(world, tmp_path, "notes", "approve", study.key)
    outcomes = [e.outcome for e in AuditEvent.select().where((AuditEvent.action == "notes_approved")
                                                              & (AuditEvent.study_key == study.key))]
    if approvable:
        assert done.returncode == 0, done.stderr
        assert outcomes == ["success"]
        return
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"spine-gateway: case {study.key}: A guard hit is never approved")
    assert outcomes == ["refused"] and not is_approved(study, None)
    assert Study.get_by_id(study.id).state == CaseState.QUARANTINED


def test_a_deep_guard_hit_is_kept_whole_with_its_kind(world_factory, study_files):
    world = world_factory(wait_s=3600)
    _store()
    study = world.deidentified_case(study_files)
    identity = StudyIdentity.get(StudyIdentity.study == study.id)
    # The workers' record of the images' text holds the patient's ID deep in a sequence (as a faulty
    # de-identification would): the final check finds it, and the whole path goes into the reason.
    deep = ("RequestAttributesSequence[0].ScheduledProtocolCodeSequence[0].ProtocolContextSequence[0]"
            ".ContentItemModifierSequence[0].TextValue")
    StudyIdentity.update(image_text=json.dumps({f"ref {identity.patient_id}": deep})).where(
        StudyIdentity.id == identity.id).execute()
    NotesStage.of(world.config, world.spool).run_once(utcnow())
    study = Study.get_by_id(study.id)
    assert study.state == CaseState.QUARANTINED
    assert study.state_reason == f"notes_leak image:{deep} (id)" and len(study.state_reason) > 64
    audit_row = AuditEvent.get((AuditEvent.action == "quarantined") & (AuditEvent.study_key == study.key))
    assert audit_row.detail == f"outbound guard hit in image:{deep} (id)"
    shown = [row for row in collect_status(world.config.storage.spool_dir)["needs_attention"]
             if row["case"] == study.key]
    assert shown[0]["reason"] == study.state_reason
    assert identity.patient_id not in json.dumps(shown)


def _receive(world, files: list[Path]) -> Study:
    """Receive ``files`` through the real InstanceReceiver, as the C-STORE handler does (one association)."""
    receiver = InstanceReceiver(world.spool, {SOURCE_AE: Source.get(Source.name == SOURCE).id}, "test")
    cache = AssociationCache()
    for path in files:
        data = Path(path).read_bytes()
        meta_end = 144 + int.from_bytes(data[140:144], "little")  # preamble, DICM, (0002,0000) and its group
        header = pydicom.dcmread(path, stop_before_pixels=True)
        result = receiver.receive(ReceivedInstance(
            meta=data[:meta_end], dataset=data[meta_end:], context_sop_class=header.SOPClassUID,
            affected_sop_instance=header.SOPInstanceUID, transfer_syntax=header.file_meta.TransferSyntaxUID,
            calling_ae=SOURCE_AE), cache)
    db.connect(reuse_if_open=True)
    return Study.get(Study.key == result.study_key)


def test_a_waiting_referral_is_matched_when_its_study_arrives(world_factory, study_files):
    world = world_factory(wait_s=3600)
    row = _store()
    with capture_logs() as logs:
        study = _receive(world, study_files)
        # matched in the receiving side's matching thread, once the first instance is answered
        wait_until(lambda: Referral.get_by_id(row.id).study_id == study.id, 20, "the match after the answer")
    assert study.state == CaseState.RECEIVING
    keys = StudyMatchKeys.get(StudyMatchKeys.study == study.id)
    assert keys.accession_number == "A1234567"
    assert [(e["case"], e["reason"]) for e in _events(logs, "referral_matched")] == [(study.key, "accession_number")]
    assert "A1234567" not in repr(logs)


def test_a_referral_finds_a_study_still_being_received(world_factory, study_files):
    world = world_factory(wait_s=3600)
    study = _receive(world, study_files)
    row = _store()
    assert row.state == "matched" and row.study_id == study.id


def test_a_referral_never_expires_while_a_study_with_its_accession_is_in_the_node(world_factory, study_files):
    world_factory(wait_s=5)
    other = _store(accession_number="NOT-HERE")
    kept = _store()
    # The study arrived, but the match at arrival did not happen (as if it failed): only the keys are there.
    study = Study.create(study_uid="1.2.826.0.1.3680043.2.1143.777", source=Source.get(Source.name == SOURCE),
                         calling_ae=SOURCE_AE)
    StudyMatchKeys.create(study=study.id, accession_number="A1234567", patient_id="nobody", study_date="")
    later = utcnow() + dt.timedelta(seconds=60)
    assert expire_referrals(later, 5) == 1
    assert Referral.get_by_id(other.id).state == "expired"
    assert Referral.get_by_id(kept.id).state == "waiting"
    Study.update(state=CaseState.DELIVERED).where(Study.id == study.id).execute()  # past its notes: no longer
    assert expire_referrals(later, 5) == 1
    assert Referral.get_by_id(kept.id).state == "expired"


def test_notes_approve_refuses_a_case_past_its_notes(world_factory, study_files, tmp_path):
    """A case with a reviewer or reported has no notes to approve: refused in one line, audited as refused, and
    no ``notes_approved`` success is written (issue 27: a report_failed case was 'approved')."""
    world = world_factory(wait_s=3600)
    study = world.deidentified_case(study_files)
    Study.update(state=CaseState.REPORT_FAILED).where(Study.id == study.id).execute()
    done = _cli(world, tmp_path, "notes", "approve", study.key)
    assert done.returncode == 2 and "nothing to approve: the case is report_failed" in done.stderr
    outcomes = [e.outcome for e in AuditEvent.select().where((AuditEvent.action == "notes_approved")
                                                              & (AuditEvent.study_key == study.key))]
    assert outcomes == ["refused"]


def test_a_node_that_lost_the_case_to_another_leaves_that_nodes_notes_alone(world_factory, study_files):
    """Two nodes build a case's notes (the first one's lease ran out under load, the second took the case over):
    the one that comes second finds the case moved and leaves the first one's pair as it is, rows and files; it
    neither replaces them nor adds a second pair (seen: 16 objects at the reviewer for a 14-object case)."""
    world = world_factory(wait_s=0, on_timeout="route")
    study = world.deidentified_case(study_files)
    stage = NotesStage.of(world.config, world.spool)
    second_node_view = Study.get_by_id(study.id)  # selected while DEIDENTIFIED
    assert stage.run_once(utcnow() + dt.timedelta(seconds=1)) == 1
    first = {kind: (row.sop_instance_uid, row.spool_path) for kind, row in _notes_objects(study).items()}
    assert set(first) == {"notes_sr", "notes_pdf"}
    assert stage._attach(second_node_view, None) == 0
    assert {kind: (row.sop_instance_uid, row.spool_path) for kind, row in _notes_objects(study).items()} == first
    assert all(world.spool.absolute(path).exists() for _, path in first.values())
    assert Study.get_by_id(study.id).state == CaseState.NOTES_ATTACHED
