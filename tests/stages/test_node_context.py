"""The node context (gateway/stages/context.py): a stage handed one claims, wakes and counts through it, not
through the process's globals; ``install`` is the one way the node hands its parts to those globals."""

from __future__ import annotations

import datetime as dt

import pytest
from apscheduler.schedulers.background import BackgroundScheduler

from gateway.config import GatewayConfig, ReviewerConfig, RoutingConfig
from gateway.ops.metrics import GatewayMetrics
from gateway.stages.assign import AssignmentStage
from gateway.stages.completion import CompletionStage
from gateway.stages.context import NodeContext
from gateway.stages.pipeline import StageLoop
from gateway.stages.priors import PriorsStage
from gateway.stages.sla import SlaStage
from gateway.storage import cases, wakeup
from gateway.storage.models import (
    CaseState,
    Instance,
    PriorFetch,
    PriorFetchState,
    Series,
    Source,
    Study,
    open_database,
    utcnow,
)
from gateway.storage.spool import Spool

LEASE = dt.timedelta(seconds=45)


@pytest.fixture
def context(tmp_path):
    """A node's context on SQLite, with its wake-up timers on a scheduler standing for the node's; the process's
    own globals are left as a process without a node has them (no hub, another owner)."""
    database = open_database(f"sqlite:///{tmp_path}/gw.db", max_connections=4)
    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.start()
    hub = wakeup.Wakeups("node-ctx-11112", database, scheduler=scheduler).start()
    yield NodeContext(database, cases.LeaseOwner("node-ctx-11112", LEASE), hub, GatewayMetrics(database))
    hub.stop()
    scheduler.shutdown(wait=True)
    database.close()


def _receiving_study(now: dt.datetime) -> Study:
    study = Study.create(study_uid="2.25.24", calling_ae="STMARYS_PACS", state=CaseState.RECEIVING,
                         first_received_at=now, last_received_at=now)
    series = Series.create(study=study, series_uid="2.25.24.1", modality="MR")
    Instance.create(study=study, series=series, sop_instance_uid="2.25.24.1.1",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.4", transfer_syntax="1.2.840.10008.1.2.1", size=1,
                    sha256="0" * 64, spool_path="objects/x.dcm",
                    calling_ae="STMARYS_PACS", received_at=now)
    return study


class _ClaimProbe:
    """A case stage that records, from inside its step, who holds the case and until when."""

    name = "probe"
    claim_states = (CaseState.RECEIVING,)

    def __init__(self) -> None:
        self.seen: list[tuple[str, dt.datetime]] = []

    def due(self, now: dt.datetime) -> list[Study]:
        return list(Study.select())

    def step(self, study: Study, now: dt.datetime) -> bool:
        row = Study.get_by_id(study.id)
        self.seen.append((row.claimed_by, row.claimed_until))
        return False

    def give_up(self, study: Study) -> None:
        return None


def test_the_stage_loop_claims_with_the_owner_and_lease_of_its_context(context):
    assert cases.process_owner() != context.owner, "the process's own owner must differ for this test to tell"
    with context.database.connection_context():
        _receiving_study(utcnow())
    probe = _ClaimProbe()
    before = utcnow()
    StageLoop(probe, context=context).run_logged()  # opens its connection on the context's database
    assert len(probe.seen) == 1
    holder, until = probe.seen[0]
    assert holder == "node-ctx-11112/probe"
    assert before + LEASE <= until <= utcnow() + LEASE
    with context.database.connection_context():
        assert Study.get().claimed_by is None, "released after the step"


def test_a_stage_loop_without_a_context_claims_with_the_owner_of_its_stage(context):
    probe = _ClaimProbe()
    probe.context = context  # a stage handed the node's context, in a loop built without one
    with context.database.connection_context():
        _receiving_study(utcnow())
        StageLoop(probe).run_once(utcnow())
    assert [holder for holder, _ in probe.seen] == ["node-ctx-11112/probe"]


def test_completion_sets_its_stability_timer_on_the_hub_of_its_context(context):
    assert wakeup.current() is None, "no process hub: a timer can only reach the context's"
    now = utcnow()
    with context.database.connection_context():
        _receiving_study(now)
        assert CompletionStage(RoutingConfig(stable_after_s=30), context=context).due(now) == []
    ((when, topic),) = context.wakeups.pending_timers()
    assert topic == wakeup.STABLE
    assert abs((when.replace(tzinfo=None) - (now + dt.timedelta(seconds=30))).total_seconds()) < 0.1


