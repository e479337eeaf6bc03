"""Faults through the whole pipeline (receive → de-identify → deliver), each against real processes:
kill -9 of the node at moments of ingest, de-identification and delivery; PostgreSQL going away; a full
spool disk; a reviewer that aborts mid-transfer; a reviewer that never answers.

The promise checked every time: each instance the gateway acknowledged with 0x0000 is stored, and reaches
the reviewer as exactly one de-identified object (counted by SOP Instance UID through the UID map), none lost.
"""

from __future__ import annotations

import hashlib
import random
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from gateway.demo import write_demo_study
from gateway.routing.send import LEDGER_BATCH
from hardening_flow import (
    Ledger,
    assert_exactly_once,
    restart,
    send_files,
    uid_of,
    unacknowledged,
    wait_all_delivered,
)
from hardening_support import CountingReviewer, fast_extra, query, reviewer_config, thread_count
from support.peers import GatewayProcess, wait_until


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> list[list[Path]]:
    root = tmp_path_factory.mktemp("fault-studies")
    return [write_demo_study(root / f"s{i}", 15, seed=20 + i, rows=64, cols=64) for i in range(3)]


def _uids(files: list[Path]) -> dict[Path, str]:
    return {p: uid_of(p) for p in files}


def _states(database_url: str) -> dict[str, int]:
    return dict(query(database_url, "SELECT state, COUNT(*) FROM study GROUP BY state"))


def test_kill_9_during_ingest_deidentification_and_delivery(tmp_path, studies):
    """Three kills, each at a random moment inside one phase; the sender resends what was not acknowledged."""
    rng = random.Random(8)
    url = f"sqlite:///{tmp_path}/gateway.db"
    reviewer = CountingReviewer().start()
    node = GatewayProcess(tmp_path / "gw", url, reviewers=[reviewer_config(reviewer.port)],
                          extra=fast_extra(routing={"stable_after_s": 1.0})).start()
    files = [p for study in studies for p in study]
    uids = _uids(files)
    ledger = Ledger()
    try:
        # 1. ingest: kill while an association is storing
        sender = threading.Thread(target=send_files, args=(node.port, files, ledger, uids))
        sender.start()
        kill_after = rng.randint(3, 20)
        wait_until(lambda: len(ledger.acknowledged) >= kill_after, 60, "some instances acknowledged",
                   interval=0.01)
        node.kill()
        sender.join(60)
        restart(node)
        send_files(node.port, unacknowledged(files, ledger, uids), ledger, uids)
        assert ledger.acknowledged == set(uids.values())
        # 2. de-identification: kill once a case is complete or being de-identified
        wait_until(lambda: set(_states(url)) & {"complete", "deidentified"}, 60, "a case in de-identification",
                   interval=0.01)
        time.sleep(rng.uniform(0, 0.3))  # a random moment inside the phase, not synchronisation
        node.kill()
        restart(node)
        # 3. delivery: kill once the reviewer has some, not all, objects
        wait_until(lambda: 0 < len(reviewer.distinct()), 60, "delivery under way", interval=0.01)
        time.sleep(rng.uniform(0, 0.3))
        node.kill()
        restart(node)
        result = wait_all_delivered(node, url, ledger, reviewer, 180)
        assert_exactly_once(result)
        assert _states(url) == {"delivered": len(studies)}
        # A resend on the wire is possible only for objects stored by the reviewer before a kill whose
        # outcomes were not yet written: the ledger is written in batches (routing.send), so at most one
        # batch per kill; the reviewer still stores each object once (same SOP Instance UID).
        assert result.resent <= 3 * LEDGER_BATCH, result.summary()
    finally:
        node.stop()
        reviewer.stop()


