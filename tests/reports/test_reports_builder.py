"""The report builders: TID 2000 SR as Basic Text, Enhanced and Comprehensive (DCMTK reads each cleanly),
Key Object Selection, Encapsulated PDF, and the constructor's rules."""

from __future__ import annotations

import subprocess

import pydicom
import pytest

from gateway.demo import write_demo_study
from gateway.reports import codes
from gateway.reports.builder import (
    ImageRef,
    KeyObjectSelectionBuilder,
    ReportContent,
    ReportFinding,
    ReportPDFBuilder,
    ReportSRBuilder,
)

KO_TEMPLATE_NOTICE = "W: Check for template constraints not yet supported"  # DCMTK does not check TID 2010


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return [pydicom.dcmread(p) for p in write_demo_study(tmp_path_factory.mktemp("builder"), 4, rows=16, cols=16)]


def _refs(images) -> tuple[ImageRef, ...]:
    return tuple(ImageRef(str(d.SOPClassUID), str(d.SOPInstanceUID), str(d.SeriesInstanceUID)) for d in images)


def _content(images, **overrides) -> ReportContent:
    refs = _refs(images)
    values = dict(title=codes.TITLES["mri-spine"], clinical_information="Back pain, left leg.",
                  findings=(ReportFinding("L4-L5 extrusion, Müller's sign.", refs[:2]), ReportFinding("No fracture.")),
                  impressions=("L4-L5 extrusion.",), recommendations=("Surgical opinion.",),
                  observer_name="Reviewer^Ann", organization="Spine Review")
    return ReportContent(**{**values, **overrides})


def _dsrdump(ds, path) -> tuple[int, list[str], str]:
    ds.save_as(path, enforce_file_format=True)
    result = subprocess.run(["/usr/bin/dsrdump", str(path)], capture_output=True, text=True, errors="replace")
    return result.returncode, [ln for ln in result.stderr.splitlines() if ln[:2] in ("E:", "W:", "F:")], result.stdout


@pytest.mark.parametrize("name", sorted(codes.SR_CLASS_BY_NAME))
def test_reports_sr_reads_cleanly_in_every_class(images, tmp_path, name):
    ds = ReportSRBuilder(images[0], _content(images), sop_class_uid=codes.SR_CLASS_BY_NAME[name]).build()
    code, problems, dump = _dsrdump(ds, tmp_path / f"{name}.dcm")
    assert code == 0 and problems == []
    assert ds.ConceptNameCodeSequence[0].CodeValue == "18756-7"
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "2000"
    headings = [item.ConceptNameCodeSequence[0].CodeValue for item in ds.ContentSequence
                if item.ValueType == "CONTAINER"]
    assert headings == ["55752-0", "59776-5", "19005-8", "18783-1"]
    assert dump.count("inferred from IMAGE") == 2 and ds.VerificationFlag == "VERIFIED"
    assert ds.PatientID == images[0].PatientID and ds.StudyInstanceUID == images[0].StudyInstanceUID
    assert ds.SpecificCharacterSet == "ISO_IR 100"  # the narrowest set for the text


def test_reports_key_objects_and_pdf(images, tmp_path):
    content = _content(images)
    ko = KeyObjectSelectionBuilder(images[0], content).build()
    code, problems, _ = _dsrdump(ko, tmp_path / "ko.dcm")
    assert code == 0 and problems in ([], [KO_TEMPLATE_NOTICE])
    assert [i.ValueType for i in ko.ContentSequence] == ["TEXT", "IMAGE", "IMAGE"]
    pdf = ReportPDFBuilder(images[0], content).build()
    pdf.save_as(tmp_path / "pdf.dcm", enforce_file_format=True)
    dump = subprocess.run(["/usr/bin/dcmdump", "-q", str(tmp_path / "pdf.dcm")], capture_output=True, text=True)
    assert dump.returncode == 0 and dump.stderr == ""
    assert pdf.EncapsulatedDocument.startswith(b"%PDF") and pdf.Modality == "DOC"
    assert len({ds.SeriesInstanceUID for ds in (ko, pdf)}) == 2


def test_reports_builder_rules(images):
    with pytest.raises(ValueError, match="finding"):
        _content(images, findings=())
    with pytest.raises(ValueError, match="impression"):
        _content(images, impressions=())
    with pytest.raises(ValueError, match="empty"):
        _content(images, recommendations=(" ",))
    with pytest.raises(ValueError, match="sop_class_uid"):
        ReportSRBuilder(images[0], _content(images), sop_class_uid=codes.COMPREHENSIVE_3D_SR)
    with pytest.raises(TypeError, match="evidence"):
        ReportSRBuilder({}, _content(images))
    with pytest.raises(ValueError, match="key image"):
        KeyObjectSelectionBuilder(images[0], _content(images, findings=(ReportFinding("Normal."),)))
    report = ReportSRBuilder(images[0], _content(images)).build()
    report.StudyInstanceUID = pydicom.uid.generate_uid()
    assert report.StudyInstanceUID != images[0].StudyInstanceUID, "built objects never share the evidence's elements"
