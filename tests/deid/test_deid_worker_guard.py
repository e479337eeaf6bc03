"""The de-identification worker's guard, made cheaper per instance (issue 29) and no weaker.

- UIDs are matched by the runs of digits and dots of a text instead of a pattern compiled per instance: the same
  answer as the bounded pattern, malformed UIDs included;
- the instance's identifiers are searched for in the texts read back from the encoded object (one read for the
  leak check and the texts given to the notes stage's check), reported as ``find_leaks`` reports them, and the
  object is read back whole: an element after the pixel data is searched too.
"""

from __future__ import annotations

import itertools
import re

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from gateway.deid import work
from gateway.deid.guard import (
    PatientIdentifiers,
    _bounded,
    _UidMatcher,
    find_leaks,
    find_leaks_in_texts,
    identifiers_from_dataset,
    searchable_values,
)
from gateway.deid.options import DeidOptions, PrivateTagRule
from gateway.demo import DemoPatient, write_demo_study

UIDS = ("1.2.3", "1.2.3.4", "1.2.840.99.7", "1.2.A", "1.2.3 ")  # the last two malformed: searched by pattern
PIECES = ("", "1.2.3", "1.2.3.4", "1.2.34", "1.2.840.99.7", "x", " ", "\\", ".", "9", "1.2.a", "1.2.A", "1.2.3 ")


@pytest.mark.parametrize("uids", [UIDS[:1], UIDS[:3], UIDS, UIDS[3:]])
def test_the_uid_matcher_answers_as_the_bounded_pattern(uids):
    pattern = _bounded([re.escape(v) for v in uids if v.strip()], "[0-9.]")
    matcher = _UidMatcher(uids)
    texts = ["".join(parts) for parts in itertools.product(PIECES, repeat=3)]
    disagreements = [t for t in texts if matcher.search(t) != (pattern is not None and bool(pattern.search(t)))]
    assert not disagreements, disagreements[:5]
    assert any(matcher.search(t) for t in texts)


def _identified() -> Dataset:
    ds = Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.ImplementationVersionName = "MRN0099887"
    ds.PatientName, ds.PatientID, ds.SOPInstanceUID = "HARGREAVES^ELEANOR", "MRN0099887", "1.2.826.0.1.77.5"
    item = Dataset()
    item.StudyDescription = "lumbar spine for Hargreaves"
    item.ReferencedSOPInstanceUID = "1.2.826.0.1.77.5"
    ds.ReferencedStudySequence = Sequence([item])
    ds.add_new(0x00090010, "LO", "ACME")
    ds.add_new(0x00091001, "LO", "id MRN0099887")
    return ds


def test_the_leaks_in_the_texts_are_those_find_leaks_reports():
    dataset = _identified()
    identifiers = identifiers_from_dataset(dataset)
    expected = find_leaks(dataset, identifiers)
    assert {leak.kind for leak in expected} >= {"patient name", "patient id", "uid"}
    assert find_leaks_in_texts(searchable_values(dataset, pdf=False), identifiers) == expected
    assert find_leaks_in_texts(searchable_values(dataset), PatientIdentifiers()) == []


@pytest.fixture(scope="module")
def with_trailing_private(tmp_path_factory) -> str:
    """A demo MR holding its patient ID in a private element after the pixel data, (7FE1,1001), which the
    options below allow to stay (Retain Safe Private): the worker's guard must find it in what it encoded."""
    folder = tmp_path_factory.mktemp("trailing")
    path = write_demo_study(folder, 1, seed=5)[0]
    dataset = pydicom.dcmread(path)
    dataset.add_new(0x7FE10010, "LO", "SPINETEST")
    dataset.add_new(0x7FE11001, "LO", f"kept {DemoPatient().patient_id}")
    dataset.save_as(path, enforce_file_format=True)
    return str(path)


def test_an_identifier_after_the_pixel_data_is_found_in_the_encoded_object(with_trailing_private):
    options = DeidOptions(retain_safe_private=True,
                          private_allowlist=[PrivateTagRule(creator="SPINETEST", group=0x7FE1, element_offset=0x01)])
    work.init_worker(options.model_dump_json(), b"s" * 32)
    try:
        result = work.deidentify_file(with_trailing_private, "st-marys", "C0001")
    finally:
        work.init_worker(DeidOptions().model_dump_json(), b"s" * 32)
    assert result.leak_paths == ["(7FE1,1001) (patient id)"] and not result.data


def test_a_clean_instance_leaves_with_its_texts_for_the_notes_check(with_trailing_private):
    work.init_worker(DeidOptions().model_dump_json(), b"s" * 32)
    result = work.deidentify_file(with_trailing_private, "st-marys", "C0001")
    assert result.data and not result.leak_paths
    texts = dict((path, text) for path, text in result.text_values or [])
    assert texts["PatientName"] == "SPINEGW^C0001"
    assert not any(DemoPatient().patient_id in text for text in texts.values())