def test_database_outage_answers_out_of_resources_and_the_pipeline_resumes(tmp_path, pg_cluster, studies):
    url = pg_cluster.new_database()
    reviewer = CountingReviewer().start()
    node = GatewayProcess(tmp_path / "gw", url, reviewers=[reviewer_config(reviewer.port)],
                          extra=fast_extra()).start()
    files = studies[0]
    uids = _uids(files)
    ledger = Ledger()
    try:
        send_files(node.port, files[:5], ledger, uids)
        assert len(ledger.acknowledged) == 5
        pg_cluster.stop_server()
        try:
            send_files(node.port, files[5:10], ledger, uids)
            assert len(ledger.acknowledged) == 5, "nothing may be acknowledged while the database is down"
            assert ledger.failures == [0xA700] * 5
            # Several scheduler ticks fail against the missing database; the node keeps running.
            wait_until(lambda: sum(e["event"] == "stage_failed" for e in node.log_events()) >= 3, 30,
                       "stage ticks failing while the database is down")
            assert node.proc.poll() is None
        finally:
            pg_cluster.restart_server()
        send_files(node.port, files[5:], ledger, uids)
        assert ledger.acknowledged == set(uids.values())
        result = wait_all_delivered(node, url, ledger, reviewer, 120)
        assert_exactly_once(result)
    finally:
        node.stop()
        reviewer.stop()


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_full_spool_during_deidentification_loses_nothing_and_resumes(tmp_path):
    """Originals fit in the spool, their de-identified copies do not: de-identification fails with ENOSPC,
    the node keeps answering, and once space returns the case is finished with intact outbound files."""
    spool = tmp_path / "spool"
    if not _mount_tmpfs(spool, "640k"):
        pytest.skip("mounting a tmpfs needs root (the suite runs as root in CI)")
    files = write_demo_study(tmp_path / "study", 14, seed=31, rows=128, cols=128)  # ~33 KB each
    uids = _uids(files)
    url = f"sqlite:///{tmp_path}/gateway.db"
    reviewer = CountingReviewer().start()
    node = GatewayProcess(tmp_path / "gw", url, reviewers=[reviewer_config(reviewer.port)],
                          storage={"spool_dir": str(spool)}, extra=fast_extra())
    ledger = Ledger()
    try:
        node.start()
        send_files(node.port, files, ledger, uids)
        assert ledger.acknowledged, "some originals must fit"
        assert all(code == 0xA700 for code in ledger.failures), "a full disk answers 0xA700 only"
        failed = ("stage_failed", "case_step_failed")
        wait_until(lambda: any(e["event"] in failed and e.get("component") == "deid" for e in node.log_events()),
                   60, "de-identification hitting the full disk")
        assert node.proc.poll() is None
        assert not list(spool.rglob("*.part")), "no partial file is left behind"
        subprocess.run(["mount", "-o", "remount,size=64m", str(spool)], check=True)
        send_files(node.port, unacknowledged(files, ledger, uids), ledger, uids)
        assert ledger.acknowledged == set(uids.values())
        result = wait_all_delivered(node, url, ledger, reviewer, 120)
        assert_exactly_once(result)
        for relative, sha in query(url, "SELECT spool_path, sha256 FROM outbound_object"):
            assert hashlib.sha256((spool / relative).read_bytes()).hexdigest() == sha, "outbound file corrupted"
    finally:
        node.stop()
        reviewer.stop()
        subprocess.run(["umount", "-l", str(spool)], capture_output=True)


def test_reviewer_aborting_mid_transfer_is_retried_until_it_behaves(tmp_path, studies):
    url = f"sqlite:///{tmp_path}/gateway.db"
    reviewer = CountingReviewer(abort_after=4).start()
    node = GatewayProcess(tmp_path / "gw", url, reviewers=[reviewer_config(reviewer.port)],
                          extra=fast_extra()).start()
    files = studies[1]
    uids = _uids(files)
    ledger = Ledger()
    try:
        send_files(node.port, files, ledger, uids)
        wait_until(lambda: reviewer.aborts >= 2, 60, "the reviewer aborting twice")
        assert _states(url).get("delivered", 0) == 0
        reviewer.abort_after = None
        result = wait_all_delivered(node, url, ledger, reviewer, 120)
        assert_exactly_once(result)
        assert result.resent == 0, "an object the reviewer stored was sent again"
        attempts = [e["status"] for e in node.log_events() if e["event"] == "delivery_attempt"]
        assert attempts.count("partial") >= 2 and attempts[-1] == "delivered"
    finally:
        node.stop()
        reviewer.stop()


class SilentPeer:
    """A TCP listener that accepts connections and never sends a byte."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(50)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def test_reviewer_that_never_answers_bounded_attempts_no_thread_leak_then_failed(tmp_path, studies):
    """Each attempt ends within its timeouts, the case goes to FAILED after ``max_attempts``, and six more
    attempts (two operator retries) leave the gateway with no more threads than after the first three."""
    url = f"sqlite:///{tmp_path}/gateway.db"
    silent = SilentPeer()
    node = GatewayProcess(tmp_path / "gw", url, reviewers=[reviewer_config(silent.port)],
                          node={"acse_timeout_s": 1, "network_timeout_s": 2, "dimse_timeout_s": 2},
                          extra=fast_extra(routing={"retry": {"initial_s": 0.2, "max_s": 0.5, "max_attempts": 3},
                                                    "echo_interval_s": 0.5},
                                           # notes in the stage's thread: the notes workers' start (seconds)
                                           # must not let the health check mark the silent reviewer down first
                                           referrals={"workers": 0})).start()
    files = studies[2][:5]
    ledger = Ledger()
    try:
        send_files(node.port, files, ledger, _uids(files))
        wait_until(lambda: _states(url).get("failed") == 1, 60, "the case to fail after its attempts")
        attempts = [e for e in node.log_events() if e["event"] == "delivery_attempt"]
        assert len(attempts) == 3 and all(e["status"] != "delivered" for e in attempts)
        assert max(e["duration_ms"] for e in attempts) < 1000 * (1 + 2) + 2000, "an attempt outlived its timeouts"
        after_first_round = thread_count(node.proc.pid)
        (key,), = query(url, "SELECT key FROM study")
        for round_number in (2, 3):
            node.cli("retry", key)
            wait_until(lambda round_number=round_number: _states(url).get("failed") == 1 and sum(
                e["event"] == "delivery_attempt" for e in node.log_events()) == 3 * round_number, 60,
                f"retry round {round_number} to fail again")
        assert len(silent.accepted) >= 9, "every attempt reached the peer"
        # Transient threads (a C-ECHO to the silent peer in flight) come and go; leaked ones would pile up.
        wait_until(lambda: thread_count(node.proc.pid) <= after_first_round, 20,
                   "the gateway's threads to come back to their count after the first three attempts")
        assert node.proc.poll() is None
    finally:
        node.stop()
        silent.close()
