"""Reading a structured report's content items as text: one reader for the ORU^R01's OBX lines
(:mod:`gateway.reports.oru`) and the portal's view of a returned report (:mod:`gateway.web.views`).

The two differ on purpose, each by a keyword of :func:`item_value`:

- a person name: the HL7 message shows ``Doe Jane`` (``plain_names``), the page the DICOM value ``Doe^Jane``;
- an IMAGE item: the page may label it (``image_label="key image"``); the HL7 message leaves it out;
- DATE, TIME, DATETIME and UIDREF items: the HL7 message gives their value (``dates_and_uids``); the page
  shows none.

:func:`content_items` walks the tree the way both read it: in document order, without IMAGE references and
concept modifiers.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydicom.dataset import Dataset

_UNITLESS = ("1", "{score}")  # UCUM "no unit" codes: the number is shown alone
_DATE_AND_UID_KEYWORDS = {"DATE": "Date", "TIME": "Time", "DATETIME": "DateTime", "UIDREF": "UID"}


def concept_name(item: Dataset) -> str:
    """The meaning of the item's concept name, or "" without one."""
    names = item.get("ConceptNameCodeSequence")
    return str(names[0].get("CodeMeaning", "")) if names else ""


def item_value(item: Dataset, *, plain_names: bool = False, image_label: str = "",
               dates_and_uids: bool = False) -> str:
    """The item's value as text ("" for a value type not shown): TEXT as written, CODE by its meaning, NUM
    with its unit (none for a unitless number), PNAME as stored or, with ``plain_names``, with its ``^``
    separators as spaces; an IMAGE with references as ``image_label``; with ``dates_and_uids``, the value of a
    DATE, TIME, DATETIME or UIDREF item."""
    kind = item.get("ValueType", "")
    if kind == "TEXT":
        return str(item.get("TextValue", ""))
    if kind == "CODE" and item.get("ConceptCodeSequence"):
        return str(item.ConceptCodeSequence[0].get("CodeMeaning", ""))
    if kind == "NUM" and item.get("MeasuredValueSequence"):
        measured = item.MeasuredValueSequence[0]
        units = measured.get("MeasurementUnitsCodeSequence")
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
