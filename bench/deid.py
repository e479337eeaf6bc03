"""De-identification benchmark (not a test): the 300-instance study de-identified, beside plain pydicom read +
write of the same files in the same run; the ratio is what the profile costs.

- ``read+write``, ``deid``, ``deid+guard``: CPU seconds on one core (the engine alone, the engine and the guard);
- ``worker``: CPU seconds on one core of what a de-identification worker does for each instance
  (``gateway.deid.work.deidentify_file``: read, profile, guard, encode, the texts read back for the notes check);
- ``--workers N``: the wall time of the whole study through the node's pool of N worker processes (the node's
  file writes and database rows not included);
- ``--orthanc``: against Orthanc's ``POST /studies/{id}/anonymize`` of the same study uploaded to it (wall time,
  and Orthanc's CPU seconds), interleaved with the pool. Needs ``scripts/in-private-net.sh``.

    python bench/deid.py [--instances 300] [--repeat 3] [--workers 2] [--orthanc]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from itertools import repeat
from pathlib import Path

import pydicom

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))  # the suite's process helpers: Orthanc started and stopped by PID

from ingest import cpu_seconds, study  # noqa: E402  (the same cached synthetic study)

from gateway.deid import Deidentifier, DeidOptions, PatientContext, find_leaks, identifiers_from_dataset  # noqa: E402
from gateway.deid.work import deid_pool, deidentify_file, init_worker  # noqa: E402

SECRET = b"k" * 32


def plain(files: list[Path]) -> float:
    started = time.process_time()
    for path in files:
        pydicom.dcmread(path).save_as(io.BytesIO(), enforce_file_format=True)
    return time.process_time() - started


def deidentified(files: list[Path], deidentifier: Deidentifier, guard: bool) -> float:
    context = PatientContext(source="st-marys", case_label="a1b2c3d4e5f6")
    started = time.process_time()
    for path in files:
        original = pydicom.dcmread(path)
        result = deidentifier.deidentify(original, context)
        if guard:
            assert not find_leaks(result.dataset, identifiers_from_dataset(original))
        result.dataset.save_as(io.BytesIO(), enforce_file_format=True)
    return time.process_time() - started


def worker(files: list[Path], tmp: str) -> float:
    started = time.process_time()
    for path in files:
        work = deidentify_file(str(path), "st-marys", "a1b2c3d4e5f6", tmp)
        assert work.data and not work.leak_paths
    return time.process_time() - started


def pool_wall(files: list[Path], workers: int, tmp: str) -> float:
    pool = deid_pool(DeidOptions(), SECRET, workers)
    try:
        pool.run(deidentify_file, [str(files[0])] * workers * 8, repeat("st-marys"), repeat("a"), repeat(tmp))  # all up
        started = time.perf_counter()
        works = pool.run(deidentify_file, [str(p) for p in files], repeat("st-marys"), repeat("a1b2c3d4e5f6"),
                         repeat(tmp))
        assert all(w.data and not w.leak_paths for w in works)
        return time.perf_counter() - started
    finally:
        pool.shutdown()


def orthanc_anonymize(peer: object, study_id: str) -> tuple[float, float]:
    """(wall seconds, Orthanc's CPU seconds) of one ``/anonymize`` of the study."""
    before = cpu_seconds(peer.proc.pid)  # type: ignore[attr-defined]
    started = time.perf_counter()
    peer.post(f"/studies/{study_id}/anonymize", {"Force": False}, timeout=900)  # type: ignore[attr-defined]
    return time.perf_counter() - started, cpu_seconds(peer.proc.pid) - before  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="also the study through a pool of N workers (wall)")
    parser.add_argument("--orthanc", action="store_true", help="also Orthanc's /anonymize of the same study")
    args = parser.parse_args()
    files = study(args.instances)
    deidentifier = Deidentifier(DeidOptions(), SECRET)
    init_worker(DeidOptions().model_dump_json(), SECRET)
    results: dict[str, list[float]] = {"read+write": [], "deid": [], "deid+guard": [], "worker": []}
    walls: dict[str, list[float]] = {}
    peer = study_id = None
    with tempfile.TemporaryDirectory(prefix="spinegw-deid-", dir="/var/tmp") as tmp:
        if args.orthanc:
            from support.peers import Orthanc
            peer = Orthanc(Path(tmp) / "orthanc", "ORTHANC").start()
            answers = peer.upload(files)
            study_id = answers[0]["ParentStudy"]
        try:
            for _ in range(args.repeat):
                results["read+write"].append(plain(files))
                results["deid"].append(deidentified(files, deidentifier, guard=False))
                results["deid+guard"].append(deidentified(files, deidentifier, guard=True))
                results["worker"].append(worker(files, tmp))
                if args.workers:
                    walls.setdefault(f"pool of {args.workers}, wall", []).append(pool_wall(files, args.workers, tmp))
                if peer is not None and study_id is not None:
                    wall, cpu = orthanc_anonymize(peer, study_id)
                    walls.setdefault("Orthanc /anonymize, wall", []).append(wall)
                    walls.setdefault("Orthanc /anonymize, CPU", []).append(cpu)
        finally:
            if peer is not None:
                peer.stop()
    print(f"{len(files)} instances, CPU seconds on one core, median of {args.repeat}")
    base = statistics.median(results["read+write"])
    for name, values in results.items():
        seconds = statistics.median(values)
        print(f"{name:12s} {len(files) / seconds:8.1f} instances/s per core  "
              f"{seconds / len(files) * 1000:6.2f} ms/instance  x{seconds / base:.2f} of read+write")
    for name, values in walls.items():
        seconds = statistics.median(values)
        print(f"{name:28s} {seconds:6.2f} s  {seconds / len(files) * 1000:6.2f} ms/instance  "
              f"(runs: {', '.join(f'{v:.2f}' for v in values)})")
    pool = f"pool of {args.workers}, wall"
    if pool in walls and "Orthanc /anonymize, wall" in walls:
        ratio = statistics.median(walls["Orthanc /anonymize, wall"]) / statistics.median(walls[pool])
        print(f"Orthanc /anonymize wall / pool wall: {ratio:.2f}  (target >= 2.00)")


if __name__ == "__main__":
    main()
