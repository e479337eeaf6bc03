"""The scrubbed referral notes as a PDF (reportlab), wrapped as DICOM Encapsulated PDF Storage.

The PDF's document information (Title, Author, Subject, Creator, Producer, dates) is fixed text
and the build time: no PHI.

Text is set in DejaVu Sans (Latin with every accent, Greek, Cyrillic) and, for the letters it lacks
(Chinese, Japanese, Korean), WenQuanYi Micro Hei, both embedded as TrueType subsets: "Dvořák" and "王伟"
print as letters, not boxes. The fonts come from the Debian packages fonts-dejavu-core and
fonts-wqy-microhei (scripts/install-system-deps.sh), found at run time; without them the PDF falls back to
Helvetica (Latin-1 only) and the node logs ``notes_pdf_font`` once. The CJK font is parsed on the first
letter that needs it, not at start. The DICOM object copies the Patient and General Study modules from
one de-identified image of the pseudonymous study and lives in its own series (Modality DOC).
"""

from __future__ import annotations

import copy
import datetime
import functools
import io
import threading
from pathlib import Path
from xml.sax.saxutils import escape

import structlog
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from gateway.dicom.charset import specific_character_set
from gateway.referral import codes
from gateway.referral.document import Urgency
from gateway.referral.notes_base import _NotesBuilder
from gateway.referral.scrub import ScrubbedNotes

__all__ = ["ENCAPSULATED_PDF_STORAGE", "NotesPDFBuilder", "build_notes_pdf_dataset", "font_for", "notes_fonts",
           "render_notes_pdf"]

log = structlog.get_logger("notes")

ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"
PDF_TITLE = "Referral clinical notes (de-identified)"
PDF_AUTHOR = "spine-gateway"
DEFAULT_SERIES_NUMBER = 991
_PATIENT_STUDY_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientIdentityRemoved",
    "DeidentificationMethod", "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName",
    "StudyID", "AccessionNumber",
)
_REQUIRED = ("StudyInstanceUID", "PatientID", "PatientName")
_SECTIONS = (
    ("History", "history"), ("Symptoms", "symptoms"), ("Examination", "examination"),
    ("EMG / nerve conduction", "emg"), ("Prior treatment", "prior_treatment"),
    ("Prior imaging", "prior_imaging"), ("Priors sent with the case", "priors"), ("Clinical question", "question"),
)


FONT_DIRS = (Path("/usr/share/fonts/truetype"), Path("/usr/share/fonts"), Path("/usr/local/share/fonts"))
_FONT_FILES = {  # registered name → (file below a font directory, index in a collection)
    "NotesSans": ("dejavu/DejaVuSans.ttf", 0),
    "NotesSans-Bold": ("dejavu/DejaVuSans-Bold.ttf", 0),
    "NotesCJK": ("wqy/wqy-microhei.ttc", 0),
}
#: Registered when the notes are first set (the node's warm-up). The CJK font waits for the first letter DejaVu
#: Sans lacks: parsed, it holds some 23 MB (a 5 MB collection, a map of 34,600 characters) that most referrals
#: never need, and parsing it takes about 0.1 s of that first case.
BODY_FONTS = ("NotesSans", "NotesSans-Bold")

_fonts: dict[str, TTFont] = {}
_fonts_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def _font_files() -> dict[str, tuple[Path, int]]:
    """The font files found on this machine (one warning, once, when one is missing)."""
    found: dict[str, tuple[Path, int]] = {}
    for name, (relative, index) in _FONT_FILES.items():
        path = next((d / relative for d in FONT_DIRS if (d / relative).is_file()), None)
        if path is not None:
            found[name] = (path, index)
    if "NotesSans" not in found or "NotesCJK" not in found:
        log.warning("notes_pdf_font", reason="fonts-dejavu-core or fonts-wqy-microhei missing: "
                                             "letters outside Latin-1 print as boxes in the notes PDF")
    return found


def _font(name: str) -> TTFont | None:
    """The font registered with reportlab under ``name``, parsed and registered on first use (once per
    process); None when its file is missing."""
    font = _fonts.get(name)
    if font is not None or name not in _font_files():
        return font
    with _fonts_lock:
        if name not in _fonts:
            path, index = _font_files()[name]
            font = TTFont(name, str(path), subfontIndex=index)
            pdfmetrics.registerFont(font)
            _fonts[name] = font
        return _fonts[name]


def notes_fonts() -> dict[str, TTFont]:
    """The embedded fonts registered with reportlab: the body fonts, and the CJK font once a letter needed it."""
    for name in BODY_FONTS:
        _font(name)
    return dict(_fonts)


