"""Migration 13 on a database of release 12: the priors tables (``prior_fetch``, ``prior_study``); existing rows are
kept and migrating again does nothing."""

from __future__ import annotations

import datetime as dt

import pytest

from gateway.storage.models import (
    SCHEMA_VERSION,
    PriorFetch,
    PriorStudy,
    SchemaVersion,
    Study,
    migrate,
    open_database,
    utcnow,
)


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_version_12_database_gets_the_priors_tables(database_url):
    database = open_database(database_url)
    with database.connection_context():
        Study.create(study_uid="1.2.3.13", calling_ae="PACS", state="deidentified")
        database.drop_tables([PriorStudy, PriorFetch])  # what release 12 left behind
        SchemaVersion.delete().where(SchemaVersion.version == 13).execute()
        assert "prior_fetch" not in database.get_tables()
    assert migrate(database) == SCHEMA_VERSION
    with database.connection_context():
        study = Study.get()
        fetch = PriorFetch.create(study=study, source="st-marys", deadline_at=utcnow() + dt.timedelta(seconds=5))
        PriorStudy.create(fetch=fetch, study=study, study_uid="1.2.3.12", study_date="20240101", modalities="MR")
        assert fetch.state == "querying"
        assert 13 in {row.version for row in SchemaVersion.select()}
    assert migrate(database) == SCHEMA_VERSION
    with database.connection_context():
        assert PriorFetch.select().count() == 1 and PriorStudy.select().count() == 1
        assert Study.select().count() == 1
    database.close()
