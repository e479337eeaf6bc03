"""Both review screens of the notes in headless Chromium: the referrer's check before sending (and after, until
the notes are attached), and the operator's review of a case the outbound guard quarantined.

The portal runs in this process on the node's own HTTP server, over the real stages (SQLite, the spool,
DeidStage, NotesStage), so that the guard can be made to hit: the scrubber is told nothing but the phrases
people removed (fault injection, as in tests/referral/test_referral_privacy.py). Screenshots go to
``SPINE_GATEWAY_SHOTS`` (else the test's tmp dir).
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.expected_conditions import staleness_of
from selenium.webdriver.support.wait import WebDriverWait

sys.path.insert(0, str(Path(__file__).parents[1] / "referral"))

import gateway.referral.notes_work as notes_work  # noqa: E402
from browser import Browser  # noqa: E402
from gateway.accounts.users import add_user  # noqa: E402
from gateway.config import HttpConfig  # noqa: E402
from gateway.http.app import build_application  # noqa: E402
from gateway.http.server import HttpServer  # noqa: E402
from gateway.referral.notes_case import load_document
from gateway.referral.scrub import KnownIdentifiers, scrub_referral  # noqa: E402
from gateway.stages.context import NodeContext  # noqa: E402
from gateway.stages.referral import NotesStage  # noqa: E402
from gateway.storage.models import AuditEvent, CaseState, NotesRedaction, Study, utcnow  # noqa: E402
from gateway.storage.models import Referral as ReferralRow  # noqa: E402
from gateway.web.app import error_page, portal_routes  # noqa: E402
from privacy_cases import PATIENT, write_held_study  # noqa: E402
from referral_cases import close_world, make_world  # noqa: E402

pytestmark = pytest.mark.skipif(not Path("/usr/bin/chromium").exists() or not Path("/usr/bin/chromedriver").exists(),
                                reason="Debian's chromium and chromium-driver (scripts/install-system-deps.sh)")
PASSWORD = "correct horse battery"
HISTORY = ("Eleanor Hargreaves lives in Thrapston. Low back pain for 10 weeks after lifting tyres as a forklift "
           "driver at the depot; seen by the GP on 03/02/2024.")


@pytest.fixture
def portal(tmp_path, monkeypatch):
    world = make_world(tmp_path)
    for name, role, source in (("stmarys", "referrer", "st-marys"), ("ops", "ops", None)):
        add_user(world.config, name, role, PASSWORD, source=source)
    http = HttpConfig(port=0)
    context = NodeContext.of_process()
    server = HttpServer(http, build_application(http, {}, context=context,
                                                portal=portal_routes(world.config, world.spool, context),
                                                portal_error_page=error_page))
    browser = None
    try:
        server.start()
        browser = Browser(f"http://127.0.0.1:{server.port}",
                          Path(os.environ.get("SPINE_GATEWAY_SHOTS") or tmp_path / "shots"))
        yield world, browser
    finally:
        if browser is not None:
            browser.quit()
        server.stop()
        close_world()


def _scrubber_told_only_the_redactions(monkeypatch) -> None:
    def leaky(referral, known, date_offset_days, **options):
        notes = scrub_referral(referral, date_offset_days, known=KnownIdentifiers(), **options)
        history = referral.clinical.history
        for phrase in known.redactions:
            history = re.sub(re.escape(phrase), "[REDACTED]", history, flags=re.IGNORECASE)
        return replace(notes, history=history)
    monkeypatch.setattr(notes_work, "scrub_referral_notes", leaky)


def _select_word(browser: Browser, word: str) -> None:
    """Double-click ``word`` inside the notes (the browser selects it; the page's script copies the selection)."""
    spans = browser.driver.find_elements(By.CSS_SELECTOR, ".notes-text")
    target = next(s for s in spans if word in s.text)
    browser.driver.execute_script("""
        const [element, word] = arguments; const walker = document.createTreeWalker(element, NodeFilter.SHOW_TEXT);
        while (walker.nextNode()) { const at = walker.currentNode.data.indexOf(word);
          if (at >= 0) { const range = document.createRange(); range.setStart(walker.currentNode, at);
            range.setEnd(walker.currentNode, at + word.length); const s = window.getSelection();
            s.removeAllRanges(); s.addRange(range); break; } }""", target, word)
    ActionChains(browser.driver).move_to_element(target).release().perform()


def _post_from_the_page(browser: Browser, action: str) -> None:
    """Submit a POST to ``action`` from the current page, with its CSRF token, as the browser would."""
    old = browser.driver.find_element(By.TAG_NAME, "html")
    browser.driver.execute_script("""
        const form = document.createElement("form"); form.method = "post"; form.action = arguments[0];
        const token = document.querySelector("input[name=csrf_token]").cloneNode();
        form.appendChild(token); document.body.appendChild(form); form.submit();""", action)
    WebDriverWait(browser.driver, 60).until(staleness_of(old))
    WebDriverWait(browser.driver, 60).until(lambda d: d.execute_script("return document.readyState") == "complete")


def test_the_referrer_checks_redacts_and_sends_then_the_operator_clears_a_guard_hit(portal, tmp_path, monkeypatch):
    world, browser = portal
    browser.login("stmarys", PASSWORD)
    browser.open("/referrer/new")
    for name, value in (("patient.family", "Hargreaves"), ("patient.given", "Eleanor"),
                        ("patient.id", PATIENT.patient_id), ("accession_number", PATIENT.accession),
                        ("patient.address.street", "14 Wychwood Crescent"), ("patient.address.town", "Thrapston"),
                        ("patient.address.postcode", "NN14 4QT"), ("patient.phones", "01832 736415\nnot a number"),
                        ("patient.email", "eleanor.example.org"), ("patient.other_ids", "NHS9434765919"),
                        ("clinical.history", HISTORY), ("clinical.question", "L4-L5 disc herniation?")):
        browser.fill(name, value)
    browser.submit("form[action='/referrer/new'] button[type=submit]")
    assert browser.problem("patient.email") == "write an e-mail address, e.g. name@example.org"
    assert browser.problem("patient.phones") == "line 2: write a phone number (digits, spaces, + ( ) -)"
    assert browser.driver.find_element(By.NAME, "patient.email").get_attribute("value") == "eleanor.example.org"
    assert browser.driver.find_element(By.NAME, "patient.address.town").get_attribute("value") == "Thrapston"
    browser.shot("referrer-form-address-errors")
    browser.fill("patient.email", "eleanor@example.org")
    browser.fill("patient.phones", "01832 736415")
    browser.submit("form[action='/referrer/new'] button[type=submit]")

    assert "Check the notes before they go" in browser.text() and "dates will be shifted" in browser.text()
    chips = [c.text for c in browser.driver.find_elements(By.CSS_SELECTOR, ".notes-text .chip")]
    assert "[NAME]" in chips and "[ADDRESS]" in chips and "[2024-02-03]" in chips  # offset 0: as written
    notes = " ".join(e.text for e in browser.driver.find_elements(By.CSS_SELECTOR, ".notes-text"))
    assert "Hargreaves" not in notes and "Thrapston" not in notes
    browser.fill("phrase", "crane driver")
    browser.submit("button[name=action][value=redact]:not(.default-action)")
    assert "not in the notes as written" in browser.problem("phrase")
    _select_word(browser, "forklift driver")
    assert browser.driver.find_element(By.ID, "phrase").get_attribute("value") == "forklift driver"
    browser.submit("button[name=action][value=redact]:not(.default-action)")
    assert "[REDACTED]" in [c.text for c in browser.driver.find_elements(By.CSS_SELECTOR, ".notes-text .chip")]
    assert "forklift" not in browser.driver.find_element(By.CSS_SELECTOR, ".notes-text").text
    browser.shot("referrer-preview")
    browser.submit("button[name=action][value=send]")
    assert "received" in browser.text()
    row = ReferralRow.get()
    document = load_document(row)
    assert document.redactions == ["forklift driver"]
    assert document.patient.address.town == "Thrapston" and document.patient.phones == ["01832 736415"]
    assert document.patient.email == "eleanor@example.org" and document.patient.other_ids == ["NHS9434765919"]

    browser.open(f"/referrer/referrals/{row.id}")
    assert "The notes as the reviewer will read them" in browser.text()
    _select_word(browser, "tyres")
    browser.submit("#notes button[name=action][value=redact]:not(.default-action)")
    assert load_document(ReferralRow.get_by_id(row.id)).redactions == ["forklift driver", "tyres"]
    browser.shot("referrer-case-preview")
    assert AuditEvent.get(AuditEvent.action == "referrer_redaction").actor_host == "web:stmarys"

    _scrubber_told_only_the_redactions(monkeypatch)
    case = world.deidentified_case(write_held_study(tmp_path / "study", header={}))
    NotesStage.of(world.config, world.spool).run_once(utcnow())
    case = Study.get_by_id(case.id)
    assert case.state == CaseState.QUARANTINED, case.state_reason

    browser.login("ops", PASSWORD)
    browser.open(f"/ops/cases/{case.key}")
    text = browser.text()
    assert "What the outbound guard found" in text and "notes_sr:ContentSequence[" in text
    assert "patient name" in text and "address" in text
    assert browser.driver.find_elements(By.CSS_SELECTOR, "form[action$='/approve']") == []  # never approved
    assert "a guard hit is never approved as it stands" in browser.driver.find_element(By.ID, "approve-note").text
    browser.shot("ops-quarantined-case")
    _post_from_the_page(browser, f"/ops/cases/{case.key}/approve")  # as a stale page or a hand-made request would
    assert "never approved as it stands" in browser.problem("approve")
    assert Study.get_by_id(case.id).state == CaseState.QUARANTINED
    refusals = {(e.action, e.outcome) for e in AuditEvent.select().where(AuditEvent.study_key == case.key)}
    assert {("notes_approved", "refused"), ("web_notes_approved", "refused")} <= refusals
    assert ("notes_approved", "success") not in refusals
    browser.submit("form[action$='/release'] button")
    assert "never released as it stands" in browser.problem("release")
    assert Study.get_by_id(case.id).state == CaseState.QUARANTINED
    browser.shot("ops-release-refused")
    for _ in range(6):
        hits = browser.driver.find_elements(By.CSS_SELECTOR, "#guard button.hit")
        if not hits:
            break
        browser.submit("#guard button.hit")
    assert "none left in the notes as they now stand" in browser.text()
    browser.shot("ops-redacted")
    assert {r.actor for r in NotesRedaction.select()} == {"web:ops"}
    browser.submit("form[action$='/release'] button")
    assert "Done: release" in browser.text()
    NotesStage.of(world.config, world.spool).run_once(utcnow())
    assert Study.get_by_id(case.id).state == CaseState.NOTES_ATTACHED
    browser.open(f"/ops/cases/{case.key}")
    assert "notes_release" in browser.text() and "notes_attached" in browser.text()
    assert browser.driver.find_elements(By.CSS_SELECTOR, "form[action$='/approve'] button")  # no guard hit now
    browser.shot("ops-released-case")
