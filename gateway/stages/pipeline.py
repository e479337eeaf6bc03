"""The pipeline: each stage finds its work by case state in the database and leaves it in the next state.

Stages never call each other. Every stage runs in the same loop (``StageLoop``), scheduled every
``routing.poll_s``, one run at a time per stage, and woken at once by a committed state change
(``gateway.storage.wakeup``) or ``Pipeline.wake``.

A *case stage* (``CaseStage``) says which cases are due and how to advance one. The loop claims the cases one
at a time (``gateway.storage.cases.claimed``) and runs the stage's ``step`` for each (a stage whose step is one
conditional state change, completion, takes no claim: ``takes_lease``). A step that raises is logged
(``case_step_failed``: stage, case, error type; never the message, which may carry PHI), the case backs off
exponentially (``Study.stage_failures``, ``Study.stage_retry_at``), and after ``routing.case_failures.max_failures``
failures
it goes to the stage's give-up state (QUARANTINED, FAILED or REPORT_FAILED) with the reason
``<stage>:<ErrorType>``. Other cases keep flowing: one broken case never holds up a healthy one. A failure of
the node's surroundings (disk full, database away: ``node_wide``) backs the case off but never gives it up.

A stage that is not about cases (peer health) only has ``run_once``; an exception there is logged and the
next tick tries again.
"""

from __future__ import annotations

import datetime as dt
import errno
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, runtime_checkable

import peewee
import structlog
from apscheduler.executors.pool import BasePoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from gateway.backoff import Backoff
from gateway.errors import SpoolError
from gateway.ops import audit
from gateway.stages.context import NodeContext
from gateway.storage import cases, wakeup
from gateway.storage.models import Study, db, utcnow

log = structlog.get_logger("pipeline")


class Stage(Protocol):
    """One step of the pipeline. ``own_thread``, optional (False if absent): its runs take a thread of their own
    instead of one of the shared pool's ``STAGE_THREADS``, so that they never wait for other stages' runs."""

    name: str

    def run_once(self, now: dt.datetime) -> int:
        """Advance every case that is ready; return how many moved."""


@runtime_checkable
class CaseStage(Protocol):
    """A stage that advances cases one at a time.

    ``claim_states``: the states a case must still be in once claimed. ``due(now)``: the cases to try, in
    order (the loop skips those backing off). ``step(study, now)``: advance one claimed case, True (or a count)
    when it changed something. ``give_up(study)``: the state a case goes to after too many failures, or None to keep
    backing off (e.g. a case still receiving). ``prepare(now)``: work before the cases, or nothing.
    ``claim_condition(study, now)``, optional: what must still hold of the case, beyond its state, for the claim to
    be taken (a peewee expression on ``Study``, checked in the claim's own UPDATE: ``cases.claim``), or nothing.
    ``takes_lease``, optional (True if absent): False for a stage whose step is one conditional state change
    (``cases.move``), which needs no lease and must not wait for another stage's (completion, which the early
    de-identification of the same study would otherwise hold up until its work ends: issue 29).
    """

    # read-only properties, so that a stage's class attributes (``claim_states = (CaseState.X,)``) satisfy them
    @property
    def name(self) -> str: ...

    @property
    def claim_states(self) -> tuple[str, ...]: ...

    def due(self, now: dt.datetime) -> Iterable[Study]: ...

    def step(self, study: Study, now: dt.datetime) -> bool | int: ...

    def give_up(self, study: Study) -> str | None: ...


@dataclass(frozen=True)
class FailurePolicy:
    """How the loop treats a case whose step raised: ``max_failures`` tries, waits doubling from ``initial_s``
    up to ``max_s`` (drawn from the upper half, so that cases failing together do not retry together)."""

    max_failures: int = 5
    initial_s: float = 10.0
    max_s: float = 600.0

    @classmethod
    def of(cls, config: object) -> FailurePolicy:
        """From ``routing.case_failures`` (a ``CaseFailuresConfig``)."""
        return cls(config.max_failures, config.initial_s, config.max_s)  # type: ignore[attr-defined]

    def backoff_s(self, failures: int) -> float:
        """Seconds before the loop tries the case again after its ``failures``-th failure."""
        return Backoff(self.initial_s, self.max_s, jitter=True).wait_s(failures)


DEFAULT_POLICY = FailurePolicy()


