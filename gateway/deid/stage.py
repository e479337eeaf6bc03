"""The de-identification stage: COMPLETE cases become DEIDENTIFIED, with every object ready to leave.

For each case it reads the originals from the spool (pixel data is read as bytes and never decoded), applies
the Annex E profile, runs the outbound guard against the instance's own identifiers, writes the result under
``spool/outbound/<case key>/`` and records the mapping (``StudyIdentity``, ``UidMap``) in the database, which
is the only place it lives. Instances that arrive after their case moved on are de-identified on their own
and join the outbound set (the delivery ledger sends what is missing).

Contract: reads ``Study.state == complete`` and ``Instance.state == stored``; leaves ``deidentified`` (or
``quarantined`` with a reason), ``OutboundObject(kind="image")`` rows and their files.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import time

import pydicom
import structlog
from pydicom.dataset import Dataset

from gateway import cases
from gateway.deid.engine import DeidMapping, Deidentifier, PatientContext
from gateway.deid.errors import QuarantineError
from gateway.deid.guard import find_leaks, identifiers_from_dataset
from gateway.deid.options import DeidOptions
from gateway.models import (
    CaseState,
    Delivery,
    Instance,
    InstanceState,
    OutboundObject,
    Study,
    StudyIdentity,
    UidMap,
    db,
)
from gateway.ops import audit, metrics
from gateway.scp.spool import Spool

log = structlog.get_logger("deid")
BATCH = 5
# States in which a case has already been de-identified: an instance arriving now is a late one.
_PAST_DEID = (CaseState.DEIDENTIFIED, CaseState.NOTES_ATTACHED, CaseState.ASSIGNED, CaseState.DELIVERING,
              CaseState.DELIVERED, CaseState.FAILED, CaseState.HELD)


class LeakFound(Exception):
    """The guard found one of the patient's identifiers in an outgoing object (paths only, never values)."""

    def __init__(self, paths: list[str]) -> None:
        super().__init__(", ".join(paths))
        self.paths = paths


