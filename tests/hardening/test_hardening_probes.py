"""Connections that never negotiate (port scanners, load balancers' health checks, garbage, a sender of one byte
a second) must not lock real senders out: they wait in the negotiation gate (``gateway.scp.gate``) without an
association slot and are dropped. Then several DCMTK senders at once: every acknowledged instance is intact.

With stock pynetdicom each of these connections holds an association slot until the ACSE timeout (30 s), so
with ``max_associations`` at 2 the C-ECHO below would be rejected ("local limit exceeded").
"""

from __future__ import annotations

import os
import random
import re
import socket
import subprocess
import threading
import time

import pytest

from gateway.demo import write_demo_study
from hardening_support import GATEWAY_AE, SOURCE_AE, associate_rq, query
from support.dicomfiles import dataset_bytes, sop_instance_uid, spool_index
from support.peers import DCMTK, NODELAY_ENV, GatewayProcess, storescu

NEGOTIATION_TIMEOUT_S = 3.0
_RESPONSE = re.compile(r"Received Store Response \(([^)]*)\)")


def echoscu_within(port: int, seconds: int) -> subprocess.CompletedProcess:
    """DCMTK echoscu with every timeout (connection, ACSE, DIMSE) at ``seconds``."""
    limit = str(seconds)
    return subprocess.run([str(DCMTK / "echoscu"), "-aet", SOURCE_AE, "-aec", GATEWAY_AE, "-to", limit, "-ta", limit,
                           "-td", limit, "127.0.0.1", str(port)],
                          capture_output=True, text=True, env={**os.environ, **NODELAY_ENV}, timeout=seconds + 10)


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """True when the gateway closes ``sock`` (EOF or reset) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


class SlowSender(threading.Thread):
    """Sends a valid A-ASSOCIATE-RQ one byte a second; records when the gateway cut it off."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.started = time.monotonic()
        self.cut_after: float | None = None
        self.bytes_sent = 0
        self._halt = threading.Event()

    def run(self) -> None:
        request = associate_rq()
        try:
            for byte in request:
                self.sock.sendall(bytes([byte]))
                self.bytes_sent += 1
                if self._halt.wait(1.0):
                    return
                self.sock.settimeout(0.01)
                try:
                    if self.sock.recv(1) == b"":
                        break
                except TimeoutError:
                    continue
        except OSError:
            pass
        self.cut_after = time.monotonic() - self.started

    def stop(self) -> None:
        self._halt.set()
        self.sock.close()


@pytest.fixture
def node(tmp_path, database_url):
    gateway = GatewayProcess(tmp_path / "gw", database_url,
                             node={"max_associations": 2, "negotiation_timeout_s": NEGOTIATION_TIMEOUT_S}).start()
    yield gateway
    gateway.stop()


def test_probes_and_garbage_do_not_lock_out_senders(node, database_url, small_study):
    slow = SlowSender(node.port)
    slow.start()
    try:
        for _ in range(200):
            socket.create_connection(("127.0.0.1", node.port), timeout=5).close()
        noise = random.Random(13)
        for _ in range(50):
            with socket.create_connection(("127.0.0.1", node.port), timeout=5) as garbage:
                garbage.sendall(bytes(noise.randrange(256) for _ in range(noise.randrange(1, 300))))
                assert closed_by_peer(garbage, NEGOTIATION_TIMEOUT_S + 20), "garbage was never dropped"

        echo = echoscu_within(node.port, 1)
        assert echo.returncode == 0, f"C-ECHO not accepted within 1 s after the probes: {echo.stderr}"

        result = storescu("127.0.0.1", node.port, small_study, calling=SOURCE_AE)
        assert result.returncode == 0, result.stderr
        spool = spool_index(node.spool_dir)
        for path in small_study:
            assert spool.get(sop_instance_uid(path)) == dataset_bytes(path), f"{path.name} not stored intact"

        slow.join(NEGOTIATION_TIMEOUT_S + 30)
        assert slow.cut_after is not None, "the one-byte-a-second sender was never cut off"
        assert slow.bytes_sent < len(associate_rq()), "the slow sender got its whole request through"
    finally:
        slow.stop()

    drops = [e for e in node.log_events() if e["event"] == "connection_dropped"]
    reasons = {e["reason"] for e in drops}
    assert {"closed_before_request", "not_an_association_request", "negotiation_timeout"} <= reasons, reasons
    assert all(e["peer"] == "127.0.0.1" for e in drops)
    assert len(drops) < 20, "one line per host and reason every few seconds, not one per connection"
    assert not [e for e in node.log_events() if e["event"] == "association_rejected"]


def test_per_host_cap_on_connections_waiting_to_negotiate(tmp_path, database_url):
    """A host with every place in the gate taken by silent connections: a new connection displaces the oldest
    silent one (closed at once) instead of being refused, so the host's real sender gets in."""
    gateway = GatewayProcess(tmp_path / "gw", database_url,
                             node={"max_pending_per_host": 3, "negotiation_timeout_s": 30,
                                   "receiving_processes": 0}).start()  # one gate
    silent = [socket.create_connection(("127.0.0.1", gateway.port), timeout=5) for _ in range(3)]
    try:
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as extra:
            deadline = time.monotonic() + 10
            while not any(closed_by_peer(sock, 0.05) for sock in silent):
                assert time.monotonic() < deadline, "no earlier silent connection of the host was displaced"
            assert not closed_by_peer(extra, 0.5), "the newest connection was dropped instead of an older one"
        assert echoscu_within(gateway.port, 5).returncode == 0, "the host's real sender was kept out"
        reasons = {e["reason"] for e in gateway.log_events() if e["event"] == "connection_dropped"}
        assert "displaced_by_newer" in reasons
    finally:
        for sock in silent:
            sock.close()
        gateway.stop()


def test_five_storescu_senders_at_once_every_acknowledged_instance_intact(tmp_path, database_url):
    studies = [write_demo_study(tmp_path / f"study-{i}", 40, seed=300 + i, rows=64, cols=64) for i in range(5)]
    gateway = GatewayProcess(tmp_path / "gw", database_url).start()
    acknowledged: list = []
    lock = threading.Lock()

    def send(files) -> None:
        result = storescu("127.0.0.1", gateway.port, files, calling=SOURCE_AE, extra_args=["-v"], timeout=600)
        responses = _RESPONSE.findall(result.stdout + result.stderr)
        with lock:
            acknowledged.extend(path for path, text in zip(files, responses) if text == "Success")

    try:
        senders = [threading.Thread(target=send, args=(files,)) for files in studies]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(900)
        assert len(acknowledged) > 0
        spool = spool_index(gateway.spool_dir)
        rows = {uid for (uid,) in query(database_url, "SELECT sop_instance_uid FROM instance")}
        for path in acknowledged:
            uid = sop_instance_uid(path)
            assert uid in rows, f"{path.name} acknowledged without a row"
            assert spool.get(uid) == dataset_bytes(path), f"{path.name} acknowledged but not intact"
        assert len(acknowledged) == 200, f"only {len(acknowledged)} of 200 acknowledged"
    finally:
        gateway.stop()
