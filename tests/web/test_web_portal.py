"""The portal in headless Chromium, against a running gateway with DCMTK peers.

The journey: a referrer signs in and sends a referral through the form (a wrong field first: the message is
next to it and the input is kept), after checking the scrubbed notes; the study is sent by DCMTK storescu; the referrer
sees the case move; the
reviewer opens it from the worklist, sees only pseudonymous notes, writes the report; the report reaches the
source's storescp re-identified; the referrer reads it (text and PDF). Then the operator's pages. Security:
another source's case answers 404, a form without its CSRF token 403, the 11th wrong password in a minute is
refused, a referrer cannot open reviewer or operator pages. Screenshots go to the test's tmp dir
(``SPINE_GATEWAY_SHOTS`` names another directory to keep them).
"""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pydicom
import pytest

from browser import browser_for
from gateway.demo import DemoPatient, write_demo_study
from support.peers import DcmtkStoreSCP, GatewayProcess, free_port, started, storescu, wait_until

pytestmark = pytest.mark.skipif(not Path("/usr/bin/chromium").exists() or not Path("/usr/bin/chromedriver").exists(),
                                reason="Debian's chromium and chromium-driver (scripts/install-system-deps.sh)")
PATIENT = DemoPatient()
PASSWORD = "correct horse battery"
FAST = {"routing": {"stable_after_s": 0.5, "poll_s": 0.2, "echo_interval_s": 1.0,
                    "retry": {"initial_s": 0.2, "max_s": 1.0, "max_attempts": 200}},
        "referrals": {"wait_s": 600}}
IDENTIFIERS = ("DOE", "Doe", "MRN0012345", "A1234567", "1971", "St Mary", "SMITH", "Smith")


class Site:
    def __init__(self, workdir: Path) -> None:
        self.hospital = DcmtkStoreSCP(workdir / "hospital", "HOSP_PACS")
        self.reviewer = DcmtkStoreSCP(workdir / "reviewer", "REVIEW_A")
        self.node = GatewayProcess(workdir / "gw", f"sqlite:///{workdir}/gateway.db", extra={
            **FAST, "http": {"host": "127.0.0.1", "port": free_port()}})
        self.study = write_demo_study(workdir / "study", 6, seed=5, rows=64, cols=64)

    def start(self) -> None:
        self.hospital.start()
        self.reviewer.start()
        self.node.config["sources"] = [
            {"name": "st-marys", "ae_title": "HOSP_PACS",
             "return": {"ae_title": "HOSP_PACS", "host": "127.0.0.1", "port": self.hospital.port}},
            {"name": "north", "ae_title": "NORTH_PACS"}]
        self.node.config["reviewers"] = [
            {"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": self.reviewer.port},
            {"name": "dr-b", "ae_title": "REVIEW_B", "host": "127.0.0.1", "port": free_port(), "enabled": False}]
        self.node.start()
        for name, role, scope in (("stmarys", "referrer", ["--source", "st-marys"]),
                                  ("north", "referrer", ["--source", "north"]),
                                  ("dr-a", "reviewer", ["--reviewer", "dr-a"]),
                                  ("dr-b", "reviewer", ["--reviewer", "dr-b"]), ("ops", "ops", [])):
            self.user_add(name, role, *scope)

    def user_add(self, name: str, role: str, *scope: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "gateway", "--config", str(self.node.config_path), "user", "add",
                               name, "--role", role, *scope, "--password-stdin"], input=PASSWORD + "\n",
                              capture_output=True, text=True, check=True, timeout=120)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.node.config['http']['port']}"

    def stop(self) -> None:
        for peer in (self.node, self.reviewer, self.hospital):
            peer.stop()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    with started(Site(tmp_path_factory.mktemp("web-site"))) as site:
        yield site


@pytest.fixture(scope="module")
def browser(site, tmp_path_factory):
    with browser_for(site.url, tmp_path_factory) as browser:
        yield browser


def _state(site: Site) -> dict:
    return site.node.status()["cases_by_state"]