class DeidStage:
    """COMPLETE → DEIDENTIFIED (or QUARANTINED)."""

    name = "deid"

    def __init__(self, options: DeidOptions, secret: bytes, spool: Spool) -> None:
        self.deidentifier = Deidentifier(options, secret)
        self.options = options
        self.spool = spool

    def run_once(self, now: dt.datetime) -> int:
        ready = (Study.select().where(Study.state == CaseState.COMPLETE)
                 .order_by(Study.urgency.desc(), Study.state_changed_at).limit(BATCH))
        moved = 0
        for study in ready:
            with cases.claimed(study, CaseState.COMPLETE) as mine:
                moved += mine and self.deidentify_case(study)
        self.deidentify_late_instances()
        return moved

    def deidentify_case(self, study: Study) -> bool:
        started = time.perf_counter()
        instances = self._latest_stored(study)
        done = quarantined = 0
        try:
            for number, instance in enumerate(instances, 1):
                if number % 50 == 0 and not cases.renew(study):
                    return False  # the lease was lost: another node carries on
                if self._deidentify_instance(study, instance):
                    done += 1
                else:
                    quarantined += 1
        except LeakFound as leak:
            log.error("outbound_leak", case=study.key, path=str(leak), reason="identifier_found")
            audit.record("quarantined", actor_ae=None, actor_host=None, study_key=study.key, outcome="refused",
                         detail=f"identifier found at {leak}"[:255])
            return cases.move(study, CaseState.QUARANTINED, reason="identifier_leak")
        has_images = OutboundObject.select().where((OutboundObject.study == study)
                                                   & (OutboundObject.kind == "image")).exists()
        if not has_images:
            return cases.move(study, CaseState.QUARANTINED, reason="nothing_to_send")
        log.info("case_deidentified", case=study.key, instances=done, count=quarantined,
                 duration_ms=int((time.perf_counter() - started) * 1000))
        audit.record("deidentified", actor_ae=None, actor_host=None, study_key=study.key,
                     detail=f"{done} instance(s), {quarantined} quarantined")
        pseudo_study_uid = study.study_uid if self.options.retain_uids else \
            self.deidentifier.uid_pseudonym(study.study_uid)
        return cases.move(study, CaseState.DEIDENTIFIED, reason="deidentified", pseudo_study_uid=pseudo_study_uid)

    def deidentify_late_instances(self) -> int:
        """Instances stored after their case was de-identified join its outbound set."""
        studies = (Study.select().join(Instance)
                   .where((Instance.state == InstanceState.STORED) & (Study.state.in_(_PAST_DEID))).distinct())
        count = 0
        for study in studies:
            with cases.claimed(study, *_PAST_DEID) as mine:
                if mine:
                    count += self._deidentify_late(study)
        return count

    def _deidentify_late(self, study: Study) -> int:
        count = 0
        for instance in self._latest_stored(study):
            try:
                count += self._deidentify_instance(study, instance)
            except LeakFound as leak:
                log.error("outbound_leak", case=study.key, path=str(leak), reason="identifier_found")
                Instance.update(state=InstanceState.QUARANTINED).where(Instance.id == instance.id).execute()
                continue
            log.info("late_instance_deidentified", case=study.key, state=study.state)
        return count

    def _latest_stored(self, study: Study) -> list[Instance]:
        """The newest version of each SOP instance; older versions are marked superseded."""
        latest: dict[str, Instance] = {}
        for instance in study.instances.where(Instance.state == InstanceState.STORED).order_by(Instance.version):
            previous = latest.get(instance.sop_instance_uid)
            if previous is not None:
                Instance.update(state=InstanceState.SUPERSEDED).where(Instance.id == previous.id).execute()
            latest[instance.sop_instance_uid] = instance
        return list(latest.values())

    def _deidentify_instance(self, study: Study, instance: Instance) -> bool:
        """De-identify one instance into the outbound area; False when it is quarantined instead."""
        started = time.perf_counter()
        original = pydicom.dcmread(self.spool.absolute(instance.spool_path))
        try:
            result = self.deidentifier.deidentify(original, PatientContext(study.source.name if study.source_id
                                                                           else study.calling_ae, study.key))
        except QuarantineError as refusal:
            self._quarantine_instance(study, instance, refusal.reason)
            return False
        leaks = find_leaks(result.dataset, identifiers_from_dataset(
            original, include_uids=not self.options.retain_uids,
            include_institution=not self.options.retain_institution_id))
        if leaks:
            raise LeakFound([leak.path for leak in leaks])
        data = _encode(result.dataset)
        sop_uid = str(result.dataset.SOPInstanceUID)
        path = self.spool.write_outbound(study.key, f"{sop_uid}.dcm", data)
        with db.atomic():
            self._record_identity(study, original, result.mapping)
            self._record_uids(study, result.mapping)
            self._record_outbound(study, instance, result.dataset, self.spool.relative(path), data)
            Instance.update(state=InstanceState.DEIDENTIFIED).where(Instance.id == instance.id).execute()
        metrics.observe_deidentification(time.perf_counter() - started)
        return True

    def _quarantine_instance(self, study: Study, instance: Instance, reason: str) -> None:
        Instance.update(state=InstanceState.QUARANTINED).where(Instance.id == instance.id).execute()
        log.warning("instance_quarantined", case=study.key, reason=reason, sop_class=instance.sop_class_uid)
        audit.record("instance_quarantined", actor_ae=None, actor_host=None, study_key=study.key,
                     outcome="refused", detail=reason)

    @staticmethod
    def _record_identity(study: Study, original: Dataset, mapping: DeidMapping) -> None:
        if StudyIdentity.select().where(StudyIdentity.study == study).exists():
            return
        text = lambda keyword, size: str(original.get(keyword, "") or "")[:size]  # noqa: E731
        StudyIdentity.create(
            study=study, patient_name=text("PatientName", 324), patient_id=text("PatientID", 64),
            birth_date=text("PatientBirthDate", 8), sex=text("PatientSex", 16),
            accession_number=text("AccessionNumber", 16), study_date=text("StudyDate", 8),
            study_time=text("StudyTime", 16), dicom_study_id=text("StudyID", 16),
            referring_physician=text("ReferringPhysicianName", 324), study_description=text("StudyDescription", 64),
            institution_name=text("InstitutionName", 64), pseudo_patient_id=mapping.patient_id,
            pseudo_accession_number=mapping.accession or "", date_offset_days=mapping.date_offset_days or 0)

    @staticmethod
    def _record_uids(study: Study, mapping: DeidMapping) -> None:
        rows = [{"original_uid": original, "pseudo_uid": pseudo, "study": study.id}
                for original, pseudo in mapping.uids.items() if original != pseudo]
        for chunk in range(0, len(rows), 200):
            UidMap.insert_many(rows[chunk:chunk + 200]).on_conflict_ignore().execute()

    @staticmethod
    def _record_outbound(study: Study, instance: Instance, dataset: Dataset, relative: str, data: bytes) -> None:
        values = {
            "study": study.id, "instance": instance.id, "kind": "image",
            "sop_instance_uid": str(dataset.SOPInstanceUID), "sop_class_uid": str(dataset.SOPClassUID),
            "transfer_syntax": str(dataset.file_meta.TransferSyntaxUID), "spool_path": relative,
            "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
        }
        existing = OutboundObject.get_or_none(OutboundObject.sop_instance_uid == values["sop_instance_uid"])
        if existing is None:
            OutboundObject.insert(values).execute()
            return
        # A newer version of an object already out: replace it, and let the ledger send it again.
        OutboundObject.update(values).where(OutboundObject.id == existing.id).execute()
        Delivery.update(state="pending").where(Delivery.outbound == existing.id).execute()


def _encode(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()

