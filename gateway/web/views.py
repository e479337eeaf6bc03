"""What the pages show, read from the database and the spool (no web framework here).

Referrers see their own source's referrals and studies, in plain words. Reviewers see only pseudonymous
things: the case key, the de-identified images' series and instance numbers, and the notes as the notes SR
the gateway built from the scrubbed notes (the same object the reviewer's workstation receives).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import peewee
import pydicom
import pydicom.errors
from pydicom.dataset import Dataset

from gateway.reports.builder import ANSWER_PREFIX
from gateway.reports.content import concept_name, content_items, human_concept_name, item_value
from gateway.reports.reidentify import readable_name
from gateway.routing.assignment import NO_REVIEWER
from gateway.storage.models import CaseState, CriticalResult, OutboundObject, ReportObject, Source, Study, utcnow
from gateway.storage.models import Referral as ReferralRow
from gateway.storage.spool import Spool
from gateway.web.dates import ISO_DATES, DateFormat

S = CaseState
_PLAIN = {
    S.RECEIVING: "receiving the images",
    S.COMPLETE: "received, being prepared",
    S.DEIDENTIFIED: "received, being prepared",
    S.NOTES_ATTACHED: "received, waiting for a reviewer",
    S.ASSIGNED: "sent to a reviewer",
    S.POOLED: "waiting for a reviewer to take it from the pool",
    S.DELIVERING: "being sent to a reviewer",
    S.DELIVERED: "with a reviewer",
    S.REPORTED: "report written, on its way back",
    S.REPORT_DELIVERED: "reported",
    S.QUARANTINED: "stopped for a safety check (the operators are told)",
    S.FAILED: "delivery problem (the operators are told)",
    S.REPORT_FAILED: "report written, problem sending it back (the operators are told)",
    S.REJECTED_NOT_SPINE: "not a spine study: not sent",
}
_HELD = {"awaiting_referral": "waiting for the referral", "no_referral": "waiting for the referral",
         "no_reviewer": "waiting for a reviewer", "awaiting_approval": "waiting for the notes to be checked"}
OPEN_FOR_REVIEWER = (S.DELIVERING, S.DELIVERED, S.REPORTED)
ATTENTION = (S.HELD, S.QUARANTINED, S.FAILED, S.REPORT_FAILED, S.REJECTED_NOT_SPINE)


def plain_state(study: Study | None) -> str:
    """A case's state in words a referrer understands."""
    if study is None:
        return "waiting for the images"
    if study.state == S.HELD:
        plain = _HELD.get(study.hold_reason or "", "on hold (the operators are told)")
        if study.hold_reason == NO_REVIEWER and study.state_reason and study.state_reason != NO_REVIEWER:
            return f"{plain}: {study.state_reason}"
        return plain
    return _PLAIN.get(study.state, study.state.replace("_", " "))


def referral_state(referral: ReferralRow, study: Study | None) -> str:
    """Where a referral is, in plain words: its case's state once matched."""
    if study is None and referral.state == "withdrawn":
        return "withdrawn"
    if study is None and referral.state == "expired":
        return "expired: no images arrived in time"
    return plain_state(study)


_SUBMITTED = (("accession_number", "Accession number"), ("study_date", "Study date"), ("urgency", "Urgency"),
              ("subspecialty", "Subspecialty asked for"), ("referrer.name", "Referring clinician"),
              ("referrer.contact", "Contact"), ("clinical.history", "History"), ("clinical.symptoms", "Symptoms"),
              ("clinical.pain.location", "Pain: location"), ("clinical.pain.intensity", "Pain: intensity (0-10)"),
              ("clinical.pain.nature", "Pain: nature"), ("clinical.pain.duration_weeks", "Pain: weeks"),
              ("clinical.pain.radiation", "Pain: radiation"), ("clinical.red_flags", "Red flags"),
              ("clinical.examination", "Examination"), ("clinical.emg", "EMG / nerve conduction"),
              ("clinical.prior_treatment", "Prior treatment"), ("clinical.prior_imaging", "Prior imaging"),
              ("clinical.question", "Question for the reviewer"))


