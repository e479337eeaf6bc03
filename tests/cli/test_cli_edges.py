"""The command line's rough edges: one line and exit code 2 for a user's mistake or an outage, ``--config``
before or after the command, ``status --json`` keys as documented, the case key named ``case`` in every log
call, the ``retry`` of each leg."""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.cli.main import _parser
from gateway.ops.logs import LOG_KEYS
from gateway.ops.status import collect_status
from gateway.storage.models import CaseState, Study, db, open_database
from support.peers import free_port

pytestmark = pytest.mark.slow  # runs the CLI in fresh processes, 1.5-8 s a test

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, database: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"storage": {"database": database, "spool_dir": str(tmp_path / "spool")},
                                    "logging": {"file": str(tmp_path / "log.jsonl")},
                                    "sources": [{"name": "st-marys", "ae_title": "STMARYS_PACS"}]}))
    return path


def _run(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, cwd=cwd)


def _one_line_usage_error(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spine-gateway: "), result.stderr


@pytest.mark.parametrize("secret", ["not-hex-at-all", "abcd"])
@pytest.mark.parametrize("command", [["deid", "IN", "OUT"], ["serve"]])
def test_a_secret_that_is_not_usable_hex_is_one_line_and_exit_2(tmp_path, secret, command):
    config = _config(tmp_path, f"sqlite:///{tmp_path}/gw.db")
    (tmp_path / "IN").mkdir()
    args = [a if a not in ("IN", "OUT") else str(tmp_path / a) for a in command]
    if command == ["serve"]:
        args += ["--port", str(free_port())]
    result = _run("--config", str(config), *args, env={"SPINE_GATEWAY_SECRET": secret}, cwd=tmp_path)
    _one_line_usage_error(result)
    assert "SPINE_GATEWAY_SECRET" in result.stderr


OFFLINE_COMMANDS = [
    ["status"], ["status", "--json"], ["audit"], ["retry", "abc123"], ["release", "abc123"], ["purge", "--dry-run"],
    ["notes", "show", "abc123"], ["report", "create", "abc123", "--findings", "FINDINGS"],
]


@pytest.mark.parametrize("command", OFFLINE_COMMANDS, ids=[" ".join(c[:2]) for c in OFFLINE_COMMANDS])
def test_a_database_outage_is_one_line_and_exit_2(tmp_path, command):
    # A PostgreSQL server that is not there (a free loopback port): every command that needs the database.
    config = _config(tmp_path, f"postgresql://gw:gw@127.0.0.1:{free_port()}/gateway")
    findings = tmp_path / "findings.yaml"
    findings.write_text(yaml.safe_dump({"findings": [{"text": "Disc extrusion."}], "impressions": ["Extrusion."]}))
    args = [str(findings) if a == "FINDINGS" else a for a in command]
    _one_line_usage_error(_run(*args, "--config", str(config), cwd=tmp_path))


def test_config_is_accepted_before_or_after_every_command(tmp_path):
    config = _config(tmp_path, f"sqlite:///{tmp_path}/gw.db")
    before = _run("--config", str(config), "status", "--json")
    after = _run("status", "--json", "--config", str(config))
    assert before.returncode == after.returncode == 0, (before.stderr, after.stderr)
    assert yaml.safe_load(before.stdout)["cases_by_state"] == yaml.safe_load(after.stdout)["cases_by_state"] == {}
    assert _run("check-config", "--config", str(config)).returncode == 0
    missing = _run("status", "--config", str(tmp_path / "nowhere.yaml"))
    _one_line_usage_error(missing)

    def leaves(parser: argparse.ArgumentParser,
               path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
        found = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found += leaves(sub, (*path, name)) or [((*path, name), sub)]
        return found

    commands = leaves(_parser())
    assert len(commands) > 10
    for path, sub in commands:
        assert "--config" in sub._option_string_actions, f"{' '.join(path)} does not take --config"


def _documented_status_keys() -> set[str]:
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("### `spine-gateway status`", 1)[1].split("\n### ", 1)[0]
    keys: set[str] = set()
    for line in section.splitlines():
        if line.startswith("- "):
            head = line[2:].split(":", 1)[0]
            head = re.sub(r"\(also as (`\w+`)\)", r"\1", head)
            keys |= set(re.findall(r"`(\w+)`", head))
    return keys


def test_status_json_keys_are_the_documented_ones(tmp_path):
    open_database(f"sqlite:///{tmp_path}/gw.db")
    snapshot = collect_status(tmp_path)
    documented = _documented_status_keys()
    assert "needs_attention" in documented and "cases_by_state" in documented
    assert set(snapshot) == documented


def _log_calls_with_study_key() -> list[str]:
    found = []
    for path in (ROOT / "gateway").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("debug", "info", "warning", "error", "exception", "critical")
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "log"
                    and any(k.arg == "study" for k in node.keywords)):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_the_case_key_is_named_case_in_every_log_line():
    assert "case" in LOG_KEYS and "study" not in LOG_KEYS, "one name for the case key"
    assert _log_calls_with_study_key() == []


def test_retry_knows_which_leg_it_retries(tmp_path):
    url = f"sqlite:///{tmp_path}/gw.db"
    config = _config(tmp_path, url)
    open_database(url)
    with db.connection_context():
        study_leg = Study.create(study_uid="1.2.3.4", calling_ae="STMARYS_PACS", state=CaseState.FAILED,
                                 delivery_attempts=12, report_attempts=0)
        report_leg = Study.create(study_uid="1.2.3.5", calling_ae="STMARYS_PACS", state=CaseState.REPORT_FAILED,
                                  delivery_attempts=1, report_attempts=12)
        delivered = Study.create(study_uid="1.2.3.6", calling_ae="STMARYS_PACS", state=CaseState.DELIVERED)
    study_run = _run("retry", study_leg.key, "--config", str(config))
    report_run = _run("retry", report_leg.key, "--config", str(config))
    assert study_run.returncode == report_run.returncode == 0, (study_run.stderr, report_run.stderr)
    assert "reviewer" in study_run.stdout and "report" in report_run.stdout
    _one_line_usage_error(_run("retry", delivered.key, "--config", str(config)))
    with db.connection_context():
        study_leg, report_leg = Study.get_by_id(study_leg.id), Study.get_by_id(report_leg.id)
    assert (study_leg.state, study_leg.delivery_attempts, study_leg.state_reason) == (
        CaseState.DELIVERING, 0, "operator_retry")
    assert (report_leg.state, report_leg.report_attempts, report_leg.delivery_attempts) == (
        CaseState.REPORTED, 0, 1), "the report leg's counter starts over; the study leg's is untouched"


def test_demo_study_with_a_seed_is_another_patient(tmp_path):
    """``demo-study --seed N`` writes another patient's study (a second demo case needs no dcmodify); the same
    seed gives the same patient, seed 0 the default one."""
    import subprocess
    import sys

    import pydicom

    def patient_of(seed: int, out: str) -> tuple[str, str, str]:
        done = subprocess.run([sys.executable, "-m", "gateway", "demo-study", str(tmp_path / out), "--instances", "2",
                               "--seed", str(seed)], capture_output=True, text=True, timeout=120, check=True)
        assert done.stderr == "" and "patient" in done.stdout
        ds = pydicom.dcmread(sorted((tmp_path / out).iterdir())[0])
        return str(ds.PatientName), str(ds.PatientID), str(ds.AccessionNumber)

    default, seeded, again = patient_of(0, "a"), patient_of(7, "b"), patient_of(7, "c")
    assert default == ("DOE^JANE^MARIE", "MRN0012345", "A1234567")
    assert seeded == again and all(x != y for x, y in zip(default, seeded))
