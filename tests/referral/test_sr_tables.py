"""highdicom's table of module attributes read a module at a time (``gateway.referral.sr_tables``): the hook is in
effect on the real highdicom, gives the same lists as highdicom's own loader, and the same notes SR; a highdicom
of another shape keeps its own loader."""

from __future__ import annotations

import json
from copy import deepcopy

import highdicom._standard_utils
import highdicom.base
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from gateway.referral import sr_tables
from gateway.referral.document import Urgency
from gateway.referral.notes_sr import build_notes_sr
from gateway.referral.scrub import ScrubbedNotes, ScrubbedPain
from gateway.referral.sr_tables import ModuleAttributeTable, install_module_table, missing_hook_points

#: Attributes that carry the time of building, different between two builds.
_BUILD_TIME = ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime", "ContributionDateTime")


@pytest.fixture(scope="module")
def stock_table() -> dict[str, list]:
    return json.loads(sr_tables._table_path().read_text(encoding="utf-8"))


def _notes() -> ScrubbedNotes:
    return ScrubbedNotes(urgency=Urgency.URGENT, history="L4-L5 disc disease.", question="Root compression?",
                         pain=ScrubbedPain(location="left calf", intensity=7, duration_weeks=10))


def _without_build_time(dataset: Dataset) -> Dataset:
    copy = deepcopy(dataset)

    def drop(item: Dataset, element: DataElement) -> None:
        if element.keyword in _BUILD_TIME:
            del item[element.tag]

    copy.walk(drop)
    return copy


def test_the_hook_is_in_effect_on_the_real_highdicom(deidentified_image):
    assert missing_hook_points() == []
    assert install_module_table().installed
    table = highdicom._standard_utils.get_module_attribute_map()
    assert isinstance(table, ModuleAttributeTable)
    assert highdicom.base.get_module_attribute_map() is table
    assert sr_tables._stock_loader.cache_info().currsize == 0

    build_notes_sr(deidentified_image, _notes())
    assert sr_tables._stock_loader.cache_info().currsize == 0  # highdicom never read its whole table
    assert 0 < table._module.cache_info().currsize < 40  # only the modules the SR needed were parsed


@pytest.mark.slow  # parses highdicom's whole table twice: 4 s
def test_every_module_reads_as_highdicom_reads_it(stock_table):
    table = ModuleAttributeTable(sr_tables._table_path())
    assert list(table) == list(stock_table) and len(table) == len(stock_table)
    for key, attributes in stock_table.items():
        assert table[key] == attributes, key
    assert "no-such-module" not in table
    with pytest.raises(KeyError):
        table["no-such-module"]


@pytest.mark.parametrize("chunk_bytes", [pytest.param(7, marks=pytest.mark.slow), 100, 4096])  # 7: 10 s
def test_the_index_is_the_same_whatever_the_chunk_size(chunk_bytes):
    path = sr_tables._table_path()
    assert ModuleAttributeTable(path, chunk_bytes)._starts == ModuleAttributeTable(path)._starts


@pytest.mark.slow  # builds the SR with highdicom's whole table: 2 s
def test_the_notes_sr_is_the_same_as_with_highdicom_own_table(deidentified_image, monkeypatch):
    install_module_table()
    lazy = build_notes_sr(deidentified_image, _notes(), series_instance_uid="2.25.1", sop_instance_uid="2.25.2")
    for module in (highdicom._standard_utils, highdicom.base):
        monkeypatch.setattr(module, "get_module_attribute_map", sr_tables._stock_loader)
    try:
        stock = build_notes_sr(deidentified_image, _notes(), series_instance_uid="2.25.1", sop_instance_uid="2.25.2")
        assert sr_tables._stock_loader.cache_info().currsize == 1
    finally:
        sr_tables._stock_loader.cache_clear()
    assert _without_build_time(lazy) == _without_build_time(stock)
    assert "PatientName" in lazy and "StudyID" in lazy and "ContentDate" in lazy


def test_a_highdicom_of_another_shape_keeps_its_own_table(monkeypatch):
    def copy_without_the_table(self, dataset, ie, module=None):  # a highdicom that no longer reads it there
        return None

    monkeypatch.setattr(highdicom.base.SOPClass, "_copy_root_attributes_of_module", copy_without_the_table)
    assert missing_hook_points() == ["base.SOPClass._copy_root_attributes_of_module"]
    found = sr_tables._check_and_install()
    assert not found.installed and found.missing == ("base.SOPClass._copy_root_attributes_of_module",)
