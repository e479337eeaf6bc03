"""Re-identification against the real de-identifier: a study de-identified by ``Deidentifier``, a report built
on the pseudonymous images, re-identified from the mapping the de-identifier returned; DCMTK reads the result."""

from __future__ import annotations

import subprocess

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.deid.engine import Deidentifier, PatientContext
from gateway.deid.options import DeidOptions
from gateway.demo import DemoPatient, write_demo_study
from gateway.reports import codes
from gateway.reports.builder import ImageRef, KeyObjectSelectionBuilder, ReportContent, ReportFinding, ReportSRBuilder
from gateway.reports.errors import ReidentificationError
from gateway.reports.reidentify import CaseMapping, Reidentifier, TextRestorer, shift_date, walk

SECRET = b"0123456789abcdef0123456789abcdef"
PATIENT = DemoPatient()
CASE_KEY = "a1b2c3d4e5f6"


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """(original datasets, de-identified datasets, CaseMapping) of a 4-image study."""
    paths = write_demo_study(tmp_path_factory.mktemp("reid"), 4, seed=5, rows=32, cols=32)
    originals = [pydicom.dcmread(p) for p in paths]
    deidentifier = Deidentifier(DeidOptions(), SECRET)
    results = [deidentifier.deidentify(ds, PatientContext("st-marys", CASE_KEY)) for ds in originals]
    uids = {pseudo: original for r in results for original, pseudo in r.mapping.uids.items()}
    first = originals[0]
    mapping = CaseMapping(
        case_key=CASE_KEY, study_uid=str(first.StudyInstanceUID),
        pseudo_study_uid=str(results[0].dataset.StudyInstanceUID), patient_name=str(first.PatientName),
        patient_id=first.PatientID, birth_date=first.PatientBirthDate, sex=first.PatientSex,
        accession_number=first.AccessionNumber, study_date=first.StudyDate, study_time=first.StudyTime,
        study_id=first.StudyID, referring_physician=str(first.ReferringPhysicianName),
        study_description=first.get("StudyDescription", ""), pseudo_patient_id=results[0].mapping.patient_id,
        pseudo_accession_number=results[0].mapping.accession or "",
        date_offset_days=results[0].mapping.date_offset_days or 0, uids=uids)
    return originals, [r.dataset for r in results], mapping


def _content(images, text="L4-L5 disc extrusion.") -> ReportContent:
    refs = tuple(ImageRef(str(d.SOPClassUID), str(d.SOPInstanceUID), str(d.SeriesInstanceUID)) for d in images)
    return ReportContent(title=codes.TITLES["mri-spine"], findings=(ReportFinding(text, refs[:2]),),
                         impressions=("Disc extrusion.",), recommendations=("Surgical opinion.",))


def _dsrdump(ds, path) -> subprocess.CompletedProcess:
    ds.save_as(path, enforce_file_format=True)
    return subprocess.run(["/usr/bin/dsrdump", str(path)], capture_output=True, text=True, errors="replace")


