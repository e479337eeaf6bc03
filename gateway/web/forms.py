"""The two forms: a referral (mirrors :class:`gateway.referral.document.Referral`) and a reviewer's report
(becomes a :class:`gateway.reports.findings.FindingsDocument`). Each problem is attached to its form field."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from gateway.config import ReviewerConfig
from gateway.referral.codes import RedFlag
from gateway.referral.document import validate_referral_data
from gateway.referral.errors import ReferralValidationError
from gateway.reports.builder import ANSWER_PREFIX
from gateway.reports.findings import Finding, FindingsDocument
from gateway.web.dates import ISO_DATES, DateFormat

RED_FLAG_LABELS = {
    RedFlag.CAUDA_EQUINA: "Cauda equina symptoms (saddle anaesthesia, bladder or bowel dysfunction)",
    RedFlag.PROGRESSIVE_NEUROLOGICAL_DEFICIT: "Progressive neurological deficit",
    RedFlag.FEVER_OR_INFECTION: "Fever or suspected infection",
    RedFlag.CANCER_HISTORY: "History of cancer",
    RedFlag.UNEXPLAINED_WEIGHT_LOSS: "Unexplained weight loss",
    RedFlag.SIGNIFICANT_TRAUMA: "Significant trauma",
    RedFlag.IMMUNOSUPPRESSION: "Immunosuppression",
    RedFlag.IV_DRUG_USE: "Intravenous drug use",
    RedFlag.AGE_OVER_50_NEW_PAIN: "Age over 50 with new pain",
    RedFlag.NIGHT_OR_REST_PAIN: "Pain at night or at rest",
    RedFlag.NO_IMPROVEMENT_6_WEEKS: "No improvement after 6 weeks",
}
ADDRESS_PARTS = ("street", "other", "town", "region", "postcode", "country")
LIST_FIELDS = ("patient.phones", "patient.other_ids")  # one value a line
TEXT_FIELDS = ("accession_number", "patient.id", "patient.family", "patient.given", "patient.birth_date",
               *(f"patient.address.{part}" for part in ADDRESS_PARTS), *LIST_FIELDS, "patient.email",
               "study_date", "urgency", "referrer.name", "referrer.contact", "clinical.history", "clinical.symptoms",
               "clinical.pain.location", "clinical.pain.intensity", "clinical.pain.nature",
               "clinical.pain.duration_weeks", "clinical.pain.radiation", "clinical.examination", "clinical.emg",
               "clinical.prior_treatment", "clinical.prior_imaging", "clinical.question",
               "replaces")  # the id of the referral a correction replaces (hidden)
# A problem on a document path is shown next to this form field.
_FIELD_OF_PATH = {"patient.name": "patient.family", "patient": "patient.id", "clinical.red_flags": "clinical.red_flags",
                  "patient.address": "patient.address.street"}
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHONE = re.compile(r"^\+?[\d\s\-()./]*\d[\d\s\-()./]*$")
DATE_FIELDS = ("patient.birth_date", "study_date")  # typed in the source's format (gateway.web.dates)
LEVELS = ("L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1")


@dataclass
class FormResult:
    """Either a value, or problems by field (``""`` for the form as a whole); ``values`` to fill the form again."""

    values: dict[str, Any]
    errors: dict[str, list[str]] = field(default_factory=dict)
    value: Any = None

    def add(self, name: str, message: str) -> None:
        self.errors.setdefault(name, []).append(message)


def _clean(form: Mapping[str, Any], name: str) -> str:
    return str(form.get(name) or "").strip()


def _number(text: str) -> int | str:
    return int(text) if re.fullmatch(r"-?\d{1,6}", text) else text


def lines(text: str) -> list[str]:
    """The non-empty lines of a one-value-a-line field (phones, other IDs)."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def _patient(get: Any) -> dict[str, Any]:
    family, given = get("patient.family"), get("patient.given")
    patient: dict[str, Any] = {"id": get("patient.id"), "name": f"{family}^{given}" if given else family}
    if get("patient.birth_date"):
        patient["birth_date"] = get("patient.birth_date")
    address = {part: get(f"patient.address.{part}") for part in ADDRESS_PARTS if get(f"patient.address.{part}")}
    if address:
        patient["address"] = address
    for name in LIST_FIELDS:
        if lines(get(name)):
            patient[name.split(".", 1)[1]] = lines(get(name))
    if get("patient.email"):
        patient["email"] = get("patient.email")
    return patient