def font_for(char: str) -> str:
    """The registered font that draws ``char``: DejaVu Sans, else the CJK font, else Helvetica."""
    body = _font("NotesSans")
    if body is not None and ord(char) in body.face.charToGlyph:
        return "NotesSans"
    cjk = _font("NotesCJK")
    if cjk is not None and ord(char) in cjk.face.charToGlyph:
        return "NotesCJK"
    return "NotesSans" if body is not None else "Helvetica"


def _markup(text: str) -> str:
    """``text`` escaped for a Paragraph, with runs the body font cannot draw set in the CJK font."""
    pieces: list[str] = []
    for char in text:
        font = "NotesCJK" if not char.isspace() and font_for(char) == "NotesCJK" else None
        piece = escape(char)
        pieces.append(f'<font name="NotesCJK">{piece}</font>' if font else piece)
    return "".join(pieces).replace('</font><font name="NotesCJK">', "")


def _styles() -> dict:
    styles = getSampleStyleSheet()
    fonts = notes_fonts()
    if "NotesSans" in fonts:
        for name in ("BodyText", "Normal"):
            styles[name].fontName = "NotesSans"
        for name in ("Title", "Heading2", "Heading3"):
            styles[name].fontName = "NotesSans-Bold" if "NotesSans-Bold" in fonts else "NotesSans"
    return styles


def _table_font() -> str:
    return "NotesSans" if "NotesSans" in notes_fonts() else "Helvetica"


def _paragraphs(text: str, style: object) -> list[Paragraph]:
    return [Paragraph(_markup(line), style) for line in text.splitlines() if line.strip()]


def _pain_table(notes: ScrubbedNotes, styles: dict) -> list[object]:
    pain = notes.pain
    if pain is None:
        return []
    rows = [(label, value) for label, value in (
        ("Location", pain.location), ("Character", pain.nature), ("Radiation", pain.radiation),
        ("Duration", (f"{pain.duration_weeks} week" + ("" if pain.duration_weeks == 1 else "s"))
         if pain.duration_weeks is not None else None),
    ) if value]
    flow: list[object] = [Paragraph("Pain pattern", styles["Heading2"])]
    if rows:
        table = Table([(k, Paragraph(_markup(v), styles["BodyText"])) for k, v in rows],
                      colWidths=[35 * mm, 135 * mm])
        table.setStyle(TableStyle([("FONTNAME", (0, 0), (-1, -1), _table_font())]))
        flow.append(table)
    if pain.intensity is not None:
        flow.append(Paragraph(f"Pain intensity: {pain.intensity}/10", styles["BodyText"]))
        scale = Table([[str(n) for n in range(11)]], colWidths=[10 * mm] * 11)
        scale.setStyle(TableStyle([
            ("GRID", (0, 0), (-1, -1), 0.5, colors.grey),
            ("ALIGN", (0, 0), (-1, -1), "CENTER"),
            ("BACKGROUND", (pain.intensity, 0), (pain.intensity, 0), colors.orange),
        ]))
        flow.append(scale)
    return flow


def _flags_table(notes: ScrubbedNotes, styles: dict) -> list[object]:
    flow: list[object] = [Paragraph("Red flags", styles["Heading2"])]
    if not notes.flags:
        return flow + [Paragraph("None declared or detected.", styles["BodyText"])]
    rows = [["Red flag", "Declared", "Detected", "Phrase"]] + [
        [codes.RED_FLAG_CODES[f.code].meaning, "yes" if f.declared else "no", "yes" if f.detected else "no",
         Paragraph(_markup(f.phrase or ""), styles["BodyText"])]
        for f in notes.flags
    ]
    table = Table(rows, colWidths=[65 * mm, 20 * mm, 20 * mm, 65 * mm])
    table.setStyle(TableStyle([
        ("FONTNAME", (0, 0), (-1, -1), _table_font()),
        ("GRID", (0, 0), (-1, -1), 0.5, colors.grey),
        ("BACKGROUND", (0, 0), (-1, 0), colors.lightgrey),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
    ]))
    return flow + [table]


def render_notes_pdf(notes: ScrubbedNotes) -> bytes:
    """Render the notes to PDF bytes: title, urgency, sections, pain scale, red flags table."""
    if not isinstance(notes, ScrubbedNotes):
        raise TypeError("notes must be a ScrubbedNotes")
    styles = _styles()
    buffer = io.BytesIO()
    document = SimpleDocTemplate(buffer, pagesize=A4, title=PDF_TITLE, author=PDF_AUTHOR,
                                 subject="Referral notes", creator=PDF_AUTHOR, producer=PDF_AUTHOR,
                                 keywords="")
    urgency = "URGENT" if notes.urgency is Urgency.URGENT else "Routine"
    flow: list[object] = [Paragraph(PDF_TITLE, styles["Title"]),
                          Paragraph(f"Urgency: {urgency}", styles["Heading3"])]
    for heading, attribute in _SECTIONS[:2]:
        flow += _section(heading, getattr(notes, attribute), styles)
    flow += _pain_table(notes, styles)
    for heading, attribute in _SECTIONS[2:]:
        flow += _section(heading, getattr(notes, attribute), styles)
    flow += [Spacer(1, 4 * mm), *_flags_table(notes, styles)]
    document.build(flow)
    return buffer.getvalue()


