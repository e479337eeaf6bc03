"""Hostile-load benchmark (not a test; issue 28): every attack of the issue's table in turn, with a legitimate
client's figures beside each, against spine-gateway and (the DICOM attacks) DCMTK storescp and Orthanc.

One run starts each target once, on free loopback ports (DCMTK storescp, an Orthanc of its own, the node on
SQLite with the shipped options, the stability wait out of the way so that no case is processed while the
figures are taken; TCP_NODELAY=1 for DCMTK and Orthanc, the node sets it itself), stores a quiet baseline, then
runs the attacks one after the other against the same process, and stops it by PID. Per attack it prints one row:

- C-ECHO: /usr/bin/echoscu from 127.0.0.1 in a loop while the attack runs ("during") and three more 1 s after it
  ended ("after"), median and max in ms (an echoscu run includes its process start, ~10 ms); failures counted;
- store: DCMTK storescu of a fresh study of ``--legit-instances`` instances (20; ``spine-gateway demo-study``),
  started ``ramp`` seconds into the attack, against the target's quiet median (ratio). At 20 instances the quiet
  store is about 0.1 s, mostly association set-up: ``--legit-instances 200`` gives the ratio more to measure;
- RSS: the peak of VmRSS summed over the target's process tree (the node, its receiving processes and their
  children), sampled every 100 ms, and its growth over the warm total after the baseline;
- lost: acknowledged instances (legitimate studies and the large instances) not in the target (rows of the
  node's ``instance`` table, storescp's files, Orthanc's index), over the whole run so far;
- /healthz (gateway only): max latency from 127.0.0.1 during the attack and how many answers were not 200;
- what the attack itself saw (refused, cut, statuses).

The issue's targets are printed beside the figures: C-ECHO within 1 s during and after; the study stored within
2x its quiet time; the RSS total under 600 MB and never more than 100 MB above the warm total; nothing lost.
Every loop is bounded in count and in time; attackers use loopback addresses only (127.0.0.2 and up as other
hosts). Run as root in the loopback-only namespace:

    scripts/in-private-net.sh .venv/bin/python bench/hostile.py [--quick] [--attacks idle,fuzz]
        [--targets orthanc,storescp,gateway] [--large-mb 400] [--legit-instances 20] [--attacker-nice 19]

The full run takes about 20 minutes on two cores (``--quick``: about 8) and writes 2 GB of large instances to a
temp dir under /var/tmp, removed at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This folder holds bench/concurrent_senders.py, which would shadow the standard library's ``concurrent`` package.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import os
import random
import re
import socket
import statistics
import struct
import subprocess
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import pydicom
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "hardening"))

from gateway.demo import write_demo_study  # noqa: E402
from hardening_support import (  # noqa: E402
    RawPeer,
    associate_rq,
    c_echo_command,
    p_data,
    pdu,
    query,
)
from support.peers import (  # noqa: E402
    DCMTK,
    NODELAY_ENV,
    DcmtkStoreSCP,
    GatewayProcess,
    Orthanc,
    PeerStartError,
    free_port,
)

ECHO_TARGET_S = 1.0
STORE_RATIO_TARGET = 2.0
RSS_LIMIT_MB = 600
RSS_GROWTH_MB = 100
LEGIT_INSTANCES = 20
TOKEN = "hostile-bench-token-0123456789"
PASSWORD = "a long enough bench password"
LEGIT_AE = "STMARYS_PACS"      # a source bound to 127.0.0.1: the legitimate client
FLOOD_AE = "CITY_PACS"         # a source from any host: a PACS gone wrong
REVIEWER_AE = "REVIEW_A"       # a reviewer's AE title, used from another host by the idle attacker
DICOM_ATTACKS = ("idle", "fuzz", "silent", "large1", "large4", "flood")
GATEWAY_ONLY = ("large1", "large4", "malformed", "slowloris", "bodies", "login-flood", "wrong-passwords")
ALL_ATTACKS = DICOM_ATTACKS + ("malformed", "slowloris", "bodies", "login-flood", "wrong-passwords")


@dataclass
class Scale:
    """Counts and durations of one run; ``--quick`` shortens the windows, not the shapes of the attacks."""

    window_s: float = 20.0          # how long a standing attack (idle, silent, flood, malformed) lasts
    ramp_s: float = 2.0             # the attack builds up before the legitimate study is sent
    baseline_runs: int = 3
    idle: int = 25
    fuzz: int = 800
    silent: int = 40
    flood_threads: int = 8
    slowloris_sockets: int = 300
    slowloris_rounds: int = 3       # a header line every 10 s
    bodies: int = 200
    body_mb: int = 9
    login_threads: int = 48
    login_s: float = 25.0
    wrong_passwords: int = 40
    large_mb: int = 400

    @classmethod
    def quick(cls, large_mb: int) -> Scale:
        return cls(window_s=8.0, ramp_s=1.0, baseline_runs=2, fuzz=300, slowloris_rounds=1, bodies=60,
                   login_s=10.0, large_mb=large_mb)


# -- the legitimate client ---------------------------------------------------------------------------------

def echo_seconds(port: int, called: str) -> tuple[float, bool]:
    """One DCMTK C-ECHO with 5 s timeouts: (seconds from start to exit, succeeded)."""
    started = time.perf_counter()
    try:
        result = subprocess.run([str(DCMTK / "echoscu"), "-aet", LEGIT_AE, "-aec", called, "-to", "5", "-ta", "5",
                                 "-td", "5", "127.0.0.1", str(port)], capture_output=True,
                                env={**os.environ, **NODELAY_ENV}, timeout=20)
        ok = result.returncode == 0
    except subprocess.TimeoutExpired:
        ok = False
    return time.perf_counter() - started, ok


_RESPONSE = re.compile(r"Received Store Response \(([^)]*)\)")


def store_files(port: int, called: str, files: list[Path], timeout: float, calling: str = LEGIT_AE
                ) -> tuple[float, list[Path]]:
    """DCMTK storescu of ``files`` in one association: (seconds, the files answered Success)."""
    started = time.perf_counter()
    try:
        result = subprocess.run([str(DCMTK / "storescu"), "-v", "-aet", calling, "-aec", called, "-nh", "-to", "10",
                                 "-ta", "30", "-td", "60", "127.0.0.1", str(port), *map(str, files)],
                                capture_output=True, text=True, env={**os.environ, **NODELAY_ENV}, timeout=timeout)
        statuses = _RESPONSE.findall(result.stdout + result.stderr)
    except subprocess.TimeoutExpired:
        statuses = []
    elapsed = time.perf_counter() - started
    return elapsed, [path for path, status in zip(files, statuses) if status == "Success"]


class Studies:
    """Fresh legitimate studies (new UIDs each), written before an attack starts so that writing them is not
    measured; and the large instances, written once."""

    def __init__(self, root: Path, instances: int = LEGIT_INSTANCES) -> None:
        self.root = root
        self.instances = instances
        self.count = 0

    def fresh(self) -> list[Path]:
        self.count += 1
        return write_demo_study(self.root / f"legit-{self.count:03d}", self.instances, seed=self.count)

    def large(self, index: int, megabytes: int) -> Path:
        path = self.root / f"large-{megabytes}-{index}.dcm"
        if not path.exists():
            write_large_instance(path, self.fresh_template(), megabytes)
        return path

    def fresh_template(self) -> Path:
        folder = self.root / "template"
        files = sorted(folder.glob("*.dcm")) or write_demo_study(folder, 1, seed=999)
        return files[0]


def write_large_instance(path: Path, template: Path, megabytes: int) -> None:
    """A multi-frame MR instance of about ``megabytes`` MB, its pixel data streamed to disk (never in memory)."""
    dataset = pydicom.dcmread(template)
    frame_bytes = dataset.Rows * dataset.Columns * 2
    frames = max(1, megabytes * 1_000_000 // frame_bytes)
    dataset.NumberOfFrames = frames
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    del dataset.PixelData
    dataset.save_as(path, enforce_file_format=True)
    chunk = random.Random(megabytes).randbytes(frame_bytes)
    with open(path, "ab") as out:
        out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, frame_bytes * frames))
        for _ in range(frames):
            out.write(chunk)


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)


# -- the targets -------------------------------------------------------------------------------------------

class Target:
    """A peer under attack: where it listens, its process tree, and what it acknowledged."""

    name = ""
    called = ""
    port = 0
    http_url = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.acknowledged: set[str] = set()
        self._confirmed: set[str] = set()

    def root_pid(self) -> int:
        raise NotImplementedError

    def alive(self) -> bool:
        raise NotImplementedError

    def stored(self, uids: set[str]) -> set[str]:
        """Those of ``uids`` the target holds."""
        raise NotImplementedError

    def lost(self) -> int:
        """Acknowledged instances not in the target (checked once each: a stored instance stays stored)."""
        unconfirmed = self.acknowledged - self._confirmed
        self._confirmed |= self.stored(unconfirmed) if unconfirmed else set()
        return len(self.acknowledged - self._confirmed)


class StorescpTarget(Target):
    name, called = "storescp", "STORESCP"

    def start(self) -> StorescpTarget:
        self.peer = DcmtkStoreSCP(self.workdir, ae_title=self.called)  # held before start: stopped if it fails
        self.peer.start()
        self.port = self.peer.port
        return self

    def root_pid(self) -> int:
        return self.peer.proc.pid

    def alive(self) -> bool:
        return self.peer.proc is not None and self.peer.proc.poll() is None

    def stored(self, uids: set[str]) -> set[str]:
        names = {path.name.split(".", 1)[-1] for path in self.peer.out_dir.iterdir()}
        return uids & names

    def stop(self) -> None:
        self.peer.stop()


class OrthancTarget(Target):
    name, called = "orthanc", "ORTHANC"

    def start(self) -> OrthancTarget:
        self.peer = Orthanc(self.workdir, self.called)  # held before start: stopped if it fails
        self.peer.start()
        self.port = self.peer.dicom_port
        return self

    def root_pid(self) -> int:
        return self.peer.proc.pid

    def alive(self) -> bool:
        return self.peer.proc is not None and self.peer.proc.poll() is None

    def stored(self, uids: set[str]) -> set[str]:
        return {uid for uid in uids if self.peer.post("/tools/lookup", uid.encode(), timeout=30)}

    def stop(self) -> None:
        self.peer.stop()


class GatewayTarget(Target):
    name, called = "gateway", "SPINEGW"

    def start(self) -> GatewayTarget:
        os.environ["SPINE_GATEWAY_API_TOKEN"] = TOKEN  # the node reads it from its environment
        self.database_url = f"sqlite:///{self.workdir}/gateway.db"
        self.node = GatewayProcess(
            self.workdir, self.database_url,
            sources=[{"name": "st-marys", "ae_title": LEGIT_AE, "host": "127.0.0.1"},
                     {"name": "city", "ae_title": FLOOD_AE}],
            reviewers=[{"name": "dr-a", "ae_title": REVIEWER_AE, "host": "127.0.0.1", "port": free_port()}],
            extra={"routing": {"stable_after_s": 3600}})
        self.node.start(timeout=60)
        self.port = self.node.port
        self.http_url = f"http://127.0.0.1:{self.node.http_port}"
        self._add_user()
        return self

    def _add_user(self) -> None:
        """The portal's referrer, for the sign-in attacks and the malformed requests behind a session."""
        subprocess.run([sys.executable, "-m", "gateway", "--config", str(self.node.config_path), "user", "add", "desk",
                        "--role", "referrer", "--source", "st-marys", "--password-stdin"], input=PASSWORD + "\n",
                       capture_output=True, text=True, check=True, timeout=120, cwd=self.workdir)

    def root_pid(self) -> int:
        return self.node.proc.pid

    def alive(self) -> bool:
        return self.node.proc is not None and self.node.proc.poll() is None

    def stored(self, uids: set[str]) -> set[str]:
        rows = query(self.database_url, "SELECT DISTINCT sop_instance_uid FROM instance")
        return uids & {uid for (uid,) in rows}

    def stop(self) -> None:
        self.node.stop()
        os.environ.pop("SPINE_GATEWAY_API_TOKEN", None)


