"""The one reader of SR content items: the ORU's lines and the portal's lines of the same report differ only
where each caller asks (person names, IMAGE items, dates and UIDs)."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from gateway.reports.content import concept_name, content_items, item_value
from gateway.reports.oru import report_text
from gateway.web.views import sr_lines


def _code(value: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, "99TEST", meaning
    return code


def _item(kind: str, name: str, relationship: str = "CONTAINS", **values: object) -> Dataset:
    item = Dataset()
    item.RelationshipType, item.ValueType = relationship, kind
    item.ConceptNameCodeSequence = Sequence([_code(name.upper(), name)])
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _report() -> Dataset:
    image = Dataset()
    image.ReferencedSOPClassUID, image.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4", "2.25.7"
    finding = _item("TEXT", "Finding", TextValue="Disc extrusion.")
    finding.ContentSequence = Sequence([
        _item("IMAGE", "Key image", "INFERRED FROM", ReferencedSOPSequence=Sequence([image])),
        _item("CODE", "Level", "HAS CONCEPT MOD", ConceptCodeSequence=Sequence([_code("L4", "L4-L5")])),
    ])
    score = Dataset()
    score.NumericValue = "3"
    score.MeasurementUnitsCodeSequence = Sequence([_code("{score}", "score")])
    report = Dataset()
    report.ConceptNameCodeSequence = Sequence([_code("R", "Spine report")])
    report.ContentSequence = Sequence([
        _item("PNAME", "Reader", PersonName="Doe^Jane"),
        finding,
        _item("NUM", "Grade", MeasuredValueSequence=Sequence([score])),
        _item("DATE", "Seen", Date="20261207"),
        _item("UIDREF", "Study", UID="2.25.9"),
    ])
    return report


def test_the_oru_and_the_page_read_the_same_items_each_in_its_style():
    report = _report()
    assert report_text(report) == ["Spine report", "Reader: Doe Jane", "Finding: Disc extrusion.", "Grade: 3",
                                   "Seen: 20261207", "Study: 2.25.9"]
    assert sr_lines(report) == [(0, "Reader", "Doe^Jane"), (0, "Finding", "Disc extrusion."), (0, "Grade", "3"),
                                (0, "Seen", ""), (0, "Study", "")]


def test_the_walk_leaves_out_images_and_concept_modifiers():
    assert [concept_name(item) for _, item in content_items(_report())] == [
        "Reader", "Finding", "Grade", "Seen", "Study"]


def test_the_options_change_only_their_own_value_type():
    report = _report()
    image = report.ContentSequence[1].ContentSequence[0]
    assert item_value(image) == "" and item_value(image, image_label="key image") == "key image"
    name = report.ContentSequence[0]
    assert (item_value(name), item_value(name, plain_names=True)) == ("Doe^Jane", "Doe Jane")
    date = report.ContentSequence[3]
    assert (item_value(date), item_value(date, dates_and_uids=True)) == ("", "20261207")
    text = report.ContentSequence[1]
    assert {item_value(text, plain_names=flag, dates_and_uids=flag, image_label="x") for flag in (False, True)} == {
        "Disc extrusion."}
