"""The reviewer's image viewer (dwv, vendored by scripts/install-viewer.py) in headless Chromium, against a running
node: a case delivered to dr-a by DCMTK, with a prior the priors stage fetched from the source's PACS (Orthanc), the
case page opens, both panes draw from the node's own DICOMweb (the canvas's pixels are not blank: the case's first
series, and the prior beside it), the mouse wheel moves to another image (other pixels), window/level
changes them, and the image picked as a key image reaches the report SR the hospital's storescp receives.
Screenshots go to the test's tmp dir (``SPINE_GATEWAY_SHOTS`` names another directory to keep them).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
from selenium.webdriver.support.ui import Select
from selenium.webdriver.support.wait import WebDriverWait

from browser import browser_for
from gateway.demo import DemoPatient, write_demo_study
from support.peers import DcmtkStoreSCP, GatewayProcess, Orthanc, free_port, started, storescu, wait_until

VENDOR = Path(__file__).resolve().parents[2] / "gateway" / "web" / "static" / "vendor" / "installed.json"
pytestmark = [
    pytest.mark.skipif(not Path("/usr/bin/chromium").exists() or not Path("/usr/bin/chromedriver").exists(),
                       reason="Debian's chromium and chromium-driver (scripts/install-system-deps.sh)"),
    pytest.mark.skipif(not VENDOR.exists(), reason="the viewer is not vendored (make viewer)"),
]
PATIENT = DemoPatient()
PACS_AE = "STMARYS_QR"
PASSWORD = "correct horse battery"
FAST = {"routing": {"stable_after_s": 0.5, "poll_s": 0.2, "echo_interval_s": 1.0,
                    "retry": {"initial_s": 0.2, "max_s": 1.0, "max_attempts": 200}},
        "referrals": {"wait_s": 600}}
LOADED_S = 120  # generous: two cores shared by many

# The pixels a pane's canvases show: how many are not black, and a digest of them all.
PIXELS = """
const canvases = [...document.querySelectorAll(`#pane-${arguments[0]} canvas`)];
let lit = 0, total = 0, digest = 0;
for (const canvas of canvases) {
  if (!canvas.width || !canvas.height) continue;
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  for (let i = 0; i < data.length; i += 4) {
    total += 1;
    if (data[i] + data[i + 1] + data[i + 2] > 30) lit += 1;
    digest = (digest * 31 + data[i] * 7 + data[i + 1] * 3 + data[i + 2]) % 1000000007;
  }
}
return {lit: lit, total: total, digest: digest};
"""


class Site:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.hospital = DcmtkStoreSCP(workdir / "hospital", "HOSP_PACS")
        self.reviewer = DcmtkStoreSCP(workdir / "reviewer", "REVIEW_A")
        self.node = GatewayProcess(workdir / "gw", f"sqlite:///{workdir}/gateway.db", extra={
            **FAST, "http": {"host": "127.0.0.1", "port": free_port()}})
        self.study = write_demo_study(workdir / "study", 12, seed=7, rows=128, cols=128)
        # The PACS's earlier MR of the patient: one series, numbered apart from the case's.
        self.prior = write_demo_study(workdir / "prior", 1, seed=8, rows=128, cols=128,
                                      patient=DemoPatient(study_date="20250815", accession="A2000001"))
        for path in self.prior:
            ds = pydicom.dcmread(path)
            ds.SeriesNumber = 11
            ds.save_as(path, enforce_file_format=True)
        self.pacs = Orthanc(workdir / "pacs", PACS_AE)

    def start(self) -> None:
        self.hospital.start()
        self.reviewer.start()
        self.pacs.modalities = {"gateway": [self.node.ae_title, "127.0.0.1", self.node.port]}
        self.pacs.start()
        self.pacs.upload(self.prior)
        self.node.config["sources"] = [{"name": "st-marys", "ae_title": "HOSP_PACS", "return": {
            "ae_title": "HOSP_PACS", "host": "127.0.0.1", "port": self.hospital.port},
            "query_retrieve": {"ae_title": PACS_AE, "host": "127.0.0.1", "port": self.pacs.dicom_port}}]
        self.node.config["reviewers"] = [
            {"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": self.reviewer.port}]
        self.node.start()
        self.node.add_referral(PATIENT, self.workdir / "referral.json")
        sent = storescu("127.0.0.1", self.node.port, self.study, calling="HOSP_PACS")
        assert sent.returncode == 0, sent.stderr
        wait_until(lambda: self.node.status()["cases_by_state"] == {"delivered": 1}, 180, "the case delivered")
        subprocess.run([sys.executable, "-m", "gateway", "--config", str(self.node.config_path), "user", "add",
                        "dr-a", "--role", "reviewer", "--reviewer", "dr-a", "--password-stdin"],
                       input=PASSWORD + "\n", capture_output=True, text=True, check=True, timeout=120)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.node.config['http']['port']}"

    def stop(self) -> None:
        for peer in (self.node, self.pacs, self.reviewer, self.hospital):
            peer.stop()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    with started(Site(tmp_path_factory.mktemp("viewer-site"))) as site:
        yield site


@pytest.fixture(scope="module")
def browser(site, tmp_path_factory):
    with browser_for(site.url, tmp_path_factory) as browser:
        yield browser


def pane(browser, index: int) -> dict:
    element = browser.driver.find_element("css selector", f".pane[data-pane='{index}']")
    return {name: element.get_attribute(f"data-{name}") for name in ("loaded", "renders", "instance", "series")}


def pixels(browser, index: int) -> dict:
    return browser.driver.execute_script(PIXELS, index)


def wait_for(browser, predicate, what: str):
    return WebDriverWait(browser.driver, LOADED_S, poll_frequency=0.1).until(lambda _d: predicate(), what)


def test_the_viewer_draws_scrolls_and_picks_a_key_image_for_the_report(site, browser):
    browser.login("dr-a", PASSWORD)
    browser.submit("table a[href^='/reviewer/cases/']")
    wait_for(browser, lambda: all(pane(browser, i)["loaded"] == "true" and pane(browser, i)["instance"]
                                  for i in (0, 1)), "both panes loaded and showing an image")
    first, second = pane(browser, 0), pane(browser, 1)
    assert (first["series"], second["series"]) == ("1", "11"), "the case's first series, and the prior beside it"
    chosen = Select(browser.driver.find_element("css selector", ".pane[data-pane='1'] .series-choice"))
    assert chosen.first_selected_option.text.startswith("Prior 20"), chosen.first_selected_option.text
    drawn = [wait_for(browser, lambda i=i: (p := pixels(browser, i))["lit"] > p["total"] // 20 and p,
                      f"pane {i} drawn") for i in (0, 1)]
    assert all(p["total"] > 0 for p in drawn)
    assert drawn[0]["digest"] != drawn[1]["digest"]
    assert browser.driver.find_element("id", "viewer").get_attribute("data-first-image-ms")
    browser.shot("viewer-opened")

    # The mouse wheel (the Scroll tool) moves pane 0 to another image: another instance, other pixels.
    layer = browser.driver.find_element("id", "pane-0")
    wheel = [120]

    def scrolled() -> bool:
        """One wheel notch, down then up then down...: the image shown may be the first or the last."""
        ActionChains(browser.driver).scroll_from_origin(ScrollOrigin.from_element(layer), 0, wheel[0]).perform()
        wheel[0] = -wheel[0]
        return pane(browser, 0)["instance"] not in ("", first["instance"])

    wait_for(browser, scrolled, "pane 0 scrolled")
    scrolled = wait_for(browser, lambda: (p := pixels(browser, 0))["digest"] != drawn[0]["digest"] and p,
                        "pane 0 redrawn")
    assert scrolled["lit"] > scrolled["total"] // 20
    browser.shot("viewer-scrolled")

    # The arrows follow the instance numbers (series 1 holds instances 1 to 4).
    here = int(pane(browser, 0)["instance"])
    ahead, back = (".next", ".previous") if here < 4 else (".previous", ".next")
    browser.click(f".pane[data-pane='0'] {ahead}")
    wait_for(browser, lambda: pane(browser, 0)["instance"] == str(here + 1 if here < 4 else here - 1), "an arrow")
    browser.click(f".pane[data-pane='0'] {back}")
    wait_for(browser, lambda: pane(browser, 0)["instance"] == str(here), "the arrow back")

    # Window/level: a drag with the tool changes the pixels of the same image.
    browser.click("button[data-tool=WindowLevel]")
    before = pixels(browser, 0)
    ActionChains(browser.driver).move_to_element(layer).click_and_hold().move_by_offset(40, 60).release().perform()
    wait_for(browser, lambda: pixels(browser, 0)["digest"] != before["digest"], "the window changed")
    browser.shot("viewer-window-level")

    # The image pane 0 shows becomes a key image of L4-L5 in the report form beside it.
    shown = pane(browser, 0)
    Select(browser.driver.find_element("css selector", ".pane[data-pane='0'] .key-level")).select_by_value("L4-L5")
    browser.click(".pane[data-pane='0'] .key-pick")
    reference = f"{shown['series']}:{shown['instance']}"
    assert browser.driver.find_element("id", "images.L4-L5").get_attribute("value") == reference
    assert browser.driver.find_element("id", "viewer").get_attribute("data-csp-violations") is None
    browser.fill("finding.L4-L5", "Left paracentral disc extrusion compressing the left L5 root.")
    browser.fill("impression", "L4-L5 disc extrusion with left L5 root compression.")
    browser.shot("viewer-key-image")
    browser.submit("form[action$='/report'] button[type=submit]")
    assert "sent" in browser.text()

    wait_until(lambda: site.node.status()["cases_by_state"] == {"report_delivered": 1}, 180, "the report home")
    sr = next(ds for ds in (pydicom.dcmread(p) for p in site.hospital.out_dir.iterdir()) if ds.Modality == "SR")
    picked = next(pydicom.dcmread(p, stop_before_pixels=True) for p in site.study
                  if _position(p) == (int(shown["series"]), int(shown["instance"])))
    assert str(picked.SOPInstanceUID) in _referenced_images(sr), "the picked image, re-identified, in the SR"


def _position(path: Path) -> tuple[int, int]:
    header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesNumber", "InstanceNumber"])
    return int(header.SeriesNumber), int(header.InstanceNumber)


def _referenced_images(sr: pydicom.Dataset) -> set[str]:
    found: set[str] = set()

    def walk(items) -> None:
        for item in items:
            for ref in item.get("ReferencedSOPSequence", []):
                found.add(str(ref.ReferencedSOPInstanceUID))
            walk(item.get("ContentSequence", []))

    walk(sr.get("ContentSequence", []))
    return found
