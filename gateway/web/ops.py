"""Operator pages: cases by state, the cases that need a person (with the reason), a case's timeline,
reviewers' load and peer health; for a case the outbound guard quarantined, the hit, the notes with the guard's
matches and the operator's redactions; and the CLI's actions (retry, release, approve notes) as POST buttons,
each calling the same function as the CLI and audited with the operator's name. A guard hit is never approved
as it stands: its page offers no approval, and the approve action refuses it."""

from __future__ import annotations

from starlette.responses import RedirectResponse, Response

from gateway.ops import audit
from gateway.ops.status import collect_status
from gateway.referral import redaction
from gateway.referral.review import ApprovalRefused, UnknownCase, approval_applies, approve_notes
from gateway.stages.deliver import retry_case
from gateway.stages.referral import NotesStage
from gateway.storage import cases
from gateway.storage.models import CaseState
from gateway.web import views
from gateway.web.page import Page, Refused


def overview(page: Page) -> Response:
    snapshot = collect_status(page.portal.config.storage.spool_dir, page.portal.config.reviewers)
    return page.render("ops_overview.html", title="Operations", snapshot=snapshot,
                       attention=views.attention_cases(), done=page.request.query_params.get("done", ""),
                       waiting=views.waiting_referrals(page.portal.config.referrals.wait_s))


def _study(page: Page):
    study = views.case_summary(str(page.request.path_params["key"]))
    if study is None:
        raise Refused(404, "No such case.")
    return study


def _page(page: Page, study, *, status: int = 200, error: str = "", release_error: str = "",
          approve_error: str = "", phrase: str = "", phrase_problem: str = "") -> Response:
    review = None
    if redaction.is_notes_leak(study):
        notes = NotesStage.of(page.portal.config, page.portal.spool, context=page.portal.context)
        review = redaction.leak_review(notes, study)
    return page.render("ops_case.html", status=status, title=f"Case {study.key}", study=study,
                       events=audit.query(case=study.key, limit=500), plain=views.plain_state(study),
                       when=views.when, done=page.request.query_params.get("done", "") if status == 200 else "",
                       error=error, review=review, release_error=release_error, approve_error=approve_error,
                       guard_hit=redaction.is_guard_hit(study), phrase=phrase,
                       approvable=approval_applies(study),
                       errors={"phrase": [phrase_problem]} if phrase_problem else {})


def case(page: Page) -> Response:
    return _page(page, _study(page))


def _done(study, what: str) -> Response:
    return RedirectResponse(f"/ops/cases/{study.key}?done={what}", status_code=303)


def _refuse(page: Page, study, message: str) -> Response:
    return _page(page, study, status=409, error=message)


def redact(page: Page) -> Response:
    """A phrase the operator removes from a quarantined case's notes (audited with the operator's name)."""
    study = _study(page)
    phrase = str(page.posted.get("redact_word") or page.posted.get("phrase") or "")
    stage = NotesStage.of(page.portal.config, page.portal.spool, context=page.portal.context)
    try:
        redaction.add_operator_redaction(study, phrase, redaction.source_texts(stage, study), f"web:{page.user.name}")
    except redaction.RedactionRefused as refused:
        page.audit("web_notes_redaction", study_key=study.key, outcome="refused", detail=f"state {study.state}")
        return _page(page, study, status=409, phrase=phrase, phrase_problem=str(refused))
    return _done(study, "redacted")


def retry(page: Page) -> Response:
    study = _study(page)
    if not retry_case(study):
        page.audit("web_retry", study_key=study.key, outcome="refused", detail=f"state {study.state}")
        return _refuse(page, study, f"The case is {study.state}; only a failed case can be retried "
                                    "(failed: the study to the reviewer; report_failed: the report home).")
    page.audit("web_retry", study_key=study.key)
    return _done(study, "retry")


def release(page: Page) -> Response:
    """As ``spine-gateway release``: QUARANTINED or REJECTED_NOT_SPINE → COMPLETE, de-identified again."""
    study = _study(page)
    if redaction.is_notes_leak(study):
        return _release_notes(page, study)
    if study.state not in (CaseState.QUARANTINED, CaseState.REJECTED_NOT_SPINE) or not cases.move(
            study, CaseState.COMPLETE, reason="released"):
        page.audit("web_release", study_key=study.key, outcome="refused", detail=f"state {study.state}")
        return _refuse(page, study, f"The case is {study.state}; only a quarantined or rejected case is released.")
    page.audit("released", study_key=study.key)
    return _done(study, "release")


def _release_notes(page: Page, study) -> Response:
    """A notes leak goes back to the notes stage with the operators' redactions, never as it stands."""
    try:
        redaction.release_redacted(study, f"web:{page.user.name}")
    except redaction.RedactionRefused as refused:
        return _page(page, study, status=409, release_error=str(refused))
    return _done(study, "release")


def approve(page: Page) -> Response:
    """As ``notes approve``; a case the outbound guard quarantined is refused (409, the message next to the
    actions): the page offers no approval for it, only redaction and release."""
    study = _study(page)
    try:
        approve_notes(study.key, user=f"web:{page.user.name}")
    except UnknownCase:
        raise Refused(404, "No such case.") from None
    except ApprovalRefused as refused:
        page.audit("web_notes_approved", study_key=study.key, outcome="refused",
                   detail="guard hit" if approval_applies(study) else f"case {study.state}")
        return _page(page, study, status=409, approve_error=str(refused))
    page.audit("web_notes_approved", study_key=study.key)
    return _done(study, "approve")


ROUTES = [
    ("GET", "/ops", overview, "ops"),
    ("GET", "/ops/cases/{key}", case, "ops"),
    ("POST", "/ops/cases/{key}/retry", retry, "ops"),
    ("POST", "/ops/cases/{key}/release", release, "ops"),
    ("POST", "/ops/cases/{key}/approve", approve, "ops"),
    ("POST", "/ops/cases/{key}/redact", redact, "ops"),
]
