"""The outbound guard on the notes objects, with everything the node holds for the case (issue 17's defects).

The notes SR and PDF are built by the node's own builders from notes that were NOT scrubbed (as if the
scrubber had missed), and checked by ``find_leaks`` with the case's ``IdentifierSet``, built from an
original header the way the de-identification stage keeps it (``header_values``).
"""

from __future__ import annotations

import datetime as dt
import io

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfgen import canvas

from gateway.deid.guard import find_leaks
from gateway.privacy.identifiers import IdentifierSet, from_header, header_values
from gateway.privacy.words import is_common
from gateway.referral.codes import RedFlag
from gateway.referral.document import Urgency
from gateway.referral.notes_pdf import NotesPDFBuilder
from gateway.referral.notes_sr import NotesSRBuilder
from gateway.referral.redflags import FlagFinding
from gateway.referral.scrub import ScrubbedNotes


def _evidence() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = generate_uid(prefix=None)
    ds.StudyInstanceUID = generate_uid(prefix=None)
    ds.SeriesInstanceUID = generate_uid(prefix=None)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "PSEUDO^P7F3A2", "PSN-7F3A2C", "", "F"
    ds.AccessionNumber, ds.StudyID, ds.StudyDate, ds.StudyTime = "PACC-0042", "1", "20240404", "101500"
    ds.ReferringPhysicianName, ds.Modality = "", "MR"
    return ds


