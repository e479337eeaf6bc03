"""Any number of nodes may start at once, on a fresh database or an old one; a start-up that fails anyway says
what failed.

Before issue 29, three nodes starting at once on a fresh PostgreSQL database failed in 14 of 20 rounds
(``bench/start_together.py``): ``schema_version`` was created before the advisory lock was taken, and the source
rows with a get-or-create race. The rounds here run a node's start-up on the database (``support/startup.py``:
the migrations and the source rows, through the calls ``GatewayNode.start`` makes) in three processes let go
together; ``test_multinode.py`` starts three whole nodes at once.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import peewee
import pytest

from gateway.cli.common import database_failure
from gateway.storage import models
from gateway.storage.models import SCHEMA_VERSION, make_database
from support.peers import free_port
from support.startup import start_at_once, write_config

SOURCES = [{"name": "st-marys", "ae_title": "STMARYS_PACS"}, {"name": "city-imaging", "ae_title": "CITY_PACS"}]
ROUNDS = 20
NODES = 3


def _schema_and_sources(url: str) -> tuple[list[int], list[tuple[str, str]]]:
    database = make_database(url, max_connections=1)
    with database.connection_context():
        versions = [v for (v,) in database.execute_sql("SELECT version FROM schema_version ORDER BY version")]
        sources = [tuple(r) for r in database.execute_sql("SELECT name, ae_title FROM source ORDER BY name")]
    database.close_all()
    return versions, sources


def _round(tmp_path, url: str, label: str) -> list[str]:
    """Three start-ups at once on ``url``; the failures' messages (none, when all went through)."""
    configs = []
    for n in range(NODES):
        (tmp_path / label / f"node{n}").mkdir(parents=True)
        configs.append(write_config(tmp_path / label / f"node{n}" / "gateway.yaml", url, SOURCES))
    return [r.stderr for r in start_at_once(configs) if r.returncode != 0]


def _assert_started(url: str) -> None:
    versions, sources = _schema_and_sources(url)
    assert versions == list(range(1, SCHEMA_VERSION + 1)), "every migration applied once"
    assert sources == sorted((s["name"], s["ae_title"]) for s in SOURCES), "every source row once"


def test_three_nodes_start_at_once_on_a_fresh_postgresql_database_20_times(tmp_path, pg_cluster):
    failures = {}
    for run in range(ROUNDS):
        url = pg_cluster.new_database()
        failed = _round(tmp_path, url, f"run{run}")
        if failed:
            failures[run] = failed
        else:
            _assert_started(url)
    assert failures == {}, f"{len(failures)} of {ROUNDS} rounds had a start-up fail: {failures}"


def test_three_nodes_start_at_once_on_an_old_postgresql_database(tmp_path, pg_cluster, monkeypatch):
    url = pg_cluster.new_database()
    database = make_database(url, max_connections=1)
    models.db.initialize(database)
    monkeypatch.setattr(models, "MIGRATIONS", models.MIGRATIONS[:5])  # a database a node of version 5 made
    assert models.migrate(database) == 5
    database.close_all()
    assert _round(tmp_path, url, "old") == []
    _assert_started(url)


def test_three_nodes_start_at_once_on_a_fresh_sqlite_database(tmp_path):
    for run in range(5):
        url = f"sqlite:///{tmp_path}/run{run}.db"
        assert _round(tmp_path, url, f"run{run}") == []
        _assert_started(url)


def test_a_start_up_the_database_refuses_names_the_real_cause(tmp_path):
    """A statement refused at start-up is not "the database is unavailable ... check that the server is running"
    (what an IntegrityError said before issue 29): the line names the error and what the database said."""
    database = tmp_path / "gw.db"
    with sqlite3.connect(database) as connection:  # a source table another program made, refusing our source
        connection.execute("CREATE TABLE source (id INTEGER PRIMARY KEY, name VARCHAR(64) NOT NULL UNIQUE, "
                           "ae_title VARCHAR(16) NOT NULL, created_at DATETIME, CHECK (name <> 'st-marys'))")
    config = write_config(tmp_path / "gateway.yaml", f"sqlite:///{database}", SOURCES)
    result = subprocess.run([sys.executable, "-m", "gateway", "--config", str(config), "serve", "--port",
                             str(free_port())], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == ["spine-gateway: the database refused a statement (IntegrityError: CHECK constraint failed: "
                     "name <> 'st-marys')"], result.stderr


@pytest.mark.parametrize(("error", "expected"), [
    (peewee.IntegrityError('duplicate key value violates unique constraint "pg_type_typname_nsp_index"\n'
                           'DETAIL:  Key (typname, typnamespace)=(schema_version, 2200) already exists.'),
     'the database refused a statement (IntegrityError: duplicate key value violates unique constraint '
     '"pg_type_typname_nsp_index")'),
    (peewee.OperationalError('connection to server at "127.0.0.1", port 1 failed: Connection refused'),
     'the database is unavailable (OperationalError: connection to server at "127.0.0.1", port 1 failed: '
     'Connection refused); check storage.database and that the database server is running'),
    (peewee.OperationalError("database is locked"), "a database operation failed (OperationalError: database is "
                                                    "locked)"),
    (peewee.InterfaceError("connection already closed"), "the database is unavailable (InterfaceError: connection "
                                                         "already closed); check storage.database and that the "
                                                         "database server is running"),
])
def test_each_database_failure_is_named_as_it_is(error, expected):
    assert database_failure(error) == expected
