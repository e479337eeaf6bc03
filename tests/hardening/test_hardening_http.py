"""The HTTP half of issue 28 against a real node: each attack runs from loopback addresses of its own
(127.0.0.2 and up) while a legitimate client on 127.0.0.1 gets /healthz, signs in to the portal, posts a
referral with the token and echoes the DICOM port with DCMTK's echoscu; the node's memory stays bounded.

Attacks: slowloris (sockets dribbling header lines), 9 MB bodies without a token, hostile JSON and ids, a
sign-in flood and parallel wrong passwords. And health that tells the truth: a full spool, a read-only database.
"""

from __future__ import annotations

import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from hardening_support import GATEWAY_AE, SOURCE_AE, query
from support.peers import DCMTK, NODELAY_ENV, GatewayProcess, wait_until

TOKEN = "hardening-token-0123456789"
PASSWORD = "a long enough password"
RSS_GROWTH_LIMIT_KIB = 150 * 1024  # the node and its processes together, over their warm total


def rss_kib(root_pid: int) -> int:
    """VmRSS of ``root_pid`` and its child processes (the receiving processes), in KiB."""
    total = 0
    for pid in [root_pid, *_children(root_pid)]:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            continue
    return total


def _children(pid: int) -> list[int]:
    try:
        found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return []
    return [int(child) for child in found]


class RssWatch(threading.Thread):
    """Samples the node's RSS every 0.2 s until stopped; ``peak`` is the highest sample."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = rss_kib(pid)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.2):
            self.peak = max(self.peak, rss_kib(self.pid))

    def stop(self) -> int:
        self._halt.set()
        self.join(10)
        return self.peak


def client(address: str = "127.0.0.1", timeout: float = 20.0) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=timeout,
                        follow_redirects=False)


def referral(accession: str, history: str = "Low back pain for six weeks.") -> dict:
    return {"source": "st-marys", "accession_number": accession, "patient": {"id": "P-1", "name": "DOE^JANE"},
            "clinical": {"history": history}}


def echoscu_ok(port: int) -> bool:
    result = subprocess.run([str(DCMTK / "echoscu"), "-aet", SOURCE_AE, "-aec", GATEWAY_AE, "-to", "5", "-ta", "5",
                             "-td", "5", "127.0.0.1", str(port)], capture_output=True, text=True,
                            env={**os.environ, **NODELAY_ENV}, timeout=30)
    return result.returncode == 0


class Node:
    """A started node with a referrer account, and the legitimate client's actions."""

    def __init__(self, workdir: Path, database_url: str, storage: dict | None = None) -> None:
        self.database_url = database_url
        self.gateway = GatewayProcess(workdir, database_url, storage=storage,
                                      extra={"routing": {"poll_s": 0.5}})
        self.gateway.config["http"]["health_cache_s"] = 0.5
        self.url = f"http://127.0.0.1:{self.gateway.http_port}"
        self.accession = 0

    def start(self) -> Node:
        self.gateway.start()
        subprocess.run([sys.executable, "-m", "gateway", "--config", str(self.gateway.config_path), "user", "add",
                        "desk", "--role", "referrer", "--source", "st-marys", "--password-stdin"],
                       input=PASSWORD + "\n", capture_output=True, text=True, check=True, timeout=120)
        return self

    @property
    def pid(self) -> int:
        return self.gateway.proc.pid

    def healthz(self) -> int:
        with client() as http:
            return http.get(self.url + "/healthz").status_code

    def sign_in(self, name: str = "desk", password: str = PASSWORD, address: str = "127.0.0.1") -> int:
        with client(address) as http:
            form = http.get(self.url + "/login")
            token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
            return http.post(self.url + "/login", data={"name": name, "password": password,
                                                       "csrf_token": token}).status_code

    def post_referral(self, document: dict) -> httpx.Response:
        self.accession += 1
        with client() as http:
            return http.post(self.url + "/referrals", json=document, headers={"Authorization": f"Bearer {TOKEN}"})

    def legitimate_work_succeeds(self) -> None:
        with client() as http:
            health = http.get(self.url + "/healthz")
        assert health.status_code == 200, health.text
        assert self.sign_in() == 303
        self.accession += 1
        answer = self.post_referral(referral(f"LEGIT-{self.accession}"))
        assert answer.status_code == 201, answer.text
        assert echoscu_ok(self.gateway.port)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    os.environ["SPINE_GATEWAY_API_TOKEN"] = TOKEN
    workdir = tmp_path_factory.mktemp("http-hardening")
    started = Node(workdir / "gw", f"sqlite:///{workdir}/gateway.db")
    try:
        yield started.start()
    finally:
        started.gateway.stop()
        os.environ.pop("SPINE_GATEWAY_API_TOKEN", None)