def submitted_fields(document: Any, dates: DateFormat = ISO_DATES) -> list[tuple[str, str]]:
    """(label, value) of every field the referral was sent with, in the form's order, as written (its dates in
    the source's format, ``dates``)."""
    from gateway.web.forms import DATE_FIELDS, RED_FLAG_LABELS

    data = document.model_dump(mode="json", exclude_none=True)
    rows = []
    for path, label in _SUBMITTED:
        value: Any = data
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if path == "clinical.red_flags" and value:
            value = "; ".join(RED_FLAG_LABELS.get(flag, flag) for flag in value)
        if path in DATE_FIELDS and value:
            value = dates.written(str(value))
        if value not in (None, "", []):
            rows.append((label, str(value)))
    return rows


def when(moment: dt.datetime | None) -> str:
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M UTC")


# --- referrer -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReferrerRow:
    link: str | None
    accession: str
    patient: str
    urgency: str
    state: str
    received: str
    updated: str
    patient_id: str = ""
    birth_date: str = ""
    critical: str = ""  # "" (none), "new" (not acknowledged) or "acknowledged"


def critical_state(study: Study | None) -> str:
    if study is None:
        return ""
    return _critical_states([study.id]).get(study.id, "")


def _critical_states(study_ids: list[int]) -> dict[int, str]:
    """Study id → "new" (a critical result not acknowledged) or "acknowledged", for those with one: one query."""
    rows = CriticalResult.select(CriticalResult.study, CriticalResult.acknowledged_at).where(
        CriticalResult.study.in_(study_ids)) if study_ids else []
    return {row.study_id: "acknowledged" if row.acknowledged_at else "new" for row in rows}


REFERRER_PAGE = 100  # rows of the referrer's case list per page


@dataclass(frozen=True)
class ReferrerPage:
    """One page of the referrer's case list and where the next, older, page starts (None: this is the last)."""

    rows: list[ReferrerRow]
    older: dt.datetime | None


def referrer_cases(source_name: str, before: dt.datetime | None = None, limit: int = REFERRER_PAGE) -> ReferrerPage:
    """The source's referrals and its studies that no referral matched yet, newest first, received before
    ``before`` (the previous page's end), ``limit`` rows (more when rows share the time at the page's end: they
    stay together); each read from an index in that order (``referral``'s source and time, ``study_unreferred``),
    so a page costs the same whatever the source's history."""
    source = Source.get_or_none(Source.name == source_name)
    if source is None:
        return ReferrerPage([], None)
    found = _listed(source.id, limit + 1, before=before)
    page, older = found[:limit], None
    if len(found) > limit:
        older = page[-1][0]
        if found[limit][0] == older:  # the next row shares the last one's time: all rows of that time on this page
            page = [entry for entry in page if entry[0] != older] + _listed(source.id, None, at=older)
    if before is None:  # a critical result not yet acknowledged is on the first page, however old its case
        listed = {study.id for _, _, study in page if study is not None}
        page += [entry for entry in _unacknowledged(source.id) if entry[2].id not in listed]
    critical = _critical_states([study.id for _, _, study in page if study is not None])
    if before is not None:  # ... and only there
        page = [entry for entry in page if entry[2] is None or critical.get(entry[2].id) != "new"]
    rows = [_referrer_row(referral, study, critical.get(study.id, "") if study else "") for _, referral, study in page]
    # critical results not yet acknowledged first, then urgent, each group newest first (the order is stable)
    return ReferrerPage(sorted(rows, key=lambda row: (row.critical != "new", row.urgency != "urgent")), older)


