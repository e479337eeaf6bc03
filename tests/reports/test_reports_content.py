"""The one reader of SR content items: the ORU's lines and the portal's lines of the same report differ only
where each caller asks (person names, IMAGE items, dates and UIDs)."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from gateway.reports.content import concept_name, content_items, human_concept_name, human_quantity, item_value
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


def test_numbers_and_units_as_people_read_them():
    assert [human_quantity(v, u) for v, u in (("10.0", "wk"), ("1", "wk"), ("7.0", "{score}"), ("2.50", "cm"),
                                              ("3", "d"), ("6", "mo"), ("45", "a"), ("2", "yr"), ("1.5", "h"),
                                              ("20", "min"), ("8.0", "mm"), ("500", "mg"), ("30.0", "%"),
                                              ("4", "kg"), ("1E+1", "d"))] == [
        "10 weeks", "1 week", "7", "2.5 centimetres", "3 days", "6 months", "45 years", "2 years", "1.5 hours",
        "20 minutes", "8 millimetres", "500 milligrams", "30%", "4 kg", "10 days"]


def test_a_loinc_long_name_is_read_as_its_label_and_the_oru_keeps_the_coded_form():
    severity = _item("NUM", "Pain severity - 0-10 verbal numeric rating [Score] - Reported",
                     MeasuredValueSequence=Sequence([Dataset()]))
    severity.ConceptNameCodeSequence[0].CodeValue = "72514-3"
    severity.ConceptNameCodeSequence[0].CodingSchemeDesignator = "LN"
    severity.MeasuredValueSequence[0].NumericValue = "7.0"
    severity.MeasuredValueSequence[0].MeasurementUnitsCodeSequence = Sequence([_code("{score}", "score")])
    assert (human_concept_name(severity), item_value(severity, human=True)) == ("Pain severity (0-10)", "7")
    other = _item("TEXT", "Back pain [Interpretation] - Reported", TextValue="x")
    assert human_concept_name(other) == "Back pain"
    assert item_value(severity) == "7.0", "the HL7 message keeps the value as coded"