# -- measuring ---------------------------------------------------------------------------------------------

def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants, parents first."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        found.append(pid)
        todo.extend(sorted(parents.get(pid, [])))
    return found


def _process_label(pid: int) -> str:
    """A short name for one of the node's processes: the module it runs, or what multiprocessing started."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [word.decode(errors="replace") for word in argv if word]
    for marker in ("-m", "-c"):
        if marker in words[:3]:
            following = words[words.index(marker) + 1] if words.index(marker) + 1 < len(words) else ""
            if "forkserver" in following:
                return "forkserver"
            if "spawn_main" in following or "resource_tracker" in following:
                return "mp-" + ("tracker" if "resource_tracker" in following else "spawn")
            return following.split()[0][:24] if marker == "-m" else following[:24]
    return Path(words[0]).name if words else "?"


def cpu_seconds(pid: int) -> float:
    """User and system CPU time ``pid`` has used so far (its threads', not its children's)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_memory(root: int) -> list[tuple[int, str, int, int, int]]:
    """(pid, label, VmRSS KiB, VmHWM KiB, threads) of every process of ``root``'s tree."""
    rows = []
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/status") as status:
                fields = dict(line.split(":", 1) for line in status if ":" in line)
        except OSError:
            continue
        kib = {key: int(fields.get(key, "0 kB").split()[0]) for key in ("VmRSS", "VmHWM", "Threads")}
        rows.append((pid, _process_label(pid), kib["VmRSS"], kib["VmHWM"], kib["Threads"]))
    return rows


