"""The node's memory measures reach its receiving processes, and an operator can find where memory is kept
(issue 28): a real node with one receiving process, SPINE_GATEWAY_TRACEMALLOC set in its environment."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from support.peers import GatewayProcess, wait_until

pytestmark = pytest.mark.slow


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _receiving_process(pid: int) -> int | None:
    for child in _children(pid):
        try:
            if b"gateway.scp.receiving_process" in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
        except OSError:
            continue
    return None


def test_the_arena_limit_reaches_the_receiving_processes_and_usr1_writes_the_allocation_sites(tmp_path,
                                                                                              monkeypatch):
    monkeypatch.setenv("SPINE_GATEWAY_TRACEMALLOC", "4")
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    node = GatewayProcess(tmp_path, f"sqlite:///{tmp_path}/gateway.db", node={"receiving_processes": 1})
    try:
        node.start(timeout=60)
        receiver = wait_until(lambda: _receiving_process(node.proc.pid), 30, "the receiving process")
        environ = Path(f"/proc/{receiver}/environ").read_bytes().split(b"\0")
        assert b"MALLOC_ARENA_MAX=2" in environ, "the node's children run with at most 2 arenas"
        stderr = tmp_path / "gateway.stderr"
        os.kill(node.proc.pid, signal.SIGUSR1)
        wait_until(lambda: "tracing started (4 frames)" in stderr.read_text(errors="replace"), 30,
                   "tracing to start")
        os.kill(node.proc.pid, signal.SIGUSR1)
        wait_until(lambda: "largest sites:" in stderr.read_text(errors="replace"), 60, "the allocation sites")
        assert f"tracemalloc pid {node.proc.pid}: traced" in stderr.read_text(errors="replace")
    finally:
        node.stop()
