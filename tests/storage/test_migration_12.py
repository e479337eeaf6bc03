"""Migration 12 on a database of release 10: the ``commitment_request`` table of Storage Commitment and the delivery
ledger's commitment columns; existing rows are kept, migrating again does nothing, and a step missing below the
highest applied number is still applied (branches merged out of order: a database at 12 before 11 existed)."""

from __future__ import annotations

import pytest

from gateway.storage.models import (
    SCHEMA_VERSION,
    CommitmentRequest,
    HealthProbe,
    SchemaVersion,
    Study,
    migrate,
    open_database,
)

NEW_LEDGER_COLUMNS = ("commitment_uid", "commitment_requested_at", "committed_at")


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_version_10_database_gets_the_commitment_request_table(database_url):
    database = open_database(database_url)
    with database.connection_context():
        Study.create(study_uid="1.2.3.12", calling_ae="PACS", state="received")
        database.drop_tables([CommitmentRequest])  # what release 10 left behind: no table, no ledger columns
        database.execute_sql('DROP INDEX IF EXISTS "delivery_commitment_uid"')
        database.execute_sql('DROP INDEX IF EXISTS "delivery_awaiting_commit"')  # migration 18's, on these columns
        for column in NEW_LEDGER_COLUMNS:
            database.execute_sql(f'ALTER TABLE "delivery" DROP COLUMN "{column}"')
        SchemaVersion.delete().where(SchemaVersion.version > 10).execute()
        assert "commitment_request" not in database.get_tables()
    assert migrate(database) == SCHEMA_VERSION
    with database.connection_context():
        CommitmentRequest.create(source="st-marys", calling_ae="PACS", transaction_uid="2.25.1", sop_references="[]")
        assert Study.select().count() == 1
        assert CommitmentRequest.get().state == "pending"
        types = {column.name: column.data_type for column in database.get_columns("delivery")}
        assert set(NEW_LEDGER_COLUMNS) <= set(types)
        # the added timestamps are the type create_tables gives a DateTimeField (sent_at was never dropped)
        assert types["commitment_requested_at"] == types["committed_at"] == types["sent_at"]
    assert migrate(database) == SCHEMA_VERSION
    with database.connection_context():
        assert CommitmentRequest.select().count() == 1
    database.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_step_missing_below_the_highest_applied_is_applied(database_url):
    database = open_database(database_url)
    with database.connection_context():
        database.drop_tables([HealthProbe])
        SchemaVersion.delete().where(SchemaVersion.version == 9).execute()  # 10 and 12 stay applied
    assert migrate(database) == SCHEMA_VERSION
    with database.connection_context():
        assert "health_probe" in database.get_tables()
        assert 9 in {row.version for row in SchemaVersion.select()}
    database.close()
