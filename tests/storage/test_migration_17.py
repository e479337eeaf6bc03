"""Migration 17 on a database of release 15: the indexes of queries that read the whole history (purge's shared-file
check and its cut-off, status's cases with failures and SLA breaches); rows are kept, migrating again does nothing."""

from __future__ import annotations

import pytest

from gateway.storage.models import HISTORY_INDEXES, SCHEMA_VERSION, SchemaVersion, Study, migrate, open_database


def _indexes(database, table: str) -> set[str]:
    return {index.name for index in database.get_indexes(table)}


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_version_15_database_gets_the_history_indexes(database_url):
    database = open_database(database_url)
    with database.connection_context():
        Study.create(study_uid="1.2.3.17", calling_ae="PACS", state="received")
        for table, column in HISTORY_INDEXES:  # what release 15 left behind: no such index
            database.execute_sql(f'DROP INDEX "{table}_{column}"')
            assert f"{table}_{column}" not in _indexes(database, table)
        SchemaVersion.delete().where(SchemaVersion.version > 15).execute()
    assert migrate(database) == SCHEMA_VERSION
    with database.connection_context():
        for table, column in HISTORY_INDEXES:
            assert f"{table}_{column}" in _indexes(database, table)
        assert Study.select().count() == 1
    assert migrate(database) == SCHEMA_VERSION
    database.close()
