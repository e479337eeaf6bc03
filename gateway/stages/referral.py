"""The notes stage: DEIDENTIFIED → NOTES_ATTACHED, with the referral's scrubbed notes inside the pseudonymous study.

For each de-identified case (and each case HELD awaiting its referral or an approval) the stage:

1. matches the case's referral (:mod:`gateway.referral.matching`); with none yet, the case waits in
   HELD(``awaiting_referral``) for up to ``referrals.wait_s``; past that, ``on_timeout: route`` takes the
   DICOM header's own notes (flagged "no referral") and ``hold`` leaves it HELD(``no_referral``) until a
   late referral arrives;
2. with ``referrals.require_approval``, waits in HELD(``awaiting_approval``) until ``notes approve``;
3. scrubs the notes, detects red flags (each logged by code only) and sets the case's urgency;
4. builds the notes SR and the Encapsulated PDF in new series of the pseudonymous study, checks both with
   the outbound guard (a hit quarantines the case, naming the attribute path only), and writes them as
   outbound objects;
5. records the short scrubbed reason for the requested procedure (``Study.notes_reason``): the delivery sets
   it in Reason for the Requested Procedure (0040,1002) of every image as it leaves (``routing.send``); the
   images in the spool stay as the de-identification workers wrote them;
6. checks what will leave against the whole case's identifiers, and only then moves the case to
   NOTES_ATTACHED (where it can be assigned): the notes SR and PDF read back from the spool, the reason, and
   every text of every image as the workers read it back from their encoded output
   (``StudyIdentity.image_text``; the image files themselves when it was not recorded).

The scrubber and the guard see one set of identifiers: everything the node holds for the case
(:func:`gateway.privacy.identifiers.identifier_set_for_study`: the original header, the referral, the source).

The waiting time counts from ``Study.state_changed_at``; moving into HELD(``awaiting_referral``) happens on
the first run after de-identification, so the wait is at most one ``routing.poll_s`` longer than configured.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path

import pydicom
import structlog
from pydicom.dataset import Dataset

from gateway.budget import OVER_BUDGET, BudgetedWorkers
from gateway.config import DeidConfig, GatewayConfig, ReferralsConfig, SourceConfig
from gateway.deid.guard import find_leaks_in_file, find_leaks_in_values
from gateway.dicom.rawedit import fits_charset
from gateway.ops import audit
from gateway.privacy.identifiers import IdentifierSet, identifier_set_for_study
from gateway.referral.compose import HEADER_NOTE_KEYWORDS
from gateway.referral.document import Referral
from gateway.referral.errors import ReferralError
from gateway.referral.matching import expire_referrals, match_study
from gateway.referral.notes_case import case_redactions, is_approved, known_identifiers, load_document
from gateway.referral.notes_sr import EVIDENCE_REQUIRED_ATTRIBUTES
from gateway.referral.notes_work import NotesInput, NotesWork, build_notes, scrub_notes
from gateway.referral.reason import short_reason
from gateway.referral.scrub import ScrubbedNotes
from gateway.routing import priors
from gateway.stages.context import NodeContext, WithNodeContext
from gateway.stages.pipeline import run_case_stage
from gateway.storage import cases
from gateway.storage.models import (
    CaseState,
    Instance,
    InstanceState,
    OutboundObject,
    Study,
    StudyIdentity,
    db,
    utcnow,
)
from gateway.storage.models import Referral as ReferralRow
from gateway.storage.spool import Spool

__all__ = ["AWAITING_APPROVAL", "AWAITING_REFERRAL", "NO_REFERRAL", "NotesStage", "NotesStageError"]

log = structlog.get_logger("notes")

AWAITING_REFERRAL = "awaiting_referral"
AWAITING_APPROVAL = "awaiting_approval"
NO_REFERRAL = "no_referral"
_UID_KEYWORDS = {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"}


class NotesStageError(ReferralError):
    """A case's notes cannot be built (e.g. it has no de-identified image to use as evidence)."""


class TimeBudgetExceeded(NotesStageError):
    """Scrubbing and building a case's notes ran past ``referrals.time_budget_s``."""


