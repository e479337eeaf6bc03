"""History benchmark (not a test): how the node's cost grows with the history in its database.

For each backend (SQLite, and PostgreSQL on a throwaway cluster of the test support code) one database is filled,
in steps, with synthetic history: ``--sizes`` cases (e.g. 0, 10,000, 100,000), each delivered and reported, with
its series, ``--instances-per-case`` instance rows, their UID map, outbound objects and delivery ledger rows, the
identity and match keys, a matched referral, an assignment and six audit rows; the report deliveries spread over
the last year. The rows go in through the models in bulk (``insert_many``), not by sending studies, and no spool
file exists for them. After each step a real node (``spine-gateway serve``, the shipped routing, de-identification
and referral settings, ``stable_after_s`` 2) is started on that database and measured:

- ingest: storescu's wall time for one study of ``--study-instances`` (DCMTK, one association);
- the stages' time for that case, from the node's ``case_state_changed`` log events: complete -> de-identified,
  -> notes attached, -> assigned, -> delivered (at a DCMTK storescp reviewer), and per instance;
- ``spine-gateway status --json`` (CLI wall time, Python's start included) and the status snapshot in process
  (``collect_status``, what the operators' page and ``status`` build), ``--repeat`` times each, median and p95;
- the data of the portal's list pages, built in process as their handlers build it, ``--repeat`` times each: the
  operators' overview (status snapshot, cases needing attention, waiting referrals), the referrer's case list (its
  first page) and the reviewer's worklist;
- ``spine-gateway purge --dry-run`` of a day's worth (``--days 364``: the cases reported 364-365 days ago);
- growth: the node's log bytes and audit rows for the one case, the database's size.

Then a table per backend and the ratios against the smallest size. Run as root through
``scripts/in-private-net.sh`` (DCMTK and PostgreSQL in a network namespace with only loopback):

    scripts/in-private-net.sh .venv/bin/python bench/history.py [--sizes 0,10000,100000] [--backends sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import peewee

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from e2e import REFERRAL, SHIPPED, received, send  # noqa: E402

from gateway.demo import DemoPatient, write_demo_study  # noqa: E402
from gateway.storage import models  # noqa: E402
from gateway.storage.models import (  # noqa: E402
    Assignment,
    AuditEvent,
    CaseState,
    Delivery,
    Instance,
    OutboundObject,
    Referral,
    Series,
    Source,
    Study,
    StudyIdentity,
    StudyMatchKeys,
    UidMap,
    db,
)
from support.peers import DcmtkStoreSCP, GatewayProcess, PostgresCluster, wait_until  # noqa: E402

CHUNK_CASES = 2000  # cases generated and inserted per transaction
STATES = ("complete", "deidentified", "notes_attached", "assigned", "delivered")
MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
AUDIT_ACTIONS = ("received", "deidentified", "assigned", "sent", "report_received", "report_delivered")


# --- filling -------------------------------------------------------------------------------------------------------

def _next_ids(*tables: type[models.BaseModel]) -> dict[type[models.BaseModel], int]:
    return {table: (table.select(peewee.fn.MAX(table.id)).scalar() or 0) + 1 for table in tables}


def _case_rows(n: int, ids: dict, per_case: int, source_id: int, now: dt.datetime,
               total: int) -> dict[type[models.BaseModel], list[dict[str, Any]]]:
    """Every row of synthetic case ``n`` (ids taken from ``ids``, which advances)."""
    delivered = now - dt.timedelta(days=365 * (n % total) / max(total, 1), minutes=5)
    received = delivered - dt.timedelta(days=2)
    study_id, series_id = ids[Study], ids[Series]
    ids[Study] += 1
    ids[Series] += 1
    rows: dict[type[models.BaseModel], list[dict[str, Any]]] = {table: [] for table in ids}
    key = f"h{n:011x}"
    rows[Study].append({
        "id": study_id, "key": key, "study_uid": f"2.25.1{n}", "source": source_id, "calling_ae": "STMARYS_PACS",
        "state": CaseState.REPORT_DELIVERED, "state_changed_at": delivered, "pseudo_study_uid": f"2.25.2{n}",
        "first_received_at": received, "last_received_at": received, "report_delivered_at": delivered,
        "reviewer": "dr-a", "delivery_attempts": 1, "report_attempts": 1, "urgency": "routine",
        "stage_failures": 0})
    rows[Series].append({"id": series_id, "study": study_id, "series_uid": f"2.25.3{n}", "modality": "MR"})
    rows[StudyIdentity].append({"id": study_id, "study": study_id, "patient_name": f"Hist^{n}",
                                "patient_id": f"HP{n}", "accession_number": f"HA{n}", "pseudo_patient_id": f"PP{n}",
                                "header_values": "{}", "image_text": "{}"})
    rows[StudyMatchKeys].append({"id": study_id, "study": study_id, "accession_number": f"HA{n}",
                                 "patient_id": f"HP{n}", "study_date": "20260101"})
    rows[Referral].append({"id": study_id, "source": source_id, "accession_number": f"HA{n}", "patient_id": f"HP{n}",
                           "document": "{}", "received_via": "http", "received_at": received, "state": "matched",
                           "study": study_id, "matched_at": received})
    rows[Assignment].append({"id": study_id, "study": study_id, "reviewer": "dr-a", "assigned_at": received,
                             "reason": "history", "active": True})
    for action in AUDIT_ACTIONS:
        rows[AuditEvent].append({"id": ids[AuditEvent], "at": received, "action": action, "study_key": key,
                                 "actor_ae": "STMARYS_PACS", "detail": "history"})
        ids[AuditEvent] += 1
    for i in range(per_case):
        instance_id, outbound_id = ids[Instance], ids[OutboundObject]
        ids[Instance] += 1
        ids[OutboundObject] += 1
        digest = f"{n:032x}{i:032x}"
        rows[Instance].append({
            "id": instance_id, "study": study_id, "series": series_id, "sop_instance_uid": f"2.25.4{n}.{i}",
            "sop_class_uid": MR, "transfer_syntax": EXPLICIT_LE, "size": 530_000, "sha256": digest,
            "spool_path": f"objects/{digest[:2]}/{digest}", "calling_ae": "STMARYS_PACS", "received_at": received,
            "state": "deidentified", "node": "history"})
        rows[UidMap].append({"id": ids[UidMap], "original_uid": f"2.25.4{n}.{i}", "pseudo_uid": f"2.25.5{n}.{i}",
                             "study": study_id})
        ids[UidMap] += 1
        rows[OutboundObject].append({
            "id": outbound_id, "study": study_id, "instance": instance_id, "kind": "image",
            "sop_instance_uid": f"2.25.5{n}.{i}", "sop_class_uid": MR, "transfer_syntax": EXPLICIT_LE,
            "spool_path": f"outbound/{key}/{i}.dcm", "sha256": digest, "size": 520_000, "created_at": received})
        rows[Delivery].append({"id": outbound_id, "outbound": outbound_id, "destination": "reviewer:dr-a",
                               "state": "sent", "attempts": 1, "last_status": 0, "sent_at": received})
    return rows


TABLES = (Study, Series, StudyIdentity, StudyMatchKeys, Referral, Assignment, AuditEvent, Instance, UidMap,
          OutboundObject, Delivery)


def _insert_rows(table: type[models.BaseModel], rows: list[dict[str, Any]]) -> None:
    """``rows`` (keyed by the model's field names) into ``table``, through the DB-API in bulk: the column names
    come from the model, the values go as they are (peewee's per-row conversion made a year take an hour)."""
    if not rows:
        return
    defaults = {field.name: field.default() if callable(field.default) else field.default
                for field in table._meta.sorted_fields if field.name not in rows[0] and field.default is not None}
    fields = [table._meta.fields[name] for name in [*rows[0], *defaults]]
    columns = ", ".join(f'"{field.column_name}"' for field in fields)
    extra = tuple(defaults.values())
    values = [(*row.values(), *extra) for row in rows]
    cursor = db.cursor()
    if isinstance(db.obj, peewee.PostgresqlDatabase):
        from psycopg2.extras import execute_values

        execute_values(cursor, f'INSERT INTO "{table._meta.table_name}" ({columns}) VALUES %s', values,
                       page_size=2000)
    else:
        marks = ", ".join("?" for _ in fields)
        cursor.executemany(f'INSERT INTO "{table._meta.table_name}" ({columns}) VALUES ({marks})', values)


def fill(first: int, last: int, per_case: int, total: int) -> float:
    """Add synthetic cases ``first`` .. ``last - 1``; return the seconds it took."""
    started = time.perf_counter()
    now = models.utcnow()
    with db.connection_context():
        source_id = Source.get(Source.name == "st-marys").id
        ids = _next_ids(*TABLES)
        for start in range(first, last, CHUNK_CASES):
            batch: dict[type[models.BaseModel], list[dict[str, Any]]] = {table: [] for table in TABLES}
            for n in range(start, min(last, start + CHUNK_CASES)):
                for table, rows in _case_rows(n, ids, per_case, source_id, now, total).items():
                    batch[table].extend(rows)
            with db.atomic():
                for table in TABLES:
                    _insert_rows(table, batch[table])
        if isinstance(db.obj, peewee.PostgresqlDatabase):
            for table in TABLES:  # the rows came with their ids: move the sequences past them
                name = table._meta.table_name
                db.execute_sql(f"SELECT setval(pg_get_serial_sequence('\"{name}\"', 'id'), "
                               f"(SELECT COALESCE(MAX(id), 1) FROM \"{name}\"))")
            db.execute_sql("ANALYZE")  # as autovacuum would after such a load; the node never runs ANALYZE on SQLite
    return time.perf_counter() - started


# --- measuring -----------------------------------------------------------------------------------------------------

def _ts(event: dict) -> dt.datetime:
    return dt.datetime.fromisoformat(event["ts"].replace("Z", "+00:00"))


def timed(action: Callable[[], Any], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return times


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]


def stage_times(events: list[dict], key: str) -> dict[str, float]:
    """Seconds from each state to the next for case ``key`` (first time each state was reached)."""
    reached: dict[str, dt.datetime] = {}
    for event in events:
        if event.get("event") == "case_state_changed" and event.get("case") == key:
            reached.setdefault(event["state"], _ts(event))
    return {f"{a}->{b}": (reached[b] - reached[a]).total_seconds()
            for a, b in zip(STATES, STATES[1:]) if a in reached and b in reached}


def new_study(work: Path, instances: int, number: int) -> tuple[list[Path], dict[str, Any]]:
    """A study of its own for each measurement (new UIDs, another patient and accession) and its referral."""
    patient = DemoPatient(patient_id=f"BENCH{number}", accession=f"B{number}")
    files = write_demo_study(work / "study", instances, patient=patient, seed=number)
    referral = {**REFERRAL, "accession_number": patient.accession,
                "patient": {**REFERRAL["patient"], "id": patient.patient_id}}
    return files, referral


def measure(url: str, work: Path, instances: int, number: int, repeat: int) -> dict[str, Any]:
    """Start a node on ``url``, send one study through it, time status and purge; the node is stopped after."""
    files, referral = new_study(work, instances, number)
    reviewer = DcmtkStoreSCP(work / "reviewer", ae_title="REVIEWER").start()
    node_shipped = {k: v for k, v in SHIPPED["node"].items() if k not in ("host", "port", "ae_title")}
    node = GatewayProcess(
        work / "gw", url, node=node_shipped,
        reviewers=[{"name": "dr-a", "ae_title": "REVIEWER", "host": "127.0.0.1", "port": reviewer.port}],
        extra={"routing": {**SHIPPED["routing"], "stable_after_s": 2}, "deid": SHIPPED["deid"],
               "referrals": SHIPPED["referrals"], "http": {"enabled": False}})
    result: dict[str, Any] = {}
    try:
        started = time.perf_counter()
        node.start(timeout=600)
        result["start_s"] = time.perf_counter() - started
        (work / "referral.json").write_text(json.dumps(referral))
        node.cli("referral", "add", str(work / "referral.json"))
        log_before = node.log_file.stat().st_size
        started = time.perf_counter()
        send(node.port, files, "STMARYS_PACS", "SPINEGW")
        result["ingest_s"] = time.perf_counter() - started
        wait_until(lambda: received(reviewer) >= len(files) + 2, 900, "the study at the reviewer", 0.02)
        result["to_reviewer_s"] = time.perf_counter() - started - 2  # the stability wait subtracted
        events = wait_until(lambda: _delivered(node), 120, "the delivery to be committed")
        key = next(e["case"] for e in events
                   if e.get("event") == "case_state_changed" and e.get("state") == "delivered")
        result["stages"] = stage_times(events, key)
        result["log_bytes"] = node.log_file.stat().st_size - log_before
        result["status_cli"] = timed(lambda: cli(node, "status", "--json"), repeat)
        result["purge_day"] = timed(lambda: cli(node, "purge", "--dry-run", "--days", "364"), max(1, repeat // 3))
        result["case"] = key
    finally:
        node.stop()
        reviewer.stop()
    return result


def cli(node: GatewayProcess, *args: str) -> None:
    """A command of the node's CLI, given up to half an hour (``GatewayProcess.cli`` gives two minutes)."""
    subprocess.run([sys.executable, "-m", "gateway", "--config", str(node.config_path), *args], cwd=node.workdir,
                   capture_output=True, check=True, timeout=1800)


def _delivered(node: GatewayProcess) -> list[dict] | None:
    events = node.log_events()
    return events if any(e.get("event") == "case_state_changed" and e.get("state") == "delivered"
                         for e in events) else None


def in_process(url: str, spool: Path, key: str, repeat: int) -> dict[str, Any]:
    """The status snapshot built in this process (as the ops page builds it), the case's audit rows, database size."""
    from gateway.ops.status import collect_status

    models.open_database(url)
    with db.connection_context():
        audit_rows = AuditEvent.select().where(AuditEvent.study_key == key).count()
        if isinstance(db.obj, peewee.PostgresqlDatabase):
            size = db.execute_sql("SELECT pg_database_size(current_database())").fetchone()[0]
        else:
            size = os.path.getsize(db.obj.database)
    collect_status(spool)  # once untimed: the first call imports the overview modules
    snapshot = timed(lambda: collect_status(spool), repeat)
    return {"status_snapshot": snapshot, "audit_rows": audit_rows, "db_bytes": size, **portal_lists(spool, repeat)}


def portal_lists(spool: Path, repeat: int) -> dict[str, list[float]]:
    """The data of the portal's list pages, built in this process as their handlers build it (the HTML around
    it is not timed): the operators' overview (the status snapshot, the cases needing attention, the waiting
    referrals), the referrer's case list and the reviewer's worklist."""
    from gateway.ops.status import collect_status
    from gateway.web import views

    def ops_page() -> None:
        collect_status(spool)
        views.attention_cases()
        views.waiting_referrals(86400)

    pages = {"ops_page": ops_page, "referrer_page": lambda: views.referrer_cases("st-marys"),
             "worklist_page": lambda: views.worklist("dr-a")}
    timings = {}
    for name, build in pages.items():
        with db.connection_context():
            timings[name] = timed(build, repeat)
    return timings


# --- the run -------------------------------------------------------------------------------------------------------

def rows_for(backend: str, url: str, sizes: list[int], args: argparse.Namespace, tmp: Path) -> Iterator[dict[str, Any]]:
    models.open_database(url)
    with db.connection_context():
        models.sync_sources([("st-marys", "STMARYS_PACS")])
    filled = 0
    for size in sizes:
        fill_s = fill(filled, size, args.instances_per_case, max(sizes)) if size > filled else 0.0
        filled = max(filled, size)
        db.close_all()
        print(f"{backend}: {size} cases filled ({fill_s:.0f} s)", flush=True)
        work = tmp / f"{backend}-{size}"
        row = {"size": size, "fill_s": fill_s,
               **measure(url, work, args.study_instances, len(sizes) * 10 + sizes.index(size), args.repeat)}
        row.update(in_process(url, work / "gw" / "spool", row["case"], args.repeat))
        db.close_all()
        print(f"  {json.dumps({k: v for k, v in row.items() if k != 'stages'}, default=_short)}", flush=True)
        yield row


def _short(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else str(value)


def figures(row: dict[str, Any]) -> dict[str, float]:
    stages = row["stages"]
    return {
        "ingest s": row["ingest_s"],
        "to reviewer s": row["to_reviewer_s"],
        **{f"{name} s": stages.get(name, float("nan")) for name in
           ("complete->deidentified", "deidentified->notes_attached", "notes_attached->assigned",
            "assigned->delivered")},
        "status CLI med s": statistics.median(row["status_cli"]),
        "status CLI p95 s": p95(row["status_cli"]),
        "snapshot med ms": statistics.median(row["status_snapshot"]) * 1000,
        "snapshot p95 ms": p95(row["status_snapshot"]) * 1000,
        **{f"{name.replace('_', ' ')} {kind} ms": pick(row[name]) * 1000 for name in
           ("ops_page", "referrer_page", "worklist_page") for kind, pick in (("med", statistics.median), ("p95", p95))},
        "purge day s": statistics.median(row["purge_day"]),
        "log KB/case": row["log_bytes"] / 1000,
        "audit rows/case": row["audit_rows"],
        "database MB": row["db_bytes"] / 1e6,
        "node start s": row["start_s"],
    }


def print_table(backend: str, rows: list[dict[str, Any]]) -> None:
    table = [figures(row) for row in rows]
    sizes = [row["size"] for row in rows]
    print(f"\n{backend}: cases in history {', '.join(f'{s:,}' for s in sizes)}; ratio = value / value at {sizes[0]:,}")
    print(f"{'':30}" + "".join(f"{s:>12,}" for s in sizes) + "".join(f"{'x ' + format(s, ','):>12}" for s in sizes[1:]))
    for name in table[0]:
        values = [t[name] for t in table]
        ratios = [v / values[0] if values[0] else float("nan") for v in values[1:]]
        print(f"{name:30}" + "".join(f"{v:12.3f}" for v in values) + "".join(f"{r:12.2f}" for r in ratios))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0,10000,100000", help="cases in history, ascending, comma-separated")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--instances-per-case", type=int, default=10)
    parser.add_argument("--study-instances", type=int, default=100, help="instances of the study sent at each size")
    parser.add_argument("--repeat", type=int, default=10, help="status timings per size")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: the peers are stopped by the finally blocks
    sizes = sorted(int(s) for s in args.sizes.split(","))
    key_dir = Path(tempfile.mkdtemp(prefix="history-key-"))
    (key_dir / "secret.key").write_text("ab" * 32 + "\n")
    SHIPPED["deid"]["secret_file"] = str(key_dir / "secret.key")
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="spinegw-history-", dir="/var/tmp") as tmp:
        for backend in args.backends.split(","):
            cluster = PostgresCluster().start() if backend == "postgresql" else None
            try:
                url = cluster.new_database() if cluster else f"sqlite:///{tmp}/history.db"
                results[backend] = list(rows_for(backend, url, sizes, args, Path(tmp)))
            finally:
                db.close_all()
                if cluster is not None:
                    cluster.destroy()
    print(f"\none study of {args.study_instances} instances per size; {args.instances_per_case} instance rows per case "
          "in history; stability wait 2 s subtracted from 'to reviewer'")
    for backend, rows in results.items():
        print_table(backend, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
