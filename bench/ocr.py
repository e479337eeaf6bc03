"""Benchmark (not a test): OCR of burned-in text on 2,000 x 2,500 16-bit DX images, on one core.

Each image carries the patient's name, birth date, ID, accession number and hospital in its corners; one
de-identification reads it (both polarities), blanks the words, and reads it again. Reports seconds per image
and the process's resident memory at the start, after the first image and at the end (flat is the target).

    .venv/bin/python bench/ocr.py [--images 20] [--window]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_THREAD_LIMIT", "1")
os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "deid"))

from gateway.deid import Deidentifier, DeidOptions, PatientContext  # noqa: E402
from gateway.deid.options import OcrOptions  # noqa: E402
from ocr_images import Text, anatomy, burn, dx_dataset  # noqa: E402

ROWS, COLUMNS = 2500, 2000


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--window", action="store_true", help="give the images a header window (else min-max)")
    parser.add_argument("--reduce-from", type=int, default=0, help="deid.ocr.reduce_from_px (0: full size)")
    parser.add_argument("--noise", type=float, default=0.02, help="white noise of the anatomy, fraction of range")
    args = parser.parse_args()
    texts = [Text("MORGENSTERN HELENA", 40, 40, 48), Text("DOB 14/03/1962", 40, 100, 40),
             Text("ID PID7734521", 1500, 40, 40), Text("ACC55190", 1600, 2400, 40),
             Text("Riverside General Hospital", 40, 2420, 36)]
    base = anatomy(ROWS, COLUMNS, bits=12, noise=args.noise)
    options = DeidOptions(ocr=OcrOptions(reduce_from_px=args.reduce_from))
    deidentifier = Deidentifier(options, b"bench-ocr-secret-0123456789abcdef")
    start_rss = rss_mb()
    times: list[float] = []
    cpu: list[float] = []
    trajectory: list[int] = []
    first_rss = 0.0
    for index in range(args.images):
        pixels = burn(base, texts, 4095 - index)
        dataset = dx_dataset(pixels, bits=12, window=(1800, 3000) if args.window else None)
        started, started_cpu = time.perf_counter(), time.process_time()
        result = deidentifier.deidentify(dataset, PatientContext("BENCH"), copy_dataset=False)
        times.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
        assert result.pixels is not None and result.pixels.verdict == "cleaned", result.pixels
        if index == 0:
            first_rss = rss_mb()
        trajectory.append(round(rss_mb()))
    warm = times[1:] or times
    print(f"images: {len(times)} of {COLUMNS}x{ROWS} 16-bit (12 stored), "
          f"window: {'header' if args.window else 'min-max'}, "
          f"noise {args.noise:.1%}, read at {'half size' if args.reduce_from else 'full size'}")
    print(f"first image (engine start): {times[0]:.2f} s")
    print(f"per image after the first: mean {sum(warm) / len(warm):.2f} s, max {max(warm):.2f} s (wall clock)")
    warm_cpu = cpu[1:] or cpu
    print(f"per image after the first: mean {sum(warm_cpu) / len(warm_cpu):.2f} s CPU, "
          f"boxes blanked {result.pixels.boxes_blanked}")
    print(f"RSS: start {start_rss:.0f} MB, after first {first_rss:.0f} MB, end {rss_mb():.0f} MB; "
          f"peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    print(f"RSS after each image (MB): {trajectory}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