def _dribbler(port: int, address: str, sockets: list, lock: threading.Lock) -> None:
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(address, 0))
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    except OSError:
        return
    with lock:
        sockets.append(sock)


def test_slowloris_neither_stalls_nor_503s_the_node(node):
    """300 sockets from one address and 300 spread over ten, each sending a header line every 10 s: the
    address beyond its cap is cut at once, the rest at the header deadline; the legitimate client is served."""
    warm = rss_kib(node.pid)
    watch = RssWatch(node.pid)
    watch.start()
    sockets: list[socket.socket] = []
    lock = threading.Lock()
    addresses = ["127.0.0.2"] * 300 + [f"127.0.0.{3 + i % 10}" for i in range(300)]
    try:
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda a: _dribbler(node.gateway.http_port, a, sockets, lock), addresses))
        started = time.monotonic()
        for round_ in range(3):  # a header line every 10 s, three rounds: 30 s in all, bounded
            node.legitimate_work_succeeds()
            for sock in list(sockets):
                try:
                    sock.sendall(f"X-Slow-{round_}: 1\r\n".encode())
                except OSError:
                    pass
            deadline = started + 10 * (round_ + 1)
            while time.monotonic() < deadline:
                assert node.healthz() == 200
                time.sleep(1.0)  # pacing of the legitimate client, not synchronisation
        cut = sum(1 for sock in sockets if _closed(sock))
        assert cut == len(sockets), f"{len(sockets) - cut} of {len(sockets)} slow sockets still open after 30 s"
    finally:
        for sock in sockets:
            sock.close()
        peak = watch.stop()
    assert peak - warm < RSS_GROWTH_LIMIT_KIB, f"RSS grew {(peak - warm) // 1024} MB"
    drops = {e["reason"] for e in node.gateway.log_events() if e["event"] == "http_connection_dropped"}
    assert {"too_many_connections", "request_head_timeout"} <= drops, drops