def test_install_hands_the_hub_to_the_process_and_uninstall_takes_it_back(context):
    """The lease owner is no process state: installing a node's context leaves a context-less process's owner as
    it is (a claim names its owner), and hands over the wake-up hub only."""
    try:
        context.install()
        assert wakeup.current() is context.wakeups
        assert NodeContext.of_process().wakeups is context.wakeups
        assert NodeContext.of_process().metrics is NodeContext.of_process().metrics is not context.metrics
        assert NodeContext.of_process().owner == cases.process_owner() != context.owner
        context.uninstall()
        assert wakeup.current() is None
    finally:
        wakeup.install(None)


def test_a_case_stage_run_alone_claims_with_the_owner_of_its_context(context, tmp_path):
    """A case stage run by its own ``run_once`` (not through the stage loop) claims as its context's owner,
    never as the process."""
    from gateway.deid.options import DeidOptions
    from gateway.stages.deid import DeidStage

    holders: list[str] = []
    stage = DeidStage(DeidOptions(), b"k" * 32, Spool(tmp_path / "spool"), context=context)
    with context.database.connection_context():
        study = _receiving_study(utcnow())
        stage.due = lambda now: [study]
        stage.step = lambda case, now: holders.append(Study.get_by_id(case.id).claimed_by) or False
        stage.run_once(utcnow())
    assert holders == ["node-ctx-11112/deid"]


def test_each_node_builds_its_own_metrics(tmp_path):
    """The node's metrics are its context's, built by the node: no module-level registry, so two nodes in one
    process (tests) count apart, and a context-less process's counts never reach a node's ``/metrics``."""
    from gateway import node as node_module
    from gateway.ops import metrics as metrics_module

    assert not any(isinstance(value, GatewayMetrics) for value in vars(metrics_module).values())
    config = GatewayConfig.model_validate({"storage": {"database": f"sqlite:///{tmp_path}/gw.db",
                                                       "spool_dir": str(tmp_path / "spool")},
                                           "routing": {"wakeups": False},
                                           "sources": [{"name": "st-marys", "ae_title": "STMARYS_PACS"}]})
    database = open_database(config.storage.database, max_connections=2)
    try:
        first, second = (node_module.GatewayNode(config)._node_context(database) for _ in range(2))
    finally:
        database.close()
    assert first.metrics is not second.metrics
    assert NodeContext.of_process().metrics not in (first.metrics, second.metrics)


def test_a_stage_built_without_a_context_reads_the_process_as_it_is_when_used(context):
    stage = CompletionStage(RoutingConfig())
    assert stage.context.wakeups is None
    wakeup.install(context.wakeups)
    try:
        assert stage.context.wakeups is context.wakeups, "read when used, not frozen at construction"
    finally:
        wakeup.install(None)


def test_assignment_and_sla_share_one_start(context):
    reviewers = [ReviewerConfig(name="dr-a", ae_title="REVIEW_A", host="127.0.0.1", port=11113)]
    routing = RoutingConfig()
    for stage_class in (AssignmentStage, SlaStage):
        stage = stage_class(reviewers, routing, context=context)
        assert stage.routing is routing and stage.context is context
        assert [r.name for r in stage.pool.reviewers] == ["dr-a"]
        assert (stage._load, stage._recent, stage._down) == ({}, {}, set())


def test_the_priors_stage_takes_its_sections_and_wakes_the_notes_through_its_context(context, tmp_path):
    config = GatewayConfig.model_validate({"sources": [
        {"name": "st-marys", "ae_title": "STMARYS_PACS",
         "query_retrieve": {"ae_title": "STMARYS_QR", "host": "127.0.0.1", "port": 11119}},
        {"name": "clinic", "ae_title": "CLINIC_PACS"}]})
    stage = PriorsStage.of(config, Spool(tmp_path / "spool"), context=context)
    assert (stage.node, stage.rules, list(stage.peers)) == (config.node, config.priors, ["st-marys"])
    assert wakeup.current() is None, "no process hub: a wake-up can only reach the context's"
    woken: list[str] = []
    context.wakeups.subscribe([wakeup.PRIORS], lambda: woken.append(wakeup.PRIORS))
    with context.database.connection_context():
        source = Source.create(name="st-marys", ae_title="STMARYS_PACS")
        Study.create(study_uid="2.25.25", source=source, calling_ae="STMARYS_PACS", state=CaseState.DEIDENTIFIED)
        assert stage.run_once(utcnow()) == 2, "begun, then finished at once: no identity to ask the PACS by"
        fetch = PriorFetch.get()
    assert (fetch.state, fetch.reason) == (PriorFetchState.UNAVAILABLE, "nothing to ask by")
    assert woken, "the notes stage is woken through the stage's context"
