"""The priors stage: a de-identified case whose source has a Query/Retrieve PACS (``sources[].query_retrieve``) gets
the patient's earlier studies that the ``priors`` rules select, before the notes stage lists them.

Each step is a state of the case's ``PriorFetch`` row, committed before the next begins, so that a node killed at
any point resumes where it was:

1. QUERYING: C-FIND (Study Root, STUDY level) by the patient's original Patient ID, then the SERIES level of the
   candidates for their body parts; the choice is recorded (``PriorStudy``) and the row goes to RETRIEVING (or DONE
   when nothing matched);
2. RETRIEVING: one C-GET per chosen prior; every instance is whole and fsynced in the spool before the PACS is
   answered, and its row (a stored ``Instance`` of the case) committed with its batch
   (``gateway.routing.priors.PriorInstanceStore``), all of them before the prior is marked retrieved (a prior not
   marked is retrieved again after a crash: the PACS still holds it); then DEIDENTIFYING;
3. DEIDENTIFYING: the de-identification stage takes the stored instances as late instances of the case (same
   patient pseudonym and date shift); once none is left, DONE.

A failure (no association, a failure status, a PACS gone quiet) is tried again after a short back-off until
``priors.wait_s`` from the start has passed; then the row is UNAVAILABLE and the case goes on without the priors
(its notes say so). The notes stage waits for a finished row (``gateway.routing.priors.notes_wait_for_priors``).
The stage's lease is on the fetch row, not on the case: the de-identification stage works on the case meanwhile.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence

import structlog

from gateway.backoff import Backoff
from gateway.config import DicomPeer, GatewayConfig, NodeConfig, PriorsConfig, SourceConfig
from gateway.dicom.qr import QueryRetrieveFailed, find_series, find_studies, get_study
from gateway.ops import audit
from gateway.routing import priors
from gateway.stages.context import NodeContext, WithNodeContext
from gateway.storage import wakeup
from gateway.storage.models import PriorFetch, PriorFetchState, PriorStudy, Study, StudyIdentity, utcnow
from gateway.storage.spool import Spool

log = structlog.get_logger("priors")
RETRY = Backoff(1.0, 30.0)
STAGE = "priors"
WORKING = priors.WORKING


class PriorsStage(WithNodeContext):
    """Priors for the de-identified cases of sources with a PACS to ask."""

    name = STAGE

    def __init__(self, node: NodeConfig, rules: PriorsConfig, sources: Sequence[SourceConfig], spool: Spool, *,
                 context: NodeContext | None = None) -> None:
        self.node = node  # the node's AE title and timeouts, as the SCU that asks the PACS
        self.rules = rules
        self.spool = spool
        self.peers: dict[str, DicomPeer] = {s.name: s.query_retrieve for s in sources if s.query_retrieve is not None}
        self._context = context

    @classmethod
    def of(cls, config: GatewayConfig, spool: Spool, *, context: NodeContext | None = None) -> PriorsStage:
        """The stage from the whole configuration: the sections it uses (``node``, ``priors``, ``sources``)."""
        return cls(config.node, config.priors, config.sources, spool, context=context)

    def run_once(self, now: dt.datetime) -> int:
        """Begin the new cases' fetching, then take each unfinished fetch one step on (one broken case is logged and
        retried later; the others go on)."""
        if not self.peers:
            return 0
        moved = 0
        for study in priors.due_to_begin(self.peers):
            source = getattr(study.source, "name", "")
            if priors.begin(study, source, self.rules.wait_s) is not None:
                log.info("priors_started", case=study.key, source=source)
                moved += 1
        due = PriorFetch.select().where(PriorFetch.state.in_(list(WORKING)) & (PriorFetch.next_attempt_at <= utcnow()))
        for fetch in list(due.order_by(PriorFetch.started_at)):
            holder = self.context.owner.owner(STAGE)
            if not priors.claim(fetch, holder, self.context.lease):
                continue
            try:
                moved += self._steps(fetch)
            except Exception as exc:  # noqa: BLE001 - one broken case must not stop the others
                self._failed(fetch, type(exc).__name__)
            finally:
                priors.release(fetch, holder)
        return moved

    def _steps(self, fetch: PriorFetch) -> int:
        """The fetch's steps one after the other (query, retrieve, ...), each committed, until one has to wait (a
        retry, the de-identification) or the fetch is finished: no poll interval between them."""
        moved = 0
        while fetch.state in WORKING:
            state = fetch.state
            if not self._step(fetch) or fetch.state == state:
                break
            moved += 1
        return moved

    def _step(self, fetch: PriorFetch) -> int:
        study = Study.get_by_id(fetch.study_id)
        if utcnow() >= fetch.deadline_at:
            return self._out_of_time(fetch, study)
        if fetch.state == PriorFetchState.QUERYING:
            return self._query(fetch, study)
        if fetch.state == PriorFetchState.RETRIEVING:
            return self._retrieve(fetch, study)
        if priors.stored_instances_left(study.id):
            self.context.wake_at(wakeup.PRIORS, utcnow() + dt.timedelta(seconds=1))
            return 0
        return self._finish(fetch, study, PriorFetchState.DONE)

    def _remaining_s(self, fetch: PriorFetch) -> float:
        return max((fetch.deadline_at - utcnow()).total_seconds(), 0.0)

    def _query(self, fetch: PriorFetch, study: Study) -> int:
        peer = self.peers.get(fetch.source)
        identity = StudyIdentity.get_or_none(StudyIdentity.study == study.id)
        if peer is None or identity is None or not identity.patient_id:
            # no PACS any more (a configuration change), or nothing to ask by: the case goes on without priors
            return self._finish(fetch, study, PriorFetchState.UNAVAILABLE, "nothing to ask by")
        started = time.perf_counter()
        try:
            found = find_studies(self.node, peer, identity.patient_id, self._remaining_s(fetch))
            chosen = priors.choose(found, current_uid=study.study_uid, current_date=identity.study_date,
                                   rules=self.rules, series_of=lambda uid: find_series(
                                       self.node, peer, uid, self._remaining_s(fetch)))
        except QueryRetrieveFailed as exc:
            self._audit("priors_queried", peer, study, "failed", exc.reason)
            return self._retry(fetch, study, exc.reason)
        priors.record_choice(fetch, chosen)
        log.info("priors_queried", case=study.key, source=fetch.source, count=len(chosen), instances=len(found),
                 duration_ms=int((time.perf_counter() - started) * 1000))
        self._audit("priors_queried", peer, study, "success",
                    f"{len(found)} studies of the patient found, {len(chosen)} chosen as priors")
        if not chosen:
            return self._finish(fetch, study, PriorFetchState.DONE)
        return 1

    def _retrieve(self, fetch: PriorFetch, study: Study) -> int:
        peer = self.peers.get(fetch.source)
        if peer is None:
            return self._finish(fetch, study, PriorFetchState.UNAVAILABLE, "no PACS configured any more")
        holder = self.context.owner.owner(STAGE)
        pending = list(PriorStudy.select().where((PriorStudy.fetch == fetch.id) & (PriorStudy.state == "pending"))
                       .order_by(PriorStudy.study_date.desc()))
        for prior in pending:
            started = time.perf_counter()
            store = priors.PriorInstanceStore(self.spool, prior, peer.ae_title,
                                              lambda: priors.claim(fetch, holder, self.context.lease))
            try:
                result = get_study(self.node, peer, prior.study_uid, store, self._remaining_s(fetch))
            except QueryRetrieveFailed as exc:
                store.flush()
                self._audit("priors_retrieved", peer, study, "failed", exc.reason)
                self.context.notify(wakeup.PRIORS)  # what did arrive is de-identified meanwhile
                return self._retry(fetch, study, exc.reason)
            store.flush()  # every instance's row committed before the prior counts as retrieved
            PriorStudy.update(state="retrieved" if result.stored else "failed", retrieved_at=utcnow()).where(
                PriorStudy.id == prior.id).execute()
            log.info("prior_retrieved", case=study.key, source=fetch.source, instances=result.stored,
                     count=result.failed, duration_ms=int((time.perf_counter() - started) * 1000))
            self._audit("priors_retrieved", peer, study, "success" if result.stored else "failed",
                        f"{result.stored} instance(s) of a prior stored, {result.failed} failed at the PACS")
        priors.set_state(fetch, PriorFetchState.DEIDENTIFYING)
        self.context.notify(wakeup.PRIORS)  # the de-identification stage takes the instances now
        return 1

    def _retry(self, fetch: PriorFetch, study: Study, reason: str) -> int:
        attempt = fetch.attempts + 1
        retry_at = utcnow() + dt.timedelta(seconds=RETRY.wait_s(attempt))
        if retry_at >= fetch.deadline_at:
            retry_at = fetch.deadline_at
        PriorFetch.update(attempts=attempt, next_attempt_at=retry_at, reason=reason[:255]).where(
            PriorFetch.id == fetch.id).execute()
        log.warning("priors_attempt_failed", case=study.key, source=fetch.source, attempt=attempt,
                    error=reason, state=fetch.state)
        self.context.wake_at(wakeup.PRIORS, retry_at)
        return 0

    def _failed(self, fetch: PriorFetch, error: str) -> None:
        """A step raised (not a PACS failure: a bug, the spool, the database): logged, tried again later."""
        log.error("case_step_failed", component=STAGE, state=fetch.state, error=error, attempt=fetch.attempts + 1)
        study = Study.get_or_none(Study.id == fetch.study_id)
        if study is not None:
            self._retry(fetch, study, f"{STAGE}:{error}")

    def _out_of_time(self, fetch: PriorFetch, study: Study) -> int:
        if fetch.state == PriorFetchState.DEIDENTIFYING:
            # everything arrived; what the de-identification has not taken yet still joins the case late
            return self._finish(fetch, study, PriorFetchState.DONE)
        reason = fetch.reason or "no answer"
        log.warning("priors_unavailable", case=study.key, source=fetch.source, reason=reason, attempt=fetch.attempts)
        return self._finish(fetch, study, PriorFetchState.UNAVAILABLE, f"not within {self.rules.wait_s:g} s: {reason}")

    def _finish(self, fetch: PriorFetch, study: Study, state: str, reason: str | None = None) -> int:
        fields = {"reason": reason[:255]} if reason else {}
        if not priors.set_state(fetch, state, **fields):
            return 0
        retrieved = PriorStudy.select().where((PriorStudy.fetch == fetch.id)
                                              & (PriorStudy.state == "retrieved")).count()
        log.info("priors_finished", case=study.key, source=fetch.source, status=state, count=retrieved,
                 duration_ms=int((utcnow() - fetch.started_at).total_seconds() * 1000))
        self.context.notify(wakeup.PRIORS)  # the notes stage may take the case now
        return 1

    def _audit(self, action: str, peer: DicomPeer, study: Study, outcome: str, detail: str) -> None:
        audit.record(action, actor_ae=peer.ae_title, actor_host=peer.host, study_key=study.key, outcome=outcome,
                     detail=detail)
