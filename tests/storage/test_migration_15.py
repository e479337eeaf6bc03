"""Migration 15 on a database without it: the ``critical_result`` and ``critical_notice`` tables of critical
results; existing rows are kept and migrating again does nothing."""

from __future__ import annotations

import pytest

from gateway.storage.models import (
    SCHEMA_VERSION,
    CriticalNotice,
    CriticalResult,
    SchemaVersion,
    Study,
    migrate,
    open_database,
)


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_database_before_15_gets_the_critical_result_tables(database_url):
    database = open_database(database_url)
    with database.connection_context():
        study = Study.create(study_uid="1.2.3.15", calling_ae="PACS", state="reported")
        database.drop_tables([CriticalNotice, CriticalResult])
        SchemaVersion.delete().where(SchemaVersion.version == 15).execute()
        assert "critical_result" not in database.get_tables()
    assert migrate(database) == SCHEMA_VERSION
    with database.connection_context():
        critical = CriticalResult.create(study=study, contact="on-call surgeon", flagged_by="web:dr-a")
        CriticalNotice.create(critical=critical, channel="email", target="radiology@example.org")
        assert Study.select().count() == 1 and CriticalNotice.get().state == "pending"
    assert migrate(database) == SCHEMA_VERSION
    with database.connection_context():
        assert CriticalResult.select().count() == 1 and 15 in {row.version for row in SchemaVersion.select()}
    database.close()
