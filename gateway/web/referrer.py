"""Referrer pages: the referral form, the notes as the reviewer will read them (to redact more before they go),
the source's cases in plain words, and the returned report."""

from __future__ import annotations

import datetime as dt
import json

import pydicom
import pydicom.errors
from starlette.responses import RedirectResponse, Response

from gateway.dicom import render
from gateway.privacy.identifiers import IdentifierSet, from_referral
from gateway.referral import redaction
from gateway.referral.codes import RedFlag
from gateway.referral.document import (
    HISTORY_CHARS,
    MAX_REDACTIONS,
    NOTE_CHARS,
    QUESTION_CHARS,
    SHORT_TEXT_CHARS,
    Referral,
)
from gateway.referral.errors import ReferralValidationError
from gateway.referral.intake import store_referral
from gateway.referral.matching import ReferralState
from gateway.referral.notes_case import case_redactions, load_document
from gateway.stages.referral import NotesStage
from gateway.storage.models import CriticalResult, StudyIdentity, utcnow
from gateway.storage.models import Referral as ReferralRow
from gateway.web import views
from gateway.web.dates import ISO_DATES, DateFormat
from gateway.web.forms import RED_FLAG_LABELS, TEXT_FIELDS, form_values, parse_referral_form
from gateway.web.page import SECURITY_HEADERS, Page, Refused

MAX_ID_DIGITS = 18  # below 2**63: a row id of SQLite and of PostgreSQL's bigint


def cases(page: Page) -> Response:
    source = page.user.source
    before = _moment(page.request.query_params.get("before", ""))
    listed = views.referrer_cases(source, before)
    older = f"/referrer?before={listed.older.isoformat()}" if listed.older else None
    return page.render("referrer_cases.html", title="Your cases", source=source, rows=listed.rows, older=older,
                       first=before is None, dates=_dates(page), sent=page.request.query_params.get("sent", ""))


def _moment(text: str) -> dt.datetime | None:
    """The ``before`` of an "older cases" link (an ISO time without zone, as the link writes it); None (the first
    page) when absent or not such a time."""
    try:
        moment = dt.datetime.fromisoformat(text) if text else None
    except ValueError:
        return None
    return moment if moment is None or moment.tzinfo is None else None


def _source_config(page: Page):
    """The configured source the referrer's account belongs to (None if it left the configuration)."""
    return next((s for s in page.portal.config.sources if s.name == page.user.source), None)


def _dates(page: Page) -> DateFormat:
    """How the account's source writes dates (the form's date fields)."""
    source = _source_config(page)
    return DateFormat.of(source.locale, source.day_first) if source is not None else ISO_DATES


def new_form(page: Page) -> Response:
    return _form(page, {"urgency": "routine", "clinical.red_flags": [], "redactions": []}, {})


def _form(page: Page, values: dict, errors: dict, status: int = 200) -> Response:
    return page.render("referrer_form.html", status=status, title="New referral", values=values, errors=errors,
                       flags=[(flag.value, RED_FLAG_LABELS[flag]) for flag in RedFlag], source=page.user.source,
                       limits=json.dumps({"fields": FIELD_LIMITS}), dates=_dates(page))


# What the form's script checks before sending (the schema's limits, gateway.referral.document).
FIELD_LIMITS = {"clinical.history": HISTORY_CHARS, "clinical.question": QUESTION_CHARS,
                **{f"clinical.{name}": NOTE_CHARS
                   for name in ("symptoms", "examination", "emg", "prior_treatment", "prior_imaging")},
                **{f"clinical.pain.{name}": SHORT_TEXT_CHARS for name in ("location", "nature", "radiation")},
                "referrer.contact": SHORT_TEXT_CHARS}


def _source_identifiers(page: Page, document: Referral) -> tuple[IdentifierSet, bool]:
    """The identifiers the notes stage will know of a referral whose images it has not seen yet (the
    referral's own and the source's names), and the source's date order."""
    source = next((s for s in page.portal.config.sources if s.name == document.source), None)
    names = (document.source, source.ae_title) if source is not None else (document.source,)
    return from_referral(document).merged(IdentifierSet(sources=names)), source.day_first if source else True


