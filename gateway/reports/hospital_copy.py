"""The hospital's copy of a reviewer's report PDF: printed, it can be matched to its patient.

The reviewer wrote the PDF against pseudonyms and it stays as written; the copy that goes home gets a first
page in front of it, with the source's letterhead, the patient's identity (name, ID, birth date, sex: the
originals, re-identified as the SR's header is), the study (accession, date, description, referring
clinician), the report (the reviewing service, the reviewer with qualification, the report's date and
status) and its key images as thumbnails (drawn from the node's de-identified copy, :mod:`gateway.reports.key_images`);
and a footer on every page naming the patient, the accession and the page. It is built only by the
reports stage, on the way home (PHI: nothing here is logged), never in front of a reviewer.
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

if TYPE_CHECKING:
    from pypdf import PageObject

    from gateway.reports.key_images import KeyImageThumbnail

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_SEX = {"F": "female", "M": "male", "O": "other"}
STATUS_WORDS = {"VERIFIED": "final, verified (signed)", "UNVERIFIED": "preliminary, unverified (not signed)"}


def filing_name(person_name: str) -> str:
    """``DOE^JANE^MARIE`` as ``DOE, JANE MARIE``: family name first, as a hospital files it (case as given)."""
    family, *rest = person_name.split("=")[0].split("^") + [""]
    given = " ".join(part for part in rest[:2] if part)
    return ", ".join(part for part in (family.strip(), given.strip()) if part)


def readable_date(yyyymmdd: str) -> str:
    """``19710412`` as ``12 Apr 1971`` (no day-month order to guess); anything else as it is."""
    try:
        day = dt.datetime.strptime(yyyymmdd.strip()[:8], "%Y%m%d")
    except ValueError:
        return yyyymmdd.strip()
    return f"{day.day} {_MONTHS[day.month - 1]} {day.year}"


@dataclass(frozen=True)
class HospitalHeader:
    """What the hospital's copy says about its patient, study and report (original values: PHI)."""

    letterhead: tuple[str, ...]
    patient_name: str  # DICOM PN
    patient_id: str
    birth_date: str  # YYYYMMDD
    sex: str
    accession: str
    study_date: str  # YYYYMMDD
    study_description: str
    referring: str  # DICOM PN
    service: str
    reviewer: str  # readable
    qualification: str
    report_date: str  # YYYYMMDD
    status: str  # VERIFIED or UNVERIFIED
    key_images: tuple[KeyImageThumbnail, ...] = ()  # drawn from the de-identified copy (reports.key_images)

    @property
    def patient_line(self) -> str:
        """The footer of every page: who, which study."""
        born = f", born {readable_date(self.birth_date)}" if self.birth_date else ""
        return f"{filing_name(self.patient_name)} · ID {self.patient_id}{born} · accession {self.accession}"

    def rows(self) -> list[tuple[str, str]]:
        sex = _SEX.get(self.sex.strip().upper(), self.sex)
        reviewer = ", ".join(part for part in (self.reviewer, self.qualification) if part)
        return [("Patient", filing_name(self.patient_name)), ("Patient ID", self.patient_id),
                ("Date of birth", readable_date(self.birth_date)), ("Sex", sex),
                ("Accession number", self.accession), ("Study date", readable_date(self.study_date)),
                ("Study", self.study_description), ("Referring clinician", filing_name(self.referring)),
                ("Second opinion by", self.service), ("Reviewer", reviewer or "not signed"),
                ("Report date", readable_date(self.report_date)),
                ("Report status", STATUS_WORDS.get(self.status, self.status or "-"))]


def _cover(header: HospitalHeader) -> bytes:
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    styles = getSampleStyleSheet()
    buffer = io.BytesIO()
    document = SimpleDocTemplate(buffer, pagesize=A4, title="Second opinion report", invariant=True)
    letterhead = header.letterhead or ("",)
    flow: list[object] = [Paragraph(escape(letterhead[0]), styles["Title"])]
    flow += [Paragraph(escape(line), styles["Normal"]) for line in letterhead[1:]]
    flow += [Spacer(1, 12), Paragraph("Second opinion report (outside reviewer)", styles["Heading2"])]
    table = Table([[Paragraph(f"<b>{escape(name)}</b>", styles["Normal"]), Paragraph(escape(value or "-"),
                                                                                    styles["Normal"])]
                   for name, value in header.rows()], colWidths=(130, 330))
    table.setStyle(TableStyle([("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.lightgrey),
                               ("VALIGN", (0, 0), (-1, -1), "TOP")]))
    flow += [table, *_key_images(header, styles), Spacer(1, 12),
             Paragraph("The report follows as the reviewer wrote it; the reviewer did not see the patient's "
                       "identity.", styles["Italic"])]
    document.build(flow)
    return buffer.getvalue()


KEY_IMAGE_PT = 110  # the longer side of a key image on the cover, in points
KEY_IMAGES_A_ROW = 4


def _key_images(header: HospitalHeader, styles: Any) -> list[object]:
    """The report's key images under a heading, four a row, each with its place ("series 3, image 12")."""
    if not header.key_images:
        return []
    from reportlab.platypus import Image, Paragraph, Spacer, Table

    cells: list[object] = []
    for thumbnail in header.key_images:
        picture = Image(io.BytesIO(thumbnail.jpeg))
        scale = KEY_IMAGE_PT / max(picture.imageWidth, picture.imageHeight)
        picture.drawWidth, picture.drawHeight = picture.imageWidth * scale, picture.imageHeight * scale
        cells.append([picture, Paragraph(escape(thumbnail.place), styles["Normal"])])
    rows = [cells[start:start + KEY_IMAGES_A_ROW] for start in range(0, len(cells), KEY_IMAGES_A_ROW)]
    rows[-1] += [""] * (KEY_IMAGES_A_ROW - len(rows[-1]))  # a short last row
    return [Spacer(1, 12), Paragraph("Key images", styles["Heading3"]),
            Table(rows, colWidths=(KEY_IMAGE_PT + 5,) * KEY_IMAGES_A_ROW, hAlign="LEFT")]


def _footer(text: str, width: float, height: float) -> PageObject:
    from pypdf import PdfReader
    from reportlab.pdfgen import canvas

    buffer = io.BytesIO()
    page = canvas.Canvas(buffer, pagesize=(width, height), invariant=True)
    page.setFont("Helvetica", 8)
    page.drawString(36, 20, text)
    page.save()
    return PdfReader(io.BytesIO(buffer.getvalue())).pages[0]


def hospital_copy(pdf: bytes, header: HospitalHeader) -> bytes:
    """The cover page, then ``pdf``'s pages, every page with the patient's footer.

    Raises:
        ValueError: ``pdf`` is not a PDF pypdf can read.
    """
    from pypdf import PdfReader, PdfWriter
    from pypdf.errors import PdfReadError

    try:
        pages = list(PdfReader(io.BytesIO(pdf)).pages)
    except PdfReadError as exc:
        raise ValueError(f"EncapsulatedDocument: not a readable PDF ({type(exc).__name__})") from None
    writer = PdfWriter()
    for page in list(PdfReader(io.BytesIO(_cover(header))).pages) + pages:
        writer.add_page(page)
    total = len(writer.pages)
    for number, page in enumerate(writer.pages, 1):
        box = page.mediabox
        page.merge_page(_footer(f"{header.patient_line} · page {number} of {total}", float(box.width),
                                float(box.height)))
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()
