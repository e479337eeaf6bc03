"""The pipeline: each stage finds its work by case state in the database and leaves it in the next state.

Stages never call each other. The scheduler runs each stage's ``run_once`` on an interval, one run at a time
per stage; a stage that raises is logged and tried again at the next tick, so one bad case cannot stop the
node.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from functools import partial
from typing import Protocol

import structlog
from apscheduler.schedulers.background import BackgroundScheduler

from gateway import wakeup
from gateway.models import db, utcnow

log = structlog.get_logger("pipeline")


class Stage(Protocol):
    """One step of the pipeline."""

    name: str

    def run_once(self, now: dt.datetime) -> int:
        """Advance every case that is ready; return how many moved."""


class Pipeline:
    def __init__(self, stages: Sequence[Stage], poll_s: float, wakeups: wakeup.Wakeups | None = None) -> None:
        self.stages = list(stages)
        self.poll_s = poll_s
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self.wakeups = wakeups

    def start(self) -> None:
        for stage in self.stages:
            # wake-ups (gateway.wakeup): one run at a time per stage, a wake-up during a run makes one more
            run = wakeup.CoalescedRun(partial(self._tick, stage), kick=partial(self._run_now, stage.name))
            self.scheduler.add_job(run.run, "interval", seconds=self.poll_s, id=stage.name, max_instances=2,
                                   coalesce=True, misfire_grace_time=None, next_run_time=dt.datetime.now(dt.UTC))
            if self.wakeups is not None:
                self.wakeups.subscribe(wakeup.topics_of(stage.name), run.wake)
        self.scheduler.start()

    def _run_now(self, job_id: str) -> None:
        """A wake-up: the stage's job runs now (the poll goes on from there)."""
        if self.scheduler.running:
            self.scheduler.modify_job(job_id, next_run_time=dt.datetime.now(dt.UTC))

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)

    @staticmethod
    def _tick(stage: Stage) -> None:
        started = time.perf_counter()
        try:
            with db.connection_context():
                moved = stage.run_once(utcnow())
        except Exception as exc:  # noqa: BLE001 - logged with its traceback; the next tick tries again
            log.exception("stage_failed", component=stage.name, error=type(exc).__name__)
            return
        if moved:
            log.debug("stage_ran", component=stage.name, count=moved,
                      duration_ms=int((time.perf_counter() - started) * 1000))

    def run_all_once(self) -> int:
        """Run every stage once, in order (for the CLI and tests)."""
        moved = 0
        with db.connection_context():
            for stage in self.stages:
                moved += stage.run_once(utcnow())
        return moved
