"""Delivery: every de-identified object of a case to its reviewer, once, over one association per attempt.

ASSIGNED → DELIVERING → DELIVERED, or FAILED after ``routing.retry.max_attempts``. The per-object ledger
(``Delivery``, destination ``reviewer:<name>``) is updated after each C-STORE response, so a retry, a
restart after ``kill -9`` or an object added later (a late instance de-identified after the case left)
sends only what is missing: a DELIVERED case with an unsent object goes back to DELIVERING.

Transfer syntaxes: each (SOP class, stored syntax) pair is proposed with the stored syntax first and
Explicit VR Little Endian second. When the reviewer accepts the stored syntax the file's bytes go out
undecoded (``STORE_SEND_CHUNKED_DATASET``); otherwise the dataset is decoded (pylibjpeg) and sent as
Explicit VR Little Endian.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import peewee
import pydicom
import structlog
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.association import Association

from gateway import cases, wakeup
from gateway.config import DicomPeer, GatewayConfig, RetryConfig, ReviewerConfig
from gateway.dicomnet import NODELAY_HANDLER
from gateway.models import CaseState, Delivery, OutboundObject, Study, utcnow
from gateway.ops import audit, metrics
from gateway.routing.assign import reviewer_peer
from gateway.routing.errors import RoutingError

log = structlog.get_logger("routing.deliver")

SENT, PENDING, FAILED = "sent", "pending", "failed"
REPORT_KIND = "report"  # a re-identified report (gateway.reports): goes to the source only, never to a reviewer
# C-STORE statuses that mean stored: success and the warnings (coercion, elements discarded, mismatch).
STORED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})
MAX_CONTEXTS = 128  # PS3.8: at most 128 presentation contexts per association


class UnknownReviewer(RoutingError):
    """A case names a reviewer that is no longer in the configuration."""


def backoff_s(retry: RetryConfig, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): exponential, capped, with jitter.

    The wait is drawn uniformly from the upper half of ``min(max_s, initial_s * 2**(attempt-1))``, so that
    cases failing together do not retry together.
    """
    ceiling = min(retry.max_s, retry.initial_s * (2 ** max(attempt - 1, 0)))
    return (rng or random).uniform(ceiling / 2, ceiling)


@dataclass
class AttemptResult:
    """What one delivery attempt did."""

    status: str          # delivered, partial, no_association, aborted
    sent: int = 0
    remaining: int = 0


