"""A receiving process: one more process accepting C-STOREs on the node's DICOM port (``node.receiving_processes``).

One Python process takes about one core for receiving: pynetdicom's PDU handling and our handler run under one
interpreter lock. The node therefore starts a few lean processes (``gateway.scp.receivers``) that accept on the
very listening socket the node bound (inherited, never bound again); each new connection is taken by a process
serving the fewest associations (``gateway.scp.slots``), so that several senders at once are received on every
core.

Each receiving process is durable on its own, exactly as the node's own SCP: the same handlers, the same spool
(files fsynced and renamed) and the same database (rows committed in its own group commits) before success is
answered. It runs no stage and loads no de-identification, notes or report engine. It writes its log events
to the node's log file (appending; the node rotates it) and console itself, with ``"component": "receiver-N"``,
each before the C-STORE it tells of is answered. What else the node must hear of it goes up one pipe as JSON
lines (:class:`Channel`):

- ``{"metrics": [[name, args], ...]}``: the receiving metrics, which the node counts in its own ``/metrics``;
  gathered for ``METRICS_FLUSH_S`` and sent in one line (one per C-STORE cost both processes a wake-up and a
  JSON line each);
- ``{"wake": topic}`` / ``{"wake_at": [topic, iso]}``: the wake-ups its commits make (an association that ended
  wakes completion), delivered to the node's stages.

The node writes the configuration (JSON) to the process's standard input and keeps it open: end of input means
the node has stopped (or died), and the process stops taking connections and exits. The kernel also kills it
if the node dies (``PR_SET_PDEATHSIG``), so that a node killed with -9 leaves no process holding its port.
Instances it had received but not yet acknowledged are never acknowledged; their senders send them again.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import json
import os
import signal
import sys
import threading
import time
from typing import Any

PR_SET_PDEATHSIG = 1
MAX_RECEIVING_PROCESSES = 16  # node.receiving_processes's bound (gateway.config)
FORWARDED_METRICS = ("record_instance", "record_commit_group", "record_association")  # gateway.ops.metrics
METRICS_FLUSH_S = 0.05  # the receiving metrics reach the node's /metrics at most this much later


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when the node that started it dies (Linux); exit if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: end of standard input still stops the process
    if os.getppid() != parent_pid:
        os._exit(0)


class Channel:
    """JSON lines to the node, whole lines per write, from any thread. Metrics wait up to ``METRICS_FLUSH_S`` to
    go together (:meth:`send_soon`); any other message goes at once, after the metrics gathered before it."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self._metrics: list[list[Any]] = []
        self._flusher: threading.Thread | None = None

    def send(self, message: dict[str, Any]) -> None:
        line = json.dumps(message, separators=(",", ":"), default=str)
        with self._lock:
            self._write(self._metrics_line() + line + "\n")

    def send_soon(self, metric: list[Any]) -> None:
        """``[name, args]`` of a metric, sent with the others of the next ``METRICS_FLUSH_S``."""
        with self._lock:
            self._metrics.append(metric)
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_every, name="metrics-flush", daemon=True)
                self._flusher.start()

    def flush(self) -> None:
        with self._lock:
            self._write(self._metrics_line())

    def _flush_every(self) -> None:
        while True:
            time.sleep(METRICS_FLUSH_S)
            try:
                self.flush()
            except OSError:
                return  # the node is gone

    def _metrics_line(self) -> str:
        if not self._metrics:
            return ""
        metrics, self._metrics = self._metrics, []
        return json.dumps({"metrics": metrics}, separators=(",", ":"), default=str) + "\n"

    def _write(self, text: str) -> None:
        view = memoryview(text.encode("utf-8"))
        while view:
            written = os.write(self._fd, view)
            view = view[written:]


def forwarding_metrics(channel: Channel) -> Any:
    """This process's receiving metrics, counted by the node (which serves ``/metrics``) instead of here: the
    handlers are handed them in the process's context."""
    from gateway.ops.metrics import GatewayMetrics

    class ForwardingMetrics(GatewayMetrics):
        def record_instance(self, result: str, nbytes: int, seconds: float) -> None:
            channel.send_soon(["record_instance", [result, nbytes, seconds]])

        def record_commit_group(self, rows: int) -> None:
            channel.send_soon(["record_commit_group", [rows]])

        def record_association(self, result: str) -> None:
            channel.send_soon(["record_association", [result]])

    return ForwardingMetrics()


def forwarding_wakeups(channel: Channel, node_id: str) -> Any:
    """Wake-ups whose delivery goes to the node's stages through ``channel`` (on PostgreSQL the NOTIFY sent in
    the transaction still reaches every node, as in a node)."""
    from gateway.storage import wakeup

    class ForwardingWakeups(wakeup.Wakeups):
        def __init__(self) -> None:
            super().__init__(node_id)
            self.listener = None  # this process runs no stage: it listens to nobody
            self.local = None

        def deliver(self, topic: str) -> None:
            try:
                channel.send({"wake": topic})
            except OSError:
                pass  # the node is gone; its poll finds the work when it is back

        def wake_at(self, topic: str, when: dt.datetime) -> None:
            try:
                channel.send({"wake_at": [topic, when.isoformat()]})
            except OSError:
                pass

    return ForwardingWakeups()


