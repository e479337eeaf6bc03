"""The reviewer's report, built by the gateway for reviewers without an SR-capable workstation.

:class:`ReportSRBuilder` writes TID 2000 (Basic Diagnostic Imaging Report)::

    CONTAINER <title, CID 7000>                       e.g. (18756-7, LN, "MRI Spine Report")
      HAS CONCEPT MOD  CODE Language = English
      HAS OBS CONTEXT  CODE Observer Type = Person; PNAME Person Observer Name   (when an observer is given)
      CONTAINS CONTAINER Clinical Information (55752-0, LN)   TEXT History
      CONTAINS CONTAINER Findings (59776-5, LN)               TEXT Finding
                                                                > INFERRED FROM IMAGE (each key image)
      CONTAINS CONTAINER Impressions (19005-8, LN)            TEXT Impression
      CONTAINS CONTAINER Recommendations (18783-1, LN)        TEXT Recommendation

Only CONTAINER, TEXT, CODE, PNAME and IMAGE items by value, with CONTAINS, HAS CONCEPT MOD, HAS OBS CONTEXT
and INFERRED FROM: what Basic Text SR allows, so the same tree is sent as Basic Text, Enhanced or
Comprehensive SR. :class:`KeyObjectSelectionBuilder` (TID 2010) lists the key images and
:class:`ReportPDFBuilder` renders the same report as an Encapsulated PDF.

Patient and study attributes are copied from the case's de-identified images (the evidence), so what is built
carries pseudonyms by construction; the gateway re-identifies it on its way back like any reviewer's report.
"""

from __future__ import annotations

import copy
import datetime as dt
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from gateway.dicom.charset import specific_character_set
from gateway.reports import codes
from gateway.reports.codes import Code
from gateway.reports.reidentify import readable_name, string_values

MANUFACTURER = "spine-gateway"
# (0040,A027) Verifying Organization is Type 1: a report signed without one is verified for the service.
DEFAULT_ORGANIZATION = "spine-gateway second-opinion service"
# How a report files the answer to the referral's clinical question among its impressions (TID 2000 has no
# section of its own for it); pages and the PDF show it under its own heading.
ANSWER_PREFIX = "Answer to the clinical question: "
SR_SERIES_NUMBER, KO_SERIES_NUMBER, PDF_SERIES_NUMBER = 995, 996, 997
_PATIENT_STUDY_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                           "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
                           "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
                           "LongitudinalTemporalInformationModified")
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")


@dataclass(frozen=True)
class ImageRef:
    """A key image of the case, by its pseudonymous UIDs."""

    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str


@dataclass(frozen=True)
class ReportFinding:
    text: str
    images: tuple[ImageRef, ...] = ()


@dataclass(frozen=True)
class ReportContent:
    """The content of one report, independent of how it is encoded.

    Raises:
        ValueError: no finding, no impression, or empty text.
    """

    title: Code
    findings: tuple[ReportFinding, ...]
    impressions: tuple[str, ...]
    recommendations: tuple[str, ...] = ()
    clinical_information: str | None = None
    observer_name: str | None = None
    organization: str | None = None
    key_images: tuple[ImageRef, ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.title, Code):
            raise TypeError("title must be a codes.Code")
        if not self.findings:
            raise ValueError("a report needs at least one finding")
        if not self.impressions:
            raise ValueError("a report needs at least one impression")
        texts = [f.text for f in self.findings] + list(self.impressions) + list(self.recommendations)
        if any(not text.strip() for text in texts):
            raise ValueError("findings, impressions and recommendations must not be empty text")

    def referenced_images(self) -> list[ImageRef]:
        """Every image the report references (findings' images, then extra key images), once each."""
        seen: dict[str, ImageRef] = {}
        for image in [i for f in self.findings for i in f.images] + list(self.key_images):
            seen.setdefault(image.sop_instance_uid, image)
        return list(seen.values())


# -- content items -------------------------------------------------------------------------------------------

