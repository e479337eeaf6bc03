"""``report create``: a reviewer's report built from a findings file against the case's de-identified images.

The key images are the case's outbound images (pseudonymous UIDs), looked up by Instance Number or SOP
Instance UID; the evidence (patient and study) is the first of them, so everything built is pseudonymous.
The objects are then sent in to the gateway's own SCP with the assigned reviewer's AE title, exactly as the
reviewer's workstation would, and take the same path home as any report (intake, re-identification, delivery).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from gateway.config import GatewayConfig
from gateway.dicom.net import NODELAY_HANDLER
from gateway.reports import codes
from gateway.reports.builder import (
    ImageRef,
    KeyObjectSelectionBuilder,
    ReportContent,
    ReportFinding,
    ReportPDFBuilder,
    ReportSRBuilder,
)
from gateway.reports.errors import ReportBuildError
from gateway.reports.findings import FindingsDocument
from gateway.storage.models import OutboundObject, Study
from gateway.storage.spool import Spool


@dataclass
class CaseImages:
    """The case's de-identified images, by SOP Instance UID and by Instance Number."""

    evidence: Dataset  # the first image's headers: the report copies patient and study from it
    modality: str = ""
    by_uid: dict[str, ImageRef] = field(default_factory=dict)
    by_number: dict[int, list[ImageRef]] = field(default_factory=dict)

    def resolve(self, reference: int | str, where: str) -> ImageRef:
        """The image a findings file names.

        Raises:
            ReportBuildError: no such image, or an Instance Number shared by several series.
        """
        if isinstance(reference, str):
            if reference not in self.by_uid:
                raise ReportBuildError(f"{where}: no image of the case has that SOP Instance UID")
            return self.by_uid[reference]
        matches = self.by_number.get(reference, [])
        if not matches:
            raise ReportBuildError(f"{where}: no image of the case has Instance Number {reference}")
        if len(matches) > 1:
            raise ReportBuildError(f"{where}: Instance Number {reference} is in {len(matches)} series; "
                                   "give the SOP Instance UID instead")
        return matches[0]


def case_images(study: Study, spool: Spool) -> CaseImages:
    """Read the headers of the case's outbound images (never the pixels).

    Raises:
        ReportBuildError: the case has no de-identified image.
    """
    evidence: Dataset | None = None  # only the first image's headers are kept
    modality = ""
    by_uid: dict[str, ImageRef] = {}
    by_number: dict[int, list[ImageRef]] = {}
    rows = OutboundObject.select().where((OutboundObject.study == study) & (OutboundObject.kind == "image"))
    for row in rows.order_by(OutboundObject.id):
        ds = pydicom.dcmread(spool.absolute(row.spool_path), stop_before_pixels=True)
        ref = ImageRef(str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID))
        evidence = evidence or ds
        modality = modality or str(ds.get("Modality", ""))
        by_uid[ref.sop_instance_uid] = ref
        if ds.get("InstanceNumber") is not None:
            by_number.setdefault(int(ds.InstanceNumber), []).append(ref)
    if evidence is None:
        raise ReportBuildError(f"case {study.key} has no de-identified images")
    return CaseImages(evidence, modality, by_uid, by_number)


def report_content(document: FindingsDocument, images: CaseImages) -> ReportContent:
    """The report a findings document describes, its key images resolved against the case.

    Raises:
        ReportBuildError: a key image the case does not have.
    """
    title = document.title or codes.DEFAULT_TITLE_BY_MODALITY.get(images.modality, "imaging")
    findings = tuple(
        ReportFinding(finding.text, tuple(images.resolve(ref, f"findings.{i}.images.{j}")
                                          for j, ref in enumerate(finding.images)))
        for i, finding in enumerate(document.findings))
    return ReportContent(title=codes.TITLES[title], findings=findings, impressions=tuple(document.impressions),
                         recommendations=tuple(document.recommendations),
                         clinical_information=document.clinical_information,
                         observer_name=document.observer, organization=document.organization)


def build_report_objects(content: ReportContent, evidence: Dataset, *, sr_class: str = codes.BASIC_TEXT_SR,
                         pdf: bool = False, key_images: bool = False) -> list[Dataset]:
    """The SR, then optionally the Encapsulated PDF and the Key Object Selection, in one new series each.

    Raises:
        ValueError: ``key_images`` without any key image in the findings.
    """
    objects = [ReportSRBuilder(evidence, content, sop_class_uid=sr_class).build()]
    if pdf:
        objects.append(ReportPDFBuilder(evidence, content).build())
    if key_images:
        objects.append(KeyObjectSelectionBuilder(evidence, content).build())
    return objects


def reviewer_ae_title(study: Study, config: GatewayConfig) -> str:
    """The AE title of the reviewer the case is assigned to.

    Raises:
        ReportBuildError: the case has no reviewer, or one no longer configured.
    """
    reviewer = next((r for r in config.reviewers if r.name == study.reviewer), None)
    if not study.reviewer or reviewer is None:
        raise ReportBuildError(f"case {study.key} is not assigned to a configured reviewer")
    return reviewer.ae_title


def send_as_reviewer(objects: Sequence[Dataset], calling_ae: str, config: GatewayConfig) -> list[int | None]:
    """C-STORE ``objects`` to the gateway's own SCP with ``calling_ae``; the status of each (None: no answer).

    Raises:
        ReportBuildError: the gateway cannot be reached.
    """
    node = config.node
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = node.acse_timeout_s, node.dimse_timeout_s, \
        node.network_timeout_s
    for sop_class in dict.fromkeys(str(ds.SOPClassUID) for ds in objects):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian])
    host = "127.0.0.1" if node.host in ("", "0.0.0.0") else node.host
    assoc = ae.associate(host, node.port, ae_title=node.ae_title, evt_handlers=[NODELAY_HANDLER])
    if not assoc.is_established:
        raise ReportBuildError(f"the gateway at {host}:{node.port} did not accept the association")
    statuses: list[int | None] = []
    try:
        for dataset in objects:
            rsp = assoc.send_c_store(dataset)
            statuses.append(getattr(rsp, "Status", None))
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses
