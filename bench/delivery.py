"""Delivery benchmark (not a test): one de-identified-like study (300 MR images of 512x512, about 525 KB each,
plus two small non-image objects standing for the notes SR and the PDF) sent by ``routing.send.send_objects``
to a DCMTK storescp, with and without a reason to set in (0040,1002), and the same 300 files sent by DCMTK's
storescu to the same kind of storescp (the floor).

Each sender runs in its own process, so that a baseline tree (``--baseline SRC``: a folder holding another
version of the ``gateway`` package, e.g. ``git archive main gateway | tar -x -C /tmp/base``) can be timed in
the same session, its rounds interleaved with this tree's. Prints the median of ``--repeat`` rounds of each,
and the ratios to storescu.

    scripts/in-private-net.sh .venv/bin/python bench/delivery.py [--repeat 5] [--baseline /tmp/base]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "tests"))  # the suite's process helpers: real peers started and stopped by PID
sys.path.insert(0, str(REPO / "tests" / "routing"))

REASON = "Low back pain radiating to the left leg; query L5 root compression"


def worker(spool: Path, extras: Path, port: int, ae_title: str, modes: list[str]) -> dict[str, float]:
    """One round in this process: ``send_objects`` of the whole study once per mode; seconds per mode."""
    import pydicom

    from gateway.config import DicomPeer, NodeConfig
    from gateway.dicom.net import install_fast_paths
    from gateway.routing.send import send_objects, unsent_objects
    from gateway.storage.models import CaseState, OutboundObject
    from routing_db import make_case, open_db

    install_fast_paths()
    with tempfile.TemporaryDirectory() as scratch:
        database = open_db(f"sqlite:///{scratch}/bench.db")
        with database.connection_context():
            study = make_case(CaseState.ASSIGNED, reviewer="dr-a")
            files = [(p, "image") for p in sorted(spool.glob("*.dcm"))]
            files += [(p, kind) for p, kind in zip(sorted(extras.glob("*.dcm")), ("notes_sr", "pdf"))]
            for path, kind in files:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                OutboundObject.create(
                    study=study, kind=kind, sop_instance_uid=str(ds.SOPInstanceUID),
                    sop_class_uid=str(ds.SOPClassUID), transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
                    spool_path=str(path.relative_to(spool.parent)), sha256="0" * 64, size=path.stat().st_size)
            pending = unsent_objects(study, "reviewer:dr-a", OutboundObject.kind != "report")
            node = NodeConfig(ae_title="SPINEGW")
            peer = DicomPeer(ae_title=ae_title, host="127.0.0.1", port=port)
            seconds = {}
            for mode in modes:
                started = time.perf_counter()
                result = send_objects(node, spool.parent, peer, "reviewer:dr-a", pending,
                                      reason=REASON if mode == "reason" else None)
                seconds[mode] = time.perf_counter() - started
                if result.status != "delivered" or result.sent != len(pending):
                    raise SystemExit(f"delivery failed: {result}")
        database.close()
    return seconds


def run_worker(src: Path | None, spool: Path, extras: Path, port: int, ae_title: str,
               modes: list[str]) -> dict[str, float]:
    env = dict(os.environ)
    if src is not None:  # ahead of the editable install of this tree
        env["PYTHONPATH"] = f"{src}:{env.get('PYTHONPATH', '')}"
    out = subprocess.run([sys.executable, __file__, "--worker", str(spool), str(extras), str(port), ae_title,
                          *modes], env=env, capture_output=True, text=True, check=False, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"worker failed ({src or 'this tree'}): {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--baseline", type=Path, help="a folder holding the baseline's gateway package")
    args = parser.parse_args()

    from ingest import CACHE, send, study

    from gateway.demo import write_demo_study
    from support.peers import DcmtkStoreSCP

    spool = Path(study(args.instances)[0]).parent
    extras = CACHE / "delivery-extras"
    if len(list(extras.glob("*.dcm"))) != 2:
        write_demo_study(extras, 2, seed=11, rows=64, cols=64)
    images = sorted(spool.glob("*.dcm"))
    variants: list[tuple[str, Path | None]] = [("this tree", None)]
    if args.baseline is not None:
        variants.insert(0, ("baseline", args.baseline.resolve()))
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        scp = DcmtkStoreSCP(Path(scratch) / "storescp", ae_title="REVIEW_A").start()
        try:
            for round_ in range(args.repeat):
                modes = ["plain", "reason"] if round_ % 2 == 0 else ["reason", "plain"]
                for name, src in (variants if round_ % 2 == 0 else variants[::-1]):
                    for mode, seconds in run_worker(src, spool, extras, scp.port, scp.ae_title, modes).items():
                        times.setdefault(f"{name}: send_objects {'with' if mode == 'reason' else 'without'} "
                                         "reason", []).append(seconds)
                times.setdefault("storescu (floor)", []).append(send(scp.port, images, scp.ae_title))
        finally:
            scp.stop()
    floor = statistics.median(times["storescu (floor)"])
    print(f"{args.instances} images + 2 small objects, medians of {args.repeat} (storescu: the images only)")
    for label, values in sorted(times.items()):
        median = statistics.median(values)
        print(f"  {label:48s} {median:6.3f} s  x{median / floor:4.2f} of storescu  "
              f"({', '.join(f'{v:.3f}' for v in values)})")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        spool_dir, extras_dir, port_text, called, *wanted = sys.argv[2:]
        print(json.dumps(worker(Path(spool_dir), Path(extras_dir), int(port_text), called, wanted)))
    else:
        main()
