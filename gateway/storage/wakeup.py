"""Wake-ups: the stage that takes a case next runs at once, instead of at its next poll.

Stages still find their work in the database and never call each other. A wake-up only says "there may be
work under this *topic*" (a case state such as ``complete``, or an event such as ``referral``); the woken
stage queries the database exactly as at a poll, and the poll (``routing.poll_s``) stays as the fallback
for any wake-up that is lost.

- **In-process**: :func:`notify` is called where the work is made (``cases.move`` for every state change,
  the report and referral intakes for new objects). Inside a transaction it is delivered only once the
  transaction commits (peewee's ``after_commit``; a rollback drops it), so a woken stage always sees the
  change; outside one the row is already committed and it is delivered at once.
- **Across nodes** (PostgreSQL): the same call sends ``NOTIFY spine_gateway_wakeup`` in the same
  transaction, which PostgreSQL delivers only on commit. Each node keeps one listener thread with a
  connection of its own (``LISTEN``), reconnecting with a backoff; after a reconnect it wakes every stage,
  since notifications sent meanwhile are gone.
- **Timers** (:func:`wake_at`): work that becomes due with time, not with a write: a study turning stable
  (``routing.stable_after_s`` after its last instance), a delivery retry coming due, and a case a stage found
  claimed by another stage or node, at the end of that lease (:func:`again_after_lease`: the holder's release
  wakes the stage at once, and should that wake-up be lost, the stage still looks again within the lease).
  They are APScheduler date jobs on the node's scheduler, the one the pipeline runs its stages on
  (``Wakeups(scheduler=...)``); a hub built without one (tests) runs a scheduler of its own. A receiving
  process keeps no timer: it forwards them to the node (``gateway.scp.receiving_process``).
- **Association ends**: an association that stored instances wakes completion when it ends, which then sets
  the stability timer (``gateway.scp.handlers``; an association that stored nothing, such as a C-ECHO, wakes
  nothing: a flood of them kept completion querying while a legitimate study waited for its commits).
- **Commands** (``spine-gateway retry``, ``release``, ``referral add``, ``notes approve``, ...) run in a process
  of their own, which runs no stage: the CLI installs :class:`CommandWakeups` where it opens the database
  (``gateway.cli.common.open_command_database``), so the same :func:`notify` calls reach the node. On PostgreSQL that is
  the NOTIFY above, sent in the command's transaction and heard by every node. On SQLite (one node per
  database) the node binds a Unix datagram socket, ``wakeup.sock`` in its spool directory (mode 0600, taken
  over at start when a node that is gone left it behind, removed at stop), and the command sends it the topic
  names once its transaction has committed: topic names only, never a case or any identifier. A command that
  finds no node there carries on silently; the poll remains the fallback.

A stage is run through :class:`CoalescedRun`: any number of wake-ups make one run, never two runs of a stage
at once, and a wake-up that comes while the stage runs makes it run once more right after.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import heapq
import os
import select
import socket
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import peewee
import structlog

from gateway.backoff import Backoff
from gateway.storage.models import CaseState as S
from gateway.storage.models import db, utcnow

if TYPE_CHECKING:
    from apscheduler.schedulers.base import BaseScheduler

log = structlog.get_logger("wakeup")

CHANNEL = "spine_gateway_wakeup"
# Topics that are events, not case states.
INSTANCES = "instances"  # an association that stored instances ended
STABLE = "stable"        # a receiving study has had no instance for routing.stable_after_s
REFERRAL = "referral"    # a referral arrived or its notes were approved (it may release a held case)
REPORT = "report"        # a reviewer's report object arrived (also for a case already reported)
PRIORS = "priors"        # a case's priors moved on (instances retrieved, or the fetch finished or is due again)
COMMITMENT = "commitment"  # a source's Storage Commitment request was kept, or its report's retry is due
WORKLIST = "worklist"    # a pool workitem's claim may have ended (its timeout is due, or its claimer gave it back)

# Stage name -> the topics that may give it work. A stage not listed runs on its poll only (SLA, peer checks).
STAGE_TOPICS: dict[str, frozenset[str]] = {
    "completion": frozenset({INSTANCES, STABLE}),
    # not INSTANCES: early de-identification of a study still receiving keeps to its poll, so that it does not
    # take the CPU from the next sender's ingest (bench/concurrent_senders.py, senders one after the other)
    "deid": frozenset({S.COMPLETE, PRIORS}),
    "priors": frozenset({S.DEIDENTIFIED, PRIORS}),
    "notes": frozenset({S.DEIDENTIFIED, S.HELD, REFERRAL, PRIORS}),
    # a reported case frees a reviewer's capacity: a case held for want of a reviewer may go now
    "assignment": frozenset({S.NOTES_ATTACHED, S.HELD, S.REPORTED, S.REPORT_DELIVERED}),
    "delivery": frozenset({S.ASSIGNED, S.DELIVERING}),
    "reports": frozenset({S.REPORTED, S.DELIVERED, REPORT}),
    "commitment": frozenset({COMMITMENT}),
    # the pool: a report completes its workitem; a claim's timeout returns it to the pool
    "pool": frozenset({S.REPORTED, S.QUARANTINED, S.ASSIGNED, WORKLIST}),
}
ALL_TOPICS = frozenset().union(*STAGE_TOPICS.values())

LISTEN_BACKOFF_S = (0.5, 30.0)  # first and longest wait before the listener reconnects
LISTEN_BACKOFF = Backoff(*LISTEN_BACKOFF_S)
PAST_DUE_DELAY_S = 1.0          # a timer asked for the past fires this late (no busy loop on a stuck case)...
JUST_PASSED_WINDOW_S = 0.25     # ...unless its time passed less than this ago (while it was being set):
JUST_PASSED_DELAY_S = 0.01      # then it fires at once
LEASE_END_MARGIN_S = 0.1        # a stage that found a case claimed looks again this long after the lease ends
SOCKET_NAME = "wakeup.sock"     # SQLite: the node's datagram socket, in its spool directory
DATAGRAM_MAX = 512              # a message is a few topic names separated by spaces
_UNIX_PATH_MAX = 107            # sun_path less its NUL: a longer path is reached through /proc/self/fd


def timer_delay_s(when: dt.datetime, now: dt.datetime) -> float:
    """Seconds from ``now`` until a timer for ``when`` fires. Just past, the time went by while it was worked
    out (a study turning stable the instant the completion stage looked): at once. Long past: a second later,
    so that a case stuck in the past makes no busy loop."""
    delay = (when - now).total_seconds()
    if delay > 0:
        return delay
    return JUST_PASSED_DELAY_S if delay > -JUST_PASSED_WINDOW_S else PAST_DUE_DELAY_S


def topics_of(stage_name: str) -> frozenset[str]:
    return STAGE_TOPICS.get(stage_name, frozenset())


class CoalescedRun:
    """Calls ``work`` so that it never runs twice at once and no wake-up is lost.

    ``run()`` (the poll, or the run a wake-up asked for) does the work, unless it is already running: then
    it only asks the running one to go once more. ``wake()`` asks ``kick`` to schedule ``run()`` now, or, while
    the work runs, to go once more right after (its query may have been made before the change).
    """

    def __init__(self, work: Callable[[], None], kick: Callable[[], None]) -> None:
        self._work, self._kick = work, kick
        self._lock = threading.Lock()
        self._running = False
        self._again = False

    def run(self) -> None:
        with self._lock:
            if self._running:
                self._again = True
                return
            self._running, self._again = True, False
        while True:
            try:
                self._work()
            finally:
                with self._lock:
                    again, self._again = self._again, False
                    if not again:
                        self._running = False
            if not again:
                return

    def wake(self) -> None:
        with self._lock:
            if self._running:
                self._again = True
                return
        self._kick()


class _Timers:
    """Topics delivered at given times, as APScheduler date jobs: one job per topic, at the earliest time asked
    for it, on the node's scheduler (the one the pipeline runs its stages on) or, without one, on a scheduler
    of its own (tests, a hub alone).

    Every time asked for is kept (``_due``, a heap per topic), so arming an earlier time moves the topic's job
    earlier without losing the later one: when the job fires, the times now past are dropped (one delivery
    serves them all) and the job is armed again for the next. The same time asked twice is kept once (times are
    rounded up to 10 ms). The jobs run on an executor of their own, so that a busy stage never delays a wake-up.
    APScheduler is imported only when a timer needs it: a receiving process or a CLI command, whose hubs keep
    no timer, stays without it.
    """

    EXECUTOR = "wakeup-timers"
    JOB_PREFIX = "wakeup-timer:"

    def __init__(self, deliver: Callable[[str], None], scheduler: BaseScheduler | None = None) -> None:
        self._deliver = deliver
        self._own = scheduler is None
        self._given = scheduler
        self._scheduler_made: BaseScheduler | None = None
        self._making = threading.Lock()
        self._due: dict[str, list[dt.datetime]] = {}
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def _scheduler(self) -> BaseScheduler:
        """The node's scheduler or our own, made on first use, with our executor added (before any job: a timer
        set before the hub starts waits on the scheduler, which then knows its executor)."""
        with self._making:
            if self._scheduler_made is None:
                from apscheduler.executors.pool import ThreadPoolExecutor
                from apscheduler.schedulers.background import BackgroundScheduler

                made = self._given if self._given is not None else BackgroundScheduler(timezone="UTC")
                made.add_executor(ThreadPoolExecutor(max_workers=2), self.EXECUTOR)
                self._scheduler_made = made
            return self._scheduler_made

    def start(self) -> None:
        scheduler = self._scheduler
        if self._own:
            scheduler.start()

    def at(self, when: dt.datetime, topic: str) -> None:
        """Deliver ``topic`` at ``when`` (aware UTC)."""
        when += dt.timedelta(microseconds=-when.microsecond % 10_000)  # up to the next 10 ms: never early
        with self._lock:
            if self._stopped:
                return
            times = self._due.setdefault(topic, [])
            if when in times:
                return
            heapq.heappush(times, when)
            if times[0] == when:
                self._arm(topic, when)

    def pending(self) -> list[tuple[dt.datetime, str]]:
        """Every time still to come, with its topic, earliest first."""
        with self._lock:
            return sorted((when, topic) for topic, times in self._due.items() for when in times)

    def stop(self) -> None:
        """Cancel every timer; none is delivered after this returns (a delivery under way may finish)."""
        if self._scheduler_made is None:
            self._stopped = True
            return  # never used: nothing to cancel, and no scheduler to make now
        from apscheduler.jobstores.base import JobLookupError

        with self._lock:
            self._stopped = True
            topics, self._due = list(self._due), {}
            for topic in topics:
                with contextlib.suppress(JobLookupError):
                    self._scheduler.remove_job(self.JOB_PREFIX + topic)
        if self._own:
            if self._scheduler.running:
                self._scheduler.shutdown(wait=True)
        else:
            with contextlib.suppress(KeyError):  # the node's scheduler may be shut down already
                self._scheduler.remove_executor(self.EXECUTOR)

    def _arm(self, topic: str, when: dt.datetime) -> None:
        """The topic's job, (re)placed at ``when`` (the caller holds the lock)."""
        self._scheduler.add_job(self._fire, "date", run_date=when, args=[topic], id=self.JOB_PREFIX + topic,
                                name=self.JOB_PREFIX + topic, executor=self.EXECUTOR, replace_existing=True,
                                misfire_grace_time=None)

    def _fire(self, topic: str) -> None:
        with self._lock:
            if self._stopped:
                return
            times, now = self._due.get(topic, []), dt.datetime.now(dt.UTC)
            while times and times[0] <= now:
                heapq.heappop(times)
            if times:
                self._arm(topic, times[0])
            else:
                self._due.pop(topic, None)
        self._deliver(topic)