# The stage looks at a running job again this long after its budget has passed (a backstop to the poll).
BUDGET_MARGIN_S = 0.2


def _encode(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


class NotesStage(WithNodeContext):
    """Attach each de-identified case's scrubbed notes (SR + PDF) to its pseudonymous study.

    Args:
        referrals: the ``referrals`` section (how long to wait for a referral, the notes' limits).
        deid: the ``deid`` section (what the images keep, so the notes need not remove it).
        sources: the ``sources`` (each one's date order).
        spool: where originals are read and outbound objects written.

    :meth:`of` builds it from the whole configuration.
    """

    name = "notes"

    def __init__(self, referrals: ReferralsConfig, deid: DeidConfig, sources: Sequence[SourceConfig], spool: Spool,
                 workers: BudgetedWorkers | None = None, *, context: NodeContext | None = None) -> None:
        self._context = context
        if not isinstance(referrals, ReferralsConfig):
            raise TypeError("referrals must be a ReferralsConfig")
        if not isinstance(spool, Spool):
            raise TypeError("spool must be a Spool")
        self.referrals = referrals
        self.deid = deid
        self.sources = {source.name: source for source in sources}
        self.spool = spool
        self.workers = workers  # None: scrub in this thread, without a budget (commands, tests)
        # The state change at which each waiting case's referral wait was logged as over (case key →
        # state_changed_at): the case stays where it is while its notes are scrubbed in a worker, one pass after
        # another, and the timeout is news once.
        self._timeouts_logged: dict[str, dt.datetime] = {}

    @classmethod
    def of(cls, config: GatewayConfig, spool: Spool, workers: BudgetedWorkers | None = None, *,
           context: NodeContext | None = None) -> NotesStage:
        """The stage from the whole configuration: the sections it uses."""
        return cls(config.referrals, config.deid, config.sources, spool, workers, context=context)

    claim_states = (CaseState.DEIDENTIFIED, CaseState.HELD)

    def run_once(self, now: dt.datetime) -> int:
        """Advance every case waiting for notes; return how many changed state (one broken case is backed
        off, then quarantined, by the shared stage loop; the others go on)."""
        return run_case_stage(self, now, owner=self.context.owner)

    def prepare(self, now: dt.datetime) -> int:
        expire_referrals(now, self.referrals.wait_s)
        self._warm_workers_for_coming_cases()
        return 0

    def _warm_workers_for_coming_cases(self) -> None:
        """The notes workers are started (seconds of loading) once a first case is on its way to this stage, while
        it is still received or de-identified, not when its notes are due (issue 29: 5 s of a 2 s-wait study)."""
        if self.workers is None or self.workers.warming_started:
            return
        if Study.select().where(Study.state.in_([CaseState.RECEIVING, CaseState.COMPLETE])).exists():
            self.workers.start_warming()

    def due(self, now: dt.datetime) -> list[Study]:
        waiting = self._cases()
        keys = {study.key for study in waiting}
        self._timeouts_logged = {k: at for k, at in self._timeouts_logged.items() if k in keys}
        return waiting

    def step(self, study: Study, now: dt.datetime) -> bool:
        return bool(self._advance(study, now))

    @staticmethod
    def give_up(study: Study) -> str:
        return CaseState.QUARANTINED

    def _cases(self) -> list[Study]:
        waiting = (Study.state == CaseState.DEIDENTIFIED) | (
            (Study.state == CaseState.HELD) & Study.hold_reason.in_([AWAITING_REFERRAL, AWAITING_APPROVAL,
                                                                     NO_REFERRAL]))
        with_pacs = [name for name, source in self.sources.items() if source.query_retrieve is not None]
        if with_pacs:  # the priors stage's work comes first (gateway.stages.priors)
            waiting &= ~priors.notes_wait_for_priors(with_pacs)
        return list(Study.select().where(waiting).order_by(Study.state_changed_at))

    def _advance(self, study: Study, now: dt.datetime) -> int:
        referral_row = match_study(study)
        document = load_document(referral_row) if referral_row is not None else None
        if referral_row is None:
            if study.hold_reason == NO_REFERRAL:
                return 0  # held after the wait; released only by a referral that arrives late
            waited_s = (now - study.state_changed_at).total_seconds()
            if waited_s < self.referrals.wait_s:
                return self._hold(study, AWAITING_REFERRAL)
            self._log_timeout(study)
            if self.referrals.on_timeout == "hold":
                return self._hold(study, NO_REFERRAL)
        if self.referrals.require_approval and not is_approved(study, referral_row):
            return self._hold(study, AWAITING_APPROVAL)
        return self._attach(study, document)

    def _log_timeout(self, study: Study) -> None:
        """Log ``referral_wait_timeout`` once per case and state change, not at every pass while its notes are
        in a worker."""
        if self._timeouts_logged.get(study.key) != study.state_changed_at:
            self._timeouts_logged[study.key] = study.state_changed_at
            log.info("referral_wait_timeout", case=study.key, reason=self.referrals.on_timeout)

    @staticmethod
    def _hold(study: Study, reason: str) -> int:
        """Put the case in HELD(``reason``); 0 when it already is there."""
        if study.state == CaseState.HELD:
            if study.hold_reason == reason:
                return 0
            # HELD → HELD is not a transition; changing the reason goes through DEIDENTIFIED.
            if not cases.move(study, CaseState.DEIDENTIFIED, reason="hold_reason_changed"):
                return 0
        return int(cases.move(study, CaseState.HELD, reason=reason))

    # --- building and attaching the notes ---

    def identifiers_for(self, study: Study, document: Referral | None) -> IdentifierSet:
        """Everything the node holds for ``study``, less what the de-identification options keep in the
        images (the institution under Retain Institution Identity, UIDs under Retain UIDs)."""
        options = self.deid
        try:
            return identifier_set_for_study(study, document, include_uids=not options.retain_uids,
                                            include_institution=not options.retain_institution_id)
        except LookupError as exc:
            raise NotesStageError(str(exc)) from None

    def case_identifiers(self, study: Study) -> IdentifierSet:
        """``identifiers_for`` the case with its matched referral, if any (for the de-identification stage's
        check of late instances)."""
        row = ReferralRow.get_or_none(ReferralRow.study == study.id)
        return self.identifiers_for(study, load_document(row) if row is not None else None)

    def notes_for(self, study: Study, document: Referral | None,
                  identifiers: IdentifierSet | None = None) -> ScrubbedNotes:
        """The scrubbed notes of ``study``: from its referral, else from the original DICOM header
        (``identifiers``: the case's ``identifiers_for``, when the caller has them already)."""
        return scrub_notes(self.notes_input(study, document, identifiers))

    def notes_input(self, study: Study, document: Referral | None, identifiers: IdentifierSet | None = None,
                    evidence: Dataset | None = None) -> NotesInput:
        """What scrubbing (and, with ``evidence``, building) the notes of ``study`` needs, from the database."""
        identity = StudyIdentity.get_or_none(StudyIdentity.study == study.id)
        if identity is None:
            raise NotesStageError("the case has no de-identification identity")
        identifiers = identifiers or self.identifiers_for(study, document)
        known = known_identifiers(identifiers, case_redactions(study, document))
        return NotesInput(document=document, header_notes=self.header_notes(study) if document is None else {},
                          known=known, date_offset_days=identity.date_offset_days,
                          priors=priors.notes_summary(study, identity.study_date),
                          day_first=self._day_first(study, document) if document is not None else True,
                          evidence=evidence if evidence is not None else Dataset(), identifiers=identifiers)

    def _day_first(self, study: Study, document: Referral) -> bool:
        """The date order of the source that sent the study (else the referral's), from the configuration."""
        names = [study.source.name if study.source_id is not None else None, document.source]
        source = next((self.sources[name] for name in names if name in self.sources), None)
        return True if source is None else source.day_first

    def header_notes(self, study: Study) -> dict[str, str]:
        """The DICOM header's own notes, read from one original instance of ``study`` (PHI)."""
        instance = (Instance.select().where((Instance.study == study.id)
                                            & (Instance.state != InstanceState.QUARANTINED))
                    .order_by(Instance.id).first())
        if instance is None:
            return {}
        dataset = pydicom.dcmread(self.spool.absolute(instance.spool_path), stop_before_pixels=True,
                                  specific_tags=[*HEADER_NOTE_KEYWORDS, "SpecificCharacterSet"])
        return {keyword: str(dataset.get(keyword) or "") for keyword in HEADER_NOTE_KEYWORDS}

    def _outbound_path(self, row: OutboundObject) -> Path:
        path = Path(row.spool_path)
        return path if path.is_absolute() else self.spool.absolute(row.spool_path)

    def _evidence(self, images: list[OutboundObject]) -> Dataset:
        if not images:
            raise NotesStageError("the case has no de-identified image to use as evidence")
        evidence = pydicom.dcmread(self._outbound_path(images[0]), stop_before_pixels=True)
        for keyword in EVIDENCE_REQUIRED_ATTRIBUTES:
            if keyword not in evidence and keyword not in _UID_KEYWORDS:
                setattr(evidence, keyword, "")  # type 2 in the SR: empty is valid
        return evidence

    def _notes_work(self, study: Study, document: Referral | None, identifiers: IdentifierSet) -> NotesWork | None:
        """The case's scrubbed and built notes: here and now without workers; else from a worker, None while
        its job runs (the stage is woken when it ends, or when its budget has passed).

        Raises:
            TimeBudgetExceeded: the job ran past ``referrals.time_budget_s`` (its worker is killed).
        """
        if self.workers is None:
            return build_notes(self._input_with_evidence(study, document, identifiers))
        job = self.workers.job(study.key)
        if job is None:
            given = self._input_with_evidence(study, document, identifiers)
            if self.workers.submit(study.key, build_notes, given):
                self.context.wake_at(CaseState.DEIDENTIFIED,
                               utcnow() + dt.timedelta(seconds=self.workers.budget_s + BUDGET_MARGIN_S))
            return None
        if job.future.done():
            return self.workers.take(study.key)
        if self.workers.over_budget(study.key):
            self.workers.stop(study.key)
            raise TimeBudgetExceeded(f"notes: {OVER_BUDGET} ({self.workers.budget_s:g} s)")
        return None

    def _input_with_evidence(self, study: Study, document: Referral | None,
                             identifiers: IdentifierSet) -> NotesInput:
        images = list(OutboundObject.select().where((OutboundObject.study == study.id)
                                                    & (OutboundObject.kind == "image")).order_by(OutboundObject.id))
        return self.notes_input(study, document, identifiers, self._evidence(images))

    def _attach(self, study: Study, document: Referral | None) -> int:
        identifiers = self.identifiers_for(study, document)  # one set, its patterns compiled once
        try:
            work = self._notes_work(study, document, identifiers)
        except TimeBudgetExceeded as exc:
            return self._over_budget(study, str(exc))
        if work is None:
            return 0
        notes = work.notes
        for flag in notes.flags:
            status = "declared" if flag.declared and not flag.detected else (
                "detected" if not flag.declared else "declared_and_detected")
            log.info("red_flag", case=study.key, reason=flag.code.value, status=status)
        built = work.built
        if work.leak is not None:
            return self._quarantine(study, self._leak(study, *work.leak))
        reason = short_reason(notes)
        with db.atomic():
            if not cases.lock_if_still(study):
                # Another node attached its notes meanwhile (it took the case over when this node's lease ran
                # out): the case keeps that pair; a second one would go to the reviewer beside it.
                return 0
            self._replace_notes_objects(study, built)
            leak = self._final_check(study, identifiers, reason)
            if leak is not None:
                return self._quarantine(study, leak)
            moved = cases.move(study, CaseState.NOTES_ATTACHED,
                               reason="referral" if document is not None else NO_REFERRAL,
                               urgency=notes.urgency.value, notes_reason=reason)
        if moved:
            audit.record("notes_attached", actor_ae=None, actor_host=None, study_key=study.key,
                         detail=f"{'referral' if document is not None else 'no referral'}; "
                                f"{len(notes.flags)} red flag(s); urgency {notes.urgency.value}")
        return int(moved)

    def _final_check(self, study: Study, identifiers: IdentifierSet, reason: str) -> str | None:
        """Guard what leaves, after the last change, against the whole case's identifiers: the notes objects
        as they lie in the spool, the reason the delivery adds to every image (as written and as folded for
        an image whose character set is not UTF-8), and every text of the images as the workers read it back
        from their encoded output (``StudyIdentity.image_text``; without it, the image files read back).
        Returns the first leak as "<object kind>:<attribute path> (<identifier kind>)", or None."""
        for text in (reason, fits_charset(reason, None)):
            kinds = identifiers.kinds_found(text)
            if kinds:
                return self._leak(study, "image:ReasonForTheRequestedProcedure", kinds[0])
        identity = StudyIdentity.get(StudyIdentity.study == study.id)
        if identity.image_text is not None:
            recorded = json.loads(identity.image_text) if identity.image_text else {}
            leaks = find_leaks_in_values(((path, text) for text, path in recorded.items()), identifiers)
            if leaks:
                return self._leak(study, f"image:{leaks[0].path}", leaks[0].kind)
        rows = OutboundObject.select().where(OutboundObject.study == study.id)
        if identity.image_text is not None:
            rows = rows.where(OutboundObject.kind != "image")  # their text was checked above
        for row in rows.order_by(OutboundObject.id):
            leaks = find_leaks_in_file(self._outbound_path(row), identifiers, pixel_data=row.kind != "image")
            if leaks:
                return self._leak(study, f"{row.kind}:{leaks[0].path}", leaks[0].kind)
        return None

    @staticmethod
    def _leak(study: Study, where: str, identifier_kind: str) -> str:
        """Log a guard hit by where and which kind of identifier (never its value); return
        "<where> (<identifier kind>)", the hit as status, the case's reason and the audit row name it."""
        log.error("outbound_leak", case=study.key, path=where, reason="identifier_found", kind=identifier_kind)
        return f"{where} ({identifier_kind})"

    def _quarantine(self, study: Study, hit: str) -> int:
        """QUARANTINED with the whole hit as the reason (``Study.state_reason`` is TEXT since migration 7)."""
        moved = cases.move(study, CaseState.QUARANTINED, reason=f"notes_leak {hit}")
        if moved:
            audit.record("quarantined", actor_ae=None, actor_host=None, study_key=study.key, outcome="refused",
                         detail=f"outbound guard hit in {hit}")
        return int(moved)

    @staticmethod
    def _over_budget(study: Study, reason: str) -> int:
        """QUARANTINED at once (not retried: the same notes would take as long again), with the budget as the
        reason; an operator can redact and release the case (docs/portal.md)."""
        log.error("case_over_budget", component="notes", case=study.key, reason=OVER_BUDGET)
        moved = cases.move(study, CaseState.QUARANTINED, reason=reason)
        if moved:
            audit.record("quarantined", actor_ae=None, actor_host=None, study_key=study.key, outcome="refused",
                         detail=reason)
        return int(moved)

    def _replace_notes_objects(self, study: Study, built: dict[str, Dataset]) -> None:
        stale = list(OutboundObject.select().where((OutboundObject.study == study.id)
                                                   & OutboundObject.kind.in_(list(built))))
        for row in stale:
            self._outbound_path(row).unlink(missing_ok=True)
            row.delete_instance()
        for kind, dataset in built.items():
            data = _encode(dataset)
            path = self.spool.write_outbound(study.key, f"{dataset.SOPInstanceUID}.dcm", data)
            OutboundObject.create(study=study.id, instance=None, kind=kind,
                                  sop_instance_uid=str(dataset.SOPInstanceUID),
                                  sop_class_uid=str(dataset.SOPClassUID),
                                  transfer_syntax=str(dataset.file_meta.TransferSyntaxUID),
                                  spool_path=self.spool.relative(path),
                                  sha256=hashlib.sha256(data).hexdigest(), size=len(data))