def _preview(page: Page, document: Referral, values: dict, phrase: str = "", problem: str = "",
             status: int = 200) -> Response:
    identifiers, day_first = _source_identifiers(page, document)
    fields = redaction.notes_fields(document, identifiers, 0, day_first=day_first, redactions=document.redactions)
    return page.render("referrer_preview.html", status=status, title="Check the notes before they go",
                       values=values, fields=fields, redactions=list(document.redactions), phrase=phrase,
                       errors={"phrase": [problem]} if problem else {}, text_fields=TEXT_FIELDS,
                       source=page.user.source)


def submit(page: Page) -> Response:
    """The form, and the preview it leads to: ``action`` edit (back to the form), redact / a word's button /
    unredact (the preview again), send (store the referral); anything else shows the preview."""
    form = page.posted
    flags = [str(f) for f in form.getlist("clinical.red_flags")]
    redactions = [str(r) for r in form.getlist("redactions") if str(r).strip()]
    if form.get("unredact"):
        redactions = [r for r in redactions if r != form.get("unredact")]
    result = parse_referral_form(form, flags, page.user.source, redactions, _dates(page))
    action = str(form.get("action") or "preview")
    if result.value is None or action == "edit":
        return _form(page, result.values, result.errors, status=422 if result.value is None else 200)
    phrase = str(form.get("redact_word") or (form.get("phrase") if action == "redact" else "") or "")
    if phrase:
        return _add_phrase(page, result, phrase)
    if action == "send":
        return _send(page, result)
    return _preview(page, result.value, result.values)


def _add_phrase(page: Page, result, phrase: str) -> Response:
    document: Referral = result.value
    try:
        cleaned = redaction.check_phrase(phrase, [text for _, text in redaction.referral_texts(document)])
    except redaction.RedactionRefused as refused:
        return _preview(page, document, result.values, phrase, str(refused), status=422)
    if cleaned in document.redactions:
        return _preview(page, document, result.values)
    if len(document.redactions) >= MAX_REDACTIONS:
        return _preview(page, document, result.values, phrase, f"At most {MAX_REDACTIONS} phrases.", status=422)
    document = document.model_copy(update={"redactions": [*document.redactions, cleaned]})
    return _preview(page, document, {**result.values, "redactions": list(document.redactions)})


WAITING, WITHDRAWN = ReferralState.WAITING, ReferralState.WITHDRAWN


def _send(page: Page, result) -> Response:
    replaces = _replaced(page, str(result.values.get("replaces") or ""))
    try:
        with page.portal.context.database.atomic():
            if replaces is not None and not _withdraw(replaces):
                result.add("", f"Referral {replaces.id} can no longer be corrected: its images have arrived "
                               "(or it was withdrawn). Nothing was sent.")
                return _form(page, result.values, result.errors, status=409)
            row = store_referral(result.value, "http")
    except ReferralValidationError as exc:
        for problem in exc.problems:
            result.add("", problem)
        return _form(page, result.values, result.errors, status=422)
    page.audit("web_referral", detail=f"referral {row.id}; {len(result.value.redactions)} redaction(s)")
    if replaces is not None:
        page.audit("web_referral_corrected", detail=f"referral {replaces.id} replaced by {row.id}")
    return RedirectResponse(f"/referrer?sent={row.id}", status_code=303)


def _replaced(page: Page, text: str):
    """The referral a correction replaces (of the account's source), or None."""
    if not (text.isascii() and text.isdigit() and len(text) <= MAX_ID_DIGITS):
        return None
    return views.referral_for(page.user.source, int(text))


def correctable(referral) -> bool:
    """A referral may be corrected or withdrawn until its images arrive (it is then the case's)."""
    return referral.study_id is None and referral.state == WAITING


