"""Real peers for the tests: the gateway itself, DCMTK storescp, Orthanc and PostgreSQL, each a process
started on a free loopback port, waited for with a bounded deadline (never a bare sleep), and stopped by PID."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DCMTK = Path("/usr/bin")
ORTHANC = Path("/usr/sbin/Orthanc")
PG_BIN = Path("/usr/lib/postgresql/15/bin")
NODELAY_ENV = {"TCP_NODELAY": "1"}


class PeerStartError(RuntimeError):
    """A peer did not come up before its deadline; the message says what to look at."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise PeerStartError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextmanager
def stopped_unless_up(stop: Callable[[], None]) -> Iterator[None]:
    """Stop a peer's process (``stop``, by its PID) when it does not come up: a test whose peer failed to start
    leaves no process behind."""
    try:
        yield
    except BaseException:
        stop()
        raise


def echo_ok(host: str, port: int, calling: str, called: str, timeout: float = 3.0,
            extra_args: list[str] | None = None) -> bool:
    """One C-ECHO with DCMTK's echoscu (``extra_args``: e.g. its TLS options): True on success."""
    result = subprocess.run(
        [str(DCMTK / "echoscu"), "-aet", calling, "-aec", called, "-to", str(int(timeout)), *(extra_args or []),
         host, str(port)],
        capture_output=True, env={**os.environ, **NODELAY_ENV}, timeout=timeout + 5)
    return result.returncode == 0


def child_pids(parent: int, command_contains: bytes) -> list[int]:
    """Live (not zombie) children of ``parent`` whose command line contains ``command_contains``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == parent and state != "Z" and command_contains in cmdline:
            pids.append(int(entry.name))
    return pids


def stop_process(proc: subprocess.Popen, timeout: float = 15.0, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


class GatewayProcess:
    """``spine-gateway serve`` as a subprocess on a free port, with a config written to ``workdir``."""

    def __init__(self, workdir: Path, database_url: str, *, sources: list[dict] | None = None,
                 reviewers: list[dict] | None = None, node: dict | None = None, storage: dict | None = None,
                 extra: dict | None = None, probe_args: list[str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.probe_args = probe_args or []  # echoscu's options for the start probe (a TLS port: its +tls ...)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.http_port = free_port()
        self.ae_title = "SPINEGW"
        self.spool_dir = Path((storage or {}).get("spool_dir", self.workdir / "spool"))
        self.log_file = self.workdir / "log" / "routing.jsonl"
        self.config: dict[str, Any] = {
            "node": {"ae_title": self.ae_title, "host": "127.0.0.1", "port": self.port, **(node or {})},
            "storage": {"spool_dir": str(self.spool_dir), "database": database_url, "min_free_bytes": 0,
                        **(storage or {})},
            "logging": {"file": str(self.log_file), "level": "info"},
            "http": {"host": "127.0.0.1", "port": self.http_port},
            "sources": sources if sources is not None else [{"name": "st-marys", "ae_title": "STMARYS_PACS"}],
            "reviewers": reviewers if reviewers is not None else [
                {"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": 4243}],
            **(extra or {}),
        }
        self.config_path = self.workdir / "gateway.yaml"
        self.proc: subprocess.Popen | None = None

    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def start(self, timeout: float = 60.0) -> GatewayProcess:
        self.write_config()
        started_before = self._started_events()
        env = {**os.environ, "SPINE_GATEWAY_LOG_STRICT": "1", "PYTHONUNBUFFERED": "1"}
        self.stderr = open(self.workdir / "gateway.stderr", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--config", str(self.config_path), "serve"],
            cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=self.stderr, env=env)
        calling = self.config["sources"][0]["ae_title"] if self.config["sources"] else "REVIEW_A"

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise PeerStartError(f"gateway exited with {self.proc.returncode}; see {self.workdir}/gateway.stderr")
            return echo_ok("127.0.0.1", self.port, calling, self.ae_title, timeout=2, extra_args=self.probe_args)

        with stopped_unless_up(self.stop):
            wait_until(ready, timeout, f"the gateway to answer C-ECHO on port {self.port}", interval=0.1)
            if self._logs_to_file():  # the DICOM port answers before the stages and wake-ups have started
                wait_until(lambda: self._started_events() > started_before, timeout,
                           "the gateway's gateway_started", interval=0.05)
        return self

    def _logs_to_file(self) -> bool:
        logging = self.config.get("logging") or {}
        return logging.get("file") == str(self.log_file) and logging.get("level", "info") in ("debug", "info")

    def _started_events(self) -> int:
        if not self.log_file.exists():
            return 0
        return sum(1 for line in self.log_file.read_text(errors="replace").splitlines()
                   if '"gateway_started"' in line)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
            self.stderr.close()

    def kill(self) -> None:
        """kill -9: no clean-up of any kind."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None
            self.stderr.close()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "gateway", "--config", str(self.config_path), *args],
                              cwd=self.workdir, capture_output=True, text=True, check=check, timeout=120)

    def status(self) -> dict:
        return json.loads(self.cli("status", "--json").stdout)

    def add_referral(self, patient, path: Path, source: str = "st-marys") -> None:
        """A routine referral of ``patient`` (a ``gateway.demo.DemoPatient``) by ``source``, written to ``path`` and
        added with ``referral add``."""
        path.write_text(json.dumps({
            "source": source, "accession_number": patient.accession, "urgency": "routine",
            "patient": {"id": patient.patient_id, "name": patient.name, "birth_date": "1971-04-12"},
            "referrer": {"name": "Dr Alan Smith"},
            "clinical": {"history": "Low back pain for 10 weeks.", "question": "L4-L5 disc herniation?"}}))
        self.cli("referral", "add", str(path))

    def log_events(self) -> list[dict]:
        if not self.log_file.exists():
            return []
        # Only whole lines: the node may be half-way through writing the last one.
        complete = self.log_file.read_text().rpartition("\n")[0]
        return [json.loads(line) for line in complete.splitlines() if line.strip()]


