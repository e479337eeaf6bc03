"""The Makefile's user-facing targets: ``make install`` puts ``spine-gateway`` on PATH; ``make run`` says where the
CLI is before it starts the node. Run against the shared venv with its stamp taken as up to date (``-o``), so
nothing is installed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent


def _make(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", "-o", str(VENV / ".installed"), f"VENV={VENV}", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


def test_make_install_links_the_command_into_prefix_bin(tmp_path):
    done = _make("install", f"PREFIX={tmp_path}", env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    link = tmp_path / "bin" / "spine-gateway"
    assert link.resolve() == (VENV / "bin" / "spine-gateway").resolve()
    assert f"add {tmp_path}/bin to PATH" in done.stdout
    version = subprocess.run([str(link), "--version"], capture_output=True, text=True, timeout=120)
    assert version.stdout.startswith("spine-gateway ")


def test_make_run_says_where_the_cli_is(tmp_path):
    done = _make("-n", "run")
    assert f"the CLI is {VENV}/bin/spine-gateway" in done.stdout and "make install" in done.stdout