def _unacknowledged(source_id: int) -> list[tuple[dt.datetime, ReferralRow | None, Study]]:
    """(time, referral, study) of the source's cases with a critical result not yet acknowledged (a partial index,
    ``critical_result_open``, holds only those)."""
    studies = (Study.select().join(CriticalResult)
               .where(CriticalResult.acknowledged_at.is_null() & (Study.source == source_id)))
    found: list[tuple[dt.datetime, ReferralRow | None, Study]] = []
    for study in studies:
        referral = ReferralRow.get_or_none(ReferralRow.study == study.id)
        found.append((referral.received_at if referral else study.first_received_at, referral, study))
    return found


def _listed(source_id: int, limit: int | None, *, before: dt.datetime | None = None,
            at: dt.datetime | None = None) -> list[tuple[dt.datetime, ReferralRow | None, Study | None]]:
    """(time, referral, study) of the source's referrals and unreferred studies received before ``before`` (or at
    ``at``), newest first, ``limit`` of each table at most."""
    mine = ReferralRow.source == source_id
    unreferred = (Study.source == source_id) & (Study.has_referral == False)  # noqa: E712
    if before is not None:
        mine &= ReferralRow.received_at < before
        unreferred &= Study.first_received_at < before
    if at is not None:
        mine &= ReferralRow.received_at == at
        unreferred &= Study.first_received_at == at
    referrals = (ReferralRow.select(ReferralRow, Study).join(Study, peewee.JOIN.LEFT_OUTER).where(mine)
                 .order_by(ReferralRow.received_at.desc()).limit(limit))
    unmatched = Study.select().where(unreferred).order_by(Study.first_received_at.desc()).limit(limit)
    found: list[tuple[dt.datetime, ReferralRow | None, Study | None]] = [
        (referral.received_at, referral, referral.study if referral.study_id else None) for referral in referrals]
    found += [(study.first_received_at, None, study) for study in unmatched]
    return sorted(found, key=lambda entry: entry[0], reverse=True)


def _referrer_row(referral: ReferralRow | None, study: Study | None, critical: str) -> ReferrerRow:
    if referral is None:
        assert study is not None
        return ReferrerRow(None, "", "(images without a referral)", study.urgency, plain_state(study),
                           when(study.first_received_at), when(study.state_changed_at), critical=critical)
    return ReferrerRow(f"/referrer/referrals/{referral.id}", referral.accession_number,
                       referral.patient_name.replace("^", ", ", 1).replace("^", " "), referral.urgency,
                       referral_state(referral, study), when(referral.received_at),
                       when(study.state_changed_at if study else referral.received_at),
                       referral.patient_id, referral.birth_date, critical)


def referral_for(source_name: str, referral_id: int) -> ReferralRow | None:
    """The referral if it belongs to this source, else None (the page answers 404 either way)."""
    return (ReferralRow.select().join(Source)
            .where((ReferralRow.id == referral_id) & (Source.name == source_name)).first())


_STATUS = {"VERIFIED": "final: signed by the reviewer", "UNVERIFIED": "preliminary: not signed"}


@dataclass(frozen=True)
class KeyImage:
    """A key image of a finding: where the hospital's PACS has it ("series 3, image 12") and the node's
    de-identified copy it is drawn from (an :class:`OutboundObject` id; None when the node has none)."""

    place: str
    image_id: int | None = None


@dataclass
class ReportFindingView:
    text: str
    key_images: list[KeyImage] = field(default_factory=list)


@dataclass
class ReportView:
    """The re-identified report of a case in a clinician's words (no DICOM vocabulary): who signed it and its
    status, the clinical information, the findings with their key images, the impression, the answer to the
    clinical question, the recommendations; ``lines`` for the rest of a report the gateway did not write."""

    title: str = ""
    reviewer: str = ""
    status: str = ""
    clinical: list[str] = field(default_factory=list)
    findings: list[ReportFindingView] = field(default_factory=list)
    impressions: list[str] = field(default_factory=list)
    answer: str = ""
    recommendations: list[str] = field(default_factory=list)
    lines: list[tuple[int, str, str]] = field(default_factory=list)
    pdf: bytes | None = None
    received: str = ""