class PgListener:
    """``LISTEN spine_gateway_wakeup`` on a connection of its own, in a thread; reconnects with a backoff.

    ``on_topic`` gets each topic another node notified; ``on_reconnect`` is called after a reconnection
    (not after the first connection), when notifications may have been missed.
    """

    def __init__(self, connect: Callable[[], object], own_id: str, on_topic: Callable[[str], None],
                 on_reconnect: Callable[[], None]) -> None:
        self._connect, self._own_id = connect, own_id
        self._on_topic, self._on_reconnect = on_topic, on_reconnect
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="wakeup-listener", daemon=True)
        self.connected = threading.Event()
        self._conn: object | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _loop(self) -> None:
        import psycopg2  # only with PostgreSQL

        failures, first = 0, True
        while not self._stop.is_set():
            try:
                self._listen(first)
                failures = 0
            except (psycopg2.Error, OSError) as exc:
                self.connected.clear()
                failures += 1
                wait = LISTEN_BACKOFF.wait_s(failures)
                log.warning("wakeup_listener_lost", component="wakeup", error=type(exc).__name__,
                            reason=f"reconnecting in {wait:.1f} s; the poll carries on meanwhile")
                self._stop.wait(wait)
            finally:
                self._close()
            first = False

    def _listen(self, first: bool) -> None:
        conn = self._conn = self._connect()
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(f"LISTEN {CHANNEL}")
        self.connected.set()
        if not first:
            log.info("wakeup_listener_reconnected", component="wakeup")
            self._on_reconnect()
        while not self._stop.is_set():
            if not select.select([conn], [], [], 1.0)[0]:
                continue
            conn.poll()
            while conn.notifies:
                topic, _, sender = conn.notifies.pop(0).payload.partition(" ")
                if sender != self._own_id:  # our own were delivered in-process at commit
                    self._on_topic(topic)

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is dropped anyway
                pass

    def break_connection(self) -> None:
        """Close the listening connection under the thread (tests: a lost connection must be regained)."""
        conn = self._conn
        if conn is not None:
            conn.close()


