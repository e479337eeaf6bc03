"""How much of what the SCP refuses is kept, per peer: the quarantine's budget.

A refused C-STORE used to be kept whole in ``quarantine/`` with a ``QuarantinedObject`` row, every time: a peer
sending garbage in a loop filled the spool and the table. Here each calling AE title may have at most
``quarantine.max_objects_per_peer`` rows and ``quarantine.max_bytes_per_peer`` bytes kept at once (counted in the
table, so across every process and node sharing the database; two refusals at the same instant may both fit
where one would, which bounds the overshoot by the associations open at once). Past the budget a refusal is
still answered with its status, and its bytes are dropped.
"""

from __future__ import annotations

import peewee
from peewee import fn

from gateway.stages.context import NodeContext, WithNodeContext
from gateway.storage.models import QuarantinedObject


class QuarantineBudget(WithNodeContext):
    """``quarantine.max_bytes_per_peer`` and ``max_objects_per_peer`` for one calling AE title, counted in the
    database of ``context`` (the node's)."""

    def __init__(self, max_bytes_per_peer: int, max_objects_per_peer: int, *,
                 context: NodeContext | None = None) -> None:
        self.max_bytes = max_bytes_per_peer
        self.max_objects = max_objects_per_peer
        self._context = context

    def allows(self, calling_ae: str, size: int) -> bool:
        """Whether a refused object of ``size`` bytes from ``calling_ae`` may be kept; False also when the
        database cannot say (keeping nothing is the safe side of a budget)."""
        if self.max_objects <= 0 or size > self.max_bytes:
            return False
        try:
            with self.context.database.connection_context():
                kept, total = (QuarantinedObject
                               .select(fn.COUNT(QuarantinedObject.id), fn.COALESCE(fn.SUM(QuarantinedObject.size), 0))
                               .where(QuarantinedObject.calling_ae == calling_ae)
                               .scalar(as_tuple=True))
        except peewee.PeeweeException:
            return False
        return kept < self.max_objects and int(total) + size <= self.max_bytes
