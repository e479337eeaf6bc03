"""What the node holds goes into the scrubber and the outbound guard; the guard checks what leaves, as it leaves.

Through the real stages in process (SQLite, the spool, DeidStage then NotesStage): a study whose header holds a
maiden name, the mother's birth name, an address, a phone number, another patient ID and a department, and a
referral whose text mentions them all. Where the scrubber is made to miss (fed the text as it came), the
outbound guard must quarantine the case and name where, never what.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import replace

import pydicom
import pytest
from pypdf import PdfReader

import gateway.referral.notes_work as notes_work
import gateway.stages.referral as notes_stage
from gateway.deid.guard import searchable_values
from gateway.demo import DemoPatient
from gateway.privacy.identifiers import identifier_set_for_study
from gateway.referral.document import Urgency, validate_referral_data
from gateway.referral.intake import store_referral
from gateway.referral.scrub import KnownIdentifiers, ScrubbedNotes, scrub_referral
from gateway.stages.deid import DeidStage
from gateway.stages.referral import NotesStage
from gateway.storage.models import (
    AuditEvent,
    CaseState,
    Instance,
    InstanceState,
    OutboundObject,
    Series,
    Study,
    StudyIdentity,
    utcnow,
)
from privacy_cases import HEADER, MENTIONS, PATIENT, referral_document, write_held_study
from referral_cases import SECRET, close_world, make_world


@pytest.fixture
def world(tmp_path):
    yield make_world(tmp_path)
    close_world()


def _case(world, tmp_path, document: dict, **study) -> Study:
    files = write_held_study(tmp_path / "study", **study)
    case = world.deidentified_case(files)
    store_referral(validate_referral_data(document), "cli")
    return case


def _run(world, case: Study) -> Study:
    NotesStage.of(world.config, world.spool).run_once(utcnow())
    return Study.get_by_id(case.id)


def _delivered_texts(world, case: Study) -> dict[str, str]:
    """Every outbound object's text as the reviewer would read it: tags, SR content, PDF text."""
    texts: dict[str, str] = {}
    for row in OutboundObject.select().where(OutboundObject.study == case.id):
        dataset = pydicom.dcmread(world.spool.absolute(row.spool_path))
        strings = [str(e.value) for e in dataset.iterall() if e.VR not in ("SQ", "OB", "OW", "UN")]
        if row.kind == "notes_pdf":
            document = bytes(dataset.EncapsulatedDocument)
            strings += [page.extract_text() for page in PdfReader(io.BytesIO(document)).pages]
        texts[f"{row.kind}:{row.sop_instance_uid}"] = "\n".join(strings)
    return texts


def _quarantine_detail(case: Study) -> str:
    return AuditEvent.select().where((AuditEvent.study_key == case.key)
                                     & (AuditEvent.action == "quarantined")).get().detail


def test_the_header_identity_keeps_every_identifying_value_of_the_originals(world, tmp_path):
    case = _case(world, tmp_path, referral_document())
    held = json.loads(StudyIdentity.get(StudyIdentity.study == case.id).header_values)
    for keyword, value in HEADER.items():
        assert held[keyword][0] == value, keyword
    assert held["OtherPatientIDs"] == ["NHS9434765919", "OTH-55120"]  # the sequence's ID too
    identifiers = identifier_set_for_study(case)
    assert "Thrapston" in identifiers.towns and "14 Wychwood Crescent" in identifiers.streets
    assert "NN14 4QT" in identifiers.postcodes and "01832 736415" in identifiers.phones
    assert "Brackenfield Spinal Unit" in identifiers.organisations
    assert {"st-marys", "STMARYS_PACS"} <= set(identifiers.sources)


