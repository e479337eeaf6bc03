"""The case the report tests start from: as the pipeline leaves it once dr-a's report arrived (the originals'
identity kept, the UID map, the report spooled), on a database held open for the test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from gateway.deid.engine import Deidentifier, PatientContext
from gateway.deid.options import DeidOptions
from gateway.demo import DemoPatient, write_demo_study
from gateway.reports import codes
from gateway.reports.builder import ImageRef, ReportContent, ReportFinding, ReportPDFBuilder, ReportSRBuilder
from gateway.storage.models import CaseState, ReportObject, Source, Study, StudyIdentity, UidMap, db, open_database
from gateway.storage.spool import Spool

SECRET = b"0123456789abcdef0123456789abcdef"
PATIENT = DemoPatient()


@dataclass(frozen=True)
class ReportedCase:
    study: Study
    originals: list[pydicom.Dataset]
    images: list[pydicom.Dataset]  # the originals de-identified; the report's finding references the first
    pdf: pydicom.Dataset | None  # the reviewer's PDF, as the reviewer wrote it (``with_pdf``)
    secret: bytes = SECRET  # the pseudonym key it was de-identified with


@pytest.fixture
def report_spool(tmp_path, database_url) -> Iterator[Spool]:
    """The spool, with the database open and a connection held until the test ends."""
    database = open_database(database_url)
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    try:
        with db.connection_context():
            yield spool
    finally:
        database.close()


@pytest.fixture
def reported_case(tmp_path, report_spool) -> Callable[..., ReportedCase]:
    """Makes the case of source st-marys, REPORTED by dr-a: its SR (signed by ``observer``, when given), and with
    ``with_pdf`` the reviewer's PDF beside it."""

    def make(observer: str | None = None, *, with_pdf: bool = False) -> ReportedCase:
        originals = [pydicom.dcmread(p) for p in write_demo_study(tmp_path / "study", 2, seed=3, rows=16, cols=16)]
        study = _identified_study(originals)
        images = _pseudonymised(study, originals)
        refs = tuple(ImageRef(str(d.SOPClassUID), str(d.SOPInstanceUID), str(d.SeriesInstanceUID)) for d in images)
        content = ReportContent(title=codes.TITLES["mri-spine"],
                                findings=(ReportFinding("L4-L5: disc extrusion.", refs[:1]),),
                                impressions=("Extrusion compressing the left L5 root.",), observer_name=observer)
        _spool_report(report_spool, study, tmp_path, ReportSRBuilder(images[0], content).build(), "a")
        pdf = ReportPDFBuilder(images[0], content).build() if with_pdf else None
        if pdf is not None:
            _spool_report(report_spool, study, tmp_path, pdf, "b")
        return ReportedCase(Study.get_by_id(study.id), originals, images, pdf)

    return make


def _identified_study(originals: list[pydicom.Dataset]) -> Study:
    source = Source.create(name="st-marys", ae_title="HOSP_PACS")
    return Study.create(study_uid=originals[0].StudyInstanceUID, source=source, calling_ae="HOSP_PACS",
                        state=CaseState.REPORTED, reviewer="dr-a")


def _pseudonymised(study: Study, originals: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """The de-identified images; the UID map and the identity kept as de-identification keeps them."""
    deidentifier = Deidentifier(DeidOptions(), SECRET)
    results = [deidentifier.deidentify(ds, PatientContext("st-marys", study.key)) for ds in originals]
    for original, pseudo in {k: v for r in results for k, v in r.mapping.uids.items()}.items():
        UidMap.create(original_uid=original, pseudo_uid=pseudo, study=study)
    mapping = results[0].mapping
    StudyIdentity.create(study=study, patient_name=PATIENT.name, patient_id=PATIENT.patient_id,
                         birth_date=PATIENT.birth_date, sex=PATIENT.sex, accession_number=PATIENT.accession,
                         study_date=PATIENT.study_date, study_time=str(originals[0].StudyTime),
                         referring_physician=PATIENT.referring, study_description="MRI LUMBAR SPINE",
                         pseudo_patient_id=mapping.patient_id, pseudo_accession_number=mapping.accession or "",
                         date_offset_days=mapping.date_offset_days or 0)
    Study.update(pseudo_study_uid=results[0].dataset.StudyInstanceUID).where(Study.id == study.id).execute()
    return [r.dataset for r in results]


def _spool_report(spool: Spool, study: Study, tmp_path: Path, ds: pydicom.Dataset, name: str) -> None:
    path = tmp_path / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    stored = spool.store(data, name * 64)
    ReportObject.create(study=study, reviewer="dr-a", calling_ae="REVIEW_A", sop_class_uid=ds.SOPClassUID,
                        sop_instance_uid=ds.SOPInstanceUID, transfer_syntax=ds.file_meta.TransferSyntaxUID,
                        spool_path=spool.relative(stored), sha256=name * 64, size=len(data))