def referral_document(form: Mapping[str, Any], flags: list[str], source: str,
                      redactions: list[str] | None = None) -> dict[str, Any]:
    """The referral document the form describes (empty fields left out); ``redactions``: the phrases the
    referrer chose to remove on the preview."""
    get = lambda name: _clean(form, name)  # noqa: E731
    patient = _patient(get)
    document: dict[str, Any] = {"source": source, "accession_number": get("accession_number"), "patient": patient,
                                "urgency": get("urgency") or "routine"}
    if get("study_date"):
        document["study_date"] = get("study_date")
    if get("referrer.name") or get("referrer.contact"):
        document["referrer"] = {"name": get("referrer.name"),
                                **({"contact": get("referrer.contact")} if get("referrer.contact") else {})}
    pain: dict[str, Any]  # strings, then numbers where the field is one
    pain = {name: get(f"clinical.pain.{name}") for name in ("location", "intensity", "nature", "duration_weeks",
                                                             "radiation")}
    pain = {k: (_number(v) if k in ("intensity", "duration_weeks") else v) for k, v in pain.items() if v}
    clinical: dict[str, Any] = {name: get(f"clinical.{name}") for name in (
        "history", "symptoms", "examination", "emg", "prior_treatment", "prior_imaging", "question")}
    clinical = {k: v for k, v in clinical.items() if v}
    if pain:
        clinical["pain"] = pain
    if flags:
        clinical["red_flags"] = flags
    document["clinical"] = clinical
    if redactions:
        document["redactions"] = list(redactions)
    return document


def form_values(document: Any, dates: DateFormat = ISO_DATES) -> dict[str, Any]:
    """The form's fields filled from a stored referral document (a :class:`Referral`): to correct it; its
    dates written in the source's format."""
    data = document.model_dump(mode="json", exclude_none=True)
    patient, clinical = data.get("patient", {}), data.get("clinical", {})
    family, _, given = str(patient.get("name", "")).partition("^")
    values: dict[str, Any] = {
        "accession_number": data.get("accession_number", ""), "patient.id": patient.get("id", ""),
        "patient.family": family, "patient.given": given.replace("^", " ").strip(),
        "patient.birth_date": patient.get("birth_date", ""), "patient.email": patient.get("email", ""),
        "patient.phones": "\n".join(patient.get("phones", [])),
        "patient.other_ids": "\n".join(patient.get("other_ids", [])),
        "study_date": data.get("study_date", ""), "urgency": data.get("urgency", "routine"),
        "referrer.name": data.get("referrer", {}).get("name", ""),
        "referrer.contact": data.get("referrer", {}).get("contact", ""),
        "clinical.red_flags": list(clinical.get("red_flags", [])), "redactions": list(data.get("redactions", []))}
    for part in ADDRESS_PARTS:
        values[f"patient.address.{part}"] = patient.get("address", {}).get(part, "")
    for name in ("history", "symptoms", "examination", "emg", "prior_treatment", "prior_imaging", "question"):
        values[f"clinical.{name}"] = clinical.get(name, "")
    for name, value in clinical.get("pain", {}).items():
        values[f"clinical.pain.{name}"] = str(value)
    for name in DATE_FIELDS:
        values[name] = dates.written(values[name])
    return values


def _name_problems(values: Mapping[str, Any], result: FormResult) -> None:
    """The form joins the family and given names as Family^Given: a ^ (or = and \\) typed in either would
    change what the PACS reads as the family name."""
    for name in ("patient.family", "patient.given"):
        typed = [c for c in "^=\\" if c in values[name]]
        if typed:
            result.add(name, f"write the name without {' or '.join(typed)} (the gateway joins family and given "
                             "names itself)")


def _contact_problems(values: Mapping[str, Any], result: FormResult) -> None:
    """What the schema takes as free text but a person can mistype: the e-mail address and phone numbers."""
    if values["patient.email"] and not _EMAIL.match(values["patient.email"]):
        result.add("patient.email", "write an e-mail address, e.g. name@example.org")
    for number, phone in enumerate(lines(values["patient.phones"]), start=1):
        if not _PHONE.match(phone):
            result.add("patient.phones", f"line {number}: write a phone number (digits, spaces, + ( ) -)")


def parse_referral_form(form: Mapping[str, Any], flags: list[str], source: str,
                        redactions: list[str] | None = None, dates: DateFormat = ISO_DATES) -> FormResult:
    """Validate the form as a referral: ``value`` is the :class:`Referral`, or ``errors`` by field. The dates
    are read in ``dates``, the source's format; ``values`` keeps them as typed."""
    values: dict[str, Any] = {name: _clean(form, name) for name in TEXT_FIELDS}
    for name in LIST_FIELDS:  # keep the lines as typed
        values[name] = str(form.get(name) or "").strip()
    values["clinical.red_flags"] = list(flags)
    values["redactions"] = list(redactions or [])
    result = FormResult(values)
    _contact_problems(values, result)
    _name_problems(values, result)
    try:
        document = validate_referral_data(referral_document(_with_iso_dates(form, dates, result), flags, source,
                                                            redactions))
    except ReferralValidationError as exc:
        for problem in exc.problems:
            path, _, message = problem.partition(": ")
            result.add(field_of(path), message)
    else:
        result.value = None if result.errors else document
    return result


