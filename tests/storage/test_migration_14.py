"""Migration 14 on a database of an earlier release: the ``dicomweb_token`` table of the reviewers' DICOMweb bearer
tokens; existing rows are kept and migrating again does nothing."""

from __future__ import annotations

import pytest

from gateway.storage.models import SCHEMA_VERSION, DicomwebToken, SchemaVersion, Study, migrate, open_database


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_an_earlier_database_gets_the_dicomweb_token_table(database_url):
    database = open_database(database_url)
    with database.connection_context():
        Study.create(study_uid="1.2.3.14", calling_ae="PACS", state="received")
        database.drop_tables([DicomwebToken])  # what an earlier release left behind
        SchemaVersion.delete().where(SchemaVersion.version >= 14).execute()
        assert "dicomweb_token" not in database.get_tables()
    assert SCHEMA_VERSION >= 14 and migrate(database) == SCHEMA_VERSION
    with database.connection_context():
        DicomwebToken.create(token_id="abcd1234", secret_sha256="0" * 64, reviewer="dr-a")
        assert Study.select().count() == 1
        assert DicomwebToken.get().revoked_at is None
        assert 14 in {row.version for row in SchemaVersion.select()}
    assert migrate(database) == SCHEMA_VERSION
    with database.connection_context():
        assert DicomwebToken.select().count() == 1
    database.close()