def returned_report(study: Study, spool: Spool) -> ReportView | None:
    """The report as the source receives it (re-identified), or None while there is none."""
    reports = (ReportObject.select().where((ReportObject.study == study) & ReportObject.outbound.is_null(False))
               .order_by(ReportObject.received_at, ReportObject.id))
    view = ReportView()
    for report in reports:
        outbound = OutboundObject.get_by_id(report.outbound_id)
        dataset = pydicom.dcmread(spool.absolute(outbound.spool_path))
        if "EncapsulatedDocument" in dataset and view.pdf is None:
            view.pdf = bytes(dataset.EncapsulatedDocument).rstrip(b"\0") + b"\n"
        elif dataset.get("ContentSequence") and not view.title and dataset.get("ValueType") == "CONTAINER":
            read_sr(dataset, view, _ImagePositions(study, spool))
        view.received = view.received or when(report.received_at)
    return view if (view.title or view.pdf) else None


class _ImagePositions(dict):
    """Original SOP Instance UID → :class:`KeyImage`: "series N, image M" (the numbers the hospital's PACS shows,
    read from the original's header in the spool) and the case's de-identified copy of that image, the one the
    reviewer saw and referenced, looked up when a key image asks for it."""

    def __init__(self, study: Study, spool: Spool) -> None:
        super().__init__()
        self.study, self.spool = study, spool

    def __missing__(self, uid: str) -> KeyImage:
        from gateway.storage.models import Instance

        row = Instance.get_or_none((Instance.study == self.study) & (Instance.sop_instance_uid == uid))
        place, copy = "an image of the study", None
        if row is not None:
            try:
                header = pydicom.dcmread(self.spool.absolute(row.spool_path), stop_before_pixels=True,
                                         specific_tags=["SeriesNumber", "InstanceNumber"])
                place = f"series {header.get('SeriesNumber', '?')}, image {header.get('InstanceNumber', '?')}"
            except (OSError, pydicom.errors.InvalidDicomError, ValueError):
                pass
            copy = (OutboundObject.select(OutboundObject.id)
                    .where((OutboundObject.instance == row) & (OutboundObject.kind == "image"))
                    .order_by(OutboundObject.id.desc()).scalar())
        self[uid] = KeyImage(place, copy)
        return self[uid]


def key_image_copy(study: Study, image_id: int) -> OutboundObject | None:
    """The case's de-identified image ``image_id`` (an :class:`OutboundObject` of kind image), or None if the
    case has no such image: what the referrer's page draws a key image from."""
    return OutboundObject.get_or_none((OutboundObject.id == image_id) & (OutboundObject.study == study)
                                      & (OutboundObject.kind == "image"))


def read_sr(dataset: Dataset, view: ReportView, positions: Mapping[str, KeyImage]) -> None:
    """Fill ``view`` from a TID 2000 report: its sections by their codes; anything else as generic lines."""
    view.title = concept_name(dataset) or "Report"
    view.status = _STATUS.get(str(dataset.get("VerificationFlag", "")), "")
    verifier = (dataset.get("VerifyingObserverSequence") or [None])[0]
    if verifier is not None and verifier.get("VerifyingObserverName"):
        view.reviewer = readable_name(str(verifier.VerifyingObserverName))
    for item in dataset.get("ContentSequence", []):
        name, kind = concept_name(item), item.get("ValueType")
        children = [child for child in item.get("ContentSequence", []) if child.get("ValueType") == "TEXT"]
        if kind == "PNAME" and not view.reviewer:
            view.reviewer = readable_name(str(item.get("PersonName", "")))
        elif kind in ("PNAME", "CODE"):  # the observer's type, the language: DICOM's, not the reader's
            continue
        elif name == "Clinical Information":
            view.clinical += [item_value(child, image_label="key image") for child in children]
        elif name == "Findings":
            view.findings += [ReportFindingView(item_value(child, image_label="key image"), [
                positions[str(image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)]
                for image in child.get("ContentSequence", [])
                if image.get("ValueType") == "IMAGE" and image.get("ReferencedSOPSequence")]) for child in children]
        elif name == "Impressions":
            for text in (item_value(child, image_label="key image") for child in children):
                if text.startswith(ANSWER_PREFIX):
                    view.answer = text[len(ANSWER_PREFIX):]
                else:
                    view.impressions.append(text)
        elif name == "Recommendations":
            view.recommendations += [item_value(child, image_label="key image") for child in children]
        else:
            view.lines.append((0, human_concept_name(item), item_value(item, image_label="key image", human=True)))
            view.lines.extend(sr_lines(item, 1))