def test_the_journey_from_referral_to_report(site, browser):
    browser.login("stmarys", PASSWORD)
    assert "Cases of st-marys" in browser.text()
    browser.open("/referrer/new")
    browser.fill("patient.family", "Doe")
    browser.fill("patient.given", "Jane")
    browser.fill("patient.id", PATIENT.patient_id)
    browser.fill("patient.birth_date", "12/04/1971")  # the source's format (en-GB): 1971-04-12
    browser.fill("clinical.pain.intensity", "12")
    browser.fill("clinical.history", "Jane Doe, 55, low back pain for 10 weeks after lifting.")
    browser.submit("form[action='/referrer/new'] button[type=submit]")
    assert "must be between 0 and 10" in browser.problem("clinical.pain.intensity")
    assert browser.problem("accession_number") == "must not be empty"
    assert browser.driver.find_element("name", "patient.family").get_attribute("value") == "Doe"
    browser.shot("referrer-form-errors")

    browser.fill("accession_number", PATIENT.accession)
    browser.fill("clinical.pain.intensity", "7")
    browser.fill("clinical.pain.location", "lumbar, left")
    browser.fill("clinical.pain.nature", "burning")
    browser.fill("clinical.pain.duration_weeks", "10")
    browser.fill("clinical.pain.radiation", "left leg to the foot")
    browser.fill("clinical.examination", "Positive straight leg raise on the left at 40 degrees.")
    browser.fill("clinical.question", "L4-L5 disc herniation compressing the L5 root?")
    browser.click("input[value=no_improvement_6_weeks]")
    browser.shot("referrer-form")
    browser.submit("form[action='/referrer/new'] button[type=submit]")
    assert "Check the notes before they go" in browser.text()
    chips = [c.text for c in browser.driver.find_elements("css selector", ".notes-text .chip")]
    assert chips.count("[NAME]") == 2, chips  # Jane Doe: removed before the referrer sends
    browser.submit("button[name=action][value=send]")
    assert "Referral" in browser.text() and "received" in browser.text()
    assert "waiting for the images" in browser.text()

    sent = storescu("127.0.0.1", site.node.port, site.study, calling="HOSP_PACS")
    assert sent.returncode == 0, sent.stderr
    wait_until(lambda: _state(site) == {"delivered": 1}, 180, "the case delivered to dr-a")
    browser.open("/referrer")
    assert "with a reviewer" in browser.text()
    browser.shot("referrer-cases")

    browser.login("dr-a", PASSWORD)
    assert "Worklist" in browser.text()
    browser.shot("reviewer-worklist")
    browser.submit("table a[href^='/reviewer/cases/']")
    html = browser.html()
    assert "Clinical notes" in html and "straight leg raise" in html
    only_the_assigned_reviewer_sees(site, browser.driver.current_url.rsplit("/", 1)[1])
    for identifier in IDENTIFIERS:
        assert identifier not in html, identifier
    series = browser.driver.find_elements("css selector", "section table tbody tr")[0].text.split()
    key_image = f"{series[0]}:{series[3].split('–')[0]}"
    browser.fill("finding.L4-L5", "Left paracentral disc extrusion compressing the left L5 root.")
    browser.fill("images.L4-L5", "99:99")
    browser.fill("impression", "L4-L5 disc extrusion with left L5 root compression.")
    browser.submit("form[action$='/report'] button[type=submit]")
    assert "series 99 has no instance 99" in browser.problem("images.L4-L5")
    assert "Left paracentral" in browser.driver.find_element("name", "finding.L4-L5").get_attribute("value")
    browser.fill("images.L4-L5", key_image)
    browser.fill("answer", "Yes: an extrusion at L4-L5 compresses the left L5 root.")
    browser.fill("recommendation", "Spinal surgery opinion.")
    browser.fill("finding.L5-S1", "Mild disc bulge without root contact.")
    browser.shot("reviewer-case")
    browser.submit("form[action$='/report'] button[type=submit]")
    assert "sent" in browser.text()

    wait_until(lambda: _state(site) == {"report_delivered": 1}, 180, "the report delivered to the hospital")
    received = [pydicom.dcmread(p) for p in site.hospital.out_dir.iterdir()]
    reports = [ds for ds in received if ds.Modality in ("SR", "DOC")]
    assert {ds.Modality for ds in reports} >= {"SR", "DOC"}
    for ds in reports:
        assert ds.PatientID == PATIENT.patient_id and ds.AccessionNumber == PATIENT.accession
        assert str(ds.PatientName) == PATIENT.name

    browser.login("stmarys", PASSWORD)
    assert "reported" in browser.text()
    browser.submit("a[href^='/referrer/referrals/']")
    text = browser.text()
    assert "Left paracentral disc extrusion" in text and "Answer to your question" in text
    browser.shot("referrer-report")
    pdf_link = browser.driver.find_element("link text", "Open the PDF").get_attribute("href")
    request = urllib.request.Request(pdf_link, headers={"Cookie": f"spine_session={browser.cookie('spine_session')}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.headers["Content-Type"] == "application/pdf"
        assert answer.read().startswith(b"%PDF")

    browser.login("ops", PASSWORD)
    assert "report_delivered" in browser.text()
    browser.shot("ops-overview")
    browser.submit("a[href^='/ops/cases/']")
    assert "web_report_written" in browser.text() and "web:dr-a" in browser.text()
    browser.shot("ops-case")


def _http(site: Site, path: str, *, data: dict | None = None, cookie: str = "") -> tuple[int, str]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    request = urllib.request.Request(site.url + path, data=body, headers={"Cookie": cookie} if cookie else {})
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003 - the base class's signature
        return None


def _signed_in(site: Site, name: str) -> tuple[str, str]:
    """(cookie header, CSRF token) of a fresh session of ``name``, signed in over plain HTTP."""
    status, page = _http(site, "/login")
    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(site.url + "/login")
    with opener.open(request, timeout=30) as answer:
        anonymous = answer.headers["Set-Cookie"].split(";")[0]
        token = re.search(r'name="csrf_token" value="([^"]+)"', answer.read().decode()).group(1)
    request = urllib.request.Request(site.url + "/login", headers={"Cookie": anonymous}, data=urllib.parse.urlencode(
        {"name": name, "password": PASSWORD, "csrf_token": token}).encode())
    try:
        opener.open(request, timeout=30)
    except urllib.error.HTTPError as redirect:
        assert redirect.code == 303, redirect.code
        session = redirect.headers["Set-Cookie"].split(";")[0]
    status, page = _http(site, "/", cookie=session)
    status, page = _http(site, "/referrer" if name in ("stmarys", "north") else "/reviewer"
                         if name.startswith("dr-") else "/ops", cookie=session)
    assert status == 200, status
    return session, re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def test_another_sources_case_is_not_found(site):
    cookie, _ = _signed_in(site, "stmarys")
    page = _http(site, "/referrer", cookie=cookie)[1]
    (referral_id,) = set(re.findall(r'href="/referrer/referrals/(\d+)"', page))
    assert _http(site, f"/referrer/referrals/{referral_id}", cookie=cookie)[0] == 200
    north, _ = _signed_in(site, "north")
    status, page = _http(site, f"/referrer/referrals/{referral_id}", cookie=north)
    assert status == 404 and PATIENT.patient_id not in page
    assert _http(site, f"/referrer/referrals/{referral_id}/report.pdf", cookie=north)[0] == 404
    assert PATIENT.accession not in _http(site, "/referrer", cookie=north)[1]


def test_a_form_without_its_csrf_token_is_refused(site):
    cookie, token = _signed_in(site, "stmarys")
    form = {"patient.family": "Roe", "patient.id": "X1", "accession_number": "ACC-CSRF"}
    assert _http(site, "/referrer/new", data=form, cookie=cookie)[0] == 403
    assert _http(site, "/referrer/new", data={**form, "csrf_token": "forged"}, cookie=cookie)[0] == 403
    assert "ACC-CSRF" not in _http(site, "/referrer", cookie=cookie)[1]
    assert _http(site, "/referrer/new", data={**form, "csrf_token": token}, cookie=cookie)[0] == 200  # the check
    assert _http(site, "/referrer/new", data={**form, "csrf_token": token, "action": "send"}, cookie=cookie)[0] == 303
    assert "ACC-CSRF" in _http(site, "/referrer", cookie=cookie)[1]
    assert _http(site, "/login", data={"name": "ops", "password": PASSWORD})[0] == 403  # sign-in form too


def test_a_referrer_cannot_open_reviewer_or_operator_pages(site):
    cookie, token = _signed_in(site, "stmarys")
    for path in ("/reviewer", "/ops"):
        assert _http(site, path, cookie=cookie)[0] == 403
    key = re.search(r"/ops/cases/([0-9a-f]+)", _http(site, "/ops", cookie=_signed_in(site, "ops")[0])[1]).group(1)
    assert _http(site, f"/reviewer/cases/{key}", cookie=cookie)[0] == 403
    assert _http(site, f"/ops/cases/{key}/retry", data={"csrf_token": token}, cookie=cookie)[0] == 403
    assert _http(site, "/referrer")[0] == 303  # not signed in: to the sign-in page


def only_the_assigned_reviewer_sees(site: Site, key: str) -> None:
    """While the case is with dr-a: dr-b neither sees it nor may report it."""
    other, token = _signed_in(site, "dr-b")
    assert key not in _http(site, "/reviewer", cookie=other)[1]
    assert _http(site, f"/reviewer/cases/{key}", cookie=other)[0] == 404
    form = {"csrf_token": token, "finding.L4-L5": "Normal.", "impression": "Normal."}
    assert _http(site, f"/reviewer/cases/{key}/report", data=form, cookie=other)[0] == 404
    for path in ("/referrer", "/ops"):
        assert _http(site, path, cookie=other)[0] == 403


def test_the_eleventh_wrong_password_in_a_minute_is_refused(site):
    opener = urllib.request.build_opener(_NoRedirect)
    with opener.open(urllib.request.Request(site.url + "/login"), timeout=30) as answer:
        anonymous = answer.headers["Set-Cookie"].split(";")[0]
        token = re.search(r'name="csrf_token" value="([^"]+)"', answer.read().decode()).group(1)

    def attempt(password: str) -> int:
        return _http(site, "/login", data={"name": "north", "password": password, "csrf_token": token},
                     cookie=anonymous)[0]

    assert [attempt(f"wrong-{i}") for i in range(10)] == [401] * 10
    assert attempt("wrong-10") == 429
    assert attempt(PASSWORD) == 429  # even the right one, until the minute has passed


def test_the_referral_schema_is_published(site):
    import json

    status, body = _http(site, "/referrals/schema")
    schema = json.loads(body)
    assert status == 200 and schema["title"] == "spine-gateway referral"
    assert set(schema["required"]) == {"source", "accession_number", "patient"}
    redactions = schema["properties"]["redactions"]
    assert redactions["maxItems"] == 50 and redactions["items"]["maxLength"] == 200
    assert "[REDACTED]" in redactions["description"]


def test_operator_actions_call_the_cli_functions_and_are_audited_by_name(site):
    import json

    cookie, token = _signed_in(site, "ops")
    key = re.search(r"/ops/cases/([0-9a-f]+)", _http(site, "/ops", cookie=cookie)[1]).group(1)
    status, page = _http(site, f"/ops/cases/{key}/approve", data={"csrf_token": token}, cookie=cookie)
    assert status == 409 and "nothing to approve: the case is report_delivered" in page, "no approval after the fact"
    status, page = _http(site, f"/ops/cases/{key}/retry", data={"csrf_token": token}, cookie=cookie)
    assert status == 409 and "only a failed case can be retried" in page
    status, page = _http(site, f"/ops/cases/{key}/release", data={"csrf_token": token}, cookie=cookie)
    assert status == 409 and "only a quarantined or rejected case is released" in page
    assert _http(site, "/ops/cases/000000000000", cookie=cookie)[0] == 404
    events = json.loads(site.node.cli("audit", "--case", key, "--json").stdout)
    by_action = {(e["action"], e["outcome"]): e for e in events}
    assert by_action[("notes_approved", "refused")]["detail"].startswith("by web:ops; the case is report_delivered")
    assert ("notes_approved", "success") not in by_action, "no approval after the fact (issue 27)"
    assert by_action[("web_notes_approved", "refused")]["actor_host"] == "web:ops"
    assert by_action[("web_retry", "refused")]["actor_host"] == "web:ops"
    assert by_action[("web_release", "refused")]["detail"].startswith("by ops from 127.0.0.1")
    assert site.node.status()["cases_by_state"] == {"report_delivered": 1}