def run_case_stage(stage: CaseStage, now: dt.datetime, policy: FailurePolicy = DEFAULT_POLICY, *,
                   owner: cases.LeaseOwner) -> int:
    """One run of ``stage``: its ``prepare``, then each due case claimed by ``owner`` (its context's) and stepped
    on its own."""
    prepare = getattr(stage, "prepare", None)
    moved = prepare(now) if prepare is not None else 0
    claim_condition = getattr(stage, "claim_condition", None)
    takes_lease = getattr(stage, "takes_lease", True)
    for study in list(stage.due(now)):
        if study.stage_retry_at is not None and study.stage_retry_at > now:
            continue  # backing off after a failure
        if not takes_lease:
            moved += step_unclaimed(stage, study, now, policy)
            continue
        condition = claim_condition(study, now) if claim_condition is not None else None
        with cases.claimed(study, *stage.claim_states, stage=stage.name, owner=owner, condition=condition) as mine:
            if not mine:
                continue
            try:
                moved += int(stage.step(study, now))
            except Exception as exc:  # noqa: BLE001 - one broken case must not stop the others
                moved += case_failed(stage, study, exc, policy)
    return moved


def step_unclaimed(stage: CaseStage, study: Study, now: dt.datetime, policy: FailurePolicy) -> int:
    """One step of a stage that takes no lease (``takes_lease = False``), beside any claim another stage holds on
    the case: its state change is conditional (``cases.move``), so only one worker, stage or node makes it."""
    try:
        return int(stage.step(study, now))
    except Exception as exc:  # noqa: BLE001 - one broken case must not stop the others
        return int(case_failed(stage, study, exc, policy))


def node_wide(exc: BaseException) -> bool:
    """A failure of the node's surroundings, not of the case: a full disk, the database away. The case backs
    off like any other but is never given up for it (a day of full disk must not quarantine every case)."""
    if isinstance(exc, (SpoolError, peewee.OperationalError, peewee.InterfaceError)):
        return True
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def case_failed(stage: CaseStage, study: Study, exc: BaseException, policy: FailurePolicy) -> bool:
    """Count a failed step on ``study``: back it off, or give it up after ``policy.max_failures``.
    True when the case changed state."""
    error = f"{stage.name}:{type(exc).__name__}"[:64]
    current = Study.get_or_none(Study.id == study.id)
    if current is None:
        return False
    failures = current.stage_failures + 1
    log.error("case_step_failed", component=stage.name, case=current.key, state=current.state,
              error=type(exc).__name__, attempt=failures)
    target = stage.give_up(current) if failures >= policy.max_failures and not node_wide(exc) else None
    if target is not None and cases.can_move(current.state, target):
        if cases.move(current, target, reason=error):
            log.error("case_given_up", component=stage.name, case=current.key, state=target, reason=error,
                      attempt=failures)
            audit.record("given_up", actor_ae=None, actor_host=None, study_key=current.key, outcome="failed",
                         detail=f"{error} after {failures} failure(s)")
            return True
    retry_at = utcnow() + dt.timedelta(seconds=policy.backoff_s(failures))
    Study.update(stage_failures=failures, stage_error=error, stage_retry_at=retry_at).where(
        (Study.id == current.id) & (Study.state == current.state)).execute()
    study.stage_failures, study.stage_error, study.stage_retry_at = failures, error, retry_at
    return False


class StageLoop:
    """One stage's run: a case stage through ``run_case_stage`` (with the node's ``FailurePolicy``), any other
    stage's own ``run_once``. ``Pipeline`` schedules it and wakes it; ``tick()`` runs it here and now. With the
    node's ``context``, its database and lease owner; without, the process's database and the stage's own
    context's owner (the process's when the stage has none either)."""

    def __init__(self, stage: Stage, policy: FailurePolicy = DEFAULT_POLICY,
                 context: NodeContext | None = None) -> None:
        self.stage = stage
        self.policy = policy
        self.name = stage.name
        self.context = context
        self._running = threading.Lock()

    def run_once(self, now: dt.datetime) -> int:
        """One run (the caller holds a database connection)."""
        if isinstance(self.stage, CaseStage):
            context = self.context or getattr(self.stage, "context", None) or NodeContext.of_process()
            return run_case_stage(self.stage, now, self.policy, owner=context.owner)
        return self.stage.run_once(now)

    def tick(self) -> None:
        """One run in this thread, unless one is going on."""
        if self._running.acquire(blocking=False):
            try:
                self.run_logged()
            finally:
                self._running.release()

    def run_logged(self) -> None:
        """One run with its own connection; never raises: an error outside any one case is logged and the
        next run tries again."""
        started = time.perf_counter()
        try:
            with (self.context.database if self.context is not None else db).connection_context():
                moved = self.run_once(utcnow())
        except Exception as exc:  # noqa: BLE001 - logged with its traceback; the next tick tries again
            log.exception("stage_failed", component=self.name, error=type(exc).__name__)
            return
        if moved:
            log.debug("stage_ran", component=self.name, count=moved,
                      duration_ms=int((time.perf_counter() - started) * 1000))


