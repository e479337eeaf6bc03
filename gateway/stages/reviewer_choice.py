"""What the stages that choose a reviewer share (assignment, and the SLA stage's reassignment)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from gateway.config import ReviewerConfig, RoutingConfig
from gateway.routing.assignment import ReviewerPool, last_assigned, open_cases, unhealthy_peers
from gateway.stages.context import NodeContext, WithNodeContext


class ReviewerChoosingStage(WithNodeContext):
    """The reviewers' pool, the ``routing`` section, and the reviewers' load: open cases each, when each was
    last given one, the peers found down. The load is read once a run (``read_load``), then kept up to date
    by the stage as it assigns, so that a run does not query it again for every case."""

    def __init__(self, reviewers: Sequence[ReviewerConfig], routing: RoutingConfig, *,
                 context: NodeContext | None = None) -> None:
        self.pool = ReviewerPool(reviewers)
        self.routing = routing
        self._context = context
        self._load: dict[str, int] = {}
        self._recent: dict[str, dt.datetime] = {}
        self._down: set[str] = set()
        # pull reviewers claim from the pool; a case is never pushed to one (the SLA's reassignment skips them)
        self._pull = [r.name for r in reviewers if r.mode == "pull"]

    def read_load(self) -> None:
        self._load, self._recent, self._down = open_cases(), last_assigned(), unhealthy_peers()
