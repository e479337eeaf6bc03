"""The listing commands (``user list``, ``dicomweb token list``): one line a row, or the rows as JSON, printed by
one printer (:func:`gateway.cli.common.print_listing`). Run in-process on a database the test opens."""

from __future__ import annotations

import argparse
import json

import pytest

from gateway.accounts import tokens
from gateway.accounts.users import add_user, disable_user
from gateway.cli import dicomweb as dicomweb_commands
from gateway.cli import users as user_commands
from gateway.config import GatewayConfig
from gateway.storage.models import db, open_database

CONFIG = GatewayConfig.model_validate({
    "sources": [{"name": "st-marys", "ae_title": "HOSP_PACS"}],
    "reviewers": [{"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": 4243}]})


@pytest.fixture
def database(tmp_path, monkeypatch):
    database = open_database(f"sqlite:///{tmp_path}/gw.db", max_connections=2)
    for commands in (user_commands, dicomweb_commands):
        monkeypatch.setattr(commands, "_open", lambda config: None)  # the test's database is open already
    yield database
    database.close_all()


def test_user_list_prints_one_aligned_line_an_account_or_json(database, capsys):
    with db.connection_context():
        add_user(CONFIG, "desk", "referrer", "long enough password", source="st-marys")
        add_user(CONFIG, "ann", "reviewer", "long enough password", reviewer="dr-a")
        disable_user("desk")
    assert user_commands.cmd_user_list(argparse.Namespace(json=False), CONFIG) == 0
    assert capsys.readouterr().out == (
        f"{'ann':24} {'reviewer':9} {'dr-a':20} {'enabled':9} last login never\n"
        f"{'desk':24} {'referrer':9} {'st-marys':20} {'disabled':9} last login never\n")
    assert user_commands.cmd_user_list(argparse.Namespace(json=True), CONFIG) == 0
    out = capsys.readouterr().out
    assert out.startswith("[\n  {\n    \"name\": \"ann\",")
    assert json.loads(out) == [
        {"name": "ann", "role": "reviewer", "source": None, "reviewer": "dr-a", "enabled": True,
         "last_login_at": None},
        {"name": "desk", "role": "referrer", "source": "st-marys", "reviewer": None, "enabled": False,
         "last_login_at": None}]


def test_token_list_prints_one_line_a_token_never_its_secret(database, capsys):
    with db.connection_context():
        first = tokens.issue(CONFIG, "dr-a", "home workstation", issued_by="alice")
        second = tokens.issue(CONFIG, "dr-a")
        tokens.revoke(second.partition(".")[0])
        live, revoked = tokens.listed()
    assert dicomweb_commands.cmd_token_list(argparse.Namespace(json=False, reviewer=None), CONFIG) == 0
    out = capsys.readouterr().out
    assert out == (
        f"{live.token_id}  {'dr-a':20} {'live':28} issued {live.issued_at} by {'alice':12} last used never  "
        "home workstation\n"
        f"{revoked.token_id}  {'dr-a':20} {'revoked ' + str(revoked.revoked_at):28} issued {revoked.issued_at} "
        f"by {'-':12} last used never  \n")
    assert first.partition(".")[2] not in out and second.partition(".")[2] not in out
    assert dicomweb_commands.cmd_token_list(argparse.Namespace(json=True, reviewer="dr-a"), CONFIG) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [row["token_id"] for row in listed] == [live.token_id, revoked.token_id]
    assert listed[1]["revoked_at"] == revoked.revoked_at