@pytest.mark.parametrize("sr_class", sorted(codes.SR_CLASS_BY_NAME.values()))
def test_reports_reidentified_sr_has_originals_and_reads_cleanly(case, tmp_path, sr_class):
    originals, pseudonymous, mapping = case
    assert mapping.date_offset_days != 0, "the profile shifts dates, so shifting back is tested"
    shifted_study_date = str(pseudonymous[0].StudyDate)
    text = (f"SPINEGW^{CASE_KEY} ({mapping.pseudo_patient_id}, {mapping.pseudo_accession_number}) "
            f"scanned {shifted_study_date[:4]}-{shifted_study_date[4:6]}-{shifted_study_date[6:]}.")
    report = ReportSRBuilder(pseudonymous[0], _content(pseudonymous, text), sop_class_uid=sr_class).build()
    assert report.PatientIdentityRemoved == "YES"
    result = Reidentifier(mapping, SECRET).reidentify(report)

    assert (result.PatientID, str(result.PatientName)) == (PATIENT.patient_id, PATIENT.name)
    assert (result.PatientBirthDate, result.PatientSex) == (PATIENT.birth_date, PATIENT.sex)
    assert result.StudyInstanceUID == originals[0].StudyInstanceUID
    assert (result.AccessionNumber, result.StudyDate) == (PATIENT.accession, PATIENT.study_date)
    assert str(result.ReferringPhysicianName) == PATIENT.referring
    for keyword in ("PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
                    "LongitudinalTemporalInformationModified"):
        assert keyword not in result
    original_uids = {str(d.SOPInstanceUID) for d in originals}
    (evidence,) = result.CurrentRequestedProcedureEvidenceSequence
    assert evidence.StudyInstanceUID == originals[0].StudyInstanceUID
    assert {r.ReferencedSOPInstanceUID for s in evidence.ReferencedSeriesSequence
            for r in s.ReferencedSOPSequence} <= original_uids
    finding = next(i for i in result.ContentSequence if i.ValueType == "CONTAINER"
                   and i.ConceptNameCodeSequence[0].CodeValue == codes.FINDINGS.value).ContentSequence[0]
    assert {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in finding.ContentSequence} <= original_uids
    expected = (f"JANE MARIE DOE ({PATIENT.patient_id}, {PATIENT.accession}) scanned "
                f"{PATIENT.study_date[:4]}-{PATIENT.study_date[4:6]}-{PATIENT.study_date[6:]}.")
    assert finding.TextValue == expected
    assert result.SOPInstanceUID.startswith("2.25.") and result.SOPInstanceUID != report.SOPInstanceUID
    assert result.SeriesInstanceUID.startswith("2.25.") and result.SeriesInstanceUID != report.SeriesInstanceUID
    assert result.file_meta.MediaStorageSOPInstanceUID == result.SOPInstanceUID
    assert report.PatientID == mapping.pseudo_patient_id, "the reviewer's report is left unchanged"
    dump = _dsrdump(result, tmp_path / "home.dcm")
    assert dump.returncode == 0 and not [ln for ln in dump.stderr.splitlines() if ln[:2] in ("E:", "W:")], dump.stderr


def test_reports_new_uids_are_derived_and_key_objects_follow_their_report(case):
    _, pseudonymous, mapping = case
    sr = ReportSRBuilder(pseudonymous[0], _content(pseudonymous)).build()
    ko = KeyObjectSelectionBuilder(pseudonymous[0], _content(pseudonymous)).build()
    ko.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
        .ReferencedSOPInstanceUID = sr.SOPInstanceUID  # the KO also points at the reviewer's SR
    first = Reidentifier(mapping, SECRET).reidentify(sr)
    again = Reidentifier(mapping, SECRET).reidentify(sr)
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (again.SOPInstanceUID, again.SeriesInstanceUID)
    other_key = Reidentifier(mapping, b"another secret of 32 bytes......").reidentify(sr)
    assert other_key.SOPInstanceUID != first.SOPInstanceUID
    reidentifier = Reidentifier(mapping, SECRET, {str(sr.SOPInstanceUID): str(first.SOPInstanceUID)})
    ko_home = reidentifier.reidentify(ko)
    refs = [r.ReferencedSOPInstanceUID for s in ko_home.CurrentRequestedProcedureEvidenceSequence[0]
            .ReferencedSeriesSequence for r in s.ReferencedSOPSequence]
    assert str(first.SOPInstanceUID) in refs


def test_reports_refuses_what_is_not_this_cases_report(case):
    originals, pseudonymous, mapping = case
    reidentifier = Reidentifier(mapping, SECRET)
    with pytest.raises(ReidentificationError, match="SOPClassUID"):
        reidentifier.reidentify(pseudonymous[0])  # an image
    other = ReportSRBuilder(pseudonymous[0], _content(pseudonymous)).build()
    other.StudyInstanceUID = pydicom.uid.generate_uid()
    with pytest.raises(ReidentificationError, match="StudyInstanceUID"):
        reidentifier.reidentify(other)


