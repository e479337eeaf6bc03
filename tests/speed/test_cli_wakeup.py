"""Commands run from the shell wake the node: with a poll of an hour, a case the CLI moves (a referral that
releases a held case, notes approved, a failed delivery retried) goes on within seconds, which only a wake-up
from the command's process can do: NOTIFY on PostgreSQL, the node's socket in its spool directory on SQLite.
A stale socket file does not stop a node starting, and a command with no node running succeeds all the same."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from gateway.demo import DemoPatient
from gateway.storage.wakeup import SOCKET_NAME
from support.peers import DcmtkStoreSCP, GatewayProcess, storescu, wait_until

HOUR = 3600.0
PATIENT = DemoPatient()
REFERRAL = {"source": "st-marys", "accession_number": PATIENT.accession, "urgency": "routine",
            "patient": {"id": PATIENT.patient_id, "name": "Doe^Jane"},
            "clinical": {"history": "Low back pain for 10 weeks.", "question": "L4-L5 disc herniation?"}}
WOKEN_WITHIN_S = 60  # a deadline for the test, far below the hour of the poll; not a timing assertion


def _stale_socket(path: Path) -> None:
    """The socket file a node killed with -9 leaves behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.close()


def _node(workdir: Path, url: str, reviewer: DcmtkStoreSCP, routing: dict | None = None,
          referrals: dict | None = None) -> GatewayProcess:
    return GatewayProcess(workdir, url, reviewers=[
        {"name": "dr-a", "ae_title": reviewer.ae_title, "host": "127.0.0.1", "port": reviewer.port}],
        extra={"routing": {"stable_after_s": 1.0, "echo_interval_s": HOUR, "poll_s": HOUR, **(routing or {})},
               "referrals": {"wait_s": HOUR, "on_timeout": "route", **(referrals or {})},
               "http": {"enabled": False}})


def _states(node: GatewayProcess) -> list[tuple[str, str | None]]:
    return [(e["state"], e.get("reason")) for e in node.log_events() if e["event"] == "case_state_changed"]


def _referral_file(tmp_path: Path) -> Path:
    path = tmp_path / "referral.json"
    path.write_text(json.dumps(REFERRAL))
    return path


def _received(scp: DcmtkStoreSCP) -> list[Path]:
    return [p for p in scp.out_dir.iterdir() if p.is_file()]


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_referral_added_from_the_cli_releases_the_held_case_at_once(tmp_path, database_url, small_study):
    reviewer = DcmtkStoreSCP(tmp_path / "reviewer", ae_title="REVIEW_A").start()
    node = _node(tmp_path / "gw", database_url, reviewer)
    _stale_socket(node.spool_dir / SOCKET_NAME)  # left by a node killed with -9: it must not stop this one
    try:
        node.start()
        assert storescu("127.0.0.1", node.port, small_study, calling="STMARYS_PACS").returncode == 0
        wait_until(lambda: ("held", "awaiting_referral") in _states(node), WOKEN_WITHIN_S,
                   "the case held awaiting its referral")
        added = node.cli("referral", "add", str(_referral_file(tmp_path)))
        assert "matched to case" in added.stdout
        wait_until(lambda: len(_received(reviewer)) >= len(small_study) + 2, WOKEN_WITHIN_S,
                   "the case released by the CLI's referral and delivered, with a poll of an hour")
        assert "notes_attached" in [s for s, _ in _states(node)]
    finally:
        node.stop()
        reviewer.stop()
    if database_url.startswith("sqlite"):  # PostgreSQL nodes use NOTIFY and leave the file as they found it
        assert not (node.spool_dir / SOCKET_NAME).exists(), "the node removes its socket when it stops"


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_notes_approved_from_the_cli_release_the_case_at_once(tmp_path, database_url, small_study):
    reviewer = DcmtkStoreSCP(tmp_path / "reviewer", ae_title="REVIEW_A").start()
    node = _node(tmp_path / "gw", database_url, reviewer, referrals={"require_approval": True})
    try:
        node.start()
        node.cli("referral", "add", str(_referral_file(tmp_path)))
        assert storescu("127.0.0.1", node.port, small_study, calling="STMARYS_PACS").returncode == 0
        wait_until(lambda: ("held", "awaiting_approval") in _states(node), WOKEN_WITHIN_S,
                   "the case held awaiting approval")
        case_key = node.status()["recent_studies"][0]["study"]
        node.cli("notes", "approve", case_key)
        wait_until(lambda: len(_received(reviewer)) >= len(small_study) + 2, WOKEN_WITHIN_S,
                   "the approved case delivered, with a poll of an hour")
    finally:
        node.stop()
        reviewer.stop()


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_failed_delivery_retried_from_the_cli_goes_at_once(tmp_path, database_url, small_study):
    reviewer = DcmtkStoreSCP(tmp_path / "reviewer", ae_title="REVIEW_A").start()
    node = _node(tmp_path / "gw", database_url, reviewer, routing={"retry": {"max_attempts": 1}},
                 referrals={"wait_s": 0})
    try:
        node.start()
        wait_until(lambda: [p["ok"] for p in node.status().get("peers", [])] == [True], WOKEN_WITHIN_S,
                   "the node's health check to find the reviewer up")
        reviewer.stop()  # then it goes away: the delivery fails, and with one attempt the case is FAILED
        assert storescu("127.0.0.1", node.port, small_study, calling="STMARYS_PACS").returncode == 0
        wait_until(lambda: "failed" in [s for s, _ in _states(node)], WOKEN_WITHIN_S, "the delivery to fail")
        reviewer.start()
        case_key = node.status()["recent_studies"][0]["study"]
        assert "delivering the study" in node.cli("retry", case_key).stdout
        wait_until(lambda: [s for s, _ in _states(node)][-1:] == ["delivered"], WOKEN_WITHIN_S,
                   "the retried case delivered, with a poll of an hour")
        assert len(_received(reviewer)) == len(small_study) + 2
    finally:
        node.stop()
        reviewer.stop()


def test_a_command_with_no_node_running_succeeds(tmp_path):
    """A node killed with -9 leaves its socket behind: a command finds nobody there and succeeds all the same."""
    reviewer = DcmtkStoreSCP(tmp_path / "reviewer", ae_title="REVIEW_A")
    node = _node(tmp_path / "gw", f"sqlite:///{tmp_path}/gw.db", reviewer)
    node.start()
    # the node binds its socket just after its DICOM port answers (the wake-ups watch the running server)
    wait_until(lambda: (node.spool_dir / SOCKET_NAME).exists(), 30, "the node's wake-up socket")
    node.kill()
    assert (node.spool_dir / SOCKET_NAME).exists()
    added = node.cli("referral", "add", str(_referral_file(tmp_path)), check=False)
    assert added.returncode == 0 and added.stderr == "", added.stderr
    assert "waiting for its study" in added.stdout
    (node.spool_dir / SOCKET_NAME).unlink()  # and with no socket file at all
    again = node.cli("referral", "add", str(_referral_file(tmp_path)), check=False)
    assert again.returncode == 0 and again.stderr == "", again.stderr
