"""A node with DCMTK peers for the DICOMweb tests: a hospital storescp (the source's return), two reviewers'
storescp (dr-a, dr-b), and three studies sent by storescu: one assigned to dr-a, one to dr-b, one without a
referral (held: never assigned). Tokens issued by the CLI; the database read for the cases' UIDs. ``PoolSite``: a
node whose reviewers all pull, with one case pooled (the UPS-RS test and the pool's browser test)."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from gateway.demo import DemoPatient, write_demo_study
from support.peers import DcmtkStoreSCP, GatewayProcess, free_port, storescu, wait_until

FAST = {"routing": {"stable_after_s": 0.5, "poll_s": 0.2, "echo_interval_s": 1.0,
                    "retry": {"initial_s": 0.2, "max_s": 1.0, "max_attempts": 200}},
        "referrals": {"wait_s": 600}}
PASSWORD = "correct horse battery"
PATIENTS = {
    "a": DemoPatient(),
    "b": DemoPatient(name="ROE^RICHARD", patient_id="MRN0077777", accession="B7654321"),
    "held": DemoPatient(name="POE^EDGAR", patient_id="MRN0055555", accession="C5555555"),
}


@dataclass
class Case:
    key: str
    study_uid: str         # the original Study Instance UID
    pseudo_study_uid: str  # what the reviewer sees
    reviewer: str | None
    state: str


@dataclass
class Site:
    workdir: Path
    node: GatewayProcess = field(init=False)
    hospital: DcmtkStoreSCP = field(init=False)
    reviewers: dict[str, DcmtkStoreSCP] = field(init=False)
    studies: dict[str, list[Path]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.hospital = DcmtkStoreSCP(self.workdir / "hospital", "HOSP_PACS")
        self.reviewers = {"dr-a": DcmtkStoreSCP(self.workdir / "dr-a", "REVIEW_A"),
                          "dr-b": DcmtkStoreSCP(self.workdir / "dr-b", "REVIEW_B")}
        self.node = GatewayProcess(self.workdir / "gw", f"sqlite:///{self.workdir}/gateway.db",
                                   extra={**FAST, "http": {"host": "127.0.0.1", "port": free_port()}})
        for seed, (name, patient) in enumerate(PATIENTS.items(), start=41):
            self.studies[name] = write_demo_study(self.workdir / f"study-{name}", 6, patient=patient, seed=seed,
                                                  rows=64, cols=64)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.node.config['http']['port']}"

    def start(self) -> None:
        self.hospital.start()
        for reviewer in self.reviewers.values():
            reviewer.start()
        self.node.config["sources"] = [{"name": "st-marys", "ae_title": "HOSP_PACS", "return": {
            "ae_title": "HOSP_PACS", "host": "127.0.0.1", "port": self.hospital.port}}]
        self.node.config["reviewers"] = [
            {"name": name, "ae_title": scp.ae_title, "host": "127.0.0.1", "port": scp.port}
            for name, scp in self.reviewers.items()]
        self.node.start()
        for name in ("a", "b"):
            self.node.add_referral(PATIENTS[name], self.workdir / f"referral-{name}.json")
        # One at a time: the least loaded reviewer takes the next case, dr-a first (the configuration's order).
        for name, reviewer, expected in (("a", "dr-a", {"delivered": 1}), ("b", "dr-b", {"delivered": 2})):
            sent = storescu("127.0.0.1", self.node.port, self.studies[name], calling="HOSP_PACS")
            assert sent.returncode == 0, sent.stderr
            wait_until(lambda expected=expected: self.node.status()["cases_by_state"] == expected, 180,
                       f"study {name} delivered")
            assert self.case(name).reviewer == reviewer
        sent = storescu("127.0.0.1", self.node.port, self.studies["held"], calling="HOSP_PACS")
        assert sent.returncode == 0, sent.stderr
        wait_until(lambda: self.node.status()["cases_by_state"] == {"delivered": 2, "held": 1}, 180,
                   "the study without a referral held")
        for name in self.reviewers:
            self.user_add(name, "reviewer", "--reviewer", name)
        self.user_add("ops", "ops")

    def case(self, name: str) -> Case:
        """The case of study ``name`` (a, b, held), read from the node's database."""
        original = _study_uid(self.studies[name][0])
        with sqlite3.connect(f"{self.workdir}/gateway.db") as connection:
            row = connection.execute("SELECT key, study_uid, pseudo_study_uid, reviewer, state FROM study "
                                     "WHERE study_uid = ?", (original,)).fetchone()
        assert row is not None and row[2], f"study {name} has no pseudonymous UID yet"
        return Case(*row)

    def token(self, reviewer: str) -> str:
        issued = self.node.cli("dicomweb", "token", "issue", reviewer, "--label", "test viewer")
        return issued.stdout.splitlines()[0].strip()

    def user_add(self, name: str, role: str, *scope: str) -> None:
        subprocess.run([sys.executable, "-m", "gateway", "--config", str(self.node.config_path), "user", "add", name,
                        "--role", role, *scope, "--password-stdin"], input=PASSWORD + "\n", capture_output=True,
                       text=True, check=True, timeout=120)

    def session(self, name: str) -> tuple[str, str]:
        """(Cookie header, CSRF token) of a portal session of ``name``, signed in over HTTP."""
        opener = urllib.request.build_opener(_NoRedirect)
        with opener.open(urllib.request.Request(self.url + "/login"), timeout=30) as answer:
            anonymous = answer.headers["Set-Cookie"].split(";")[0]
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', answer.read().decode()).group(1)
        form = urllib.parse.urlencode({"name": name, "password": PASSWORD, "csrf_token": csrf}).encode()
        try:
            opener.open(urllib.request.Request(self.url + "/login", data=form, headers={"Cookie": anonymous}),
                        timeout=30)
        except urllib.error.HTTPError as redirect:
            assert redirect.code == 303, redirect.code
            cookie = redirect.headers["Set-Cookie"].split(";")[0]
        home = "/ops" if name == "ops" else "/reviewer"
        with opener.open(urllib.request.Request(self.url + home, headers={"Cookie": cookie}),
                         timeout=30) as page:
            session_csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.read().decode())
        return cookie, session_csrf.group(1) if session_csrf else ""

    def stop(self) -> None:
        for peer in (self.node, *self.reviewers.values(), self.hospital):
            peer.stop()


