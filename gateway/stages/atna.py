"""The audit trail to the hospital's collector (IHE ATNA): each run sends the rows after the export cursor, in
order, and moves the cursor past what the collector took.

The rows are the queue: nothing is lost while the collector is down (the cursor stays, and the next run starts
from it). Syslog has no acknowledgement, so a message counts as taken once it is written to the connection; a
collector that dies with messages in its buffers loses them (RFC 5425 says the same of every sender). Several
nodes on one database export once: a node claims the cursor for a lease before it sends.
"""

from __future__ import annotations

import datetime as dt
import socket
from typing import Any

import peewee
import structlog

from gateway.config import AtnaConfig
from gateway.ops.atna import AuditRow, AuditSendError, Collector, Source, StudyFacts, build_message, syslog_message
from gateway.storage.models import AuditEvent, ExportCursor, Study, StudyIdentity, StudyMatchKeys, db

log = structlog.get_logger("atna")
CURSOR = "atna"
LEASE_S = 120


class AtnaStage:
    """Every ``atna.interval_s``: the next ``atna.batch`` rows of the audit trail to the collector."""

    name = "atna"

    def __init__(self, config: AtnaConfig, ae_title: str, node_identity: str) -> None:
        self.config = config
        self.node_identity = node_identity
        self.source = Source(audit_source_id=config.audit_source_id or ae_title, ae_title=ae_title,
                             hostname=socket.gethostname(), enterprise_site_id=config.enterprise_site_id)
        self._next_run: dt.datetime | None = None
        self._collector_down = False

    def run_once(self, now: dt.datetime) -> int:
        if self._next_run is not None and now < self._next_run:
            return 0
        self._next_run = now + dt.timedelta(seconds=self.config.interval_s)
        cursor = self._claim(now)
        if cursor is None:
            return 0  # another node exports now
        rows = list(AuditEvent.select().where(AuditEvent.id > cursor.last_id)
                    .order_by(AuditEvent.id).limit(self.config.batch))
        sent_up_to, count, error = self._send(rows, cursor.last_id)
        self._release(now, sent_up_to, count, error)
        return count

    def _send(self, rows: list[AuditEvent], last_id: int) -> tuple[int, int, str | None]:
        facts = studies_by_key({row.study_key for row in rows if row.study_key})
        count = 0
        with Collector(self.config) as collector:
            for row in rows:
                message = self._message(row, facts)
                if message is not None:
                    try:
                        collector.send(message)
                    except AuditSendError as exc:
                        self._note_down(str(exc), len(rows) - count)
                        return last_id, count, str(exc)
                    count += 1
                last_id = row.id
        if self._collector_down:
            log.info("atna_collector_up", reason="audit messages reach the collector again")
            self._collector_down = False
        if count:
            log.info("atna_sent", count=count)
        return last_id, count, None

    def _message(self, row: AuditEvent, facts: dict[str, StudyFacts]) -> bytes | None:
        """The row's syslog message; a row that cannot be put into one is logged by its id and passed over,
        so that it never holds back the rows after it."""
        audit_row = AuditRow(id=row.id, at=row.at, action=row.action, actor_ae=row.actor_ae,
                             actor_host=row.actor_host, study_key=row.study_key, outcome=row.outcome)
        try:
            xml = build_message(audit_row, self.source, facts.get(row.study_key or ""))
        except (ValueError, TypeError) as exc:
            log.error("atna_message_failed", reason=f"audit row {row.id} passed over", error=type(exc).__name__)
            return None
        return syslog_message(xml, self.source.hostname, row.at)

    def _note_down(self, error: str, waiting: int) -> None:
        if not self._collector_down:
            log.warning("atna_collector_down", error=error, count=waiting,
                        reason="audit messages wait in the database until the collector answers")
            self._collector_down = True

    def open_cursor(self) -> None:
        """The first time the export is on: start after the rows already there (``from_start``: before all)."""
        with db.connection_context(), db.atomic():
            if ExportCursor.get_or_none(ExportCursor.name == CURSOR) is None:
                start = 0 if self.config.from_start else (AuditEvent.select(peewee.fn.MAX(AuditEvent.id)).scalar() or 0)
                ExportCursor.insert(name=CURSOR, last_id=start).on_conflict_ignore().execute()

    def _claim(self, now: dt.datetime) -> ExportCursor | None:
        with db.atomic():
            claimed = ExportCursor.update(claimed_by=self.node_identity,
                                          claimed_until=now + dt.timedelta(seconds=LEASE_S)).where(
                (ExportCursor.name == CURSOR) & (ExportCursor.claimed_by.is_null()
                                                 | (ExportCursor.claimed_until < now)
                                                 | (ExportCursor.claimed_by == self.node_identity))).execute()
        return ExportCursor.get(ExportCursor.name == CURSOR) if claimed else None

    def _release(self, now: dt.datetime, last_id: int, count: int, error: str | None) -> None:
        values: dict[peewee.Field, object] = {
            ExportCursor.last_id: last_id, ExportCursor.sent: ExportCursor.sent + count,
            ExportCursor.claimed_by: None, ExportCursor.claimed_until: None,
            ExportCursor.last_error: error[:255] if error else None}
        if count:
            values[ExportCursor.last_sent_at] = now
        with db.atomic():
            ExportCursor.update(values).where((ExportCursor.name == CURSOR)
                                              & (ExportCursor.claimed_by == self.node_identity)).execute()


def studies_by_key(keys: set[str]) -> dict[str, StudyFacts]:
    """The original identifiers of the studies named by ``keys``: from the study's identity once
    de-identification recorded it, before that from what the receiving side kept to match referrals (a
    purged study has none left)."""
    if not keys:
        return {}
    query = (Study.select(Study.key, Study.study_uid,
                          StudyIdentity.patient_id.alias("identity_patient_id"),
                          StudyIdentity.patient_name.alias("identity_patient_name"),
                          StudyIdentity.accession_number.alias("identity_accession"),
                          StudyMatchKeys.patient_id.alias("arrival_patient_id"),
                          StudyMatchKeys.accession_number.alias("arrival_accession"))
             .join_from(Study, StudyIdentity, peewee.JOIN.LEFT_OUTER)
             .join_from(Study, StudyMatchKeys, peewee.JOIN.LEFT_OUTER)
             .where(Study.key.in_(sorted(keys))).dicts())
    rows: list[dict[str, Any]] = list(query)  # type: ignore[arg-type]  # .dicts() rows
    return {row["key"]: StudyFacts(
                study_uid=row["study_uid"],
                patient_id=row["identity_patient_id"] or row["arrival_patient_id"] or "",
                patient_name=row["identity_patient_name"] or "",
                accession_number=row["identity_accession"] or row["arrival_accession"] or "")
            for row in rows}
