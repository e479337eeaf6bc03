"""The referral document: pydantic models and the JSON/YAML parser.

A referral arrives as JSON or YAML in exactly the shape of :class:`Referral`; unknown keys are
refused. Validation problems are reported as one line per field, naming the field path and echoing
the offending value only for enum and number fields (never the free text of a PHI field).
"""

from __future__ import annotations

import datetime
import enum
import json
import re
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import ErrorDetails

from gateway.referral.codes import NON_URGENT_FLAGS, RedFlag
from gateway.referral.errors import ReferralValidationError

__all__ = [
    "MAX_REDACTIONS",
    "MAX_REDACTION_LENGTH",
    "Address",
    "Clinical",
    "Pain",
    "Patient",
    "Referral",
    "Referrer",
    "Urgency",
    "parse_referral",
    "validate_referral_data",
]

_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _iso_date(value: Any) -> Any:
    """Accept a date, or a string in YYYY-MM-DD form; leave anything else for pydantic to refuse."""
    if isinstance(value, datetime.datetime):
        raise ValueError("must be a date in YYYY-MM-DD form, not a date-time")
    if isinstance(value, datetime.date):
        return value
    if isinstance(value, str) and _ISO_DATE.match(value):
        try:
            return datetime.date.fromisoformat(value)
        except ValueError:
            raise ValueError("not a valid calendar date") from None
    raise ValueError("must be a date in YYYY-MM-DD form")


IsoDate = Annotated[datetime.date, BeforeValidator(_iso_date)]
EARLIEST_DATE = datetime.date(1900, 1, 1)  # before it, a date is a typing slip (0001-01-01), not a patient's
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _plausible_date(value: datetime.date | None, what: str, *, days_ahead: int = 0) -> datetime.date | None:
    """A date a PACS would take: from 1900, not in the future (``days_ahead`` allowed: time zones)."""
    if value is None:
        return None
    if value < EARLIEST_DATE:
        raise ValueError(f"{what} before 1900: check the year (got {value.isoformat()})")
    if value > datetime.date.today() + datetime.timedelta(days=days_ahead):
        raise ValueError(f"{what} in the future: check the date (got {value.isoformat()})")
    return value


def _dicom_id(value: str) -> str:
    """A DICOM LO value (patient ID): no backslash (the value separator), no control character."""
    if "\\" in value:
        raise ValueError("must not contain a backslash (\\): DICOM uses it to separate values")
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters (tabs, line breaks)")
    return value


def _dicom_name(value: str) -> str:
    """A DICOM person name: Family^Given^Middle^Prefix^Suffix, the family name first and not empty; up to three
    component groups separated by ``=`` (alphabetic=ideographic=phonetic, PS3.5 6.2.1.1), as a PACS takes them."""
    if "\\" in value or _CONTROL.search(value):
        raise ValueError("must not contain a backslash or control characters")
    groups = value.split("=")
    if len(groups) > 3:
        raise ValueError(f"has {len(groups)} groups: write alphabetic=ideographic=phonetic (at most 3)")
    for group in groups:
        parts = group.split("^")
        if len(parts) > 5:
            raise ValueError(f"has {len(parts)} parts: write Family^Given^Middle^Prefix^Suffix (at most 5)")
    first = next((group for group in groups if group.strip()), "")
    if not first.split("^")[0].strip():
        raise ValueError("the family name (before the first ^) must not be empty")
    return value


NonEmptyText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
MAX_REDACTIONS = 50
MAX_REDACTION_LENGTH = 200
# A phrase to remove from the notes: one line, as long as a short sentence at most.
Redaction = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_REDACTION_LENGTH,
                                             pattern=r"^[^\r\n]*$")]

# Size limits of the free-text fields, in characters (docs/referrals.md). A clinical history of a few pages
# fits; megabytes do not (issue 28: a 9 MB history held the notes stage at 800 MB for 100 s a try).
HISTORY_CHARS = 20_000
NOTE_CHARS = 10_000  # symptoms, examination, EMG, prior treatment, prior imaging
QUESTION_CHARS = 4_000
SHORT_TEXT_CHARS = 1_000  # pain location, nature, radiation; referrer contact
NAME_CHARS = 200  # names, address parts, e-mail
ID_CHARS = 64  # identifiers, phone numbers, source, subspecialty

