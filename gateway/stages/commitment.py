"""The commitment stage: every pending Storage Commitment request whose time has come is checked against what
the gateway holds and its report (N-EVENT-REPORT) sent to the source's ``return`` address, in a new association.

The request was kept by the SCP when its N-ACTION arrived (``gateway.storage.commitments``); this stage alone
sends reports, so a report survives a restart and waits out a requester that is offline: a try that does not
get through is repeated after ``commitment.initial_s`` doubling up to ``commitment.max_s`` (``Backoff``), and
after ``commitment.max_attempts`` the request is left ``failed`` in ``status``. The instances are checked again
at each try, so a report says what is durable at the moment it is sent.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import structlog

from gateway.backoff import Backoff
from gateway.config import CommitmentConfig, GatewayConfig, NodeConfig, SourceConfig
from gateway.dicom.commitment import Failure, ReportNotDelivered, report, send_report
from gateway.ops import audit
from gateway.stages.context import NodeContext, WithNodeContext
from gateway.storage import commitments, wakeup
from gateway.storage.models import CommitmentRequest, utcnow

log = structlog.get_logger("commitment")


class CommitmentStage(WithNodeContext):
    """Pending commitment requests → reported (or, after too many tries, failed)."""

    name = "commitment"

    def __init__(self, node: NodeConfig, commitment: CommitmentConfig, sources: Sequence[SourceConfig],
                 spool_dir: Path | str, *, context: NodeContext | None = None) -> None:
        self.node = node  # the node's AE title and timeouts, as the SCU that sends the report
        self.commitment = commitment
        self.backoff = Backoff(commitment.initial_s, commitment.max_s, jitter=True)
        self.returns = {source.name: source.return_ for source in sources}
        self.spool_dir = Path(spool_dir)
        self._context = context

    @classmethod
    def of(cls, config: GatewayConfig, *, context: NodeContext | None = None) -> CommitmentStage:
        """The stage from the whole configuration: the sections it uses (``node``, ``commitment``, the sources'
        return addresses, ``storage.spool_dir``)."""
        return cls(config.node, config.commitment, config.sources, config.storage.spool_dir, context=context)

    def run_once(self, now: dt.datetime) -> int:
        reported = 0
        for request in commitments.due(now):
            if commitments.claim(request, now, self.context.lease):
                reported += self._try(request)
        return reported

    def _try(self, request: CommitmentRequest) -> int:
        """One try at the request's report; 1 when it got through."""
        peer = self.returns.get(request.source)
        references = commitments.references_of(request)
        checked = commitments.check(request.source, references, self.spool_dir)
        failures = [Failure(reference, reason) for reference, reason in checked.failed]
        event_type, information = report(request.transaction_uid, checked.committed, failures)
        try:
            if peer is None:  # the source lost its return address since the request (a config change)
                raise ReportNotDelivered("the source has no return address")
            send_report(self.node, peer, event_type, information)
        except ReportNotDelivered as exc:
            self._not_delivered(request, str(exc))
            return 0
        commitments.mark_reported(request, event_type, len(failures))
        log.info("commitment_reported", source=request.source, instances=len(references), count=len(failures),
                 status="all_committed" if not failures else "some_failed", attempt=request.attempts + 1)
        self._audit("commitment_reported", request, "success" if not failures else "failed",
                    f"{len(checked.committed)} committed, {len(failures)} failed, event type {event_type}")
        return 1

    def _not_delivered(self, request: CommitmentRequest, error: str) -> None:
        attempt = request.attempts + 1
        last = attempt >= self.commitment.max_attempts
        retry_at = None if last else utcnow() + dt.timedelta(seconds=self.backoff.wait_s(attempt))
        commitments.mark_not_delivered(request, error, retry_at)
        self.context.wake_at(wakeup.COMMITMENT, retry_at)  # the retry runs when due, not at a later poll
        log.warning("commitment_report_failed", source=request.source, attempt=attempt, error=error,
                    status="failed" if last else "retrying")
        if last:
            self._audit("commitment_report_failed", request, "failed", f"gave up after {attempt} tries: {error}")

    def _audit(self, action: str, request: CommitmentRequest, outcome: str, detail: str) -> None:
        try:
            audit.record(action, actor_ae=request.calling_ae, actor_host=None, study_key=None, outcome=outcome,
                         detail=f"commitment request {request.id}: {detail}")
        except audit.AuditWriteError:
            pass  # logged by audit.record; the report went out (or did not) either way