def memory_line(root: int) -> str:
    """One line: each process's RSS now and its high-water mark in MB (the kernel's VmRSS and VmHWM), its threads
    and the CPU seconds it used so far (the difference between two lines is an attack's cost, whatever the
    machine's load)."""
    return "  ".join(f"{pid} {label} {rss / 1024:.0f}/{hwm / 1024:.0f} {threads}t {cpu_seconds(pid):.0f}s"
                     for pid, label, rss, hwm, threads in process_memory(root))


def tree_rss_kib(root: int) -> int:
    """VmRSS summed over ``root`` and all its descendants (children, grandchildren), from one scan of /proc."""
    return sum(rss for _, _, rss, _, _ in process_memory(root))


class RssSampler(threading.Thread):
    """Samples the target's tree every 100 ms; ``take_peak`` returns the peak since the last call."""

    def __init__(self, target: Target) -> None:
        super().__init__(daemon=True)
        self.target = target
        self.peak = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.1):
            if self.target.alive():
                self.peak = max(self.peak, tree_rss_kib(self.target.root_pid()))

    def take_peak(self) -> int:
        peak, self.peak = self.peak, 0
        return peak

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


class Prober(threading.Thread):
    """The legitimate client's C-ECHO (and, on the gateway, /healthz) in a loop until stopped."""

    def __init__(self, target: Target) -> None:
        super().__init__(daemon=True)
        self.target = target
        self.echoes: list[tuple[float, bool]] = []
        self.health: list[tuple[float, int]] = []
        self._halt = threading.Event()
        self._health_thread = threading.Thread(target=self._health_loop, daemon=True)

    def run(self) -> None:
        if self.target.http_url:
            self._health_thread.start()
        for _ in range(10_000):
            if self._halt.wait(0.2):
                break
            self.echoes.append(echo_seconds(self.target.port, self.target.called))
        if self._health_thread.is_alive():
            self._health_thread.join(20)

    def _health_loop(self) -> None:
        with httpx.Client(timeout=15) as http:
            for _ in range(10_000):
                if self._halt.wait(0.5):
                    return
                started = time.perf_counter()
                try:
                    status = http.get(self.target.http_url + "/healthz").status_code
                except httpx.HTTPError:
                    status = 0
                self.health.append((time.perf_counter() - started, status))

    def stop(self) -> None:
        self._halt.set()
        self.join(30)