def _withdraw(referral) -> bool:
    """Withdraw ``referral`` if it is still waiting for its images (one conditional UPDATE); True if done."""
    return bool(ReferralRow.update(state=WITHDRAWN).where(
        (ReferralRow.id == referral.id) & (ReferralRow.state == WAITING) & ReferralRow.study.is_null()).execute())


def edit(page: Page) -> Response:
    """The form filled with a waiting referral, to send corrected (it then replaces the first)."""
    referral = _referral(page)
    if not correctable(referral):
        raise Refused(409, "This referral can no longer be corrected: its images have arrived, or it was withdrawn.")
    values = form_values(load_document(referral), _dates(page))
    return _form(page, {**values, "replaces": str(referral.id)}, {})


def withdraw(page: Page) -> Response:
    """Withdraw a referral whose images have not arrived (audited): it is never matched."""
    referral = _referral(page)
    if not _withdraw(referral):
        return case(page, problem_action="This referral can no longer be withdrawn: its images have arrived.",
                    status=409)
    page.audit("web_referral_withdrawn", detail=f"referral {referral.id}")
    return RedirectResponse(f"/referrer/referrals/{referral.id}", status_code=303)


def _referral(page: Page):
    text = str(page.request.path_params["referral_id"])
    if not (text.isascii() and text.isdigit() and len(text) <= MAX_ID_DIGITS):
        raise Refused(404, "No such case.")  # 23 digits overflow the database's integer: 404, not 500
    referral_id = int(text)
    referral = views.referral_for(page.user.source, referral_id)
    if referral is None:
        raise Refused(404, "No such case.")
    return referral


def _case_preview(page: Page, referral, document: Referral, study) -> tuple[list, bool]:
    """The notes as the reviewer will read them, while the referrer may still redact (no notes attached yet):
    (fields, dates shifted?). Empty once the notes have gone on."""
    if study is not None and study.state not in redaction.BEFORE_NOTES:
        return [], False
    identity = StudyIdentity.get_or_none(StudyIdentity.study == study.id) if study is not None else None
    if identity is None:
        identifiers, day_first = _source_identifiers(page, document)
        return redaction.notes_fields(document, identifiers, 0, day_first=day_first,
                                      redactions=document.redactions), False
    stage = NotesStage.of(page.portal.config, page.portal.spool, context=page.portal.context)
    identifiers = stage.identifiers_for(study, document)
    fields = redaction.notes_fields(document, identifiers, identity.date_offset_days,
                                    day_first=stage._day_first(study, document),
                                    redactions=case_redactions(study, document))
    return fields, True


def case(page: Page, phrase: str = "", problem: str = "", status: int = 200, problem_action: str = "") -> Response:
    referral = _referral(page)
    study = referral.study if referral.study_id else None
    report = views.returned_report(study, page.portal.spool) if study is not None else None
    if report is not None and study is not None:
        page.audit("web_report_read", study_key=study.key, detail=f"referral {referral.id}")
    document = load_document(referral)
    fields, shifted = _case_preview(page, referral, document, study)
    return page.render("referrer_case.html", status=status, title=f"Case {referral.accession_number}",
                       referral=referral, document=document, study=study,
                       state=views.referral_state(referral, study), correctable=correctable(referral),
                       submitted=views.submitted_fields(document, _dates(page)), dates=_dates(page),
                       problem_action=problem_action,
                       report=report, when=views.when, fields=fields, shifted=shifted,
                       redactions=list(document.redactions), phrase=phrase,
                       errors={"phrase": [problem]} if problem else {},
                       done=page.request.query_params.get("done", ""),
                       critical=CriticalResult.get_or_none(CriticalResult.study == study) if study else None)


