"""Reports back home with real peers: hospital Orthanc → gateway → reviewer Orthanc → report → hospital.

One site per module (SQLite): the hospital sends the study, the pipeline de-identifies and delivers it to
dr-a. Then, in file order: every refusal (nothing reaches the hospital), and the report's round trip with the
hospital PACS down when the report arrives, then up again (the report arrives once, re-identified).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pydicom
import pytest

from gateway.demo import write_demo_study
from gateway.dicom import status
from report_peers import (
    PATIENT,
    dsrdump_problems,
    hospital_instances,
    reviewer_image_file,
    reviewer_images,
    reviewer_sr,
    start_site,
)
from support.peers import storescu, wait_until
from support.scu import send

pytestmark = pytest.mark.dicom_e2e  # run a second time with the pynetdicom hooks off (make test-hooks-off)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reports-site")
    study = write_demo_study(workdir / "study", 6, seed=21, rows=64, cols=64)
    site = start_site(workdir, study, f"sqlite:///{workdir}/gateway.db")
    yield site
    site.stop()


def _write(ds, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _events(node, name):
    return [e for e in node.log_events() if e["event"] == name]


def test_reports_refusals_reach_nobody(site, tmp_path):
    images = reviewer_images(site.reviewer)
    before = len(site.hospital.get("/instances"))
    case_sr = reviewer_sr(images)
    attempts = [
        ("REVIEW_B", case_sr, "not_assigned_to_caller"),                               # another reviewer's case
        ("REVIEW_A", reviewer_sr(images, study_uid=pydicom.uid.generate_uid()), "unknown_study"),
        ("REVIEW_A", pydicom.dcmread(reviewer_image_file(site.reviewer, tmp_path / "img.dcm")),
         "not_a_report_class"),                                                        # an image, not a report
        ("HOSP_PACS", case_sr, "source_report_into_pseudonymous_study"),               # a source, into our study
    ]
    for calling, dataset, _ in attempts:
        assert send(site.node.port, [dataset], calling=calling) == [status.NOT_AUTHORIZED], calling
    refused = _events(site.node, "report_refused")
    assert [e["reason"] for e in refused] == [reason for _, _, reason in attempts]
    assert all(e["status"] == status.NOT_AUTHORIZED for e in refused)
    assert site.node.status()["cases_by_state"] == {"delivered": 1}
    assert site.node.status()["reports"]["report_objects_by_state"] == {}
    assert not _events(site.node, "report_delivery_attempt")
    assert len(site.hospital.get("/instances")) == before, "nothing reached the hospital"
    audit = site.node.cli("audit", "--json").stdout
    assert audit.count('"report_refused"') == len(attempts)


def test_reports_round_trip_hospital_down_then_up(site, tmp_path):
    images = reviewer_images(site.reviewer)
    originals = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, site.originals)}
    case_key = next(iter(site.node.status()["recent_studies"]))["study"]
    before = len(site.hospital.get("/instances"))
    site.hospital.stop()
    text = f"Patient SPINEGW^{case_key} ({images[0].PatientID}), accession {images[0].AccessionNumber}: " \
           "L4-L5 left paracentral disc extrusion."
    report = _write(reviewer_sr(images, text=text), tmp_path / "report.dcm")
    sent = storescu("127.0.0.1", site.node.port, report, calling="REVIEW_A")
    assert sent.returncode == 0, sent.stderr
    wait_until(lambda: [e for e in _events(site.node, "report_delivery_attempt") if e["status"] != "delivered"],
               60, "a failed report delivery attempt while the hospital is down")
    assert site.node.status()["cases_by_state"] == {"reported": 1}
    site.hospital.start()
    wait_until(lambda: site.node.status()["cases_by_state"] == {"report_delivered": 1}, 120, "the report home")

    instances = hospital_instances(site.hospital)
    reports = [i for i in instances if i.get("Modality") == "SR" and i["SOPClassUID"] == report_sop_class(report)]
    assert len(reports) == 1 and len(instances) == before + 1, "the report arrived exactly once"
    home = pydicom.dcmread(io.BytesIO(site.hospital.get(f"/instances/{reports[0]['ID']}/file")))
    original = next(iter(originals.values()))
    assert home.PatientID == PATIENT.patient_id and str(home.PatientName) == PATIENT.name
    assert home.StudyInstanceUID == original.StudyInstanceUID
    assert home.AccessionNumber == PATIENT.accession and home.StudyDate == PATIENT.study_date
    assert "PatientIdentityRemoved" not in home and "DeidentificationMethod" not in home
    assert home.SOPInstanceUID.startswith("2.25.") and home.SeriesInstanceUID.startswith("2.25.")
    evidence = {ref.ReferencedSOPInstanceUID
                for item in home.CurrentRequestedProcedureEvidenceSequence
                for series in item.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    inferred = {item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                for item in home.ContentSequence[0].ContentSequence}
    assert evidence == inferred and len(evidence) == 2 and evidence <= set(originals), "original image UIDs"
    assert {item.StudyInstanceUID for item in home.CurrentRequestedProcedureEvidenceSequence} == \
        {original.StudyInstanceUID}
    finding = home.ContentSequence[0].TextValue
    assert "SPINEGW" not in finding and case_key not in finding and PATIENT.patient_id in finding
    assert PATIENT.accession in finding
    assert home.file_meta.MediaStorageSOPInstanceUID == home.SOPInstanceUID
    assert dsrdump_problems(_write(home, tmp_path / "home.dcm")) == []

    snapshot = site.node.status()["reports"]
    assert snapshot["turnaround"]["cases"] == 1 and snapshot["turnaround"]["median_s"] > 0
    assert snapshot["report_objects_by_state"] == {"reidentified": 1}
    assert "reports home in the last 30 days: 1 case(s)" in site.node.cli("status").stdout
    received = _events(site.node, "report_received")
    assert len(received) == 1 and received[0]["reviewer"] == "dr-a"
    carried = [e for e in _events(site.node, "association_closed") if e.get("reviewer") == "dr-a" and e["instances"]]
    assert carried and all(e["bytes"] > 0 and "source" not in e for e in carried), "a reviewer's association"
    assert not [e for e in _events(site.node, "association_accepted") if e.get("source") == "dr-a"]
    assert len(_events(site.node, "report_delivered")) == 1


def report_sop_class(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID)


FINDINGS = """
observer: "Reviewer^Ann"
organization: Spine Review Partners
clinical_information: Low back pain radiating to the left leg.
findings:
  - text: L4-L5 left paracentral disc extrusion compressing the L5 root.
    images: [{first}, {second}]
  - text: No fracture.