class PoolSite:
    """A node whose reviewers all pull, a hospital storescp for the report home, one spine MR case pooled."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.hospital = DcmtkStoreSCP(workdir / "hospital", "HOSP_PACS")
        routing = {**FAST["routing"], "pool_claim_timeout_s": 600.0}
        self.node = GatewayProcess(workdir / "gw", f"sqlite:///{workdir}/gateway.db", extra={
            **FAST, "routing": routing, "http": {"host": "127.0.0.1", "port": free_port()}})
        self.study = write_demo_study(workdir / "study", 6, patient=PATIENTS["a"], seed=41, rows=64, cols=64)
        self.tokens: dict[str, str] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.node.config['http']['port']}"

    user_add = Site.user_add  # portal accounts and sessions, as for the rest of DICOMweb
    session = Site.session

    def start(self) -> None:
        self.hospital.start()
        self.node.config["sources"] = [{"name": "st-marys", "ae_title": "HOSP_PACS", "return": {
            "ae_title": "HOSP_PACS", "host": "127.0.0.1", "port": self.hospital.port}}]
        self.node.config["reviewers"] = [
            {"name": name, "ae_title": ae_title, "host": "127.0.0.1", "port": free_port(), "mode": "pull",
             "subspecialties": subspecialties}
            for name, ae_title, subspecialties in (("dr-a", "REVIEW_A", ["spine"]), ("dr-b", "REVIEW_B", ["spine"]),
                                                   ("dr-neuro", "REVIEW_N", ["neuro"]))]
        self.node.start()
        patient = PATIENTS["a"]
        referral = self.workdir / "referral.json"
        referral.write_text(json.dumps({
            "source": "st-marys", "accession_number": patient.accession, "urgency": "routine",
            "subspecialty": "spine",
            "patient": {"id": patient.patient_id, "name": patient.name, "birth_date": "1971-04-12"},
            "referrer": {"name": "Dr Alan Smith"},
            "clinical": {"history": "Low back pain for 10 weeks.", "question": "L4-L5 disc herniation?"}}))
        self.node.cli("referral", "add", str(referral))
        sent = storescu("127.0.0.1", self.node.port, self.study, calling="HOSP_PACS")
        assert sent.returncode == 0, sent.stderr
        wait_until(lambda: self.node.status()["cases_by_state"] == {"pooled": 1}, 180, "the case pooled")
        for name in ("dr-a", "dr-b", "dr-neuro"):
            issued = self.node.cli("dicomweb", "token", "issue", name, "--label", "test viewer")
            self.tokens[name] = issued.stdout.splitlines()[0].strip()
        self.user_add("dr-b", "reviewer", "--reviewer", "dr-b")

    def stop(self) -> None:
        for peer in (self.node, self.hospital):
            peer.stop()

    def http(self, reviewer: str) -> httpx.Client:
        return httpx.Client(base_url=self.url + "/dicomweb", timeout=60,
                            headers={"Authorization": f"Bearer {self.tokens[reviewer]}"})

    def sql(self, statement: str, *args: object) -> list[tuple]:
        with sqlite3.connect(f"{self.workdir}/gateway.db", timeout=30) as connection:
            return connection.execute(statement, args).fetchall()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003 - the base class's signature
        return None


def _study_uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"]).StudyInstanceUID)
