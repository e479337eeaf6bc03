"""The report to the source's RIS/EHR as an HL7 v2 ORU^R01 over MLLP: the HL7 leg, beside the SR leg.

Each run: every re-identified report (``ReportObject`` state ``reidentified``) of a source with ``hl7_results``
that has no ``ResultMessage`` yet gets one (state ``pending``, a new control ID); then every pending message
that is due is claimed, built (:mod:`gateway.reports.oru`, from the re-identified report in the outbound area,
the case's stored original identity and the referral's order number) and sent (:mod:`gateway.mllp.client`, one
connection per attempt), and the ACK decides:

- ``AA``/``CA``: ``sent`` (audit ``oru_sent``);
- ``AE``/``CE``, no ACK within ``hl7_results.timeout_s``, a refused or broken connection, an answer that is not
  this message's ACK: the next attempt after a back-off (``routing.retry``: doubling from ``initial_s`` up to
  ``max_s``, jittered), ``failed`` after ``routing.retry.max_attempts`` attempts;
- ``AR``/``CR``: ``failed`` at once (the receiver refuses the message; sending it again cannot help).

Failures are audited (``oru_sent`` with outcome ``failed``) and shown by ``status``; the case's state is not
touched: the SR leg (``gateway.stages.reports``) moves the case, and neither leg waits for the other. A
corrected report (a second one of the case, after one was sent) goes out with result status ``C``.

The message holds PHI: it is never logged nor stored, only built for each attempt. Several nodes on one
database: a node claims a due message by moving its ``next_attempt_at`` past the attempt's deadline in one
conditional UPDATE, so only one of them sends it.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import time
from collections.abc import Sequence

import peewee
import pydicom
import pydicom.errors
import structlog

from gateway.backoff import Backoff
from gateway.config import GatewayConfig, Hl7ResultsConfig, RetryConfig, SourceConfig
from gateway.errors import MllpError, MllpTimeout
from gateway.mllp.client import exchange
from gateway.ops import audit
from gateway.reports.oru import AckError, OruReport, build_oru, read_ack, report_pdf, report_text, report_title
from gateway.stages.context import NodeContext, WithNodeContext
from gateway.storage.models import (
    OutboundObject,
    Referral,
    ReportObject,
    ResultMessage,
    Source,
    Study,
    StudyIdentity,
    db,
    tuple_rows,
    utcnow,
)
from gateway.storage.spool import Spool

log = structlog.get_logger("oru")

PENDING, SENT, FAILED = "pending", "sent", "failed"
REIDENTIFIED = "reidentified"  # ReportObject.state once the report stage has re-identified it
CLAIM_MARGIN_S = 60.0  # a claimed message's next_attempt_at: the exchange's deadline plus this


class OruBuildError(ValueError):
    """The message cannot be built from what is stored (report file unreadable, identity missing)."""


def new_control_id() -> str:
    """MSH-10: 20 random hex digits (HL7 v2.5 ST of 20), unique per result message, kept over its retries."""
    return secrets.token_hex(10)


class OruStage(WithNodeContext):
    """Re-identified reports → ORU^R01 to the source's RIS/EHR. See the module docstring."""

    name = "oru"

    def __init__(self, sending_application: str, sources: Sequence[SourceConfig], retry: RetryConfig, spool: Spool,
                 *, context: NodeContext | None = None) -> None:
        self._context = context
        self.spool = spool
        self.sending_application = sending_application  # MSH-3: the node's AE title
        self.sources = {s.name: s for s in sources if s.hl7_results is not None}
        self.retry = retry
        self.backoff = Backoff(self.retry.initial_s, self.retry.max_s, jitter=True)

    @classmethod
    def of(cls, config: GatewayConfig, spool: Spool, *, context: NodeContext | None = None) -> OruStage:
        """The stage from the whole configuration: the sections it uses (``node.ae_title``, ``sources``,
        ``routing.retry``)."""
        return cls(config.node.ae_title, config.sources, config.routing.retry, spool, context=context)

    def run_once(self, now: dt.datetime) -> int:
        if not self.sources:
            return 0
        self.enqueue(now)
        return sum(self._attempt(message, now) for message in self.due(now) if self._claim(message, now))

    def enqueue(self, now: dt.datetime) -> int:
        """A pending ``ResultMessage`` for every re-identified report of an HL7 source that has none yet."""
        waiting = (ReportObject.select(ReportObject.study, ReportObject.outbound)
                   .join(Study).join(Source)
                   .where((ReportObject.state == REIDENTIFIED) & ReportObject.outbound.is_null(False)
                          & Source.name.in_(list(self.sources))
                          & ~peewee.fn.EXISTS(ResultMessage.select(ResultMessage.id).where(
                              ResultMessage.outbound == ReportObject.outbound))))
        rows = list(tuple_rows(waiting))
        for study_id, outbound_id in rows:  # another node may have made it in between: then this one is ignored
            ResultMessage.insert(study=study_id, outbound=outbound_id, control_id=new_control_id(),
                                 next_attempt_at=now).on_conflict_ignore().execute()
        return len(rows)

    @staticmethod
    def due(now: dt.datetime) -> list[ResultMessage]:
        return list(ResultMessage.select().where((ResultMessage.state == PENDING)
                                                 & (ResultMessage.next_attempt_at <= now))
                    .order_by(ResultMessage.next_attempt_at, ResultMessage.id))

    def _claim(self, message: ResultMessage, now: dt.datetime) -> bool:
        """This node's turn at ``message``: its retry time moved past this attempt's deadline, if still due."""
        target = self._target(message)
        hold = dt.timedelta(seconds=(target.timeout_s if target else 0.0) + CLAIM_MARGIN_S)
        with db.atomic():
            return bool(ResultMessage.update(next_attempt_at=now + hold).where(
                (ResultMessage.id == message.id) & (ResultMessage.state == PENDING)
                & (ResultMessage.next_attempt_at <= now)).execute())

    def _source(self, message: ResultMessage) -> SourceConfig | None:
        study = Study.get_by_id(message.study_id)
        source = Source.get_or_none(Source.id == study.source_id) if study.source_id else None
        return self.sources.get(source.name) if source is not None else None

    def _target(self, message: ResultMessage) -> Hl7ResultsConfig | None:
        source = self._source(message)
        return source.hl7_results if source else None

    # -- one attempt ---------------------------------------------------------------------------------

    def _attempt(self, message: ResultMessage, now: dt.datetime) -> int:
        """Build, send, read the ACK, record the outcome; 1 when the message left the pending state."""
        study = Study.get_by_id(message.study_id)
        source = self._source(message)
        attempt = message.attempts + 1
        if source is None or source.hl7_results is None:  # the source lost its hl7_results since
            return self._failed(message, study, None, attempt, None, "the source has no hl7_results configured")
        target = source.hl7_results
        try:
            er7 = build_oru(self._report(message, study, target))
        except (OruBuildError, ValueError, OSError, pydicom.errors.InvalidDicomError) as exc:
            why = str(exc) if isinstance(exc, OruBuildError) else f"cannot build the message: {type(exc).__name__}"
            return self._failed(message, study, source, attempt, None, why)
        started = time.perf_counter()
        code, error = self._exchange(target, er7, message.control_id)
        log.info("oru_attempt", case=study.key, source=source.name, attempt=attempt, status=code or "none",
                 duration_ms=int((time.perf_counter() - started) * 1000), error=error)
        if code in ("AA", "CA"):
            return self._sent(message, study, source, attempt, code)
        if code in ("AR", "CR"):
            return self._failed(message, study, source, attempt, code, f"{code}: the receiver rejected the message")
        return self._retry_or_fail(message, study, source, attempt, code, error or f"{code}: application error")

    @staticmethod
    def _exchange(target: Hl7ResultsConfig, er7: bytes, control_id: str) -> tuple[str | None, str | None]:
        """(MSA-1, None) of the receiver's ACK, or (None, why there is none)."""
        try:
            answer = exchange(target.host, target.port, er7, target.timeout_s)
            return read_ack(answer, control_id).code, None
        except MllpTimeout:
            return None, f"no ACK within {target.timeout_s:g} s"
        except (MllpError, AckError) as exc:
            return None, str(exc)

    def _report(self, message: ResultMessage, study: Study, target: Hl7ResultsConfig) -> OruReport:
        outbound = OutboundObject.get_by_id(message.outbound_id)
        dataset = pydicom.dcmread(self.spool.absolute(outbound.spool_path))
        identity = StudyIdentity.get_or_none(StudyIdentity.study == study)
        if identity is None:
            raise OruBuildError("StudyIdentity: no stored identity for the case")
        referral = Referral.get_or_none(Referral.study == study)
        document = json.loads(referral.document) if referral is not None else {}
        received = ReportObject.get_or_none(ReportObject.outbound == outbound.id)
        reported_at = (received.received_at if received is not None else message.created_at).replace(tzinfo=dt.UTC)
        lines = report_text(dataset)
        corrected = ResultMessage.select().where((ResultMessage.study == study) & (ResultMessage.id < message.id)
                                                 & (ResultMessage.state == SENT)).exists()
        return OruReport(
            control_id=message.control_id, sending_application=self.sending_application,
            receiving_application=target.receiving_application, receiving_facility=target.receiving_facility,
            patient_id=identity.patient_id, patient_name=identity.patient_name, birth_date=identity.birth_date,
            sex=identity.sex, accession_number=identity.accession_number or document.get("accession_number", ""),
            order_number=document.get("order_number") or "", title=report_title(dataset), text_lines=lines,
            pdf=report_pdf(dataset, lines), result_status="C" if corrected else "F", reported_at=reported_at)

    # -- outcomes ------------------------------------------------------------------------------------

    def _sent(self, message: ResultMessage, study: Study, source: SourceConfig, attempt: int, code: str) -> int:
        ResultMessage.update(state=SENT, attempts=attempt, last_ack_code=code, last_error=None,
                             sent_at=utcnow()).where(
            ResultMessage.id == message.id).execute()
        log.info("oru_sent", case=study.key, source=source.name, attempt=attempt, status=code)
        audit.record("oru_sent", actor_ae=_application(source), actor_host=_host(source), study_key=study.key,
                     detail=f"ORU^R01 to the RIS/EHR of source {source.name}, ACK {code}, attempt {attempt}")
        return 1

    def _retry_or_fail(self, message: ResultMessage, study: Study, source: SourceConfig, attempt: int,
                       code: str | None, error: str) -> int:
        if attempt >= self.retry.max_attempts:
            return self._failed(message, study, source, attempt, code, f"gave up after {attempt} attempt(s): {error}")
        wait = dt.timedelta(seconds=self.backoff.wait_s(attempt))
        ResultMessage.update(attempts=attempt, last_ack_code=code, last_error=error[:255],
                             next_attempt_at=utcnow() + wait).where(
            ResultMessage.id == message.id).execute()
        return 0

    @staticmethod
    def _failed(message: ResultMessage, study: Study, source: SourceConfig | None, attempt: int,
                code: str | None, error: str) -> int:
        ResultMessage.update(state=FAILED, attempts=attempt, last_ack_code=code, last_error=error[:255]).where(
            ResultMessage.id == message.id).execute()
        log.error("oru_failed", case=study.key, source=source.name if source else None, attempt=attempt,
                  status=code or "none", error=error[:200])
        audit.record("oru_sent", actor_ae=_application(source), actor_host=_host(source), study_key=study.key,
                     outcome="failed", detail=error)
        return 1


def _application(source: SourceConfig | None) -> str | None:
    """The receiving application as the audit's actor (AE-title-sized), if one is configured."""
    if source is None or source.hl7_results is None:
        return None
    return source.hl7_results.receiving_application[:16] or None


def _host(source: SourceConfig | None) -> str | None:
    return source.hl7_results.host if source is not None and source.hl7_results is not None else None
