"""The pool in the portal, for reviewers in ``mode: pull``: "Cases to claim", the claim, and on a claimed case's page
its renewal ("I am still working on this") and its give-back.

The buttons make the moves UPS-RS makes (:mod:`gateway.dicomweb.worklist`), through :mod:`gateway.routing.pool`: a
claim is the workitem IN PROGRESS under a Transaction UID the node makes for it (and keeps only hashed), the case
DELIVERED to the reviewer; the portal's session, not that UID, is the claimer's proof on these pages. A push reviewer
has no pool: the page answers 404. What a row shows is pseudonymous (the case's key, what the case asks of its
reviewer, the body part and red flags of the de-identified objects, the SLA deadline), never an identifier.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pydicom
import pydicom.errors
from starlette.responses import RedirectResponse, Response

from gateway.config import ReviewerConfig
from gateway.referral.codes import INDICATIONS
from gateway.routing import pool
from gateway.routing.assignment import open_cases
from gateway.storage import workitems
from gateway.storage.models import OutboundObject, Study, Workitem, utcnow
from gateway.storage.spool import Spool
from gateway.storage.wakeup import WORKLIST
from gateway.storage.workitems import WorkitemRefused
from gateway.web import reviewer as reviewer_pages
from gateway.web import views
from gateway.web.page import Page, Refused

TAKEN = "Another reviewer claimed this case a moment ago: it is no longer in the pool."
# Body Part Examined (PS3.16 Annex L) of the spine, in words; another value is shown as it stands
BODY_PARTS = {"CSPINE": "cervical spine", "TSPINE": "thoracic spine", "LSPINE": "lumbar spine",
              "SSPINE": "sacrum", "SPINE": "spine", "WHOLESPINE": "whole spine", "COCCYX": "coccyx"}


@dataclass(frozen=True)
class PoolRow:
    """A workitem as the page lists it; ``problem``: why its claim was just refused (shown next to its button),
    ``taken``: it cannot be claimed any more (listed only to carry that message)."""

    uid: str
    key: str
    urgent: bool
    red_flags: tuple[str, ...]
    modalities: str
    body_part: str
    subspecialty: str
    due: str
    clock: str
    overdue: bool
    waiting: str
    problem: str = ""
    taken: bool = False


def pull_reviewer(page: Page) -> ReviewerConfig:
    """The configured reviewer of the signed-in account, if it claims from the pool; else 404."""
    reviewer = next((r for r in page.portal.config.reviewers if r.name == page.user.reviewer), None)
    if reviewer is None or reviewer.mode != "pull":
        raise Refused(404, "No such page: the pool is for reviewers who claim their cases (mode: pull).")
    return reviewer


def pool_rows(reviewer: ReviewerConfig, spool: Spool, now: dt.datetime) -> list[PoolRow]:
    """The SCHEDULED workitems ``reviewer`` may claim: urgent or red flags first, then by SLA deadline."""
    query = (Workitem.select(Workitem, Study).join(Study).where(Workitem.state == workitems.SCHEDULED)
             .order_by(Workitem.priority, Workitem.due_at, Workitem.id))  # HIGH sorts before MEDIUM
    return [pool_row(w, spool, now) for w in query if pool.eligible(reviewer, w)]


def pool_row(workitem: Workitem, spool: Spool, now: dt.datetime, problem: str = "", taken: bool = False) -> PoolRow:
    body_part, flags = case_glance(workitem.study, spool)
    clock, overdue = views.sla_clock(workitem.due_at, now)
    waiting = views.duration((now - workitem.scheduled_at).total_seconds())
    return PoolRow(workitem.uid, workitem.study.key, workitem.priority == "HIGH", flags,
                   workitem.modalities.replace("\\", ", "), body_part, workitem.subspecialty or "",
                   views.when(workitem.due_at), clock, overdue, waiting, problem, taken)


def case_glance(study: Study, spool: Spool) -> tuple[str, tuple[str, ...]]:
    """(Body Part Examined of the case's first de-identified image, the red flags of its notes SR by meaning): what
    a reviewer weighs before claiming, read from the objects the reviewer would receive (pseudonymous)."""
    body_part = ""
    flags: tuple[str, ...] = ()
    image = (OutboundObject.select(OutboundObject.spool_path)
             .where((OutboundObject.study == study) & (OutboundObject.kind == "image"))
             .order_by(OutboundObject.id).first())
    notes = (OutboundObject.select(OutboundObject.spool_path)
             .where((OutboundObject.study == study) & (OutboundObject.kind == "notes_sr"))
             .order_by(OutboundObject.id.desc()).first())
    try:
        if image is not None:
            header = pydicom.dcmread(spool.absolute(image.spool_path), stop_before_pixels=True,
                                     specific_tags=["BodyPartExamined"])
            code = str(header.get("BodyPartExamined", "") or "").strip().upper()
            body_part = BODY_PARTS.get(code, code)
        if notes is not None:
            flags = tuple(_red_flags(pydicom.dcmread(spool.absolute(notes.spool_path))))
    except (OSError, pydicom.errors.InvalidDicomError, ValueError):
        pass  # a row without them still lists the case
    return body_part, flags


def _red_flags(dataset: pydicom.Dataset) -> list[str]:
    """The meanings of the CODE items under the notes SR's Indications container (one per red flag)."""
    found: list[str] = []
    for item in dataset.get("ContentSequence", []):
        names = item.get("ConceptNameCodeSequence") or []
        if names and names[0].get("CodeValue") == INDICATIONS.value:
            found += [str(child.ConceptCodeSequence[0].CodeMeaning) for child in item.get("ContentSequence", [])
                      if child.get("ValueType") == "CODE" and child.get("ConceptCodeSequence")]
        else:
            found += _red_flags(item)
    return found


def listing(page: Page, refused: PoolRow | None = None, problem: str = "", status: int = 200) -> Response:
    reviewer = pull_reviewer(page)
    rows = pool_rows(reviewer, page.portal.spool, utcnow())
    if refused is not None:
        rows = [r for r in rows if r.uid != refused.uid]
        rows.insert(0, refused)
    return page.render("reviewer_pool.html", status=status, title="Cases to claim", rows=rows, problem=problem,
                       given_back=page.request.query_params.get("given_back", "")[:16],
                       timeout=views.duration(page.portal.config.routing.pool_claim_timeout_s))


def claim(page: Page) -> Response:
    """Claim the workitem of the row; the case page opens. A refused claim shows why next to its row's button."""
    reviewer = pull_reviewer(page)
    workitem = (Workitem.select(Workitem, Study).join(Study)
                .where(Workitem.uid == str(page.request.path_params["uid"])).first())
    if workitem is None or not pool.visible(reviewer, workitem):
        raise Refused(404, "No such case in the pool.")
    key = workitem.study.key
    if not (workitem.state == workitems.IN_PROGRESS and workitem.claimed_by == reviewer.name):  # else: clicked twice
        try:
            if not pool.eligible(reviewer, workitem):
                raise Refused(404, "No such case in the pool.")
            expires = pool.claim(workitem, reviewer, workitems.new_uid(),
                                 page.portal.config.routing.pool_claim_timeout_s, f"web:{page.user.name}"[:64])
        except WorkitemRefused as exc:
            page.audit("web_claim_refused", study_key=key, outcome="failed", detail=f"UPS status {exc.status:04X}")
            return listing(page, refused_row(workitem, reviewer, page.portal.spool), status=409)
        page.portal.context.wake_at(WORKLIST, expires)  # the pool stage looks at the claim when it ends
    return RedirectResponse(f"/reviewer/cases/{key}", status_code=303)


def refused_row(workitem: Workitem, reviewer: ReviewerConfig, spool: Spool) -> PoolRow:
    """The row of a workitem whose claim was just refused, with why (read again: what happened meanwhile)."""
    now = utcnow()
    current = Workitem.select(Workitem, Study).join(Study).where(Workitem.id == workitem.id).get()
    if current.state == workitems.SCHEDULED and open_cases().get(reviewer.name, 0) >= reviewer.max_open_cases:
        return pool_row(current, spool, now, f"You have {reviewer.max_open_cases} open cases, the most your account "
                                             "takes (max_open_cases): send a report before claiming another.")
    if current.state == workitems.SCHEDULED:
        return pool_row(current, spool, now, "This case is being taken out of the pool: reload the list.", taken=True)
    if current.state == workitems.IN_PROGRESS:
        return pool_row(current, spool, now, TAKEN, taken=True)
    relisted = workitems.open_workitem(current.study)
    why = ("This case was given back and is listed again: claim it from its new row." if relisted is not None
           else "This case has left the pool (it was reported, or taken out of the pool).")
    return pool_row(current, spool, now, why, taken=True)


def renew(page: Page) -> Response:
    """"I am still working on this": the claim's timeout starts again (so does a report sent back for
    correction; opening the case page does not)."""
    reviewer = pull_reviewer(page)
    study = views.reviewer_case(reviewer.name, str(page.request.path_params["key"]))
    workitem = pool.held_by(reviewer.name, study) if study is not None else None
    expires = pool.renew(workitem, reviewer.name, page.portal.config.routing.pool_claim_timeout_s) \
        if workitem is not None else None
    if study is None or expires is None:
        return _claim_gone(page, study, "There is no claim to renew")
    page.audit("web_claim_renewed", study_key=study.key, detail=f"until {expires:%H:%M:%S} UTC")
    return RedirectResponse(f"/reviewer/cases/{study.key}?renewed=1", status_code=303)


def give_back(page: Page) -> Response:
    """The reviewer gives the case back: the workitem CANCELED, a new one SCHEDULED for the others."""
    reviewer = pull_reviewer(page)
    study = views.reviewer_case(reviewer.name, str(page.request.path_params["key"]))
    workitem = pool.held_by(reviewer.name, study) if study is not None else None
    if study is None or workitem is None or not pool.give_back(workitem, pool.GIVEN_BACK,
                                                               f"web:{page.user.name}"[:64]):
        return _claim_gone(page, study, "The case could not be given back")
    page.audit("web_claim_given_back", study_key=study.key)
    return RedirectResponse(f"/reviewer/pool?given_back={study.key}", status_code=303)


def _claim_gone(page: Page, study: Study | None, what: str) -> Response:
    """The reviewer no longer holds the claim: on the pool page when the case is gone from it too (the claim ran
    out), else on the case page, next to the buttons."""
    if study is None:
        key = str(page.request.path_params["key"])
        return listing(page, problem=f"{what}: your claim on case {key} ended (it ran out, or the case was given "
                                     "back), and the case is no longer yours. If it is listed below, claim it "
                                     "again.", status=409)
    why = ("your report has been sent, so the claim is complete" if study.state == views.S.REPORTED
           else "the case is no longer a claim of yours")
    return reviewer_pages.case(page, claim_problem=f"{what}: {why}.", status=409)


ROUTES = [
    ("GET", "/reviewer/pool", listing, "reviewer"),
    ("POST", "/reviewer/pool/{uid}/claim", claim, "reviewer"),
    ("POST", "/reviewer/cases/{key}/renew", renew, "reviewer"),
    ("POST", "/reviewer/cases/{key}/give-back", give_back, "reviewer"),
]