class DeliveryStage:
    """Sends due cases (ASSIGNED, DELIVERING whose retry time has come, DELIVERED with unsent objects)."""

    name = "delivery"

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.reviewers = {r.name: r for r in config.reviewers}
        self.spool_dir = Path(config.storage.spool_dir)
        self.retry = config.routing.retry
        # Send stored files as they are, without decoding them (only when the syntax is accepted as stored).
        _config.STORE_SEND_CHUNKED_DATASET = True

    def due(self, now: dt.datetime) -> list[Study]:
        ready = (Study.select().where(
            (Study.state == CaseState.ASSIGNED)
            | ((Study.state == CaseState.DELIVERING)
               & (Study.next_attempt_at.is_null() | (Study.next_attempt_at <= now))))
            .order_by(Study.urgency.desc(), Study.state_changed_at))
        return [*ready, *self._delivered_with_missing()]

    @staticmethod
    def _delivered_with_missing() -> list[Study]:
        sent = Delivery.select(Delivery.outbound).where(
            (Delivery.state == SENT) & Delivery.destination.startswith("reviewer:"))
        ids = (OutboundObject.select(OutboundObject.study).join(Study)
               .where((Study.state == CaseState.DELIVERED) & OutboundObject.id.not_in(sent)
                      & (OutboundObject.kind != REPORT_KIND)).distinct())
        return list(Study.select().where(Study.id.in_(ids)))

    def run_once(self, now: dt.datetime) -> int:
        moved = 0
        for study in self.due(now):
            with cases.claimed(study, CaseState.ASSIGNED, CaseState.DELIVERING, CaseState.DELIVERED,
                               stage=self.name) as mine:
                moved += mine and self.deliver(study)
        return moved

    def deliver(self, study: Study) -> bool:
        """One attempt for ``study``; True when the case changed state."""
        reviewer = self.reviewers.get(study.reviewer or "")
        if reviewer is None:
            log.error("delivery_no_reviewer", case=study.key, reviewer=study.reviewer)
            return False
        if study.state in (CaseState.ASSIGNED, CaseState.DELIVERED):
            if not cases.move(study, CaseState.DELIVERING, reason="deliver"):
                return False
        attempt = study.delivery_attempts + 1
        started = time.perf_counter()
        result = self._attempt(study, reviewer)
        seconds = time.perf_counter() - started
        log.info("delivery_attempt", case=study.key, reviewer=reviewer.name, attempt=attempt, status=result.status,
                 duration_ms=int(seconds * 1000), instances=result.sent)
        if result.status == "delivered":
            return self._delivered(study, reviewer, attempt, seconds, result)
        return self._failed_attempt(study, reviewer, attempt, seconds)

    def _delivered(self, study: Study, reviewer: ReviewerConfig, attempt: int, seconds: float,
                   result: AttemptResult) -> bool:
        moved = cases.move(study, CaseState.DELIVERED, reason="all_objects_sent", delivery_attempts=0,
                           next_attempt_at=None)
        metrics.record_delivery("delivered", seconds, retry=attempt > 1)
        audit.record("sent", actor_ae=reviewer.ae_title, actor_host=reviewer.host, study_key=study.key,
                     detail=f"{result.sent} object(s) to reviewer {reviewer.name}, attempt {attempt}")
        return moved

    def _failed_attempt(self, study: Study, reviewer: ReviewerConfig, attempt: int, seconds: float) -> bool:
        metrics.record_delivery("failed", seconds, retry=attempt > 1)
        if attempt >= self.retry.max_attempts:
            moved = cases.move(study, CaseState.FAILED, reason="max_attempts", delivery_attempts=attempt,
                               next_attempt_at=None)
            log.error("delivery_failed", case=study.key, reviewer=reviewer.name, attempt=attempt)
            audit.record("sent", actor_ae=reviewer.ae_title, actor_host=reviewer.host, study_key=study.key,
                         outcome="failed", detail=f"gave up after {attempt} attempt(s)")
            return moved
        next_at = utcnow() + dt.timedelta(seconds=backoff_s(self.retry, attempt))
        Study.update(delivery_attempts=attempt, next_attempt_at=next_at).where(Study.id == study.id).execute()
        study.delivery_attempts, study.next_attempt_at = attempt, next_at
        wakeup.wake_at(CaseState.DELIVERING, next_at)  # the retry runs when due, not at a later poll
        return False

    # -- one association ---------------------------------------------------------------------------------

    def pending_objects(self, study: Study, reviewer: ReviewerConfig) -> list[OutboundObject]:
        """The case's outbound objects not yet stored by ``reviewer`` (re-identified reports never: PHI)."""
        return unsent_objects(study, reviewer_peer(reviewer.name), OutboundObject.kind != REPORT_KIND)

    def _attempt(self, study: Study, reviewer: ReviewerConfig) -> AttemptResult:
        return self.send(reviewer, reviewer_peer(reviewer.name), self.pending_objects(study, reviewer),
                         cases.Lease(study, self.name))

    def send(self, peer: ReviewerConfig | DicomPeer, destination: str,
             pending: Sequence[OutboundObject], lease: cases.Lease | None = None) -> AttemptResult:
        """C-STORE ``pending`` to ``peer`` over one association, recording each response in the ledger rows
        (``Delivery``, which must exist) of ``destination`` (``reviewer:<name>`` or ``source:<name>``)."""
        if not pending:
            return AttemptResult("delivered")
        assoc = self._associate(peer, pending)
        if not assoc.is_established:
            return AttemptResult("no_association", remaining=len(pending))
        sent = 0
        try:
            for outbound in pending:
                if not assoc.is_established:
                    break
                if lease is not None and not lease.keep():
                    break  # our lease on the case was lost: another node carries on, never both
                if self._store(assoc, outbound, destination):
                    sent += 1
        finally:
            if assoc.is_established:
                assoc.release()
        remaining = len(pending) - sent
        if remaining == 0:
            return AttemptResult("delivered", sent=sent)
        return AttemptResult("partial" if sent else "aborted", sent=sent, remaining=remaining)

    def _associate(self, reviewer: ReviewerConfig | DicomPeer, objects: Sequence[OutboundObject]) -> Association:
        node = self.config.node
        ae = AE(ae_title=node.ae_title)
        ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = (node.acse_timeout_s, node.dimse_timeout_s,
                                                                 node.network_timeout_s)
        ae.connection_timeout = node.acse_timeout_s
        ae.maximum_pdu_size = node.max_pdu_bytes
        for sop_class, syntaxes in _contexts(objects).items():
            ae.add_requested_context(sop_class, syntaxes)
        return ae.associate(reviewer.host, reviewer.port, ae_title=reviewer.ae_title,
                            evt_handlers=[NODELAY_HANDLER])

    def _store(self, assoc: Association, outbound: OutboundObject, destination: str) -> bool:
        path = self.spool_dir / outbound.spool_path
        accepted = _accepted_syntaxes(assoc, outbound.sop_class_uid)
        status: int | None = None
        error = ""
        try:
            payload = path if outbound.transfer_syntax in accepted else transcode(path)
            rsp = assoc.send_c_store(payload)
            status = getattr(rsp, "Status", None)
        except (OSError, ValueError, RuntimeError, AttributeError, NotImplementedError) as exc:
            error = type(exc).__name__
        ok = status in STORED_STATUSES
        _update_ledger(outbound, destination, ok, status, error or _status_text(status))
        return ok