def test_held_identifiers_written_in_the_notes_are_scrubbed_from_everything_delivered(world, tmp_path):
    case = _run(world, _case(world, tmp_path, referral_document()))
    assert case.state == CaseState.NOTES_ATTACHED, case.hold_reason
    texts = _delivered_texts(world, case)
    assert any(kind.startswith("notes_pdf") for kind in texts) and any(kind.startswith("notes_sr") for kind in texts)
    for kind, text in texts.items():
        found = [what for what, value in MENTIONS.items() if value.lower() in text.lower()]
        assert found == [], f"{kind} carries the {found}"
    sr_text = next(text for kind, text in texts.items() if kind.startswith("notes_sr"))
    assert "EHL 4/5" in sr_text and "L4-L5" in sr_text  # the clinical content is still there


def _scrubber_told_nothing(monkeypatch) -> None:
    """Fault injection: the notes carry the referral's history as written (the scrubber's named-entity
    layer would otherwise remove the held identifiers without being told them)."""
    def unscrubbed(referral, known, date_offset_days, **options):
        notes = scrub_referral(referral, date_offset_days, known=KnownIdentifiers(), **options)
        return replace(notes, history=referral.clinical.history)
    monkeypatch.setattr(notes_work, "scrub_referral_notes", unscrubbed)


@pytest.mark.parametrize("what", ["maiden name", "mother's birth name", "street", "town",
                                  "institution department", "performing physician"])
def test_a_held_identifier_the_scrubber_missed_is_caught_in_the_sr_and_the_pdf(world, tmp_path, what):
    """Each held identifier alone in the notes, unscrubbed: both the SR and the PDF are caught."""
    text = f"Low back pain for 10 weeks. Note: {MENTIONS[what]}."
    case = _case(world, tmp_path, referral_document(clinical={"history": text}))
    stage = NotesStage.of(world.config, world.spool)
    document = validate_referral_data(referral_document(clinical={"history": text}))
    notes = ScrubbedNotes(urgency=Urgency.ROUTINE, history=text)  # as if the scrubber had missed it
    assert MENTIONS[what] in notes.history
    identifiers = stage.identifiers_for(case, document)
    evidence = stage._evidence(list(OutboundObject.select().where(OutboundObject.study == case.id)))
    sr = notes_work.NotesSRBuilder(evidence, notes).build()
    pdf = notes_work.NotesPDFBuilder(evidence, notes).build()
    sr_paths = {leak.path for leak in notes_work.find_leaks(sr, identifiers)}
    pdf_paths = {leak.path for leak in notes_work.find_leaks(pdf, identifiers)}
    assert any(path.startswith("ContentSequence[") and path.endswith("TextValue") for path in sr_paths), sr_paths
    assert pdf_paths == {"EncapsulatedDocument/pdf-text"}


def test_unscrubbed_notes_quarantine_the_case_naming_the_path_not_the_value(world, tmp_path, monkeypatch):
    _scrubber_told_nothing(monkeypatch)
    case = _run(world, _case(world, tmp_path, referral_document()))
    assert case.state == CaseState.QUARANTINED
    detail = _quarantine_detail(case)
    assert "notes_sr:ContentSequence[" in detail
    assert not any(value.lower() in detail.lower() for value in MENTIONS.values())


def test_a_name_only_in_the_red_flag_table_of_the_pdf_is_caught(world, tmp_path, monkeypatch):
    """The red flag's trigger phrase is printed in the PDF's table only (the SR codes the flag)."""
    scrubbed = notes_work.scrub_referral_notes

    def phrase_unscrubbed(referral, known, date_offset_days, **options):
        notes = scrubbed(referral, known, date_offset_days, **options)
        return replace(notes, flags=tuple(replace(f, phrase="pain at night since Thrapston") for f in notes.flags))
    monkeypatch.setattr(notes_work, "scrub_referral_notes", phrase_unscrubbed)
    document = referral_document()
    document["clinical"]["red_flags"] = ["night_or_rest_pain"]
    case = _run(world, _case(world, tmp_path, document))
    assert case.state == CaseState.QUARANTINED
    assert "notes_pdf:EncapsulatedDocument/pdf-text" in _quarantine_detail(case)


