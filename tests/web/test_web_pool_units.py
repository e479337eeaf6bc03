"""The pool's pages for pull reviewers, in process (SQLite, the spool, Starlette's test client; no browser, no node):
"Cases to claim" lists what a reviewer may claim, urgent first, pseudonymous; a claim opens the case page; a stale
claim says another reviewer took the case, next to its row; a push reviewer has no pool; a claimed case's page
renews the claim and gives it back; a claim renewed while its end passed is not taken back by the pool stage; and a
claimer's UPS-RS update renews its claim."""

from __future__ import annotations

import asyncio
import datetime as dt
import re

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from starlette.applications import Starlette

from gateway.accounts.users import add_user
from gateway.config import GatewayConfig
from gateway.dicomweb.worklist import Worklist
from gateway.routing import pool
from gateway.routing.assignment import CaseNeeds
from gateway.stages.context import NodeContext
from gateway.stages.pool import PoolStage
from gateway.storage import workitems
from gateway.storage.models import (
    AuditEvent,
    CaseState,
    OutboundObject,
    Series,
    Study,
    StudyIdentity,
    Workitem,
    db,
    open_database,
    utcnow,
)
from gateway.storage.spool import Spool
from gateway.web.app import portal_routes
from gateway.web.auth import COOKIE, session_of, start_session

# Three spine reviewers: two pull (dr-b takes one open case at most), one push.
REVIEWERS = [{"name": name, "ae_title": ae_title, "host": "127.0.0.1", "port": port, "mode": mode,
              "subspecialties": ["spine"], **extra}
             for name, ae_title, port, mode, extra in (("dr-a", "REVIEW_A", 4243, "pull", {}),
                                                        ("dr-b", "REVIEW_B", 4244, "pull", {"max_open_cases": 1}),
                                                        ("dr-push", "REVIEW_P", 4246, "push", {}))]
PATIENT_NAME, MRN, ORIGINAL_UID = "DOE^JANE", "MRN0012345", "1.2.826.0.1.3680043.77"
TIMEOUT_S = 3600.0


class Client:
    """One signed-in browser, without a browser: each request goes to the application in process (redirects are
    not followed)."""

    def __init__(self, app: Starlette, session_token: str) -> None:
        self.app, self.cookies = app, {COOKIE: session_token}

    def get(self, url: str, **options) -> httpx.Response:
        return asyncio.run(self._send("GET", url, **options))

    def post(self, url: str, **options) -> httpx.Response:
        return asyncio.run(self._send("POST", url, **options))

    async def _send(self, method: str, url: str, **options) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://gateway",
                                     cookies=self.cookies) as client:
            return await client.request(method, url, **options)


class Pool:
    """The portal and DICOMweb on one in-process application over a fresh database and spool."""

    def __init__(self, tmp_path) -> None:
        self.config = GatewayConfig.model_validate({
            "storage": {"database": f"sqlite:///{tmp_path}/gw.db", "spool_dir": str(tmp_path / "spool")},
            "routing": {"pool_claim_timeout_s": TIMEOUT_S},
            "sources": [{"name": "st-marys", "ae_title": "HOSP_PACS"}], "reviewers": REVIEWERS})
        self.spool = Spool(tmp_path / "spool")
        self.spool.prepare()
        context = NodeContext.of_process()
        routes = portal_routes(self.config, self.spool, context) + Worklist(self.config, context,
                                                                            "/dicomweb").routes()
        self.app = Starlette(routes=routes)
        self.cases = 0

    def browser(self, reviewer: str) -> tuple[Client, str]:
        """A signed-in session of ``reviewer``'s account, and its CSRF token."""
        user = add_user(self.config, reviewer, "reviewer", "long enough password", reviewer=reviewer)
        token = start_session(user, hours=1)
        return Client(self.app, token), session_of(token).csrf_token

    def pooled(self, urgent: bool = False, subspecialty: str = "spine", flags: tuple[str, ...] = ()) -> Workitem:
        """A case in the pool, with a de-identified image (Body Part Examined) and a notes SR (its red flags)."""
        self.cases += 1
        number = self.cases
        study = Study.create(study_uid=f"{ORIGINAL_UID}.{number}", calling_ae="HOSP_PACS",
                             state=CaseState.NOTES_ATTACHED, pseudo_study_uid=f"2.25.{9000 + number}",
                             urgency="urgent" if urgent else "routine")
        Series.create(study=study, series_uid=f"{ORIGINAL_UID}.{number}.1", modality="MR")
        StudyIdentity.create(study=study, patient_name=PATIENT_NAME, patient_id=MRN, pseudo_patient_id=f"P{number}")
        self._outbound(study, "image", _image(number))
        self._outbound(study, "notes_sr", _notes(number, flags))
        assert pool.put_in_pool(study, CaseNeeds(frozenset({"MR"}), subspecialty, urgent),
                                utcnow() + dt.timedelta(hours=24 if urgent else 72), "test", utcnow())
        return Workitem.get(Workitem.study == study)

    def _outbound(self, study: Study, kind: str, dataset: Dataset) -> None:
        path = self.spool.write_outbound(study.key, f"{kind}.dcm", _encoded(dataset))
        OutboundObject.create(study=study, kind=kind, sop_instance_uid=dataset.SOPInstanceUID,
                              sop_class_uid=dataset.SOPClassUID, transfer_syntax=ExplicitVRLittleEndian,
                              spool_path=self.spool.relative(path), sha256="0" * 64, size=path.stat().st_size)


