"""The pool worklist (UPS-RS) on a running node, with httpx and dicomweb-client as the reviewers' clients.

Three reviewers in ``mode: pull`` and no PACS: dr-a and dr-b read spine, dr-neuro does not. The case (its referral
asks for spine) goes to the pool when its notes are attached. dr-a and dr-b see the workitem, dr-neuro never does;
dr-a claims it and dr-b's claim is refused; the abandoned claim returns to the pool (its deadline is moved into the
past in the node's database, rather than waited for); dr-b claims it, reads the case over WADO-RS, a report from
dr-a is refused by the intake, dr-b's report completes the workitem and goes home re-identified; a completed
workitem is not claimable. dr-b's global subscription saw every state change, and dr-a's cancellation request.
"""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from dicomweb_site import PATIENTS, PoolSite, _study_uid
from reports.report_peers import reviewer_sr
from support.peers import started, wait_until

GLOBAL = "1.2.840.10008.5.1.4.34.5"
STATE, TRANSACTION = "00741000", "00081195"
NOT_AUTHORIZED = 0x0124
pytestmark = pytest.mark.dicom_e2e


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    with started(PoolSite(tmp_path_factory.mktemp("worklist-site"))) as site:
        yield site


def claim(client: httpx.Client, uid: str, transaction: str) -> httpx.Response:
    return client.put(f"/workitems/{uid}/state", json={STATE: {"vr": "CS", "Value": ["IN PROGRESS"]},
                                                       TRANSACTION: {"vr": "UI", "Value": [transaction]}})


def state_of(client: httpx.Client, uid: str) -> str:
    answer = client.get(f"/workitems/{uid}")
    assert answer.status_code == 200, answer.text
    return answer.json()[0][STATE]["Value"][0]


