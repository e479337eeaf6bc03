"""Load benchmark (not a test): many associations at once from several sources into one gateway while it
de-identifies and delivers to a DCMTK storescp reviewer.

Half the associations are DCMTK ``storescu`` processes, half pynetdicom SCUs, calling as three different
sources. Prints what was sent, acknowledged, stored, delivered, duplicated and lost, the rate (instances/s
while receiving, and until the last case was delivered) and the gateway's peak RSS (VmHWM) with RSS samples
taken every second. Run as root in the loopback-only namespace:

    scripts/in-private-net.sh .venv/bin/python bench/load.py                      # 20 x 3,000 x 128x128
    scripts/in-private-net.sh .venv/bin/python bench/load.py --rows 512 --instances 600
    scripts/in-private-net.sh .venv/bin/python bench/load.py --database postgresql
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "hardening")]

from gateway.dicom.net import install_fast_paths  # noqa: E402
from hardening_load import make_studies, run_load  # noqa: E402
from support.peers import PostgresCluster  # noqa: E402


def main() -> int:
    install_fast_paths()  # the in-process senders and reviewer run with the gateway's pynetdicom hooks, as a node
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--associations", type=int, default=20)
    parser.add_argument("--instances", type=int, default=3000)
    parser.add_argument("--rows", type=int, default=128, help="image size: rows = columns (128 or 512)")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it (logs, databases)")
    args = parser.parse_args()
    cluster = None
    with tempfile.TemporaryDirectory(prefix="spinegw-load-") as tmp:
        work = args.keep or Path(tmp)
        try:
            if args.database == "postgresql":
                cluster = PostgresCluster().start()
                url = cluster.new_database()
            else:
                url = f"sqlite:///{work}/gateway.db"
            studies = make_studies(work / "studies", args.associations, args.instances, args.rows)
            size_mb = sum(p.stat().st_size for s in studies for p in s) / 1e6
            result = run_load(work / "run", studies, url)
        finally:
            if cluster is not None:
                cluster.destroy()
    print(f"load: {args.instances} instances of {args.rows}x{args.rows} ({size_mb:.0f} MB), "
          f"{args.associations} associations at once, database {args.database}")
    print(result.report())
    bad = result.account.lost or result.account.duplicated or result.account.not_stored
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