HistoryText = Annotated[str, StringConstraints(max_length=HISTORY_CHARS)]
NoteText = Annotated[str, StringConstraints(max_length=NOTE_CHARS)]
QuestionText = Annotated[str, StringConstraints(max_length=QUESTION_CHARS)]
ShortText = Annotated[str, StringConstraints(max_length=SHORT_TEXT_CHARS)]
NameText = Annotated[str, StringConstraints(max_length=NAME_CHARS)]
IdText = Annotated[str, StringConstraints(max_length=ID_CHARS)]
NonEmptyName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=NAME_CHARS)]
NonEmptyId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=ID_CHARS)]


class Urgency(str, enum.Enum):
    """Urgency as stated by the referrer."""

    ROUTINE = "routine"
    URGENT = "urgent"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Address(_Strict):
    """A postal address (PHI): every part optional, as the referring system has it."""

    street: NameText | None = None
    other: NameText | None = None  # second line: building, district
    town: NameText | None = None
    region: NameText | None = None  # county, state
    postcode: IdText | None = None
    country: NameText | None = None


class Patient(_Strict):
    """The patient as the referring site knows them (PHI: never leaves the gateway).

    ``address``, ``phones``, ``email`` and ``other_ids`` are optional; the gateway uses them only to find and
    remove them from the notes (and to check that none leaves).
    """

    id: Annotated[NonEmptyId, AfterValidator(_dicom_id)]
    name: Annotated[NonEmptyName, AfterValidator(_dicom_name)]
    birth_date: IsoDate | None = None
    address: Address | None = None
    phones: list[NonEmptyId] = Field(default_factory=list, max_length=16)
    email: NameText | None = None
    other_ids: list[NonEmptyId] = Field(default_factory=list, max_length=16)

    @field_validator("birth_date")
    @classmethod
    def _plausible_birth(cls, value: datetime.date | None) -> datetime.date | None:
        return _plausible_date(value, "a birth date")


class Referrer(_Strict):
    """The referring clinician (PHI)."""

    name: NonEmptyName
    contact: ShortText | None = None


class Pain(_Strict):
    """Pain pattern; intensity on a 0-10 numeric rating scale."""

    location: ShortText | None = None
    intensity: int | None = Field(default=None, ge=0, le=10)
    nature: ShortText | None = None
    duration_weeks: int | None = Field(default=None, ge=0, le=5200)
    radiation: ShortText | None = None


class Clinical(_Strict):
    """Clinical content of the referral (free text may contain identifiers until scrubbed)."""

    history: HistoryText | None = None
    symptoms: NoteText | None = None
    pain: Pain | None = None
    red_flags: list[RedFlag] = Field(default_factory=list, max_length=len(RedFlag))
    examination: NoteText | None = None
    emg: NoteText | None = None
    prior_treatment: NoteText | None = None
    prior_imaging: NoteText | None = None
    question: QuestionText | None = None


class Referral(_Strict):
    """A referral for a second opinion on spine imaging."""

    source: NonEmptyId
    accession_number: NonEmptyText = Field(max_length=64)
    order_number: IdText | None = Field(
        None, description="The placer order number of the order (HL7 ORC-2, else OBR-2): the report goes back "
                          "under it (ORU^R01 OBR-2).")
    patient: Patient
    urgency: Urgency = Urgency.ROUTINE
    referrer: Referrer | None = None
    clinical: Clinical = Field(default_factory=Clinical)
    subspecialty: IdText | None = None
    study_date: IsoDate | None = None
    redactions: list[Redaction] = Field(
        default_factory=list, max_length=MAX_REDACTIONS,
        description="Words or phrases of the notes a person chose to remove (the referrer, on the portal's "
                    "preview): each is replaced by [REDACTED] wherever it stands in the notes.")

    @field_validator("study_date")
    @classmethod
    def _plausible_study(cls, value: datetime.date | None, info: ValidationInfo) -> datetime.date | None:
        value = _plausible_date(value, "a study date", days_ahead=1)
        patient = info.data.get("patient")
        born = patient.birth_date if isinstance(patient, Patient) else None
        if value is not None and born is not None and value < born:
            raise ValueError(f"before the patient's birth date ({born.isoformat()}): check both dates")
        return value

    @property
    def effective_urgency(self) -> Urgency:
        """``urgent`` if the referrer said so or any declared red flag demands it."""
        if self.urgency is Urgency.URGENT:
            return Urgency.URGENT
        if any(flag not in NON_URGENT_FLAGS for flag in self.clinical.red_flags):
            return Urgency.URGENT
        return Urgency.ROUTINE


