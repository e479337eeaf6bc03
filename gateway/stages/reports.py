"""The report stage: REPORTED → (re-identify, deliver to the source) → REPORT_DELIVERED.

For each REPORTED case whose retry time has come: every received report (``ReportObject`` state
``received``) is checked for pseudonyms of other cases (``gateway.reports.foreign``: such a report fails
re-identification and never goes home) and re-identified from the stored mapping into ``spool/outbound/<case key>/`` as
an
``OutboundObject(kind="report")`` (state ``reidentified``; ``failed`` when it cannot be), then every report
object not yet stored by the source is sent to the source's ``return`` peer through the delivery function
shared with the study leg (``gateway.routing.send``: one association per attempt, the per-object ``Delivery`` ledger
under
``source:<name>``). All stored: REPORT_DELIVERED with ``report_delivered_at`` (turnaround = that minus
``first_received_at``). The report leg has its own attempt counter and retry time (``Study.report_attempts``,
``Study.report_next_attempt_at``) and its own failure state: failed attempts back off like image delivery;
after ``routing.retry.max_attempts``, or with no ``return`` configured, or when no report could be
re-identified, the case is REPORT_FAILED. The operator's ``retry`` takes a REPORT_FAILED case back to
REPORTED (never through the study leg's states), and a corrected report from the reviewer does too. A report
that arrives while the case is on its way to REPORT_DELIVERED takes it back to REPORTED (``report_waiting``).

The ledger makes delivery exactly-once per object from the gateway's side, and the re-identified UIDs are
derived (not random), so even a copy re-sent after a crash is the same instance to the PACS.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import time
from collections.abc import Sequence

import pydicom
import pydicom.errors
import structlog
from pydicom.dataset import Dataset

from gateway.config import GatewayConfig, NodeConfig, RetryConfig, ReviewerConfig, SourceConfig
from gateway.ops import audit
from gateway.reports import codes
from gateway.reports.builder import DEFAULT_ORGANIZATION
from gateway.reports.errors import ReidentificationError
from gateway.reports.foreign import foreign_pseudonym
from gateway.reports.hospital_copy import HospitalHeader, hospital_copy
from gateway.reports.key_images import key_image_thumbnails
from gateway.reports.reidentify import CaseMapping, Reidentifier, derived_report_uid, readable_name
from gateway.routing.send import REPORT_LEG, SENT, send_objects, unsent_objects
from gateway.stages.context import NodeContext, WithNodeContext
from gateway.stages.deliver import REPORT_KIND
from gateway.stages.pipeline import run_case_stage
from gateway.storage import cases
from gateway.storage.models import (
    CaseState,
    Delivery,
    OutboundObject,
    ReportObject,
    Study,
    StudyIdentity,
    UidMap,
    db,
    utcnow,
)
from gateway.storage.spool import Spool

log = structlog.get_logger("reports")

RECEIVED, REIDENTIFIED, FAILED = "received", "reidentified", "failed"


def source_peer(name: str) -> str:
    """The ``Delivery.destination`` (and ``PeerHealth.name``) of a source's return destination."""
    return f"source:{name}"


def case_mapping(study: Study) -> CaseMapping:
    """The case's originals and pseudonyms from ``StudyIdentity`` and ``UidMap``.

    Raises:
        ReidentificationError: the case has no stored identity or no pseudonymous study.
    """
    identity = StudyIdentity.get_or_none(StudyIdentity.study == study)
    if identity is None or not study.pseudo_study_uid:
        raise ReidentificationError("StudyIdentity: no stored mapping for the case")
    uids = dict(UidMap.select(UidMap.pseudo_uid, UidMap.original_uid).where(UidMap.study == study).tuples())
    return CaseMapping(
        case_key=study.key, study_uid=study.study_uid, pseudo_study_uid=study.pseudo_study_uid,
        patient_name=identity.patient_name, patient_id=identity.patient_id, birth_date=identity.birth_date,
        sex=identity.sex, accession_number=identity.accession_number, study_date=identity.study_date,
        study_time=identity.study_time, study_id=identity.dicom_study_id,
        referring_physician=identity.referring_physician, study_description=identity.study_description,
        pseudo_patient_id=identity.pseudo_patient_id, pseudo_accession_number=identity.pseudo_accession_number,
        date_offset_days=identity.date_offset_days, uids=uids)


