"""What ``spine-gateway status`` shows: counts by state straight from the database, plus the spool's disk."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import peewee

from gateway.models import Instance, QuarantinedObject, Study, db


def collect_status(spool_dir: Path) -> dict[str, Any]:
    """A JSON-ready snapshot. Studies appear only by their random key, never by UID."""
    with db.connection_context():
        studies = {state: count for state, count in
                   Study.select(Study.state, peewee.fn.COUNT(Study.id)).group_by(Study.state).tuples()}
        instances = {state: count for state, count in
                     Instance.select(Instance.state, peewee.fn.COUNT(Instance.id)).group_by(Instance.state).tuples()}
        total_bytes = Instance.select(peewee.fn.COALESCE(peewee.fn.SUM(Instance.size), 0)).scalar()
        quarantined = QuarantinedObject.select().count()
        recent = [
            {"study": key, "state": state, "instances": count, "last_received_at": last.isoformat() + "Z"}
            for key, state, count, last in (
                Study.select(Study.key, Study.state, peewee.fn.COUNT(Instance.id), Study.last_received_at)
                .join(Instance, peewee.JOIN.LEFT_OUTER).group_by(Study.id)
                .order_by(Study.last_received_at.desc()).limit(20).tuples())
        ]
    disk = shutil.disk_usage(spool_dir) if Path(spool_dir).exists() else None
    return {
        "studies_by_state": studies,
        "instances_by_state": instances,
        "instances_total": sum(instances.values()),
        "stored_bytes": int(total_bytes or 0),
        "quarantined": quarantined,
        "recent_studies": recent,
        "spool": {"path": str(spool_dir), "free_bytes": disk.free if disk else None,
                  "total_bytes": disk.total if disk else None},
    }


def render_status(snapshot: dict[str, Any], console: Any) -> None:
    """Rich tables on a terminal; rich degrades to plain text in a pipe."""
    from rich.table import Table

    states = Table(title="Studies and instances by state")
    states.add_column("kind")
    states.add_column("state")
    states.add_column("count", justify="right")
    for state, count in sorted(snapshot["studies_by_state"].items()):
        states.add_row("study", state, str(count))
    for state, count in sorted(snapshot["instances_by_state"].items()):
        states.add_row("instance", state, str(count))
    states.add_row("quarantined", "-", str(snapshot["quarantined"]))
    console.print(states)
    recent = Table(title="Most recent studies")
    for column in ("study", "state", "instances", "last_received_at"):
        recent.add_column(column)
    for row in snapshot["recent_studies"]:
        recent.add_row(row["study"], row["state"], str(row["instances"]), row["last_received_at"])
    console.print(recent)
    spool = snapshot["spool"]
    free = spool["free_bytes"]
    console.print(f"spool {spool['path']}: {snapshot['stored_bytes'] / 1e6:.1f} MB stored, "
                  f"{(free or 0) / 1e9:.1f} GB free")
