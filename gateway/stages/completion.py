"""Study completion: a study is complete when no instance has arrived for ``routing.stable_after_s``.

A complete study's referral is matched again here (``gateway.referral.matching.match_study``, a database
operation any stage may do): the receiving side matched it when the study arrived, unless that failed.
"""

from __future__ import annotations

import datetime as dt

from peewee import fn

from gateway.config import RoutingConfig
from gateway.referral.matching import match_study
from gateway.routing.spine import SpineFilter
from gateway.stages.context import NodeContext, WithNodeContext
from gateway.stages.pipeline import run_case_stage
from gateway.storage import cases, wakeup
from gateway.storage.models import CaseState, Instance, Study


class CompletionStage(WithNodeContext):
    """RECEIVING → COMPLETE once the study has been quiet for ``stable_after_s``."""

    name = "completion"
    claim_states = (CaseState.RECEIVING,)
    # No lease: the step is one conditional state change (RECEIVING → COMPLETE, or REJECTED_NOT_SPINE), which two
    # nodes cannot both make. With a lease, a study whose early instances the de-identification stage was working
    # through (its lease, renewed until the whole batch was done) became complete only after that work and the
    # next poll: 12 s after its last instance with a 2 s wait (issue 29). Now it is decided at the deadline; the
    # de-identification stage, woken by COMPLETE, takes the case over once its early run ends.
    takes_lease = False
    own_thread = True  # nor wait for a thread of the shared pool while other stages' runs hold them all

    def __init__(self, routing: RoutingConfig, spine_filter: SpineFilter | None = None, *,
                 context: NodeContext | None = None) -> None:
        self._context = context
        self.stable_after = dt.timedelta(seconds=routing.stable_after_s)
        self.spine_filter = spine_filter  # non-spine studies go to REJECTED_NOT_SPINE instead of COMPLETE

    def run_once(self, now: dt.datetime) -> int:
        return run_case_stage(self, now, owner=self.context.owner)

    def due(self, now: dt.datetime) -> list[Study]:
        cutoff = now - self.stable_after
        # Study.last_received_at is refreshed at most once a second by the SCP: confirm with the instances.
        last_instance = Instance.select(fn.MAX(Instance.received_at)).where(Instance.study == Study.id)
        quiet = (Study.select()
                 .where((Study.state == CaseState.RECEIVING) & (Study.last_received_at <= cutoff)
                        & (last_instance <= cutoff))
                 .order_by(Study.last_received_at))
        # list(): fetched whole before any write; on SQLite a half-read cursor makes the writes fail at once.
        self.context.wake_at(wakeup.STABLE, self.next_stable_at(now))
        return list(quiet)

    def next_stable_at(self, now: dt.datetime | None = None) -> dt.datetime | None:
        """When the next receiving study will have been quiet for ``stable_after_s`` (None: none receiving); a
        study already quiet (due now, or backing off after a failure) is left to this run and the poll."""
        last = (Instance.select(Study.last_received_at, fn.MAX(Instance.received_at)).join(Study)
                .where(Study.state == CaseState.RECEIVING).group_by(Study.id, Study.last_received_at).tuples())
        times = [max(t for t in pair if t is not None) + self.stable_after for pair in last if any(pair)]
        times = [t for t in times if now is None or t > now]
        return min(times) if times else None

    @staticmethod
    def give_up(study: Study) -> str:
        """A study the completion step keeps failing on (e.g. the spine filter cannot read it) is quarantined."""
        return CaseState.QUARANTINED

    def step(self, study: Study, now: dt.datetime) -> bool:
        if self.spine_filter is not None and self.spine_filter.reject_if_not_spine(study):
            return True
        moved = cases.move(study, CaseState.COMPLETE, reason="stable")
        if moved:
            match_study(study)  # again, in case the match at its arrival failed; a database operation only
        return moved
