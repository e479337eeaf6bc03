"""Ingest benchmark (not a test): one 300-instance study sent by DCMTK storescu in one association to
(a) DCMTK storescp writing to disk, (b) Orthanc (default durable storage), (c) spine-gateway, in one run.

Prints medians of instances/s and MB/s, the ratios gateway/storescp and gateway/Orthanc, the gateway's CPU
seconds per instance, and (with --rss-gb) the gateway's peak RSS while receiving a study of that size.
TCP_NODELAY=1 is set for the DCMTK tools and Orthanc; the gateway sets it itself. Run it as root through
`make bench` so that the servers live in a private network namespace with only loopback.

    python bench/ingest.py [--repeat 3] [--instances 300] [--rss-gb 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the suite's process helpers: real peers started and stopped by PID

from gateway.demo import DemoPatient, write_demo_study  # noqa: E402
from support.peers import DcmtkStoreSCP, GatewayProcess, Orthanc, child_pids, storescu  # noqa: E402

CACHE = REPO / "bench" / "out"


def study(instances: int, seed: int = 7) -> list[Path]:
    return cached_study(f"study-{instances}", instances, seed)


def cached_study(name: str, instances: int, seed: int, patient: DemoPatient | None = None) -> list[Path]:
    """The demo study kept under ``bench/out/<name>``, written once (again when its count of files is not right)."""
    folder = CACHE / name
    files = sorted(folder.glob("*.dcm"))
    if len(files) != instances:
        shutil.rmtree(folder, ignore_errors=True)
        files = write_demo_study(folder, instances, seed=seed, patient=patient)
    return files


def _own_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0  # gone meanwhile
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in clock ticks of 10 ms


def cpu_seconds(pid: int) -> float:
    """CPU of the node and of its child processes (the receiving processes share the work of receiving)."""
    return _own_cpu_seconds(pid) + sum(_own_cpu_seconds(child) for child in child_pids(pid, b""))


def settle(pid: int, timeout: float = 60.0) -> None:
    """Wait until the freshly started node is idle (under 2 % of a core over a quarter of a second), so that its
    one-off start-up work finishing in the background (highdicom's tables, the notes engine) is not counted as
    CPU per instance."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(0.25)
        if cpu_seconds(pid) - before <= 0.005:
            return


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def receiving_peaks_mb(pid: int) -> list[float]:
    """Peak RSS of each of the node's receiving processes (``node.receiving_processes``)."""
    return [peak_rss_mb(child) for child in child_pids(pid, b"gateway.scp.receiving_process")]


def send(port: int, files: list[Path], called: str, calling: str = "STMARYS_PACS") -> float:
    started = time.perf_counter()
    result = storescu("127.0.0.1", port, files, calling=calling, called=called, timeout=3600)
    elapsed = time.perf_counter() - started
    if result.returncode != 0 or "Store Failed" in result.stderr or "E:" in result.stderr:
        raise SystemExit(f"storescu failed: {result.stderr[-500:]}")
    return elapsed


def run_storescp(workdir: Path, files: list[Path]) -> float:
    peer = DcmtkStoreSCP(workdir).start()
    try:
        return send(peer.port, files, peer.ae_title)
    finally:
        peer.stop()


def run_orthanc(workdir: Path, files: list[Path]) -> float:
    peer = Orthanc(workdir, "ORTHANC").start()
    try:
        return send(peer.dicom_port, files, "ORTHANC")
    finally:
        peer.stop()


def run_gateway(workdir: Path, files: list[Path], cpu: list[float]) -> float:
    node = GatewayProcess(workdir, f"sqlite:///{workdir}/gateway.db",
                          extra={"routing": {"stable_after_s": 3600}}).start()
    try:
        settle(node.proc.pid)
        before = cpu_seconds(node.proc.pid)
        elapsed = send(node.port, files, "SPINEGW")
        cpu.append((cpu_seconds(node.proc.pid) - before) / len(files))
        return elapsed
    finally:
        node.stop()


def rss_run(workdir: Path, gigabytes: float) -> tuple[int, float, float, list[float]]:
    files = study(int(gigabytes * 1e9 / 525_000), seed=11)
    node = GatewayProcess(workdir, f"sqlite:///{workdir}/gateway.db",
                          extra={"routing": {"stable_after_s": 3600}}).start()
    try:
        elapsed = send(node.port, files, "SPINEGW")
        return len(files), elapsed, peak_rss_mb(node.proc.pid), receiving_peaks_mb(node.proc.pid)
    finally:
        node.stop()


def durable_write_cpu(files: list[Path]) -> float:
    """This machine's floor for durable storage: CPU seconds per file (user and kernel) to write each file's bytes to
    a new file on the spool's file system and fsync it, in a plain loop. Every peer pays about this much per
    instance to store with full durability; on a VM it varies from day to day with the host."""
    contents = [path.read_bytes() for path in files]
    with tempfile.TemporaryDirectory(prefix="bench-fsync-", dir="/var/tmp") as tmp:
        started = time.process_time()
        for number, data in enumerate(contents):
            fd = os.open(f"{tmp}/{number}.dcm", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        return (time.process_time() - started) / len(contents)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--rss-gb", type=float, default=0.0, help="also measure peak RSS on a study this large")
    args = parser.parse_args()
    files = study(args.instances)
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    times: dict[str, list[float]] = {"storescp": [], "orthanc": [], "gateway": []}
    cpu: list[float] = []
    for repetition in range(args.repeat):
        for name in times:  # interleaved, so that drifts of the machine hit every peer alike
            with tempfile.TemporaryDirectory(prefix=f"bench-{name}-", dir="/var/tmp") as tmp:
                runner = {"storescp": run_storescp, "orthanc": run_orthanc}.get(name)
                elapsed = runner(Path(tmp), files) if runner else run_gateway(Path(tmp), files, cpu)
                times[name].append(elapsed)
                print(f"  run {repetition + 1} {name:8s} {len(files) / elapsed:7.1f} instances/s", flush=True)
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"\n{len(files)} instances, {megabytes:.0f} MB, one association, {args.repeat} runs each (medians)")
    print(f"{'peer':10s} {'instances/s':>12s} {'MB/s':>8s}")
    for name, seconds in median.items():
        print(f"{name:10s} {len(files) / seconds:12.1f} {megabytes / seconds:8.1f}")
    print(f"\nratio gateway/storescp: {median['storescp'] / median['gateway']:.2f}")
    print(f"ratio gateway/orthanc:  {median['orthanc'] / median['gateway']:.2f}")
    print(f"gateway CPU seconds per instance (node and its processes): {statistics.median(cpu) * 1000:.2f} ms")
    print(f"this machine's floor, writing and fsyncing the same files in a plain loop: "
          f"{durable_write_cpu(files) * 1000:.2f} ms CPU per instance")
    if args.rss_gb:
        with tempfile.TemporaryDirectory(prefix="bench-rss-", dir="/var/tmp") as tmp:
            count, elapsed, rss, receivers = rss_run(Path(tmp), args.rss_gb)
        print(f"\npeak RSS receiving {count} instances (~{args.rss_gb:g} GB): node {rss:.0f} MB; "
              f"receiving processes {', '.join(f'{mb:.0f}' for mb in receivers) or 'none'} MB "
              f"({count / elapsed:.1f} instances/s)")


if __name__ == "__main__":
    main()