# -- the attacks (each bounded in count and time; returns what it saw) --------------------------------------

class Tally(Counter):
    """A Counter that many attacker threads add to."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def add(self, key: str) -> None:
        with self._lock:
            self[key] += 1


class HostilePeer(RawPeer):
    """A raw DICOM upper-layer connection from a chosen loopback address."""

    def __init__(self, port: int, source: str = "127.0.0.2", timeout: float = 5.0) -> None:  # noqa: D107
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _hold_until_cut(sock: socket.socket, deadline: float) -> bool:
    """Read nothing useful until the peer closes (True) or ``deadline`` passes (False)."""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, min(1.0, deadline - time.monotonic())))
        try:
            if not sock.recv(4096):
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


ATTACKER_NICE = [0]  # --attacker-nice: the standing and sign-in attackers' threads' nice value


def _attacker_priority() -> None:
    """The calling attacker thread at ``--attacker-nice``: on a two-core host the sign-in flood's 48 client threads
    took 80% of the CPU (12.9 CPU-s in 8 s, against 1.5 for the node and 1.0 for its receiving process), so the
    legitimate store measured the attacker's CPU, not the node. An attacker on another host takes none."""
    if ATTACKER_NICE[0]:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), ATTACKER_NICE[0])


def _standing(workers: int, window_s: float, one_round, tally: Tally) -> None:
    """Run ``one_round(deadline, tally)`` again and again in ``workers`` threads until ``window_s`` is over."""
    deadline = time.monotonic() + window_s

    def worker() -> None:
        _attacker_priority()
        for _ in range(100_000):
            if time.monotonic() >= deadline:
                return
            try:
                one_round(deadline, tally)
            except OSError:
                tally.add("connect_failed")
                time.sleep(0.2)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(window_s + 30)


def attack_idle(target: Target, scale: Scale, studies: Studies) -> str:
    """25 associations with a reviewer's AE title from another host, held idle, re-opened when cut."""
    tally = Tally()

    def one_round(deadline: float, tally: Tally) -> None:
        peer = HostilePeer(target.port)
        try:
            accepted = peer.associate(calling=REVIEWER_AE, called=target.called, contexts=((1, "1.2.840.10008.1.1"),))
            tally.add("accepted" if accepted else "not_accepted")
            if accepted and not _hold_until_cut(peer.sock, deadline):
                tally.add("held_to_the_end")
            elif not accepted:
                time.sleep(0.2)
        finally:
            peer.close()

    _standing(scale.idle, scale.window_s, one_round, tally)
    return _tally(tally)