# Stage runs at once, at most: apscheduler's default pool size, which the stages always ran on.
STAGE_THREADS = 10
_PRESTART_TIMEOUT_S = 30.0


class StartedThreadPool(BasePoolExecutor):
    """A pool like apscheduler's ``ThreadPoolExecutor``, with every one of its threads started when the scheduler
    starts, named ``stage-run_N``. concurrent.futures starts a pool's threads one at a time, as runs overlap, and
    never ends them: since the ORU and Storage Commitment stages made ten stages, all firing each ``poll_s``, the
    pool grew from about five threads just after start to its ten over the next half-minute, which read as
    threads left behind by whatever ran meanwhile (an attack, in the hardening tests). Started whole, the node's
    thread count is fixed from its start on."""

    def __init__(self, max_workers: int = STAGE_THREADS, name: str = "stage-run") -> None:
        self.threads = ThreadPoolExecutor(max_workers, thread_name_prefix=name)
        self.max_workers = max_workers
        super().__init__(self.threads)

    def start(self, scheduler: Any, alias: str) -> None:
        super().start(scheduler, alias)
        # A task per thread, each waiting until all have started: no thread is idle meanwhile, so each submit
        # starts a new one (public API only, no private counter of the pool).
        everyone = threading.Barrier(self.max_workers, timeout=_PRESTART_TIMEOUT_S)
        started = [self.threads.submit(everyone.wait) for _ in range(self.max_workers)]
        for future in started:
            future.result()


def stage_scheduler() -> BackgroundScheduler:
    """The scheduler the stages run on (and the wake-up timers beside them), its threads started with it."""
    return BackgroundScheduler(timezone="UTC", executors={"default": StartedThreadPool()})


class Pipeline:
    """Every stage's loop on one scheduler: each runs every ``poll_s``, and at once when woken (``wake``, or a
    committed state change through ``wakeups``, see ``gateway.storage.wakeup``); one run at a time per stage."""

    def __init__(self, stages: Sequence[Stage], poll_s: float, wakeups: wakeup.Wakeups | None = None, *,
                 policy: FailurePolicy = DEFAULT_POLICY, scheduler: BackgroundScheduler | None = None,
                 context: NodeContext | None = None) -> None:
        """``scheduler``: the node's, shared with the wake-up timers (started here unless running already, shut
        down by ``stop``); without it, one of the pipeline's own. ``context``: the node's (its database, lease
        owner and, when ``wakeups`` is not given, its wake-up hub)."""
        self.stages = list(stages)
        self.poll_s = poll_s
        self.loops = {stage.name: StageLoop(stage, policy, context) for stage in self.stages}
        self.scheduler = scheduler if scheduler is not None else stage_scheduler()
        self.wakeups = wakeups if wakeups is not None or context is None else context.wakeups
        self._runs: dict[str, wakeup.CoalescedRun] = {}

    def start(self) -> None:
        for name, loop in self.loops.items():
            # wake-ups (gateway.storage.wakeup): one run at a time per stage, a wake-up during a run makes one more
            run = wakeup.CoalescedRun(loop.run_logged, kick=partial(self._run_now, name))
            self._runs[name] = run
            self.scheduler.add_job(run.run, "interval", seconds=self.poll_s, id=name, max_instances=2,
                                   coalesce=True, misfire_grace_time=None, next_run_time=dt.datetime.now(dt.UTC),
                                   executor=self._executor_of(loop.stage))
            if self.wakeups is not None:
                self.wakeups.subscribe(wakeup.topics_of(name), run.wake)
        if not self.scheduler.running:
            self.scheduler.start()

    def _executor_of(self, stage: Stage) -> str:
        """The shared pool, or for a stage with ``own_thread`` (completion: a study is complete at its deadline,
        however long the other stages' runs take) a thread of its own, started with the scheduler."""
        if not getattr(stage, "own_thread", False):
            return "default"
        alias = f"stage:{stage.name}"
        self.scheduler.add_executor(StartedThreadPool(1, name=f"stage-{stage.name}"), alias)
        return alias

    def wake(self, stage_name: str) -> None:
        """Run the stage called ``stage_name`` now (a run going on runs once more when it ends)."""
        run = self._runs.get(stage_name)
        if run is not None and self.scheduler.running:
            run.wake()
        else:
            self.loops[stage_name].tick()

    def _run_now(self, job_id: str) -> None:
        """A wake-up: the stage's job runs now (the poll goes on from there)."""
        if self.scheduler.running:
            self.scheduler.modify_job(job_id, next_run_time=dt.datetime.now(dt.UTC))

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)

    def run_all_once(self) -> int:
        """Run every stage once, in order (for the CLI and tests)."""
        moved = 0
        with db.connection_context():
            for loop in self.loops.values():
                moved += loop.run_once(utcnow())
        return moved
