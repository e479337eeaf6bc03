"""Pseudonyms are stable and separate: same input → same output, different patients never merge,
and date intervals survive across studies of one patient."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage, generate_uid

from gateway.deid import Deidentifier, PatientContext
from gateway.deid.pseudonym import Pseudonymizer

SECRET = b"consistency-secret-0123456789abcd"
SOURCE = "SITE_A"


def make_instance(patient_id: str, study_uid: str, study_date: str, *, series_uid: str | None = None) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.Modality = "MR"
    ds.PatientName = "DOE^JANE"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700102"
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.AccessionNumber = "ACC" + patient_id[:10]
    ds.SeriesDescription = "SAG T2 TSE"
    return ds


def test_same_dataset_twice_gives_identical_pseudonyms() -> None:
    original = make_instance("P1", generate_uid(), "20240102")
    first = Deidentifier(None, SECRET).deidentify(original, PatientContext(source=SOURCE))
    second = Deidentifier(None, SECRET).deidentify(original, PatientContext(source=SOURCE))
    assert first.dataset.to_json_dict() == second.dataset.to_json_dict()
    assert first.mapping.uids == second.mapping.uids
    assert first.mapping.uids[original.SOPInstanceUID] == first.dataset.SOPInstanceUID


def test_two_instances_of_one_study_share_the_study_pseudonym() -> None:
    study, series = generate_uid(), generate_uid()
    deidentifier = Deidentifier(None, SECRET)
    one = deidentifier.deidentify(make_instance("P1", study, "20240102", series_uid=series), PatientContext(SOURCE))
    two = deidentifier.deidentify(make_instance("P1", study, "20240102", series_uid=series), PatientContext(SOURCE))
    assert one.dataset.StudyInstanceUID == two.dataset.StudyInstanceUID != study
    assert one.dataset.SeriesInstanceUID == two.dataset.SeriesInstanceUID
    assert one.dataset.SOPInstanceUID != two.dataset.SOPInstanceUID
    assert one.dataset.PatientID == two.dataset.PatientID
    assert one.dataset.SeriesDescription == "SAG T2 TSE"  # safe descriptor kept


def test_another_secret_gives_other_pseudonyms() -> None:
    original = make_instance("P1", generate_uid(), "20240102")
    first = Deidentifier(None, SECRET).deidentify(original, PatientContext(SOURCE))
    other = Deidentifier(None, b"x" * 32).deidentify(original, PatientContext(SOURCE))
    assert first.dataset.StudyInstanceUID != other.dataset.StudyInstanceUID
    assert first.dataset.PatientID != other.dataset.PatientID


_IDS = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="\\"),
               min_size=1, max_size=64)


@settings(max_examples=200, deadline=None)
@given(first=_IDS, second=_IDS, source=st.sampled_from(["SITE_A", "SITE_B"]))
def test_different_patients_never_share_a_patient_pseudonym(first: str, second: str, source: str) -> None:
    pseudonyms = Pseudonymizer(SECRET)
    if first != second:
        assert pseudonyms.patient_id(source, first) != pseudonyms.patient_id(source, second)
    assert pseudonyms.patient_id("SITE_A", first) != pseudonyms.patient_id("SITE_B", first)
    offset = pseudonyms.date_offset_days(source, first, -3650, -365)
    assert -3650 <= offset <= -365


@pytest.mark.slow  # hypothesis, many examples: 2 s
@settings(max_examples=100, deadline=None)
@given(original=st.from_regex(r"[12](\.[1-9][0-9]{0,8}){2,12}", fullmatch=True))
def test_uid_pseudonym_is_a_valid_short_uid(original: str) -> None:
    pseudonym = Pseudonymizer(SECRET).uid(original)
    assert len(pseudonym) <= 64
    assert pseudonym.startswith("2.25.") and pseudonym[5:].isdigit() and not pseudonym[5:].startswith("0")
    assert pseudonym == Pseudonymizer(SECRET).uid(original)


def _day(value: str) -> dt.date:
    return dt.datetime.strptime(value, "%Y%m%d").date()


def test_dates_keep_their_intervals_across_two_studies_of_one_patient() -> None:
    deidentifier = Deidentifier(None, SECRET)
    first = deidentifier.deidentify(make_instance("P9", generate_uid(), "20230115"), PatientContext(SOURCE))
    second = deidentifier.deidentify(make_instance("P9", generate_uid(), "20240301"), PatientContext(SOURCE))
    original_gap = _day("20240301") - _day("20230115")
    assert _day(second.dataset.StudyDate) - _day(first.dataset.StudyDate) == original_gap
    assert first.dataset.StudyDate != "20230115"
    assert first.mapping.date_offset_days == second.mapping.date_offset_days != 0
    assert first.dataset.StudyInstanceUID != second.dataset.StudyInstanceUID
    assert first.mapping.accession is not None and first.dataset.AccessionNumber == first.mapping.accession