def serve(config_json: str, listen_fd: int, channel_fd: int, number: int, node_id: str, slots_fd: int) -> None:
    """Configure this process from the node's configuration and serve on the inherited socket until the node
    closes standard input. (The imports are here, not at the top: ``main`` asks to die with the node first.)"""
    from gateway.config import GatewayConfig
    from gateway.ops.logs import configure_logging

    config = GatewayConfig.model_validate_json(config_json)
    channel = Channel(channel_fd)
    # Its events go to the node's log file and console themselves, each line written before the C-STORE it
    # tells of is answered (as in the node); the node alone rotates the file.
    configure_logging(config.logging, strict=os.environ.get("SPINE_GATEWAY_LOG_STRICT") == "1",
                      defaults={"component": process_name(number)}, rotate=False)

    import structlog

    from gateway.dicom.net import install_fast_paths
    from gateway.ops.memory import HeapTrimmer, quiet_value_warnings, trace_allocations_if_asked
    from gateway.scp.receiver import remove_unplaced_receipts
    from gateway.scp.server import node_handlers, start_scp
    from gateway.scp.slots import AssociationSlots
    from gateway.stages.context import NodeContext
    from gateway.storage import cases
    from gateway.storage.models import db, make_database
    from gateway.storage.spool import Spool

    log = structlog.get_logger("scp")
    trace_allocations_if_asked()  # as the node: SPINE_GATEWAY_TRACEMALLOC, kill -USR1 <pid>
    quiet_value_warnings()  # as the node: a fuzzed request's UIDs would each stay in the warning registry
    identity = receiver_identity(node_id, number)
    database = make_database(config.storage.database, max_connections=config.node.max_associations + 4)
    db.initialize(database)  # the models' proxy (gateway.storage.models): bound once, for the whole process
    spool = Spool(config.storage.spool_dir, config.storage.min_free_bytes, node_tag=identity)
    spool.prepare()
    with database.connection_context():
        remove_unplaced_receipts(spool, identity)  # its previous incarnation's, if it died
    hub = forwarding_wakeups(channel, identity)
    context = NodeContext(database, cases.LeaseOwner(identity, dt.timedelta(seconds=config.routing.claim_lease_s)), hub,
                          forwarding_metrics(channel))
    context.install()  # for the case state machine, called by the report intake (see gateway.stages.context)
    install_fast_paths()
    slots = AssociationSlots.inherited(slots_fd, processes_sharing(config), number, config.node.max_associations)
    server = start_scp(config.node, node_handlers(config, spool, identity, slots, context), listening_fd=listen_fd)
    slots.accepting()
    log.info("receiver_started", port=config.node.port)
    trimmer = HeapTrimmer().start()  # what an attack's association threads freed, back to the system
    try:
        sys.stdin.buffer.read()  # until the node closes it (stop) or dies
    except _StopAsked:
        pass
    trimmer.stop()
    server.shutdown()
    database.close()
    with contextlib.suppress(OSError):
        channel.flush()  # the last metrics
    log.info("receiver_stopped")


class _StopAsked(Exception):
    """SIGTERM (systemd stops every process of the service together): stop as when the node closes our input."""


def _stop_asked(signum: int, frame: object) -> None:
    raise _StopAsked


def receiver_identity(node_id: str, number: int) -> str:
    """The name under which receiving process ``number`` tags its rows and spool files."""
    return f"{node_id}-r{number}"


def process_name(number: int) -> str:
    return f"receiver-{number}"


def processes_sharing(config: Any) -> int:
    """How many processes accept on the DICOM port: the node and its receiving processes."""
    return 1 + resolved_count(config.node.receiving_processes)


def resolved_count(configured: int | None) -> int:
    """``node.receiving_processes``; None: one per core beyond the first, at most three."""
    if configured is not None:
        return configured
    return max(0, min(3, (os.cpu_count() or 1) - 1))


def main(argv: list[str] | None = None) -> int:
    """``python -m gateway.scp.receiving_process PARENT_PID LISTEN_FD CHANNEL_FD SLOTS_FD NUMBER NODE_ID``
    (the node runs it)."""
    args = argv or sys.argv[1:]
    parent_pid, listen_fd, channel_fd, slots_fd, number = (int(value) for value in args[:5])
    node_id = args[5]
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C at the terminal reaches the node, which stops us
    signal.signal(signal.SIGTERM, _stop_asked)
    config_json = sys.stdin.buffer.readline().decode("utf-8")
    if not config_json:
        return 0
    serve(config_json, listen_fd, channel_fd, number, node_id, slots_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
