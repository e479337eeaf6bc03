"""The test peers leave no process behind when they fail to come up (a deadline missed under load left
orphaned gateways running for the rest of the suite)."""

from __future__ import annotations

import os

import pytest

from support.peers import GatewayProcess, PeerStartError

pytestmark = pytest.mark.slow


def test_a_gateway_that_misses_its_start_deadline_is_stopped_by_its_pid(tmp_path):
    gateway = GatewayProcess(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}")
    with pytest.raises(PeerStartError):
        gateway.start(timeout=0.05)
    assert gateway.proc is None
    started = [pid for pid in os.listdir("/proc") if pid.isdigit() and _runs_config(pid, gateway.config_path)]
    assert started == []


def _runs_config(pid: str, config_path) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return str(config_path).encode() in cmdline.read()
    except OSError:
        return False
