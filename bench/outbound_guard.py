"""Outbound guard benchmark (not a test): what checking the final bytes of a case costs the notes stage.

For the 300-instance study (de-identified in this run, as the workers would), with the identifier set of
the privacy test case: the time to build the set's search terms (word lists loaded), to check the notes
SR and PDF (PDF text extracted), and to read back and check every image up to its pixel data; and the
process's peak memory.

    python bench/outbound_guard.py [--instances 300]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import pydicom

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests" / "referral"))

from ingest import study  # noqa: E402  (the same cached synthetic study)

from gateway.deid import Deidentifier, DeidOptions, PatientContext  # noqa: E402
from gateway.deid.guard import find_leaks, find_leaks_in_file  # noqa: E402
from gateway.privacy.identifiers import IdentifierSet, from_header, header_values  # noqa: E402
from gateway.referral.document import Urgency  # noqa: E402
from gateway.referral.notes_pdf import NotesPDFBuilder  # noqa: E402
from gateway.referral.notes_sr import NotesSRBuilder  # noqa: E402
from gateway.referral.scrub import ScrubbedNotes  # noqa: E402
from privacy_cases import HEADER  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=300)
    args = parser.parse_args()
    files = study(args.instances)
    outbound = Path(tempfile.mkdtemp(prefix="guard-bench-"))
    deidentifier = Deidentifier(DeidOptions(), bytes(32))
    context = PatientContext(source="st-marys", case_label="a1b2c3d4e5f6")
    held: dict[str, list[str]] = {}
    for index, path in enumerate(files):
        original = pydicom.dcmread(path)
        for keyword, value in HEADER.items():
            setattr(original, keyword, value)
        for keyword, values in header_values(original).items():
            held.setdefault(keyword, values)
        deidentifier.deidentify(original, context, copy_dataset=False).dataset.save_as(
            outbound / f"{index}.dcm", enforce_file_format=True)
    started = time.perf_counter()
    identifiers = from_header(held).merged(IdentifierSet(sources=("st-marys", "STMARYS_PACS")))
    terms = identifiers.search_terms()
    compile_s = time.perf_counter() - started
    evidence = pydicom.dcmread(outbound / "0.dcm", stop_before_pixels=True)
    notes = ScrubbedNotes(urgency=Urgency.ROUTINE, history="Low back pain for 10 weeks; EHL 4/5. " * 40,
                          question="L4-L5 disc herniation with L5 root compression?")
    sr, pdf = NotesSRBuilder(evidence, notes).build(), NotesPDFBuilder(evidence, notes).build()
    started = time.perf_counter()
    assert not find_leaks(sr, identifiers) and not find_leaks(pdf, identifiers)
    notes_s = time.perf_counter() - started
    started = time.perf_counter()
    for path in sorted(outbound.iterdir()):
        assert not find_leaks_in_file(path, identifiers)
    images_s = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"search terms: {len(terms)} patterns in {compile_s * 1000:.0f} ms (word lists loaded)")
    print(f"notes SR + PDF checked in {notes_s * 1000:.0f} ms")
    print(f"{len(files)} images read back and checked in {images_s:.2f} s ({images_s / len(files) * 1000:.1f} ms each)")
    print(f"peak RSS {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
