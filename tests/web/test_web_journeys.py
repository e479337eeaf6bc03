"""The journeys of issue 27 in headless Chromium, against a running gateway with DCMTK peers and the shipped
configuration's one reviewer (dr-a, no subspecialty; a signing name, qualification and organization added) and
source (a letterhead added).

A report written in the portal: signed from the account (VERIFIED, nothing typed), it reaches the hospital's
PACS with the hospital's copy of its PDF (letterhead, the patient's identity; never in front of the reviewer),
and the referrer reads it in clinical words: who signed it, the answer to the question under its own heading,
the key images as thumbnails drawn from the node's de-identified copy (with their series and image numbers), no
DICOM vocabulary. The referral form's dates are typed in the source's format (dd/mm/yyyy for the UK source).

A referral asking for a subspecialty no reviewer lists: the case is held, and why is said in the same words in
``spine-gateway status``, the log, the operators' overview and case page, and the referrer's list and case page.
Screenshots go to the test's tmp dir (``SPINE_GATEWAY_SHOTS`` names another directory to keep them).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
import yaml
from pypdf import PdfReader
from selenium.webdriver.support.wait import WebDriverWait

from browser import browser_for
from gateway.demo import DemoPatient, write_demo_study
from support.mailsink import SmtpSink, WebhookSink
from support.peers import DcmtkStoreSCP, GatewayProcess, free_port, started, storescu, wait_until

pytestmark = pytest.mark.skipif(not Path("/usr/bin/chromium").exists() or not Path("/usr/bin/chromedriver").exists(),
                                reason="Debian's chromium and chromium-driver (scripts/install-system-deps.sh)")
ROOT = Path(__file__).resolve().parents[2]
PATIENT = DemoPatient()
PASSWORD = "correct horse battery"
FAST = {"routing": {"stable_after_s": 0.5, "poll_s": 0.2, "echo_interval_s": 1.0,
                    "retry": {"initial_s": 0.2, "max_s": 1.0, "max_attempts": 200}},
        "referrals": {"wait_s": 600}}
HELD_WHY = "no reviewer with subspecialty spine is configured: 0 of 1 reviewers match"


class Site:
    """A node with the shipped configuration's reviewer (its port moved to a DCMTK storescp) and source."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.smtp, self.webhook = SmtpSink(), WebhookSink()
        self.hospital = DcmtkStoreSCP(workdir / "hospital", "STMARYS_PACS")
        self.reviewer = DcmtkStoreSCP(workdir / "reviewer", "REVIEW_A")
        self.node = GatewayProcess(workdir / "gw", f"sqlite:///{workdir}/gateway.db", extra={
            **FAST, "http": {"host": "127.0.0.1", "port": free_port()}})

    def start(self) -> None:
        self.smtp.start()
        self.webhook.start()
        self.hospital.start()
        self.reviewer.start()
        self.node.config["critical"] = {
            "portal_url": self.url, "smtp_port": self.smtp.port, "escalate_after_s": 4.0, "initial_s": 0.5,
            "ops_emails": ["ops@hospital.example"]}
        shipped = yaml.safe_load((ROOT / "config" / "gateway.yaml").read_text())
        self.node.config["sources"] = shipped["sources"]
        self.node.config["sources"][0]["return"]["port"] = self.hospital.port
        self.node.config["reviewers"] = shipped["reviewers"]
        self.node.config["reviewers"][0].update(port=self.reviewer.port, signing_name="Reviewer^Ann",
                                                qualification="FRCR", organization="Spine Review Partners")
        self.node.config["sources"][0].update(letterhead=["St Mary's Hospital NHS Trust", "Department of Radiology"],
                                              critical_emails=["radiology@stmarys.example"],
                                              critical_webhooks=[self.webhook.url])
        self.node.start()
        for name, role, scope in (("stmarys", "referrer", ["--source", "st-marys"]),
                                  ("dr-a", "reviewer", ["--reviewer", "dr-a"]), ("ops", "ops", [])):
            subprocess.run([sys.executable, "-m", "gateway", "--config", str(self.node.config_path), "user", "add",
                            name, "--role", role, *scope, "--password-stdin"], input=PASSWORD + "\n",
                           capture_output=True, text=True, check=True, timeout=120)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.node.config['http']['port']}"

    def stop(self) -> None:
        for peer in (self.node, self.reviewer, self.hospital, self.smtp, self.webhook):
            peer.stop()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    with started(Site(tmp_path_factory.mktemp("journeys"))) as site:
        yield site