def test_the_reason_the_images_will_carry_is_guarded(world, tmp_path, monkeypatch):
    """(0040,1002) is set in every image as it leaves (by the delivery): the notes stage checks it first."""
    monkeypatch.setattr(notes_stage, "short_reason", lambda notes: "Query compression, Thrapston clinic")
    case = _run(world, _case(world, tmp_path, referral_document()))
    assert case.state == CaseState.QUARANTINED
    assert "image:ReasonForTheRequestedProcedure" in _quarantine_detail(case)


@pytest.mark.parametrize("recorded", [True, False], ids=["image text recorded", "image files read back"])
def test_a_referral_only_identifier_in_an_images_retained_text_quarantines_the_case(world, tmp_path, recorded):
    """The workers check each image against its own header only; a name only the referral holds, left in a
    retained attribute, is found by the notes stage's final check: in the text the workers recorded from
    their encoded output, or (a case de-identified before migration 6) in the image files read back."""
    files = write_held_study(tmp_path / "study", header={**HEADER, "SequenceName": "tse Trowbridge"})
    case = world.deidentified_case(files)
    identity = StudyIdentity.get(StudyIdentity.study == case.id)
    assert "tse Trowbridge" in json.loads(identity.image_text), "the retained text is recorded"
    if not recorded:
        StudyIdentity.update(image_text=None).where(StudyIdentity.id == identity.id).execute()
    store_referral(validate_referral_data(referral_document(referrer={"name": "Dr Imelda Trowbridge"})), "cli")
    case = _run(world, case)
    assert case.state == CaseState.QUARANTINED
    assert _quarantine_detail(case) == "outbound guard hit in image:SequenceName (clinician name)"
    assert case.notes_reason is None, "nothing was recorded for the delivery"


