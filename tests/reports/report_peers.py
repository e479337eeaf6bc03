"""A hospital, a gateway and two reviewers for the reports tests, and a reviewer's SR written by hand.

The hospital is an Orthanc that sends the study to the gateway (its REST ``/modalities/.../store``) and is
also the source's ``return`` destination; reviewer dr-a is an Orthanc; dr-b is configured but disabled (it is
never assigned a case, but its AE title may open associations: the "wrong reviewer").
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from gateway.demo import DemoPatient
from support.peers import GatewayProcess, Orthanc, free_port, wait_until

ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
PATIENT = DemoPatient()
FAST = {"routing": {"stable_after_s": 0.5, "poll_s": 0.2, "echo_interval_s": 1.0,
                    "retry": {"initial_s": 0.2, "max_s": 1.0, "max_attempts": 200}},
        "referrals": {"wait_s": 600}}
REFERRAL = {
    "source": "st-marys", "accession_number": PATIENT.accession, "urgency": "routine",
    "patient": {"id": PATIENT.patient_id, "name": "Doe^Jane", "birth_date": "1971-04-12"},
    "referrer": {"name": "Dr Alan Smith"},
    "clinical": {"history": "Low back pain for 10 weeks.", "question": "L4-L5 disc herniation?"},
}


@dataclass
class Site:
    hospital: Orthanc
    reviewer: Orthanc
    node: GatewayProcess
    originals: list[Path]

    def stop(self) -> None:
        for peer in (self.node, self.reviewer, self.hospital):
            peer.stop()


def start_site(workdir: Path, study: list[Path], database_url: str, node: dict | None = None, *,
               source: dict | None = None, referral_extra: dict | None = None) -> Site:
    """Everything running, the study sent by the hospital and delivered to dr-a (case DELIVERED). ``node``: more
    of the gateway's ``node`` configuration; ``source``: more of the source's (e.g. ``hl7_results``);
    ``referral_extra``: more of the referral's fields."""
    node = GatewayProcess(workdir / "gw", database_url, node=node,
                          extra={**FAST, "http": {"host": "127.0.0.1", "port": free_port()}})
    hospital = Orthanc(workdir / "hospital", "HOSP_PACS",
                       modalities={"gateway": [node.ae_title, "127.0.0.1", node.port]})
    reviewer = Orthanc(workdir / "reviewer", "REVIEW_A")
    site = Site(hospital, reviewer, node, study)
    try:
        hospital.start()
        reviewer.start()
        node.config["sources"] = [{"name": "st-marys", "ae_title": "HOSP_PACS", "return": {
            "ae_title": "HOSP_PACS", "host": "127.0.0.1", "port": hospital.dicom_port}, **(source or {})}]
        node.config["reviewers"] = [
            {"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": reviewer.dicom_port},
            {"name": "dr-b", "ae_title": "REVIEW_B", "host": "127.0.0.1", "port": free_port(), "enabled": False}]
        node.start()
        referral = workdir / "referral.json"
        referral.write_text(json.dumps({**REFERRAL, **(referral_extra or {})}))
        node.cli("referral", "add", str(referral))
        answers = hospital.upload(study)
        hospital.post("/modalities/gateway/store", answers[0]["ParentStudy"].encode())
        wait_until(lambda: node.status()["cases_by_state"] == {"delivered": 1}, 120, "the case delivered to dr-a")
    except BaseException:
        site.stop()
        raise
    return site


def reviewer_images(reviewer: Orthanc) -> list[Dataset]:
    """The de-identified images as dr-a holds them (headers only)."""
    (study,) = reviewer.get("/studies")
    images = []
    for instance in reviewer.get(f"/studies/{study}/instances"):
        tags = reviewer.get(f"/instances/{instance['ID']}/tags?simplify")
        if tags.get("Modality") == "MR":
            images.append(pydicom.dcmread(_bytes_io(reviewer.get(f"/instances/{instance['ID']}/file")),
                                          stop_before_pixels=True))
    return sorted(images, key=lambda ds: int(ds.InstanceNumber))


def reviewer_image_file(reviewer: Orthanc, out: Path) -> Path:
    """One de-identified image file as dr-a holds it (to be sent back: an image instead of a report)."""
    (study,) = reviewer.get("/studies")
    for instance in reviewer.get(f"/studies/{study}/instances"):
        if reviewer.get(f"/instances/{instance['ID']}/tags?simplify").get("Modality") == "MR":
            out.write_bytes(reviewer.get(f"/instances/{instance['ID']}/file"))
            return out
    raise AssertionError("dr-a holds no MR image")


def _bytes_io(data: bytes):
    import io

    return io.BytesIO(data)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def reviewer_sr(images: list[Dataset], *, study_uid: str | None = None, text: str = "") -> Dataset:
    """An Enhanced SR as a reviewer's workstation writes it: patient and study copied from the pseudonymous
    images, evidence and INFERRED FROM image references by pseudonymous UIDs, free text as given."""
    first = images[0]
    now = dt.datetime.now()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = ENHANCED_SR
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "ReferringPhysicianName", "StudyID", "AccessionNumber", "PatientIdentityRemoved",
                    "DeidentificationMethod"):
        setattr(ds, keyword, first.get(keyword, ""))
    ds.StudyInstanceUID = study_uid or first.StudyInstanceUID
    ds.Modality = "SR"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 100
    ds.InstanceNumber = 1
    ds.Manufacturer = "Reviewer Workstation"
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.PerformedProcedureCodeSequence = []
    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ReferencedSOPSequence = [_ref(image) for image in images[:2]]
    evidence = Dataset()
    evidence.StudyInstanceUID = ds.StudyInstanceUID
    evidence.ReferencedSeriesSequence = [series]
    ds.CurrentRequestedProcedureEvidenceSequence = [evidence]
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code("18756-7", "LN", "MRI Spine Report")]
    ds.ContinuityOfContent = "SEPARATE"
    finding = Dataset()
    finding.RelationshipType, finding.ValueType = "CONTAINS", "TEXT"
    finding.ConceptNameCodeSequence = [_code("121071", "DCM", "Finding")]
    finding.TextValue = text or "L4-L5 left paracentral disc extrusion."
    finding.ContentSequence = [_image_item(image) for image in images[:2]]
    ds.ContentSequence = [finding]
    return ds


def _ref(image: Dataset) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = image.SOPClassUID, image.SOPInstanceUID
    return ref


def _image_item(image: Dataset) -> Dataset:
    item = Dataset()
    item.RelationshipType, item.ValueType = "INFERRED FROM", "IMAGE"
    item.ReferencedSOPSequence = [_ref(image)]
    return item


def dsrdump_problems(path: Path) -> list[str]:
    """DCMTK's dsrdump: its exit code and every error or warning line (empty when the SR reads cleanly)."""
    result = subprocess.run(["/usr/bin/dsrdump", str(path)], capture_output=True, text=True, timeout=60)
    problems = [line for line in result.stderr.splitlines() if line.startswith(("E:", "W:", "F:"))]
    return problems + ([f"exit {result.returncode}"] if result.returncode else [])


def hospital_instances(hospital: Orthanc) -> list[dict]:
    return [hospital.get(f"/instances/{i}/tags?simplify") | {"ID": i} for i in hospital.get("/instances")]