def socket_path(spool_dir: Path | str) -> Path:
    """Where a node on SQLite listens for the wake-ups of commands (``<spool_dir>/wakeup.sock``)."""
    return Path(spool_dir) / SOCKET_NAME


@contextlib.contextmanager
def _unix_address(path: Path) -> Iterator[str]:
    """``path`` as an AF_UNIX address; when it is too long (deep spool directories), the same file reached
    through an open descriptor of its directory (``/proc/self/fd/N/wakeup.sock``)."""
    if len(os.fsencode(path)) <= _UNIX_PATH_MAX:
        yield str(path)
        return
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{directory}/{path.name}"
    finally:
        os.close(directory)


def _topics_message(topics: Iterable[str]) -> bytes:
    return " ".join(sorted(set(topics) & ALL_TOPICS)).encode("ascii")


def _topics_of_message(data: bytes) -> list[str]:
    """The known topics in a datagram; anything else in it is ignored."""
    return sorted(set(data.decode("ascii", "replace").split()) & ALL_TOPICS)


def poke(path: Path, topics: Iterable[str]) -> bool:
    """Send ``topics`` to the node listening at ``path`` (SQLite); False, silently, when no node listens there
    (none running, a stale socket file, no permission, its queue full): the node's poll finds the work."""
    message = _topics_message(topics)
    if not message:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender, _unix_address(path) as address:
            sender.setblocking(False)
            sender.sendto(message, address)
    except OSError:
        return False
    return True


