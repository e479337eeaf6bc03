"""Resolve each table row, under a set of options, to one concrete action.

Resolution happens once per :class:`DeidOptions` (see :func:`compile_actions`), never per dataset.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pydicom.datadict import tag_for_keyword

from gateway.deid.options import DeidOptions
from gateway.deid.table import ProfileOption, ProfileRow, TagPattern, load_table


class Action(enum.Enum):
    """A concrete action on one element."""

    KEEP = "K"
    REMOVE = "X"
    ZERO = "Z"
    DUMMY = "D"
    UID = "U"
    SHIFT_DATE = "C-date"  # C under Retain Longitudinal Modified Dates
    CLEAN = "C"  # C under any other option: descriptors by allowlist, sequences by recursion


@dataclass(frozen=True, slots=True)
class ResolvedAction:
    """The action for one element; ``fallback`` applies when a clean or shift cannot be done."""

    action: Action
    fallback: Action


def _tags(*keywords: str) -> frozenset[int]:
    return frozenset(tag_for_keyword(keyword) for keyword in keywords)  # type: ignore[misc]  # all known keywords


# Combined codes (X/Z, X/D, Z/D, X/Z/D) depend on the attribute's Type in the IOD, which the profile
# cannot know for every IOD. Rule: D for attributes that are Type 1 in some common image or SR IOD
# (Enhanced MR/CT, SR document content), Z for those that are Type 2 there, X for everything else.
REQUIRES_VALUE = _tags(
    "ContentDate",  # Type 1 in Enhanced MR/CT Image, 2C in General Image
    "ContentTime",
    "AcquisitionDateTime",  # Type 1 in Enhanced MR/CT frame-level acquisition
    "DeviceSerialNumber",  # Type 1 in Enhanced General Equipment
    "ObservationDateTime",  # Type 1 in SR content items that carry it
    "PatientID",  # Type 2, but it carries the patient pseudonym
)
MAY_BE_EMPTY = _tags(
    "ContentCreatorName",  # Type 2 in Presentation State Identification
    "ContrastBolusAgent",  # Type 2 in Contrast/Bolus
    "InstructionPerformedDateTime",
    "AcquisitionContextSequence",  # Type 2 in Acquisition Context
)
# Everything else with a combined code: X (Type 3, or conditional and absent in spine images).


def resolve_combined(tag: int, code: str) -> Action:
    """Resolve a basic code, combined or not, to one action following the rule above."""
    if code == "X/Z/U*":
        return Action.UID  # keep the sequence, replace the UIDs inside it
    if "/" not in code:
        return Action(code)
    choices = code.split("/")
    if "D" in choices and tag in REQUIRES_VALUE:
        return Action.DUMMY
    if "Z" in choices and (tag in MAY_BE_EMPTY or tag in REQUIRES_VALUE):
        return Action.ZERO
    if "X" in choices:
        return Action.REMOVE
    return Action.ZERO if "Z" in choices else Action.DUMMY


def resolve_row(row: ProfileRow, enabled: frozenset[ProfileOption], tag: int | None = None) -> ResolvedAction:
    """The action for ``row`` when the options in ``enabled`` are on.

    An enabled option's cell overrides the basic action; when several apply, K wins over C, because
    every K in the table is a deliberate choice to keep.
    """
    effective_tag = row.tag if tag is None else tag
    basic = resolve_combined(effective_tag or 0, row.basic)
    codes = {option: row.option_code(option) for option in enabled if row.option_code(option)}
    if "K" in codes.values():
        return ResolvedAction(Action.KEEP, basic)
    if codes.get(ProfileOption.RETAIN_LONGITUDINAL_MODIFIED_DATES) == "C":
        return ResolvedAction(Action.SHIFT_DATE, basic)
    if "C" in codes.values():
        return ResolvedAction(Action.CLEAN, basic)
    return ResolvedAction(basic, basic)


@dataclass(frozen=True, slots=True)
class CompiledActions:
    """Per-options lookup: tag → action, plus the pattern rows."""

    by_tag: dict[int, ResolvedAction]
    curve_data: ResolvedAction
    overlay_data: ResolvedAction
    overlay_comments: ResolvedAction
    private: ResolvedAction

    def for_public_tag(self, tag: int) -> ResolvedAction | None:
        """The action for an even-group tag, or None when the table does not list it."""
        found = self.by_tag.get(tag)
        if found is not None:
            return found
        group = tag >> 16
        if group & 0xFF00 == 0x5000:
            return self.curve_data
        if group & 0xFF00 == 0x6000:
            element = tag & 0xFFFF
            if element == 0x3000:
                return self.overlay_data
            if element == 0x4000:
                return self.overlay_comments
        return None


def compile_actions(options: DeidOptions) -> CompiledActions:
    """Resolve every row of the table once for ``options``."""
    enabled = options.enabled_columns()
    by_tag: dict[int, ResolvedAction] = {}
    patterns: dict[TagPattern, ResolvedAction] = {}
    for row in load_table():
        if row.tag is not None:
            by_tag[row.tag] = resolve_row(row, enabled)
        elif row.pattern is not None:
            patterns[row.pattern] = resolve_row(row, enabled, tag=0)
    return CompiledActions(
        by_tag=by_tag,
        curve_data=patterns[TagPattern.CURVE_DATA],
        overlay_data=patterns[TagPattern.OVERLAY_DATA],
        overlay_comments=patterns[TagPattern.OVERLAY_COMMENTS],
        private=patterns[TagPattern.PRIVATE],
    )
