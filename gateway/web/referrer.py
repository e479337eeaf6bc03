"""Referrer pages: the referral form, the source's cases in plain words, and the returned report."""

from __future__ import annotations

from starlette.responses import RedirectResponse, Response

from gateway.referral.codes import RedFlag
from gateway.referral.stage import load_document
from gateway.referral.errors import ReferralValidationError
from gateway.referral.intake import store_referral
from gateway.web import views
from gateway.web.app import Page, Refused
from gateway.web.forms import RED_FLAG_LABELS, parse_referral_form

MAX_ID_DIGITS = 18  # below 2**63: a row id of SQLite and of PostgreSQL's bigint


def cases(page: Page) -> Response:
    source = page.user.source
    return page.render("referrer_cases.html", title="Your cases", source=source, rows=views.referrer_cases(source),
                       sent=page.request.query_params.get("sent", ""))


def new_form(page: Page) -> Response:
    return _form(page, {"urgency": "routine", "clinical.red_flags": []}, {})


def _form(page: Page, values: dict, errors: dict, status: int = 200) -> Response:
    return page.render("referrer_form.html", status=status, title="New referral", values=values, errors=errors,
                       flags=[(flag.value, RED_FLAG_LABELS[flag]) for flag in RedFlag], source=page.user.source)


def submit(page: Page) -> Response:
    flags = [str(f) for f in page.form.getlist("clinical.red_flags")]
    result = parse_referral_form(page.form, flags, page.user.source)
    if result.value is not None:
        try:
            row = store_referral(result.value, "http")
        except ReferralValidationError as exc:
            for problem in exc.problems:
                result.add("", problem)
        else:
            page.audit("web_referral", detail=f"referral {row.id}")
            return RedirectResponse(f"/referrer?sent={row.id}", status_code=303)
    return _form(page, result.values, result.errors, status=422)


def _referral(page: Page):
    text = str(page.request.path_params["referral_id"])
    if not (text.isascii() and text.isdigit() and len(text) <= MAX_ID_DIGITS):
        raise Refused(404, "No such case.")  # 23 digits overflow the database's integer: 404, not 500
    referral_id = int(text)
    referral = views.referral_for(page.user.source, referral_id)
    if referral is None:
        raise Refused(404, "No such case.")
    return referral


def case(page: Page) -> Response:
    referral = _referral(page)
    study = referral.study if referral.study_id else None
    report = views.returned_report(study, page.portal.spool) if study is not None else None
    if report is not None:
        page.audit("web_report_read", study_key=study.key, detail=f"referral {referral.id}")
    return page.render("referrer_case.html", title=f"Case {referral.accession_number}", referral=referral,
                       document=load_document(referral), study=study,
                       state=views.plain_state(study), report=report, when=views.when)


def report_pdf(page: Page) -> Response:
    referral = _referral(page)
    study = referral.study if referral.study_id else None
    report = views.returned_report(study, page.portal.spool) if study is not None else None
    if report is None or report.pdf is None:
        raise Refused(404, "There is no PDF report for this case yet.")
    page.audit("web_report_pdf", study_key=study.key, detail=f"referral {referral.id}")
    return Response(report.pdf, media_type="application/pdf", headers={
        "Content-Disposition": f'inline; filename="report-{referral.id}.pdf"', "Cache-Control": "no-store"})


ROUTES = [
    ("GET", "/referrer", cases, "referrer"),
    ("GET", "/referrer/new", new_form, "referrer"),
    ("POST", "/referrer/new", submit, "referrer"),
    ("GET", "/referrer/referrals/{referral_id}", case, "referrer"),
    ("GET", "/referrer/referrals/{referral_id}/report.pdf", report_pdf, "referrer"),
]
