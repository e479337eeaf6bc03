"""Migration 4 on a database of release 2: the stage loop's and the report leg's columns are added with their
defaults and the column types create_tables would give them, rows are kept, and a case FAILED on its report
leg becomes REPORT_FAILED."""

from __future__ import annotations

import pytest

from gateway.storage.models import (
    STAGE_LOOP_COLUMNS,
    CaseState,
    OutboundObject,
    ReportObject,
    SchemaVersion,
    Study,
    migrate,
    open_database,
)


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_version_2_database_upgrades_to_the_stage_loop_and_the_report_leg(database_url):
    database = open_database(database_url)
    with database.connection_context():
        image_leg = Study.create(study_uid="1.2.3.1", calling_ae="PACS", state=CaseState.FAILED, delivery_attempts=12)
        report_leg = Study.create(study_uid="1.2.3.2", calling_ae="PACS", state=CaseState.FAILED, delivery_attempts=3)
        ReportObject.create(study=report_leg, reviewer="dr-a", calling_ae="DR_A",
                            sop_class_uid="1.2.840.10008.5.1.4.1.1.88.11",
                            sop_instance_uid="2.25.99", transfer_syntax="1.2.840.10008.1.2.1", spool_path="x",
                            sha256="0" * 64, size=1)
        database.execute_sql('DROP INDEX "study_stage_failures"')  # migration 17's, on a column release 2 lacked
        for column in STAGE_LOOP_COLUMNS:  # make it what release 2 left behind
            database.execute_sql(f'ALTER TABLE "study" DROP COLUMN "{column}"')
        SchemaVersion.delete().where(SchemaVersion.version > 2).execute()
    assert migrate(database) >= 4
    with database.connection_context():
        types = {c.name: c.data_type for c in database.get_columns("study")}
        assert set(STAGE_LOOP_COLUMNS) <= set(types)
        # the added timestamps are the type create_tables gives a DateTimeField (sla_due_at was never dropped)
        assert types["stage_retry_at"] == types["report_next_attempt_at"] == types["sla_due_at"]
        image_leg, report_leg = Study.get_by_id(image_leg.id), Study.get_by_id(report_leg.id)
        assert (image_leg.state, image_leg.delivery_attempts, image_leg.stage_failures) == (CaseState.FAILED, 12, 0)
        assert report_leg.state == CaseState.REPORT_FAILED and report_leg.report_attempts == 0
        assert OutboundObject.select().count() == 0 and ReportObject.select().count() == 1
    database.close()