def _fuzzed_pdu(rng: random.Random) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 2048))
    if kind == 1:  # a valid type with an absurd length and a short body
        return struct.pack(">BBI", rng.randrange(1, 8), 0, rng.choice([0, 1, 0xFFFFFFFF, rng.randrange(1 << 32)])) \
            + rng.randbytes(rng.randrange(64))
    if kind == 2:  # a mangled A-ASSOCIATE-RQ
        data = bytearray(associate_rq())
        for _ in range(rng.randrange(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if kind == 3:  # P-DATA whose PDV lengths lie
        body = struct.pack(">IBB", rng.randrange(1 << 32), rng.randrange(256), rng.randrange(256)) + rng.randbytes(64)
        return pdu(0x04, body)
    return pdu(0x07, bytes([0, 0, rng.randrange(256), rng.randrange(256)]))  # A-ABORT with any source/reason


def attack_fuzz(target: Target, scale: Scale, studies: Studies) -> str:
    """800 fuzzed PDUs, each on its own connection; every second one after a valid A-ASSOCIATE-RQ."""
    tally = Tally()
    deadline = time.monotonic() + max(60.0, scale.window_s * 3)

    def one(index: int) -> None:
        if time.monotonic() >= deadline:
            tally.add("skipped_deadline")
            return
        rng = random.Random(index)
        try:
            peer = HostilePeer(target.port, timeout=2.0)
        except OSError:
            tally.add("connect_failed")
            return
        try:
            if index % 2 and not peer.associate(calling=FLOOD_AE, called=target.called):
                tally.add("associate_refused")
            peer.send(_fuzzed_pdu(rng))
            peer.sock.settimeout(0.3)
            try:
                peer.sock.recv(4096)
            except OSError:
                pass
            tally.add("sent")
        finally:
            peer.close()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(scale.fuzz)))
    return _tally(tally)


def attack_silent(target: Target, scale: Scale, studies: Studies) -> str:
    """40 connections from the legitimate source's own host that never send a byte, re-opened when cut."""
    tally = Tally()

    def one_round(deadline: float, tally: Tally) -> None:
        sock = socket.create_connection(("127.0.0.1", target.port), timeout=5, source_address=("127.0.0.1", 0))
        try:
            tally.add("opened")
            tally.add("cut" if _hold_until_cut(sock, deadline) else "held_to_the_end")
        finally:
            sock.close()

    _standing(scale.silent, scale.window_s, one_round, tally)
    return _tally(tally)


def attack_flood(target: Target, scale: Scale, studies: Studies) -> str:
    """Short associations (associate, C-ECHO, release) as fast as 8 threads go, from another host."""
    tally = Tally()

    def one_round(deadline: float, tally: Tally) -> None:
        peer = HostilePeer(target.port, timeout=5.0)
        try:
            if not peer.associate(calling=FLOOD_AE, called=target.called, contexts=((1, "1.2.840.10008.1.1"),)):
                tally.add("refused")
                return
            peer.send(p_data(1, c_echo_command(), command=True))
            tally.add("echoed" if peer.command_status() == 0 else "echo_failed")
            peer.release()
        finally:
            peer.close()

    _standing(scale.flood_threads, scale.window_s, one_round, tally)
    return _tally(tally)


def _large(count: int):
    def attack(target: Target, scale: Scale, studies: Studies) -> str:
        files = [studies.large(index, scale.large_mb) for index in range(count)]
        with ThreadPoolExecutor(count) as pool:
            # from another source (its own AE title's share of the slots), as the legitimate C-ECHO is measured
            results = list(pool.map(lambda path: store_files(target.port, target.called, [path], 900, FLOOD_AE),
                                    files))
        stored = [path for _, done in results for path in done]
        target.acknowledged |= {sop_uid(path) for path in stored}
        return f"{count} x {scale.large_mb} MB: {len(stored)} acknowledged, " + \
            ", ".join(f"{seconds:.1f} s" for seconds, _ in results)
    attack.__doc__ = f"{'one' if count == 1 else count} instance(s) of --large-mb MB at once"
    return attack


def _dribbler(target: Target, address: str) -> socket.socket | None:
    try:
        sock = socket.create_connection(("127.0.0.1", int(target.http_url.rsplit(":", 1)[1])), timeout=5,
                                        source_address=(address, 0))
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        return sock
    except OSError:
        return None


def _cut(sock: socket.socket) -> bool:
    """True when the node has answered (408/503...) or closed the socket; False while it still waits on it."""
    sock.setblocking(False)
    try:
        sock.recv(65536)
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def attack_slowloris(target: Target, scale: Scale, studies: Studies) -> str:
    """300 sockets over ten addresses, each sending a header line every 10 s, for ``slowloris_rounds`` rounds."""
    addresses = [f"127.0.0.{2 + i % 10}" for i in range(scale.slowloris_sockets)]
    with ThreadPoolExecutor(32) as pool:
        sockets = [s for s in pool.map(lambda a: _dribbler(target, a), addresses) if s is not None]
    opened = len(sockets)
    try:
        for round_ in range(scale.slowloris_rounds):
            time.sleep(10.0)  # the attack's own pace: a line every 10 s
            for sock in sockets:
                try:
                    sock.sendall(f"X-Slow-{round_}: 1\r\n".encode())
                except OSError:
                    pass
        cut = sum(1 for sock in sockets if _cut(sock))
    finally:
        for sock in sockets:
            sock.close()
    return f"opened={opened} cut_by_node={cut} of {scale.slowloris_sockets}"


