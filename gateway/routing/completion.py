"""Study completion: a study is complete when no instance has arrived for ``routing.stable_after_s``."""

from __future__ import annotations

import datetime as dt

from peewee import fn

from gateway import cases, wakeup
from gateway.config import RoutingConfig
from gateway.models import CaseState, Instance, Study
from gateway.routing.spine import SpineFilter


class CompletionStage:
    """RECEIVING → COMPLETE once the study has been quiet for ``stable_after_s``."""

    name = "completion"

    def __init__(self, routing: RoutingConfig, spine_filter: SpineFilter | None = None) -> None:
        self.stable_after = dt.timedelta(seconds=routing.stable_after_s)
        self.spine_filter = spine_filter  # non-spine studies go to REJECTED_NOT_SPINE instead of COMPLETE

    def run_once(self, now: dt.datetime) -> int:
        cutoff = now - self.stable_after
        # Study.last_received_at is refreshed at most once a second by the SCP: confirm with the instances.
        last_instance = Instance.select(fn.MAX(Instance.received_at)).where(Instance.study == Study.id)
        quiet = (Study.select()
                 .where((Study.state == CaseState.RECEIVING) & (Study.last_received_at <= cutoff)
                        & (last_instance <= cutoff))
                 .order_by(Study.last_received_at))
        # list(): fetched whole before any write; on SQLite a half-read cursor makes the writes fail at once.
        moved = sum(self._complete(study) for study in list(quiet))
        wakeup.wake_at(wakeup.STABLE, self.next_stable_at())
        return moved

    def next_stable_at(self) -> dt.datetime | None:
        """When the next receiving study will have been quiet for ``stable_after_s`` (None: none receiving)."""
        last = (Instance.select(Study.last_received_at, fn.MAX(Instance.received_at)).join(Study)
                .where(Study.state == CaseState.RECEIVING).group_by(Study.id, Study.last_received_at).tuples())
        times = [max(t for t in pair if t is not None) for pair in last if any(pair)]
        return min(times) + self.stable_after if times else None

    def _complete(self, study: Study) -> bool:
        if self.spine_filter is not None and self.spine_filter.reject_if_not_spine(study):
            return True
        return cases.move(study, CaseState.COMPLETE, reason="stable")
