"""End to end: referral -> scrubbed notes -> notes SR and Encapsulated PDF, with no identifier left."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import unicodedata

import pytest
from highdicom.sr import ComprehensiveSR
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName
from pypdf import PdfReader

from gateway.referral.codes import PRIVATE_SCHEME, RedFlag
from gateway.referral.document import Urgency, parse_referral
from gateway.referral.notes_pdf import ENCAPSULATED_PDF_STORAGE, NotesPDFBuilder, build_notes_pdf_dataset
from gateway.referral.notes_sr import NotesSRBuilder, build_notes_sr
from gateway.referral.reason import LO_MAX_LENGTH, short_reason
from gateway.referral.scrub import ScrubbedNotes, scrub_referral

REFERRAL = {
    "source": "st-marys", "accession_number": "A1234567",
    "patient": {"id": "MRN0012345", "name": "Pemberton^Zoë", "birth_date": "1971-04-12"},
    "urgency": "routine",
    "referrer": {"name": "Dr Alan Whitcombe", "contact": "alan.whitcombe@stmarys.example, +44 20 7946 0000"},
    "clinical": {
        "history": ("Mrs Zoe Pembertin (MRN0012345, accession A1234567), DOB 12/04/1971 aka 1971-04-12, "
                    "12 April 1971 or 19710412, lives at 4 Elm Road, W1A 1AA. History of breast cancer. "
                    "Seen at St Mary's Hospital on 03/02/2024 with L4-L5 and L5/S1 disc disease."),
        "symptoms": ("ZOË PEMBERTON reports burning pain, VAS 7/10, for 10 weeks; lost 8 kg. "
                     "No saddle anaesthesia. Contact her on 07700 900123 or zoe.pemberton@mail.example."),
        "pain": {"location": "lower back radiating to the left calf (Pemberton's words)", "intensity": 7,
                 "nature": "burning, shooting", "duration_weeks": 10, "radiation": "L5 dermatome, S1 spared"},
        "red_flags": ["progressive_neurological_deficit"],
        "examination": "EHL 3/5 power on the left, C5/6 and T12 normal. Examined by Dr Whitcombe.",
        "emg": "EMG 2024-01-15: L5 radiculopathy. Report at https://pacs.stmarys.example/r/12345678",
        "prior_treatment": "Physiotherapy 8 weeks without improvement; naproxen 500 mg.",
        "prior_imaging": "X-ray on 15 Jan 2024 at St Mary's.",
        "question": "Mrs Pemberton: nerve root compression at L4-L5? Call Dr Alan Whitcombe on +44 20 7946 0000.",
    },
}
IDENTIFIERS = [
    "Zoë", "Zoe", "Pemberton", "Pembertin", "MRN0012345", "0012345", "A1234567", "12/04/1971", "1971-04-12",
    "12 April 1971", "19710412", "Elm Road", "W1A 1AA", "07700 900123", "zoe.pemberton@mail.example",
    "alan.whitcombe@stmarys.example", "+44 20 7946 0000", "7946", "Alan", "Whitcombe", "St Mary", "stmarys",
    "pacs.stmarys", "12345678", "1971",
]
CLINICAL_TOKENS = ["L4-L5", "L5/S1", "S1", "C5/6", "T12", "VAS 7/10", "3/5 power", "10 weeks", "8 kg",
                   "500 mg", "breast cancer"]
DATE_OFFSET = -45


def _fold(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).lower()


def _leaks(text: str) -> list[str]:
    folded = _fold(text)
    return [i for i in IDENTIFIERS if re.search(rf"(?<![a-z0-9]){re.escape(_fold(i))}(?![a-z0-9])", folded)]


def _byte_leaks(data: bytes) -> list[str]:
    """Identifiers found anywhere in the bytes. An all-digit one (a year of birth) counts only standing alone:
    inside a longer run of digits it is part of a random pseudonymous UID (2.25.<39 digits>), not a leak."""
    lowered = data.lower()
    found = []
    for identifier in IDENTIFIERS:
        for encoding in ("utf-8", "latin-1", "utf-16-le"):
            raw = identifier.lower().encode(encoding)
            if identifier.isdigit() and encoding != "utf-16-le":
                hit = re.search(rb"(?<![0-9])" + re.escape(raw) + rb"(?![0-9])", lowered) is not None
            else:
                hit = raw in lowered
            if hit:
                found.append(identifier)
    return found


def _strings(dataset: Dataset) -> list[str]:
    found = []
    for element in dataset.iterall():
        values = element.value if element.VM > 1 else [element.value]
        found += [str(v) for v in values if isinstance(v, (str, PersonName))]
    return found


@pytest.fixture
def notes() -> ScrubbedNotes:
    return scrub_referral(parse_referral(json.dumps(REFERRAL)), DATE_OFFSET, ["St Mary's Hospital"])


@pytest.fixture
def sr(deidentified_image, notes) -> ComprehensiveSR:
    return build_notes_sr(deidentified_image, notes, series_instance_uid="2.25.1234", sop_instance_uid="2.25.5678")


@pytest.fixture
def pdf_dataset(deidentified_image, notes) -> Dataset:
    return build_notes_pdf_dataset(deidentified_image, notes)


def test_notes_are_scrubbed_and_keep_clinical_tokens(notes):
    text = "\n".join(notes.texts())
    assert _leaks(text) == []
    for token in CLINICAL_TOKENS:
        assert token in text
    assert "[2023-12-20]" in notes.history  # 03/02/2024 moved by -45 days
    assert notes.urgency is Urgency.URGENT
    assert {f.code for f in notes.flags} >= {RedFlag.CANCER_HISTORY, RedFlag.UNEXPLAINED_WEIGHT_LOSS,
                                             RedFlag.PROGRESSIVE_NEUROLOGICAL_DEFICIT}
    assert RedFlag.CAUDA_EQUINA not in {f.code for f in notes.flags}


def test_sr_contains_no_identifier(sr, tmp_path):
    assert _leaks("\n".join(_strings(sr))) == []
    path = tmp_path / "notes_sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert _byte_leaks(path.read_bytes()) == []
    text = "\n".join(_strings(sr))
    for token in CLINICAL_TOKENS:
        assert token in text


def test_sr_structure(sr, deidentified_image):
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
    assert (sr.SeriesInstanceUID, sr.SOPInstanceUID) == ("2.25.1234", "2.25.5678")
    assert sr.StudyInstanceUID == deidentified_image.StudyInstanceUID
    assert sr.SeriesInstanceUID != deidentified_image.SeriesInstanceUID
    assert (sr.PatientID, sr.AccessionNumber) == ("PSN-7F3A2C", "PACC-0042")
    assert sr.ConceptNameCodeSequence[0].CodeValue == "55752-0"
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == PRIVATE_SCHEME
    sections = {item.ConceptNameCodeSequence[0].CodeValue: item for item in sr.ContentSequence
                if item.ValueType == "CONTAINER"}
    assert set(sections) == {"11329-0", "18785-6", "55115-0"}
    value_types = {item.ValueType for item in _items(sr)}
    assert value_types <= {"CONTAINER", "TEXT", "CODE", "NUM"}
    intensity = [i for i in _items(sr) if i.ConceptNameCodeSequence[0].CodeValue == "72514-3"]
    measured = intensity[0].MeasuredValueSequence[0]
    assert measured.NumericValue == 7
    assert measured.MeasurementUnitsCodeSequence[0].CodeValue == "{score}"
    flags = [i for i in sections["18785-6"].ContentSequence]
    meanings = {(i.ConceptNameCodeSequence[0].CodeValue, i.ConceptCodeSequence[0].CodeMeaning) for i in flags}
    assert ("RFD", "Progressive neurological deficit") in meanings
    assert ("RFT", "History of cancer") in meanings


def _items(dataset: Dataset) -> list[Dataset]:
    found = []
    for item in dataset.get("ContentSequence", []):
        found += [item, *_items(item)]
    return found


def test_sr_round_trips_through_file(sr, tmp_path):
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    again = ComprehensiveSR.from_dataset(dcmread(path))
    assert again.SOPInstanceUID == "2.25.5678"


def test_generated_uids_are_uuid_based(deidentified_image, notes):
    document = NotesSRBuilder(deidentified_image, notes).build()
    assert document.SeriesInstanceUID.startswith("2.25.") and document.SOPInstanceUID.startswith("2.25.")
    assert document.SeriesInstanceUID != NotesSRBuilder(deidentified_image, notes).build().SeriesInstanceUID


@pytest.mark.parametrize("builder", [NotesSRBuilder, NotesPDFBuilder])
def test_builders_validate_arguments(builder, deidentified_image, notes):
    with pytest.raises(TypeError, match="evidence"):
        builder({"PatientID": "x"}, notes)
    with pytest.raises(TypeError, match="notes"):
        builder(deidentified_image, "notes")
    incomplete = Dataset()
    incomplete.PatientName = "X"
    with pytest.raises(ValueError, match="StudyInstanceUID"):
        builder(incomplete, notes)
    with pytest.raises(ValueError, match="series_instance_uid"):
        builder(deidentified_image, notes, series_instance_uid=deidentified_image.SeriesInstanceUID)
    with pytest.raises(TypeError, match="series_number"):
        builder(deidentified_image, notes, series_number="1")


def test_sr_builder_rejects_malformed_uid(deidentified_image, notes):
    with pytest.raises(ValueError, match="sop_instance_uid"):
        NotesSRBuilder(deidentified_image, notes, sop_instance_uid="1.2.abc")


def _pdf(pdf_dataset: Dataset) -> PdfReader:
    data = pdf_dataset.EncapsulatedDocument[: pdf_dataset.EncapsulatedDocumentLength]
    return PdfReader(io.BytesIO(data))


def test_pdf_contains_no_identifier(pdf_dataset, tmp_path):
    reader = _pdf(pdf_dataset)
    text = "\n".join(page.extract_text() for page in reader.pages)
    assert "Red flags" in text and "Pain intensity: 7/10" in text
    assert _leaks(text) == []
    for token in CLINICAL_TOKENS:
        assert token in " ".join(text.split())
    metadata = {key: str(value) for key, value in (reader.metadata or {}).items()}
    assert set(metadata) >= {"/Author", "/Title", "/Producer", "/CreationDate"}
    assert _leaks(" ".join(metadata.values())) == []
    assert _byte_leaks(pdf_dataset.EncapsulatedDocument) == []
    assert _leaks("\n".join(_strings(pdf_dataset))) == []
    path = tmp_path / "pdf.dcm"
    pdf_dataset.save_as(path, enforce_file_format=True)
    assert dcmread(path).EncapsulatedDocumentLength == pdf_dataset.EncapsulatedDocumentLength


def test_pdf_dataset_attributes(pdf_dataset, deidentified_image):
    assert pdf_dataset.SOPClassUID == ENCAPSULATED_PDF_STORAGE
    assert pdf_dataset.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert len(pdf_dataset.EncapsulatedDocument) % 2 == 0
    assert pdf_dataset.EncapsulatedDocument.startswith(b"%PDF-")
    assert pdf_dataset.Modality == "DOC"
    assert pdf_dataset.StudyInstanceUID == deidentified_image.StudyInstanceUID
    assert pdf_dataset.SeriesInstanceUID not in (deidentified_image.SeriesInstanceUID,)
    assert (pdf_dataset.PatientName, pdf_dataset.PatientID) == ("PSEUDO^P7F3A2", "PSN-7F3A2C")


def _dcmtk(tool: str) -> str:
    path = f"/usr/bin/{tool}"
    if shutil.which(path) is None:
        pytest.skip(f"{path} is not installed (DCMTK); cannot check the file with it")
    return path


@pytest.mark.parametrize("tool,kind", [("dsrdump", "sr"), ("dcmdump", "sr"), ("dcmdump", "pdf")])
def test_dcmtk_reads_files_cleanly(tool, kind, sr, pdf_dataset, tmp_path):
    executable = _dcmtk(tool)
    path = tmp_path / f"{kind}.dcm"
    (sr if kind == "sr" else pdf_dataset).save_as(path, enforce_file_format=True)
    result = subprocess.run([executable, str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout


# DCMTK's VR checker does not handle UTF-8 and says so on stderr; Latin-1 text must stay clean.
UTF8_WARNING = b"W: The VR checker does not support this Specific Character Set: ISO_IR 192\n"


@pytest.mark.parametrize("emg,charset,allowed_stderr", [
    ("Lasègue positive, SLR 30°.", "ISO_IR 100", b""),
    # Words in another script go (the allowlist knows none); a sign outside Latin-1 stays and needs UTF-8.
    ("Nerve conduction velocity ≥ 40 m/s.", "ISO_IR 192", UTF8_WARNING),
])
def test_non_ascii_clinical_text(emg, charset, allowed_stderr, deidentified_image, tmp_path):
    referral = json.loads(json.dumps(REFERRAL))
    referral["clinical"]["emg"] = emg
    notes = scrub_referral(parse_referral(json.dumps(referral)), 0)
    for index, (builder, tools) in enumerate([(build_notes_sr, ("dsrdump", "dcmdump")),
                                              (build_notes_pdf_dataset, ("dcmdump",))]):
        dataset = builder(deidentified_image, notes)
        path = tmp_path / f"{index}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        if builder is build_notes_sr:
            assert dataset.SpecificCharacterSet == charset
            assert emg in _strings(dcmread(path))
        for tool in tools:
            result = subprocess.run([_dcmtk(tool), str(path)], capture_output=True, timeout=60, check=False)
            assert result.returncode == 0
            assert result.stderr in (b"", allowed_stderr)


def test_short_reason_is_made_of_the_nodes_own_words(notes):
    """The reason goes into every image's header: the urgency and the first red flag's meaning, never the
    referral's free text (a nickname the scrubber did not know once reached every image this way)."""
    from dataclasses import replace
    reason = short_reason(notes)
    assert reason == "URGENT: Progressive neurological deficit"
    assert notes.question and notes.question.split()[0] not in reason
    assert _leaks(reason) == []
    nickname = replace(notes, question="Can Bobby go back to work?", history="Known as Bobby.", flags=())
    assert "Bobby" not in short_reason(nickname)
    bare = ScrubbedNotes(urgency=Urgency.ROUTINE, question="Is surgery needed for Sunny?")
    assert short_reason(bare) == "Spine imaging second opinion"
    assert len(short_reason(notes)) <= LO_MAX_LENGTH


