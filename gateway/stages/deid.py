"""The de-identification stage: COMPLETE cases become DEIDENTIFIED, with every object ready to leave.

For each case it reads the originals from the spool (pixel data is read as bytes and never decoded), applies
the Annex E profile, runs the outbound guard against the instance's own identifiers, writes the result under
``spool/outbound/<case key>/`` and records the mapping (``StudyIdentity``, ``UidMap``) in the database, which
is the only place it lives. The CPU work runs in worker processes (``gateway.deid.work``); this thread keeps
the file writes and the database.

Work is not left for the end: instances of a study still receiving are de-identified once the study pauses
(early, during the stability wait; not while its instances stream in, when the workers would slow the
receiving threads), so that little remains when the study completes; and instances that arrive after their case moved
on are de-identified on their own and join the outbound set (late; the delivery ledger sends what is missing).

Contract: reads ``Study.state`` (``receiving`` and later) and ``Instance.state == stored``; leaves the case
``deidentified`` (or ``quarantined`` with a reason), ``OutboundObject(kind="image")`` rows and their files.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import structlog
from peewee import fn

from gateway.budget import OVER_BUDGET
from gateway.deid.engine import Deidentifier, DeidMapping
from gateway.deid.errors import TimeBudgetExceeded
from gateway.deid.guard import find_leaks_in_values
from gateway.deid.options import DeidOptions
from gateway.deid.work import LARGE_OBJECT_BYTES, DeidWork, WorkPool, deid_pool, deidentify_file
from gateway.ops import audit
from gateway.privacy.identifiers import IdentifierSet, identifier_set_for_study, merge_header_values
from gateway.stages.context import NodeContext, WithNodeContext
from gateway.stages.pipeline import run_case_stage
from gateway.storage import cases
from gateway.storage.models import (
    CaseState,
    Delivery,
    Instance,
    InstanceState,
    OutboundObject,
    Study,
    StudyIdentity,
    UidMap,
    db,
    utcnow,
)
from gateway.storage.spool import Spool

log = structlog.get_logger("deid")
BATCH = 5
CHUNK = 32  # instances handed to the workers at a time, recorded in one transaction
# Instances of a study still arriving (and late ones) are de-identified at most this often: each run claims
# the case and writes in the database and the spool, which at every poll (``routing.poll_s``) would take a
# receiving node's write lock and disk many times a second for a handful of instances each time.
OUTSIDE_COMPLETION_PERIOD_S = 1.0
# Early de-identification waits for the study to pause: while its instances are still streaming in, the
# workers would take the cores from the receiving threads and slow the acknowledgements (bench/e2e.py). With
# the shipped stability wait (60 s) the pause leaves ample time; a study that trickles in without pausing is
# taken anyway once its oldest waiting instance is this old.
EARLY_AFTER_QUIET_S = 2.0
EARLY_AT_THE_LATEST_S = 30.0
# At most this much image text is recorded per case (``StudyIdentity.image_text``); beyond it (a private element
# holding a distinct blob in every image, say) the notes stage's final check reads the image files back instead.
IMAGE_TEXT_MAX_CHARS = 4_000_000
# States in which a case has already been de-identified: an instance arriving now is a late one.
_PAST_DEID = (CaseState.DEIDENTIFIED, CaseState.NOTES_ATTACHED, CaseState.ASSIGNED, CaseState.DELIVERING,
              CaseState.DELIVERED, CaseState.FAILED, CaseState.HELD)


@dataclass
class Outcome:
    done: int = 0
    quarantined: int = 0
    leak_paths: tuple[str, ...] = ()
    lease_lost: bool = False


class DeidStage(WithNodeContext):
    """COMPLETE → DEIDENTIFIED (or QUARANTINED); early and late instances on the side."""

    name = "deid"

    def __init__(self, options: DeidOptions, secret: bytes, spool: Spool, pool: WorkPool | None = None,
                 case_identifiers: Callable[[Study], IdentifierSet] | None = None,
                 time_budget_s: float | None = None, *, context: NodeContext | None = None) -> None:
        self._context = context
        self.deidentifier = Deidentifier(options, secret)
        self.options = options
        self.spool = spool
        self.pool = pool or deid_pool(options, secret, workers=0)
        # Everything the node holds for a case (the node passes the notes stage's, with the matched referral):
        # late instances are checked against it, as the notes stage checks the others.
        self.case_identifiers = case_identifiers or self._header_identifiers
        self._outside_completion_due = 0.0
        self.time_budget_s = time_budget_s  # per batch of CHUNK instances, in the workers (None: no budget)

    def _header_identifiers(self, study: Study) -> IdentifierSet:
        return identifier_set_for_study(study, None, include_uids=not self.options.retain_uids,
                                        include_institution=not self.options.retain_institution_id)

    claim_states = (CaseState.COMPLETE, CaseState.RECEIVING, *_PAST_DEID)

    def run_once(self, now: dt.datetime) -> int:
        return run_case_stage(self, now, owner=self.context.owner)

    def due(self, now: dt.datetime) -> list[Study]:
        """COMPLETE cases, urgent then oldest, and (at most once a second) cases with early or late instances."""
        ready = list(Study.select().where(Study.state == CaseState.COMPLETE)
                     .order_by(Study.urgency.desc(), Study.state_changed_at).limit(BATCH))
        if time.monotonic() >= self._outside_completion_due:
            self._outside_completion_due = time.monotonic() + OUTSIDE_COMPLETION_PERIOD_S
            ready += self._outside_completion(now)
        return ready

    def step(self, study: Study, now: dt.datetime) -> bool:
        if study.state == CaseState.COMPLETE:
            return self.deidentify_case(study)
        self._early_or_late(study)
        return False

    @staticmethod
    def give_up(study: Study) -> str | None:
        """A COMPLETE case that keeps failing is quarantined; early and late instances only back off."""
        return CaseState.QUARANTINED if study.state == CaseState.COMPLETE else None

    def deidentify_case(self, study: Study) -> bool:
        started = time.perf_counter()
        try:
            outcome = self._process(study, self._latest_stored(study))
        except TimeBudgetExceeded as exc:
            return self._over_budget(study, str(exc))
        if outcome.lease_lost:
            return False  # another node carries on
        if outcome.leak_paths:
            return self._quarantine_case(study, outcome.leak_paths)
        has_images = OutboundObject.select().where((OutboundObject.study == study)
                                                   & (OutboundObject.kind == "image")).exists()
        if not has_images:
            return cases.move(study, CaseState.QUARANTINED, reason="nothing_to_send")
        images = OutboundObject.select().where((OutboundObject.study == study)
                                               & (OutboundObject.kind == "image")).count()
        log.info("case_deidentified", case=study.key, instances=images, count=outcome.quarantined,
                 duration_ms=int((time.perf_counter() - started) * 1000))
        audit.record("deidentified", actor_ae=None, actor_host=None, study_key=study.key,
                     detail=f"{images} instance(s), {outcome.quarantined} quarantined")
        pseudo_study_uid = study.study_uid if self.options.retain_uids else \
            self.deidentifier.uid_pseudonym(study.study_uid)
        return cases.move(study, CaseState.DEIDENTIFIED, reason="deidentified", pseudo_study_uid=pseudo_study_uid)

    @staticmethod
    def _outside_completion(now: dt.datetime | None = None) -> list[Study]:
        """Cases with stored instances not yet de-identified: late ones at once; early ones (the study still
        receiving) once the study has paused for ``EARLY_AFTER_QUIET_S``, or when its oldest waiting instance
        is ``EARLY_AT_THE_LATEST_S`` old (a study trickling in)."""
        now = now or utcnow()
        oldest_waiting = (Instance.select(fn.MIN(Instance.received_at))
                          .where((Instance.study == Study.id) & (Instance.state == InstanceState.STORED)))
        early = ((Study.state == CaseState.RECEIVING)
                 & ((Study.last_received_at <= now - dt.timedelta(seconds=EARLY_AFTER_QUIET_S))
                    | (oldest_waiting <= now - dt.timedelta(seconds=EARLY_AT_THE_LATEST_S))))
        return list(Study.select().join(Instance)
                    .where((Instance.state == InstanceState.STORED)
                           & (Study.state.in_(list(_PAST_DEID)) | early)).distinct())

    def _early_or_late(self, study: Study) -> int:
        late = study.state != CaseState.RECEIVING
        outcome = self._process(study, self._latest_stored(study), stop_on_leak=not late)
        if outcome.leak_paths and late:
            log.error("outbound_leak", case=study.key, path=", ".join(outcome.leak_paths), reason="identifier_found")
        if late and outcome.done:
            log.info("late_instances_deidentified", case=study.key, state=study.state, instances=outcome.done)
        return outcome.done

    def _process(self, study: Study, instances: list[Instance], stop_on_leak: bool = True) -> Outcome:
        """De-identify ``instances`` chunk by chunk. With ``stop_on_leak`` a guard hit stops at once and leaves
        the rest stored (the case is then quarantined by the caller, or at completion); otherwise (late
        instances) the leaking instance alone is quarantined, and each instance's text is also checked against
        everything the node holds for the case (``case_identifiers``), as the notes stage's final check does
        for the instances it saw."""
        outcome = Outcome()
        case_set: list[IdentifierSet] = []  # the case's identifiers, looked up once, at the first late instance
        source = study.source.name if study.source_id else study.calling_ae
        lease = cases.Lease(study, self.name, self.context.owner)
        for chunk in _chunks(instances, CHUNK):
            if not lease.keep():
                outcome.lease_lost = True
                return outcome
            started = time.perf_counter()
            paths = [str(self.spool.absolute(i.spool_path)) for i in chunk]
            works = self.pool.run(deidentify_file, paths, repeat(source), repeat(study.key),
                                  repeat(str(self.spool.tmp)), timeout_s=self.time_budget_s)
            ready: list[tuple[Instance, DeidWork]] = []
            for instance, work in zip(chunk, works):
                if work.quarantine_reason:
                    self._quarantine_instance(study, instance, work.quarantine_reason)
                    outcome.quarantined += 1
                elif work.leak_paths:
                    if stop_on_leak:
                        outcome.leak_paths = tuple(work.leak_paths)
                        _discard_unplaced(works, ready)
                        self._record(study, self._write(study, ready))
                        return outcome
                    self._quarantine_instance(study, instance, "identifier_leak")
                    outcome.quarantined += 1
                elif not stop_on_leak and self._late_leak(study, work, case_set):
                    self._quarantine_instance(study, instance, "identifier_leak")
                    outcome.quarantined += 1
                else:
                    ready.append((instance, work))
            _discard_unplaced(works, ready)
            written = self._write(study, ready)
            self._record(study, written)
            outcome.done += len(written)
            if written:
                self.context.metrics.observe_deidentification(time.perf_counter() - started, len(written))
        return outcome

    def _late_leak(self, study: Study, work: DeidWork, case_set: list[IdentifierSet]) -> bool:
        """Whether a late instance's text holds one of the case's identifiers (or could not be taken)."""
        if work.text_values is None:
            leaks = ["EncapsulatedDocument/pdf-text"]  # an unreadable PDF: what cannot be checked does not leave
        else:
            if not case_set:
                case_set.append(self.case_identifiers(study))
            leaks = [leak.path for leak in find_leaks_in_values(work.text_values, case_set[0])]
        if leaks:
            log.error("outbound_leak", case=study.key, path=f"image:{leaks[0]}", reason="identifier_found")
        return bool(leaks)

    def _write(self, study: Study, ready: list[tuple[Instance, DeidWork]]) -> list[tuple[Instance, DeidWork, str]]:
        """Write a chunk's de-identified objects to the case's outbound folder, all durable on return."""
        objects = [(f"{work.sop_instance_uid}.dcm", Path(work.data_path) if work.data_path else work.data)
                   for _, work in ready]
        paths = self.spool.write_outbound_batch(study.key, objects)
        return [(instance, work, self.spool.relative(path)) for (instance, work), path in zip(ready, paths)]

    def _record(self, study: Study, written: list[tuple[Instance, DeidWork, str]]) -> None:
        if not written:
            return
        with db.atomic():
            self._record_identity(study, [work for _, work, _ in written])
            for instance, work, relative in written:
                self._record_uids(study, work.mapping)
                self._record_outbound(study, instance, work, relative)
            Instance.update(state=InstanceState.DEIDENTIFIED).where(
                Instance.id.in_([instance.id for instance, _, _ in written])).execute()

    def _latest_stored(self, study: Study) -> list[Instance]:
        """The newest version of each SOP instance; older versions are marked superseded.

        An instance whose file is not in the spool yet is left for a later run: the receiver commits the row
        while the file is still being made durable (``scp.receiver.InstanceReceiver``).
        """
        latest: dict[str, Instance] = {}
        stored = [instance for instance in
                  study.instances.where(Instance.state == InstanceState.STORED)  # type: ignore[attr-defined]  # peewee backref.order_by(Instance.version)
                  if self.spool.absolute(instance.spool_path).exists()]
        for instance in stored:
            previous = latest.get(instance.sop_instance_uid)
            if previous is not None:
                Instance.update(state=InstanceState.SUPERSEDED).where(Instance.id == previous.id).execute()
            latest[instance.sop_instance_uid] = instance
        return list(latest.values())

    @staticmethod
    def _quarantine_case(study: Study, leak_paths: tuple[str, ...]) -> bool:
        where = ", ".join(leak_paths)
        log.error("outbound_leak", case=study.key, path=where, reason="identifier_found")
        audit.record("quarantined", actor_ae=None, actor_host=None, study_key=study.key, outcome="refused",
                     detail=f"identifier found at {where}")
        # The first hit (attribute path and identifier kind, never the value) is the case's reason, whole.
        return cases.move(study, CaseState.QUARANTINED, reason=f"identifier_leak image:{leak_paths[0]}")

    @staticmethod
    def _over_budget(study: Study, reason: str) -> bool:
        """QUARANTINED at once (the same instances would take as long again); what was written stays."""
        log.error("case_over_budget", component="deid", case=study.key, reason=OVER_BUDGET)
        moved = cases.move(study, CaseState.QUARANTINED, reason=reason)
        if moved:
            audit.record("quarantined", actor_ae=None, actor_host=None, study_key=study.key, outcome="refused",
                         detail=reason)
        return moved

    @staticmethod
    def _quarantine_instance(study: Study, instance: Instance, reason: str) -> None:
        Instance.update(state=InstanceState.QUARANTINED).where(Instance.id == instance.id).execute()
        log.warning("instance_quarantined", case=study.key, reason=reason, sop_class=instance.sop_class_uid)
        audit.record("instance_quarantined", actor_ae=None, actor_host=None, study_key=study.key,
                     outcome="refused", detail=reason)

    @staticmethod
    def _record_identity(study: Study, works: list[DeidWork]) -> None:
        """The study's identity from its first instance; the identifying header values of every instance
        (series may name other operators or performing physicians) gathered into ``header_values``."""
        identity = StudyIdentity.get_or_none(StudyIdentity.study == study)
        if identity is None:
            # Insert-or-nothing, then read: a run that lost its lease may be recording the same case at this
            # moment, and a plain insert would fail on the other's row (``_record_outbound``).
            first = works[0]
            mapping = first.mapping
            StudyIdentity.insert(study=study, **first.identity, pseudo_patient_id=mapping.patient_id,
                                 pseudo_accession_number=mapping.accession or "",
                                 date_offset_days=mapping.date_offset_days or 0).on_conflict_ignore().execute()
            identity = StudyIdentity.get(StudyIdentity.study == study)
        merged = merge_header_values(identity.header_values, *(work.header for work in works))
        image_text = merge_image_text(identity.image_text, [work.text_values for work in works])
        changes = {}
        if merged != identity.header_values:
            changes[StudyIdentity.header_values] = merged
        if image_text != identity.image_text:
            changes[StudyIdentity.image_text] = image_text
        if changes:
            StudyIdentity.update(changes).where(StudyIdentity.id == identity.id).execute()

    @staticmethod
    def _record_uids(study: Study, mapping: DeidMapping) -> None:
        rows = [{"original_uid": original, "pseudo_uid": pseudo, "study": study.id}
                for original, pseudo in mapping.uids.items() if original != pseudo]
        for start in range(0, len(rows), 200):
            UidMap.insert_many(rows[start:start + 200]).on_conflict_ignore().execute()

    @staticmethod
    def _record_outbound(study: Study, instance: Instance, work: DeidWork, relative: str) -> None:
        """The object's row, inserted or, when its SOP instance already has one, replaced: in one statement
        (``INSERT ... ON CONFLICT (sop_instance_uid) DO UPDATE``), never read-then-insert. Two runs can record
        the same object at once: a run that lost its lease goes on with the chunk it holds while the case's new
        holder records the same instances; on PostgreSQL the second insert waited for the first's commit and
        then failed on the unique SOP Instance UID, failing the whole chunk. Both wrote the same bytes, so the
        later simply rewrites the row."""
        values = {
            OutboundObject.study: study.id, OutboundObject.instance: instance.id, OutboundObject.kind: "image",
            OutboundObject.sop_instance_uid: work.sop_instance_uid, OutboundObject.sop_class_uid: work.sop_class_uid,
            OutboundObject.transfer_syntax: work.transfer_syntax, OutboundObject.spool_path: relative,
            OutboundObject.sha256: work.sha256, OutboundObject.size: work.size,
        }
        # A newer version (another instance row) of an object already out replaces it: the ledger sends it again.
        older_version = OutboundObject.select(OutboundObject.id).where(
            (OutboundObject.sop_instance_uid == work.sop_instance_uid) & (OutboundObject.instance != instance.id))
        Delivery.update(state="pending").where(Delivery.outbound.in_(older_version)).execute()
        replaced = [field for field in values if field is not OutboundObject.sop_instance_uid]
        OutboundObject.insert(values).on_conflict(conflict_target=[OutboundObject.sop_instance_uid],
                                                  preserve=replaced).execute()


def merge_image_text(stored: str | None, more: list[list[tuple[str, str]] | None]) -> str | None:
    """``StudyIdentity.image_text`` with the texts of ``more`` (each a worker's ``DeidWork.text_values``) added:
    JSON {text: attribute path}, each text once. None (the final check reads the image files instead) when it
    already was None, when one of ``more`` is None, or when the texts would pass ``IMAGE_TEXT_MAX_CHARS``."""
    if stored is None or any(values is None for values in more):
        return None
    current: dict[str, str] = json.loads(stored) if stored else {}
    size = len(stored)
    changed = False
    for values in more:
        for path, text in values or ():
            if text not in current:
                current[text] = path
                size += len(text) + len(path) + 8
                changed = True
    if not changed:
        return stored
    if size > IMAGE_TEXT_MAX_CHARS:
        return None
    return json.dumps(current, ensure_ascii=False)


def _chunks(items: list[Instance], size: int) -> Iterator[list[Instance]]:
    """``items`` in chunks of ``size``; an original over ``LARGE_OBJECT_BYTES`` alone in its chunk, so that one
    large object at a time is held in a worker's memory (four 400 MB instances de-identified at once held
    1.2 GB over the node's warm total in the workers)."""
    small = [item for item in items if (item.size or 0) <= LARGE_OBJECT_BYTES]
    for start in range(0, len(small), size):
        yield small[start:start + size]
    for item in items:
        if (item.size or 0) > LARGE_OBJECT_BYTES:
            yield [item]


def _discard_unplaced(works: list[DeidWork], ready: list[tuple[Instance, DeidWork]]) -> None:
    """Remove the files that workers wrote for objects that will not be placed (quarantined, or after a leak)."""
    placed = {id(work) for _, work in ready}
    for work in works:
        if work.data_path and id(work) not in placed:
            Path(work.data_path).unlink(missing_ok=True)
