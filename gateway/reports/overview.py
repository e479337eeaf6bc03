"""The reports part of ``spine-gateway status``: reports received and home, and the turnaround.

Turnaround is, per case, the time from its first received instance (``Study.first_received_at``) to its report
stored by the source (``Study.report_delivered_at``). Cases appear by their random key only.
"""

from __future__ import annotations

import datetime as dt
import statistics
from typing import Any

import peewee

from gateway.storage.models import ReportObject, ResultMessage, Study, tuple_rows, utcnow

RECENT = 10
#: The turnaround is taken over the cases whose report came home in this many days (over the whole history, every
#: ``status`` read every case ever reported).
TURNAROUND_DAYS = 30


def reports_snapshot() -> dict[str, Any]:
    """Counts of report objects by state, and turnaround figures over the cases whose report came home in the last
    ``TURNAROUND_DAYS``."""
    objects = dict(tuple_rows(ReportObject.select(ReportObject.state, peewee.fn.COUNT(ReportObject.id))
                              .group_by(ReportObject.state)))
    since = utcnow() - dt.timedelta(days=TURNAROUND_DAYS)
    window = Study.report_delivered_at >= since
    cases, median, longest = _turnaround(window)
    turnaround: dict[str, Any] = {"cases": cases, "days": TURNAROUND_DAYS, "median_s": None, "max_s": None}
    if cases:
        turnaround.update(median_s=round(median, 1), max_s=round(longest, 1))
    latest = Study.select(Study.key, Study.first_received_at, Study.report_delivered_at).where(window).order_by(
        Study.report_delivered_at.desc()).limit(RECENT)
    recent = [{"case": key, "turnaround_s": round(max((home - first).total_seconds(), 0.0), 1),
               "report_delivered_at": home.isoformat() + "Z"} for key, first, home in tuple_rows(latest)]
    return {"report_objects_by_state": objects, "turnaround": turnaround, "recent_reports": recent,
            **result_messages_snapshot()}


def _turnaround(window: peewee.Expression) -> tuple[int, float, float]:
    """The cases of ``window``, their median and longest turnaround in seconds, computed by the database (a month
    at a year's volume is thousands of cases, whose timestamps Python would parse one by one): PostgreSQL returns
    the three; SQLite, which has no median, the seconds of each case."""
    seconds = _turnaround_s()
    if isinstance(Study._meta.database.obj, peewee.PostgresqlDatabase):
        clamped = peewee.fn.GREATEST(seconds, 0)
        median = peewee.NodeList((peewee.fn.percentile_cont(0.5), peewee.SQL("WITHIN GROUP (ORDER BY"), clamped,
                                  peewee.SQL(")")))
        cases, middle, longest = Study.select(peewee.fn.COUNT(Study.id), median, peewee.fn.MAX(clamped)).where(
            window).scalar(as_tuple=True)
        return int(cases), float(middle or 0), float(longest or 0)
    values = [max(float(value), 0.0) for (value,) in tuple_rows(Study.select(seconds).where(window))]
    return len(values), statistics.median(values) if values else 0.0, max(values, default=0.0)


def _turnaround_s() -> peewee.Node:
    """A case's seconds from first received to report delivered, as an expression of the database's dialect."""
    if isinstance(Study._meta.database.obj, peewee.PostgresqlDatabase):
        return peewee.fn.EXTRACT(peewee.NodeList((peewee.SQL("EPOCH FROM"),
                                                  Study.report_delivered_at - Study.first_received_at)))
    return (peewee.fn.julianday(Study.report_delivered_at) - peewee.fn.julianday(Study.first_received_at)) * 86400


def result_messages_snapshot() -> dict[str, Any]:
    """The HL7 leg (ORU^R01 to the RIS/EHR): messages by state, and those not sent (pending with an error, or
    failed) by case key, with the last ACK code and the gateway's own reason."""
    by_state = dict(tuple_rows(ResultMessage.select(ResultMessage.state, peewee.fn.COUNT(ResultMessage.id))
                               .group_by(ResultMessage.state)))
    troubled = (ResultMessage.select(ResultMessage, Study.key).join(Study)
                .where((ResultMessage.state == "failed")
                       | ((ResultMessage.state == "pending") & ResultMessage.last_error.is_null(False)))
                .order_by(ResultMessage.id.desc()).limit(RECENT))
    rows = [{"case": row.study.key, "state": row.state, "attempts": row.attempts, "last_ack_code": row.last_ack_code,
             "last_error": row.last_error,
             "next_attempt_at": row.next_attempt_at.isoformat() + "Z" if row.state == "pending" else None}
            for row in troubled]
    return {"result_messages_by_state": by_state, "result_messages_not_sent": rows}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def render_reports(snapshot: dict[str, Any], console: Any) -> None:
    """One table: the most recent reports home, with their turnaround; a summary line above it."""
    from rich.table import Table

    reports = snapshot.get("reports")
    if not reports:
        return
    turnaround = reports["turnaround"]
    console.print(f"reports home in the last {turnaround.get('days', TURNAROUND_DAYS)} days: {turnaround['cases']} "
                  "case(s), turnaround median "
                  f"{_duration(turnaround['median_s'])}, max {_duration(turnaround['max_s'])}")
    messages = reports.get("result_messages_by_state") or {}
    if messages:
        console.print("reports to the RIS/EHR (HL7 ORU^R01): "
                      + ", ".join(f"{state} {messages[state]}" for state in sorted(messages)))
    for row in reports.get("result_messages_not_sent", []):
        console.print(f"  ORU {row['state']}: case {row['case']}, {row['attempts']} attempt(s), "
                      f"ACK {row['last_ack_code'] or '-'}: {row['last_error'] or ''}")
    table = Table(title="Most recent reports home")
    for column in ("case", "turnaround", "report_delivered_at"):
        table.add_column(column)
    for row in reports["recent_reports"]:
        table.add_row(row["case"], _duration(row["turnaround_s"]), row["report_delivered_at"])
    console.print(table)