def stow(client: httpx.Client, dataset: pydicom.Dataset) -> httpx.Response:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    body = b"--b1\r\nContent-Type: application/dicom\r\n\r\n" + buffer.getvalue() + b"\r\n--b1--\r\n"
    return client.post("/studies", content=body,
                       headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b1'})


def test_the_pool_from_claim_to_completion(site):
    a, b, neuro = site.http("dr-a"), site.http("dr-b"), site.http("dr-neuro")
    assert b.post(f"/workitems/{GLOBAL}/subscribers/B_VIEWER").status_code == 201

    # Search: the eligible see it, SCHEDULED, pseudonymous; the ineligible never do.
    found = a.get("/workitems", params={"ProcedureStepState": "SCHEDULED", "ScheduledProcedureStepPriority": "MEDIUM"})
    assert found.status_code == 200, found.text
    (item,) = found.json()
    uid = item["00080018"]["Value"][0]
    pseudo_study = item["00404021"]["Value"][0]["0020000D"]["Value"][0]
    original = _study_uid(site.study[0])
    text = json.dumps(item)
    for phi in (PATIENTS["a"].name.split("^")[0], PATIENTS["a"].patient_id, PATIENTS["a"].accession, original):
        assert phi not in text
    assert [w["00080018"]["Value"][0] for w in b.get("/workitems").json()] == [uid]
    assert neuro.get("/workitems").status_code == 204
    assert neuro.get(f"/workitems/{uid}").status_code == 404
    assert claim(neuro, uid, f"2.25.{uuid.uuid4().int}").status_code == 404
    assert a.get("/workitems", params={"ProcedureStepState": "COMPLETED"}).status_code == 204

    # dr-a claims; dr-b cannot; the case is dr-a's on DICOMweb.
    assert claim(a, uid, f"2.25.{uuid.uuid4().int}").status_code == 200
    refused = claim(b, uid, f"2.25.{uuid.uuid4().int}")
    assert refused.status_code == 409 and "C302" in refused.headers["Warning"]
    assert a.get(f"/studies/{pseudo_study}/metadata").status_code == 200
    assert b.get(f"/studies/{pseudo_study}/metadata").status_code == 404
    assert b.post(f"/workitems/{uid}/cancelrequest").status_code == 202  # reaches dr-a as an event

    # The claim is abandoned: moved past its end in the database, the node gives the case back to the pool.
    site.sql("UPDATE workitem SET claim_expires_at = '2000-01-01 00:00:00' WHERE uid = ?", uid)
    wait_until(lambda: state_of(b, uid) == "SCHEDULED", 120, "the abandoned claim back in the pool")
    assert a.get(f"/studies/{pseudo_study}/metadata").status_code == 404

    # dr-b claims in the portal's session (with its CSRF token), reads the case, and reports; dr-a's report is
    # refused by the intake.
    transaction = f"2.25.{uuid.uuid4().int}"
    cookie, csrf = site.session("dr-b")
    portal = httpx.Client(base_url=site.url + "/dicomweb", timeout=60, headers={"Cookie": cookie})
    assert claim(portal, uid, transaction).status_code == 403, "a PUT in a session needs the CSRF token"
    portal.headers["X-CSRF-Token"] = csrf
    assert claim(portal, uid, transaction).status_code == 200
    # Still at work: an update with the claim's Transaction UID renews the claim; another UID does not.
    ends = site.sql("SELECT claim_expires_at FROM workitem WHERE uid = ?", uid)
    progress = {"00741002": {"vr": "SQ", "Value": [{"00741006": {"vr": "ST", "Value": ["reading"]}}]}}
    stranger = b.post(f"/workitems/{uid}", params={"transaction": f"2.25.{uuid.uuid4().int}"}, json=progress)
    assert stranger.status_code == 409 and "C301" in stranger.headers["Warning"]
    assert portal.post(f"/workitems/{uid}", params={"transaction": transaction}, json=progress).status_code == 200
    assert site.sql("SELECT claim_expires_at FROM workitem WHERE uid = ?", uid) > ends
    reader = DICOMwebClient(url=site.url + "/dicomweb", headers={"Authorization": f"Bearer {site.tokens['dr-b']}"})
    images = reader.retrieve_study(pseudo_study)
    mr = sorted((ds for ds in images if ds.Modality == "MR"), key=lambda ds: int(ds.InstanceNumber))
    assert len(mr) == 6 and all(ds.StudyInstanceUID == pseudo_study for ds in mr)
    wrong = stow(a, reviewer_sr(mr, text="From the wrong reviewer."))
    assert wrong.status_code == 409
    assert wrong.json()["00081198"]["Value"][0]["00081197"]["Value"] == [NOT_AUTHORIZED]
    assert state_of(b, uid) == "IN PROGRESS"
    assert stow(b, reviewer_sr(mr, text="L4-L5 left paracentral disc extrusion.")).status_code == 200
    wait_until(lambda: state_of(b, uid) == "COMPLETED", 120, "the report completes the workitem")
    wait_until(lambda: len(list(Path(site.hospital.out_dir).iterdir())) == 1, 120, "the report home")
    home = pydicom.dcmread(next(Path(site.hospital.out_dir).iterdir()), stop_before_pixels=True)
    assert home.StudyInstanceUID == original  # re-identified

    # A completed workitem is not claimable; the transaction UID is never shown.
    final = claim(a, uid, f"2.25.{uuid.uuid4().int}")
    assert final.status_code == 409 and "C300" in final.headers["Warning"]
    assert transaction not in b.get(f"/workitems/{uid}").text
    events = b.get("/subscribers/B_VIEWER/events", params={"after": 0}).json()["events"]
    assert [(e["report"]["00001002"]["Value"][0], e["report"][STATE]["Value"][0]) for e in events] == [
        (1, "IN PROGRESS"), (2, "IN PROGRESS"), (1, "SCHEDULED"), (1, "IN PROGRESS"), (1, "COMPLETED")]
    assert site.sql("SELECT COUNT(*) FROM delivery WHERE destination LIKE 'reviewer:%'") == [(0,)], \
        "nothing is pushed to a pull reviewer"
    actions = [row[0] for row in site.sql("SELECT action FROM audit_event WHERE action LIKE 'worklist_%' "
                                          "AND action != 'worklist_searched' ORDER BY id")]
    assert actions == ["worklist_claimed", "worklist_cancel_requested", "worklist_claim_timed_out",
                       "worklist_claimed", "worklist_claim_renewed", "worklist_completed"]