def _closed(sock: socket.socket) -> bool:
    sock.settimeout(0.5)
    try:
        while sock.recv(65536):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def _post_unread(port: int, address: str, path: str, size: int, headers: str = "") -> int | None:
    """POST ``size`` bytes of body to ``path`` as fast as the node takes them; the status answered, or None."""
    chunk = b"x" * 65536
    with socket.create_connection(("127.0.0.1", port), timeout=20, source_address=(address, 0)) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {size}\r\n{headers}\r\n".encode())
        try:
            for _ in range(size // len(chunk)):
                sock.sendall(chunk)
        except OSError:
            pass  # the node answered and closed without reading the rest: the point
        try:
            head = sock.recv(4096).decode("latin-1")
        except OSError:
            return None
    match = re.match(r"HTTP/1\.1 (\d{3})", head)
    return int(match.group(1)) if match else None


def test_bodies_without_token_or_session_are_not_read(node):
    """200 POST /referrals of 9 MB without a token (and portal posts without a session): refused from the
    headers; the node's memory does not follow the bodies."""
    warm = rss_kib(node.pid)
    watch = RssWatch(node.pid)
    watch.start()
    port = node.gateway.http_port
    jobs = [(f"127.0.0.{2 + i % 20}", "/referrals") for i in range(200)] + \
           [(f"127.0.0.{2 + i % 20}", "/referrer/new") for i in range(20)]
    try:
        with ThreadPoolExecutor(20) as pool:
            statuses = list(pool.map(lambda job: _post_unread(port, job[0], job[1], 9 * 1024 * 1024), jobs))
        node.legitimate_work_succeeds()
    finally:
        peak = watch.stop()
    assert set(statuses[:200]) <= {401, None} and statuses[:200].count(401) >= 150, statuses[:200]
    assert set(statuses[200:]) <= {413, 303, None}, statuses[200:]
    assert peak - warm < RSS_GROWTH_LIMIT_KIB, f"RSS grew {(peak - warm) // 1024} MB"
    too_large = _post_unread(port, "127.0.0.1", "/referrals", 9 * 1024 * 1024, f"Authorization: Bearer {TOKEN}\r\n")
    assert too_large in (413, None)


def test_a_referral_field_over_its_limit_is_422_naming_it(node):
    assert node.post_referral(referral("LIMIT-1", "x" * 20_000)).status_code == 201
    answer = node.post_referral(referral("LIMIT-2", "x" * 20_001))
    assert answer.status_code == 422
    assert answer.json()["problems"] == ["clinical.history: must be at most 20000 characters"]
    big = referral("LIMIT-3")
    big["clinical"]["question"] = "why? " * 2000
    answer = node.post_referral(big)
    assert answer.status_code == 422 and answer.json()["problems"][0].startswith("clinical.question:")


def test_malformed_requests_are_4xx_never_500(node):
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    deep = b"[" * 100_000 + b"]" * 100_000
    number = b'{"source": "st-marys", "accession_number": ' + b"9" * 5000 + b"}"
    with client() as http:
        for body in (deep, number, b'{"a": 1e999999}', b'{"a": NaN}', b"\xff\xfe", b"{"):
            answer = http.post(node.url + "/referrals", content=body, headers=headers)
            assert answer.status_code == 400, (body[:20], answer.status_code)
        form = http.get(node.url + "/login")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
        assert http.post(node.url + "/login", data={"name": "desk", "password": PASSWORD,
                                                    "csrf_token": csrf}).status_code == 303
        for path in ("/referrer/referrals/" + "9" * 23, "/referrer/referrals/-1", "/referrer/referrals/%00",
                     "/referrer/referrals/" + "1" * 5000, "/ops/cases/%00", "/reviewer/cases/" + "k" * 300):
            status = http.get(node.url + path).status_code
            assert 400 <= status < 500, (path[:40], status)
        assert http.get(node.url + "/healthz", headers={"X-Big": "y" * 20_000}).status_code == 431
    with socket.create_connection(("127.0.0.1", node.gateway.http_port), timeout=10) as sock:
        sock.sendall(b"\x16\x03\x01garbage that is not HTTP\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400")


def test_wrong_passwords_in_parallel_are_counted_before_the_hash(node):
    """30 parallel wrong passwords for one user from one address (within its 32 connections): 10 are admitted,
    20 refused unhashed (counted after the hash, 40 got 28 checks in issue 28)."""
    with ThreadPoolExecutor(30) as pool:
        statuses = list(pool.map(lambda i: node.sign_in("desk", f"wrong password {i}", "127.0.0.40"), range(30)))
    # the ten admitted: checked (401), or refused busy (503) while the address's one check ran
    assert statuses.count(429) == 20 and statuses.count(401) + statuses.count(503) == 10, statuses
    assert statuses.count(401) >= 1, statuses


def test_a_sign_in_flood_leaves_the_node_bounded_and_serving(node):
    """48 threads of random user names for 20 s from five addresses: refused by the address limit before any
    hash; the legitimate user signs in, /healthz and C-ECHO answer, memory stays bounded."""
    warm = rss_kib(node.pid)
    watch = RssWatch(node.pid)
    watch.start()
    stop_at = time.monotonic() + 20
    counts: dict[int, int] = {}
    lock = threading.Lock()

    def flood(index: int) -> None:
        rng = random.Random(index)
        address = f"127.0.1.{index % 5 + 1}"
        for _ in range(10_000):
            if time.monotonic() > stop_at:
                return
            try:
                status = node.sign_in(f"user{rng.randrange(10**9)}", "wrong password!", address)
            except httpx.HTTPError:
                status = 0
            with lock:
                counts[status] = counts.get(status, 0) + 1

    threads = [threading.Thread(target=flood, args=(i,), daemon=True) for i in range(48)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(3)  # let the flood build up before the legitimate client comes (pacing)
        for _ in range(2):
            node.legitimate_work_succeeds()
        for thread in threads:
            thread.join(60)
    finally:
        peak = watch.stop()
    assert counts.get(401, 0) <= 5 * 30, counts  # at most the five addresses' limits were hashed
    assert counts.get(429, 0) > 0 and counts.get(500, 0) == 0, counts
    refused_rows = query(node.database_url, "SELECT detail FROM audit_event WHERE action = 'web_login' "
                                                    "AND outcome = 'refused' AND detail LIKE '%from 127.0.1.%'")
    # one row per address for its first refusal (the flood is shorter than a minute), not one per refusal: each
    # row is a write the legitimate source's C-STORE commits wait behind
    assert 1 <= len(refused_rows) <= 5, (len(refused_rows), sum(counts.values()))
    assert peak - warm < RSS_GROWTH_LIMIT_KIB, f"RSS grew {(peak - warm) // 1024} MB"


@pytest.fixture
def tiny_spool(tmp_path):
    """A 2 MiB tmpfs for the spool (the tests run as root in their own network namespace)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount_point = tmp_path / "tiny-spool"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_healthz_and_status_say_unhealthy_when_the_spool_is_full(tmp_path, tiny_spool):
    node = Node(tmp_path / "gw", f"sqlite:///{tmp_path}/gateway.db", storage={"spool_dir": str(tiny_spool / "spool")})
    node.gateway.start()
    try:
        wait_until(lambda: node.healthz() == 200, 20, "a healthy node")
        filler = tiny_spool / "filler"
        with open(filler, "wb") as out:
            try:
                while True:
                    out.write(b"\0" * 65536)
                    out.flush()
            except OSError:
                pass
        wait_until(lambda: node.healthz() == 503, 20, "/healthz to notice the full spool")
        with client() as http:
            verdict = http.get(node.url + "/healthz").json()
        assert verdict["failed"] == ["spool"] and "write" in verdict["checks"]["spool"]["detail"], verdict
        assert node.gateway.status()["health"]["failed"] == ["spool"]
        filler.unlink()
        wait_until(lambda: node.healthz() == 200, 20, "/healthz healthy again once space is back")
        assert node.gateway.status()["health"]["status"] == "ok"
    finally:
        node.gateway.stop()


def test_healthz_says_unhealthy_when_the_database_refuses_writes(tmp_path, pg_cluster):
    url = pg_cluster.new_database()
    name = url.rsplit("/", 1)[1]
    node = Node(tmp_path / "gw", url)
    node.gateway.start()

    def set_read_only(on: bool) -> None:
        pg_cluster.psql(f"ALTER DATABASE \"{name}\" SET default_transaction_read_only = {'on' if on else 'off'}")
        pg_cluster.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' "
                        f"AND pid <> pg_backend_pid()")
    try:
        wait_until(lambda: node.healthz() == 200, 20, "a healthy node")
        set_read_only(True)
        wait_until(lambda: node.healthz() == 503, 30, "/healthz to notice the read-only database")
        with client() as http:
            assert "database" in http.get(node.url + "/healthz").json()["failed"]
        set_read_only(False)
        wait_until(lambda: node.healthz() == 200, 30, "/healthz healthy again")
    finally:
        node.gateway.stop()