def _section(heading: str, text: str | None, styles: dict) -> list[object]:
    if not text:
        return []
    return [Paragraph(heading, styles["Heading2"]), *_paragraphs(text, styles["BodyText"])]


class NotesPDFBuilder(_NotesBuilder):
    """Builds the Encapsulated PDF Storage object of the notes.

    Args:
        evidence: one de-identified image of the pseudonymous study (patient and study copied).
        notes: the scrubbed notes.
        series_instance_uid, sop_instance_uid: new UIDs; fresh ``2.25.`` UIDs when None.
        series_number: Series Number (default :data:`DEFAULT_SERIES_NUMBER`).
        instance_number: Instance Number (default 1).
        manufacturer: Manufacturer of the creating equipment.

    Raises:
        TypeError: an argument of the wrong type (named in the message).
        ValueError: evidence lacks a required attribute, or a UID repeats one of the evidence's.
    """

    required_attributes = _REQUIRED

    def __init__(self, evidence: Dataset, notes: ScrubbedNotes, *, series_instance_uid: str | None = None,
                 sop_instance_uid: str | None = None, series_number: int = DEFAULT_SERIES_NUMBER,
                 instance_number: int = 1, manufacturer: str = PDF_AUTHOR) -> None:
        super().__init__(evidence, notes, series_instance_uid=series_instance_uid,
                         sop_instance_uid=sop_instance_uid, series_number=series_number,
                         instance_number=instance_number, manufacturer=manufacturer)

    def build(self) -> Dataset:
        """Render the PDF and return the Encapsulated PDF dataset (with file meta)."""
        pdf = render_notes_pdf(self._notes)
        now = datetime.datetime.now()
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = UID(ENCAPSULATED_PDF_STORAGE)
        ds.file_meta.MediaStorageSOPInstanceUID = UID(self._sop_instance_uid)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ENCAPSULATED_PDF_STORAGE
        ds.SOPInstanceUID = self._sop_instance_uid
        ds.InstanceCreationDate = now.strftime("%Y%m%d")
        ds.InstanceCreationTime = now.strftime("%H%M%S")
        for keyword in _PATIENT_STUDY_KEYWORDS:
            if keyword in self._evidence:
                ds.add(copy.deepcopy(self._evidence[keyword]))
        self._fill_type2_patient_study(ds)
        charset = specific_character_set([*(e.value for e in ds), PDF_TITLE])
        if charset is not None:
            ds.SpecificCharacterSet = charset
        ds.Modality = "DOC"
        ds.SeriesInstanceUID = self._series_instance_uid
        ds.SeriesNumber = self._series_number
        ds.SeriesDescription = "Referral notes PDF (de-identified)"
        ds.Manufacturer = self._manufacturer
        ds.ConversionType = "WSD"
        ds.InstanceNumber = self._instance_number
        ds.ContentDate = now.strftime("%Y%m%d")
        ds.ContentTime = now.strftime("%H%M%S")
        ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
        ds.BurnedInAnnotation = "NO"
        ds.DocumentTitle = PDF_TITLE
        concept = Dataset()
        concept.CodeValue = codes.CLINICAL_INFORMATION.value
        concept.CodingSchemeDesignator = codes.CLINICAL_INFORMATION.scheme
        concept.CodeMeaning = codes.CLINICAL_INFORMATION.meaning
        ds.ConceptNameCodeSequence = [concept]
        ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
        ds.EncapsulatedDocumentLength = len(pdf)
        ds.EncapsulatedDocument = pdf + (b"\x00" if len(pdf) % 2 else b"")
        return ds

    @staticmethod
    def _fill_type2_patient_study(ds: Dataset) -> None:
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                        "ReferringPhysicianName", "StudyID", "AccessionNumber"):
            if keyword not in ds or ds[keyword].value is None:
                setattr(ds, keyword, "")
        for keyword in ("PatientIdentityRemoved", "DeidentificationMethod"):
            if keyword in ds and ds[keyword].value in (None, ""):
                del ds[keyword]


def build_notes_pdf_dataset(evidence: Dataset, notes: ScrubbedNotes, **options: object) -> Dataset:
    """Shorthand for ``NotesPDFBuilder(evidence, notes, **options).build()``."""
    return NotesPDFBuilder(evidence, notes, **options).build()  # type: ignore[arg-type]
