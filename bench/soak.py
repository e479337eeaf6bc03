"""Soak run (minutes, not part of ``make test``): parallel senders, kill -9 of the gateway at random moments,
the reviewer going down and up, and PostgreSQL restarted underneath, all at once; then the account.

Senders (pynetdicom SCUs, three sources) send studies paced over the whole chaos period, and resend whatever
was not acknowledged. Meanwhile the gateway is killed ``--kills`` times at random intervals and restarted;
the reviewer (a pynetdicom SCP that records every C-STORE it answers) is stopped for a few seconds now and
then; on PostgreSQL the server is stopped and started twice. When the chaos ends the run waits for every
acknowledged instance to reach the reviewer and prints what was sent, acknowledged, stored, delivered,
duplicated and lost; it exits 1 unless the last two are zero. Run as root in the loopback-only namespace:

    scripts/in-private-net.sh .venv/bin/python bench/soak.py                      # about 3-4 minutes
    scripts/in-private-net.sh .venv/bin/python bench/soak.py --kills 20 --studies 40 --database sqlite
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "hardening")]

from gateway.demo import write_demo_study  # noqa: E402
from gateway.dicom.net import install_fast_paths  # noqa: E402
from hardening_flow import Ledger, send_files, uid_of, unacknowledged, wait_all_delivered  # noqa: E402
from hardening_load import SOURCES  # noqa: E402
from hardening_support import CountingReviewer, fast_extra, reviewer_config  # noqa: E402
from support.peers import GatewayProcess, PostgresCluster  # noqa: E402


class Chaos:
    """What was done to the system, for the report."""

    def __init__(self) -> None:
        self.kills = 0
        self.reviewer_outages = 0
        self.database_restarts = 0


def sender(port: int, queue: list[list[Path]], lock: threading.Lock, ledger: Ledger, uids: dict[Path, str],
           calling: str, pace_s: float, stop: threading.Event, rng: random.Random) -> None:
    """Take studies from ``queue`` and send each until every file is acknowledged (resending after kills)."""
    while not stop.is_set():
        with lock:
            if not queue:
                return
            files = queue.pop()
        while not stop.is_set():
            missing = unacknowledged(files, ledger, uids)
            if not missing:
                break
            send_files(port, missing, ledger, uids, calling=calling)
            if unacknowledged(files, ledger, uids):
                time.sleep(0.3)  # the node is down or restarting: try again shortly
        time.sleep(rng.uniform(0.5, 1.5) * pace_s)


def chaos_loop(node: GatewayProcess, reviewer: CountingReviewer, cluster: PostgresCluster | None, kills: int,
               interval_s: float, chaos: Chaos, rng: random.Random) -> None:
    outage_at = {kills // 4, (3 * kills) // 4}
    database_at = {kills // 3, (2 * kills) // 3} if cluster is not None else set()
    for number in range(kills):
        time.sleep(rng.uniform(0.3, 1.7) * interval_s)
        if number in outage_at:
            reviewer.stop()
            chaos.reviewer_outages += 1
            time.sleep(rng.uniform(2, 5))
            reviewer.start()
        if number in database_at:
            cluster.stop_server()
            chaos.database_restarts += 1
            time.sleep(rng.uniform(2, 4))
            cluster.restart_server()
        node.kill()
        chaos.kills += 1
        node.start(timeout=90)


def main() -> int:
    install_fast_paths()  # the in-process senders and reviewer run with the gateway's pynetdicom hooks, as a node
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--interval", type=float, default=5.0, help="mean seconds between kills")
    parser.add_argument("--studies", type=int, default=36)
    parser.add_argument("--instances", type=int, default=20, help="instances per study")
    parser.add_argument("--senders", type=int, default=6)
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="postgresql")
    parser.add_argument("--seed", type=int, default=8)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="spinegw-soak-") as tmp:
        work = Path(tmp)
        cluster = PostgresCluster().start() if args.database == "postgresql" else None
        url = cluster.new_database() if cluster else f"sqlite:///{work}/gateway.db"
        studies = [write_demo_study(work / "studies" / f"s{i:03d}", args.instances, seed=500 + i, rows=64, cols=64)
                   for i in range(args.studies)]
        uids = {p: uid_of(p) for study in studies for p in study}
        reviewer = CountingReviewer().start()
        node = GatewayProcess(work / "gw", url, sources=[{"name": n, "ae_title": ae} for n, ae in SOURCES],
                              reviewers=[reviewer_config(reviewer.port)],
                              node={"acse_timeout_s": 5, "network_timeout_s": 10, "dimse_timeout_s": 10},
                              extra=fast_extra(routing={"stable_after_s": 1.0, "poll_s": 0.3}))
        ledger, chaos = Ledger(), Chaos()
        try:
            node.start()
            queue, lock, stop = list(studies), threading.Lock(), threading.Event()
            pace_s = args.kills * args.interval * args.senders / max(args.studies, 1)
            threads = [threading.Thread(target=sender, args=(node.port, queue, lock, ledger, uids,
                                                             SOURCES[i % len(SOURCES)][1], pace_s, stop,
                                                             random.Random(args.seed + i)))
                       for i in range(args.senders)]
            for thread in threads:
                thread.start()
            chaos_loop(node, reviewer, cluster, args.kills, args.interval, chaos, rng)
            for thread in threads:
                thread.join(600)
            result = wait_all_delivered(node, url, ledger, reviewer, 900)
        finally:
            node.stop()
            reviewer.stop()
            if cluster is not None:
                cluster.destroy()
    elapsed = time.monotonic() - started
    print(f"soak: {elapsed / 60:.1f} min, database {args.database}, {args.senders} parallel senders, "
          f"{args.studies} studies x {args.instances} instances")
    print(f"faults: kill -9 x{chaos.kills} (each followed by a restart), reviewer down/up x{chaos.reviewer_outages}, "
          f"PostgreSQL stop/start x{chaos.database_restarts}")
    refused = ", ".join(f"{'no answer' if code is None else f'0x{code:04X}'} x{count}"
                        for code, count in Counter(ledger.failures).most_common()) or "none"
    print(f"sent (distinct instances): {len(uids)}; answers other than success seen by senders: {refused} "
          f"(each instance resent until acknowledged)")
    print(f"acknowledged: {len(result.acknowledged)}  stored: {len(result.stored)}  "
          f"delivered: {sum(1 for c in result.delivered_images.values() if c)}")
    print(f"duplicated: {len(result.duplicated)}  lost: {len(result.lost)}  "
          f"acknowledged-but-not-stored: {len(result.not_stored)}  unexplained at reviewer: {len(result.unexplained)}")
    print(f"resent on the wire (same object, same SOP Instance UID, stored once by the reviewer): {result.resent}")
    return 1 if result.duplicated or result.lost or result.not_stored or result.unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