def unsent_objects(study: Study, destination: str, which: peewee.Expression) -> list[OutboundObject]:
    """The case's outbound objects matching ``which`` that the ledger does not show as sent to
    ``destination``, in creation order; their ledger rows are created as needed."""
    objects = list(OutboundObject.select().where((OutboundObject.study == study) & which)
                   .order_by(OutboundObject.id))
    sent = {outbound_id for (outbound_id,) in Delivery.select(Delivery.outbound).where(
        (Delivery.destination == destination) & (Delivery.state == SENT)
        & Delivery.outbound.in_([o.id for o in objects])).tuples()} if objects else set()
    pending = [o for o in objects if o.id not in sent]
    for outbound in pending:
        Delivery.get_or_create(outbound=outbound, destination=destination)
    return pending


def _contexts(objects: Sequence[OutboundObject]) -> dict[str, list[str]]:
    """SOP class → transfer syntaxes to propose (stored ones first, Explicit VR Little Endian as fallback)."""
    contexts: dict[str, list[str]] = {}
    for outbound in objects:
        syntaxes = contexts.setdefault(outbound.sop_class_uid, [])
        if outbound.transfer_syntax not in syntaxes:
            syntaxes.append(outbound.transfer_syntax)
    for syntaxes in contexts.values():
        if ExplicitVRLittleEndian not in syntaxes:
            syntaxes.append(ExplicitVRLittleEndian)
    if len(contexts) > MAX_CONTEXTS:
        raise RoutingError(f"a case needs {len(contexts)} presentation contexts; at most {MAX_CONTEXTS} fit")
    return contexts


def _accepted_syntaxes(assoc: Association, sop_class: str) -> set[str]:
    return {str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts if cx.abstract_syntax == sop_class}


def transcode(path: Path) -> Dataset:
    """The file's dataset with its pixel data decompressed, to be sent as Explicit VR Little Endian."""
    ds = pydicom.dcmread(path)
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    if syntax.is_compressed:
        # pylibjpeg / pydicom decoders; the syntax becomes Explicit VR Little Endian. The SOP Instance UID stays:
        # a change of transfer syntax is not a new instance, and the ledger knows the object by it.
        ds.decompress(generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _status_text(status: int | None) -> str:
    return "no response" if status is None else f"0x{status:04X}"


def _update_ledger(outbound: OutboundObject, destination: str, ok: bool, status: int | None, detail: str) -> None:
    values = {Delivery.attempts: Delivery.attempts + 1, Delivery.last_status: status,
              Delivery.state: SENT if ok else FAILED, Delivery.last_error: None if ok else detail[:255]}
    if ok:
        values[Delivery.sent_at] = utcnow()
    Delivery.update(values).where((Delivery.outbound == outbound) & (Delivery.destination == destination)).execute()


def retry_case(study: Study) -> bool:
    """Operator's ``retry``: a FAILED case goes back to DELIVERING with its attempts reset."""
    if study.state != CaseState.FAILED:
        return False
    return cases.move(study, CaseState.DELIVERING, reason="operator_retry", delivery_attempts=0,
                      next_attempt_at=None)
