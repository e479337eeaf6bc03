"""The scrubbed referral notes as a DICOM Comprehensive SR in its own series of the pseudonymous study.

Patient and study attributes are copied by highdicom from the evidence dataset, which must be an
already de-identified image of the study, so the SR carries pseudonyms by construction. The content
tree uses only CONTAINER, TEXT, CODE and NUM items (what OHIF renders)::

    CONTAINER Clinical Information (55752-0, LN)
      CODE    Referral urgency = Routine | Urgent
      CONTAINER History (11329-0, LN)       TEXT history, symptoms, examination, EMG/NCS,
                                            prior treatment, prior imaging, priors sent
                                            with the case (the gateway's list, relative dates);
        CONTAINER Pain pattern              TEXT location, character, radiation;
                                            NUM duration (wk), NUM intensity 0-10 ({score})
      CONTAINER Indications (18785-6, LN)   one CODE per red flag; its concept name says whether
                                            it was declared, detected in text, or both
      CONTAINER Request (55115-0, LN)       TEXT clinical question

Private codes use the ``99SPINEGW`` scheme, declared in the Coding Scheme Identification Sequence.
"""

from __future__ import annotations

from collections.abc import Sequence

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import (
    CodeContentItem,
    CodedConcept,
    ComprehensiveSR,
    ContainerContentItem,
    ContentItem,
    ContentSequence,
    NumContentItem,
    RelationshipTypeValues,
    TextContentItem,
)
from pydicom.dataset import Dataset

from gateway.dicom.charset import specific_character_set
from gateway.referral import codes
from gateway.referral.document import Urgency
from gateway.referral.notes_base import _NotesBuilder
from gateway.referral.redflags import FlagFinding
from gateway.referral.scrub import ScrubbedNotes, ScrubbedPain
from gateway.referral.sr_tables import install_module_table

__all__ = ["NotesSRBuilder", "build_notes_sr", "EVIDENCE_REQUIRED_ATTRIBUTES"]

CONTAINS = RelationshipTypeValues.CONTAINS
#: Attributes the evidence dataset must carry (highdicom copies them into the SR).
EVIDENCE_REQUIRED_ATTRIBUTES = (
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "PatientID",
    "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
)
DEFAULT_SERIES_NUMBER = 990
DEFAULT_MANUFACTURER = "spine-gateway"
SERIES_DESCRIPTION = "Referral notes (de-identified)"


def _concept(code: codes.Code) -> CodedConcept:
    return CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _text(name: codes.Code, value: str | None) -> list[TextContentItem]:
    return [TextContentItem(_concept(name), value, CONTAINS)] if value else []


def _container(name: codes.Code, children: Sequence[ContentItem]) -> list[ContentItem]:
    """A CONTAINS container holding ``children``; none at all when there are no children."""
    if not children:
        return []
    container = ContainerContentItem(_concept(name), relationship_type=CONTAINS)
    container.ContentSequence = ContentSequence(list(children))
    return [container]


class PainPatternSection:
    """Pain pattern: location, character, radiation (TEXT), duration and 0-10 intensity (NUM)."""

    def __init__(self, pain: ScrubbedPain | None) -> None:
        if pain is not None and not isinstance(pain, ScrubbedPain):
            raise TypeError("pain must be a ScrubbedPain or None")
        self._pain = pain

    def items(self) -> list[ContentItem]:
        pain = self._pain
        if pain is None:
            return []
        children: list[ContentItem] = [
            *_text(codes.PAIN_LOCATION, pain.location),
            *_text(codes.PAIN_NATURE, pain.nature),
            *_text(codes.PAIN_RADIATION, pain.radiation),
        ]
        if pain.duration_weeks is not None:
            children.append(NumContentItem(_concept(codes.PAIN_DURATION), pain.duration_weeks,
                                           _concept(codes.UNIT_WEEK), relationship_type=CONTAINS))
        if pain.intensity is not None:
            children.append(NumContentItem(_concept(codes.PAIN_INTENSITY), pain.intensity,
                                           _concept(codes.UNIT_SCORE), relationship_type=CONTAINS))
        return _container(codes.PAIN_PATTERN, children)


class HistorySection:
    """History (LOINC 11329-0): history, symptoms, pain pattern, examination, EMG, prior care."""

    def __init__(self, notes: ScrubbedNotes) -> None:
        self._notes = notes

    def items(self) -> list[ContentItem]:
        notes = self._notes
        children = [
            *_text(codes.HISTORY, notes.history),
            *_text(codes.PRESENTING_SYMPTOMS, notes.symptoms),
            *PainPatternSection(notes.pain).items(),
            *_text(codes.EXAMINATION, notes.examination),
            *_text(codes.EMG_NCS, notes.emg),
            *_text(codes.PRIOR_TREATMENT, notes.prior_treatment),
            *_text(codes.PRIOR_IMAGING, notes.prior_imaging),
            *_text(codes.PRIORS_SENT, notes.priors),
        ]
        return _container(codes.HISTORY, children)