# Fields whose value may be echoed in an error message: enums and numbers carry no free text.
_ECHOABLE_LEAVES = {"urgency", "red_flags", "intensity", "duration_weeks"}


def _field_path(location: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in location) or "<document>"


def _may_echo(location: tuple[int | str, ...]) -> bool:
    names = [part for part in location if isinstance(part, str)]
    return bool(names) and names[-1] in _ECHOABLE_LEAVES


def _describe(error: ErrorDetails) -> str:
    kind = error["type"]
    context = error.get("ctx") or {}
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind in {"string_too_short"}:
        return "must not be empty"
    if kind == "string_pattern_mismatch" and "redactions" in error["loc"]:
        return "must be one line"
    if kind == "string_too_long":
        return f"must be at most {context.get('max_length')} characters"
    if kind in {"greater_than_equal", "less_than_equal"} and error["loc"][-1] == "intensity":
        return "must be between 0 and 10"
    if kind == "greater_than_equal":
        return f"must be >= {context.get('ge')}"
    if kind == "less_than_equal":
        return f"must be <= {context.get('le')}"
    if kind == "enum":
        return f"must be one of: {context.get('expected')}"
    if kind == "value_error":
        return str(context.get("error", "invalid value"))
    if kind.startswith("int_"):
        return "must be a whole number"
    if kind.startswith("string_"):
        return "must be a string"
    if kind in {"model_type", "model_attributes_type", "dict_type"}:
        return "must be a mapping"
    if kind == "too_long":
        return f"must have at most {context.get('max_length')} items"
    if kind == "list_type":
        return "must be a list"
    return "invalid value"


def _problem_lines(error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors(include_url=False):
        line = f"{_field_path(item['loc'])}: {_describe(item)}"
        if _may_echo(item["loc"]) and item["type"] not in {"missing", "extra_forbidden"}:
            line += f" (got {item['input']!r:.40})"
        lines.append(line)
    return lines


def _load(text: str, fmt: str) -> Any:
    if fmt == "json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ReferralValidationError(
                [f"<document>: not valid JSON (line {exc.lineno}, column {exc.colno})"]
            ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ReferralValidationError([f"<document>: not valid YAML{where}"]) from None


def parse_referral(text_or_bytes: str | bytes, fmt: Literal["json", "yaml"] = "json") -> Referral:
    """Parse and validate a referral document.

    Args:
        text_or_bytes: the document, as text or UTF-8 bytes.
        fmt: ``"json"`` or ``"yaml"``.

    Returns:
        The validated :class:`Referral`.

    Raises:
        ReferralValidationError: with ``problems``, one line per bad field.
        ValueError: if ``fmt`` is not one of the two formats.
    """
    if fmt not in ("json", "yaml"):
        raise ValueError("fmt must be 'json' or 'yaml'")
    if isinstance(text_or_bytes, bytes):
        try:
            text = text_or_bytes.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ReferralValidationError(["<document>: not UTF-8 text"]) from None
    elif isinstance(text_or_bytes, str):
        text = text_or_bytes
    else:
        raise TypeError("text_or_bytes must be str or bytes")
    return validate_referral_data(_load(text, fmt))


def validate_referral_data(data: Any) -> Referral:
    """Validate already-decoded data (a mapping) as a :class:`Referral`.

    Raises:
        ReferralValidationError: with one line per bad field.
    """
    if not isinstance(data, dict):
        raise ReferralValidationError(["<document>: must be a mapping"])
    try:
        return Referral.model_validate(data)
    except ValidationError as exc:
        raise ReferralValidationError(_problem_lines(exc)) from None
