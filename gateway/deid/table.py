"""PS3.15 Annex E Table E.1-1 as typed rows, loaded once from the bundled ``annex_e.csv``."""

from __future__ import annotations

import csv
import enum
import functools
import io
from dataclasses import dataclass
from importlib import resources

from gateway.deid.errors import TableError

CSV_RESOURCE = "annex_e.csv"

BASIC_CODES = frozenset({"D", "Z", "X", "K", "C", "U", "X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"})
OPTION_CODES = frozenset({"", "K", "C"})


class ProfileOption(enum.Enum):
    """The option columns of Table E.1-1; each value is the CSV column name."""

    RETAIN_SAFE_PRIVATE = "rtn_safe_priv"
    RETAIN_UIDS = "rtn_uids"
    RETAIN_DEVICE_ID = "rtn_dev_id"
    RETAIN_INSTITUTION_ID = "rtn_inst_id"
    RETAIN_PATIENT_CHARACTERISTICS = "rtn_pat_chars"
    RETAIN_LONGITUDINAL_FULL_DATES = "rtn_long_full_dates"
    RETAIN_LONGITUDINAL_MODIFIED_DATES = "rtn_long_modif_dates"
    CLEAN_DESCRIPTORS = "clean_desc"
    CLEAN_STRUCTURED_CONTENT = "clean_struct_cont"
    CLEAN_GRAPHICS = "clean_graph"


class TagPattern(enum.Enum):
    """The four rows of the table that name a family of tags rather than one tag."""

    CURVE_DATA = "50xx,xxxx"
    OVERLAY_DATA = "60xx,3000"
    OVERLAY_COMMENTS = "60xx,4000"
    PRIVATE = "gggg,eeee where gggg is odd"

    def matches(self, tag: int) -> bool:
        """True when ``tag`` (as a 32-bit int) belongs to this family."""
        group, element = tag >> 16, tag & 0xFFFF
        if self is TagPattern.CURVE_DATA:
            return group & 0xFF00 == 0x5000 and group % 2 == 0
        if self is TagPattern.OVERLAY_DATA:
            return group & 0xFF00 == 0x6000 and group % 2 == 0 and element == 0x3000
        if self is TagPattern.OVERLAY_COMMENTS:
            return group & 0xFF00 == 0x6000 and group % 2 == 0 and element == 0x4000
        return group % 2 == 1


@dataclass(frozen=True, slots=True)
class ProfileRow:
    """One row of Table E.1-1.

    Exactly one of ``tag`` and ``pattern`` is set. ``options`` maps each option whose cell is
    not empty to its code (``"K"`` or ``"C"``).
    """

    tag: int | None
    pattern: TagPattern | None
    name: str
    retired: bool
    in_standard_iod: bool
    basic: str
    options: dict[ProfileOption, str]

    def option_code(self, option: ProfileOption) -> str:
        """The cell of ``option`` for this row, ``""`` when the standard leaves it blank."""
        return self.options.get(option, "")


def _parse_tag(cell: str) -> tuple[int | None, TagPattern | None]:
    for pattern in TagPattern:
        if cell == pattern.value:
            return None, pattern
    group, _, element = cell.partition(",")
    try:
        return (int(group, 16) << 16) | int(element, 16), None
    except ValueError as exc:
        raise TableError(f"unreadable tag cell in {CSV_RESOURCE}: {cell!r}") from exc


def _parse_row(record: dict[str, str]) -> ProfileRow:
    tag, pattern = _parse_tag(record["tag"])
    basic = record["basic"]
    if basic not in BASIC_CODES:
        raise TableError(f"unknown basic action {basic!r} for {record['tag']}")
    options: dict[ProfileOption, str] = {}
    for option in ProfileOption:
        code = record[option.value]
        if code not in OPTION_CODES:
            raise TableError(f"unknown option code {code!r} for {record['tag']}")
        if code:
            options[option] = code
    return ProfileRow(
        tag=tag,
        pattern=pattern,
        name=record["name"],
        retired=record["retired"] == "Y",
        in_standard_iod=record["in_std_iod"] == "Y",
        basic=basic,
        options=options,
    )


@functools.cache
def load_table() -> tuple[ProfileRow, ...]:
    """All rows of the bundled table, parsed once per process."""
    text = resources.files("gateway.deid").joinpath(CSV_RESOURCE).read_text(encoding="utf-8")
    return tuple(_parse_row(record) for record in csv.DictReader(io.StringIO(text)))


def rows_by_tag() -> dict[int, ProfileRow]:
    """The rows naming a single tag, keyed by the tag as an int."""
    return {row.tag: row for row in load_table() if row.tag is not None}


def pattern_rows() -> dict[TagPattern, ProfileRow]:
    """The four pattern rows, keyed by pattern."""
    return {row.pattern: row for row in load_table() if row.pattern is not None}