class RedFlagsSection:
    """Indications (LOINC 18785-6): one CODE item per red flag, named by where it came from."""

    def __init__(self, flags: Sequence[FlagFinding]) -> None:
        if not all(isinstance(flag, FlagFinding) for flag in flags):
            raise TypeError("flags must be FlagFinding items")
        self._flags = list(flags)

    @staticmethod
    def _provenance(flag: FlagFinding) -> codes.Code:
        if flag.declared and flag.detected:
            return codes.RED_FLAG_DECLARED_AND_DETECTED
        return codes.RED_FLAG_DECLARED if flag.declared else codes.RED_FLAG_DETECTED

    def items(self) -> list[ContentItem]:
        children = [
            CodeContentItem(_concept(self._provenance(flag)), _concept(codes.RED_FLAG_CODES[flag.code]), CONTAINS)
            for flag in self._flags
        ]
        return _container(codes.INDICATIONS, children)


class RequestSection:
    """Request (LOINC 55115-0): the referrer's clinical question."""

    def __init__(self, question: str | None) -> None:
        self._question = question

    def items(self) -> list[ContentItem]:
        return _container(codes.REQUEST, _text(codes.CLINICAL_QUESTION, self._question))


class NotesSRBuilder(_NotesBuilder):
    """Builds the notes SR of one referral.

    Args:
        evidence: one de-identified image dataset of the pseudonymous study; patient and study
            attributes are copied from it.
        notes: the scrubbed notes.
        series_instance_uid: UID of the new series; a fresh ``2.25.`` UID when None.
        sop_instance_uid: UID of the SR instance; a fresh ``2.25.`` UID when None.
        series_number: Series Number of the new series (default :data:`DEFAULT_SERIES_NUMBER`).
        instance_number: Instance Number (default 1).
        manufacturer: Manufacturer of the equipment creating the SR.

    Raises:
        TypeError: an argument of the wrong type (the message names it).
        ValueError: evidence lacks a required attribute, a UID is malformed, a UID equals one of
            the evidence's, or a number is not positive.
    """

    required_attributes = EVIDENCE_REQUIRED_ATTRIBUTES

    def __init__(self, evidence: Dataset, notes: ScrubbedNotes, *, series_instance_uid: str | None = None,
                 sop_instance_uid: str | None = None, series_number: int = DEFAULT_SERIES_NUMBER,
                 instance_number: int = 1, manufacturer: str = DEFAULT_MANUFACTURER) -> None:
        super().__init__(evidence, notes, series_instance_uid=series_instance_uid,
                         sop_instance_uid=sop_instance_uid, series_number=series_number,
                         instance_number=instance_number, manufacturer=manufacturer)

    def content(self) -> ContainerContentItem:
        """The root container of the document."""
        notes = self._notes
        urgency = codes.URGENCY_URGENT if notes.urgency is Urgency.URGENT else codes.URGENCY_ROUTINE
        root = ContainerContentItem(_concept(codes.CLINICAL_INFORMATION))
        root.ContentSequence = ContentSequence([
            CodeContentItem(_concept(codes.URGENCY), _concept(urgency), CONTAINS),
            *HistorySection(notes).items(),
            *RedFlagsSection(notes.flags).items(),
            *RequestSection(notes.question).items(),
        ])
        return root

    def _character_set(self) -> str | None:
        copied = [self._evidence.get(keyword) for keyword in EVIDENCE_REQUIRED_ATTRIBUTES]
        return specific_character_set([*copied, *self._notes.texts()])

    def build(self) -> ComprehensiveSR:
        """Build the SR dataset (a highdicom ``ComprehensiveSR``, a pydicom ``Dataset``)."""
        install_module_table()
        private_scheme = CodingSchemeIdentificationItem(
            designator=codes.PRIVATE_SCHEME,
            name=codes.PRIVATE_SCHEME_NAME,
            responsible_organization=codes.PRIVATE_SCHEME_ORGANIZATION,
        )
        document = ComprehensiveSR(
            evidence=[self._evidence],
            content=self.content(),
            series_instance_uid=self._series_instance_uid,
            series_number=self._series_number,
            sop_instance_uid=self._sop_instance_uid,
            instance_number=self._instance_number,
            manufacturer=self._manufacturer,
            is_complete=True,
            coding_schemes=[private_scheme],
            specific_character_set=self._character_set(),
        )
        document.SeriesDescription = SERIES_DESCRIPTION
        return document


def build_notes_sr(evidence: Dataset, notes: ScrubbedNotes, **options: object) -> ComprehensiveSR:
    """Shorthand for ``NotesSRBuilder(evidence, notes, **options).build()``."""
    return NotesSRBuilder(evidence, notes, **options).build()  # type: ignore[arg-type]


COMPREHENSIVE_SR_CLASS_UID = "1.2.840.10008.5.1.4.1.1.88.33"


def load_standard_tables() -> None:
    """Load what highdicom reads of its tables of the standard (IODs, modules, attributes) for the first SR it
    builds: with the lazy module table (``sr_tables``) a few milliseconds, the SR's own modules; with stock
    highdicom the whole table, half a second that would otherwise fall on the first case's notes. The node
    calls this in the background at start, once the table is installed."""
    install_module_table()
    try:
        from highdicom._standard_utils import is_attribute_in_iod
    except ImportError:  # a highdicom without it: the first SR pays, nothing else changes
        return
    is_attribute_in_iod("ContentDate", COMPREHENSIVE_SR_CLASS_UID)