def _original(**values: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def _held(**values: str) -> IdentifierSet:
    return from_header(header_values(_original(**values)))


def _notes(history: str, *, phrase: str | None = None) -> ScrubbedNotes:
    flags = (FlagFinding(RedFlag.NIGHT_OR_REST_PAIN, True, True, phrase),) if phrase else ()
    return ScrubbedNotes(urgency=Urgency.ROUTINE, flags=flags, history=history, question="L4-L5 disc herniation?")


def _leak_paths(notes: ScrubbedNotes, identifiers: IdentifierSet) -> dict[str, set[str]]:
    evidence = _evidence()
    return {"sr": {leak.path for leak in find_leaks(NotesSRBuilder(evidence, notes).build(), identifiers)},
            "pdf": {leak.path for leak in find_leaks(NotesPDFBuilder(evidence, notes).build(), identifiers)}}


def test_the_pdf_is_searched_in_its_extracted_text():
    paths = _leak_paths(_notes("Mrs Hargreaves has low back pain."), _held(PatientName="HARGREAVES^ELEANOR"))
    assert paths["pdf"] == {"EncapsulatedDocument/pdf-text"}
    assert any(path.endswith("TextValue") for path in paths["sr"])


def test_the_red_flag_table_only_the_pdf_carries_is_searched():
    paths = _leak_paths(_notes("Low back pain.", phrase="pain at night, says Hargreaves"),
                        _held(PatientName="HARGREAVES^ELEANOR"))
    assert paths == {"sr": set(), "pdf": {"EncapsulatedDocument/pdf-text"}}


@pytest.mark.parametrize(("header", "text"), [
    ("STRAUß^ANNA", "Frau Strauss reports pain."),
    ("STRAUSS^ANNA", "Frau Strauß reports pain."),
    ("DVOŘÁK^PAVEL", "Mr Dvorak reports pain."),
    ("MÜLLER^KLAUS", "Herr Mueller reports pain."),
    ("ÑÚÑEZ^JOSÉ", "Mr NUNEZ reports pain."),
    ("O'BRIEN^SEAN", "Mr OBrien reports pain."),
    ("SMITH-HARGREAVES^ROSE", "Mrs Hargreaves reports pain."),
    ("SMITH-HARGREAVES^ROSE", "Mrs Smith Hargreaves reports pain."),
    ("WANG^WEI=王^伟=ワン^ウェイ", "Wang Wei reports pain."),
])
def test_names_are_found_folded_transliterated_by_part_and_by_group(header, text):
    paths = _leak_paths(_notes(text), _held(PatientName=header))
    assert paths["pdf"] and paths["sr"], paths


def _pdf_with(text: str, font: str) -> Dataset:
    """The notes PDF object, its document replaced by one page of ``text`` in a CJK font (reportlab's CID
    fonts; the notes' own font may not draw these letters)."""
    pdfmetrics.registerFont(UnicodeCIDFont(font))
    buffer = io.BytesIO()
    page = canvas.Canvas(buffer)
    page.setFont(font, 12)
    page.drawString(50, 700, text)
    page.save()
    dataset = NotesPDFBuilder(_evidence(), _notes("Low back pain.")).build()
    document = buffer.getvalue() + (b"\x00" if len(buffer.getvalue()) % 2 else b"")
    dataset.EncapsulatedDocument = document
    dataset.EncapsulatedDocumentLength = len(buffer.getvalue())
    return dataset


@pytest.mark.parametrize(("text", "font"), [("患者王伟，腰痛。", "STSong-Light"),
                                            ("ワン・ウェイさん、腰痛。", "HeiseiMin-W3"),
                                            ("患者王 伟", "STSong-Light")])
def test_ideographic_and_phonetic_name_groups_are_found_in_the_sr_and_the_pdf_text(text, font):
    identifiers = _held(PatientName="WANG^WEI=王^伟=ワン^ウェイ")
    sr = NotesSRBuilder(_evidence(), _notes(text)).build()
    assert any(leak.kind == "patient name" for leak in find_leaks(sr, identifiers))
    assert [leak.path for leak in find_leaks(_pdf_with(text, font), identifiers)] == [
        "EncapsulatedDocument/pdf-text"]
    assert find_leaks(_pdf_with("腰痛。", font), identifiers) == []


def test_a_common_half_of_a_double_barrelled_name_is_not_searched_alone():
    identifiers = _held(PatientName="SMITH-HARGREAVES^ROSE")
    assert _leak_paths(_notes("Smith's fracture excluded."), identifiers) == {"sr": set(), "pdf": set()}


BIRTH = dt.date(1971, 3, 5)
BIRTH_FORMS = ["1971-03-05", "19710305", "05/03/1971", "5/3/1971", "03/05/1971", "3/5/71", "5.3.71", "05.03.1971",
               "05-03-71", "1971/03/05", "5 March 1971", "5th of March 1971", "March 5, 1971", "Mar 5th 1971",
               "05-Mar-1971", "5-MAR-71", "5. März 1971", "5. Maerz 1971"]


@pytest.mark.parametrize("written", BIRTH_FORMS)
def test_the_birth_date_is_found_in_every_common_form(written):
    paths = _leak_paths(_notes(f"Born {written}; pain for 10 weeks."), _held(PatientBirthDate="19710305"))
    assert paths["sr"] and paths["pdf"], written


@pytest.mark.parametrize("written", ["15/03/1971", "1971", "5/3/1972", "March 1971", "25.3.71", "L5/S1 3/5"])
def test_other_dates_and_numbers_are_not_the_birth_date(written):
    assert IdentifierSet(birth_dates=(BIRTH,)).kinds_found(written) == []


@pytest.mark.parametrize(("keyword", "value", "text"), [
    ("PatientBirthName", "PEMBERTON^ELEANOR", "née Pemberton"),
    ("PatientMotherBirthName", "OKONKWO^GRACE", "her mother Grace Okonkwo"),
    ("PatientAddress", "14 Wychwood Crescent, Thrapston NN14 4QT", "lives in Thrapston"),
    ("PatientAddress", "14 Wychwood Crescent, Thrapston NN14 4QT", "lives at 14 Wychwood Crescent"),
    ("PatientAddress", "14 Wychwood Crescent, Thrapston NN14 4QT", "postcode NN144QT"),
    ("PatientTelephoneNumbers", "+44 1832 736415", "call 01832 736 415"),
    ("PatientTelecomInformation", "eleanor.h@mail.example", "mail eleanor.h@mail.example"),
    ("OtherPatientIDs", "NHS9434765919", "NHS 9434765919"),
    ("InstitutionalDepartmentName", "Brackenfield Spinal Unit", "seen at Brackenfield"),
    ("OperatorsName", "QUARMBY^DELIA", "scanned by Delia Quarmby"),
])
def test_every_held_identifier_is_searched(keyword, value, text):
    paths = _leak_paths(_notes(f"Back pain; {text}."), _held(**{keyword: value}))
    assert paths["sr"] and paths["pdf"], (keyword, text)


@pytest.mark.parametrize(("names", "text"), [
    ({"PatientName": "WEEKS^THOMAS"}, "Pain for 12 weeks, no improvement after 6 weeks."),
    ({"PatientName": "PRIOR^JOHN"}, "Prior treatment: physiotherapy; prior imaging normal."),
    ({"ReferringPhysicianName": "LONG^SARAH^^MISS"}, "Did not miss work; long-standing pain."),
    ({"ReferringPhysicianName": "HAND^ANNA^^PROFESSOR"}, "Hand weakness; seen by a professor."),
    ({"PatientName": "POWER^MARY"}, "Power 4/5 in ankle dorsiflexion; X-ray normal."),
    ({"PatientName": "BROWN^ALICE"}, "Brown-Séquard pattern excluded."),
    ({"InstitutionalDepartmentName": "Radiology"}, "Radiology report attached."),
])
def test_ordinary_words_are_not_leaks(names, text):
    paths = _leak_paths(_notes(text, phrase="no improvement after 6 weeks"), _held(**names))
    assert paths == {"sr": set(), "pdf": set()}


@pytest.mark.parametrize(("names", "text"), [
    ({"PatientName": "WEEKS^THOMAS"}, "Mr Weeks has pain."),
    ({"PatientName": "PRIOR^JOHN"}, "John Prior has pain."),
    ({"ReferringPhysicianName": "LONG^SARAH^^MISS"}, "Referred by Miss Long."),
    ({"ReferringPhysicianName": "HAND^ANNA^^PROFESSOR"}, "Referred by Prof. Hand."),
    ({"ReferringPhysicianName": "HAND^ANNA^^PROFESSOR"}, "Referred by Hand, Anna."),
])
def test_a_common_surname_is_still_found_as_a_name(names, text):
    paths = _leak_paths(_notes(text), _held(**names))
    assert paths["sr"] and paths["pdf"]


def test_common_and_clinical_words_are_told_from_distinctive_ones():
    assert all(is_common(w) for w in ["Long", "Hand", "Power", "Brown", "weeks", "Prior", "Miss", "Professor",
                                      "walker", "Babinski", "Radiology"])
    assert not any(is_common(w) for w in ["Kettering", "Hargreaves", "Thrapston", "Okonkwo", "Pemberton"])


def test_a_source_or_institution_of_common_words_is_not_searched_as_a_phrase():
    identifiers = IdentifierSet(sources=("hospital-a", "PACS"), institutions=("General Hospital",))
    assert identifiers.kinds_found("Admitted to hospital a week ago; general hospital; images on PACS.") == []
    assert IdentifierSet(sources=("st-marys", "KGH_PACS")).kinds_found("sent from KGH") == ["source"]
