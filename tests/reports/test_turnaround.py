"""Status's turnaround, computed by the database (PostgreSQL: its median too): the cases reported in the last 30 days,
their median and longest time from first received to report delivered, and the latest ones home."""

from __future__ import annotations

import datetime as dt

import pytest

from gateway.reports.overview import reports_snapshot
from gateway.storage.models import Source, Study, open_database, utcnow


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_the_turnaround_over_the_last_30_days(database_url):
    database = open_database(database_url, max_connections=2)
    with database.connection_context():
        assert reports_snapshot()["turnaround"] == {"cases": 0, "days": 30, "median_s": None, "max_s": None}
        source = Source.create(name="st-marys", ae_title="STMARYS_PACS")
        now = utcnow()
        for n, (hours, days_ago) in enumerate([(1, 1), (2, 2), (30, 3), (4, 4), (5, 40)]):  # the last is too old
            home = now - dt.timedelta(days=days_ago)
            Study.create(study_uid=f"2.25.5{n}", source=source, calling_ae="STMARYS_PACS", report_delivered_at=home,
                         first_received_at=home - dt.timedelta(hours=hours, seconds=0.4))
        snapshot = reports_snapshot()
        assert snapshot["turnaround"] == {"cases": 4, "days": 30, "median_s": 10800.4, "max_s": 108000.4}
        assert [row["turnaround_s"] for row in snapshot["recent_reports"]] == [3600.4, 7200.4, 108000.4, 14400.4]
    database.close_all()