def _post_unread(port: int, address: str, size: int) -> int | None:
    chunk = b"x" * 65536
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20, source_address=(address, 0)) as sock:
            sock.sendall(f"POST /referrals HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {size}\r\n\r\n".encode())
            try:
                for _ in range(size // len(chunk)):
                    sock.sendall(chunk)
            except OSError:
                pass  # answered and closed without reading the rest
            head = sock.recv(4096).decode("latin-1")
    except OSError:
        return None
    match = re.match(r"HTTP/1\.1 (\d{3})", head)
    return int(match.group(1)) if match else None


def attack_bodies(target: Target, scale: Scale, studies: Studies) -> str:
    """200 POST /referrals of 9 MB without a token, 20 at a time from 20 addresses."""
    port = int(target.http_url.rsplit(":", 1)[1])
    size = scale.body_mb * 1024 * 1024
    with ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(lambda i: _post_unread(port, f"127.0.0.{2 + i % 20}", size), range(scale.bodies)))
    return "statuses " + _tally(Counter(str(s) for s in statuses))


def _sign_in(target: Target, name: str, password: str, address: str) -> int:
    try:
        with httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30) as http:
            form = http.get(target.http_url + "/login")
            token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
            if token is None:
                return form.status_code
            return http.post(target.http_url + "/login", data={"name": name, "password": password,
                                                               "csrf_token": token.group(1)}).status_code
    except httpx.HTTPError:
        return 0


def attack_login_flood(target: Target, scale: Scale, studies: Studies) -> str:
    """48 threads signing in with random user names from five addresses for ``login_s`` seconds."""
    tally = Tally()
    stop_at = time.monotonic() + scale.login_s

    def flood(index: int) -> None:
        _attacker_priority()
        rng = random.Random(index)
        for _ in range(10_000):
            if time.monotonic() >= stop_at:
                return
            name, address = f"user{rng.randrange(10**9)}", f"127.0.1.{index % 5 + 1}"
            tally.add(str(_sign_in(target, name, "wrong password!", address)))

    with ThreadPoolExecutor(scale.login_threads) as pool:
        list(pool.map(flood, range(scale.login_threads)))
    return "statuses " + _tally(tally)


def attack_wrong_passwords(target: Target, scale: Scale, studies: Studies) -> str:
    """40 wrong passwords at once for one existing user, from one address."""
    with ThreadPoolExecutor(scale.wrong_passwords) as pool:
        statuses = list(pool.map(lambda i: _sign_in(target, "desk", f"wrong password {i}", "127.0.0.40"),
                                 range(scale.wrong_passwords)))
    return "statuses " + _tally(Counter(str(s) for s in statuses))


def attack_malformed(target: Target, scale: Scale, studies: Studies) -> str:
    """A 23-digit id, 100,000-deep JSON and a 5,000-digit number, again and again for the window."""
    tally = Tally()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    deep = b"[" * 100_000 + b"]" * 100_000
    number = b'{"source": "st-marys", "accession_number": ' + b"9" * 5000 + b"}"
    deadline = time.monotonic() + scale.window_s
    url = target.http_url
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.50"), timeout=30) as http:
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', http.get(url + "/login").text).group(1)
        signed_in = http.post(url + "/login", data={"name": "desk", "password": PASSWORD, "csrf_token": csrf})
        tally.add(f"sign_in_{signed_in.status_code}")
        requests = (("deep", lambda: http.post(url + "/referrals", content=deep, headers=headers)),
                    ("digits", lambda: http.post(url + "/referrals", content=number, headers=headers)),
                    ("id23", lambda: http.get(url + "/referrer/referrals/" + "9" * 23)))
        for _ in range(10_000):
            if time.monotonic() >= deadline:
                break
            for kind, send in requests:
                try:
                    tally.add(f"{kind}_{send().status_code}")
                except httpx.HTTPError:
                    tally.add(f"{kind}_error")
    return _tally(tally)


ATTACKS = {"idle": attack_idle, "fuzz": attack_fuzz, "silent": attack_silent, "large1": _large(1),
           "large4": _large(4), "flood": attack_flood, "malformed": attack_malformed, "slowloris": attack_slowloris,
           "bodies": attack_bodies, "login-flood": attack_login_flood, "wrong-passwords": attack_wrong_passwords}


def _tally(tally: Counter) -> str:
    return " ".join(f"{key}={value}" for key, value in sorted(tally.items()))


# -- one row per attack ------------------------------------------------------------------------------------