def test_reports_pseudonymous_uid_left_behind_is_caught(case):
    """The last check before a report may go home: no pseudonymous UID or marker anywhere in it."""
    _, pseudonymous, mapping = case
    report = ReportSRBuilder(pseudonymous[0], _content(pseudonymous)).build()
    guard = Reidentifier(mapping, SECRET)
    with pytest.raises(ReidentificationError, match="pseudonym"):
        guard._check_no_pseudonym_left(report)  # the built report is still all pseudonyms
    home = guard.reidentify(report)
    home.ContentSequence[-1].ContentSequence[0].TextValue = f"see {mapping.pseudo_patient_id}"
    with pytest.raises(ReidentificationError, match=r"ContentSequence\[\d+\]\.ContentSequence\[0\]\.TextValue"):
        guard._check_no_pseudonym_left(home)


def test_reports_dates_shift_back_by_the_offset():
    assert shift_date("20261120", -30) == "20261021"
    assert shift_date(shift_date("20000229", 400), -400) == "20000229"
    assert shift_date("2026", 3) is None


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_reports_text_restorer_leaves_unrelated_text_alone(text):
    mapping = CaseMapping(case_key="ffffffffffff", study_uid="1.2.3", pseudo_study_uid="2.25.1",
                          patient_name="Doe^Jane", patient_id="MRN1", pseudo_patient_id="SPGWFFFFFFFFFFFFFFFF",
                          pseudo_accession_number="AFFFFFFFFFFFFFFF", study_date="20200101", date_offset_days=-7)
    restorer = TextRestorer(mapping)
    if not any(marker in text for marker in ("ffffffffffff", "SPGWFFFF", "AFFFF", "20191225", "2019-12-25",
                                             "25.12.2019", "25/12/2019")):
        assert restorer.restore(text) == text
    if "SPINEGW" not in text:  # the text may itself hold the word, which is not a pseudonym to restore
        assert "SPINEGW" not in restorer.restore(text + " SPINEGW^ffffffffffff")


def test_reports_walk_visits_nested_items(case):
    _, pseudonymous, _ = case
    report = ReportSRBuilder(pseudonymous[0], _content(pseudonymous)).build()
    paths = [path for path, _, _ in walk(report)]
    assert any(p.startswith("ContentSequence[") and p.endswith("ReferencedSOPInstanceUID") for p in paths)


def test_reports_what_was_replaced_is_kept_for_the_hospital_in_original_attributes(case):
    """IHE Import Reconciliation: the home report's Original Attributes Sequence holds the pseudonymous values
    its top level carried, with the reason COERCE; nothing else of the report holds them."""
    _originals, pseudonymous, mapping = case
    report = ReportSRBuilder(pseudonymous[0], _content(pseudonymous)).build()
    previous = report.get("OriginalAttributesSequence", [])
    result = Reidentifier(mapping, SECRET).reidentify(report)

    item = result.OriginalAttributesSequence[-1]
    assert len(result.OriginalAttributesSequence) == len(previous) + 1
    assert (item.ReasonForTheAttributeModification, item.ModifyingSystem) == ("COERCE", "spine-gateway")
    assert len(item.AttributeModificationDateTime) >= 14
    (replaced,) = item.ModifiedAttributesSequence
    assert (replaced.PatientID, str(replaced.PatientName)) == (mapping.pseudo_patient_id, f"SPINEGW^{CASE_KEY}")
    assert replaced.StudyInstanceUID == mapping.pseudo_study_uid
    assert (replaced.SOPInstanceUID, replaced.SeriesInstanceUID) == (report.SOPInstanceUID, report.SeriesInstanceUID)
    assert replaced.AccessionNumber == mapping.pseudo_accession_number
    assert "PatientSex" not in replaced, "a value the gateway did not change is not listed"
