"""A study is declared complete at its stability deadline, whatever the de-identification backlog (issue 29).

A running node (a subprocess) receives a study of a few hundred small instances through DCMTK storescu. Its
de-identification stage takes the study's early instances (``gateway.stages.deid``: once the study has paused
for ``EARLY_AFTER_QUIET_S``) before ``routing.stable_after_s`` has passed, and works through them for longer than
the rest of the wait. The node's log must show the study complete (``case_state_changed`` to ``complete``) at its
deadline: ``stable_after_s`` after the last instance was stored, with a margin for a loaded machine, and well
before the de-identification of the study ends. Before the fix completion waited for the early work's claim,
then for its own poll: completion came as the case was de-identified, many seconds late.

The check is an order of logged events (complete before the backlog ends), not a speed figure. The first test
shows the same in one process, without peers: a quiet study whose claim the de-identification stage holds is
made complete by the stage loop all the same.
"""

from __future__ import annotations

import datetime as dt
import sys
import threading
from pathlib import Path

import pytest

from gateway.config import RoutingConfig
from gateway.demo import write_demo_study
from gateway.stages.completion import CompletionStage
from gateway.stages.pipeline import STAGE_THREADS, Pipeline, StageLoop
from gateway.storage import cases
from gateway.storage.models import CaseState, Study, open_database, utcnow
from support.peers import GatewayProcess, storescu, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "routing"))
from routing_db import add_instances, make_case, open_db  # noqa: E402

STABLE_AFTER_S = 4.0   # past the early de-identification's 2 s pause, so that the early work is under way
MARGIN_S = 3.0         # the scheduling slack allowed on a loaded machine
INSTANCES = 800  # de-identified in about 10 s on a quiet two-core machine: longer than the wait and its margin


@pytest.fixture(scope="module")
def many_small(tmp_path_factory) -> list[Path]:
    return write_demo_study(tmp_path_factory.mktemp("many-small"), INSTANCES, seed=7, rows=64, cols=64)


@pytest.fixture
def case_db(tmp_path):
    database = open_db(f"sqlite:///{tmp_path}/gw.db")
    open_database(f"sqlite:///{tmp_path}/gw.db", max_connections=STAGE_THREADS + 8)  # a connection per stage run
    with database.connection_context():
        yield database
    database.close_all()


@pytest.mark.usefixtures("case_db")
def test_a_quiet_study_held_by_the_early_deidentification_is_complete_all_the_same(tmp_path):
    study = make_case(CaseState.RECEIVING, received_at=utcnow() - dt.timedelta(seconds=10))
    add_instances(study, tmp_path / "spool", write_demo_study(tmp_path / "study", 2, seed=3, rows=32, cols=32))
    # the de-identification stage's early run on the study, its lease renewed for as long as it works
    assert cases.claim(study, "deid", states=(CaseState.RECEIVING,), owner=cases.process_owner())
    loop = StageLoop(CompletionStage(RoutingConfig(stable_after_s=2)))
    assert loop.run_once(utcnow()) == 1
    current = Study.get_by_id(study.id)
    assert current.state == CaseState.COMPLETE
    assert current.claimed_by == cases.process_owner().owner("deid"), "the early work keeps its lease"


class BusyStage:
    """A stage whose run holds its thread until ``release`` is set (a long de-identification, a delivery waiting for
    a peer)."""

    def __init__(self, name: str, running: threading.Semaphore, release: threading.Event) -> None:
        self.name, self._running, self._release = name, running, release

    def run_once(self, now: dt.datetime) -> int:
        self._running.release()
        self._release.wait(60)
        return 0


@pytest.mark.usefixtures("case_db")
def test_completion_runs_while_other_stages_hold_every_thread_of_the_shared_pool(tmp_path):
    # quiet in a second: not due at the pipeline's start, when its first run may still find a thread free
    study = make_case(CaseState.RECEIVING, received_at=utcnow() - dt.timedelta(seconds=1))
    add_instances(study, tmp_path / "spool", write_demo_study(tmp_path / "study", 1, seed=4, rows=32, cols=32))
    running, release = threading.Semaphore(0), threading.Event()
    busy = [BusyStage(f"busy-{n}", running, release) for n in range(STAGE_THREADS)]
    pipeline = Pipeline([CompletionStage(RoutingConfig(stable_after_s=2)), *busy], poll_s=0.2)
    pipeline.start()
    try:
        for _ in busy:
            assert running.acquire(timeout=30), "the busy stages did not all start"
        wait_until(lambda: Study.get_by_id(study.id).state == CaseState.COMPLETE, 20,
                   "the study complete while the shared pool is busy")
    finally:
        release.set()
        pipeline.stop()


def _at(event: dict) -> dt.datetime:
    return dt.datetime.fromisoformat(event["ts"].replace("Z", "+00:00"))


def test_completion_comes_at_the_deadline_while_the_study_is_deidentified(tmp_path, many_small):
    node = GatewayProcess(tmp_path / "gw", f"sqlite:///{tmp_path}/gateway.db", extra={
        # one de-identification worker (the default on two cores); the poll of a second keeps early work prompt
        "deid": {"workers": 1},
        "routing": {"stable_after_s": STABLE_AFTER_S, "poll_s": 1.0, "echo_interval_s": 3600},
    }).start()
    try:
        sent = storescu("127.0.0.1", node.port, many_small, calling="STMARYS_PACS")
        assert sent.returncode == 0, sent.stderr
        wait_until(lambda: any(e.get("event") == "case_deidentified" for e in node.log_events()), 180,
                   "the study de-identified")
        events = node.log_events()
    finally:
        node.stop()
    stored = [_at(e) for e in events if e.get("event") == "instance_stored"]
    assert len(stored) == INSTANCES
    complete = [_at(e) for e in events if e.get("event") == "case_state_changed" and e.get("state") == "complete"]
    deidentified = [_at(e) for e in events if e.get("event") == "case_deidentified"]
    assert len(complete) == 1 and len(deidentified) == 1
    last_stored = max(stored)
    backlog_s = (deidentified[0] - last_stored).total_seconds()
    # the scenario took place: the study's de-identification went on past the deadline and its margin
    assert backlog_s > STABLE_AFTER_S + MARGIN_S, f"de-identified {backlog_s:.1f} s after the last instance"
    waited_s = (complete[0] - last_stored).total_seconds()
    assert STABLE_AFTER_S <= waited_s + 0.05, "complete before the stability wait"  # log timestamps: 1 ms grain
    assert waited_s <= STABLE_AFTER_S + MARGIN_S, (
        f"complete {waited_s:.1f} s after the last instance (wait {STABLE_AFTER_S} s), "
        f"de-identified at {backlog_s:.1f} s")