class LocalListener:
    """The node's end of the SQLite channel: a Unix datagram socket at ``path`` (0600), read in a thread.

    ``on_topic`` gets each known topic a command sent. At start a socket file left by a node that is gone is
    replaced; one that a live process still answers on is left alone (then this node has no channel, and
    commands wake the other one: two nodes on one SQLite spool are a mistake the log names).
    """

    def __init__(self, path: Path, on_topic: Callable[[str], None]) -> None:
        self.path, self._on_topic = Path(path), on_topic
        self._sock: socket.socket | None = None
        self._inode: int | None = None
        self._wake_r, self._wake_w = -1, -1
        self._thread = threading.Thread(target=self._loop, name="wakeup-local", daemon=True)

    def start(self) -> bool:
        """Bind and start reading; False (logged) when the socket could not be had: the poll carries on."""
        try:
            self._sock = self._bind()
        except OSError as exc:
            log.warning("wakeup_socket_unavailable", component="wakeup", path=str(self.path),
                        error=type(exc).__name__, reason="commands wake this node only at its poll")
            return False
        if self._sock is None:
            log.warning("wakeup_socket_in_use", component="wakeup", path=str(self.path),
                        reason="another live process listens there; commands wake this node only at its poll")
            return False
        self._wake_r, self._wake_w = os.pipe()
        self._thread.start()
        return True

    def _bind(self) -> socket.socket | None:
        """A socket bound under a name of our own, made 0600, then renamed over ``path`` (no moment when it is
        reachable with looser permissions; a stale file is replaced in the same step). None: ``path`` is live."""
        temporary = self.path.with_name(f".{SOCKET_NAME}.{os.getpid()}")
        temporary.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            with _unix_address(temporary) as address:
                sock.bind(address)
            os.chmod(temporary, 0o600)
            if _answers(self.path):
                temporary.unlink(missing_ok=True)
                sock.close()
                return None
            os.replace(temporary, self.path)
            self._inode = os.stat(self.path).st_ino
        except BaseException:
            temporary.unlink(missing_ok=True)
            sock.close()
            raise
        return sock

    def stop(self) -> None:
        if self._sock is None:
            return
        os.write(self._wake_w, b"x")
        if self._thread.is_alive():
            self._thread.join(5)
        self._sock.close()
        self._sock = None
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        with contextlib.suppress(OSError):  # remove our socket file, never one a later node put there
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()

    def _loop(self) -> None:
        sock = self._sock
        while True:
            readable = select.select([sock, self._wake_r], [], [])[0]
            if self._wake_r in readable:
                return
            try:
                data = sock.recv(DATAGRAM_MAX)
            except OSError:
                continue
            for topic in _topics_of_message(data):
                self._on_topic(topic)


