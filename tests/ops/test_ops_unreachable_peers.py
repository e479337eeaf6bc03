"""Peers down when the node starts: one warning per unreachable peer on the console, and none of pynetdicom's
own error lines (two or three per failed connection, at every health check)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hardening"))
from hardening_support import fast_extra, query  # noqa: E402
from support.peers import GatewayProcess, free_port, wait_until  # noqa: E402


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_one_warning_per_unreachable_peer_and_no_pynetdicom_lines_on_the_console(tmp_path, database_url):
    closed_ports = [free_port() for _ in range(3)]  # nothing listens on them
    node = GatewayProcess(
        tmp_path / "gw", database_url,
        sources=[{"name": "st-marys", "ae_title": "STMARYS_PACS",
                  "return": {"ae_title": "STMARYS_PACS", "host": "127.0.0.1", "port": closed_ports[0]}}],
        reviewers=[{"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": closed_ports[1]},
                   {"name": "dr-b", "ae_title": "REVIEW_B", "host": "127.0.0.1", "port": closed_ports[2]}],
        extra=fast_extra()).start()
    try:
        def checked_twice() -> bool:  # every peer checked again after its first (failed) check
            rows = query(database_url, "SELECT checked_at, changed_at FROM peer_health")
            return len(rows) == 3 and all(checked > changed for checked, changed in rows)
        wait_until(checked_twice, 60, "a second health check of every peer")
    finally:
        node.stop()

    console = (node.workdir / "gateway.stderr").read_text()
    events = [json.loads(line) for line in console.splitlines() if line.startswith("{")]
    down = sorted(e["peer"] for e in events if e["event"] == "peer_down")
    assert down == ["reviewer:dr-a", "reviewer:dr-b", "source:st-marys"], down
    assert not [e for e in events if e.get("logger", "").startswith("pynetdicom")]
    assert "Association request failed" not in console and "TCP Initialisation Error" not in console
    assert "Association request failed" not in node.log_file.read_text()
