"""The running gateway: wires the configuration, database, spool, SCP, HTTP server and pipeline together."""

from __future__ import annotations

import datetime as dt
import signal
import socket
import threading
from collections.abc import Callable
from functools import partial

import peewee
import structlog
from apscheduler.schedulers.background import BackgroundScheduler
from starlette.applications import Starlette

from gateway import __version__
from gateway.budget import BudgetedWorkers, default_workers
from gateway.config import GatewayConfig
from gateway.deid.secret import load_or_create_secret
from gateway.deid.work import WorkPool, deid_pool
from gateway.dicom.net import install_fast_paths
from gateway.http.app import build_application
from gateway.http.server import HttpServer
from gateway.mllp.server import start_hl7_listener
from gateway.ops import audit
from gateway.ops.health import standard_health_checks
from gateway.ops.memory import HeapTrimmer, release_freed_memory
from gateway.ops.metrics import GatewayMetrics
from gateway.privacy import vocabulary
from gateway.referral.entities import load_engine
from gateway.referral.notes_case import warm_up as warm_up_notes
from gateway.referral.notes_sr import load_standard_tables
from gateway.referral.sr_tables import install_module_table
from gateway.routing.assignment import unsatisfiable_rules
from gateway.routing.spine import SpineFilter
from gateway.scp.receiver import remove_unplaced_receipts
from gateway.scp.receivers import ReceivingProcesses
from gateway.scp.receiving_process import MAX_RECEIVING_PROCESSES, processes_sharing, receiver_identity
from gateway.scp.server import node_handlers, start_scp
from gateway.scp.slots import AssociationSlots
from gateway.stages.assign import AssignmentStage
from gateway.stages.atna import AtnaStage
from gateway.stages.commitment import CommitmentStage
from gateway.stages.completion import CompletionStage
from gateway.stages.context import NodeContext
from gateway.stages.critical import CriticalNoticeStage
from gateway.stages.deid import DeidStage
from gateway.stages.deliver import DeliveryStage
from gateway.stages.health import HealthStage
from gateway.stages.oru import OruStage
from gateway.stages.pipeline import FailurePolicy, Pipeline, Stage, stage_scheduler
from gateway.stages.pool import PoolStage
from gateway.stages.priors import PriorsStage
from gateway.stages.referral import NotesStage
from gateway.stages.reports import ReportStage
from gateway.stages.sla import SlaStage
from gateway.storage import cases, wakeup
from gateway.storage.models import SCHEMA_VERSION, CaseState, db, open_database, sync_sources
from gateway.storage.spool import Spool

log = structlog.get_logger("node")


def _warm_up() -> None:
    """What the first case's notes would otherwise load (highdicom's SR modules, the PDF fonts and layout), then
    the freed start-up buffers back to the system. In a thread: the node listens meanwhile."""
    load_standard_tables()
    warm_up_notes()
    vocabulary.warm_up()  # the scrubber's word lists (English, German, French), for the portal's preview too
    release_freed_memory()


