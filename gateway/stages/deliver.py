"""Delivery: every de-identified object of a case to its reviewer, once, over one association per attempt.

A reviewer with ``storage_commitment``: the case is DELIVERED only once the reviewer has committed every object
(Storage Commitment Push Model: an N-ACTION after the C-STOREs, the reviewer's N-EVENT-REPORT recorded in the
ledger by the SCP, ``Delivery.committed_at``); an object it reports not committed is sent again.

ASSIGNED → DELIVERING → DELIVERED, or FAILED after ``routing.retry.max_attempts`` (the study leg's own
counter, ``Study.delivery_attempts``). The per-object ledger (``Delivery``, destination ``reviewer:<name>``)
records each C-STORE response (in batches, see ``routing.send``), so a retry, a restart after ``kill -9`` or an
object added later (a late instance de-identified after the case left) sends only what is missing: a DELIVERED
case with an unsent object goes back to DELIVERING. The sending itself is ``routing.send.send_objects``, shared
with the report leg; the images get the notes stage's reason (``Study.notes_reason``) in (0040,1002) as they
leave.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from pathlib import Path

import peewee
import structlog
from peewee import fn
from pydicom.uid import generate_uid

from gateway.config import GatewayConfig, NodeConfig, RetryConfig, ReviewerConfig
from gateway.dicom.commitment import RequestNotAccepted, request_commitment
from gateway.ops import audit
from gateway.routing.assignment import reviewer_peer
from gateway.routing.errors import RoutingError
from gateway.routing.query import instances_held
from gateway.routing.send import (  # noqa: F401 - re-exported for the stages and tests that import them here
    FAILED,
    MAX_CONTEXTS,
    PENDING,
    REPORT_LEG,
    SENT,
    STORED_STATUSES,
    STUDY_LEG,
    AttemptResult,
    TooManyContexts,
    backoff_s,
    send_objects,
    transcode,
    unsent_objects,
)
from gateway.stages.context import NodeContext, WithNodeContext
from gateway.stages.pipeline import run_case_stage
from gateway.storage import cases, commitments
from gateway.storage.models import CaseState, Delivery, OutboundObject, Study, db, utcnow

log = structlog.get_logger("routing.deliver")

REPORT_KIND = "report"  # a re-identified report (gateway.reports): goes to the source only, never to a reviewer


class UnknownReviewer(RoutingError):
    """A case names a reviewer that is no longer in the configuration."""


class DeliveryStage(WithNodeContext):
    """Sends due cases (ASSIGNED, DELIVERING whose retry time has come, DELIVERED with unsent objects)."""

    name = "delivery"

    def __init__(self, node: NodeConfig, reviewers: Sequence[ReviewerConfig], spool_dir: Path | str,
                 retry: RetryConfig, *, context: NodeContext | None = None) -> None:
        self.node = node
        self.reviewers = {r.name: r for r in reviewers}
        self.spool_dir = Path(spool_dir)
        self.retry = retry
        self._context = context

    @classmethod
    def of(cls, config: GatewayConfig, *, context: NodeContext | None = None) -> DeliveryStage:
        """The stage from the whole configuration: the sections it uses."""
        return cls(config.node, config.reviewers, config.storage.spool_dir, config.routing.retry, context=context)

    def due(self, now: dt.datetime) -> list[Study]:
        """The cases to send; never one a pull reviewer claimed from the pool: it reads it over DICOMweb, and the
        objects it was never sent are not missing (gateway.routing.pool)."""
        ready = Study.select().where(_sending_due(now)).order_by(Study.urgency.desc(), Study.state_changed_at)
        return [study for study in (*ready, *self._delivered_with_missing()) if not self._pulls(study)]

    def _pulls(self, study: Study) -> bool:
        reviewer = self.reviewers.get(study.reviewer or "")
        return reviewer is not None and reviewer.mode == "pull"

    @staticmethod
    def claim_condition(study: Study, now: dt.datetime) -> peewee.Expression:
        """What must still hold when the case is claimed (in the claim's own UPDATE, ``cases.claim``): it is still
        due, and a DELIVERED case still has an object its reviewer has not stored. Selected as due, a case may
        have been delivered by another node since: it is left alone, not sent again with nothing to send."""
        destination = reviewer_peer(study.reviewer or "")
        sent = (Delivery.select(Delivery.outbound).join(OutboundObject)
                .where((OutboundObject.study == study.id) & (Delivery.destination == destination)
                       & (Delivery.state == SENT)))
        unsent = OutboundObject.select(OutboundObject.id).where(
            (OutboundObject.study == study.id) & (OutboundObject.kind != REPORT_KIND) & OutboundObject.id.not_in(sent))
        return _sending_due(now) | ((Study.state == CaseState.DELIVERED) & fn.EXISTS(unsent))

    @staticmethod
    def _delivered_with_missing() -> list[Study]:
        # NOT EXISTS per object of a DELIVERED case (an index look-up each), not NOT IN (every ledger row ever sent),
        # which PostgreSQL hashed at every run: at 100,000 cases a delivery took 177 s, not 1-4 (bench/history.py).
        sent = Delivery.select(Delivery.id).where(
            (Delivery.outbound == OutboundObject.id) & (Delivery.state == SENT)
            & Delivery.destination.startswith("reviewer:"))
        ids = (OutboundObject.select(OutboundObject.study).join(Study)
               .where((Study.state == CaseState.DELIVERED) & ~fn.EXISTS(sent)
                      & (OutboundObject.kind != REPORT_KIND)).distinct())
        return list(Study.select().where(Study.id.in_(ids)))

    claim_states = (CaseState.ASSIGNED, CaseState.DELIVERING, CaseState.DELIVERED)

    def run_once(self, now: dt.datetime) -> int:
        return run_case_stage(self, now, owner=self.context.owner)

    def step(self, study: Study, now: dt.datetime) -> bool:
        return self.deliver(study)

    @staticmethod
    def give_up(study: Study) -> str | None:
        """A case whose delivery keeps raising (e.g. it needs more than 128 presentation contexts) fails."""
        return CaseState.FAILED if study.state in (CaseState.ASSIGNED, CaseState.DELIVERING) else None

    def deliver(self, study: Study) -> bool:
        """One attempt for ``study``; True when the case changed state."""
        reviewer = self.reviewers.get(study.reviewer or "")
        if reviewer is None:
            log.error("delivery_no_reviewer", case=study.key, reviewer=study.reviewer)
            return False
        if reviewer.mode == "pull":
            return False  # claimed from the pool: nothing is pushed to it (``due`` leaves it out already)
        resumed = study.state == CaseState.DELIVERING  # an earlier attempt began: it may have been cut short
        if study.state == CaseState.DELIVERED and not self.pending_objects(study, reviewer):
            return False  # delivered meanwhile (the claim's condition saw the ledger before it was complete)
        if study.state in (CaseState.ASSIGNED, CaseState.DELIVERED):
            # a new delivery (a DELIVERED case with a late object) counts its attempts afresh
            if not cases.move(study, CaseState.DELIVERING, reason="deliver", **STUDY_LEG.reset()):
                return False
        attempt = STUDY_LEG.attempt_of(study)
        started = time.perf_counter()
        result = self._attempt(study, reviewer, resumed)
        seconds = time.perf_counter() - started
        emit = log.info if result.status == "delivered" else log.warning  # every failed attempt at warning
        emit("delivery_attempt", case=study.key, reviewer=reviewer.name, attempt=attempt, status=result.status,
             duration_ms=int(seconds * 1000), instances=result.sent)
        if result.status == "delivered" and reviewer.storage_commitment:
            return self._committed_or_ask(study, reviewer, attempt, seconds, result)
        if result.status == "delivered":
            return self._delivered(study, reviewer, attempt, seconds, result)
        return self._failed_attempt(study, reviewer, attempt, seconds)

    def _committed_or_ask(self, study: Study, reviewer: ReviewerConfig, attempt: int, seconds: float,
                          result: AttemptResult) -> bool:
        """Every object sent to a reviewer that offers Storage Commitment: DELIVERED once it has committed them all
        (its reports, recorded by the SCP in the ledger); until then the objects not asked about, or asked about
        more than ``commitment_wait_s`` ago (that counts as a failed attempt), are asked about in a new N-ACTION,
        and the case waits for the report in DELIVERING."""
        destination = reviewer_peer(reviewer.name)
        waiting = commitments.uncommitted(study.id, destination)
        if not waiting:
            return self._delivered(study, reviewer, attempt, seconds, result, reason="all_objects_committed")
        now = utcnow()
        wait = dt.timedelta(seconds=reviewer.commitment_wait_s)
        expired = [row for row, _ in waiting if row.commitment_requested_at is not None
                   and row.commitment_requested_at + wait <= now]
        to_ask = [(row, outbound) for row, outbound in waiting
                  if row.commitment_requested_at is None or row.commitment_requested_at + wait <= now]
        if expired:
            log.warning("commitment_report_missing", case=study.key, reviewer=reviewer.name, attempt=attempt,
                        instances=len(expired))
            if attempt >= self.retry.max_attempts:
                return self._failed_attempt(study, reviewer, attempt, seconds)
            Study.update(delivery_attempts=attempt).where(Study.id == study.id).execute()
        # When to look again (the report not come by then): set before the N-ACTION leaves, so that a report that
        # comes back at once (the SCP makes the case due now) is never overwritten by it.
        due = min(row.commitment_requested_at if row.commitment_requested_at is not None
                  and row.commitment_requested_at + wait > now else now for row, _ in waiting) + wait
        Study.update(next_attempt_at=due).where(Study.id == study.id).execute()
        if to_ask and not self._ask(study, reviewer, attempt, to_ask, now):
            return self._failed_attempt(study, reviewer, attempt, seconds)
        self.context.wake_at(CaseState.DELIVERING, due)
        return False

    def _ask(self, study: Study, reviewer: ReviewerConfig, attempt: int,
             to_ask: list[tuple[Delivery, OutboundObject]], now: dt.datetime) -> bool:
        """One N-ACTION about ``to_ask``; False when the reviewer did not accept it. The transaction is in the
        ledger before the N-ACTION leaves: the reviewer's report may come back (on its own association, to the
        SCP) before the N-ACTION's answer has been read here."""
        transaction_uid = generate_uid(prefix=None)
        asked_ids = [row.id for row, _ in to_ask]
        commitments.mark_asked(asked_ids, transaction_uid, now)
        try:
            request_commitment(self.node, reviewer, transaction_uid,
                               [(outbound.sop_class_uid, outbound.sop_instance_uid) for _, outbound in to_ask])
        except RequestNotAccepted as exc:
            commitments.mark_asked(asked_ids, None, None)  # not asked after all: asked at the next attempt
            log.warning("commitment_request_failed", case=study.key, reviewer=reviewer.name, attempt=attempt,
                        error=str(exc))
            return False
        log.info("commitment_requested_from_reviewer", case=study.key, reviewer=reviewer.name, instances=len(to_ask))
        audit.record("commitment_asked", actor_ae=reviewer.ae_title, actor_host=reviewer.host, study_key=study.key,
                     detail=f"{len(to_ask)} object(s) asked to reviewer {reviewer.name}")
        return True

    def _delivered(self, study: Study, reviewer: ReviewerConfig, attempt: int, seconds: float,
                   result: AttemptResult, reason: str = "all_objects_sent") -> bool:
        """The case DELIVERED, and its transfer audited once as ``sent``, in one transaction. The count is every
        object that went to the reviewer in this delivery (since the case went DELIVERING: this attempt and any
        before it that a failure, a dead node or a commitment wait cut short); a delivery that transferred nothing
        is not a transfer and writes no ``sent``."""
        started = study.state_changed_at  # the case went DELIVERING then (the move below sets it anew)
        with db.atomic():
            moved = cases.move(study, CaseState.DELIVERED, reason=reason, **STUDY_LEG.done(attempt))
            transferred = max(result.sent, sent_since(study, reviewer_peer(reviewer.name), started)) if moved else 0
            if transferred:
                audit.record("sent", actor_ae=reviewer.ae_title, actor_host=reviewer.host, study_key=study.key,
                             detail=f"{transferred} object(s) to reviewer {reviewer.name}, attempt {attempt}")
        self.context.metrics.record_delivery("delivered", seconds, retry=attempt > 1)
        return moved

    def _failed_attempt(self, study: Study, reviewer: ReviewerConfig, attempt: int, seconds: float) -> bool:
        self.context.metrics.record_delivery("failed", seconds, retry=attempt > 1)
        if attempt >= self.retry.max_attempts:
            moved = STUDY_LEG.give_up(study, attempt, "max_attempts")
            log.error("delivery_failed", case=study.key, reviewer=reviewer.name, attempt=attempt)
            audit.record("sent", actor_ae=reviewer.ae_title, actor_host=reviewer.host, study_key=study.key,
                         outcome="failed", detail=f"gave up after {attempt} attempt(s)")
            return moved
        retry_at = STUDY_LEG.retry_later(study, attempt, self.retry)
        self.context.wake_at(STUDY_LEG.retry_topic, retry_at)  # the retry runs when due, not at a later poll
        return False

    def pending_objects(self, study: Study, reviewer: ReviewerConfig) -> list[OutboundObject]:
        """The case's outbound objects not yet stored by ``reviewer`` (re-identified reports never: PHI)."""
        return unsent_objects(study, reviewer_peer(reviewer.name), OutboundObject.kind != REPORT_KIND)

    def _attempt(self, study: Study, reviewer: ReviewerConfig, resumed: bool = False) -> AttemptResult:
        pending = self.pending_objects(study, reviewer)
        if resumed:
            pending = self._recover(study, reviewer, pending)
        return send_objects(self.node, self.spool_dir, reviewer, reviewer_peer(reviewer.name),
                            pending, cases.Lease(study, self.name, self.context.owner), reason=study.notes_reason)

    def _recover(self, study: Study, reviewer: ReviewerConfig, pending: list[OutboundObject]) -> list[OutboundObject]:
        """Before resending after an interrupted attempt: the objects whose outcome the ledger never got (the
        node died before writing its batch) may be at the reviewer already. With ``query: true`` the reviewer is
        asked (``routing.query``) and what it holds is recorded as sent, not sent again (the rest it lacks: they
        go now, for the first time); otherwise they are all sent again and counted
        (``spine_gateway_delivery_resent_after_recovery_total``). Returns what to send."""
        in_doubt = in_doubt_objects(pending, reviewer_peer(reviewer.name))
        if not in_doubt:
            return pending
        held = (instances_held(self.node, reviewer, study.pseudo_study_uid)
                if reviewer.query and study.pseudo_study_uid else None)
        found = [o for o in in_doubt if held is not None and o.sop_instance_uid in held]
        if found:
            mark_found(found, reviewer_peer(reviewer.name))
        unknown = len(in_doubt) if held is None else 0  # sent again not knowing: each may arrive twice
        self.context.metrics.record_recovery(found=len(found), resent=unknown)
        log.info("delivery_recovered", case=study.key, reviewer=reviewer.name, instances=len(found), count=unknown,
                 status="queried" if held is not None else "not_queried")
        found_ids = {o.id for o in found}
        return [o for o in pending if o.id not in found_ids]


