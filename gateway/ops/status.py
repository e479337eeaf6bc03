"""What ``spine-gateway status`` shows: counts by state straight from the database, plus the spool's disk."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import peewee

from gateway.storage import commitments
from gateway.storage.models import (
    AuditEvent,
    ExportCursor,
    Instance,
    PriorFetch,
    QuarantinedObject,
    Study,
    db,
    instance_tally,
    tuple_rows,
)


def collect_status(spool_dir: Path, reviewers: Sequence[Any] = ()) -> dict[str, Any]:
    """A JSON-ready snapshot. Cases appear only by their random key, never by UID.

    ``reviewers`` (the configured pool) adds each reviewer's load and SLA breaches; the routing section
    (queues, oldest waiting case per state, peer C-ECHO results) is always there.
    """
    from gateway.reports.overview import reports_snapshot
    from gateway.routing.overview import routing_snapshot

    with db.connection_context():
        routing = routing_snapshot(reviewers)
        reports = reports_snapshot()
        studies = dict(tuple_rows(Study.select(Study.state, peewee.fn.COUNT(Study.id)).group_by(Study.state)))
        instances, total_bytes = instance_tally()
        quarantined = QuarantinedObject.select().count()
        attention = needs_attention()
        audit_export = audit_export_status()
        commitment = commitments.summary()
        priors = dict(tuple_rows(PriorFetch.select(PriorFetch.state, peewee.fn.COUNT(PriorFetch.id))
                                 .group_by(PriorFetch.state)))
        recent = recent_cases(RECENT_CASES)
    disk = shutil.disk_usage(spool_dir) if Path(spool_dir).exists() else None
    return {
        "health": node_health(spool_dir),
        "studies_by_state": studies,
        "cases_by_state": studies,
        **routing,
        "reports": reports,
        "instances_by_state": instances,
        "instances_total": sum(instances.values()),
        "stored_bytes": int(total_bytes or 0),
        "quarantined": quarantined,
        "recent_studies": recent,
        "needs_attention": attention,
        "audit_export": audit_export,
        "commitments": commitment,
        "priors_by_state": priors,
        "spool": {"path": str(spool_dir), "free_bytes": disk.free if disk else None,
                  "total_bytes": disk.total if disk else None},
    }


RECENT_CASES = 20


def recent_cases(limit: int) -> list[dict[str, Any]]:
    """The ``limit`` cases received last, each with its instance count: the cases read first from the index of
    ``last_received_at``, then only their instances counted (grouping every case of the history first, then
    taking 20, read the whole history at every ``status``)."""
    latest = list(tuple_rows(Study.select(Study.id, Study.key, Study.state, Study.last_received_at)
                             .order_by(Study.last_received_at.desc()).limit(limit)))
    ids = [row[0] for row in latest]
    counts = dict(tuple_rows(Instance.select(Instance.study, peewee.fn.COUNT(Instance.id))
                             .where(Instance.study.in_(ids)).group_by(Instance.study))) if ids else {}
    return [{"study": key, "state": state, "instances": counts.get(study_id, 0),
             "last_received_at": last.isoformat() + "Z"} for study_id, key, state, last in latest]


def audit_export_status() -> dict[str, Any] | None:
    """How far the audit messages (ATNA) reached the collector: rows waiting, sent, the last error; None
    when the export never ran."""
    cursor = ExportCursor.get_or_none(ExportCursor.name == "atna")
    if cursor is None:
        return None
    waiting = AuditEvent.select().where(AuditEvent.id > cursor.last_id).count()
    return {"waiting": waiting, "sent": cursor.sent, "last_sent_at": _iso(cursor.last_sent_at),
            "last_error": cursor.last_error}


ATTENTION_LIMIT = 50
HEALTH_PROBE_TIMEOUT_S = 5.0


def node_health(spool_dir: Path) -> dict[str, Any]:
    """Whether the spool and the database take a write now (the write probes of ``/healthz``, run here)."""
    from gateway.ops.health import database_check, run_health_checks, spool_space_check

    return run_health_checks({
        "database": database_check(db, f"status:{socket.gethostname()}", HEALTH_PROBE_TIMEOUT_S),
        "spool": spool_space_check(Path(spool_dir), 0, HEALTH_PROBE_TIMEOUT_S)})


def needs_attention() -> list[dict[str, Any]]:
    """Cases waiting for a person (quarantined, failed, report_failed), held cases (waiting for a reviewer, a
    referral or an approval) and cases a stage is backing off after a failure, newest first, with why: the
    state's reason (for a case held for want of a reviewer, the words the log and the portal show), the last
    error and how many failures."""
    from gateway.storage.cases import STUCK_STATES
    from gateway.storage.models import CaseState

    waiting = (*STUCK_STATES, CaseState.HELD)
    query = (Study.select().where(Study.state.in_(waiting) | (Study.stage_failures > 0))
             .order_by(Study.state_changed_at.desc()).limit(ATTENTION_LIMIT))
    return [{"case": study.key, "state": study.state, "reason": study.state_reason or study.hold_reason,
             "since": _iso(study.state_changed_at), "failures": study.stage_failures,
             "last_error": study.stage_error, "retry_at": _iso(study.stage_retry_at),
             "delivery_attempts": study.delivery_attempts, "report_attempts": study.report_attempts}
            for study in query]


def _iso(moment: Any) -> str | None:
    return None if moment is None else moment.isoformat() + "Z"


def render_status(snapshot: dict[str, Any], console: Any) -> None:
    """Rich tables on a terminal; rich degrades to plain text in a pipe."""
    from rich.table import Table

    states = Table(title="Cases and instances by state")
    states.add_column("kind")
    states.add_column("state")
    states.add_column("count", justify="right")
    for state, count in sorted(snapshot["studies_by_state"].items()):
        states.add_row("case", state, str(count))
    for state, count in sorted(snapshot["instances_by_state"].items()):
        states.add_row("instance", state, str(count))
    states.add_row("quarantined", "-", str(snapshot["quarantined"]))
    console.print(states)
    _render_routing(snapshot, console)
    from gateway.reports.overview import render_reports

    render_reports(snapshot, console)
    recent = Table(title="Most recent cases")
    for column in ("case", "state", "instances", "last_received_at"):
        recent.add_column(column)
    for row in snapshot["recent_studies"]:
        recent.add_row(row["study"], row["state"], str(row["instances"]), row["last_received_at"])
    console.print(recent)
    _render_attention(snapshot, console)
    spool = snapshot["spool"]
    free = spool["free_bytes"]
    console.print(f"spool {spool['path']}: {snapshot['stored_bytes'] / 1e6:.1f} MB stored, "
                  f"{(free or 0) / 1e9:.1f} GB free")
    export = snapshot.get("audit_export")
    if export is not None:
        state = f"collector FAILING: {export['last_error']}" if export["last_error"] else "collector ok"
        console.print(f"audit messages (ATNA): {export['waiting']} waiting, {export['sent']} sent, "
                      f"last {export['last_sent_at'] or 'never'}; {state}")
    _render_commitments(snapshot.get("commitments"), console)
    priors = snapshot.get("priors_by_state") or {}
    if priors:
        console.print("priors (cases' fetches from their source's PACS): "
                      + ", ".join(f"{count} {state}" for state, count in sorted(priors.items())))
    health = snapshot.get("health") or {}
    if health.get("status") == "ok":
        console.print("health: ok (the spool and the database take a write)")
    elif health:
        details = "; ".join(f"{name}: {health['checks'][name].get('detail', '')}" for name in health["failed"])
        console.print(f"health: UNHEALTHY ({details})")


def _render_commitments(summary: dict[str, Any] | None, console: Any) -> None:
    """Storage Commitment requests: counts by state, and each pending or failed one with its last error."""
    if not summary:
        return
    if summary.get("awaiting_reviewers"):
        console.print(f"storage commitment: {summary['awaiting_reviewers']} object(s) sent to reviewers not committed "
                      "yet (their cases stay delivering)")
    if not summary["by_state"]:
        return
    counts = ", ".join(f"{count} {state}" for state, count in sorted(summary["by_state"].items()))
    console.print(f"storage commitment requests: {counts}")
    for row in summary["open"]:
        console.print(f"  request {row['id']} from {row['source']}: {row['state']}, {row['instances']} instance(s), "
                      f"{row['attempts']} tries, next {row['next_attempt_at'] or '-'}, "
                      f"last error {row['last_error'] or '-'}")


def _render_routing(snapshot: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    reviewers = Table(title="Reviewers")
    for column in ("reviewer", "enabled", "open cases", "SLA breaches", "last C-ECHO"):
        reviewers.add_column(column)
    for row in snapshot.get("reviewers", []):
        echo = "never" if row["echo_ok"] is None else f"{'ok' if row['echo_ok'] else 'FAILED'} {row['echo_at']}"
        reviewers.add_row(row["reviewer"], "yes" if row["enabled"] else "no",
                          f"{row['open_cases']}/{row['max_open_cases']}", str(row["sla_breaches"]), echo)
    console.print(reviewers)
    queue = snapshot.get("queue", {})
    console.print(f"queue: {queue.get('waiting_assignment', 0)} waiting for a reviewer, "
                  f"{queue.get('waiting_delivery', 0)} waiting for delivery")
    oldest = Table(title="Oldest waiting case per state")
    for column in ("state", "case", "since", "reason"):
        oldest.add_column(column)
    for state, row in sorted(snapshot.get("oldest_waiting", {}).items()):
        oldest.add_row(state, row["case"], row["since"] or "", row["reason"] or "")
    console.print(oldest)
    peers = Table(title="Peers (last C-ECHO)")
    for column in ("peer", "ok", "checked_at", "detail"):
        peers.add_column(column)
    for row in snapshot.get("peers", []):
        peers.add_row(row["peer"], "ok" if row["ok"] else "FAILED", row["checked_at"] or "", row["detail"])
    console.print(peers)


def _render_attention(snapshot: dict[str, Any], console: Any) -> None:
    """One line per case (its whole key, state and since), its reason whole on the next: a table would fold
    the reason into a column a few characters wide on a terminal of 80."""
    from rich.markup import escape

    rows = snapshot.get("needs_attention", [])
    if not rows:
        console.print("no case needs attention")
        return
    console.print(f"[bold]Cases needing attention[/bold] ({len(rows)}; retry CASE / release CASE)")
    for row in rows:
        failures = (f", {row['failures']} failure(s), last {row['last_error'] or '-'}, next try "
                    f"{row['retry_at'] or '-'}" if row["failures"] else "")
        console.print(f"  {row['case']}  {row['state']}  since {row['since'] or '-'}{escape(failures)}",
                      soft_wrap=True)
        console.print(f"    {escape(row['reason'] or '-')}", soft_wrap=True)


def lookup_cases(*, accession: str | None = None, referral_id: int | None = None) -> list[dict[str, Any]]:
    """The cases of one accession number or one referral id (``status --accession`` / ``--referral``): each
    with its state, reason, source, reviewer, times and referral; a referral that waits for its images (or
    expired without them) appears with ``case`` None.

    Operators are inside the hospital's trust: this look-up names the accession number (never logged).
    """
    from gateway.storage.models import Referral, StudyIdentity, StudyMatchKeys

    with db.connection_context():
        if referral_id is not None:
            referrals = list(Referral.select().where(Referral.id == referral_id))
            studies = [r.study for r in referrals if r.study is not None]
        else:
            referrals = list(Referral.select().where(Referral.accession_number == accession))
            ids = {row.study_id for model in (StudyMatchKeys, StudyIdentity)
                   for row in model.select(model.study).where(model.accession_number == accession)}
            ids |= {r.study_id for r in referrals if r.study_id is not None}
            studies = list(Study.select().where(Study.id.in_(sorted(ids))).order_by(Study.first_received_at))
        by_study = {r.study_id: r for r in referrals if r.study_id is not None}
        found = [_case_entry(study, by_study.get(study.id) or _referral_of(study)) for study in studies]
        found += [_case_entry(None, r) for r in referrals if r.study_id is None]
    return found


def _referral_of(study: Study) -> Any:
    from gateway.storage.models import Referral

    return Referral.get_or_none(Referral.study == study.id)


def _accession_of(study: Study) -> str | None:
    from gateway.storage.models import StudyIdentity, StudyMatchKeys

    for model in (StudyMatchKeys, StudyIdentity):
        row = model.get_or_none(model.study == study.id)
        if row is not None and row.accession_number.strip():
            return row.accession_number.strip()
    return None


def _case_entry(study: Study | None, referral: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"case": None, "state": None, "reason": None, "reviewer": None,
                             "source": referral.source.name if referral is not None else None,
                             "accession_number": referral.accession_number if referral is not None else None,
                             "first_received_at": None, "state_changed_at": None, "report_delivered_at": None}
    if study is not None:
        entry.update({"case": study.key, "state": study.state, "reason": study.state_reason or study.hold_reason,
                      "reviewer": study.reviewer, "source": study.source.name if study.source is not None else None,
                      "accession_number": _accession_of(study) or entry["accession_number"],
                      "first_received_at": _iso(study.first_received_at),
                      "state_changed_at": _iso(study.state_changed_at),
                      "report_delivered_at": _iso(study.report_delivered_at)})
    entry["referral"] = None if referral is None else {
        "id": referral.id, "state": referral.state, "received_via": referral.received_via,
        "received_at": _iso(referral.received_at), "matched_at": _iso(referral.matched_at),
        "approved_by": referral.approved_by}
    return entry


def render_lookup(entries: list[dict[str, Any]], console: Any) -> None:
    """The look-up's cases as one table; a referral without its study says so in the state column."""
    from rich.table import Table

    table = Table(title="Cases")
    for column in ("case", "state", "reason", "source", "accession", "reviewer", "referral", "received",
                   "since", "report delivered"):
        table.add_column(column)
    for entry in entries:
        referral = entry["referral"]
        state = entry["state"] or ("waiting for its images" if referral and referral["state"] == "waiting"
                                   else f"referral {referral['state']}, no study" if referral else "")
        table.add_row(entry["case"] or "-", state, entry["reason"] or "", entry["source"] or "",
                      entry["accession_number"] or "", entry["reviewer"] or "",
                      f"{referral['id']} ({referral['state']})" if referral else "none",
                      entry["first_received_at"] or (referral["received_at"] if referral else "") or "",
                      entry["state_changed_at"] or "", entry["report_delivered_at"] or "")
    console.print(table)