@dataclass
class Row:
    target: str
    attack: str
    echo_during: list[tuple[float, bool]]
    echo_after: list[tuple[float, bool]]
    store_s: float | None
    quiet_s: float
    peak_kib: int
    warm_kib: int
    lost: int
    health: list[tuple[float, int]] = field(default_factory=list)
    seen: str = ""

    def cells(self) -> str:
        store = f"{self.store_s:6.1f} s {self.store_s / self.quiet_s:5.2f}x" if self.store_s else "   failed      "
        health = ""
        if self.health:
            bad = sum(1 for _, status in self.health if status != 200)
            health = f" | healthz max {max(s for s, _ in self.health) * 1000:6.0f} ms, {bad} not 200"
        return (f"{self.target:8s} {self.attack:15s} {_echo_cell(self.echo_during)} | {_echo_cell(self.echo_after)} | "
                f"{store} | {self.peak_kib / 1024:5.0f} MB {(self.peak_kib - self.warm_kib) / 1024:+5.0f} | "
                f"{self.lost:4d} | {' '.join(self.misses()) or 'met'}{health}")

    def misses(self) -> list[str]:
        found = []
        echoes = self.echo_during + self.echo_after
        if not echoes or any(not ok or seconds > ECHO_TARGET_S for seconds, ok in echoes):
            found.append("echo")
        if not self.store_s or self.store_s > STORE_RATIO_TARGET * self.quiet_s:
            found.append("store")
        if self.peak_kib / 1024 >= RSS_LIMIT_MB or (self.peak_kib - self.warm_kib) / 1024 > RSS_GROWTH_MB:
            found.append("rss")
        if self.lost:
            found.append("lost")
        return found


def _echo_cell(echoes: list[tuple[float, bool]]) -> str:
    if not echoes:
        return f"{'-':>19s}"
    times = [seconds * 1000 for seconds, _ in echoes]
    failed = sum(1 for _, ok in echoes if not ok)
    return f"{statistics.median(times):5.0f}/{max(times):5.0f} ms {failed:2d}/{len(echoes):<3d}"


HEADER = (f"{'target':8s} {'attack':15s} {'C-ECHO during':>19s} | {'C-ECHO 1 s after':>19s} | "
          f"{'legit store':>15s} | {'peak RSS, vs warm':>15s} | {'lost':>4s} | misses")
UNITS = (f"{'':8s} {'':15s} {'median/max  fail/n':>19s} | {'median/max  fail/n':>19s} | "
         f"{'time  vs quiet':>15s} | {'':>15s} | {'':>4s} |")
TARGETS = (f"targets: C-ECHO within {ECHO_TARGET_S * 1000:.0f} ms during and after (none failed); store within "
           f"{STORE_RATIO_TARGET:.0f}x quiet; RSS total under {RSS_LIMIT_MB} MB and at most {RSS_GROWTH_MB} MB "
           f"over warm; lost 0")


def _load() -> str:
    """The machine's load average over the last minute, to read the figures beside (a shared host)."""
    return f"load {os.getloadavg()[0]:.2f}"


def legit_store(target: Target, files: list[Path]) -> float | None:
    """The legitimate study, recorded as acknowledged; its seconds, or None when not all were acknowledged."""
    seconds, done = store_files(target.port, target.called, files, 300)
    target.acknowledged |= {sop_uid(path) for path in done}
    return seconds if len(done) == len(files) else None


def run_attack(target: Target, name: str, scale: Scale, studies: Studies, sampler: RssSampler, quiet_s: float,
               warm_kib: int) -> Row:
    files = studies.fresh()
    if name in ("large1", "large4"):
        [studies.large(index, scale.large_mb) for index in range(1 if name == "large1" else 4)]
    sampler.take_peak()
    seen: list[str] = []
    attacker = threading.Thread(target=lambda: seen.append(_safely(ATTACKS[name], target, scale, studies)),
                                daemon=True)
    prober = Prober(target)
    attacker.start()
    prober.start()
    time.sleep(scale.ramp_s)  # the attack builds up before the study is sent (pacing, not synchronisation)
    store_s = legit_store(target, files)
    attacker.join(1800)
    prober.stop()
    time.sleep(1.0)  # "1 s after" the attack ended
    after = [echo_seconds(target.port, target.called) for _ in range(3)]
    if not target.alive():
        seen.append("TARGET DIED")
    return Row(target.name, name, prober.echoes, after, store_s, quiet_s, sampler.take_peak(), warm_kib,
               target.lost(), prober.health, " ".join(seen))


def _safely(attack, target: Target, scale: Scale, studies: Studies) -> str:
    try:
        return attack(target, scale, studies)
    except Exception as error:  # noqa: BLE001 - an attacker's failure is reported in its row, not fatal
        return f"attack error: {type(error).__name__}: {error}"