@pytest.fixture(scope="module")
def browser(site, tmp_path_factory):
    with browser_for(site.url, tmp_path_factory) as browser:
        yield browser


def docs_referral() -> dict:
    """The full example of docs/referrals.md."""
    text = (ROOT / "docs" / "referrals.md").read_text().split("## A full example", 1)[1]
    return json.loads(text.split("```json\n", 1)[1].split("```", 1)[0])


def test_a_held_case_says_why_in_the_same_words_everywhere(site, browser, tmp_path):
    referral = docs_referral()
    referral["subspecialty"] = "spine"  # what the docs' example used to ask: no shipped reviewer lists it
    path = tmp_path / "referral.json"
    path.write_text(json.dumps(referral))
    site.node.cli("referral", "add", str(path))
    study = write_demo_study(tmp_path / "study", 4, seed=7, rows=64, cols=64)
    sent = storescu("127.0.0.1", site.node.port, study, calling="STMARYS_PACS")
    assert sent.returncode == 0, sent.stderr
    wait_until(lambda: site.node.status()["cases_by_state"].get("held") == 1, 180, "the case held")

    started = (site.node.workdir / "gateway.stderr").read_text()
    assert f"listening: DICOM AE SPINEGW on 127.0.0.1:{site.node.port}; portal and API {site.url}/" in started
    status = site.node.cli("status").stdout
    assert f"    {HELD_WHY}\n" in status, status
    held = [e for e in site.node.log_events() if e["event"] == "no_reviewer"]
    assert [e["reason"] for e in held] == [HELD_WHY]

    browser.login("ops", PASSWORD)
    assert HELD_WHY in browser.text()
    browser.shot("held-ops-overview")
    browser.submit("a[href^='/ops/cases/']")
    assert HELD_WHY in browser.text()
    browser.shot("held-ops-case")

    browser.login("stmarys", PASSWORD)
    assert HELD_WHY in browser.text()
    browser.shot("held-referrer-cases")
    browser.submit("a[href^='/referrer/referrals/']")
    assert HELD_WHY in browser.text()
    browser.shot("held-referrer-case")


def _study_of_another_patient(out: Path) -> list[Path]:
    """The demo study as a second patient (the demo's seed changes only the UIDs)."""
    files = write_demo_study(out, 4, seed=11, rows=64, cols=64)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID, ds.AccessionNumber = "ROE^RICHARD", "MRN0099999", "A7654321"
        ds.PatientBirthDate = "19600102"
        ds.save_as(path)
    return files


def _reviewer_pdf_text(site: Site) -> str:
    pdfs = [pydicom.dcmread(p) for p in site.reviewer.out_dir.iterdir()]
    return " ".join(page.extract_text() for ds in pdfs if "EncapsulatedDocument" in ds
                    for page in PdfReader(io.BytesIO(bytes(ds.EncapsulatedDocument))).pages)


