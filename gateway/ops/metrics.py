"""Prometheus metrics, in a registry of their own (never the process-global one).

The node builds one :class:`GatewayMetrics` and puts it in its context (:mod:`gateway.stages.context`); the stages
and servers count on the context's ``metrics``, which ``GET /metrics`` renders (:mod:`gateway.http.health`). There
is no module-level registry: two nodes in one process (tests) count apart.
Cases by state are not counted as they change but read from the database at scrape time, so the gauge is right
even after a restart. Label values are checked against fixed sets: an unbounded label (a study key, a peer
address) would grow the registry without end.
"""

from __future__ import annotations

from collections.abc import Iterator

import peewee
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.storage.models import Study, db, tuple_rows

PREFIX = "spine_gateway"
INSTANCE_RESULTS = ("stored", "duplicate", "refused", "failed")
ASSOCIATION_RESULTS = ("accepted", "rejected", "aborted", "released", "dropped")
DELIVERY_RESULTS = ("delivered", "failed")
# Rows committed by one transaction of the receive path's group commit (``gateway.scp.commit``).
GROUP_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
# Seconds: from a few milliseconds (one small instance) to minutes (a whole study over a slow link).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 180.0, 600.0)


def _check_label(kind: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{kind} result must be one of {', '.join(allowed)} (got {value!r})")
    return value


class CaseStateCollector:
    """Reads ``Study.state`` counts at scrape time: ``spine_gateway_cases{state=...}``.

    Also exposes ``spine_gateway_database_up`` (1 when the count query answered, else 0), so that a scrape
    never fails because the database is down.
    """

    def __init__(self, database: peewee.Database | peewee.DatabaseProxy = db) -> None:
        self.database = database

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(f"{PREFIX}_cases", "Cases (studies) by state", labels=["state"]),
                GaugeMetricFamily(f"{PREFIX}_database_up", "1 if the database answered the last scrape")]

    def collect(self) -> Iterator[Metric]:
        cases = GaugeMetricFamily(f"{PREFIX}_cases", "Cases (studies) by state", labels=["state"])
        up = GaugeMetricFamily(f"{PREFIX}_database_up", "1 if the database answered the last scrape")
        try:
            counts = self._counts()
        except (peewee.PeeweeException, peewee.DatabaseError, AttributeError, OSError):
            up.add_metric([], 0)  # AttributeError: the proxy is not initialised yet
            yield up
            return
        for state, count in sorted(counts.items()):
            cases.add_metric([state], count)
        up.add_metric([], 1)
        yield cases
        yield up

    def _counts(self) -> dict[str, int]:
        with self.database.connection_context():
            query = Study.select(Study.state, peewee.fn.COUNT(Study.id)).group_by(Study.state)
            return {state: count for state, count in tuple_rows(query)}


class GatewayMetrics:
    """Every metric of the gateway, registered in ``self.registry``."""

    def __init__(self, database: peewee.Database | peewee.DatabaseProxy = db) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.instances = Counter(f"{PREFIX}_instances_received", "Instances received by C-STORE, by result",
                                 ["result"], registry=r)
        self.received_bytes = Counter(f"{PREFIX}_received_bytes", "Bytes of instances received", registry=r)
        self.associations = Counter(f"{PREFIX}_associations", "Associations by result", ["result"], registry=r)
        self.deliveries = Counter(f"{PREFIX}_deliveries", "Study deliveries by result", ["result"], registry=r)
        self.retries = Counter(f"{PREFIX}_delivery_retries", "Delivery attempts that were retries", registry=r)
        self.resent_after_recovery = Counter(
            f"{PREFIX}_delivery_resent_after_recovery",
            "Objects sent again after an interrupted attempt without knowing whether the peer had them", registry=r)
        self.found_after_recovery = Counter(
            f"{PREFIX}_delivery_found_after_recovery",
            "Objects of an interrupted attempt the peer already had (C-FIND), not sent again", registry=r)
        self.store_seconds = Histogram(f"{PREFIX}_store_seconds", "Time to make one instance durable",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.commit_groups = Histogram(f"{PREFIX}_store_commit_rows",
                                       "Instance rows per receive-path commit (group commit: _count is the number "
                                       "of commits, _sum the rows)", buckets=GROUP_BUCKETS, registry=r)
        self.deid_seconds = Histogram(f"{PREFIX}_deidentification_seconds", "Time to de-identify one instance",
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.delivery_seconds = Histogram(f"{PREFIX}_delivery_seconds", "Time to deliver one study",
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.receivers_running = Gauge(f"{PREFIX}_receiving_processes", "Receiving processes running beside the "
                                       "node (node.receiving_processes)", registry=r)
        self.receiver_exits = Counter(f"{PREFIX}_receiving_process_exits", "Receiving processes that exited while "
                                      "the node ran (each is started again)", registry=r)
        for counter, results in ((self.instances, INSTANCE_RESULTS), (self.associations, ASSOCIATION_RESULTS),
                                 (self.deliveries, DELIVERY_RESULTS)):
            for result in results:
                counter.labels(result=result)  # present at 0 from the first scrape
        r.register(CaseStateCollector(database))

    def record_instance(self, result: str, nbytes: int, seconds: float) -> None:
        """One C-STORE answered: ``result`` in INSTANCE_RESULTS, ``nbytes`` received, ``seconds`` to answer."""
        self.instances.labels(result=_check_label("instance", result, INSTANCE_RESULTS)).inc()
        if nbytes > 0:
            self.received_bytes.inc(nbytes)
        if result in ("stored", "duplicate"):
            self.store_seconds.observe(seconds)

    def record_commit_group(self, rows: int) -> None:
        """One receive-path transaction committed (or failed) with ``rows`` instance rows."""
        self.commit_groups.observe(rows)

    def record_association(self, result: str) -> None:
        """An association accepted, rejected, aborted or released, or a connection dropped before negotiating."""
        self.associations.labels(result=_check_label("association", result, ASSOCIATION_RESULTS)).inc()

    def record_delivery(self, result: str, seconds: float, *, retry: bool = False) -> None:
        """A delivery attempt finished: ``result`` in DELIVERY_RESULTS; ``retry`` when it was not the first."""
        self.deliveries.labels(result=_check_label("delivery", result, DELIVERY_RESULTS)).inc()
        if retry:
            self.retries.inc()
        if result == "delivered":
            self.delivery_seconds.observe(seconds)

    def observe_deidentification(self, seconds: float, instances: int = 1) -> None:
        """``instances`` de-identified together in ``seconds``: one observation per instance (the mean)."""
        for _ in range(instances):
            self.deid_seconds.observe(seconds / instances)

    def record_recovery(self, found: int, resent: int) -> None:
        """After an interrupted delivery attempt: ``found`` objects the peer had (not sent again), ``resent``
        sent again without knowing (possible duplicates)."""
        self.found_after_recovery.inc(found)
        self.resent_after_recovery.inc(resent)

    def receiving_processes(self, running: int, *, exited: bool = False) -> None:
        """``running`` receiving processes now; ``exited``: one of them has just exited unasked."""
        self.receivers_running.set(running)
        if exited:
            self.receiver_exits.inc()

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)


CONTENT_TYPE = CONTENT_TYPE_LATEST