def acknowledge(page: Page) -> Response:
    """The referrer has read a critical result (audited); its escalation to the operators is then not sent."""
    referral = _referral(page)
    study = referral.study if referral.study_id else None
    critical = CriticalResult.get_or_none(CriticalResult.study == study) if study is not None else None
    if critical is None or study is None:
        raise Refused(404, "This case has no critical result.")
    changed = CriticalResult.update(acknowledged_at=utcnow(), acknowledged_by=page.user.name).where(
        (CriticalResult.id == critical.id) & CriticalResult.acknowledged_at.is_null()).execute()
    if changed:
        page.audit("critical_result_acknowledged", study_key=study.key, detail=f"referral {referral.id}")
    return RedirectResponse(f"/referrer/referrals/{referral.id}", status_code=303)


def redact(page: Page) -> Response:
    """A phrase the referrer removes from a submitted referral's notes (audited), until they are attached."""
    referral = _referral(page)
    phrase = str(page.posted.get("redact_word") or page.posted.get("phrase") or "")
    try:
        redaction.add_referrer_redaction(referral, phrase, f"web:{page.user.name}")
    except redaction.RedactionRefused as refused:
        page.audit("web_referrer_redaction", study_key=referral.study.key if referral.study_id else None,
                   outcome="refused", detail=f"referral {referral.id}")
        return case(page, phrase, str(refused), status=409)
    return RedirectResponse(f"/referrer/referrals/{referral.id}?done=redacted#notes", status_code=303)


def report_pdf(page: Page) -> Response:
    referral = _referral(page)
    study = referral.study if referral.study_id else None
    report = views.returned_report(study, page.portal.spool) if study is not None else None
    if study is None or report is None or report.pdf is None:
        raise Refused(404, "There is no PDF report for this case yet.")
    page.audit("web_report_pdf", study_key=study.key, detail=f"referral {referral.id}")
    return Response(report.pdf, media_type="application/pdf", headers={
        "Content-Disposition": f'inline; filename="report-{referral.id}.pdf"', "Cache-Control": "no-store"})


def key_image(page: Page) -> Response:
    """A key image of the case's report, drawn from the node's de-identified copy of the case (the referrer's
    own images): a thumbnail, or with ``?size=large`` a larger picture (audited)."""
    referral = _referral(page)
    study = referral.study if referral.study_id else None
    text = str(page.request.path_params["image_id"])
    copy = None
    if study is not None and text.isascii() and text.isdigit() and len(text) <= MAX_ID_DIGITS:
        copy = views.key_image_copy(study, int(text))
    if study is None or copy is None:
        raise Refused(404, "No such image.")
    large = page.request.query_params.get("size") == "large"
    try:
        picture = render.thumbnail_jpeg(pydicom.dcmread(page.portal.spool.absolute(copy.spool_path)),
                                        render.LARGE_PX if large else render.THUMBNAIL_PX)
    except (OSError, ValueError, RuntimeError, NotImplementedError, pydicom.errors.InvalidDicomError):
        raise Refused(404, "This image cannot be shown here: open it in your PACS.") from None
    size = "large" if large else "thumbnail"
    page.audit("web_key_image", study_key=study.key, detail=f"referral {referral.id}; {size}")
    return Response(picture, media_type="image/jpeg", headers=SECURITY_HEADERS)


ROUTES = [
    ("GET", "/referrer", cases, "referrer"),
    ("GET", "/referrer/new", new_form, "referrer"),
    ("POST", "/referrer/new", submit, "referrer"),
    ("GET", "/referrer/referrals/{referral_id}", case, "referrer"),
    ("GET", "/referrer/referrals/{referral_id}/report.pdf", report_pdf, "referrer"),
    ("GET", "/referrer/referrals/{referral_id}/key-images/{image_id}", key_image, "referrer"),
    ("POST", "/referrer/referrals/{referral_id}/redact", redact, "referrer"),
    ("POST", "/referrer/referrals/{referral_id}/acknowledge", acknowledge, "referrer"),
    ("GET", "/referrer/referrals/{referral_id}/edit", edit, "referrer"),
    ("POST", "/referrer/referrals/{referral_id}/withdraw", withdraw, "referrer"),
]