def _image(number: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4", f"2.25.{7000 + number}"
    ds.Modality, ds.BodyPartExamined, ds.SeriesNumber, ds.InstanceNumber = "MR", "LSPINE", 1, 1
    return ds


def _notes(number: int, flags: tuple[str, ...]) -> Dataset:
    def code(value: str, meaning: str) -> Dataset:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "99SPINEGW", meaning
        return item

    indications = Dataset()
    indications.ValueType, indications.ConceptNameCodeSequence = "CONTAINER", [code("18785-6", "Indications")]
    indications.ContentSequence = []
    for flag in flags:
        child = Dataset()
        child.ValueType, child.ConceptNameCodeSequence = "CODE", [code("RFD", "Red flag declared by referrer")]
        child.ConceptCodeSequence = [code("RF", flag)]
        indications.ContentSequence.append(child)
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.33", f"2.25.{8000 + number}"
    ds.ValueType, ds.ContentSequence = "CONTAINER", [indications]
    return ds


def _encoded(dataset: Dataset) -> bytes:
    import io

    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def site(tmp_path):
    database = open_database(f"sqlite:///{tmp_path}/gw.db", max_connections=4)
    with db.connection_context():
        yield Pool(tmp_path)
    database.close_all()


def rows(page: str) -> list[str]:
    """The case keys of the pool page's rows, in order."""
    return re.findall(r'<tr data-case="([^"]+)"', page)


def claim(client: Client, csrf: str, workitem: Workitem) -> httpx.Response:
    return client.post(f"/reviewer/pool/{workitem.uid}/claim", data={"csrf_token": csrf})


def test_the_pool_lists_what_the_reviewer_may_claim_urgent_first_and_nothing_identifying(site):
    routine = site.pooled(flags=())
    urgent = site.pooled(urgent=True, flags=("Cauda equina symptoms",))
    site.pooled(subspecialty="neuro")  # dr-a reads spine only
    a, _ = site.browser("dr-a")
    page = a.get("/reviewer/pool")
    assert page.status_code == 200
    assert rows(page.text) == [urgent.study.key, routine.study.key]
    assert page.text.count('<button type="submit" class="claim">Claim</button>') == 2
    for shown in ("Cauda equina symptoms", "lumbar spine", "<strong>urgent</strong>"):
        assert shown in page.text
    for identifying in (PATIENT_NAME, "DOE", MRN, ORIGINAL_UID):
        assert identifying not in page.text
    assert 'href="/reviewer/pool"' in a.get("/reviewer").text, "the menu offers the pool"


def test_a_push_reviewer_has_no_pool(site):
    site.pooled()
    push, _ = site.browser("dr-push")
    assert push.get("/reviewer/pool").status_code == 404
    assert 'href="/reviewer/pool"' not in push.get("/reviewer").text


def test_a_claim_opens_the_case_and_a_stale_claim_says_another_reviewer_took_it(site):
    workitem = site.pooled()
    a, a_csrf = site.browser("dr-a")
    b, b_csrf = site.browser("dr-b")
    assert rows(b.get("/reviewer/pool").text) == [workitem.study.key]
    assert claim(a, "wrong", workitem).status_code == 403, "the claim form needs its CSRF token"
    claimed = claim(a, a_csrf, workitem)
    assert claimed.status_code == 303 and claimed.headers["location"] == f"/reviewer/cases/{workitem.study.key}"
    case = a.get(claimed.headers["location"])
    assert case.status_code == 200 and "Give back to the pool" in case.text
    assert "I am still working on this" in case.text
    assert Study.get_by_id(workitem.study_id).reviewer == "dr-a"
    assert claim(a, a_csrf, workitem).status_code == 303, "a second click opens the case again"

    assert rows(b.get("/reviewer/pool").text) == [], "the claimed case left the others' list"
    stale = claim(b, b_csrf, workitem)
    assert stale.status_code == 409
    row = stale.text[stale.text.index(f'<tr data-case="{workitem.study.key}"'):]
    row = row[:row.index("</tr>")]
    assert "Another reviewer claimed this case a moment ago" in row and "class=\"claim\"" not in row
    assert AuditEvent.get(AuditEvent.action == "web_claim_refused").outcome == "failed"


def test_a_reviewer_at_its_limit_is_told_next_to_the_button(site):
    first, second = site.pooled(), site.pooled()
    b, csrf = site.browser("dr-b")  # max_open_cases: 1
    assert claim(b, csrf, first).status_code == 303
    refused = claim(b, csrf, second)
    assert refused.status_code == 409 and "the most your account takes (max_open_cases)" in refused.text
    assert Workitem.get_by_id(second.id).state == workitems.SCHEDULED


def test_the_case_page_renews_the_claim_and_gives_it_back(site):
    workitem = site.pooled()
    a, csrf = site.browser("dr-a")
    b, b_csrf = site.browser("dr-b")
    key = workitem.study.key
    assert claim(a, csrf, workitem).status_code == 303
    soon = utcnow() + dt.timedelta(minutes=1)
    Workitem.update(claim_expires_at=soon).where(Workitem.id == workitem.id).execute()

    renewed = a.post(f"/reviewer/cases/{key}/renew", data={"csrf_token": csrf})
    assert renewed.status_code == 303 and renewed.headers["location"] == f"/reviewer/cases/{key}?renewed=1"
    expires = Workitem.get_by_id(workitem.id).claim_expires_at
    assert expires > utcnow() + dt.timedelta(seconds=TIMEOUT_S - 600)
    assert "Renewed: the case stays yours until" in a.get(renewed.headers["location"]).text
    Workitem.update(claim_expires_at=soon).where(Workitem.id == workitem.id).execute()
    a.get(f"/reviewer/cases/{key}")
    assert Workitem.get_by_id(workitem.id).claim_expires_at == soon, "opening the page (a GET) changes nothing"
    Workitem.update(claim_expires_at=soon).where(Workitem.id == workitem.id).execute()
    corrected = a.post(f"/reviewer/cases/{key}/report", data={"csrf_token": csrf, "finding.L4-L5": "Normal."})
    assert corrected.status_code == 422, "no impression: the form comes back for a correction"
    assert Workitem.get_by_id(workitem.id).claim_expires_at > soon, "a report sent back renews the claim"

    given = a.post(f"/reviewer/cases/{key}/give-back", data={"csrf_token": csrf})
    assert given.status_code == 303 and given.headers["location"] == f"/reviewer/pool?given_back={key}"
    assert f"Case {key} is back in the pool" in a.get(given.headers["location"]).text
    assert Study.get_by_id(workitem.study_id).state == CaseState.POOLED
    assert a.get(f"/reviewer/cases/{key}").status_code == 404
    late = a.post(f"/reviewer/cases/{key}/renew", data={"csrf_token": csrf})
    assert late.status_code == 409 and "your claim on case" in late.text and "ended" in late.text
    relisted = b.get("/reviewer/pool").text
    assert rows(relisted) == [key] and workitem.uid not in relisted, "listed again under a new workitem"
    old = claim(b, b_csrf, workitem)
    assert old.status_code == 409 and "given back and is listed again" in old.text
    actions = [e.action for e in AuditEvent.select().where(AuditEvent.action.startswith("web_claim"))
               .order_by(AuditEvent.id)]
    assert actions == ["web_claim_renewed", "web_claim_given_back", "web_claim_refused"]


def test_a_claim_renewed_after_its_end_passed_is_not_taken_back(site):
    workitem = site.pooled()
    a = next(r for r in site.config.reviewers if r.name == "dr-a")
    pool.claim(workitem, a, "2.25.1", TIMEOUT_S, "web:dr-a")
    Workitem.update(claim_expires_at=utcnow() - dt.timedelta(minutes=1)).where(Workitem.id == workitem.id).execute()
    seen_by_the_stage = Workitem.get_by_id(workitem.id)  # read as expired
    assert pool.renew(Workitem.get_by_id(workitem.id), "dr-a", TIMEOUT_S) is not None
    assert not pool.give_back(seen_by_the_stage, pool.TIMED_OUT, "pool_stage", utcnow())
    PoolStage(context=NodeContext.of_process()).run_once(utcnow())
    assert Workitem.get_by_id(workitem.id).state == workitems.IN_PROGRESS
    assert pool.renew(Workitem.get_by_id(workitem.id), "dr-b", TIMEOUT_S) is None, "only its claimer renews it"


def test_the_claimer_renews_its_claim_with_a_ups_rs_update(site):
    workitem = site.pooled()
    a_reviewer = next(r for r in site.config.reviewers if r.name == "dr-a")
    pool.claim(workitem, a_reviewer, "2.25.42", TIMEOUT_S, "token:a")
    Workitem.update(claim_expires_at=utcnow()).where(Workitem.id == workitem.id).execute()
    a, csrf = site.browser("dr-a")
    b, b_csrf = site.browser("dr-b")
    url = f"/dicomweb/workitems/{workitem.uid}"
    progress = {"00741002": {"vr": "SQ", "Value": [{"00741004": {"vr": "DS", "Value": [50]}}]}}
    headers = {"X-CSRF-Token": csrf, "Content-Type": "application/dicom+json"}
    assert a.post(url, params={"transaction": "2.25.43"}, json=progress, headers=headers).status_code == 409
    moved = a.post(url, json={"00741000": {"vr": "CS", "Value": ["COMPLETED"]}}, headers=headers)
    assert moved.status_code == 400, "the other attributes are the node's"
    other = b.post(url, params={"transaction": "2.25.42"}, json=progress,
                   headers={**headers, "X-CSRF-Token": b_csrf})
    assert other.status_code == 409 and "C301" in other.headers["Warning"], "only the claimer renews it"
    renewed = a.post(url, params={"transaction": "2.25.42"}, json=progress, headers=headers)
    assert renewed.status_code == 200 and "progress is not kept" in renewed.headers["Warning"]
    assert Workitem.get_by_id(workitem.id).claim_expires_at > utcnow() + dt.timedelta(seconds=TIMEOUT_S - 600)
    in_body = {"00081195": {"vr": "UI", "Value": ["2.25.42"]}}
    assert a.post(url, json=in_body, headers=headers).status_code == 200, "the Transaction UID in the body"
    assert AuditEvent.select().where(AuditEvent.action == "worklist_claim_renewed").count() == 2


def test_after_the_report_the_claim_is_complete_and_the_buttons_say_so(site):
    workitem = site.pooled()
    a, csrf = site.browser("dr-a")
    key = workitem.study.key
    assert claim(a, csrf, workitem).status_code == 303
    Study.update(state=CaseState.REPORTED).where(Study.id == workitem.study_id).execute()
    assert pool.complete(Workitem.get_by_id(workitem.id), "pool_stage")
    assert "Give back to the pool" not in a.get(f"/reviewer/cases/{key}").text, "no claim left to act on"
    for action in ("renew", "give-back"):
        late = a.post(f"/reviewer/cases/{key}/{action}", data={"csrf_token": csrf})
        assert late.status_code == 409 and "your report has been sent, so the claim is complete" in late.text
    assert Study.get_by_id(workitem.study_id).state == CaseState.REPORTED


def test_an_update_with_a_claims_old_transaction_uid_renews_nothing(site):
    """Review of session 35: the UPS-RS update checked the Transaction UID on the row it had read; were the claim
    to run out and be claimed again in between, the old UID renewed the new claim. The renewal is now conditioned on
    the claim the UID opened."""
    workitem = site.pooled()
    a = next(r for r in site.config.reviewers if r.name == "dr-a")
    pool.claim(workitem, a, "2.25.51", TIMEOUT_S, "token:a")
    read_with_the_old_claim = Workitem.get_by_id(workitem.id)
    Workitem.update(transaction_sha256=workitems.transaction_digest("2.25.52")).where(
        Workitem.id == workitem.id).execute()  # the claim ran out and dr-a claimed again, under another UID
    assert pool.renew(read_with_the_old_claim, "dr-a", TIMEOUT_S,
                      transaction_sha256=read_with_the_old_claim.transaction_sha256) is None
    current = Workitem.get_by_id(workitem.id)
    assert pool.renew(current, "dr-a", TIMEOUT_S, transaction_sha256=current.transaction_sha256) is not None