def _answers(path: Path) -> bool:
    """A live socket is bound at ``path`` (connecting a datagram socket to a stale file is refused)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe, _unix_address(path) as address:
            probe.connect(address)
    except OSError:
        return False
    return True


def _pg_connect_fn(database: peewee.PostgresqlDatabase) -> Callable[[], object]:
    def connect() -> object:
        import psycopg2

        params = {k: v for k, v in database.connect_params.items()
                  if k in ("user", "password", "host", "port") and v is not None}
        return psycopg2.connect(dbname=database.database, connect_timeout=10, **params)
    return connect


class Wakeups:
    """The node's wake-ups: subscriptions by topic, delivery after commit, timers, and the PostgreSQL side."""

    def __init__(self, node_id: str, database: peewee.Database | None = None, *,
                 local_socket: Path | None = None, scheduler: BaseScheduler | None = None) -> None:
        """``scheduler``: the node's (the pipeline's), which then carries the timers; without it the hub runs a
        scheduler of its own from ``start`` to ``stop``."""
        self.node_id = node_id
        self._subscribers: dict[str, list[Callable[[], None]]] = defaultdict(list)
        self._timers = _Timers(self.deliver, scheduler)
        database = database if database is not None else db.obj
        self._pg = isinstance(database, peewee.PostgresqlDatabase)
        self.listener = PgListener(_pg_connect_fn(database), node_id, self.deliver, self.deliver_all) \
            if self._pg else None
        # SQLite: commands run from the shell wake this node through a socket (PostgreSQL: they NOTIFY)
        self.local = LocalListener(local_socket, self.deliver) if local_socket is not None and not self._pg \
            else None

    def start(self) -> Wakeups:
        self._timers.start()
        if self.listener is not None:
            self.listener.start()
        if self.local is not None and not self.local.start():
            self.local = None
        return self

    def stop(self) -> None:
        self._timers.stop()
        if self.listener is not None:
            self.listener.stop()
        if self.local is not None:
            self.local.stop()

    def subscribe(self, topics: Iterable[str], callback: Callable[[], None]) -> None:
        for topic in topics:
            self._subscribers[topic].append(callback)

    def deliver(self, topic: str) -> None:
        """Wake this node's subscribers of ``topic`` now (the work is committed)."""
        for callback in list(self._subscribers.get(topic, ())):
            try:
                callback()
            except Exception as exc:  # noqa: BLE001 - a wake-up that fails is a poll later, never an error
                log.warning("wakeup_failed", component="wakeup", state=topic, error=type(exc).__name__)

    def deliver_all(self) -> None:
        for topic in list(self._subscribers):
            self.deliver(topic)

    def notify(self, topic: str) -> None:
        """There is work under ``topic`` in the current transaction (or just committed, outside one)."""
        self._send(topic)
        try:
            db.after_commit(lambda: self._committed(topic))
        except ValueError:
            pass  # a manual transaction has no commit hook: the poll finds the work

    def _send(self, topic: str) -> None:
        if self._pg:
            db.execute_sql("SELECT pg_notify(%s, %s)", (CHANNEL, f"{topic} {self.node_id}"))

    def _committed(self, topic: str) -> None:
        if getattr(_claims, "depth", 0):
            _claims.pending.add(topic)  # the case is still claimed: the next stage could not take it yet
        else:
            self.deliver(topic)

    def released(self, topics: Iterable[str]) -> None:
        """The claim under which ``topics`` were committed is released: wake everyone again, other nodes too
        (their stage, woken at the commit, may have found the case still claimed)."""
        for topic in topics:
            self._send(topic)
            db.after_commit(lambda topic=topic: self.deliver(topic))

    def wake_at(self, topic: str, when: dt.datetime) -> None:
        """Deliver ``topic`` in this node at ``when`` (naive UTC, as in the database)."""
        self._timers.at(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=timer_delay_s(when, utcnow())), topic)

    def pending_timers(self) -> list[tuple[dt.datetime, str]]:
        """The timers still to fire (aware UTC, topic), earliest first."""
        return self._timers.pending()


