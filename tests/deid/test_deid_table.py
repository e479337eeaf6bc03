"""Table-driven test: every attribute of PS3.15 Table E.1-1 that pydicom knows, at top level and in a
nested sequence item, carries a unique marker; after de-identification each ended as its action says
and no removed or replaced marker survives anywhere, in the dataset or its re-encoded bytes."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from dataclasses import dataclass
from importlib import resources

import pytest
from pydicom import config, dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from gateway.deid import Deidentifier, DeidOptions, PatientContext
from gateway.deid.actions import resolve_combined

SECRET = b"table-test-secret-0123456789abcdef"
CASE_LABEL = "CASE0007"
SOURCE = "TEST_SITE"
CONTAINER = 0x00081115  # Referenced Series Sequence: not in the table, so kept and walked into
UID_PREFIX = "1.2.826.0.1.3680043.10.999."
MARKER_RE = re.compile(rb"MKR\d{5}", re.IGNORECASE)
OPTION_COLUMNS = {
    "retain_safe_private": "rtn_safe_priv",
    "retain_uids": "rtn_uids",
    "retain_device_id": "rtn_dev_id",
    "retain_institution_id": "rtn_inst_id",
    "retain_patient_characteristics": "rtn_pat_chars",
    "retain_longitudinal_modified_dates": "rtn_long_modif_dates",
    "clean_descriptors": "clean_desc",
    "clean_structured_content": "clean_struct_cont",
    "clean_graphics": "clean_graph",
}
PATTERN_ELEMENTS = {  # concrete elements standing for the pattern rows
    "50xx,xxxx": [(0x50003000, "OB"), (0x50002500, "LO")],
    "60xx,3000": [(0x60003000, "OW")],
    "60xx,4000": [(0x60004000, "LT")],
}
SPECIAL = {0x00100010, 0x00100020, 0x00080050}  # name, ID, accession: pseudonyms, checked apart


def _table() -> list[dict[str, str]]:
    text = resources.files("gateway.deid").joinpath("annex_e.csv").read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))


@dataclass
class Planted:
    """One marked element: its row, VR and marker value; ``inner`` is the marker inside an SQ item."""

    row: dict[str, str]
    tag: int
    vr: str
    value: object
    inner: str | None = None


class MarkerFactory:
    def __init__(self) -> None:
        self.count = 0
        self.days = 0

    def text(self) -> str:
        self.count += 1
        return f"MKR{self.count:05d}"

    def value(self, vr: str) -> tuple[object, str | None]:
        if vr in ("AE", "CS", "SH", "LO", "LT", "ST", "UT", "UC", "PN", "UR"):
            return self.text(), None
        if vr in ("DA", "DT"):
            self.days += 1
            day = (dt.date(2001, 1, 1) + dt.timedelta(days=self.days)).strftime("%Y%m%d")
            return (day if vr == "DA" else day + "101010"), None
        self.count += 1
        if vr == "TM":
            seconds = 36000 + self.count
            return f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}", None
        if vr == "UI":
            return f"{UID_PREFIX}{10000 + self.count}", None
        if vr == "AS":
            return f"{self.count % 1000:03d}Y", None
        if vr == "IS":
            return str(100000 + self.count), None
        if vr == "DS":
            return f"{self.count}.5", None
        if vr in ("US", "SS", "UL", "SL", "UV", "SV"):
            return 1000 + self.count, None
        if vr in ("FL", "FD"):
            return self.count + 0.25, None
        if vr == "SQ":
            inner = self.text()
            item = Dataset()
            item.CodeMeaning = inner
            return Sequence([item]), inner
        return f"MKR{self.count:05d}".encode("ascii"), None  # OB, OW, UN, OD, OF, OL, OV


def _plant(target: Dataset, factory: MarkerFactory) -> list[Planted]:
    planted: list[Planted] = []
    for row in _table():
        if row["tag"] in PATTERN_ELEMENTS:
            elements = PATTERN_ELEMENTS[row["tag"]]
        elif row["tag"].startswith("gggg"):
            continue  # private tags are planted by _plant_private
        else:
            tag = int(row["tag"].replace(",", ""), 16)
            if tag >> 16 in (0x0000, 0x0002):
                continue  # command and file meta groups cannot live in a dataset
            try:
                elements = [(tag, dictionary_VR(tag).split(" or ")[0])]
            except KeyError:
                continue  # not in pydicom's dictionary
        for tag, vr in elements:
            value, inner = factory.value(vr)
            target.add_new(tag, vr, value)
            planted.append(Planted(row, tag, vr, value, inner))
    return planted


def _plant_private(target: Dataset, factory: MarkerFactory) -> list[str]:
    markers = [factory.text() for _ in range(5)]
    target.add_new(0x00090010, "LO", markers[0])
    target.add_new(0x00091001, "LO", markers[1])
    target.add_new(0x00091002, "UN", markers[2].encode("ascii"))
    target.add_new(0x00110010, "LO", markers[3])
    item = Dataset()
    item.CodeMeaning = markers[4]
    target.add_new(0x00111001, "SQ", Sequence([item]))
    return markers


def build_marked_dataset() -> tuple[Dataset, list[Planted], list[Planted], list[str]]:
    factory = MarkerFactory()
    ds = Dataset()
    top = _plant(ds, factory)
    private = _plant_private(ds, factory)
    nested_item = Dataset()
    nested = _plant(nested_item, factory)
    private += _plant_private(nested_item, factory)
    ds.add_new(CONTAINER, "SQ", Sequence([nested_item]))
    ds.SOPClassUID = MRImageStorage
    ds.Modality = "MR"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationVersionName = factory.text()
    ds.file_meta.SourceApplicationEntityTitle = factory.text()
    ds.file_meta.SendingApplicationEntityTitle = factory.text()
    return ds, top, nested, private


def expected_code(row: dict[str, str], options: DeidOptions, tag: int) -> str:
    """K, C-date, C or a resolved basic action (X, Z, D, U), computed from the CSV row alone."""
    switches = options.model_dump()
    codes = {column: row[column] for field, column in OPTION_COLUMNS.items() if switches[field] and row[column]}
    if "K" in codes.values():
        return "K"
    if codes.get("rtn_long_modif_dates") == "C":
        return "C-date"
    if "C" in codes.values():
        return "C"
    return resolve_combined(tag, row["basic"]).value


def _is_empty(value: object) -> bool:
    return value is None or value == "" or value == b"" or (isinstance(value, (list, Sequence)) and len(value) == 0)


def _shifted(value: str, days: int) -> str:
    day = dt.datetime.strptime(value[:8], "%Y%m%d").date() + dt.timedelta(days=days)
    return day.strftime("%Y%m%d") + value[8:]


def check_element(out: Dataset, planted: Planted, code: str, deidentifier: Deidentifier,
                  offset: int | None) -> set[str]:
    """Assert the fate of one planted element; return the markers allowed to survive because of it."""
    where = f"{planted.row['tag']} {planted.row['name']} ({code})"
    present = planted.tag in out
    value = out[planted.tag].value if present else None
    if code in ("C", "C-date") and planted.vr not in ("SQ", "DA", "DT", "TM"):
        code = resolve_combined(planted.tag, planted.row["basic"]).value  # markers are never safe words
    if code == "C-date" and planted.vr == "TM":
        code = "K"
    if code == "X":
        assert not present, where
    elif code == "Z":
        assert present and _is_empty(value), where
    elif code == "D":
        assert present and not _is_empty(value) and value != planted.value, where
        if planted.vr == "UI":
            assert str(value).startswith("2.25."), where
    elif code == "K":
        assert present and value == planted.value, where
    elif code == "U" and planted.vr == "UI":
        assert value == deidentifier.uid_pseudonym(str(planted.value)), where
    elif code == "C-date":
        assert offset is not None and value == _shifted(str(planted.value), offset), where
    else:  # a sequence that is cleaned, kept with its UIDs replaced, or kept: walked into, items kept
        assert present and planted.vr == "SQ" and len(value) == 1, where
    if planted.vr == "SQ" and present and len(value) == 1 and "CodeMeaning" in value[0]:
        return {value[0].CodeMeaning}
    return {str(value)} if code == "K" and isinstance(planted.value, str) else set()


@pytest.fixture(autouse=True)
def strict_dicom(monkeypatch: pytest.MonkeyPatch) -> None:
    """Values that are invalid for their VR raise, on reading and on writing."""
    monkeypatch.setattr(config.settings, "reading_validation_mode", config.RAISE)
    monkeypatch.setattr(config.settings, "writing_validation_mode", config.RAISE)


OPTION_CASES = [pytest.param(DeidOptions(), id="defaults")] + [
    pytest.param(DeidOptions(**{name: not DeidOptions.model_fields[name].default}), id=f"{name}-flipped")
    for name in OPTION_COLUMNS
]


@pytest.mark.parametrize("options", OPTION_CASES)
def test_every_table_attribute_ends_as_its_action_says(options: DeidOptions) -> None:
    original, top, nested, private_markers = build_marked_dataset()
    deidentifier = Deidentifier(options, SECRET)
    result = deidentifier.deidentify(original, PatientContext(source=SOURCE, case_label=CASE_LABEL))
    buffer = io.BytesIO()
    dcmwrite(buffer, result.dataset, enforce_file_format=True)
    out = dcmread(io.BytesIO(buffer.getvalue()))
    offset = result.mapping.date_offset_days

    allowed: set[str] = set()
    for container, planted_list in ((out, top), (out[CONTAINER].value[0], nested)):
        for planted in planted_list:
            if planted.tag in SPECIAL:
                continue
            code = expected_code(planted.row, options, planted.tag)
            allowed |= check_element(container, planted, code, deidentifier, offset)
        assert container.PatientName == f"SPINEGW^{CASE_LABEL}"
        assert container.PatientID == deidentifier.patient_pseudonym(SOURCE, str(original.PatientID))
        assert container.AccessionNumber not in ("", original.AccessionNumber)
        assert not any(tag.is_private for tag in container.keys())

    encoded = buffer.getvalue()
    survivors = {match.decode() for match in MARKER_RE.findall(encoded)}
    assert survivors <= allowed, sorted(survivors - allowed)
    assert not set(private_markers) & survivors
    for planted in top + nested:
        if isinstance(planted.value, str) and planted.vr in ("UI", "DA", "DT") and planted.value not in allowed:
            assert planted.value.encode() not in encoded, planted.row["name"]


@pytest.mark.parametrize("options", OPTION_CASES)
def test_method_attributes_and_file_meta(options: DeidOptions) -> None:
    original, *_ = build_marked_dataset()
    result = Deidentifier(options, SECRET).deidentify(original, PatientContext(source=SOURCE, case_label=CASE_LABEL))
    out = result.dataset
    codes = [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    expected = ["113100"] + [
        code
        for field, code in [
            ("clean_graphics", "113103"),
            ("clean_structured_content", "113104"),
            ("clean_descriptors", "113105"),
            ("retain_longitudinal_modified_dates", "113107"),
            ("retain_patient_characteristics", "113108"),
            ("retain_device_id", "113109"),
            ("retain_uids", "113110"),
            ("retain_safe_private", "113111"),
            ("retain_institution_id", "113112"),
        ]
        if getattr(options, field)
    ]
    assert codes == expected
    assert all(item.CodingSchemeDesignator == "DCM" for item in out.DeidentificationMethodCodeSequence)
    assert out.PatientIdentityRemoved == "YES"
    assert len(out.DeidentificationMethod) == len(expected)
    modified = "MODIFIED" if options.retain_longitudinal_modified_dates else "REMOVED"
    assert out.LongitudinalTemporalInformationModified == modified
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.file_meta.ImplementationVersionName == "SPINEGW_0_1"
    assert out.file_meta.SourceApplicationEntityTitle == "SPINEGW"
    assert "SendingApplicationEntityTitle" not in out.file_meta


def test_allowlisted_private_tag_is_kept_only_under_retain_safe_private() -> None:
    from gateway.deid import PrivateTagRule

    original, *_ = build_marked_dataset()
    rule = PrivateTagRule(creator=str(original[0x00090010].value), group=0x0009, element_offset=0x01)
    kept = Deidentifier(DeidOptions(retain_safe_private=True, private_allowlist=(rule,)), SECRET).deidentify(
        original, PatientContext(source=SOURCE)
    )
    assert kept.dataset[0x00091001].value == original[0x00091001].value
    assert 0x00090010 in kept.dataset and 0x00091002 not in kept.dataset and 0x00110010 not in kept.dataset
    removed = Deidentifier(DeidOptions(private_allowlist=(rule,)), SECRET).deidentify(
        original, PatientContext(source=SOURCE)
    )
    assert not any(tag.is_private for tag in removed.dataset.keys())


def test_original_dataset_is_left_untouched() -> None:
    original, *_ = build_marked_dataset()
    before = original.to_json()
    Deidentifier(None, SECRET).deidentify(original, PatientContext(source=SOURCE))
    assert original.to_json() == before