class GatewayNode:
    """One gateway process. ``start()`` returns once the SCP is listening and the pipeline runs."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.identity = f"{socket.gethostname()}-{config.node.port}"
        self.spool = Spool(config.storage.spool_dir, config.storage.min_free_bytes, node_tag=self.identity)
        self.server = None
        self.http: HttpServer | None = None
        self.hl7 = None  # the MLLP listener (gateway.mllp) when hl7.enabled
        self.pipeline: Pipeline | None = None
        # the stages' runs and the wake-up timers: one scheduler, started with the wake-ups, shut down by the pipeline
        self.scheduler: BackgroundScheduler | None = None
        self.context: NodeContext | None = None  # built once at start (gateway.stages.context)
        self.wakeups: wakeup.Wakeups | None = None
        self.receivers: ReceivingProcesses | None = None
        self.slots: AssociationSlots | None = None
        self.work_pool: WorkPool | None = None
        self.notes_workers: BudgetedWorkers | None = None
        self.secret = b""
        self.heap_trimmer: HeapTrimmer | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        install_fast_paths()  # pynetdicom's hooks, checked first: stock pynetdicom (and one warning) otherwise
        database = open_database(self.config.storage.database, max_connections=self.config.node.max_associations + 8)
        sync_sources([(s.name, s.ae_title) for s in self.config.sources])
        self.scheduler = stage_scheduler()
        self.context = self._node_context(database)
        self.context.install()
        with db.connection_context():
            cases.release_all_of_this_node(self.context.owner)
        # This node's receiving processes (gateway.scp.receivers) are gone too: their leftovers are ours to clean.
        receiving = [receiver_identity(self.identity, n) for n in range(1, MAX_RECEIVING_PROCESSES + 1)]
        removed = self.spool.prepare() + sum(self.spool.remove_partial_of(tag) for tag in receiving)
        if removed:
            log.warning("spool_partial_files_removed", count=removed)
        with db.connection_context():
            unplaced = sum(remove_unplaced_receipts(self.spool, node) for node in [self.identity, *receiving])
        if unplaced:
            log.warning("unacknowledged_receipts_removed", count=unplaced,
                        reason="row committed, file never placed: the node stopped in between")
        self._load_secret()
        load_engine()  # the notes scrubber's model and word lists, once, before the node listens
        missing = vocabulary.missing_lists()
        if missing:  # their words count as unknown: the notes lose more words, never keep more
            log.warning("scrubber_word_lists_missing", count=len(missing), path=missing[0],
                        reason="install the word lists (scripts/install-system-deps.sh --runtime)")
        release_freed_memory()  # the buffers the gazetteer was read through, before the warm-up grows the heap
        install_module_table()  # highdicom reads its table of module attributes a module at a time, checked first
        threading.Thread(target=_warm_up, name="notes-warm-up", daemon=True).start()
        handlers = node_handlers(self.config, self.spool, self.identity, self._association_slots(), self.context)
        self._start_listeners()  # before the SCP: whoever sees the DICOM port answer finds HTTP up too
        server = start_scp(self.config.node, handlers)
        if self.http is not None:  # its HTTP connections count as the node's work where processes share the port
            server.other_work = self.http.open_connections
        self.server = server
        self.work_pool = deid_pool(self.config.deid.options(), self.secret, self.config.deid.workers)
        self._notes_workers()  # started when a first case arrives (the notes stage): no memory until then
        self.scheduler.start()
        self._start_wakeups()
        self._start_receivers()
        self.pipeline = Pipeline(self._stages(), self.config.routing.poll_s, policy=FailurePolicy.of(
            self.config.routing.case_failures), scheduler=self.scheduler, context=self.context)
        for stage in self.pipeline.stages:
            if isinstance(stage, AtnaStage):
                stage.open_cursor()  # before the start is recorded: the collector's first message is the start
        self._audit_activity("node_started")
        self.pipeline.start()
        self.heap_trimmer = HeapTrimmer().start()  # what an attack's threads freed, back to the system
        log.info("gateway_started", ae_title=self.config.node.ae_title, port=self.config.node.port,
                 version=__version__, to_version=SCHEMA_VERSION, tls=self.config.node.tls.enabled)
        for warning in unsatisfiable_rules(self.config.reviewers):
            log.warning("routing_unsatisfiable", reason=warning)

    def _node_context(self, database: peewee.Database) -> NodeContext:
        """The one context the stages and servers share: the database, this node's lease owner, its wake-up hub
        (``routing.wakeups``; its timers on the node's scheduler) and the metrics."""
        owner = cases.LeaseOwner(self.identity, dt.timedelta(seconds=self.config.routing.claim_lease_s))
        hub = None
        if self.config.routing.wakeups:
            hub = wakeup.Wakeups(self.identity, database, scheduler=self.scheduler,
                                 local_socket=wakeup.socket_path(self.config.storage.spool_dir))
        return NodeContext(database, owner, hub, GatewayMetrics(database))

    def _start_wakeups(self) -> None:
        """``routing.wakeups``: stages woken by committed state changes, by NOTIFY from other nodes and commands
        (PostgreSQL), and by commands through the socket in the spool directory (SQLite)."""
        if self.context is not None and self.context.wakeups is not None:
            self.wakeups = self.context.wakeups.start()

    def _start_receivers(self) -> None:
        """``node.receiving_processes``: more processes accepting on the DICOM port (``gateway.scp.receivers``)."""
        if self.slots is not None and self.slots.processes > 1 and self.context is not None and self.server:
            self.receivers = ReceivingProcesses(self.config, self.server.socket.fileno(), self.slots,
                                                self.context).start()

    def _association_slots(self) -> AssociationSlots | None:
        """``node.max_associations`` and each peer's share of it, counted across the processes that accept on the
        port (this one alone, or with its receiving processes)."""
        self.slots = AssociationSlots.create(processes_sharing(self.config), self.config.node.max_associations)
        return self.slots

    def _deliver_wakeup(self, topic: str) -> None:
        if self.wakeups is not None:
            self.wakeups.deliver(topic)

    def _load_secret(self) -> None:
        path = self.config.secret_path()
        self.secret, created = load_or_create_secret(self.config.deid.secret_env, path)
        if created:
            log.warning("pseudonym_key_created", path=str(path),
                        reason=f"set {self.config.deid.secret_env} to manage the key yourself")

    def _stages(self) -> list[Stage]:
        """The pipeline, in order. Each stage reads cases in one state and leaves them in the next."""
        config, context = self.config, self.context
        notes = NotesStage.of(config, self.spool, self.notes_workers, context=context)
        return [
            CompletionStage(config.routing, SpineFilter(config.routing, config.storage.spool_dir), context=context),
            DeidStage(config.deid.options(), self.secret, self.spool, pool=self.work_pool,
                      case_identifiers=notes.case_identifiers, time_budget_s=config.deid.time_budget_s,
                      context=context),
            # priors (issue 25): a source's PACS asked for the patient's earlier studies before the notes list them
            PriorsStage.of(config, self.spool, context=context),
            notes,
            # routing (issue 5): after the notes stage
            AssignmentStage(config.reviewers, config.routing, context=context),
            DeliveryStage.of(config, context=context),
            SlaStage(config.reviewers, config.routing, context=context),
            # the pool worklist (issue 26): reports complete its workitems, abandoned claims go back to the pool
            PoolStage(context=context),
            HealthStage.of(config, context=context),
            # reports back home (issue 6): REPORTED → REPORT_DELIVERED
            ReportStage.of(config, self.spool, self.secret, context=context),
            # the re-identified report also as HL7 ORU^R01 to sources with hl7_results (issue 25)
            OruStage.of(config, self.spool, context=context),
            # Storage Commitment (issue 25): the reports of the requests the SCP kept
            CommitmentStage.of(config, context=context),
            # critical results (issue 27): notices by e-mail and webhook, escalation to the operators
            CriticalNoticeStage(config.critical, context=context),
            *self._audit_export(),
        ]

    def _audit_export(self) -> list[Stage]:
        """``atna.enabled``: the audit trail to the hospital's collector."""
        if not self.config.atna.enabled:
            return []
        return [AtnaStage(self.config.atna, self.config.node.ae_title, self.identity)]

    def _notes_workers(self) -> None:
        """``referrals.workers`` worker processes with ``referrals.time_budget_s`` each (none for 0): a job's end
        wakes the notes stage."""
        referrals = self.config.referrals
        workers = default_workers() if referrals.workers is None else referrals.workers
        if workers > 0:
            self.notes_workers = BudgetedWorkers(workers, referrals.time_budget_s,
                                             preload=["gateway.referral.notes_preload"],
                                             on_done=partial(self._deliver_wakeup, CaseState.DEIDENTIFIED))

    def _start_listeners(self) -> None:
        """Servers beside the DICOM port: the HTTP application (health, metrics, referrals, portal) and MLLP."""
        if self.config.http.enabled:
            self.http = HttpServer(self.config.http, self._http_application())
            self.http.start()
        self.hl7 = start_hl7_listener(self.config.hl7)

    def _http_application(self) -> Starlette:
        """Every HTTP endpoint on one application, built here once: ``/healthz``, ``/metrics``, the referral
        API and, when ``http.portal``, the web portal (gateway.web)."""
        assert self.context is not None  # built by start, before the listeners
        checks = standard_health_checks(self.context.database, self.accepting, self.config.storage.spool_dir,
                                        self.config.storage.min_free_bytes, probe_name=f"node:{socket.gethostname()}",
                                        probe_timeout_s=self.config.http.health_probe_timeout_s)
        dicomweb: list = []
        if self.config.http.dicomweb:
            from gateway.dicomweb.routes import dicomweb_routes

            dicomweb = dicomweb_routes(self.config, self.spool, self.context)
        if not self.config.http.portal:
            return build_application(self.config.http, checks, context=self.context, dicomweb=dicomweb)
        from gateway.web.app import error_page, portal_routes

        return build_application(self.config.http, checks, context=self.context,
                                 portal=portal_routes(self.config, self.spool, self.context),
                                 portal_error_page=error_page, dicomweb=dicomweb)

    def _audit_activity(self, action: str) -> None:
        """The node's start and stop in the audit trail (an ATNA Application Activity message)."""
        try:
            audit.record(action, actor_ae=self.config.node.ae_title, actor_host=None, study_key=None,
                         detail=f"node {self.identity}")
        except audit.AuditWriteError:
            pass  # logged by audit.record; a node that cannot write its database says so elsewhere too

    def accepting(self) -> bool:
        """The DICOM port is open and pynetdicom's acceptor thread is alive."""
        server = self.server
        if server is None or server.socket is None or server.socket.fileno() < 0:
            return False
        return any(t.name.startswith("AcceptorServer@") and t.is_alive() for t in threading.enumerate())

    def serve_forever(self, on_started: Callable[[], None] | None = None) -> None:
        """Run until SIGTERM or SIGINT; ``on_started`` once the node listens (the CLI's start-up line)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self._stop.set())
        self.start()
        if on_started is not None:
            on_started()
        try:
            self._stop.wait()
        finally:
            self.stop()

    def stop(self) -> None:
        if self.heap_trimmer is not None:
            self.heap_trimmer.stop()
            self.heap_trimmer = None
        if self.receivers is not None:
            self.receivers.stop()
            self.receivers = None
        if self.context is not None:
            self.context.uninstall()
        if self.wakeups is not None:
            self.wakeups.stop()
            self.wakeups = None
        if self.pipeline is not None:
            self.pipeline.stop()
            self.pipeline = None
            self._audit_activity("node_stopped")
        if self.scheduler is not None:
            if self.scheduler.running:  # started, but the node stopped before its pipeline was built
                self.scheduler.shutdown(wait=True)
            self.scheduler = None
        if self.notes_workers is not None:
            self.notes_workers.shutdown()
            self.notes_workers = None
        if self.work_pool is not None:
            self.work_pool.shutdown()
            self.work_pool = None
        if self.http is not None:
            self.http.stop()
            self.http = None
        if self.hl7 is not None:
            self.hl7.stop()
            self.hl7 = None
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        if not db.is_closed():
            db.close()
        log.info("gateway_stopped")