def encode(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class ReportStage(WithNodeContext):
    """REPORTED → REPORT_DELIVERED (or REPORT_FAILED). See the module docstring."""

    name = "reports"

    def __init__(self, node: NodeConfig, sources: Sequence[SourceConfig], retry: RetryConfig, spool: Spool,
                 secret: bytes, *, reviewers: Sequence[ReviewerConfig] = (),
                 context: NodeContext | None = None) -> None:
        self._context = context
        self.node = node
        self.reviewers = {r.name: r for r in reviewers}  # who signed, for the hospital's copy of the PDF
        self.spool = spool
        self.secret = secret
        self.sources = {s.name: s for s in sources}
        self.retry = retry

    @classmethod
    def of(cls, config: GatewayConfig, spool: Spool, secret: bytes, *,
           context: NodeContext | None = None) -> ReportStage:
        """The stage from the whole configuration: the sections it uses (``node``, ``sources``,
        ``routing.retry``, ``reviewers``)."""
        return cls(config.node, config.sources, config.routing.retry, spool, secret, reviewers=config.reviewers,
                   context=context)

    claim_states = (CaseState.REPORTED,)  # one node per case, never two

    def run_once(self, now: dt.datetime) -> int:
        return run_case_stage(self, now, owner=self.context.owner)

    @staticmethod
    def prepare(now: dt.datetime) -> int:
        """A report that arrived while its case was on its way to REPORT_DELIVERED (the stage had already read
        the received reports) takes the case back to REPORTED."""
        waiting = (Study.select().join(ReportObject).where(
            (Study.state == CaseState.REPORT_DELIVERED) & (ReportObject.state != FAILED)).distinct())
        return sum(1 for study in list(waiting) if ReportStage._undelivered_reports(study) and cases.move(
            study, CaseState.REPORTED, reason="report_waiting", **REPORT_LEG.reset()))

    @staticmethod
    def _undelivered_reports(study: Study) -> bool:
        reports = list(ReportObject.select().where((ReportObject.study == study) & (ReportObject.state != FAILED)))
        if any(r.state == RECEIVED for r in reports):
            return True
        outbound_ids = [r.outbound_id for r in reports if r.outbound_id]
        sent = Delivery.select().where(Delivery.outbound.in_(outbound_ids) & (Delivery.state == SENT)
                                       & Delivery.destination.startswith("source:")).count() if outbound_ids else 0
        return sent < len(outbound_ids)

    @staticmethod
    def due(now: dt.datetime) -> list[Study]:
        return list(Study.select().where(
            (Study.state == CaseState.REPORTED)
            & (Study.report_next_attempt_at.is_null() | (Study.report_next_attempt_at <= now)))
            .order_by(Study.urgency.desc(), Study.state_changed_at))

    def step(self, study: Study, now: dt.datetime) -> bool:
        return self.process(study)

    @staticmethod
    def give_up(study: Study) -> str:
        return CaseState.REPORT_FAILED

    def process(self, study: Study) -> bool:
        """Re-identify what is new, then one delivery attempt; True when the case changed state."""
        source = self.sources.get(study.source.name) if study.source_id else None
        if source is None or source.return_ is None:
            log.error("report_no_return", case=study.key, source=source.name if source else None)
            audit.record("report_sent", actor_ae=None, actor_host=None, study_key=study.key, outcome="failed",
                         detail="the source has no return destination configured")
            return cases.move(study, CaseState.REPORT_FAILED, reason="no_return_destination")
        self.reidentify_received(study)
        pending = self.pending_objects(study, source)
        if not pending and not self._has_deliverable(study):
            log.error("report_unusable", case=study.key)
            return cases.move(study, CaseState.REPORT_FAILED, reason="report_unusable")
        return self._deliver(study, source, pending)

    # -- re-identification ---------------------------------------------------------------------------

    def reidentify_received(self, study: Study) -> int:
        """Re-identify every received report of ``study`` into the outbound area; return how many."""
        received = list(ReportObject.select().where((ReportObject.study == study)
                                                    & (ReportObject.state == RECEIVED)))
        if not received:
            return 0
        try:
            reidentifier = Reidentifier(case_mapping(study), self.secret, self._report_uids(study))
        except ReidentificationError as exc:
            for report in received:
                self._report_failed(study, report, str(exc))
            return 0
        done = 0
        signed = self._signature(study)
        for report in received:
            try:
                dataset = pydicom.dcmread(self.spool.absolute(report.spool_path))
                refused = foreign_pseudonym(dataset, study)
                if refused is not None:
                    raise ReidentificationError(f"{refused}: a pseudonym of another case")
                done += self._reidentify_one(study, report, reidentifier, dataset, signed)
            except (ReidentificationError, pydicom.errors.InvalidDicomError, ValueError, AttributeError,
                    KeyError, TypeError, OSError) as exc:
                self._report_failed(study, report, str(exc) if isinstance(exc, ReidentificationError)
                                    else type(exc).__name__)
        return done

    def _report_uids(self, study: Study) -> dict[str, str]:
        """Pseudonymous Series/SOP Instance UIDs of the case's reports → their re-identified UIDs."""
        uids: dict[str, str] = {}
        for report in ReportObject.select().where(ReportObject.study == study):
            try:
                header = pydicom.dcmread(self.spool.absolute(report.spool_path), stop_before_pixels=True,
                                         specific_tags=["SeriesInstanceUID", "SOPInstanceUID"])
            except (OSError, pydicom.errors.InvalidDicomError, ValueError):
                continue
            if header.get("SeriesInstanceUID"):
                uids[str(header.SeriesInstanceUID)] = derived_report_uid(self.secret, "series",
                                                                         str(header.SeriesInstanceUID))
            uids[report.sop_instance_uid] = derived_report_uid(self.secret, "instance", report.sop_instance_uid)
        return uids

    def _signature(self, study: Study) -> Dataset:
        """The verification of the case's latest report SR (flag, observer, organization, date) and its content
        (its key images): what the hospital's copy of its PDF says of the report's status (the SR comes first in
        one report's association); an empty dataset when there is no SR."""
        reports = ReportObject.select().where(ReportObject.study == study).order_by(ReportObject.id.desc())
        for report in reports:
            if report.sop_class_uid not in codes.SR_CLASSES or report.sop_class_uid == codes.KEY_OBJECT_SELECTION:
                continue
            try:
                return pydicom.dcmread(self.spool.absolute(report.spool_path), stop_before_pixels=True,
                                       specific_tags=["VerificationFlag", "VerifyingObserverSequence",
                                                      "ContentDate", "ContentSequence"])
            except (OSError, pydicom.errors.InvalidDicomError, ValueError):
                continue
        return Dataset()

    def _hospital_header(self, study: Study, mapping: CaseMapping, report: Dataset,
                         signed: Dataset) -> HospitalHeader:
        source = self.sources.get(study.source.name) if study.source_id else None
        reviewer = self.reviewers.get(study.reviewer or "")
        verifier = (signed.get("VerifyingObserverSequence") or [Dataset()])[0]
        name = str(verifier.get("VerifyingObserverName", "") or "")
        return HospitalHeader(
            letterhead=tuple(source.letterhead) if source and source.letterhead else (study.source.name,),
            patient_name=mapping.patient_name, patient_id=mapping.patient_id, birth_date=mapping.birth_date,
            sex=mapping.sex, accession=mapping.accession_number, study_date=mapping.study_date,
            study_description=mapping.study_description, referring=mapping.referring_physician,
            service=(reviewer.organization if reviewer and reviewer.organization else "")
            or str(verifier.get("VerifyingOrganization", "") or "") or DEFAULT_ORGANIZATION,
            reviewer=readable_name(name), qualification=reviewer.qualification or "" if reviewer and name else "",
            report_date=str(signed.get("ContentDate", "") or report.get("ContentDate", "") or ""),
            status=str(signed.get("VerificationFlag", "") or "UNVERIFIED"),
            key_images=key_image_thumbnails(study, self.spool, signed))

    @staticmethod
    def _as_hospital_copy(result: Dataset, header: HospitalHeader) -> None:
        """The re-identified PDF's document becomes the hospital's copy; one pypdf cannot read goes as written
        (its DICOM header carries the patient's identity all the same)."""
        length = int(result.get("EncapsulatedDocumentLength") or len(result.EncapsulatedDocument))
        try:
            pdf = hospital_copy(bytes(result.EncapsulatedDocument)[:length], header)
        except ValueError:
            log.warning("report_pdf_unreadable", reason="sent without the hospital's cover page")
            return
        result.EncapsulatedDocumentLength = len(pdf)
        result.EncapsulatedDocument = pdf + (b"\x00" if len(pdf) % 2 else b"")

    def _reidentify_one(self, study: Study, report: ReportObject, reidentifier: Reidentifier,
                        dataset: Dataset, signed: Dataset) -> int:
        started = time.perf_counter()
        result = reidentifier.reidentify(dataset)
        if str(result.SOPClassUID) == codes.ENCAPSULATED_PDF and "EncapsulatedDocument" in result:
            self._as_hospital_copy(result, self._hospital_header(study, reidentifier.mapping, result, signed))
        data = encode(result)
        sop_uid = str(result.SOPInstanceUID)
        path = self.spool.write_outbound(study.key, f"report-{sop_uid}.dcm", data)
        with db.atomic():
            outbound = OutboundObject.get_or_none(OutboundObject.sop_instance_uid == sop_uid)
            if outbound is None:
                outbound = OutboundObject.create(
                    study=study, instance=None, kind=REPORT_KIND, sop_instance_uid=sop_uid,
                    sop_class_uid=str(result.SOPClassUID), transfer_syntax=str(result.file_meta.TransferSyntaxUID),
                    spool_path=self.spool.relative(path), sha256=hashlib.sha256(data).hexdigest(), size=len(data))
            ReportObject.update(state=REIDENTIFIED, outbound=outbound).where(ReportObject.id == report.id).execute()
        log.info("report_reidentified", case=study.key, reviewer=report.reviewer, sop_class=report.sop_class_uid,
                 duration_ms=int((time.perf_counter() - started) * 1000))
        audit.record("report_reidentified", actor_ae=None, actor_host=None, study_key=study.key,
                     detail=f"{report.sop_class_uid} from reviewer {report.reviewer}")
        return 1

    @staticmethod
    def _report_failed(study: Study, report: ReportObject, why: str) -> None:
        ReportObject.update(state=FAILED).where(ReportObject.id == report.id).execute()
        log.error("report_reidentification_failed", case=study.key, reviewer=report.reviewer, error=why[:200])
        audit.record("report_reidentified", actor_ae=None, actor_host=None, study_key=study.key, outcome="failed",
                     detail=why)

    # -- delivery ------------------------------------------------------------------------------------

    @staticmethod
    def pending_objects(study: Study, source: SourceConfig) -> list[OutboundObject]:
        """The case's re-identified reports not yet stored by the source (ledger rows created as needed)."""
        return unsent_objects(study, source_peer(source.name), OutboundObject.kind == REPORT_KIND)

    @staticmethod
    def _has_deliverable(study: Study) -> bool:
        return OutboundObject.select().where((OutboundObject.study == study)
                                             & (OutboundObject.kind == REPORT_KIND)).exists()

    def _deliver(self, study: Study, source: SourceConfig, pending: list[OutboundObject]) -> bool:
        attempt = REPORT_LEG.attempt_of(study)
        started = time.perf_counter()
        result = send_objects(self.node, self.spool.root, source.return_, source_peer(source.name), pending,
                              cases.Lease(study, self.name, self.context.owner))
        seconds = time.perf_counter() - started
        emit = log.info if result.status == "delivered" else log.warning  # every failed attempt at warning
        emit("report_delivery_attempt", case=study.key, source=source.name, attempt=attempt,
             status=result.status, instances=result.sent, duration_ms=int(seconds * 1000))
        if result.status == "delivered":
            return self._delivered(study, source, attempt, result.sent)
        return self._failed_attempt(study, source, attempt)

    def _delivered(self, study: Study, source: SourceConfig, attempt: int, sent: int) -> bool:
        now = utcnow()
        moved = cases.move(study, CaseState.REPORT_DELIVERED, reason="report_delivered", report_delivered_at=now,
                           **REPORT_LEG.done(attempt))
        turnaround = now - study.first_received_at
        log.info("report_delivered", case=study.key, source=source.name, instances=sent,
                 duration_ms=int(turnaround.total_seconds() * 1000))
        audit.record("report_sent", actor_ae=source.return_.ae_title, actor_host=source.return_.host,
                     study_key=study.key, detail=f"{sent} object(s) to source {source.name}, attempt {attempt}")
        return moved

    def _failed_attempt(self, study: Study, source: SourceConfig, attempt: int) -> bool:
        if attempt >= self.retry.max_attempts:
            log.error("report_delivery_failed", case=study.key, source=source.name, attempt=attempt)
            audit.record("report_sent", actor_ae=source.return_.ae_title, actor_host=source.return_.host,
                         study_key=study.key, outcome="failed", detail=f"gave up after {attempt} attempt(s)")
            return REPORT_LEG.give_up(study, attempt, "report_delivery_failed")
        retry_at = REPORT_LEG.retry_later(study, attempt, self.retry)
        self.context.wake_at(REPORT_LEG.retry_topic, retry_at)  # the retry runs when due, not at a later poll
        return False
