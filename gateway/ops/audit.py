"""The audit trail: every action on patient data, as a database row and one structured log event.

A row (:class:`gateway.storage.models.AuditEvent`) records who (calling AE title and host), what (the action and the
study's random key), when and the outcome. The same facts go to the log as one ``audit`` event using only
allowlisted keys (``reason`` = action, ``calling_ae``, ``peer``, ``study``, ``status`` = outcome); the free
``detail`` stays in the database. Neither ever holds a patient identifier: callers pass study keys, never UIDs.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

import peewee
import structlog

from gateway.errors import GatewayError
from gateway.storage.models import AuditEvent, db

log = structlog.get_logger("audit")
OUTCOMES = ("success", "refused", "failed")
_ACTION = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_DETAIL_MAX = 2000  # a TEXT column since migration 7; a bound against runaway text only


class AuditWriteError(GatewayError):
    """The audit row could not be written (the database is unavailable)."""


def record(action: str, *, actor_ae: str | None, actor_host: str | None, study_key: str | None,
           outcome: str = "success", detail: str = "") -> None:
    """Write one audit row and log one ``audit`` event.

    Args:
        action: what happened, a short snake_case verb (``received``, ``refused``, ``sent``, ``purged`` …).
        actor_ae: the AE title that acted (the calling or called peer), if any.
        actor_host: the peer's host or address, if any.
        study_key: the study's random key (:attr:`gateway.storage.models.Study.key`), never a UID.
        outcome: ``success``, ``refused`` or ``failed``.
        detail: a short free text for the row only (never logged); it must carry no PHI. Cut to 2,000 characters.

    Raises:
        ValueError: ``action`` is not snake_case of at most 32 characters, or ``outcome`` is unknown.
        AuditWriteError: the row could not be written (the event is still logged, with status ``failed``).
    """
    if not _ACTION.match(action or ""):
        raise ValueError("audit action must be snake_case, 1-32 characters")
    if outcome not in OUTCOMES:
        raise ValueError(f"audit outcome must be one of {', '.join(OUTCOMES)}")
    fields: dict[str, Any] = {"reason": action, "calling_ae": actor_ae, "peer": actor_host, "case": study_key,
                              "status": outcome}
    try:
        with _connection(), db.atomic():
            AuditEvent.create(action=action, actor_ae=actor_ae, actor_host=actor_host, study_key=study_key,
                              outcome=outcome, detail=(detail or "")[:_DETAIL_MAX])
    except (peewee.PeeweeException, peewee.DatabaseError, AttributeError) as exc:
        log.error("audit_write_failed", **{**fields, "error": type(exc).__name__})
        raise AuditWriteError(f"audit event {action!r} could not be written ({type(exc).__name__})") from None
    log.info("audit", **{k: v for k, v in fields.items() if v is not None})


def _connection() -> contextlib.AbstractContextManager[Any]:
    """The caller's open connection (and transaction) if any; else one for the duration of the write."""
    return db.connection_context() if db.is_closed() else contextlib.nullcontext()


def query(case: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """The most recent ``limit`` audit events (of one study key when ``case`` is given), oldest first.

    Raises:
        ValueError: ``limit`` is below 1.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    with db.connection_context():
        rows = AuditEvent.select().order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(limit)
        if case is not None:
            rows = rows.where(AuditEvent.study_key == case)
        events = [_as_dict(row) for row in rows]
    return list(reversed(events))


def _as_dict(row: AuditEvent) -> dict[str, Any]:
    return {"at": row.at.isoformat() + "Z", "action": row.action, "actor_ae": row.actor_ae,
            "actor_host": row.actor_host, "study": row.study_key, "outcome": row.outcome, "detail": row.detail}


def render_audit(events: list[dict[str, Any]], console: Any) -> None:
    """A rich table of :func:`query`'s result (plain text in a pipe)."""
    from rich.table import Table

    table = Table(title="Audit trail")
    for column in ("at", "action", "study", "actor_ae", "actor_host", "outcome", "detail"):
        table.add_column(column)
    for event in events:
        table.add_row(*(str(event[c] or "") for c in ("at", "action", "study", "actor_ae", "actor_host",
                                                        "outcome", "detail")))
    console.print(table)
