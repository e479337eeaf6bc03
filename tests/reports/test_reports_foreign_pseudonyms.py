"""A reviewer's report that quotes another case's pseudonyms never goes home (issue 28).

One site (SQLite): the hospital's study is delivered to dr-a (case A); a second patient's study arrives from
the same hospital and is de-identified (case B, held for its referral). dr-a then sends reports for case A by
DCMTK's storescu: one quoting case B's pseudonymous patient ID in its text, one citing an image of case B
as evidence. Both are refused at re-identification with the attribute path and the kind of pseudonym;
nothing reaches the hospital. A clean report afterwards goes home once.
"""

from __future__ import annotations

import dataclasses
import sqlite3

import pytest

from gateway.demo import DemoPatient, write_demo_study
from gateway.storage.models import OutboundObject, Study, StudyIdentity
from report_peers import hospital_instances, reviewer_images, reviewer_sr, start_site
from support.peers import storescu, wait_until

OTHER = dataclasses.replace(DemoPatient(), name="ROE^RICHARD", patient_id="MRN0099881", accession="A7654321",
                            birth_date="19600203", sex="M")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("foreign-site")
    study = write_demo_study(workdir / "study", 4, seed=31, rows=64, cols=64)
    site = start_site(workdir, study, f"sqlite:///{workdir}/gateway.db")
    try:
        other = write_demo_study(workdir / "other", 2, seed=32, rows=64, cols=64, patient=OTHER)
        sent = storescu("127.0.0.1", site.node.port, other, calling="HOSP_PACS")
        assert sent.returncode == 0, sent.stderr
        wait_until(lambda: site.node.status()["cases_by_state"] == {"delivered": 1, "held": 1}, 120,
                   "the second patient's case de-identified and held for its referral")
        yield site, workdir / "gateway.db"
    finally:
        site.stop()


def _other_case(database) -> dict:
    """Case B's pseudonyms as the node recorded them (read-only)."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        key, patient_id, accession, study_uid = connection.execute(
            "SELECT s.key, i.pseudo_patient_id, i.pseudo_accession_number, s.pseudo_study_uid "
            f"FROM {Study._meta.table_name} s JOIN {StudyIdentity._meta.table_name} i ON i.study_id = s.id "
            "WHERE s.state = 'held'").fetchone()
        image_uid = connection.execute(
            f"SELECT o.sop_instance_uid FROM {OutboundObject._meta.table_name} o "
            f"JOIN {Study._meta.table_name} s ON o.study_id = s.id "
            "WHERE s.key = ? AND o.kind = 'image'", (key,)).fetchone()[0]
    return {"key": key, "patient_id": patient_id, "accession": accession, "study_uid": study_uid,
            "image_uid": image_uid}


def _failures(node) -> list[dict]:
    return [e for e in node.log_events() if e["event"] == "report_reidentification_failed"]


def test_a_report_quoting_another_cases_pseudonyms_is_refused(site, tmp_path):
    site, database = site
    other = _other_case(database)
    images = reviewer_images(site.reviewer)
    assert other["patient_id"] != images[0].PatientID, "two patients, two pseudonymous patient IDs"
    before = len(site.hospital.get("/instances"))

    quoting = reviewer_sr(images, text=f"Compare with the prior of {other['patient_id']}: unchanged.")
    quoting.save_as(tmp_path / "quoting.dcm", enforce_file_format=True)
    assert storescu("127.0.0.1", site.node.port, tmp_path / "quoting.dcm", calling="REVIEW_A").returncode == 0
    wait_until(lambda: len(_failures(site.node)) == 1, 60, "the first report refused")
    wait_until(lambda: site.node.status()["cases_by_state"].get("report_failed") == 1, 60, "case A report_failed")

    citing = reviewer_sr(images)
    reference = citing.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    reference.ReferencedSOPSequence[0].ReferencedSOPInstanceUID = other["image_uid"]
    citing.save_as(tmp_path / "citing.dcm", enforce_file_format=True)
    assert storescu("127.0.0.1", site.node.port, tmp_path / "citing.dcm", calling="REVIEW_A").returncode == 0
    wait_until(lambda: len(_failures(site.node)) == 2, 60, "the second report refused")

    errors = [e["error"] for e in _failures(site.node)]
    assert errors == ["ContentSequence[0].TextValue (patient_id): a pseudonym of another case",
                      "CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]."
                      "ReferencedSOPSequence[0].ReferencedSOPInstanceUID (uid): a pseudonym of another case"]
    log_text = (site.node.log_file).read_text()
    assert other["patient_id"] not in log_text and other["image_uid"] not in log_text, "no pseudonym value logged"
    audit = site.node.cli("audit", "--json").stdout
    assert audit.count("a pseudonym of another case") == 2
    wait_until(lambda: site.node.status()["cases_by_state"] == {"report_failed": 1, "held": 1}, 60,
               "case A failed its report leg")
    assert len(site.hospital.get("/instances")) == before, "nothing reached the hospital"

    clean = reviewer_sr(images, text=f"Patient {images[0].PatientID}: L4-L5 disc extrusion.")
    clean.save_as(tmp_path / "clean.dcm", enforce_file_format=True)
    assert storescu("127.0.0.1", site.node.port, tmp_path / "clean.dcm", calling="REVIEW_A").returncode == 0
    wait_until(lambda: site.node.status()["cases_by_state"] == {"report_delivered": 1, "held": 1}, 120,
               "the clean report home")
    reports = [i for i in hospital_instances(site.hospital) if i.get("Modality") == "SR"]
    assert len(reports) == 1 and len(site.hospital.get("/instances")) == before + 1
