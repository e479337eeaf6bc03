"""Migration 9 on a database of release 8: the ``health_probe`` table that /healthz and ``status`` write to prove
the database takes a write; existing rows are kept, and migrating again does nothing."""

from __future__ import annotations

import pytest

from gateway.ops.health import write_database_probe
from gateway.storage.models import SCHEMA_VERSION, HealthProbe, SchemaVersion, Study, migrate, open_database


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_version_8_database_gets_the_health_probe_table(database_url):
    database = open_database(database_url)
    with database.connection_context():
        Study.create(study_uid="1.2.3.7", calling_ae="PACS", state="received")
        database.drop_tables([HealthProbe])  # what release 8 left behind
        SchemaVersion.delete().where(SchemaVersion.version > 8).execute()
        assert "health_probe" not in database.get_tables()
    assert migrate(database) == SCHEMA_VERSION
    write_database_probe(database, "node:test")
    write_database_probe(database, "node:test")  # the same row again, not a second one
    with database.connection_context():
        assert [p.name for p in HealthProbe.select()] == ["node:test"]
        assert Study.select().count() == 1
    assert migrate(database) == SCHEMA_VERSION
    database.close()
