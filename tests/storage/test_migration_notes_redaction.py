"""Migration 8 on a database of release 7: the ``notes_redaction`` table is created (operators' redactions of a
quarantined case's notes), the rows already there are kept, and a second run changes nothing."""

from __future__ import annotations

import pytest

from gateway.storage.models import SCHEMA_VERSION, NotesRedaction, SchemaVersion, Study, migrate, open_database


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_version_7_database_gets_the_notes_redaction_table(database_url):
    database = open_database(database_url)
    with database.connection_context():
        study = Study.create(study_uid="1.2.3.7", calling_ae="PACS", state="quarantined")
        database.drop_tables([NotesRedaction])  # what release 7 left behind
        SchemaVersion.delete().where(SchemaVersion.version > 7).execute()
        assert "notes_redaction" not in database.get_tables()
    assert migrate(database) == SCHEMA_VERSION >= 8
    with database.connection_context():
        assert Study.get_by_id(study.id).state == "quarantined"
        NotesRedaction.create(study=study, phrase="Thrapston", actor="web:ops")
        assert [(r.phrase, r.actor) for r in study.notes_redactions] == [("Thrapston", "web:ops")]
        assert NotesRedaction.get().created_at is not None
    assert migrate(database) == SCHEMA_VERSION  # again: nothing to do
    with database.connection_context():
        assert NotesRedaction.select().count() == 1
    database.close()
