"""Many senders at once (not a test): five DCMTK storescu processes, each sending its own study in one
association, all started together, into (a) DCMTK storescp, (b) Orthanc, (c) spine-gateway; and the same
studies by one sender after the other, for comparison. Total instances/s = all instances / time from the start
of the first storescu to the exit of the last (every C-STORE answered: for the gateway, fsynced and committed).

Medians of interleaved runs in one run of the script; fresh processes and storage for each run. The gateway runs
the shipped configuration with the stability wait out of the way (so that no case completes while the senders
are measured; early de-identification still runs beside the receiving, as in production); Orthanc runs its
defaults. TCP_NODELAY=1 for DCMTK and Orthanc; the gateway sets it itself. Optionally ``--py-spy DIR`` records
the gateway's Python stacks that hold the interpreter lock (its CPU in Python, receiving processes included;
collapsed "folded" format, for flamegraph.pl or speedscope) during the last run of each mode (py-spy from PyPI:
``.venv/bin/pip install py-spy``; summarise with ``bench/spy_summary.py FILE``).

    scripts/in-private-net.sh .venv/bin/python bench/concurrent_senders.py [--runs 5] [--senders 5] [--instances 100]
        [--receiving-processes N] [--peers storescp,orthanc,gateway]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from ingest import cached_study, cpu_seconds, send, settle  # noqa: E402

from support.peers import DcmtkStoreSCP, GatewayProcess, Orthanc  # noqa: E402


def studies(count: int, instances: int) -> list[list[Path]]:
    """``count`` distinct studies (own patient seed, own UIDs) of ``instances`` each, cached under bench/out."""
    return [cached_study(f"concurrent-{instances}-{n}", instances, 100 + n) for n in range(count)]


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, in clock ticks (the first line of /proc/stat)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return sum(fields) - idle, sum(fields)


def at_once(port: int, called: str, sets: list[list[Path]]) -> float:
    errors: list[BaseException] = []

    def one(files: list[Path]) -> None:
        try:
            send(port, files, called)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(files,)) for files in sets]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise SystemExit(f"a sender failed: {errors[0]}")
    return time.perf_counter() - started


def one_after_another(port: int, called: str, sets: list[list[Path]]) -> float:
    started = time.perf_counter()
    for files in sets:
        send(port, files, called)
    return time.perf_counter() - started


def busy_while(send_all, busy: list[float]):
    """``send_all`` that also appends to ``busy`` the share of the machine's CPU in use while it ran (1.0: every
    core busy), whoever used it (senders, receiver, kernel)."""
    def run(port: int, called: str, sets: list[list[Path]]) -> float:
        before = machine_jiffies()
        seconds = send_all(port, called, sets)
        after = machine_jiffies()
        busy.append((after[0] - before[0]) / max(1, after[1] - before[1]))
        return seconds
    return run


def measure(name: str, work: Path, sets: list[list[Path]], together: bool, cpu: list[float], busy: list[float],
            spy: Path | None = None, receiving_processes: int | None = None) -> float:
    """Seconds for ``sets`` into a fresh ``name`` peer; appends the peer's own CPU per instance (its process and
    children) to ``cpu`` and the machine's share of CPU in use to ``busy``."""
    send_all = busy_while(at_once if together else one_after_another, busy)
    instances = sum(len(s) for s in sets)

    def timed(pid: int, port: int, called: str) -> float:
        before = cpu_seconds(pid)
        seconds = send_all(port, called, sets)
        cpu.append((cpu_seconds(pid) - before) / instances)
        return seconds

    if name == "storescp":
        peer = DcmtkStoreSCP(work).start()
        try:
            return timed(peer.proc.pid, peer.port, peer.ae_title)
        finally:
            peer.stop()
    if name == "orthanc":
        peer = Orthanc(work, "ORTHANC").start()
        try:
            settle(peer.proc.pid)
            return timed(peer.proc.pid, peer.dicom_port, "ORTHANC")
        finally:
            peer.stop()
    node = GatewayProcess(work, f"sqlite:///{work}/gateway.db", node={"receiving_processes": receiving_processes},
                          extra={"routing": {"stable_after_s": 3600}, "http": {"enabled": False}}).start()
    recorder = None
    try:
        if spy is not None:
            recorder = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                                         str(node.proc.pid), "--subprocesses", "--gil", "--rate", "100",
                                         "--format", "raw", "-o", str(spy)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # py-spy attaches
        settle(node.proc.pid)
        return timed(node.proc.pid, node.port, "SPINEGW")
    finally:
        if recorder is not None:
            recorder.send_signal(2)  # SIGINT: py-spy writes its output and exits
            recorder.wait(60)
        node.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--senders", type=int, default=5)
    parser.add_argument("--instances", type=int, default=100, help="instances per sender's study")
    parser.add_argument("--py-spy", type=Path, default=None, help="record the gateway in the last run into DIR")
    parser.add_argument("--receiving-processes", type=int, default=None,
                        help="the gateway's node.receiving_processes (default: the shipped default)")
    parser.add_argument("--peers", default="storescp,orthanc,gateway", help="which peers to run, comma-separated")
    args = parser.parse_args()
    sets = studies(args.senders, args.instances)
    total = sum(len(s) for s in sets)
    megabytes = sum(p.stat().st_size for s in sets for p in s) / 1e6
    peers = tuple(args.peers.split(","))
    times = {(peer, together): [] for peer in peers for together in (True, False)}
    cpu = {key: [] for key in times}
    busy = {key: [] for key in times}
    with tempfile.TemporaryDirectory(prefix="spinegw-conc-", dir="/var/tmp") as tmp:
        for run in range(args.runs):
            for (peer, together), values in times.items():  # interleaved
                work = Path(tmp) / f"{peer}-{together}-{run}"
                spy = None
                if args.py_spy and peer == "gateway" and run == args.runs - 1:
                    args.py_spy.mkdir(parents=True, exist_ok=True)
                    spy = args.py_spy / f"gateway-{'together' if together else 'serial'}.folded"
                seconds = measure(peer, work, sets, together, cpu[(peer, together)], busy[(peer, together)], spy,
                                  args.receiving_processes)
                values.append(seconds)
                mode = f"{args.senders} at once" if together else "one by one"
                print(f"  run {run + 1} {peer:8s} {mode:10s} {total / seconds:7.1f} instances/s", flush=True)
                shutil.rmtree(work, ignore_errors=True)
    rate = {key: total / statistics.median(values) for key, values in times.items()}
    print(f"\n{args.senders} studies x {args.instances} instances ({total} instances, {megabytes:.0f} MB); "
          f"medians of {args.runs} interleaved runs")
    print(f"{'':10s} {f'{args.senders} at once':>30s}   {'one by one':>30s}")
    print(f"{'peer':10s} " + "   ".join([f"{'instances/s':>11s} {'CPU/inst':>8s} {'machine':>8s}"] * 2))
    for peer in peers:
        cells = []
        for together in (True, False):
            key = (peer, together)
            cells.append(f"{rate[key]:11.1f} {statistics.median(cpu[key]) * 1000:5.2f} ms "
                         f"{statistics.median(busy[key]) * 100:7.0f}%")
        print(f"{peer:10s} " + "   ".join(cells))
    print("(CPU/inst: the peer's own processes; machine: share of both cores in use while sending, senders and "
          "kernel included)")
    if "gateway" not in peers:
        return 0
    if "orthanc" in peers:
        print(f"gateway / Orthanc, {args.senders} at once: {rate[('gateway', True)] / rate[('orthanc', True)]:.2f} "
              f"(target >= 1.20)")
        print(f"gateway / Orthanc, one by one:  {rate[('gateway', False)] / rate[('orthanc', False)]:.2f}")
    print(f"gateway, {args.senders} at once / one by one: {rate[('gateway', True)] / rate[('gateway', False)]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