class CommandWakeups(Wakeups):
    """The wake-ups of a command run from the shell: a process that runs no stage, whose changes wake the node.

    :func:`notify` works as in a node: on PostgreSQL the NOTIFY goes out in the command's transaction, under
    the command's own identity, so every node's listener hears it. Delivery after the commit, which in a node
    runs its own stages, here sends the topic to the node's socket on SQLite (:func:`poke`); on PostgreSQL the
    NOTIFY has done it. No thread is started: :meth:`start` is never called.
    """

    def __init__(self, database: peewee.Database, spool_dir: Path | str) -> None:
        super().__init__(f"cli-{socket.gethostname()}-{os.getpid()}"[:64], database)
        self.listener = None  # a command does not listen
        self._socket = socket_path(spool_dir)

    def deliver(self, topic: str) -> None:
        if not self._pg:
            poke(self._socket, [topic])

    def wake_at(self, topic: str, when: dt.datetime) -> None:
        """A command keeps no timer (it exits): what becomes due later is found by the node's poll."""


_hub: Wakeups | None = None
_claims = threading.local()  # per thread: claims held (depth) and topics committed under them (pending)


def install(hub: Wakeups | None) -> None:
    """Make ``hub`` the process's wake-ups (the node does it at start; None turns them off)."""
    global _hub
    _hub = hub


def current() -> Wakeups | None:
    return _hub


def notify(topic: str) -> None:
    """Called where work is made (a committed state change, a new report or referral): wakes the stages
    that consume ``topic`` after the commit, in this node and, with PostgreSQL, in every node."""
    hub = _hub
    if hub is not None:
        hub.notify(topic)


def wake_at(topic: str, when: dt.datetime | None) -> None:
    """Work under ``topic`` becomes due at ``when`` (naive UTC); None: nothing is due."""
    hub = _hub
    if hub is not None and when is not None:
        hub.wake_at(topic, when)


def again_after_lease(stage_name: str, lease_end: dt.datetime | None) -> None:
    """``stage_name`` found a case claimed until ``lease_end``: wake it then (a backstop for the holder's
    release, which wakes it at once unless that wake-up is lost)."""
    topics = sorted(topics_of(stage_name))
    if topics and lease_end is not None:
        wake_at(topics[0], lease_end + dt.timedelta(seconds=LEASE_END_MARGIN_S))


def claim_taken() -> None:
    """A stage took a claim on a case (``cases.claimed``): wake-ups for what it commits wait for the release."""
    _claims.depth = getattr(_claims, "depth", 0) + 1
    if _claims.depth == 1:
        _claims.pending = set()


@contextlib.contextmanager
def releasing_claim() -> Iterator[None]:
    """Around the release of a claim: then the wake-ups it held back go out, when the next stage can claim the
    case (also when the release fails: the lease then expires by itself)."""
    try:
        yield
    finally:
        _claims.depth -= 1
        if _claims.depth == 0 and _claims.pending:
            topics, _claims.pending = _claims.pending, set()
            hub = _hub
            if hub is not None:
                try:
                    hub.released(topics)
                except peewee.PeeweeException as exc:  # the database is failing: the poll finds the work
                    log.warning("wakeup_failed", component="wakeup", error=type(exc).__name__)
