"""`spine-gateway status --accession A` / `--referral N`: one accession's or referral's cases, by the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from gateway.storage.models import Referral, Source, Study, StudyMatchKeys, db, open_database, sync_sources

pytestmark = pytest.mark.slow  # runs the CLI in fresh processes: 12 s


def test_lookup_by_accession_and_referral(tmp_path):
    url = f"sqlite:///{tmp_path}/gateway.db"
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"storage": {"database": url, "spool_dir": str(tmp_path / "spool")},
                                      "logging": {"file": str(tmp_path / "log.jsonl")},
                                      "sources": [{"name": "st-marys", "ae_title": "STMARYS_PACS"}]}))
    open_database(url)
    with db.connection_context():
        sync_sources([("st-marys", "STMARYS_PACS")])
        source = Source.get(Source.name == "st-marys")
        study = Study.create(study_uid="1.2.3.4", calling_ae="STMARYS_PACS", source=source, state="quarantined",
                             state_reason="notes_leak image:" + "Sequence[0]." * 8 + "TextValue (person_name)")
        StudyMatchKeys.create(study=study.id, accession_number="ACC-1", patient_id="P1", study_date="20261201")
        matched = Referral.create(source=source, accession_number="ACC-1", patient_id="P1", document="{}",
                                  received_via="cli", state="matched", study=study.id)
        waiting = Referral.create(source=source, accession_number="ACC-2", patient_id="P2", document="{}",
                                  received_via="http")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "gateway", "--config", str(config), "status", *args],
                              capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "250"})

    by_accession = json.loads(run("--accession", "ACC-1", "--json").stdout)["cases"]
    assert [(e["case"], e["state"], e["reason"], e["source"], e["referral"]["id"]) for e in by_accession] == [
        (study.key, "quarantined", study.state_reason, "st-marys", matched.id)]
    assert len(by_accession[0]["reason"]) > 64, "the reason whole"
    by_referral = json.loads(run("--referral", str(matched.id), "--json").stdout)["cases"]
    assert [e["case"] for e in by_referral] == [study.key]
    waits = json.loads(run("--referral", str(waiting.id), "--json").stdout)["cases"]
    assert [(e["case"], e["accession_number"], e["referral"]["state"]) for e in waits] == [(None, "ACC-2", "waiting")]
    table = run("--accession", "ACC-2")
    assert table.returncode == 0 and "waiting for its images" in table.stdout and "ACC-2" in table.stdout
    none = run("--accession", "NOPE")
    assert none.returncode == 1 and none.stderr.strip() == "spine-gateway: no case or referral for accession NOPE"
    both = run("--accession", "ACC-1", "--referral", "1")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr and "Traceback" not in both.stderr
