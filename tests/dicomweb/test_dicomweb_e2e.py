"""DICOMweb against a running node, with dicomweb-client as the real client and DCMTK peers.

The node received three studies by storescu: one assigned and delivered to dr-a's storescp, one to dr-b's, one
without a referral (held, never assigned). dr-a's QIDO and WADO return exactly its case's de-identified objects,
the bytes its storescp received; every other study (dr-b's, the held one, an original Study Instance UID) answers
404, a missing, wrong or revoked token 401. A report sent by STOW-RS goes through the report intake: from dr-b it
is refused (0x0124), from dr-a it is stored and reaches the hospital's storescp re-identified.
"""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image

from dicomweb_site import PATIENTS, Site
from gateway.dicom.rawedit import file_meta_end_and_syntax
from reports.report_peers import reviewer_sr
from support.peers import started, wait_until

NOT_AUTHORIZED = 0x0124
pytestmark = pytest.mark.dicom_e2e  # run a second time with the pynetdicom hooks off (make test-hooks-off)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    with started(Site(tmp_path_factory.mktemp("dicomweb-site"))) as site:
        yield site


@pytest.fixture(scope="module")
def tokens(site):
    return {name: site.token(name) for name in ("dr-a", "dr-b")}


def client(site: Site, token: str | None = None, cookie: str | None = None) -> DICOMwebClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if cookie:
        headers["Cookie"] = cookie
    return DICOMwebClient(url=site.url + "/dicomweb", headers=headers)


def data_set_bytes(part10: bytes) -> bytes:
    """The data set of a Part 10 object, without its file meta (storescp writes a file meta of its own)."""
    located = file_meta_end_and_syntax(part10)
    assert located is not None
    return part10[located[0]:]


def received_by(site: Site, reviewer: str) -> dict[str, bytes]:
    """SOP Instance UID → the Part 10 bytes a reviewer's storescp received."""
    files = {}
    for path in Path(site.reviewers[reviewer].out_dir).iterdir():
        data = path.read_bytes()
        files[str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)] = data
    return files


def multipart_parts(response: requests.Response) -> list[bytes]:
    """The parts of a multipart/related answer, split by its boundary."""
    boundary = response.headers["Content-Type"].split("boundary=")[1].strip('"')
    parts = []
    for chunk in response.content.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        parts.append(chunk.partition(b"\r\n\r\n")[2][:-2])
    return parts


def status_of(call) -> int:
    with pytest.raises(requests.HTTPError) as refused:
        call()
    return refused.value.response.status_code


def test_qido_and_wado_of_the_assigned_case_are_what_its_storescp_received(site, tokens):
    case = site.case("a")
    web = client(site, tokens["dr-a"])
    received = received_by(site, "dr-a")
    assert len(received) >= 7, "six images and the notes (SR, PDF)"

    studies = web.search_for_studies()
    assert [s["0020000D"]["Value"][0] for s in studies] == [case.pseudo_study_uid]
    assert studies[0]["00201208"]["Value"] == [len(received)]
    assert "MRN" not in json.dumps(studies) and PATIENTS["a"].accession not in json.dumps(studies)
    instances = web.search_for_instances(study_instance_uid=case.pseudo_study_uid)
    assert {i["00080018"]["Value"][0] for i in instances} == set(received)
    series = web.search_for_series(study_instance_uid=case.pseudo_study_uid)
    by_series = {s["0020000E"]["Value"][0]: s["00201209"]["Value"][0] for s in series}
    assert sum(by_series.values()) == len(received)
    mr = web.search_for_series(study_instance_uid=case.pseudo_study_uid, search_filters={"Modality": "MR"})
    assert mr and all(s["00080060"]["Value"] == ["MR"] for s in mr)

    # The whole study, through dicomweb-client: every object, equal to what storescp holds.
    for dataset in web.retrieve_study(case.pseudo_study_uid):
        assert dataset == pydicom.dcmread(io.BytesIO(received[str(dataset.SOPInstanceUID)]))
    # And byte for byte: the multipart parts' data sets are the data sets storescp wrote.
    answer = requests.get(f"{site.url}/dicomweb/studies/{case.pseudo_study_uid}", timeout=60, headers={
        "Authorization": f"Bearer {tokens['dr-a']}", "Accept": 'multipart/related; type="application/dicom"'})
    assert answer.status_code == 200
    parts = multipart_parts(answer)
    assert len(parts) == len(received)
    for part in parts:
        uid = str(pydicom.dcmread(io.BytesIO(part), stop_before_pixels=True).SOPInstanceUID)
        assert data_set_bytes(part) == data_set_bytes(received[uid]), uid

    image = next(i for i in instances if i["00080060"]["Value"] == ["MR"])
    uids = (case.pseudo_study_uid, image["0020000E"]["Value"][0], image["00080018"]["Value"][0])
    stored = pydicom.dcmread(io.BytesIO(received[uids[2]]))
    assert stored.ReasonForTheRequestedProcedure, "written by the delivery as the image left: served the same"
    (frame,) = web.retrieve_instance_frames(*uids, frame_numbers=[1])
    assert frame == stored.PixelData
    metadata = web.retrieve_instance_metadata(*uids)
    assert "7FE00010" not in metadata and metadata["00100020"]["Value"] == [str(stored.PatientID)]
    expected = pydicom.Dataset()
    for element in stored:
        if element.tag != 0x7FE00010:
            expected.add(element)
    assert metadata == expected.to_json_dict(), "the header storescp holds, reason for the procedure included"
    assert len(web.retrieve_study_metadata(case.pseudo_study_uid)) == len(received)
    for media_type, kind in (("image/jpeg", "JPEG"), ("image/png", "PNG")):
        picture = Image.open(io.BytesIO(web.retrieve_instance_rendered(*uids, media_types=(media_type,))))
        assert picture.format == kind and picture.size == (stored.Columns, stored.Rows)
        assert picture.getextrema()[0] < picture.getextrema()[1], "not a blank image"

    audit = site.node.cli("audit", "--case", case.key, "--json").stdout
    assert '"dicomweb_retrieved"' in audit and "token:" in audit