def _receive_late(world, study: Study, path) -> Instance:
    """``path`` stored as the SCP would, for a case that already moved on (a late instance)."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    header = pydicom.dcmread(path, stop_before_pixels=True)
    series, _ = Series.get_or_create(series_uid=header.SeriesInstanceUID,
                                     defaults={"study": study, "modality": header.Modality})
    return Instance.create(study=study, series=series, sop_instance_uid=header.SOPInstanceUID,
                           sop_class_uid=header.SOPClassUID, transfer_syntax=header.file_meta.TransferSyntaxUID,
                           size=len(data), sha256=digest,
                           spool_path=world.spool.relative(world.spool.store(data, digest)),
                           calling_ae=study.calling_ae)


def test_a_late_instance_is_checked_against_the_whole_case_too(world, tmp_path):
    """An instance arriving after the notes were attached is checked against the referral's identifiers as
    well (the node gives the de-identification stage the notes stage's ``case_identifiers``)."""
    files = write_held_study(tmp_path / "study", 4)
    for path in files[2:]:
        dataset = pydicom.dcmread(path)
        dataset.SequenceName = "tse Trowbridge" if path == files[2] else "tse"
        dataset.save_as(path, enforce_file_format=True)
    case = world.deidentified_case(files[:2])
    store_referral(validate_referral_data(referral_document(referrer={"name": "Dr Imelda Trowbridge"})), "cli")
    assert _run(world, case).state == CaseState.NOTES_ATTACHED
    leaking, clean = (_receive_late(world, case, path) for path in files[2:])
    notes = NotesStage.of(world.config, world.spool)
    deid = DeidStage(world.config.deid.options(), SECRET, world.spool, case_identifiers=notes.case_identifiers)
    deid.step(Study.get_by_id(case.id), utcnow())
    assert Instance.get_by_id(leaking.id).state == InstanceState.QUARANTINED
    assert Instance.get_by_id(clean.id).state == InstanceState.DEIDENTIFIED
    images = OutboundObject.select().where((OutboundObject.study == case.id) & (OutboundObject.kind == "image"))
    assert images.count() == 3
    assert Study.get_by_id(case.id).state == CaseState.NOTES_ATTACHED, "the rest of the case goes on"


def test_the_image_text_is_recorded_once_per_value_with_its_path(world, tmp_path):
    case = _case(world, tmp_path, referral_document())
    recorded = json.loads(StudyIdentity.get(StudyIdentity.study == case.id).image_text)
    images = OutboundObject.select().where((OutboundObject.study == case.id) & (OutboundObject.kind == "image"))
    assert images.count() == 2
    for image in images:
        dataset = pydicom.dcmread(world.spool.absolute(image.spool_path), stop_before_pixels=True)
        assert {text for _, text in searchable_values(dataset)} <= set(recorded)  # the file as it lies
        assert recorded[str(dataset.SOPInstanceUID)] == "file_meta.MediaStorageSOPInstanceUID"  # its first path
    assert recorded["MR"] == "Modality"
    assert recorded["1.2.840.10008.1.2.1"].startswith("file_meta.")


FALSE_ALARMS = {
    # surname equal to a word of a red flag label ("No improvement after 6 weeks")
    "weeks": (DemoPatient(name="WEEKS^THOMAS", patient_id="KGH0048213", accession="ACC7730914",
                          referring="ASHDOWN^PETER"), {"name": "Weeks^Thomas"}, {"name": "Dr Peter Ashdown"},
              "Pain for 12 weeks, no improvement after 6 weeks of physiotherapy. Worse at night."),
    # surname equal to a section title ("Prior imaging", "Prior treatment")
    "prior": (DemoPatient(name="PRIOR^JOHN", patient_id="KGH0048213", accession="ACC7730914",
                          referring="ASHDOWN^PETER"), {"name": "Prior^John"}, {"name": "Dr Peter Ashdown"},
              "Prior treatment: physiotherapy. Pain for 10 weeks."),
    # the referrer's title
    "miss": (PATIENT, {"name": "Hargreaves^Eleanor"}, {"name": "Miss Sarah Long"},
             "She did not miss work until the long-standing pain got worse; no red flags missed."),
    "professor": (PATIENT, {"name": "Hargreaves^Eleanor"}, {"name": "Professor Anna Hand"},
                  "Professor's clinic letter: hand weakness on the left, grip power 4/5."),
}


@pytest.mark.parametrize("case_name", sorted(FALSE_ALARMS))
def test_ordinary_words_equal_to_a_name_do_not_quarantine(world, tmp_path, case_name):
    patient, patient_fields, referrer, history = FALSE_ALARMS[case_name]
    document = referral_document(
        patient={**referral_document()["patient"], **patient_fields}, referrer=referrer,
        clinical={"history": history, "red_flags": ["no_improvement_6_weeks", "night_or_rest_pain"],
                  "prior_imaging": "X-ray: normal.", "prior_treatment": "Physiotherapy for 6 weeks."})
    case = _run(world, _case(world, tmp_path, document, patient=patient, header={}))
    assert case.state == CaseState.NOTES_ATTACHED, _quarantine_detail(case)


def test_under_retain_institution_identity_the_institution_kept_in_the_images_is_not_a_leak(world, tmp_path):
    deid = world.config.deid.model_copy(update={"retain_institution_id": True})
    world.config = world.config.model_copy(update={"deid": deid})
    case = _run(world, _case(world, tmp_path, referral_document()))
    assert case.state == CaseState.NOTES_ATTACHED, case.hold_reason
    image = OutboundObject.select().where((OutboundObject.study == case.id)
                                          & (OutboundObject.kind == "image")).first()
    kept = pydicom.dcmread(world.spool.absolute(image.spool_path), stop_before_pixels=True)
    assert kept.InstitutionName == PATIENT.institution and "Kettering" in kept.InstitutionAddress
