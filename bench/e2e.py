"""End-to-end benchmark (not a test): first instance sent by storescu → whole study at a reviewer.

Three paths for the same 300-instance study, in one run:

(a) plain DCMTK: storescu → storescp (the floor);
(b) Orthanc as a forwarder: storescu → Orthanc, then REST ``POST /modalities/reviewer/store`` to a storescp
    (Orthanc forwards the study untouched; the POST is issued the moment storescu has finished);
(c) spine-gateway: storescu → gateway, which completes the study, checks it is spine, de-identifies it,
    attaches the referral's notes (added beforehand), assigns it and delivers it to a storescp reviewer.
    The stability wait (``routing.stable_after_s``) is subtracted: it is a configured pause, not work.

TCP_NODELAY=1 for the DCMTK tools and Orthanc; the gateway sets it itself. Run as root through
``scripts/in-private-net.sh`` so that the servers live in a network namespace with only loopback:

    scripts/in-private-net.sh .venv/bin/python bench/e2e.py [--instances 300] [--stable-after 1.0]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the suite's process helpers: real peers started and stopped by PID
sys.path.insert(0, str(REPO / "bench"))

from ingest import study  # noqa: E402
from support.peers import DcmtkStoreSCP, GatewayProcess, Orthanc, storescu, wait_until  # noqa: E402

from gateway.demo import DemoPatient  # noqa: E402

REFERRAL = {"source": "st-marys", "accession_number": DemoPatient().accession, "urgency": "routine",
            "patient": {"id": DemoPatient().patient_id, "name": "Doe^Jane"},
            "clinical": {"history": "Low back pain for 10 weeks.", "question": "L4-L5 disc herniation?"}}


def received(scp: DcmtkStoreSCP) -> int:
    return sum(1 for p in scp.out_dir.iterdir() if p.is_file())


def plain(files: list[Path], work: Path) -> float:
    scp = DcmtkStoreSCP(work / "plain", ae_title="REVIEWER").start()
    try:
        started = time.perf_counter()
        assert storescu("127.0.0.1", scp.port, files, calling="BENCH", called="REVIEWER").returncode == 0
        wait_until(lambda: received(scp) >= len(files), 120, "storescp to write every file", interval=0.005)
        return time.perf_counter() - started
    finally:
        scp.stop()


def orthanc_forward(files: list[Path], work: Path) -> float:
    scp = DcmtkStoreSCP(work / "orthanc-reviewer", ae_title="REVIEWER").start()
    orthanc = Orthanc(work / "orthanc", "ORTHANC", modalities={"reviewer": ["REVIEWER", "127.0.0.1", scp.port]})
    orthanc.start()
    try:
        started = time.perf_counter()
        assert storescu("127.0.0.1", orthanc.dicom_port, files, calling="BENCH", called="ORTHANC").returncode == 0
        study_id, = orthanc.get("/studies")
        orthanc.post("/modalities/reviewer/store", {"Resources": [study_id], "Synchronous": True})
        wait_until(lambda: received(scp) >= len(files), 120, "the forwarded study", interval=0.005)
        return time.perf_counter() - started
    finally:
        orthanc.stop()
        scp.stop()


def gateway(files: list[Path], work: Path, stable_after: float) -> tuple[float, int]:
    scp = DcmtkStoreSCP(work / "gw-reviewer", ae_title="REVIEWER").start()
    node = GatewayProcess(work / "gw", f"sqlite:///{work}/gw/gateway.db", reviewers=[
        {"name": "dr-a", "ae_title": "REVIEWER", "host": "127.0.0.1", "port": scp.port}],
        extra={"routing": {"stable_after_s": stable_after, "poll_s": 0.05}, "http": {"enabled": False}})
    try:
        node.start()
        referral = work / "referral.json"
        referral.write_text(json.dumps(REFERRAL))
        node.cli("referral", "add", str(referral))
        started_wall = dt.datetime.now(dt.UTC)
        assert storescu("127.0.0.1", node.port, files, calling="STMARYS_PACS").returncode == 0

        def delivered() -> dict | None:
            return next((e for e in node.log_events()
                         if e["event"] == "case_state_changed" and e.get("state") == "delivered"), None)

        event = wait_until(delivered, 600, "the gateway to deliver the study", interval=0.05)
        elapsed_wall = (dt.datetime.fromisoformat(event["ts"].replace("Z", "+00:00")) - started_wall).total_seconds()
        return elapsed_wall - stable_after, received(scp)
    finally:
        node.stop()
        scp.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--stable-after", type=float, default=1.0, help="gateway routing.stable_after_s")
    args = parser.parse_args()
    files = study(args.instances)
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    with tempfile.TemporaryDirectory(prefix="spinegw-e2e-") as tmp:
        work = Path(tmp)
        t_plain = plain(files, work)
        t_orthanc = orthanc_forward(files, work)
        t_gateway, objects = gateway(files, work, args.stable_after)
    print(f"study: {len(files)} instances, {megabytes:.0f} MB")
    print(f"plain storescu -> storescp:                      {t_plain:7.2f} s")
    print(f"storescu -> Orthanc -> forward to storescp:      {t_orthanc:7.2f} s")
    print(f"storescu -> spine-gateway -> storescp reviewer:  {t_gateway:7.2f} s "
          f"({objects} objects incl. notes; stability wait {args.stable_after:.1f} s subtracted)")
    print(f"gateway / plain:   {t_gateway / t_plain:5.2f}")
    print(f"gateway / Orthanc: {t_gateway / t_orthanc:5.2f}  ({'gateway first' if t_gateway < t_orthanc else 'Orthanc first'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