def _sending_due(now: dt.datetime) -> peewee.Expression:
    """A case to send: ASSIGNED, or DELIVERING whose retry time has come."""
    return ((Study.state == CaseState.ASSIGNED)
            | ((Study.state == CaseState.DELIVERING)
               & (Study.next_attempt_at.is_null() | (Study.next_attempt_at <= now))))


def sent_since(study: Study, destination: str, since: dt.datetime | None) -> int:
    """How many of the case's objects (reports excepted) the ledger shows stored by ``destination`` since
    ``since`` (None: ever)."""
    query = (Delivery.select().join(OutboundObject)
             .where((OutboundObject.study == study.id) & (Delivery.destination == destination)
                    & (Delivery.state == SENT) & (OutboundObject.kind != REPORT_KIND)))
    if since is not None:
        query = query.where(Delivery.sent_at >= since)
    return int(query.count())


def in_doubt_objects(pending: list[OutboundObject], destination: str) -> list[OutboundObject]:
    """Those of ``pending`` whose ledger row has no outcome at all (no status, no error): an attempt that ends,
    however it ends, writes one for every object it tried or did not reach; only a node that died mid-attempt
    leaves them blank (with those it never reached: they are in doubt too, and a query settles them)."""
    if not pending:
        return []
    blank = {outbound_id for (outbound_id,) in Delivery.select(Delivery.outbound).where(
        (Delivery.destination == destination) & (Delivery.state == PENDING) & Delivery.last_status.is_null()
        & Delivery.last_error.is_null() & Delivery.outbound.in_([o.id for o in pending])).tuples()}
    return [o for o in pending if o.id in blank]


def mark_found(found: list[OutboundObject], destination: str) -> None:
    """Record ``found`` as sent to ``destination``: the reviewer holds them (its C-FIND said so)."""
    with db.atomic():
        for start in range(0, len(found), 200):
            Delivery.update({Delivery.state: SENT, Delivery.sent_at: utcnow(), Delivery.last_error: "found at peer"}
                            ).where((Delivery.destination == destination)
                                    & Delivery.outbound.in_([o.id for o in found[start:start + 200]])).execute()


def retry_case(study: Study) -> str | None:
    """Operator's ``retry``, on the leg that failed: the study leg (FAILED → DELIVERING) or the report leg
    (REPORT_FAILED → REPORTED), with that leg's attempts reset. Returns the leg retried, None when the case
    is in neither failure state (or changed state meanwhile)."""
    if study.state == CaseState.FAILED:
        moved = cases.move(study, CaseState.DELIVERING, reason="operator_retry", **STUDY_LEG.reset())
        return STUDY_LEG.name if moved else None
    if study.state == CaseState.REPORT_FAILED:
        moved = cases.move(study, CaseState.REPORTED, reason="operator_retry", **REPORT_LEG.reset())
        return REPORT_LEG.name if moved else None
    return None