def test_a_report_signed_in_the_portal_reaches_the_hospital_and_the_referrer_in_clinical_words(site, browser,
                                                                                              tmp_path):
    referral = docs_referral()
    referral.update(accession_number="A7654321", patient={"id": "MRN0099999", "name": "Roe^Richard",
                                                          "birth_date": "1960-01-02"})
    path = tmp_path / "referral.json"
    path.write_text(json.dumps(referral))
    site.node.cli("referral", "add", str(path))
    sent = storescu("127.0.0.1", site.node.port, _study_of_another_patient(tmp_path / "study"),
                    calling="STMARYS_PACS")
    assert sent.returncode == 0, sent.stderr
    wait_until(lambda: site.node.status()["cases_by_state"].get("delivered") == 1, 180, "delivered to dr-a")

    browser.login("dr-a", PASSWORD)
    browser.submit("table a[href^='/reviewer/cases/']")
    assert "Signed as Ann Reviewer, FRCR (Spine Review Partners)" in browser.text()
    notes = browser.driver.find_element("css selector", "section .report").text
    assert "Pain severity (0-10): 7" in notes and "Pain duration: 10 weeks" in notes, notes
    for dicom_ism in ("[Score]", "- Reported", "7.0", " wk"):
        assert dicom_ism not in notes, dicom_ism
    browser.shot("reviewer-notes")
    assert not browser.driver.find_elements("name", "observer"), "the name is the account's, never typed"
    series = browser.driver.find_elements("css selector", "section table tbody tr")[0].text.split()
    browser.fill("finding.L4-L5", "Left paracentral disc extrusion compressing the left L5 root.")
    browser.fill("images.L4-L5", f"{series[0]}:{series[3].split('–')[0]}")
    browser.fill("impression", "L4-L5 disc extrusion with left L5 root compression.")
    browser.fill("answer", "Yes: an extrusion at L4-L5 compresses the left L5 root.")
    browser.fill("recommendation", "Spinal surgery opinion.")
    browser.fill("critical.contact", "On-call spinal surgeon, 020 7946 0000")
    browser.submit("form[action$='/report'] button[type=submit]")
    assert "tick it to flag the result critical" in browser.problem("critical"), "whom to call, but no flag"
    browser.click("input[name=critical]")
    browser.shot("report-reviewer-form")
    browser.submit("form[action$='/report'] button[type=submit]")
    wait_until(lambda: site.node.status()["cases_by_state"].get("report_delivered") == 1, 180, "the report home")

    home = [pydicom.dcmread(p) for p in site.hospital.out_dir.iterdir()]
    (sr,) = [ds for ds in home if ds.Modality == "SR"]
    assert sr.VerificationFlag == "VERIFIED" and str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == \
        "Reviewer^Ann"
    (pdf,) = [ds for ds in home if ds.Modality == "DOC"]
    text = " ".join(" ".join(page.extract_text() for page in PdfReader(io.BytesIO(bytes(
        pdf.EncapsulatedDocument))).pages).split())
    for expected in ("St Mary's Hospital NHS Trust", "ROE, RICHARD", "MRN0099999", "2 Jan 1960", "A7654321",
                     "Ann Reviewer, FRCR", "final, verified (signed)", "Answer to the clinical question"):
        assert expected in text, text
    reviewer_text = _reviewer_pdf_text(site)
    for identifier in ("ROE", "Roe", "MRN0099999", "1960", "A7654321", "St Mary"):
        assert identifier not in reviewer_text, identifier

    browser.login("stmarys", PASSWORD)
    browser.submit("a[href^='/referrer/referrals/']:not([href$='/1'])")
    report = browser.driver.find_element("id", "report").text
    assert "Reported by Ann Reviewer · final: signed by the reviewer" in report
    assert "Answer to your question" in report and "Yes: an extrusion at L4-L5" in report
    _key_images_are_pictures_of_the_case(site, browser, series[0])
    for dicom_ism in ("Observer Type", "Person Observer Name", "^", "Impressions", "Language"):
        assert dicom_ism not in report, dicom_ism
    browser.shot("report-referrer")

    # the critical result: told at once by e-mail and webhook (no PHI: a link), shown first and in red, escalated
    # to the operators for want of an acknowledgement, then acknowledged
    wait_until(lambda: len(site.smtp.messages) >= 2 and site.webhook.bodies, 60, "the notices and the escalation")
    (told,) = [m for m in site.smtp.messages if "radiology@stmarys.example" in m["To"]]
    (escalated,) = [m for m in site.smtp.messages if "ops@hospital.example" in m["To"]]
    (hook,) = site.webhook.bodies
    referral_link = f"{site.url}/referrer/referrals/2"
    assert referral_link in told.get_content() and hook["link"] == referral_link and hook["event"] == "critical_result"
    assert "/ops/cases/" in escalated.get_content() and "not acknowledged" in escalated["Subject"]
    for notice in (told.as_string(), escalated.as_string(), json.dumps(hook)):
        for identifier in ("ROE", "Roe", "MRN0099999", "1960", "A7654321", "020 7946", "extrusion"):
            assert identifier not in notice, identifier
    browser.open("/referrer")
    first = browser.driver.find_elements("css selector", "tbody tr")[0]
    assert "A7654321" in first.text and "critical result: act now" in first.text and "MRN0099999" in first.text
    assert first.get_attribute("class") == "critical-row"
    browser.shot("critical-referrer-cases")
    browser.submit("tbody tr:first-child a")
    banner = browser.driver.find_element("id", "critical")
    assert "Whom to call: On-call spinal surgeon, 020 7946 0000" in banner.text
    assert banner.value_of_css_property("border-top-color") == "rgba(197, 48, 48, 1)", "red"
    browser.shot("critical-referrer-case")
    browser.submit("#critical button[type=submit]")
    assert "Acknowledged by stmarys" in browser.driver.find_element("id", "critical").text
    browser.login("ops", PASSWORD)
    key = json.loads(site.node.cli("status", "--accession", "A7654321", "--json").stdout)["cases"][0]["case"]
    browser.open(f"/ops/cases/{key}")
    timeline = browser.text()
    assert "Encapsulated PDF Storage" in timeline and "1.2.840.10008.5.1.4.1.1.104.1" not in timeline
    assert "Approve the notes" not in timeline, "no approval is offered on a reported case"
    attempts = browser.driver.find_element("xpath", "//dt[.='Delivery attempts']/following-sibling::dd[1]").text
    assert attempts == "1", "delivered at the first attempt"
    browser.shot("ops-reported-case")
    actions = {row["action"]: row["outcome"] for row in json.loads(site.node.cli("audit", "--json", "--limit",
                                                                                  "1000").stdout)}
    for action in ("critical_result_flagged", "critical_notice_sent", "critical_result_escalated",
                   "critical_result_acknowledged"):
        assert actions.get(action) == "success", (action, actions)


