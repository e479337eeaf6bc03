"""``spine-gateway echo <peer>`` of a configured peer updates its health as the node's own check does: a reviewer
marked down that answers again is marked up (issue 27: the echo succeeded, the state stayed 'failed')."""

from __future__ import annotations

import subprocess
import sys

import yaml

from gateway.storage.models import PeerHealth, open_database
from support.peers import DcmtkStoreSCP


def test_a_successful_echo_marks_the_reviewer_up(tmp_path):
    reviewer = DcmtkStoreSCP(tmp_path / "reviewer", "REVIEW_A")
    reviewer.start()
    try:
        config = tmp_path / "gateway.yaml"
        config.write_text(yaml.safe_dump({
            "storage": {"database": f"sqlite:///{tmp_path}/gw.db", "spool_dir": str(tmp_path / "spool")},
            "logging": {"file": str(tmp_path / "routing.jsonl")},
            "sources": [{"name": "st-marys", "ae_title": "HOSP_PACS"}],
            "reviewers": [{"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": reviewer.port}]}))
        database = open_database(f"sqlite:///{tmp_path}/gw.db")
        with database.connection_context():
            PeerHealth.create(name="reviewer:dr-a", ok=False, detail="no association")
        database.close()
        done = subprocess.run([sys.executable, "-m", "gateway", "--config", str(config), "echo", "dr-a"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stderr == "", done.stderr
        database = open_database(f"sqlite:///{tmp_path}/gw.db")
        with database.connection_context():
            row = PeerHealth.get(PeerHealth.name == "reviewer:dr-a")
            assert row.ok and "success" in row.detail.lower()
        database.close()
    finally:
        reviewer.stop()