# --- SR content -----------------------------------------------------------------------------------------------


def sr_lines(dataset: Dataset, depth: int = 0) -> list[tuple[int, str, str]]:
    """(depth, label, value) for every content item, in document order; IMAGE references are left out. Labels
    and numbers as people read them ("Pain severity (0-10)", "10 weeks"); person names as stored (``Doe^Jane``)."""
    return [(level, human_concept_name(item), item_value(item, image_label="key image", human=True))
            for level, item in content_items(dataset, depth)]


# --- reviewer -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorklistRow:
    key: str
    urgent: bool
    state: str
    delivered: str
    due: str
    clock: str
    overdue: bool


def duration(seconds: float) -> str:
    """A span as people read it: "15 min", "3 h 20 min", "2 d 4 h" (the sign is dropped)."""
    span = int(abs(seconds)) // 60
    if span >= 48 * 60:
        return f"{span // 1440} d {span % 1440 // 60} h"
    return f"{span // 60} h {span % 60:02d} min" if span >= 60 else f"{span} min"


def sla_clock(due: dt.datetime | None, now: dt.datetime) -> tuple[str, bool]:
    """("3 h 20 min left" or "overdue by 15 min", overdue?)."""
    if due is None:
        return "no deadline", False
    seconds = int((due - now).total_seconds())
    text = duration(seconds)
    return (f"{text} left", False) if seconds >= 0 else (f"overdue by {text}", True)


def case_clock(study: Study, now: dt.datetime) -> tuple[str, bool]:
    """The SLA clock of a case: running until its first report arrives, then stopped at that moment."""
    reported = (ReportObject.select(peewee.fn.MIN(ReportObject.received_at))
                .where(ReportObject.study == study).scalar())
    if reported is None or study.sla_due_at is None:
        return sla_clock(study.sla_due_at, now)
    text, late = sla_clock(study.sla_due_at, reported)
    if late:
        return f"stopped at the report ({when(reported)}), {text.replace('overdue by', 'late by')}", True
    return f"stopped at the report ({when(reported)}), {text.replace(' left', '')} before the deadline", False


def worklist(reviewer: str) -> list[WorklistRow]:
    """The reviewer's open cases: urgent first, then by SLA deadline."""
    now = utcnow()
    rows = []
    cases = Study.select().where((Study.reviewer == reviewer) & Study.state.in_(OPEN_FOR_REVIEWER))
    for study in cases:
        clock, overdue = case_clock(study, now)
        state = "report sent" if study.state == S.REPORTED else (
            "images arriving" if study.state == S.DELIVERING else "to report")
        rows.append(WorklistRow(study.key, study.urgency == "urgent", state, when(study.state_changed_at),
                                when(study.sla_due_at), clock, overdue))
    far = dt.datetime.max
    order = {study.key: study.sla_due_at or far for study in cases}
    return sorted(rows, key=lambda r: (not r.urgent, r.state == "report sent", order[r.key]))


def reviewer_case(reviewer: str, key: str) -> Study | None:
    """The case if it is assigned to this reviewer and open, else None (404)."""
    return Study.get_or_none((Study.key == key) & (Study.reviewer == reviewer) & Study.state.in_(OPEN_FOR_REVIEWER))


@dataclass(frozen=True)
class SeriesRow:
    number: str
    modality: str
    instances: int
    first: int | None
    last: int | None
    description: str = ""  # the de-identified copy's Series Description, as de-identification kept it


