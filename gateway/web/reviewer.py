"""Reviewer pages: the worklist, a case (pseudonymous only) and the structured report form.

The report is built by :mod:`gateway.reports.create`, exactly as ``spine-gateway report create --pdf`` builds
it (a TID 2000 SR whose findings reference their key images, and an Encapsulated PDF), and sent in to the
gateway's own SCP with the assigned reviewer's AE title: the same intake, the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from starlette.responses import RedirectResponse, Response

from gateway.config import ReviewerConfig
from gateway.reports import codes
from gateway.reports.create import (
    build_report_objects,
    case_images,
    report_content,
    reviewer_ae_title,
    send_as_reviewer,
)
from gateway.reports.errors import ReportBuildError
from gateway.routing import pool
from gateway.stages.critical import flag_critical
from gateway.storage.models import Study
from gateway.web import views
from gateway.web.forms import LEVELS, parse_report_form
from gateway.web.page import Page, Refused

VIEWER_INSTALLED = Path(__file__).parent / "static" / "vendor" / "installed.json"  # scripts/install-viewer.py


def worklist(page: Page) -> Response:
    return page.render("reviewer_worklist.html", title="Worklist", rows=views.worklist(page.user.reviewer),
                       sent=page.request.query_params.get("sent", ""))


def _case(page: Page):
    study = views.reviewer_case(page.user.reviewer, str(page.request.path_params["key"]))
    if study is None:
        raise Refused(404, "No such case on your worklist.")
    return study


def _signer(page: Page) -> ReviewerConfig | None:
    """The configured reviewer the account is: its ``signing_name`` signs the report."""
    return next((r for r in page.portal.config.reviewers if r.name == page.user.reviewer), None)


@dataclass(frozen=True)
class ClaimView:
    """The reviewer's claim on a case it took from the pool: until when it holds, and whether it was just renewed."""

    expires: str
    renewed: bool


def _claim(page: Page, study: Study, renew: bool) -> ClaimView | None:
    """The reviewer's claim on ``study``, if it holds one; ``renew``: the page answers a posted report sent back
    for correction (the reviewer is at work on it), which renews the claim as "I am still working on this" does.
    Opening the page (a GET) changes nothing: a tab left open or reloaded does not keep a claim from the pool."""
    workitem = pool.held_by(page.user.reviewer, study)
    if workitem is None:
        return None
    if renew and pool.renew(workitem, page.user.reviewer, page.portal.config.routing.pool_claim_timeout_s) is None:
        return None
    return ClaimView(views.when(workitem.claim_expires_at), page.request.query_params.get("renewed") == "1")


def case(page: Page, values: dict | None = None, errors: dict | None = None, status: int = 200,
         claim_problem: str = "") -> Response:
    study = _case(page)
    index = views.images_index(study, page.portal.spool)
    opened = values is None and not claim_problem
    sent_back = values is not None and not claim_problem
    if opened:
        page.audit("web_case_opened", study_key=study.key)
    clock, overdue = views.case_clock(study, views.utcnow())
    return page.render("reviewer_case.html", status=status, title=f"Case {study.key}", study=study,
                       notes=views.scrubbed_notes(study, page.portal.spool), series=index.series, levels=LEVELS,
                       values=values or {}, errors=errors or {}, clock=clock, overdue=overdue,
                       reported=study.state == views.S.REPORTED, signer=_signer(page),
                       viewer=VIEWER_INSTALLED.exists(), claim=_claim(page, study, renew=sent_back),
                       claim_problem=claim_problem,
                       claim_timeout=views.duration(page.portal.config.routing.pool_claim_timeout_s))


def submit(page: Page) -> Response:
    study = _case(page)
    index = views.images_index(study, page.portal.spool)
    result = parse_report_form(page.posted, index.by_position, _signer(page))
    if result.value is None:
        return case(page, result.values, result.errors, status=422)
    try:
        calling_ae = reviewer_ae_title(study, page.portal.config)
        images = case_images(study, page.portal.spool)
        content = report_content(result.value, images)
        objects = build_report_objects(content, images.evidence, sr_class=codes.BASIC_TEXT_SR, pdf=True)
    except (ReportBuildError, ValueError) as exc:
        result.add("", str(exc))
        return case(page, result.values, result.errors, status=422)
    try:
        statuses = send_as_reviewer(objects, calling_ae, page.portal.config)
    except ReportBuildError as exc:
        statuses = []
        result.add("", f"{exc}. Nothing was lost: send the report again.")
    if not statuses or any(status != 0 for status in statuses):
        answers = ", ".join("no answer" if s is None else f"0x{s:04X}" for s in statuses)
        page.audit("web_report_written", study_key=study.key, outcome="failed", detail=answers[:100])
        if statuses:
            result.add("", f"The gateway did not take the report ({answers}). Send it again, or call an operator.")
        return case(page, result.values, result.errors, status=502)
    page.audit("web_report_written", study_key=study.key, detail=f"{len(objects)} object(s)")
    if result.values.get("critical"):
        flag_critical(study, result.values["critical.contact"], f"web:{page.user.name}", page.portal.config.sources)
    return RedirectResponse(f"/reviewer?sent={study.key}", status_code=303)


ROUTES = [
    ("GET", "/reviewer", worklist, "reviewer"),
    ("GET", "/reviewer/cases/{key}", case, "reviewer"),
    ("POST", "/reviewer/cases/{key}/report", submit, "reviewer"),
]
