"""The outbound guard reports where an identifier is, never what it is."""

from __future__ import annotations

import datetime as dt

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import MRImageStorage

from gateway.deid import (
    Deidentifier,
    IdentifierLeakError,
    PatientContext,
    PatientIdentifiers,
    assert_no_leaks,
    find_leaks,
    identifiers_from_dataset,
)

IDENTIFIERS = PatientIdentifiers(
    name_parts=("Kowalczyk", "Agnieszka"),
    patient_ids=("MRN778812",),
    accession_numbers=("ACC55102",),
    birth_dates=(dt.date(1961, 3, 9),),
    institution_names=("St Elsewhere Hospital",),
    referring_physician_name_parts=("Blumenthal",),
    uids=("1.2.826.0.1.3680043.8.498.1234567",),
)


def clean_dataset() -> Dataset:
    ds = Dataset()
    ds.PatientName = "SPINEGW^CASE1"
    ds.PatientID = "SPGW0011223344556677"
    ds.StudyDescription = "MR LUMBAR SPINE"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.12345678"  # the original UID is only a prefix
    item = Dataset()
    item.StudyDescription = "AX T2"
    ds.ReferencedStudySequence = Sequence([item])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.ImplementationVersionName = "SPINEGW_0_1"
    return ds


def test_clean_dataset_has_no_leaks() -> None:
    assert find_leaks(clean_dataset(), IDENTIFIERS) == []
    assert_no_leaks(clean_dataset(), IDENTIFIERS)


def test_identifier_in_nested_sequence_is_reported_by_path() -> None:
    ds = clean_dataset()
    ds.ReferencedStudySequence[0].StudyDescription = "follow-up for kowalczyk"
    leaks = find_leaks(ds, IDENTIFIERS)
    assert [(leak.path, leak.kind) for leak in leaks] == [
        ("ReferencedStudySequence[0].StudyDescription", "patient name")]


def test_identifier_in_private_tag_bytes_is_reported_by_tag() -> None:
    ds = clean_dataset()
    ds.add_new(0x00090010, "LO", "ACME 1.0")
    ds.add_new(0x00091001, "UN", b"\x01\x02born 09.03.1961\x00")
    with pytest.raises(IdentifierLeakError) as raised:
        assert_no_leaks(ds, IDENTIFIERS)
    assert raised.value.paths == ["(0009,1001)"]
    assert "1961" not in str(raised.value) and "09.03" not in str(raised.value)


@pytest.mark.parametrize(
    ("keyword", "value", "kind"),
    [
        ("StudyDescription", "ref mrn778812", "patient id"),
        ("StudyComments", "accession ACC55102 linked", "accession number"),
        ("ImageComments", "DOB 1961-03-09", "birth date"),
        ("ImageComments", "DOB 09/03/1961", "birth date"),
        ("ImageComments", "DOB 19610309", "birth date"),
        ("InstitutionAddress", "ST ELSEWHERE  hospital, ward 3", "institution name"),
        ("PerformingPhysicianName", "BLUMENTHAL^D", "referring physician name"),
        ("StudyInstanceUID", "1.2.826.0.1.3680043.8.498.1234567", "uid"),
    ],
)
def test_each_identifier_kind_is_found(keyword: str, value: str, kind: str) -> None:
    ds = clean_dataset()
    setattr(ds, keyword, value)
    assert [(leak.path, leak.kind) for leak in find_leaks(ds, IDENTIFIERS)] == [(keyword, kind)]


def test_file_meta_is_searched() -> None:
    ds = clean_dataset()
    ds.file_meta.SourceApplicationEntityTitle = "ELSEWHERE_MRN778812"[-9:]
    assert [leak.path for leak in find_leaks(ds, IDENTIFIERS)] == ["file_meta.SourceApplicationEntityTitle"]


def test_name_parts_are_word_bounded() -> None:
    ds = clean_dataset()
    ds.StudyDescription = "KOWALCZYKOWA"  # a longer word is not the name
    assert find_leaks(ds, IDENTIFIERS) == []


def test_deidentified_output_passes_the_guard_built_from_the_original() -> None:
    original = clean_dataset()
    original.SOPClassUID = MRImageStorage
    original.PatientName = "Kowalczyk^Agnieszka"
    original.PatientID = "MRN778812"
    original.PatientBirthDate = "19610309"
    original.InstitutionName = "St Elsewhere Hospital"
    original.ReferringPhysicianName = "Blumenthal^Dora"
    original.ReferencedStudySequence[0].ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.99"
    identifiers = identifiers_from_dataset(original)
    assert find_leaks(original, identifiers)  # the original is full of them
    result = Deidentifier(None, b"g" * 32).deidentify(original, PatientContext(source="SITE"))
    assert_no_leaks(result.dataset, identifiers)