@dataclass
class CaseImagesIndex:
    """The de-identified images by (series number, instance number) → pseudonymous SOP Instance UID."""

    series: list[SeriesRow]
    by_position: dict[tuple[int, int], str]


def images_index(study: Study, spool: Spool) -> CaseImagesIndex:
    """The case's series as the reviewer received them, read from the de-identified copies only (their
    descriptions are what the Clean Descriptors option left, or nothing)."""
    tags = ["SeriesNumber", "InstanceNumber", "Modality", "SOPInstanceUID", "SeriesDescription"]
    by_series: dict[str, list[int]] = {}
    modality: dict[str, str] = {}
    description: dict[str, str] = {}
    by_position: dict[tuple[int, int], str] = {}
    images = OutboundObject.select().where((OutboundObject.study == study) & (OutboundObject.kind == "image"))
    for row in images:
        header = pydicom.dcmread(spool.absolute(row.spool_path), stop_before_pixels=True, specific_tags=tags)
        series = str(header.get("SeriesNumber", "") or "")
        number = header.get("InstanceNumber")
        by_series.setdefault(series, [])
        modality[series] = str(header.get("Modality", ""))
        description[series] = description.get(series) or str(header.get("SeriesDescription", "") or "").strip()
        if number is not None:
            by_series[series].append(int(number))
            if series.isdigit():
                by_position[(int(series), int(number))] = str(header.SOPInstanceUID)
    rows = [SeriesRow(series, modality[series], len(numbers), min(numbers, default=None),
                      max(numbers, default=None), description[series])
            for series, numbers in sorted(by_series.items(), key=lambda kv: (len(kv[0]), kv[0]))]
    return CaseImagesIndex(rows, by_position)


def scrubbed_notes(study: Study, spool: Spool) -> list[tuple[int, str, str]]:
    """The notes as the gateway sent them to the reviewer: the content of the case's notes SR (scrubbed)."""
    row = (OutboundObject.select().where((OutboundObject.study == study) & (OutboundObject.kind == "notes_sr"))
           .order_by(OutboundObject.id.desc()).first())
    if row is None:
        return []
    return sr_lines(pydicom.dcmread(spool.absolute(row.spool_path)))


# --- operators ------------------------------------------------------------------------------------------------


def attention_cases() -> list[dict[str, Any]]:
    """Held, quarantined, failed and rejected cases with the reason (the hold reason or the last audit event)."""
    from gateway.storage.models import AuditEvent

    rows = []
    for study in Study.select().where(Study.state.in_(ATTENTION)).order_by(Study.state_changed_at.desc()).limit(200):
        reason = study.state_reason or study.hold_reason
        if not reason:
            last = (AuditEvent.select().where((AuditEvent.study_key == study.key) & (AuditEvent.outcome != "success"))
                    .order_by(AuditEvent.at.desc()).first())
            reason = f"{last.action}: {last.detail}" if last is not None else ""
        source = study.source.name if study.source is not None else ""
        rows.append({"key": study.key, "state": study.state, "reason": reason or "-",
                     "since": when(study.state_changed_at), "source": source,
                     "reviewer": study.reviewer or ""})
    return rows


def waiting_referrals(wait_s: float) -> list[dict[str, Any]]:
    """Referrals still waiting for their images, oldest first, with when they expire (``referrals.wait_s``).
    The operators are inside the hospital's trust: the accession number is shown (never logged)."""
    rows = (ReferralRow.select(ReferralRow, Source).join(Source)
            .where((ReferralRow.state == "waiting") & ReferralRow.study.is_null())
            .order_by(ReferralRow.received_at).limit(200))
    return [{"id": r.id, "source": r.source.name, "accession": r.accession_number, "urgency": r.urgency,
             "received": when(r.received_at), "expires": when(r.received_at + dt.timedelta(seconds=wait_s))}
            for r in rows]


def case_summary(key: str) -> Study | None:
    return Study.get_or_none(Study.key == key)