def storescu(host: str, port: int, paths: list[Path] | Path, *, calling: str, called: str = "SPINEGW",
             extra_args: list[str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """DCMTK's storescu (by absolute path: pynetdicom installs a script of the same name)."""
    paths = [paths] if isinstance(paths, Path) else paths
    args = [str(DCMTK / "storescu"), "-aet", calling, "-aec", called, "+sd", "-nh", *(extra_args or []),
            host, str(port), *map(str, paths)]
    return subprocess.run(args, capture_output=True, text=True, env={**os.environ, **NODELAY_ENV}, timeout=timeout)


class DcmtkStoreSCP:
    """DCMTK storescp writing what it receives into ``out_dir``."""

    def __init__(self, workdir: Path, ae_title: str = "STORESCP", extra_args: list[str] | None = None,
                 probe_args: list[str] | None = None) -> None:
        self.out_dir = Path(workdir) / "received"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.ae_title = ae_title
        self.port = free_port()
        self.extra_args = extra_args or []
        self.probe_args = probe_args or []  # echoscu's options for the start probe (TLS: its own +tls ...)
        self.log_path = Path(workdir) / "storescp.log"
        self.proc: subprocess.Popen | None = None

    def log_text(self) -> str:
        """What storescp printed (with ``-v`` in ``extra_args``: every association and its calling AE)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> DcmtkStoreSCP:
        """Start storescp; if it exits at once (its port was taken between choosing and binding it, as under
        a busy suite), again on another free port, three times at most."""
        for _ in range(3):
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [str(DCMTK / "storescp"), "-aet", self.ae_title, "-od", str(self.out_dir), *self.extra_args,
                     str(self.port)],
                    stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **NODELAY_ENV})
            proc = self.proc
            with stopped_unless_up(self.stop):
                wait_until(lambda proc=proc: proc.poll() is not None
                           or echo_ok("127.0.0.1", self.port, "PROBE", self.ae_title,
                                      extra_args=self.probe_args), 20, "storescp")
            if proc.poll() is None:
                return self
            self.proc = None
            self.port = free_port()
        raise PeerStartError("storescp exited at start three times")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


class Orthanc:
    """An Orthanc process of our own (never the system service), HTTP and DICOM on free loopback ports."""

    def __init__(self, workdir: Path, ae_title: str, modalities: dict[str, list] | None = None,
                 extra: dict | None = None) -> None:
        self.extra = extra or {}  # more of Orthanc's configuration (e.g. LuaScripts, DicomAlwaysAllowFind)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ae_title = ae_title
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.modalities = modalities or {}
        self.proc: subprocess.Popen | None = None

    def start(self) -> Orthanc:
        config = {
            "Name": f"test-{self.ae_title}",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomModalities": self.modalities,
            "Plugins": [],
            "StableAge": 1,
            "DicomScpTimeout": 30,
            "UnknownSopClassAccepted": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            **self.extra,
        }
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(config))
        self.log = open(self.workdir / "orthanc.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([str(ORTHANC), str(config_path)], stdout=self.log, stderr=self.log,
                                     env={**os.environ, **NODELAY_ENV}, cwd=self.workdir)
        with stopped_unless_up(self.stop):
            wait_until(self._http_up, 60, f"Orthanc HTTP on port {self.http_port} (see {self.workdir}/orthanc.log)")
        return self

    def _http_up(self) -> bool:
        if self.proc.poll() is not None:
            raise PeerStartError(f"Orthanc exited with {self.proc.returncode}; see {self.workdir}/orthanc.log")
        try:
            self.get("/system")
            return True
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url(path), timeout=30) as rsp:
            body = rsp.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def post(self, path: str, data: bytes | dict | list, timeout: float = 300) -> Any:
        body = data if isinstance(data, bytes) else json.dumps(data).encode()
        req = urllib.request.Request(self.url(path), data=body, method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as rsp:
            out = rsp.read()
        return json.loads(out) if out[:1] in (b"{", b"[") else out

    def upload(self, paths: list[Path]) -> list[dict]:
        """POST each file to /instances; returns Orthanc's answers (ID, ParentStudy, ...)."""
        return [self.post("/instances", Path(p).read_bytes()) for p in paths]

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=30)
            self.proc = None
            self.log.close()


class PostgresCluster:
    """A throwaway PostgreSQL 15 cluster in a temp dir, run as the ``postgres`` user when we are root."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="spinegw-pg-"))
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self._as_postgres = os.geteuid() == 0
        self._counter = 0

    def _run_as(self, args: list[str], **kwargs: Any) -> Any:
        # setpriv execs (runuser forks and would not pass our signals on), so the PID we hold is postgres's own.
        prefix = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"] if self._as_postgres else []
        return prefix + args, kwargs

    def start(self) -> PostgresCluster:
        if self._as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        data = self.dir / "data"
        args, _ = self._run_as([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                                "--no-sync", "-E", "UTF8"])
        subprocess.run(args, check=True, capture_output=True, timeout=120)
        self._launch()
        return self

    def _launch(self) -> None:
        args, _ = self._run_as([str(PG_BIN / "postgres"), "-D", str(self.dir / "data"), "-p", str(self.port),
                                "-h", "127.0.0.1", "-k", str(self.dir), "-c", "fsync=on",
                                "-c", "max_connections=200"])
        self.log = open(self.dir / "postgres.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=self.log)
        with stopped_unless_up(self.stop_server):
            wait_until(self._accepting, 60, f"PostgreSQL on port {self.port} (see {self.dir}/postgres.log)")

    def _accepting(self) -> bool:
        if self.proc.poll() is not None:
            raise PeerStartError(f"postgres exited with {self.proc.returncode}; see {self.dir}/postgres.log")
        return subprocess.run([str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                              capture_output=True).returncode == 0

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database,
                                 "-Atc", sql], capture_output=True, text=True, check=True, timeout=60)
        return result.stdout

    def new_database(self) -> str:
        """A fresh empty database on this cluster; returns its URL."""
        self._counter += 1
        name = f"gw_{os.getpid()}_{self._counter}"
        self.psql(f"CREATE DATABASE {name}")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop_server(self) -> None:
        """Stop the server but keep the cluster (to test the database going away)."""
        if self.proc is not None:
            stop_process(self.proc, sig=signal.SIGINT, timeout=30)
            self.proc = None
            self.log.close()

    def restart_server(self) -> None:
        self._launch()

    def destroy(self) -> None:
        self.stop_server()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def started(peer):
    """``peer`` started for the block and stopped after it, also when its start or the block fails."""
    try:
        peer.start()
        yield peer
    finally:
        peer.stop()
