"""The node context: what a running node shares with its stages and servers, built once by ``gateway/node.py``.

It holds the open database, who claims cases and for how long (``cases.LeaseOwner``), the wake-up hub and the
metrics, all built by the node. The stages and servers get it as a constructor argument and use it, instead of
reaching module globals; every claim names its owner. Two globals stay, because code that is not handed a
context reads them: the peewee models are bound to ``models.db`` (a proxy ``open_database`` initialises), and
``cases.move``'s wake-ups are called from libraries, the CLI and the receiving processes. The hub has one
setter, called by :meth:`NodeContext.install` in the node and by the entry of the receiving process
(``gateway.scp.receiving_process``) or of a CLI command (``gateway.cli.common``).

A stage built without a context (tests, the CLI) uses :meth:`NodeContext.of_process`, read at the moment it is
used: the models' database, the hub installed then, the process's owner ``<host>:<pid>`` and metrics of the
process's own, which nothing renders.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass

import peewee

from gateway.ops.metrics import GatewayMetrics
from gateway.storage import cases, wakeup
from gateway.storage.models import db


@dataclass(frozen=True)
class NodeContext:
    """The node's shared parts: ``database``, ``owner`` (node id and lease), ``wakeups`` (None: off), ``metrics``."""

    database: peewee.Database | peewee.DatabaseProxy
    owner: cases.LeaseOwner
    wakeups: wakeup.Wakeups | None
    metrics: GatewayMetrics

    @classmethod
    def of_process(cls) -> NodeContext:
        """The context of a process that built none (a test, a CLI command): its globals as they are now."""
        return cls(db, cases.process_owner(), wakeup.current(), _process_metrics())

    @property
    def node_id(self) -> str:
        return self.owner.node_id

    @property
    def lease(self) -> dt.timedelta:
        return self.owner.lease

    def install(self) -> None:
        """Hand the wake-up hub to the code that reads the process's (see the module's docstring); the node calls
        it once, at start, and ``uninstall`` at stop."""
        wakeup.install(self.wakeups)

    def uninstall(self) -> None:
        wakeup.install(None)

    def notify(self, topic: str) -> None:
        """There is work under ``topic`` in the current transaction: its stages are woken after the commit (in
        this node and, on PostgreSQL, in every node); wake-ups off: the poll finds it."""
        if self.wakeups is not None:
            self.wakeups.notify(topic)

    def wake_at(self, topic: str, when: dt.datetime | None) -> None:
        """Work under ``topic`` becomes due at ``when`` (naive UTC); None, or wake-ups off: the poll finds it."""
        if self.wakeups is not None and when is not None:
            self.wakeups.wake_at(topic, when)


@functools.cache
def _process_metrics() -> GatewayMetrics:
    """What a process that built no context counts on (a test, a CLI command): one registry, which nothing
    renders. A node counts on the one it builds and hands in its context, never on this."""
    return GatewayMetrics()


class WithNodeContext:
    """A stage or server that may be handed the node's context: ``self.context`` is that one, or, when none was
    handed (tests, the CLI), the process's context read at the moment it is used."""

    _context: NodeContext | None = None

    @property
    def context(self) -> NodeContext:
        return self._context if self._context is not None else NodeContext.of_process()