def _with_iso_dates(form: Mapping[str, Any], dates: DateFormat, result: FormResult) -> dict[str, Any]:
    """The form's fields with its dates as ISO dates; a date that cannot be read is left out and its problem
    put next to its field (the referral is then not sent)."""
    fields = {name: str(form.get(name) or "") for name in TEXT_FIELDS}
    for name in DATE_FIELDS:
        if fields[name].strip():
            try:
                fields[name] = dates.parse(fields[name])
            except ValueError as exc:
                result.add(name, str(exc))
                fields[name] = ""
    return fields


def field_of(path: str) -> str:
    """The form field showing a problem on the document's ``path`` (``""``: the form as a whole)."""
    if path in _FIELD_OF_PATH:
        return _FIELD_OF_PATH[path]
    for name in LIST_FIELDS:
        if path.startswith(name):
            return name
    if path.startswith("redactions"):
        return "phrase"
    if path.startswith("clinical.red_flags"):
        return "clinical.red_flags"
    if path.startswith("referrer"):
        return "referrer.name" if path in ("referrer", "referrer.name") else path
    if path.startswith("clinical.pain") and path not in TEXT_FIELDS:
        return "clinical.pain.location"
    return path if path in TEXT_FIELDS else ""


# --- the reviewer's report ------------------------------------------------------------------------------------

REPORT_FIELDS = (*(f"finding.{level}" for level in LEVELS), *(f"images.{level}" for level in LEVELS),
                 "finding.other", "images.other", "impression", "answer", "recommendation", "critical",
                 "critical.contact")
_IMAGE_REF = re.compile(r"^\s*(?:(\d{1,6})\s*[:/]\s*)?(\d{1,6})\s*$")


def image_refs(text: str, positions: Mapping[tuple[int, int], str]) -> tuple[list[int | str], list[str]]:
    """Key images written as ``series:instance`` (or an instance number alone), comma-separated.

    Returns the references for :class:`Finding` (a pseudonymous SOP Instance UID for ``series:instance``, the
    number alone otherwise) and the problems.
    """
    refs: list[int | str] = []
    problems = []
    normalised = re.sub(r"\s*[:/]\s*", ":", text.strip())
    for part in (p for p in re.split(r"[,;\s]+", normalised) if p):
        match = _IMAGE_REF.match(part)
        if match is None:
            problems.append(f"{part!r}: write series:instance, e.g. 3:12")
        elif match.group(1) is None:
            refs.append(int(match.group(2)))
        elif (int(match.group(1)), int(match.group(2))) not in positions:
            problems.append(f"series {match.group(1)} has no instance {match.group(2)}")
        else:
            refs.append(positions[(int(match.group(1)), int(match.group(2)))])
    return refs, problems


def parse_report_form(form: Mapping[str, Any], positions: Mapping[tuple[int, int], str],
                      signer: ReviewerConfig | None = None) -> FormResult:
    """Validate the report form: ``value`` is the :class:`FindingsDocument`, or ``errors`` by field. The report
    is signed with the account's reviewer's ``signing_name`` (never a typed name): VERIFIED; without one,
    UNVERIFIED."""
    values = {name: _clean(form, name) for name in REPORT_FIELDS}
    result = FormResult(values)
    findings = []
    for level in (*LEVELS, "other"):
        text, images = values[f"finding.{level}"], values[f"images.{level}"]
        refs, problems = image_refs(images, positions)
        for problem in problems:
            result.add(f"images.{level}", problem)
        if images and not text:
            result.add(f"finding.{level}", "describe the finding these key images show")
        if text:
            prefix = "" if level == "other" else f"{level}: "
            try:
                findings.append(Finding(text=prefix + text, images=refs))
            except ValidationError as exc:
                result.add(f"images.{level}", "; ".join(e["msg"] for e in exc.errors()))
    if not findings and not result.errors:
        result.add("finding.L1-L2", "describe at least one level (or other findings)")
    if not values["impression"]:
        result.add("impression", "required")
    if values["critical"] and not values["critical.contact"]:
        result.add("critical.contact", "say whom the referrer should call (name, role, telephone)")
    elif values["critical.contact"] and not values["critical"]:
        result.add("critical", "tick it to flag the result critical, or leave whom to call empty")
    elif len(values["critical.contact"]) > 200:
        result.add("critical.contact", f"must be at most 200 characters (got {len(values['critical.contact'])})")
    if result.errors:
        return result
    impressions = [values["impression"]]
    if values["answer"]:
        impressions.append(f"{ANSWER_PREFIX}{values['answer']}")
    try:
        result.value = FindingsDocument(
            findings=findings, impressions=impressions,
            recommendations=[values["recommendation"]] if values["recommendation"] else [],
            observer=signer.signing_name if signer else None, organization=signer.organization if signer else None)
    except ValidationError as exc:
        for error in exc.errors():
            name = {"impressions": "impression", "recommendations": "recommendation"}.get(
                str(error["loc"][0]), "")
            result.add(name, error["msg"])
    return result
