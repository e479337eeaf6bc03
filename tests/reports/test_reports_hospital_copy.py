"""The report PDF that goes home is the hospital's copy: the source's letterhead, the patient's identity (the
originals, re-identified as the SR's header), the study and the report's signature and status, a footer naming
the patient on every page. The reviewer's PDF, as the reviewer wrote and saw it, holds none of it."""

from __future__ import annotations

import io

import pydicom
import pytest
from pypdf import PdfReader

from gateway.config import GatewayConfig
from gateway.demo import DemoPatient, write_demo_study
from gateway.reports import codes
from gateway.reports.builder import ImageRef, ReportContent, ReportFinding, ReportSRBuilder
from gateway.reports.hospital_copy import readable_date
from gateway.stages.reports import ReportStage
from gateway.storage.models import OutboundObject, Study
from gateway.storage.spool import Spool

PATIENT = DemoPatient()
IDENTITY = ("DOE, JANE MARIE", "JANE MARIE DOE", PATIENT.patient_id, "12 Apr 1971", PATIENT.accession,
            "SMITH", "St Mary's Hospital NHS Trust")


def _config(tmp_path) -> GatewayConfig:
    return GatewayConfig.model_validate({
        "storage": {"spool_dir": str(tmp_path / "spool"), "min_free_bytes": 0},
        "sources": [{"name": "st-marys", "ae_title": "HOSP_PACS", "letterhead": [
            "St Mary's Hospital NHS Trust", "Department of Radiology, Praed Street, London W2 1NY"],
                     "return": {"ae_title": "STORESCP", "host": "127.0.0.1", "port": 104}}],
        "reviewers": [{"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": 104,
                       "qualification": "FRCR, consultant neuroradiologist", "organization": "Spine Review Partners"}]})


def _pdf_text(data: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages)


def _spool_key_image(spool: Spool, study: Study, tmp_path, image: pydicom.Dataset) -> None:
    """The de-identified image the report references, as the node keeps it (an outbound image)."""
    path = tmp_path / "key-image.dcm"
    image.save_as(path, enforce_file_format=True)
    stored = spool.store(path.read_bytes(), "c" * 64)
    OutboundObject.create(study=study, kind="image", sop_instance_uid=image.SOPInstanceUID,
                          sop_class_uid=image.SOPClassUID, transfer_syntax=image.file_meta.TransferSyntaxUID,
                          spool_path=spool.relative(stored), sha256="c" * 64, size=path.stat().st_size)


def _home_pdf(tmp_path, spool: Spool, case) -> pydicom.Dataset:
    """The case's report re-identified, its key image kept by the node; the PDF that goes home."""
    _spool_key_image(spool, case.study, tmp_path, case.images[0])
    assert ReportStage.of(_config(tmp_path), spool, case.secret).reidentify_received(case.study) == 2
    (home,) = [pydicom.dcmread(spool.absolute(o.spool_path)) for o in OutboundObject.select()
               if o.sop_class_uid == codes.ENCAPSULATED_PDF]
    return home


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_pdf_home_carries_the_letterhead_identity_and_signature(tmp_path, report_spool, reported_case):
    case = reported_case("Reviewer^Ann", with_pdf=True)
    home = _home_pdf(tmp_path, report_spool, case)
    cover = PdfReader(io.BytesIO(bytes(home.EncapsulatedDocument))).pages[0]
    assert len(cover.images) == 1, "the key image, drawn on the cover"
    assert "Key images series 1, image 1" in " ".join(cover.extract_text().split())
    text = _pdf_text(bytes(home.EncapsulatedDocument)[:int(home.EncapsulatedDocumentLength)])
    flat = " ".join(text.split())
    for expected in ("St Mary's Hospital NHS Trust", "Department of Radiology", "DOE, JANE MARIE", PATIENT.patient_id,
                     "12 Apr 1971", "female", PATIENT.accession, "20 Nov 2026", "MRI LUMBAR SPINE", "SMITH, ALAN",
                     "Spine Review Partners", "Reported by Ann Reviewer",
                     "Ann Reviewer, FRCR, consultant neuroradiologist",
                     "final, verified (signed)", "L4-L5: disc extrusion."):
        assert expected in flat, expected
    pages = len(PdfReader(io.BytesIO(bytes(home.EncapsulatedDocument))).pages)
    assert flat.count(f"DOE, JANE MARIE · ID {PATIENT.patient_id}") == pages, "the footer on every page"
    assert f"page {pages} of {pages}" in flat
    reviewer_text = " ".join(_pdf_text(bytes(case.pdf.EncapsulatedDocument)).split())
    for identifier in IDENTITY + ("1971", "Doe", "DOE"):
        assert identifier not in reviewer_text, identifier


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_unsigned_report_says_so_on_the_hospitals_copy(tmp_path, report_spool, reported_case):
    home = _home_pdf(tmp_path, report_spool, reported_case(None, with_pdf=True))
    flat = " ".join(_pdf_text(bytes(home.EncapsulatedDocument)).split())
    assert "preliminary, unverified (not signed)" in flat and "Reviewer not signed" in flat


def test_dates_are_written_without_an_order_to_guess():
    assert readable_date("19710412") == "12 Apr 1971" and readable_date("") == "" and readable_date("1971") == "1971"


def test_a_named_observer_makes_the_report_verified_without_an_organization(tmp_path):
    image = pydicom.dcmread(write_demo_study(tmp_path / "s", 1, seed=1, rows=8, cols=8)[0])
    ref = ImageRef(str(image.SOPClassUID), str(image.SOPInstanceUID), str(image.SeriesInstanceUID))
    sr = ReportSRBuilder(image, ReportContent(title=codes.TITLES["mri-spine"], findings=(ReportFinding("x", (ref,)),),
                                              impressions=("y",), observer_name="Reviewer^Ann")).build()
    assert sr.VerificationFlag == "VERIFIED" and sr.VerifyingObserverSequence[0].VerifyingOrganization
