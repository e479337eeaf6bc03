"""`spine-gateway release CASE`: the operator's way back for a quarantined or not-spine case."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from gateway.storage.models import AuditEvent, CaseState, Study, db, open_database

pytestmark = pytest.mark.slow  # runs the CLI in fresh processes, 5 s a test


@pytest.mark.parametrize("state", [CaseState.QUARANTINED, CaseState.REJECTED_NOT_SPINE])
def test_release_moves_the_case_back_to_complete(tmp_path, state):
    url = f"sqlite:///{tmp_path}/gateway.db"
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"storage": {"database": url, "spool_dir": str(tmp_path / "spool")},
                                      "logging": {"file": str(tmp_path / "log.jsonl")},
                                      "sources": [{"name": "st-marys", "ae_title": "STMARYS_PACS"}]}))
    open_database(url)
    with db.connection_context():
        released = Study.create(study_uid="1.2.3.4", calling_ae="STMARYS_PACS", state=state)
        busy = Study.create(study_uid="1.2.3.5", calling_ae="STMARYS_PACS", state=CaseState.DELIVERING)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "gateway", "--config", str(config), *args],
                              capture_output=True, text=True, timeout=60)

    ok = run("release", released.key)
    assert ok.returncode == 0, ok.stderr
    refused = run("release", busy.key)
    assert refused.returncode == 2 and "only a quarantined or rejected case" in refused.stderr
    assert "Traceback" not in refused.stderr
    unknown = run("release", "nope")
    assert unknown.returncode == 2 and "no case 'nope'" in unknown.stderr
    with db.connection_context():
        assert Study.get_by_id(released.id).state == CaseState.COMPLETE
        assert Study.get_by_id(busy.id).state == CaseState.DELIVERING
        assert AuditEvent.get(AuditEvent.study_key == released.key).action == "released"
