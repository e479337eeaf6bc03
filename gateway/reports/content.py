"""Reading a structured report's content items as text: one reader for the ORU^R01's OBX lines
(:mod:`gateway.reports.oru`) and the portal's view of a returned report (:mod:`gateway.web.views`).

The two differ on purpose, each by a keyword of :func:`item_value`:

- a person name: the HL7 message shows ``Doe Jane`` (``plain_names``), the page the DICOM value ``Doe^Jane``;
- an IMAGE item: the page may label it (``image_label="key image"``); the HL7 message leaves it out;
- DATE, TIME, DATETIME and UIDREF items: the HL7 message gives their value (``dates_and_uids``); the page
  shows none;
- a NUM item: the page writes it as people read it (``human``: "10 weeks", "7"), the HL7 message as coded
  ("10.0 wk"); the page's labels come from :func:`human_concept_name`, not the code system's long names.

:func:`content_items` walks the tree the way both read it: in document order, without IMAGE references and
concept modifiers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation

from pydicom.dataset import Dataset

_UNITLESS = ("1", "{score}")  # UCUM "no unit" codes: the number is shown alone
# What a clinician reads for a coded concept whose meaning is a code system's long name, by (scheme, code).
_HUMAN_LABELS = {("LN", "72514-3"): "Pain severity (0-10)"}
# UCUM codes spelled out: (one, many); "%" is written after the number.
_UNIT_WORDS = {
    "wk": ("week", "weeks"), "d": ("day", "days"), "mo": ("month", "months"), "a": ("year", "years"),
    "yr": ("year", "years"), "h": ("hour", "hours"), "min": ("minute", "minutes"),
    "mm": ("millimetre", "millimetres"), "cm": ("centimetre", "centimetres"), "mg": ("milligram", "milligrams"),
}
_DATE_AND_UID_KEYWORDS = {"DATE": "Date", "TIME": "Time", "DATETIME": "DateTime", "UIDREF": "UID"}


def concept_name(item: Dataset) -> str:
    """The meaning of the item's concept name, or "" without one."""
    names = item.get("ConceptNameCodeSequence")
    return str(names[0].get("CodeMeaning", "")) if names else ""


def human_concept_name(item: Dataset) -> str:
    """The concept name as a clinician reads it: a known code's own label, else the meaning without a LOINC
    long name's property and method parts ("[Score]", "- Reported")."""
    names = item.get("ConceptNameCodeSequence")
    if not names:
        return ""
    code = names[0]
    label = _HUMAN_LABELS.get((str(code.get("CodingSchemeDesignator", "")), str(code.get("CodeValue", ""))))
    if label:
        return label
    meaning = str(code.get("CodeMeaning", ""))
    return re.sub(r"\s*\[[^\]]*\]|\s+-\s+Reported$", "", meaning).strip() or meaning


def human_number(value: object) -> str:
    """A decimal string without a needless fraction: "7.0" → "7", "2.50" → "2.5"."""
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        return str(value)
    if not number.is_finite():
        return str(value)
    text = format(number.normalize(), "f")
    return "0" if text in ("-0", "") else text


def human_quantity(value: object, ucum: str) -> str:
    """A number with its UCUM unit in words: ("10.0", "wk") → "10 weeks", ("7", "{score}") → "7",
    ("30", "%") → "30%"; a unit not spelled out here stays as its code."""
    number = human_number(value)
    if ucum in _UNITLESS or not ucum:
        return number
    if ucum == "%":
        return f"{number}%"
    words = _UNIT_WORDS.get(ucum)
    if words is None:
        return f"{number} {ucum}"
    return f"{number} {words[0] if number == '1' else words[1]}"


def item_value(item: Dataset, *, plain_names: bool = False, image_label: str = "",
               dates_and_uids: bool = False, human: bool = False) -> str:
    """The item's value as text ("" for a value type not shown): TEXT as written, CODE by its meaning, NUM
    with its unit (none for a unitless number), PNAME as stored or, with ``plain_names``, with its ``^``
    separators as spaces; an IMAGE with references as ``image_label``; with ``dates_and_uids``, the value of a
    DATE, TIME, DATETIME or UIDREF item; with ``human``, a NUM as :func:`human_quantity` writes it."""
    kind = item.get("ValueType", "")
    if kind == "TEXT":
        return str(item.get("TextValue", ""))
    if kind == "CODE" and item.get("ConceptCodeSequence"):
        return str(item.ConceptCodeSequence[0].get("CodeMeaning", ""))
    if kind == "NUM" and item.get("MeasuredValueSequence"):
        measured = item.MeasuredValueSequence[0]
        units = measured.get("MeasurementUnitsCodeSequence")
        if human:
            return human_quantity(measured.NumericValue, str(units[0].CodeValue) if units else "")
        unit = f" {units[0].CodeValue}" if units and units[0].CodeValue not in _UNITLESS else ""
        return f"{measured.NumericValue}{unit}"
    if kind == "PNAME":
        name = str(item.get("PersonName", ""))
        return name.replace("^", " ").strip() if plain_names else name
    if kind == "IMAGE" and item.get("ReferencedSOPSequence"):
        return image_label
    if dates_and_uids and kind in _DATE_AND_UID_KEYWORDS:
        return str(item.get(_DATE_AND_UID_KEYWORDS[kind], ""))
    return ""


def content_items(container: Dataset, depth: int = 0) -> Iterator[tuple[int, Dataset]]:
    """(depth, item) for every content item under ``container``, in document order, leaving out IMAGE
    references and concept modifiers (and what they hold)."""
    for item in container.get("ContentSequence", []):
        if item.get("ValueType") == "IMAGE" or item.get("RelationshipType") == "HAS CONCEPT MOD":
            continue
        yield depth, item
        yield from content_items(item, depth + 1)
