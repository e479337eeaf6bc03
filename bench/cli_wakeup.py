"""CLI hand-off benchmark (not a test): how long a case waits after a command moves it, until the node takes it.

A node on SQLite with ``routing.poll_s`` (default: the shipped 5 s); each round sends a small study that waits
HELD for its referral, then runs ``spine-gateway referral add`` in its own process and measures from the
command's exit to the node's ``notes_attached`` (from the log's timestamp). Before commands woke the node this
was up to one poll; now it is the notes stage's own time (the wake-up goes at the commit, before the command
has finished exiting, so a round can come out slightly negative). Run it with another checkout's interpreter to compare
(the node and the command are ``python -m gateway`` of that interpreter):

    python bench/cli_wakeup.py [--rounds 5] [--poll-s 5] [--database URL]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from gateway.demo import DemoPatient, write_demo_study  # noqa: E402
from support.peers import DcmtkStoreSCP, GatewayProcess, storescu, wait_until  # noqa: E402


def _event_time(node: GatewayProcess, accession_case: set[str], state: str) -> tuple[str, float] | None:
    for event in node.log_events():
        if event["event"] == "case_state_changed" and event["state"] == state and event["case"] not in accession_case:
            return event["case"], dt.datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--poll-s", type=float, default=5.0)
    parser.add_argument("--database", help="default: SQLite in the work directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cli-wakeup-") as tmp:
        work = Path(tmp)
        reviewer = DcmtkStoreSCP(work / "reviewer", ae_title="REVIEW_A").start()
        node = GatewayProcess(work / "gw", args.database or f"sqlite:///{work}/gw.db", reviewers=[
            {"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1", "port": reviewer.port}],
            extra={"routing": {"stable_after_s": 1.0, "poll_s": args.poll_s, "echo_interval_s": 3600},
                   "referrals": {"wait_s": 3600}, "http": {"enabled": False}})
        waits, done = [], set()
        try:
            node.start()
            for round_ in range(args.rounds):
                patient = DemoPatient(patient_id=f"MRN9{round_:06d}", accession=f"B{round_:07d}")
                files = write_demo_study(work / f"study-{round_}", 4, patient=patient, seed=round_, rows=64, cols=64)
                assert storescu("127.0.0.1", node.port, files, calling="STMARYS_PACS").returncode == 0
                case, _ = wait_until(lambda: _event_time(node, done, "held"), 120, "the case held for its referral")
                referral = work / f"referral-{round_}.json"
                referral.write_text(json.dumps({
                    "source": "st-marys", "accession_number": patient.accession, "urgency": "routine",
                    "patient": {"id": patient.patient_id, "name": "Doe^Jane"},
                    "clinical": {"history": "Low back pain.", "question": "Disc herniation?"}}))
                node.cli("referral", "add", str(referral))
                exited = time.time()
                _, attached = wait_until(lambda: _event_time(node, done, "notes_attached"), 120,
                                         "the notes attached")
                waits.append(attached - exited)
                done.add(case)
                wait_until(lambda case=case: any(e["event"] == "case_state_changed" and e["case"] == case
                                       and e["state"] == "delivered" for e in node.log_events()), 120, "delivered")
        finally:
            node.stop()
            reviewer.stop()
    print(f"poll_s {args.poll_s}: command exit -> notes_attached over {len(waits)} rounds: median "
          f"{statistics.median(waits) * 1000:.0f} ms, max {max(waits) * 1000:.0f} ms "
          f"({', '.join(f'{w * 1000:.0f}' for w in waits)})")


if __name__ == "__main__":
    main()
