"""The journeys of issue 27 in headless Chromium, against a running gateway with DCMTK peers and the shipped
configuration's one reviewer (dr-a, no subspecialty).

A referral asking for a subspecialty no reviewer lists: the case is held, and why is said in the same words in
``spine-gateway status``, the log, the operators' overview and case page, and the referrer's list and case page.
Screenshots go to the test's tmp dir (``SPINE_GATEWAY_SHOTS`` names another directory to keep them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from browser import Browser
from gateway.demo import DemoPatient, write_demo_study
from support.peers import DcmtkStoreSCP, GatewayProcess, free_port, storescu, wait_until

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
        self.hospital = DcmtkStoreSCP(workdir / "hospital", "STMARYS_PACS")
        self.reviewer = DcmtkStoreSCP(workdir / "reviewer", "REVIEW_A")
        self.node = GatewayProcess(workdir / "gw", f"sqlite:///{workdir}/gateway.db", extra={
            **FAST, "http": {"host": "127.0.0.1", "port": free_port()}})

    def start(self) -> None:
        self.hospital.start()
        self.reviewer.start()
        shipped = yaml.safe_load((ROOT / "config" / "gateway.yaml").read_text())
        self.node.config["sources"] = shipped["sources"]
        self.node.config["sources"][0]["return"]["port"] = self.hospital.port
        self.node.config["reviewers"] = shipped["reviewers"]
        self.node.config["reviewers"][0]["port"] = self.reviewer.port
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
        for peer in (self.node, self.reviewer, self.hospital):
            peer.stop()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    site = Site(tmp_path_factory.mktemp("journeys"))
    try:
        site.start()
        yield site
    finally:
        site.stop()


@pytest.fixture(scope="module")
def browser(site, tmp_path_factory):
    shots = Path(os.environ.get("SPINE_GATEWAY_SHOTS") or tmp_path_factory.mktemp("shots"))
    browser = Browser(site.url, shots)
    yield browser
    browser.quit()


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
    wait_until(lambda: site.node.status()["cases_by_state"] == {"held": 1}, 180, "the case held")

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