def code_item(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme, code.meaning
    return item


def _item(value_type: str, relationship: str | None, name: Code | None) -> Dataset:
    item = Dataset()
    if relationship:
        item.RelationshipType = relationship
    item.ValueType = value_type
    if name is not None:
        item.ConceptNameCodeSequence = [code_item(name)]
    return item


def text_item(relationship: str, name: Code, text: str, children: Sequence[Dataset] = ()) -> Dataset:
    item = _item("TEXT", relationship, name)
    item.TextValue = text
    if children:
        item.ContentSequence = list(children)
    return item


def container_item(relationship: str | None, name: Code, children: Sequence[Dataset]) -> Dataset:
    item = _item("CONTAINER", relationship, name)
    item.ContinuityOfContent = "SEPARATE"
    item.ContentSequence = list(children)
    return item


def image_item(relationship: str, image: ImageRef) -> Dataset:
    item = _item("IMAGE", relationship, None)
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = image.sop_class_uid, image.sop_instance_uid
    item.ReferencedSOPSequence = [ref]
    return item


def observer_items(observer_name: str) -> list[Dataset]:
    observer_type = _item("CODE", "HAS OBS CONTEXT", codes.OBSERVER_TYPE)
    observer_type.ConceptCodeSequence = [code_item(codes.PERSON)]
    name = _item("PNAME", "HAS OBS CONTEXT", codes.PERSON_OBSERVER_NAME)
    name.PersonName = observer_name
    return [observer_type, name]


def language_item() -> Dataset:
    item = _item("CODE", "HAS CONCEPT MOD", codes.LANGUAGE)
    item.ConceptCodeSequence = [code_item(codes.ENGLISH)]
    return item


def evidence_sequence(study_uid: str, images: Sequence[ImageRef]) -> list[Dataset]:
    """Current Requested Procedure Evidence Sequence: study → series → SOP instances."""
    by_series: dict[str, list[ImageRef]] = {}
    for image in images:
        by_series.setdefault(image.series_uid, []).append(image)
    series_items = []
    for series_uid, members in by_series.items():
        series = Dataset()
        series.SeriesInstanceUID = series_uid
        refs = []
        for image in members:
            ref = Dataset()
            ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = image.sop_class_uid, image.sop_instance_uid
            refs.append(ref)
        series.ReferencedSOPSequence = refs
        series_items.append(series)
    study = Dataset()
    study.StudyInstanceUID = study_uid
    study.ReferencedSeriesSequence = series_items
    return [study]


# -- builders ------------------------------------------------------------------------------------------------

def set_character_set(ds: Dataset) -> None:
    """The narrowest Specific Character Set for every string in ``ds`` (none for plain ASCII)."""
    charset = specific_character_set(string_values(ds))
    if charset is not None:
        ds.SpecificCharacterSet = charset
    elif "SpecificCharacterSet" in ds:
        del ds.SpecificCharacterSet


class _DocumentBuilder:
    """Shared work: validation, patient/study copied from the evidence, series, equipment, SOP common."""

    sop_class_uid = ""
    modality = ""
    series_number = 1
    series_description = ""

    def __init__(self, evidence: Dataset, content: ReportContent, *, series_instance_uid: str | None = None,
                 sop_instance_uid: str | None = None, instance_number: int = 1,
                 now: dt.datetime | None = None) -> None:
        if not isinstance(evidence, Dataset):
            raise TypeError("evidence must be a pydicom Dataset")
        if not isinstance(content, ReportContent):
            raise TypeError("content must be a ReportContent")
        for keyword in ("StudyInstanceUID", "PatientID"):
            if not evidence.get(keyword):
                raise ValueError(f"evidence lacks {keyword}")
        if isinstance(instance_number, bool) or not isinstance(instance_number, int) or instance_number < 1:
            raise TypeError("instance_number must be a positive int")
        self.evidence = evidence
        self.content = content
        self.series_instance_uid = series_instance_uid or generate_uid(prefix=None)
        self.sop_instance_uid = sop_instance_uid or generate_uid(prefix=None)
        self.instance_number = instance_number
        self.now = now or dt.datetime.now()

    def _base(self) -> Dataset:
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = UID(self.sop_class_uid)
        ds.file_meta.MediaStorageSOPInstanceUID = UID(self.sop_instance_uid)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = self.sop_class_uid, self.sop_instance_uid
        ds.InstanceCreationDate, ds.InstanceCreationTime = self._date(), self._time()
        for keyword in _PATIENT_STUDY_KEYWORDS:
            if keyword in self.evidence:
                ds[keyword] = copy.deepcopy(self.evidence[keyword])  # never share elements with the evidence
        for keyword in _TYPE2:
            if keyword not in ds or ds[keyword].value is None:
                setattr(ds, keyword, "")
        ds.Modality = self.modality
        ds.SeriesInstanceUID, ds.SeriesNumber = self.series_instance_uid, self.series_number
        ds.SeriesDescription = self.series_description
        ds.Manufacturer = MANUFACTURER
        ds.InstanceNumber = self.instance_number
        ds.ContentDate, ds.ContentTime = self._date(), self._time()
        return ds

    def _date(self) -> str:
        return self.now.strftime("%Y%m%d")

    def _time(self) -> str:
        return self.now.strftime("%H%M%S")

    def _sr_document(self, ds: Dataset, images: Sequence[ImageRef]) -> None:
        ds.ReferencedPerformedProcedureStepSequence = []
        ds.PerformedProcedureCodeSequence = []
        if images:
            ds.CurrentRequestedProcedureEvidenceSequence = evidence_sequence(str(ds.StudyInstanceUID), images)

    @staticmethod
    def _template(ds: Dataset, template_id: str) -> None:
        template = Dataset()
        template.MappingResource, template.TemplateIdentifier = "DCMR", template_id
        ds.ContentTemplateSequence = [template]


class ReportSRBuilder(_DocumentBuilder):
    """The report as an SR document (TID 2000) of the requested class.

    Args:
        evidence: one de-identified image of the case (patient and study are copied from it).
        content: the report.
        sop_class_uid: Basic Text, Enhanced or Comprehensive SR Storage (default Basic Text).
        series_instance_uid, sop_instance_uid: new UIDs; fresh ``2.25.`` UIDs when None.
        instance_number: Instance Number (default 1).
        now: the content date and time (default: now, local time).

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: an SR class other than those three, or evidence without Study Instance UID / Patient ID.
    """

    modality = "SR"
    series_number = SR_SERIES_NUMBER
    series_description = "Second opinion report"

    def __init__(self, evidence: Dataset, content: ReportContent, *, sop_class_uid: str = codes.BASIC_TEXT_SR,
                 **options) -> None:
        if sop_class_uid not in (codes.BASIC_TEXT_SR, codes.ENHANCED_SR, codes.COMPREHENSIVE_SR):
            raise ValueError("sop_class_uid must be Basic Text, Enhanced or Comprehensive SR Storage")
        self.sop_class_uid = sop_class_uid
        super().__init__(evidence, content, **options)

    def content_tree(self) -> list[Dataset]:
        c = self.content
        items = [language_item()]
        if c.observer_name:
            items += observer_items(c.observer_name)
        if c.clinical_information:
            items.append(container_item("CONTAINS", codes.CLINICAL_INFORMATION,
                                        [text_item("CONTAINS", codes.HISTORY, c.clinical_information)]))
        findings = [text_item("CONTAINS", codes.FINDING, f.text,
                              [image_item("INFERRED FROM", image) for image in f.images]) for f in c.findings]
        items.append(container_item("CONTAINS", codes.FINDINGS, findings))
        items.append(container_item("CONTAINS", codes.IMPRESSIONS,
                                    [text_item("CONTAINS", codes.IMPRESSION, t) for t in c.impressions]))
        if c.recommendations:
            items.append(container_item("CONTAINS", codes.RECOMMENDATIONS,
                                        [text_item("CONTAINS", codes.RECOMMENDATION, t) for t in c.recommendations]))
        return items

    def build(self) -> Dataset:
        """The SR dataset, with file meta."""
        ds = self._base()
        self._sr_document(ds, self.content.referenced_images())
        ds.CompletionFlag = "COMPLETE"
        if self.content.observer_name:  # signed by a named reviewer: VERIFIED, whichever way it was written
            ds.VerificationFlag = "VERIFIED"
            verifier = Dataset()
            verifier.VerifyingObserverName = self.content.observer_name
            verifier.VerifyingOrganization = self.content.organization or DEFAULT_ORGANIZATION
            verifier.VerificationDateTime = self.now.strftime("%Y%m%d%H%M%S")
            verifier.VerifyingObserverIdentificationCodeSequence = []
            ds.VerifyingObserverSequence = [verifier]
        else:
            ds.VerificationFlag = "UNVERIFIED"
        ds.ValueType = "CONTAINER"
        ds.ConceptNameCodeSequence = [code_item(self.content.title)]
        ds.ContinuityOfContent = "SEPARATE"
        self._template(ds, "2000")
        ds.ContentSequence = DicomSequence(self.content_tree())
        set_character_set(ds)
        return ds


class KeyObjectSelectionBuilder(_DocumentBuilder):
    """The key images as a Key Object Selection document (TID 2010, title "Of Interest").

    Raises:
        ValueError: the report references no image.
    """

    sop_class_uid = codes.KEY_OBJECT_SELECTION
    modality = "KO"
    series_number = KO_SERIES_NUMBER
    series_description = "Second opinion key images"

    def __init__(self, evidence: Dataset, content: ReportContent, **options) -> None:
        super().__init__(evidence, content, **options)
        if not content.referenced_images():
            raise ValueError("a Key Object Selection needs at least one key image")

    def build(self) -> Dataset:
        images = self.content.referenced_images()
        ds = self._base()
        ds.ReferencedPerformedProcedureStepSequence = []
        ds.CurrentRequestedProcedureEvidenceSequence = evidence_sequence(str(ds.StudyInstanceUID), images)
        ds.ValueType = "CONTAINER"
        ds.ConceptNameCodeSequence = [code_item(codes.KEY_OBJECT_TITLE)]
        ds.ContinuityOfContent = "SEPARATE"
        self._template(ds, "2010")
        description = text_item("CONTAINS", codes.KEY_OBJECT_DESCRIPTION, self.content.impressions[0][:1024])
        ds.ContentSequence = DicomSequence([description, *(image_item("CONTAINS", i) for i in images)])
        set_character_set(ds)
        return ds


def render_report_pdf(content: ReportContent) -> bytes:
    """The report as PDF bytes (reportlab): title, sections, the key images listed by number."""
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.platypus import Paragraph, SimpleDocTemplate

    styles = getSampleStyleSheet()
    buffer = io.BytesIO()
    document = SimpleDocTemplate(buffer, pagesize=A4, title=content.title.meaning, author=MANUFACTURER,
                                 subject="Second opinion report", creator=MANUFACTURER, producer=MANUFACTURER,
                                 keywords="", invariant=True)
    flow: list[object] = [Paragraph(escape(content.title.meaning), styles["Title"])]

    def section(heading: str, paragraphs: Sequence[str]) -> None:
        if paragraphs:
            flow.append(Paragraph(heading, styles["Heading2"]))
            flow.extend(Paragraph(escape(text), styles["BodyText"]) for text in paragraphs)

    section("Clinical information", [content.clinical_information] if content.clinical_information else [])
    section("Findings", [f.text + (f" (key images: {len(f.images)})" if f.images else "") for f in content.findings])
    answers = [text[len(ANSWER_PREFIX):] for text in content.impressions if text.startswith(ANSWER_PREFIX)]
    section("Answer to the clinical question", answers)
    section("Impressions", [text for text in content.impressions if not text.startswith(ANSWER_PREFIX)])
    section("Recommendations", content.recommendations)
    if content.observer_name:
        section("Reported by", [readable_name(content.observer_name)])
    document.build(flow)
    return buffer.getvalue()


class ReportPDFBuilder(_DocumentBuilder):
    """The same report as Encapsulated PDF Storage (Modality DOC, its own series)."""

    sop_class_uid = codes.ENCAPSULATED_PDF
    modality = "DOC"
    series_number = PDF_SERIES_NUMBER
    series_description = "Second opinion report (PDF)"

    def build(self) -> Dataset:
        pdf = render_report_pdf(self.content)
        ds = self._base()
        ds.ConversionType = "WSD"
        ds.AcquisitionDateTime = self.now.strftime("%Y%m%d%H%M%S")
        ds.BurnedInAnnotation = "YES"
        ds.DocumentTitle = self.content.title.meaning
        ds.ConceptNameCodeSequence = [code_item(self.content.title)]
        ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
        ds.EncapsulatedDocumentLength = len(pdf)
        ds.EncapsulatedDocument = pdf + (b"\x00" if len(pdf) % 2 else b"")
        set_character_set(ds)
        return ds
