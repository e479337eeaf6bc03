"""Nodes starting together (not a test): how many of N rounds of several nodes starting at once on a fresh
database fail, and with what message.

Each round makes a fresh database (PostgreSQL: a new database on a throwaway cluster of its own; SQLite: a new
file) and lets ``--nodes`` processes run a node's start-up on it at the same moment (the migrations, then the
source rows: ``tests/support/startup.py``). Run it with another checkout's code to compare, e.g. before and after
a fix (the start-up processes import ``gateway`` from ``PYTHONPATH``):

    scripts/in-private-net.sh python bench/start_together.py [--runs 20] [--nodes 3] [--database postgresql|sqlite]
    PYTHONPATH=/path/to/other/checkout scripts/in-private-net.sh python bench/start_together.py
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.peers import PostgresCluster  # noqa: E402
from support.startup import start_at_once, write_config  # noqa: E402

SOURCES = [{"name": "st-marys", "ae_title": "STMARYS_PACS"}, {"name": "city-imaging", "ae_title": "CITY_PACS"}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--database", choices=("postgresql", "sqlite"), default="postgresql")
    args = parser.parse_args()
    cluster = PostgresCluster().start() if args.database == "postgresql" else None
    failed_rounds, messages = 0, collections.Counter()
    try:
        with tempfile.TemporaryDirectory(prefix="start-together-") as tmp:
            for run in range(args.runs):
                work = Path(tmp) / f"run{run}"
                work.mkdir()
                url = cluster.new_database() if cluster is not None else f"sqlite:///{work}/gateway.db"
                configs = []
                for n in range(args.nodes):
                    (work / f"node{n}").mkdir()
                    configs.append(write_config(work / f"node{n}" / "gateway.yaml", url, SOURCES))
                failures = [r for r in start_at_once(configs) if r.returncode != 0]
                failed_rounds += bool(failures)
                messages.update(r.stderr.splitlines()[-1] if r.stderr else "(no message)" for r in failures)
                print(f"run {run + 1}: {len(failures)} of {args.nodes} start-ups failed", flush=True)
    finally:
        if cluster is not None:
            cluster.destroy()
    print(f"{failed_rounds} of {args.runs} rounds had a start-up fail ({sum(messages.values())} of "
          f"{args.runs * args.nodes} start-ups, {args.database})")
    for message, count in messages.most_common():
        print(f"  {count} x {message}")


if __name__ == "__main__":
    main()
