"""Stage loop benchmark (not a test): what the shared loop costs per case, and how much a poisoned case
slows the others.

On a database of its own (SQLite file, or ``--database`` URL), ``--cases`` quiet RECEIVING cases are moved to
COMPLETE by the completion stage (no spine filter): once through the stage loop (``run_case_stage``: claim,
step, release, per case) and once calling the step alone; the difference is the loop's cost per case. Then the
same with one case in ten raising in its step (backed off, then quarantined): the healthy cases' throughput.

    python bench/stage_loop.py [--cases 500] [--database postgresql://...]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import structlog

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway.config import RoutingConfig  # noqa: E402
from gateway.stages.completion import CompletionStage  # noqa: E402
from gateway.stages.pipeline import FailurePolicy, run_case_stage  # noqa: E402
from gateway.storage.models import CaseState, Instance, Series, Source, Study, db, open_database, utcnow  # noqa: E402


def make_cases(count: int, tag: str) -> list[Study]:
    source, _ = Source.get_or_create(name="st-marys", defaults={"ae_title": "STMARYS_PACS"})
    past = utcnow()
    made = []
    with db.atomic():
        for n in range(count):
            study = Study.create(study_uid=f"2.25.{tag}{n}", source=source, calling_ae="STMARYS_PACS",
                                 state=CaseState.RECEIVING, first_received_at=past, last_received_at=past)
            series = Series.create(study=study, series_uid=f"2.25.{tag}{n}1", modality="MR")
            Instance.create(study=study, series=series, sop_instance_uid=f"2.25.{tag}{n}11", sop_class_uid="1.2",
                            transfer_syntax="1.2.840.10008.1.2.1", size=1, sha256=f"{tag}{n}", spool_path="-",
                            calling_ae="STMARYS_PACS", received_at=past)
            made.append(study)
    return made


def through_loop(stage: CompletionStage, policy: FailurePolicy) -> float:
    started = time.perf_counter()
    while Study.select().where(Study.state == CaseState.RECEIVING).exists():
        run_case_stage(stage, utcnow(), policy)
    return time.perf_counter() - started


def step_alone(stage: CompletionStage) -> float:
    started = time.perf_counter()
    for study in stage.due(utcnow()):
        stage.step(study, utcnow())
    return time.perf_counter() - started


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))  # quiet
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--database", default=None, help="database URL (default: a SQLite file in a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database or f"sqlite:///{tmp}/bench.db"
        open_database(url, max_connections=4)
        stage = CompletionStage(RoutingConfig(stable_after_s=0))
        policy = FailurePolicy(max_failures=3, initial_s=0.001, max_s=0.002)
        with db.connection_context():
            make_cases(args.cases, "1")
            alone = step_alone(stage)
            make_cases(args.cases, "2")
            looped = through_loop(stage, policy)
            poisoned = {s.id for s in make_cases(args.cases, "3")[::10]}
            original = stage.step

            def step(study, now):
                if study.id in poisoned:
                    raise RuntimeError("poisoned")
                return original(study, now)

            stage.step = step
            with_poison = through_loop(stage, policy)
            given_up = Study.select().where(Study.state == CaseState.QUARANTINED).count()
        healthy = args.cases - len(poisoned)
        print(f"database {url.split(':', 1)[0]}, {args.cases} cases")
        print(f"step alone:            {args.cases / alone:8.0f} cases/s ({alone * 1000 / args.cases:.2f} ms each)")
        print(f"through the loop:      {args.cases / looped:8.0f} cases/s ({looped * 1000 / args.cases:.2f} ms each)")
        print(f"loop cost per case:    {(looped - alone) * 1000 / args.cases:8.2f} ms (claim, state check, release)")
        print(f"1 in 10 poisoned:      {healthy / with_poison:8.0f} healthy cases/s; {given_up} quarantined "
              f"after {policy.max_failures} failures each")


if __name__ == "__main__":
    main()