def _key_images_are_pictures_of_the_case(site: Site, browser, series: str) -> None:
    """The finding's key image is a thumbnail drawn from the node's de-identified copy, its place in words,
    opening larger; another case's image is not found."""
    wait = WebDriverWait(browser.driver, 60)
    (figure,) = browser.driver.find_elements("css selector", "#report .key-images figure")
    assert figure.find_element("tag name", "figcaption").text.startswith(f"series {series}, image ")
    image = figure.find_element("tag name", "img")
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image))
    width, height = browser.driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]",
                                                  image)
    assert width == height == 64, "the demo's 64 x 64 image, drawn (never scaled up)"
    link = figure.find_element("tag name", "a").get_attribute("href")
    assert link == image.get_attribute("src") + "?size=large"
    referral = link.split("/referrer/referrals/", 1)[1].split("/", 1)[0]
    browser.open(f"/referrer/referrals/{referral}/key-images/999999")
    assert "No such image." in browser.text()
    browser.driver.back()
    wait.until(lambda d: d.find_elements("css selector", "#report .key-images img"))


def test_a_referral_is_validated_as_a_pacs_needs_it_then_corrected_and_withdrawn(site, browser):
    browser.login("stmarys", PASSWORD)
    browser.open("/referrer/new")
    browser.fill("patient.family", "Poe^Edgar")
    browser.fill("patient.id", "MRN\\0055555")
    birth_date = browser.driver.find_element("name", "patient.birth_date")
    assert (birth_date.get_attribute("type"), birth_date.get_attribute("placeholder")) == ("text", "dd/mm/yyyy"), \
        "the UK source's format, whatever the browser's locale"
    browser.fill("patient.birth_date", "01/01/2030")
    browser.fill("study_date", "12/31/2020")  # a US date at a UK source
    browser.fill("accession_number", "A5555555")
    browser.fill("clinical.question", "Canal stenosis at L3-L4?")
    browser.submit("form[action='/referrer/new'] button[type=submit]")
    assert "without ^" in browser.problem("patient.family")
    assert "backslash" in browser.problem("patient.id")
    assert "in the future" in browser.problem("patient.birth_date")
    assert browser.problem("study_date") == "there is no such date: write it as dd/mm/yyyy, e.g. 19/01/1959"
    assert browser.driver.find_element("name", "study_date").get_attribute("value") == "12/31/2020", "kept"
    assert browser.driver.find_element("name", "clinical.question").get_attribute("value") == \
        "Canal stenosis at L3-L4?", "the input is kept"
    browser.shot("referral-validation")

    big = "document.getElementsByName('clinical.history')[0].value = 'x'.repeat(2 * 1024 * 1024)"
    browser.driver.execute_script(big)
    browser.click("form[action='/referrer/new'] button[type=submit]")  # the form's script stops it: not sent
    assert "must be at most 20,000 characters (got 2,097,152)" in browser.driver.find_element(
        "id", "clinical.history-limit-problem").text
    assert browser.driver.find_element("name", "clinical.question").get_attribute("value") == \
        "Canal stenosis at L3-L4?", "the input is kept"
    browser.shot("referral-too-long")
    browser.driver.execute_script("document.getElementsByName('clinical.history')[0].value = ''")
    browser.fill("patient.family", "Poe")
    browser.fill("patient.given", "Edgar")
    browser.fill("patient.id", "MRN0055555")
    browser.fill("patient.birth_date", "19/01/1959")
    browser.fill("study_date", "31/12/2020")
    browser.submit("form[action='/referrer/new'] button[type=submit]")
    browser.submit("button[name=action][value=send]")
    browser.submit("a[data-accession='A5555555']")
    submitted = browser.driver.find_element("id", "submitted").text
    assert "Accession number\nA5555555" in submitted and "Canal stenosis at L3-L4?" in submitted
    assert "Study date\n31/12/2020" in submitted, "as written, in the source's format"
    assert "born 19/01/1959" in browser.text()
    browser.shot("referral-as-sent")

    browser.submit("a[href$='/edit']")
    assert browser.driver.find_element("name", "patient.family").get_attribute("value") == "Poe"
    assert browser.driver.find_element("name", "patient.birth_date").get_attribute("value") == "19/01/1959"
    browser.fill("accession_number", "A5555556")
    browser.fill("clinical.question", "Canal stenosis at L3-L4 or L4-L5?")
    browser.submit("form[action='/referrer/new'] button[type=submit]")
    browser.submit("button[name=action][value=send]")
    rows = {row.find_element("css selector", "td").text: row.text
            for row in browser.driver.find_elements("css selector", "tbody tr")}
    assert "withdrawn" in rows["A5555555"] and "waiting for the images" in rows["A5555556"]
    browser.shot("referral-corrected")

    browser.login("ops", PASSWORD)
    waiting = browser.driver.find_element("id", "waiting-referrals").text
    assert "A5555556" in waiting and "A5555555" not in waiting, "the operators see the referral waiting"
    browser.shot("ops-waiting-referrals")
    browser.login("stmarys", PASSWORD)
    browser.submit("a[data-accession='A5555556']")
    assert "L3-L4 or L4-L5?" in browser.driver.find_element("id", "submitted").text
    browser.submit("#referral-actions button[type=submit]")
    assert "withdrawn" in browser.text() and not browser.driver.find_elements("id", "referral-actions")
    actions = [row["action"] for row in json.loads(site.node.cli("audit", "--json", "--limit", "1000").stdout)]
    assert "web_referral_corrected" in actions and "web_referral_withdrawn" in actions