def settled_rss_kib(root: int, least_s: float = 12.0, most_s: float = 40.0) -> int:
    """The tree's RSS total once three samples 1 s apart are within 5 MB of each other, looked at after
    ``least_s`` (the node de-identifies a study early 2 s after it paused, its worker then starts in a few
    seconds) and at most ``most_s``."""
    started = time.monotonic()
    samples = [tree_rss_kib(root)]
    while time.monotonic() - started < most_s:
        time.sleep(1.0)
        samples.append(tree_rss_kib(root))
        settled = len(samples) >= 3 and max(samples[-3:]) - min(samples[-3:]) < 5 * 1024
        if settled and time.monotonic() - started >= least_s:
            break
    return samples[-1]


def baseline(target: Target, scale: Scale, studies: Studies, sampler: RssSampler) -> tuple[float, int]:
    """Quiet median store time and the warm RSS total after it, once the tree has settled: the quiet studies'
    processing starts the node's standing processes (its de-identification worker, about 80 MB), which belong to
    its warm total, not to the first attack's growth."""
    times = []
    for _ in range(scale.baseline_runs):
        seconds = legit_store(target, studies.fresh())
        if seconds is None:
            raise SystemExit(f"{target.name}: the quiet baseline store failed")
        times.append(seconds)
    echoes = [echo_seconds(target.port, target.called) for _ in range(3)]
    warm = settled_rss_kib(target.root_pid())
    sampler.take_peak()
    quiet = statistics.median(times)
    print(f"{target.name:8s} {'(quiet)':15s} {_echo_cell(echoes)} | {'':19s} | {quiet:6.1f} s {1:5.2f}x | "
          f"{warm / 1024:5.0f} MB (warm) | {target.lost():4d} |", flush=True)
    print(f"{'':24s} RSS/HWM MB, threads, CPU s per process, {_load()}: {memory_line(target.root_pid())}",
          flush=True)
    return quiet, warm


def start_with_retries(target: Target, attempts: int = 3) -> None:
    """Start the target, on fresh ports after a failed start: after a flood, a free port that the kernel still
    holds in TIME_WAIT for another address makes a server binding every interface (Orthanc) exit at once."""
    for attempt in range(1, attempts + 1):
        try:
            target.start()
            return
        except PeerStartError as error:
            print(f"{target.name}: start {attempt} of {attempts} failed: {error}", flush=True)
            for log in [*target.workdir.glob("*.log"), *target.workdir.glob("*.stderr")]:
                print("    " + "\n    ".join(log.read_text(errors="replace").splitlines()[-5:]), flush=True)
            target.stop()
            if attempt == attempts:
                raise


def run_target(target: Target, attacks: list[str], scale: Scale, studies: Studies) -> list[Row]:
    start_with_retries(target)
    sampler = RssSampler(target)
    sampler.start()
    rows = []
    try:
        quiet, warm = baseline(target, scale, studies, sampler)
        for name in attacks:
            if not target.alive():
                print(f"{target.name:8s} {name:15s} skipped: the target is no longer running", flush=True)
                continue
            row = run_attack(target, name, scale, studies, sampler, quiet, warm)
            rows.append(row)
            print(row.cells(), flush=True)
            print(f"{'':24s} attack saw: {row.seen}", flush=True)
            if target.alive():
                print(f"{'':24s} RSS/HWM MB, threads, CPU s per process, {_load()}: {memory_line(target.root_pid())}",
                      flush=True)
    finally:
        sampler.stop()
        target.stop()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short windows and fewer inputs (about 8 minutes)")
    parser.add_argument("--attacks", default=",".join(ALL_ATTACKS), help=f"comma-separated, of {','.join(ALL_ATTACKS)}")
    parser.add_argument("--targets", default="orthanc,storescp,gateway")
    parser.add_argument("--large-mb", type=int, default=400, help="size of the large instances")
    parser.add_argument("--legit-instances", type=int, default=LEGIT_INSTANCES,
                        help="instances in the legitimate study (its store time against the quiet one)")
    parser.add_argument("--attacker-nice", type=int, default=0,
                        help="nice value of the flood and sign-in attackers' threads (19: as if on another host)")
    args = parser.parse_args()
    ATTACKER_NICE[0] = args.attacker_nice
    attacks = [a for a in args.attacks.split(",") if a]
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        parser.error(f"unknown attack(s): {', '.join(unknown)}")
    scale = Scale.quick(args.large_mb) if args.quick else Scale(large_mb=args.large_mb)
    kinds = {"storescp": StorescpTarget, "orthanc": OrthancTarget, "gateway": GatewayTarget}
    print(TARGETS)
    print(HEADER)
    print(UNITS, flush=True)
    with tempfile.TemporaryDirectory(prefix="spinegw-hostile-", dir="/var/tmp") as tmp:
        studies = Studies(Path(tmp) / "studies", args.legit_instances)
        for name in args.targets.split(","):
            own = [a for a in attacks if name == "gateway" or a not in GATEWAY_ONLY]
            if own:
                run_target(kinds[name](Path(tmp) / name), own, scale, studies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
