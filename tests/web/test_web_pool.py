"""The pool in two reviewers' browsers (headless Chromium) against a running node: the set-up of the UPS-RS
end-to-end test (:class:`PoolSite`: reviewers in ``mode: pull``, one spine MR case pooled, a hospital storescp).

dr-b opens "Cases to claim" and leaves it open; dr-a opens it and claims the case, whose page opens with the viewer
and the claim's buttons; dr-b's list no longer has it, and dr-b's stale Claim gets the message next to its row. dr-a
says it is still working on it (the claim renewed), then gives it back; dr-b sees it listed again, claims it, writes
the report, and the report reaches the hospital's storescp re-identified; the workitem is COMPLETED. Screenshots go
to the test's tmp dir (``SPINE_GATEWAY_SHOTS`` names another directory to keep them).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pydicom
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from browser import browser_for

sys.path.insert(0, str(Path(__file__).parents[1] / "dicomweb"))

from dicomweb_site import PASSWORD, PATIENTS, PoolSite, _study_uid  # noqa: E402
from support.peers import started, wait_until  # noqa: E402

VENDOR = Path(__file__).resolve().parents[2] / "gateway" / "web" / "static" / "vendor" / "installed.json"
pytestmark = pytest.mark.skipif(not Path("/usr/bin/chromium").exists() or not Path("/usr/bin/chromedriver").exists(),
                                reason="Debian's chromium and chromium-driver (scripts/install-system-deps.sh)")
LOADED_S = 120  # generous: two cores shared by many


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    with started(PoolSite(tmp_path_factory.mktemp("pool-pages"))) as site:
        site.user_add("dr-a", "reviewer", "--reviewer", "dr-a")
        yield site


@pytest.fixture(scope="module")
def browsers(site, tmp_path_factory):
    with browser_for(site.url, tmp_path_factory) as a, browser_for(site.url, tmp_path_factory) as b:
        a.login("dr-a", PASSWORD)
        b.login("dr-b", PASSWORD)
        yield a, b


def case_rows(browser) -> list[str]:
    return [row.get_attribute("data-case") for row in browser.driver.find_elements(By.CSS_SELECTOR, "tr[data-case]")]


def workitem_state(site: PoolSite) -> list[tuple[str, str | None]]:
    return site.sql("SELECT state, claimed_by FROM workitem ORDER BY id")


def test_two_reviewers_claim_give_back_and_report_from_the_pool_page(site, browsers):
    a, b = browsers
    (key,) = site.sql("SELECT key FROM study")[0]
    b.open("/reviewer/pool")
    assert case_rows(b) == [key], b.text()
    a.open("/reviewer")
    a.submit("nav a[href='/reviewer/pool']")
    assert case_rows(a) == [key]
    row = a.driver.find_element(By.CSS_SELECTOR, f"tr[data-case='{key}']").text
    assert "lumbar spine" in row and "MR" in row and "spine" in row, row
    for identifying in (PATIENTS["a"].name.split("^")[0], PATIENTS["a"].patient_id, PATIENTS["a"].accession,
                        _study_uid(site.study[0])):
        assert identifying not in a.html()
    a.shot("pool-cases-to-claim")

    # dr-a claims: the case page opens, with the viewer and the claim's buttons.
    a.submit(f"tr[data-case='{key}'] button.claim")
    assert a.driver.current_url.endswith(f"/reviewer/cases/{key}")
    assert a.driver.find_element(By.ID, "give-back") and a.driver.find_element(By.ID, "renew")
    if VENDOR.exists():
        WebDriverWait(a.driver, LOADED_S, poll_frequency=0.2).until(
            lambda d: d.find_element(By.CSS_SELECTOR, ".pane[data-pane='0']").get_attribute("data-loaded") == "true",
            "the viewer's first pane loaded")
    a.shot("pool-claimed-case")
    assert workitem_state(site) == [("IN PROGRESS", "dr-a")]

    # dr-b's page still shows the case: its Claim is refused, with the message next to the row.
    b.submit(f"tr[data-case='{key}'] button.claim")
    message = b.driver.find_element(By.ID, "claim-problem")
    assert "Another reviewer claimed this case a moment ago" in message.text
    taken = b.driver.find_element(By.CSS_SELECTOR, f"tr[data-case='{key}']")
    assert message in taken.find_elements(By.ID, "claim-problem")
    assert not taken.find_elements(By.CSS_SELECTOR, "button.claim")
    b.shot("pool-stale-claim")
    b.open("/reviewer/pool")
    assert case_rows(b) == [] and "No case is waiting for you in the pool" in b.text()

    # dr-a renews the claim, then gives the case back.
    a.submit("#renew")
    assert "Renewed: the case stays yours until" in a.text()
    a.shot("pool-claim-renewed")
    a.submit("#give-back")
    assert a.driver.current_url.endswith(f"/reviewer/pool?given_back={key}")
    assert f"Case {key} is back in the pool" in a.text() and case_rows(a) == [key]
    assert [state for state, _ in workitem_state(site)] == ["CANCELED", "SCHEDULED"]

    # dr-b claims it and reports.
    b.open("/reviewer/pool")
    assert case_rows(b) == [key]
    b.submit(f"tr[data-case='{key}'] button.claim")
    assert b.driver.current_url.endswith(f"/reviewer/cases/{key}")
    b.fill("finding.L4-L5", "Left paracentral disc extrusion compressing the left L5 root.")
    b.fill("impression", "L4-L5 disc extrusion with left L5 root compression.")
    b.shot("pool-report-written")
    b.submit("form[action$='/report'] button[type=submit]")
    assert f"Report of case {key} sent" in b.text()

    wait_until(lambda: any(_modality(p) == "SR" for p in site.hospital.out_dir.iterdir()), 180, "the report home")
    sr = next(pydicom.dcmread(p) for p in site.hospital.out_dir.iterdir() if _modality(p) == "SR")
    assert sr.StudyInstanceUID == _study_uid(site.study[0]) and str(sr.PatientName) == PATIENTS["a"].name
    assert any("Left paracentral disc extrusion" in text for text in _texts(sr)), "dr-b's finding"
    wait_until(lambda: workitem_state(site)[-1] == ("COMPLETED", "dr-b"), 120, "the report completes the workitem")
    actions = [row[0] for row in site.sql("SELECT action FROM audit_event WHERE action LIKE 'web_claim%' "
                                          "OR action IN ('worklist_claimed', 'worklist_completed') ORDER BY id")]
    assert actions == ["worklist_claimed", "web_claim_refused", "web_claim_renewed", "web_claim_given_back",
                       "worklist_claimed", "worklist_completed"], actions


def _texts(dataset: pydicom.Dataset) -> list[str]:
    """Every TEXT item's value in the SR's content tree."""
    found = []
    for item in dataset.get("ContentSequence", []):
        if item.get("ValueType") == "TEXT":
            found.append(str(item.TextValue))
        found += _texts(item)
    return found


def _modality(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"]).get("Modality", ""))
