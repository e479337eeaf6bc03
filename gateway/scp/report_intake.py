"""Report intake at the SCP edge: which C-STOREs are a reviewer's report, made durable before success.

A reviewer's C-STORE is accepted only when all of these hold, else it is refused with 0x0124 (Refused: Not
Authorized; malformed data keeps the receiver's own 0xC000/0xA900 statuses):

* its SOP class is an SR (Basic Text, Enhanced, Comprehensive, Comprehensive 3D, Key Object Selection) or
  Encapsulated PDF — images and anything else are refused (``not_a_report_class``);
* its Study Instance UID is the pseudonymous study of a case (``unknown_study``) assigned to that very
  reviewer (``not_assigned_to_caller``);
* the case is waiting for or has received its report: DELIVERING (a late image is being sent; the reviewer
  has read the study), DELIVERED, REPORTED (a second object: SR then PDF then KO, or a correction) or
  REPORT_DELIVERED (an addendum, which goes home like the first report). Earlier states — the reviewer
  cannot have seen the images — and FAILED or QUARANTINED cases are refused (``case_not_awaiting_report``).

Accepted: the bytes go to the spool (fsynced, content-addressed), a ``ReportObject`` row is committed and the
case moves to REPORTED in the same transaction, then success. Resending the same bytes is a duplicate
(success); other bytes under a SOP Instance UID already received are refused (``report_uid_reused``).

A *source* sending an SR or PDF is a normal upload (a hospital may send its own reports with a study),
except into a study the gateway pseudonymised: that is refused (``source_report_into_pseudonymous_study``)
so that nothing addressed to the pseudonymous study is ever treated as hospital data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import peewee
import structlog

from gateway.errors import OutOfResources
from gateway.reports.codes import REPORT_CLASSES
from gateway.reports.errors import ReportRefused
from gateway.scp.receiver import ReceivedInstance, check_context, parse_header
from gateway.stages.context import NodeContext, WithNodeContext
from gateway.storage import cases
from gateway.storage.models import CaseState, ReportObject, Study
from gateway.storage.spool import Spool
from gateway.storage.wakeup import REPORT

log = structlog.get_logger("reports.intake")

ACCEPTING_STATES = frozenset({CaseState.DELIVERING, CaseState.DELIVERED, CaseState.REPORTED,
                              CaseState.REPORT_DELIVERED, CaseState.REPORT_FAILED})


@dataclass(frozen=True)
class ReportReceipt:
    """An accepted report: the case it belongs to, and whether it had been received before."""

    study_key: str
    duplicate: bool = False


class ReportIntake(WithNodeContext):
    """Accepts reviewers' reports into the spool and the database (see the module docstring); ``context``: the
    node's (its database and wake-ups)."""

    def __init__(self, spool: Spool, *, context: NodeContext | None = None) -> None:
        self.spool = spool
        self._context = context

    def receive(self, received: ReceivedInstance, reviewer: str) -> ReportReceipt:
        """Store one report sent by ``reviewer`` (its configured name) durably, or refuse it.

        Raises:
            ReportRefused: the caller may not store this here (0x0124).
            InvalidInstance: malformed, or contradicting its presentation context.
            OutOfResources: disk full, database unavailable, or the case changed under us (0xA700).
            SpoolError: other I/O failures (0xA700).
        """
        header = parse_header(received)
        check_context(header, received)
        if header.sop_class_uid not in REPORT_CLASSES:
            raise ReportRefused("not_a_report_class")
        try:
            with self.context.database.connection_context():
                study = self._assigned_case(header.study_uid, reviewer)
                digest = hashlib.sha256(received.dataset).hexdigest()
                path = self.spool.store((received.meta, received.dataset), digest)
                return self._commit(study, header, received, reviewer, digest, self.spool.relative(path))
        except (peewee.OperationalError, peewee.InterfaceError) as exc:
            raise OutOfResources(f"database unavailable: {type(exc).__name__}") from exc

    @staticmethod
    def _assigned_case(pseudo_study_uid: str, reviewer: str) -> Study:
        study = Study.get_or_none(Study.pseudo_study_uid == pseudo_study_uid)
        if study is None:
            raise ReportRefused("unknown_study")
        if study.reviewer != reviewer:
            raise ReportRefused("not_assigned_to_caller", study_key=study.key)
        if study.state not in ACCEPTING_STATES:
            raise ReportRefused("case_not_awaiting_report", study_key=study.key)
        return study

    def _commit(self, study: Study, header, received: ReceivedInstance, reviewer: str, digest: str,
                relative_path: str) -> ReportReceipt:
        context = self.context
        with context.database.atomic():
            existing = ReportObject.get_or_none(ReportObject.sop_instance_uid == header.sop_instance_uid)
            if existing is not None:
                if existing.sha256 == digest and existing.study_id == study.id:
                    return ReportReceipt(study.key, duplicate=True)
                raise ReportRefused("report_uid_reused", study_key=study.key)
            ReportObject.create(study=study, reviewer=reviewer, calling_ae=received.calling_ae,
                                sop_class_uid=header.sop_class_uid, sop_instance_uid=header.sop_instance_uid,
                                transfer_syntax=received.transfer_syntax, spool_path=relative_path, sha256=digest,
                                size=received.size)
            context.notify(REPORT)  # the report stage runs once this commits (also for a reported case)
            if study.state != CaseState.REPORTED and not cases.move(
                    study, CaseState.REPORTED, reason="report_received", report_next_attempt_at=None,
                    report_attempts=0):
                raise OutOfResources("the case changed state while the report arrived; send it again")
        return ReportReceipt(study.key)

    def check_source_upload(self, received: ReceivedInstance) -> None:
        """Refuse a source's SR or PDF into a study the gateway pseudonymised; anything else passes.

        Raises:
            ReportRefused: the object's Study Instance UID is one of the gateway's pseudonymous ones.
            InvalidInstance: the header cannot be read (only report classes are read here).
        """
        if received.context_sop_class not in REPORT_CLASSES:
            return
        header = parse_header(received)
        with self.context.database.connection_context():
            pseudonymous = Study.get_or_none(Study.pseudo_study_uid == header.study_uid)
        if pseudonymous is not None:
            raise ReportRefused("source_report_into_pseudonymous_study", study_key=pseudonymous.key)
