"""Migration 6 on a database of release 5: ``study.notes_reason`` and ``study_identity.image_text`` are added,
NULL on the rows already there (a case past the notes stage keeps the reason its images already carry; a case
de-identified before has its image files read back by the notes stage's final check), and rows are kept."""

from __future__ import annotations

import pytest

from gateway.storage.models import SCHEMA_VERSION, SchemaVersion, Study, StudyIdentity, migrate, open_database


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_version_5_database_upgrades_to_the_reason_and_the_image_text(database_url):
    database = open_database(database_url)
    with database.connection_context():
        study = Study.create(study_uid="1.2.3.1", calling_ae="PACS", state="notes_attached")
        StudyIdentity.create(study=study, patient_name="DOE^JANE", header_values='{"PatientID": ["X1"]}')
        database.execute_sql('ALTER TABLE "study" DROP COLUMN "notes_reason"')  # what release 5 left behind
        database.execute_sql('ALTER TABLE "study_identity" DROP COLUMN "image_text"')
        SchemaVersion.delete().where(SchemaVersion.version > 5).execute()
    assert migrate(database) == SCHEMA_VERSION
    with database.connection_context():
        assert "notes_reason" in {c.name for c in database.get_columns("study")}
        assert "image_text" in {c.name for c in database.get_columns("study_identity")}
        study = Study.get_by_id(study.id)
        identity = StudyIdentity.get(StudyIdentity.study == study.id)
        assert (study.state, study.notes_reason) == ("notes_attached", None)
        assert (identity.patient_name, identity.header_values, identity.image_text) == (
            "DOE^JANE", '{"PatientID": ["X1"]}', None)
        new = StudyIdentity.create(study=Study.create(study_uid="1.2.3.2", calling_ae="PACS"))
        assert StudyIdentity.get_by_id(new.id).image_text == "", "a new case records its images' text"
    assert migrate(database) == SCHEMA_VERSION  # again: nothing to do
    database.close()