impressions: L4-L5 disc extrusion with left L5 root compression.
recommendations: [Surgical opinion.]
"""


def test_reports_create_builds_valid_srs_and_sends_them_in_as_the_reviewer(site, tmp_path):
    case_key = next(iter(site.node.status()["recent_studies"]))["study"]
    images = reviewer_images(site.reviewer)
    findings = tmp_path / "findings.yaml"
    findings.write_text(FINDINGS.format(first=images[0].InstanceNumber, second=f'"{images[1].SOPInstanceUID}"'))
    for sr_class in ("basic", "enhanced", "comprehensive"):
        built = site.node.cli("report", "create", case_key, "--findings", str(findings), "--as", sr_class,
                              "--out", str(tmp_path / sr_class), "--no-send")
        assert "built 1 object(s)" in built.stdout
        (sr,) = (tmp_path / sr_class).glob("sr-*.dcm")
        assert dsrdump_problems(sr) == [], sr_class
        assert pydicom.dcmread(sr).PatientID == images[0].PatientID, "built on the pseudonymous images"

    bad = tmp_path / "bad.yaml"
    bad.write_text("findings: [{text: x, images: [999]}]\nimpressions: [y]\n")
    refused = site.node.cli("report", "create", case_key, "--findings", str(bad), check=False)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "Instance Number 999" in refused.stderr
    unknown = site.node.cli("report", "create", "nosuchcase", "--findings", str(findings), check=False)
    assert unknown.returncode == 2 and "no case" in unknown.stderr

    call = site.node.cli("report", "create", case_key, "--findings", str(findings), "--call", "on-call surgeon",
                         check=False)
    assert call.returncode == 2 and call.stderr.count("\n") == 1 and "add --critical" in call.stderr
    long_call = site.node.cli("report", "create", case_key, "--findings", str(findings), "--critical", "--call",
                              "x" * 201, check=False)
    assert long_call.returncode == 2 and "at most 200 characters" in long_call.stderr

    before = len(site.hospital.get("/instances"))
    sent = site.node.cli("report", "create", case_key, "--findings", str(findings), "--as", "comprehensive",
                         "--pdf", "--key-images", "--critical", "--call", "On-call spinal surgeon, 020 7946 0000")
    assert sent.stdout.count(": 0x0000") == 3, sent.stdout
    assert f"case {case_key}: flagged critical; 0 notice(s) to send" in sent.stdout, sent.stdout
    flagged = [row for row in json.loads(site.node.cli("audit", "--json", "--limit", "1000").stdout)
               if row["action"] == "critical_result_flagged"]
    assert [(row["study"], row["detail"]) for row in flagged] == [(case_key, "by cli; 0 notice(s) to send")], flagged
    wait_until(lambda: len(site.hospital.get("/instances")) == before + 3, 60, "SR, PDF and KO home")
    wait_until(lambda: site.node.status()["cases_by_state"] == {"report_delivered": 1}, 120, "the case home again")
    originals = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in site.originals}
    key_objects = [i for i in hospital_instances(site.hospital) if i.get("Modality") == "KO"]
    assert len(key_objects) == 1
    ko = pydicom.dcmread(io.BytesIO(site.hospital.get(f"/instances/{key_objects[0]['ID']}/file")))
    assert ko.PatientID == PATIENT.patient_id
    assert {item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            for item in ko.ContentSequence if item.ValueType == "IMAGE"} <= originals
    pdfs = [i for i in hospital_instances(site.hospital) if i.get("Modality") == "DOC"
            and i.get("SeriesDescription") == "Second opinion report (PDF)"]
    assert len(pdfs) == 1 and pdfs[0]["PatientID"] == PATIENT.patient_id
