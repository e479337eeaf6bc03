"""Migration 16 on a database without it: the pool worklist's ``workitem``, ``workitem_subscription`` and
``workitem_event`` tables; existing rows are kept and migrating again does nothing."""

from __future__ import annotations

import datetime as dt

import pytest

from gateway.storage.models import (
    SCHEMA_VERSION,
    SchemaVersion,
    Study,
    Workitem,
    WorkitemEvent,
    WorkitemSubscription,
    migrate,
    open_database,
    utcnow,
)


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_database_before_16_gets_the_worklist_tables(database_url):
    database = open_database(database_url)
    with database.connection_context():
        study = Study.create(study_uid="1.2.3.16", calling_ae="PACS", state="pooled")
        database.drop_tables([WorkitemEvent, WorkitemSubscription, Workitem])
        SchemaVersion.delete().where(SchemaVersion.version == 16).execute()
        assert "workitem" not in database.get_tables()
    assert migrate(database) == SCHEMA_VERSION
    with database.connection_context():
        workitem = Workitem.create(uid="2.25.16", study=study, state="SCHEDULED", priority="MEDIUM",
                                   due_at=utcnow() + dt.timedelta(hours=72))
        WorkitemEvent.create(workitem=workitem, event_type=1, state="SCHEDULED")
        WorkitemSubscription.create(reviewer="dr-a", ae_title="VIEWER", workitem=None)
        assert Study.select().count() == 1 and WorkitemEvent.get().state == "SCHEDULED"
    assert migrate(database) == SCHEMA_VERSION
    with database.connection_context():
        assert Workitem.select().count() == 1 and 16 in {row.version for row in SchemaVersion.select()}
    database.close()
