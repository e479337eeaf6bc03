"""Nodes starting at once on one database, cheaply: processes that each run a node's first steps on the database
(``open_database``: the migrations; ``sync_sources``: the rows written from the configuration), the calls
``GatewayNode.start`` makes, through the real code, all let go at the same moment.

A full node takes seconds to start (DICOM, HTTP, the notes scrubber's model); these take a fraction of one, so
the race at start-up can be run many times. Run as a script, this file is one such process:

    python tests/support/startup.py CONFIG_YAML

It imports its code, says ``ready`` on stdout, waits for a line on stdin (the go, given to all at once), then
exits 0 when the start-up went through; otherwise 1, with the line ``spine-gateway`` would print on stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

TESTS = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class StartResult:
    returncode: int
    stderr: str


def write_config(path: Path, database_url: str, sources: list[dict]) -> Path:
    """The part of a node's configuration its start-up on the database reads."""
    path.write_text(yaml.safe_dump({
        "storage": {"database": database_url, "spool_dir": str(path.parent / "spool")},
        "sources": sources,
        "reviewers": [{"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": 4243}],
    }, sort_keys=False))
    return path


def start_at_once(config_paths: list[Path], *, timeout: float = 120) -> list[StartResult]:
    """One start-up process per configuration, let go together once all have imported their code; their results.
    Every process is waited for (and killed by its PID if it outlives ``timeout``)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(TESTS)]))}
    procs = []
    try:
        for path in config_paths:
            procs.append(subprocess.Popen([sys.executable, __file__, str(path)], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
        for proc in procs:
            proc.stdout.readline()  # "ready" (or nothing: it failed before, and says why on stderr)
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            _, stderr = proc.communicate(timeout=timeout)
            results.append(StartResult(proc.returncode, stderr.strip()))
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def _start_up(config_path: str) -> int:
    from gateway.config import load_config
    from gateway.storage.models import open_database, sync_sources

    config = load_config(Path(config_path))
    try:
        from gateway.cli.common import database_failure
    except ImportError:  # a checkout before issue 29 (bench/start_together.py runs any checkout's code)
        def database_failure(exc: BaseException) -> str:
            return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        open_database(config.storage.database, max_connections=2)
        sync_sources([(s.name, s.ae_title) for s in config.sources])
    except Exception as exc:  # noqa: BLE001 - reported as the CLI reports it
        print(f"spine-gateway: {database_failure(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_start_up(sys.argv[1]))
