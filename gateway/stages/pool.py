"""The pool worklist's stage: it finds what other moves meant for the open workitems and settles them.

* IN PROGRESS, and the claimer's report arrived (the case is on its report leg): COMPLETED;
* IN PROGRESS past its claim's end (``routing.pool_claim_timeout_s`` after the claim), the case still DELIVERED to
  the claimer with no report: the claim was abandoned, the workitem is SCHEDULED again and the case POOLED;
* the case left the pool otherwise (quarantined, reassigned after its SLA): CANCELED.

It calls no other stage: the claim, the report intake and the other stages change the database, and this stage reads
it (woken by those states, by the claim's timer, or on its poll). One workitem that fails is logged and left for the
next run; the others go on.
"""

from __future__ import annotations

import datetime as dt

import structlog

from gateway.routing import pool
from gateway.stages.context import NodeContext, WithNodeContext
from gateway.storage import cases, workitems
from gateway.storage.models import CaseState, Study, Workitem
from gateway.storage.wakeup import WORKLIST

log = structlog.get_logger("routing.pool")
ACTOR = "pool_stage"


class PoolStage(WithNodeContext):
    """Completes, times out and cancels the pool's open workitems (see the module docstring)."""

    name = "pool"

    def __init__(self, *, context: NodeContext | None = None) -> None:
        self._context = context

    def run_once(self, now: dt.datetime) -> int:
        changed = 0
        with self.context.database.connection_context():
            open_items = list(Workitem.select(Workitem, Study).join(Study)
                              .where(Workitem.state.in_(workitems.OPEN)).order_by(Workitem.id))
            for workitem in open_items:
                try:
                    changed += settle(workitem, workitem.study, now)
                except Exception as exc:  # noqa: BLE001 - one bad workitem never stops the others
                    log.error("workitem_failed", case=workitem.study.key, error=type(exc).__name__)
            self._wake_at_next_timeout()
        return changed

    def _wake_at_next_timeout(self) -> None:
        """A claim made on another node set its timer there; this node looks again at the earliest end too."""
        next_end = (Workitem.select(Workitem.claim_expires_at).where(Workitem.state == workitems.IN_PROGRESS)
                    .order_by(Workitem.claim_expires_at).limit(1).scalar())
        self.context.wake_at(WORKLIST, next_end)


def settle(workitem: Workitem, study: Study, now: dt.datetime) -> bool:
    """What the case's state means for its open workitem; True when the workitem changed."""
    if workitem.state == workitems.SCHEDULED:
        return study.state != CaseState.POOLED and pool.cancel_left(workitem, study, now)
    if study.reviewer == workitem.claimed_by and study.state in cases.REPORT_LEG:
        return pool.complete(workitem, ACTOR, now)
    if study.reviewer == workitem.claimed_by and study.state == CaseState.DELIVERED:
        expired = workitem.claim_expires_at is not None and workitem.claim_expires_at <= now
        return expired and pool.give_back(workitem, pool.TIMED_OUT, ACTOR, now)
    return pool.cancel_left(workitem, study, now)
