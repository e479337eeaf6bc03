"""Migration 11 on a database of release 10: the ``result_message`` table (the report's HL7 ORU^R01 leg); existing
cases and reports are kept, a result message can be written for them, and migrating again does nothing."""

from __future__ import annotations

import pytest

from gateway.storage.models import (
    SCHEMA_VERSION,
    OutboundObject,
    ResultMessage,
    SchemaVersion,
    Study,
    migrate,
    open_database,
)


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_version_10_database_gets_the_result_message_table(database_url):
    database = open_database(database_url)
    with database.connection_context():
        study = Study.create(study_uid="1.2.3.11", calling_ae="PACS", state="report_delivered")
        report = OutboundObject.create(study=study, kind="report", sop_instance_uid="2.25.11", sop_class_uid="1.2",
                                       transfer_syntax="1.2.840.10008.1.2.1", spool_path="outbound/x/r.dcm",
                                       sha256="0" * 64, size=1)
        database.drop_tables([ResultMessage])  # what release 10 left behind
        SchemaVersion.delete().where(SchemaVersion.version > 10).execute()
        assert "result_message" not in database.get_tables()
    assert SCHEMA_VERSION >= 11 and migrate(database) == SCHEMA_VERSION  # 11 and every later one
    with database.connection_context():
        ResultMessage.create(study=study, outbound=report, control_id="a" * 20)
        (row,) = ResultMessage.select()
        assert (row.state, row.attempts, row.last_ack_code, row.sent_at) == ("pending", 0, None, None)
        assert Study.select().count() == 1 and OutboundObject.select().count() == 1
    assert migrate(database) == SCHEMA_VERSION
    with database.connection_context():
        assert ResultMessage.select().count() == 1
    database.close()