def test_another_reviewers_case_an_unassigned_case_and_an_original_uid_do_not_exist(site, tokens):
    web = client(site, tokens["dr-a"])
    own, others = site.case("a"), [site.case("b").pseudo_study_uid, site.case("held").pseudo_study_uid,
                                   site.case("a").study_uid, site.case("b").study_uid]
    assert site.case("held").reviewer is None
    for uid in others:
        assert status_of(lambda uid=uid: web.retrieve_study(uid)) == 404
        assert status_of(lambda uid=uid: web.search_for_series(study_instance_uid=uid)) == 404
        assert status_of(lambda uid=uid: web.retrieve_study_metadata(uid)) == 404
        assert web.search_for_studies(search_filters={"StudyInstanceUID": uid}) == []
    assert all(s["0020000D"]["Value"] == [own.pseudo_study_uid] for s in web.search_for_series())
    b_series = client(site, tokens["dr-b"]).search_for_series(study_instance_uid=site.case("b").pseudo_study_uid)
    series_of_b = b_series[0]["0020000E"]["Value"][0]
    assert status_of(lambda: web.search_for_instances(own.pseudo_study_uid, series_of_b)) == 404
    assert [s["0020000D"]["Value"][0] for s in client(site, tokens["dr-b"]).search_for_studies()] == [
        site.case("b").pseudo_study_uid]


def test_no_wrong_or_revoked_token_answers_401(site, tokens):
    case = site.case("a")
    assert status_of(lambda: client(site).search_for_studies()) == 401
    assert status_of(lambda: client(site, "deadbeef." + "x" * 43).search_for_studies()) == 401
    wrong_secret = tokens["dr-a"].split(".")[0] + "." + "y" * 43
    assert status_of(lambda: client(site, wrong_secret).retrieve_study(case.pseudo_study_uid)) == 401
    token = site.token("dr-a")
    assert client(site, token).search_for_studies()
    listed = json.loads(site.node.cli("dicomweb", "token", "list", "--json").stdout)
    assert token.split(".")[1] not in json.dumps(listed), "the secret is never shown again"
    site.node.cli("dicomweb", "token", "revoke", token.split(".")[0])
    assert status_of(lambda: client(site, token).search_for_studies()) == 401
    assert status_of(lambda: client(site, token).retrieve_study(case.pseudo_study_uid)) == 401
    refused = requests.post(f"{site.url}/dicomweb/studies", data=b"x" * 100_000, timeout=30, headers={
        "Authorization": f"Bearer {token}", "Content-Type": 'multipart/related; type="application/dicom"; boundary=b'})
    assert refused.status_code == 401 and refused.headers.get("Connection") == "close"


