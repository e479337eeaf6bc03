"""Matching and the notes stage in-process: real database, spool and de-identification; both orders, timeouts.

Each test builds its case as the node does (originals in the spool, the real DeidStage), then runs the
NotesStage and checks the case state, the referral row, the outbound objects and the log events.
"""

from __future__ import annotations

import datetime as dt

import pydicom
import pytest
from structlog.testing import capture_logs

from gateway.demo import write_demo_study
from gateway.models import AuditEvent, CaseState, OutboundObject, Referral, Study, db, utcnow
from gateway.referral.document import validate_referral_data
from gateway.referral.errors import ReferralValidationError
from gateway.referral.intake import store_referral
from gateway.referral.review import approve_notes, preview_notes
from gateway.referral.stage import NotesStage
from referral_cases import close_world, make_world, referral_document


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
        assert NotesStage(world.config, world.spool).run_once(utcnow()) == 1
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
    stage = NotesStage(world.config, world.spool)
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
        NotesStage(world.config, world.spool).run_once(utcnow())
    assert Referral.get_by_id(row.id).study_id == study.id
    assert _events(logs, "referral_matched")[0]["reason"] == "patient_id_study_date"


def test_no_match_from_another_source(world_factory, study_files):
    world = world_factory(wait_s=3600)
    study = world.deidentified_case(study_files)
    with pytest.raises(ReferralValidationError) as refused:
        _store(source="elsewhere")
    assert refused.value.problems == ["source: not a configured source"]
    assert Referral.select().count() == 0
    NotesStage(world.config, world.spool).run_once(utcnow())
    assert Study.get_by_id(study.id).hold_reason == "awaiting_referral"


def test_timeout_route_uses_the_header_notes(world_factory, study_files):
    world = world_factory(wait_s=0.01, on_timeout="route")
    study = world.deidentified_case(study_files)
    with capture_logs() as logs:
        NotesStage(world.config, world.spool).run_once(utcnow() + dt.timedelta(seconds=1))
    study = Study.get_by_id(study.id)
    assert study.state == CaseState.NOTES_ATTACHED
    assert _events(logs, "referral_wait_timeout")[0]["reason"] == "route"
    sr = pydicom.dcmread(world.spool.absolute(_notes_objects(study)["notes_sr"].spool_path))
    texts = [item.TextValue for section in sr.ContentSequence if "ContentSequence" in section
             for item in section.ContentSequence if "TextValue" in item]
    assert any("No referral received" in text for text in texts)
    assert any("Low back pain radiating to the left leg" in text for text in texts)  # AdditionalPatientHistory


def test_timeout_hold(world_factory, study_files):
    world = world_factory(wait_s=0.01, on_timeout="hold")
    study = world.deidentified_case(study_files)
    stage = NotesStage(world.config, world.spool)
    stage.run_once(utcnow() + dt.timedelta(seconds=1))
    study = Study.get_by_id(study.id)
    assert (study.state, study.hold_reason) == (CaseState.HELD, "no_referral")
    assert stage.run_once(utcnow() + dt.timedelta(seconds=2)) == 0  # stays held
    assert _notes_objects(study) == {}
    # a late referral still releases a held case
    assert _store().study_id == study.id
    assert stage.run_once(utcnow()) == 1
    assert Study.get_by_id(study.id).state == CaseState.NOTES_ATTACHED


def test_referral_expires_without_study(world_factory):
    world = world_factory(wait_s=5)
    row = _store()
    stage = NotesStage(world.config, world.spool)
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
    stage = NotesStage(world.config, world.spool)
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
        NotesStage(world.config, world.spool).run_once(utcnow())
    study = Study.get_by_id(study.id)
    assert study.state == CaseState.QUARANTINED
    moved = [e for e in _events(logs, "case_state_changed") if e["state"] == CaseState.QUARANTINED]
    assert moved[0]["reason"] == "notes_leak notes_sr:AccessionNumber"
    assert "A1234567" not in repr(logs)
    assert _notes_objects(study) == {}
