"""Migration 7 on a database of release 6: ``study_match_keys`` is created, ``study.state_reason`` and
``audit_event.detail`` take a reason of any length (PostgreSQL enforced 64 and 255), and rows are kept."""

from __future__ import annotations

import pytest

from gateway.storage.models import (
    SCHEMA_VERSION,
    AuditEvent,
    SchemaVersion,
    Study,
    StudyMatchKeys,
    migrate,
    open_database,
)

LONG_REASON = "notes_leak image:" + "ContentSequence[0]." * 6 + "TextValue (person_name)"


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_version_6_database_upgrades_to_match_keys_and_whole_reasons(database_url):
    database = open_database(database_url)
    postgres = database_url.startswith("postgres")
    with database.connection_context():
        study = Study.create(study_uid="1.2.3.1", calling_ae="PACS", state="quarantined",
                             state_reason="identifier_leak")
        database.execute_sql('DROP TABLE "study_match_keys"')  # what release 6 left behind
        if postgres:
            database.execute_sql('ALTER TABLE "study" ALTER COLUMN "state_reason" TYPE VARCHAR(64)')
            database.execute_sql('ALTER TABLE "audit_event" ALTER COLUMN "detail" TYPE VARCHAR(255)')
        SchemaVersion.delete().where(SchemaVersion.version > 6).execute()
    assert migrate(database) == SCHEMA_VERSION
    with database.connection_context():
        assert Study.get_by_id(study.id).state_reason == "identifier_leak"
        StudyMatchKeys.create(study=study.id, accession_number="ACC-1", patient_id="P1", study_date="20261201")
        Study.update(state_reason=LONG_REASON).where(Study.id == study.id).execute()
        AuditEvent.create(action="quarantined", detail="outbound guard hit in " + LONG_REASON * 5)
        assert Study.get_by_id(study.id).state_reason == LONG_REASON
        assert len(AuditEvent.get(AuditEvent.action == "quarantined").detail) > 255
    assert migrate(database) == SCHEMA_VERSION  # again: nothing to do
    database.close()