def test_the_reviewer_reads_the_notes_coded_items_in_human_words(sr):
    """The page's lines of the notes SR: labels and numbers as a clinician writes them, the SR's codes kept."""
    from gateway.web.views import sr_lines

    lines = {name: value for _, name, value in sr_lines(sr)}
    assert lines["Pain severity (0-10)"] == "7" and lines["Pain duration"] == "10 weeks"
    assert not [name for name in lines if "[" in name or "Reported" in name]
    codes = [item.ConceptNameCodeSequence[0].CodeValue for item in sr.iterall() if item.keyword == "ContentSequence"
             for item in item.value if "ConceptNameCodeSequence" in item]
    assert "72514-3" in codes


@pytest.mark.parametrize(("weeks", "written"), [(1, "Duration 1 week"), (10, "Duration 10 weeks")])
def test_the_notes_pdf_writes_the_pain_in_human_words(weeks, written):
    from gateway.referral.document import Urgency as _Urgency
    from gateway.referral.notes_pdf import render_notes_pdf
    from gateway.referral.scrub import ScrubbedPain

    notes = ScrubbedNotes(urgency=_Urgency.ROUTINE, question="Root compression?",
                          pain=ScrubbedPain(intensity=7, duration_weeks=weeks))
    text = " ".join(" ".join(page.extract_text() for page in PdfReader(io.BytesIO(render_notes_pdf(notes))).pages)
                    .split())
    assert re.search(rf"{written}\b", text) and "Pain intensity: 7/10" in text, text
    assert "[Score]" not in text and "7.0" not in text