def test_the_portal_session_of_a_reviewer_reads_its_case(site):
    cookie, csrf = site.session("dr-a")
    studies = client(site, cookie=cookie).search_for_studies()
    assert [s["0020000D"]["Value"][0] for s in studies] == [site.case("a").pseudo_study_uid]
    ops_cookie, _ = site.session("ops")
    assert status_of(lambda: client(site, cookie=ops_cookie).search_for_studies()) == 403
    sr = reviewer_sr(_images(site, "dr-a"))
    answer = _stow(site, sr, {"Cookie": cookie})  # no CSRF token: refused before the body is read
    assert answer.status_code == 403


def _images(site: Site, reviewer: str) -> list[pydicom.Dataset]:
    images = [pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
              for data in received_by(site, reviewer).values()]
    return sorted((ds for ds in images if ds.Modality == "MR"), key=lambda ds: int(ds.InstanceNumber))


def _stow(site: Site, dataset: pydicom.Dataset, headers: dict[str, str], path: str = "/dicomweb/studies"):
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    body = (b"--b1\r\nContent-Type: application/dicom\r\n\r\n" + buffer.getvalue() + b"\r\n--b1--\r\n")
    return requests.post(site.url + path, data=body, timeout=60, headers={
        **headers, "Content-Type": 'multipart/related; type="application/dicom"; boundary=b1'})


def test_stow_of_a_report_goes_through_the_report_intake(site, tokens):
    case = site.case("a")
    sr = reviewer_sr(_images(site, "dr-a"), text="L4-L5 left paracentral disc extrusion (DICOMweb).")
    with pytest.raises(requests.HTTPError) as refused:  # dr-b: not its case, refused by the intake
        client(site, tokens["dr-b"]).store_instances([sr])
    assert refused.value.response.status_code == 409
    failed = refused.value.response.json()["00081198"]["Value"][0]
    assert failed["00081197"]["Value"] == [NOT_AUTHORIZED]
    assert [e["reason"] for e in site.node.log_events() if e["event"] == "report_refused"] == [
        "not_assigned_to_caller"]
    assert _stow(site, sr, {"Authorization": f"Bearer {tokens['dr-b']}"},
                 f"/dicomweb/studies/{case.pseudo_study_uid}").status_code == 404
    assert site.case("a").state == "delivered"

    stored = client(site, tokens["dr-a"]).store_instances([sr], study_instance_uid=case.pseudo_study_uid)
    assert stored.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == sr.SOPInstanceUID
    assert "FailedSOPSequence" not in stored
    wait_until(lambda: site.case("a").state == "report_delivered", 180, "the report delivered home")
    reports = [pydicom.dcmread(p) for p in Path(site.hospital.out_dir).iterdir()]
    (report,) = [ds for ds in reports if ds.Modality == "SR"]
    assert report.StudyInstanceUID == case.study_uid and report.PatientID == PATIENTS["a"].patient_id
    assert str(report.PatientName) == PATIENTS["a"].name
    assert "DICOMweb" in report.ContentSequence[0].TextValue
    audit = site.node.cli("audit", "--case", case.key, "--json").stdout
    assert '"report_received"' in audit

    # An addendum from the portal's session (a viewer opened from the portal): with the session's CSRF header.
    cookie, csrf = site.session("dr-a")
    addendum = reviewer_sr(_images(site, "dr-a"), text="Addendum: no foraminal stenosis (portal session).")
    answer = _stow(site, addendum, {"Cookie": cookie, "X-CSRF-Token": csrf},
                   f"/dicomweb/studies/{case.pseudo_study_uid}")
    assert answer.status_code == 200, answer.text
    wait_until(lambda: len([p for p in Path(site.hospital.out_dir).iterdir()
                            if pydicom.dcmread(p, stop_before_pixels=True).Modality == "SR"]) == 2, 180,
               "the addendum delivered home")


def test_dicomweb_does_not_answer_the_portals_pages(site, tokens):
    request = urllib.request.Request(f"{site.url}/dicomweb/nothing-here",
                                     headers={"Authorization": f"Bearer {tokens['dr-a']}"})
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(request, timeout=30)
    assert missing.value.code == 404 and missing.value.headers["Content-Type"].startswith("application/json")
