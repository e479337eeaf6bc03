"""De-identification benchmark (not a test): instances per second on one core for the 300-instance study,
beside plain pydicom read + write of the same files in the same run; the ratio is what the profile costs.

    python bench/deid.py [--instances 300] [--repeat 3]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import pydicom

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from ingest import study  # noqa: E402  (the same cached synthetic study)

from gateway.deid import Deidentifier, DeidOptions, PatientContext, find_leaks, identifiers_from_dataset  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    files = study(args.instances)
    deidentifier = Deidentifier(DeidOptions(), b"k" * 32)
    results: dict[str, list[float]] = {"read+write": [], "deid": [], "deid+guard": []}
    for _ in range(args.repeat):
        results["read+write"].append(plain(files))
        results["deid"].append(deidentified(files, deidentifier, guard=False))
        results["deid+guard"].append(deidentified(files, deidentifier, guard=True))
    print(f"{len(files)} instances, CPU seconds on one core, median of {args.repeat}")
    base = statistics.median(results["read+write"])
    for name, values in results.items():
        seconds = statistics.median(values)
        print(f"{name:12s} {len(files) / seconds:8.1f} instances/s per core  "
              f"{seconds / len(files) * 1000:6.2f} ms/instance  x{seconds / base:.2f} of read+write")


if __name__ == "__main__":
    main()
