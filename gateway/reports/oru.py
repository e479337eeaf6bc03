"""The re-identified report as an HL7 v2.5 ORU^R01 for the source's RIS/EHR, and the reading of its ACK.

The message is built here as ER7 text, not through hl7apy's element tree: hl7apy 1.3.5 has no escaping of its
own for values set as text, and this module must escape every value by the rules of HL7 v2.5 chapter 2.7
(``\\`` → ``\\E\\``, ``|`` → ``\\F\\``, ``^`` → ``\\S\\``, ``&`` → ``\\T\\``, ``~`` → ``\\R\\``). The tests read
the message back with hl7apy.

Segments (original acknowledgement mode: the receiver answers one ACK):

=====  =========================================================================================================
MSH    ``|^~\\&``, sending application the gateway's AE title (MSH-3/-4), receiving application and facility
       from ``hl7_results`` (MSH-5/-6), ``ORU^R01^ORU_R01``, MSH-10 the result message's control ID, ``P``,
       ``2.5``, MSH-7 the time the message is built, MSH-18 ``UNICODE UTF-8``
PID    PID-3 the ORIGINAL patient ID, PID-5 the original name (DICOM ``Family^Given^Middle^Prefix^Suffix`` is
       XPN's component order), PID-7 birth date, PID-8 sex
ORC    ``RE`` (observations to follow), ORC-2 the referral's placer order number, ORC-3 the accession, ``CM``
OBR    OBR-2 the placer order number; the accession number as OBR-3 (filler order number: the RIS that
       performed the study gives it) and again as OBR-18 (placer field 1), where most RIS put the accession
       and where the gateway's own referral parser reads it first; OBR-4 the report's title code; OBR-7 and
       OBR-22 the time the reviewer's report arrived; OBR-25 ``F`` (final) or ``C`` (corrected)
OBX    1..n ``TX``, one per line of the report text (an empty line is kept as an empty OBX-5), then one ``ED``
       ``^application^pdf^Base64^<data>`` with the report as PDF; OBX-11 as OBR-25
=====  =========================================================================================================

Every value comes from the caller; the message holds PHI and is never logged or stored.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from gateway.reports.content import concept_name, content_items, item_value

__all__ = ["ENCAPSULATED_PDF", "Ack", "AckError", "OruReport", "build_oru", "escape", "read_ack", "report_pdf",
           "report_text", "report_title"]

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
REPORT_CODE = ("18748-4", "Diagnostic imaging study", "LN")
PDF_CODE = ("PDF", "Report as PDF", "99SPINEGW")
ACCEPTED, ERROR, REJECTED = frozenset({"AA", "CA"}), frozenset({"AE", "CE"}), frozenset({"AR", "CR"})


def escape(text: str) -> str:
    r"""Plain text as one ER7 component in the default separators (``|^~\&``), by the escape rules of HL7
    v2.5 chapter 2.7. A carriage return or line feed would end the segment: callers split lines first; any
    left become spaces."""
    text = text.replace("\\", "\\E\\")
    for plain, escaped in (("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        text = text.replace(plain, escaped)
    return text.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")


def _components(*values: str) -> str:
    return "^".join(escape(value) for value in values).rstrip("^")


@dataclass(frozen=True)
class OruReport:
    """What one ORU^R01 says. Patient fields are the ORIGINALS (the message goes to the source's own RIS).

    Raises:
        ValueError: no patient ID, no accession number, or an empty PDF.
    """

    control_id: str
    sending_application: str
    receiving_application: str
    receiving_facility: str
    patient_id: str
    patient_name: str  # DICOM PN: Family^Given^Middle^Prefix^Suffix
    birth_date: str  # YYYYMMDD or ""
    sex: str
    accession_number: str
    order_number: str
    title: tuple[str, str, str]  # code, meaning, coding scheme
    text_lines: Sequence[str]
    pdf: bytes
    result_status: str = "F"  # OBR-25: F final, C corrected (a report after one already sent)
    reported_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))  # OBR-7, OBR-22

    def __post_init__(self) -> None:
        if not self.patient_id.strip():
            raise ValueError("an ORU needs the patient ID (PID-3)")
        if not self.accession_number.strip():
            raise ValueError("an ORU needs the accession number (OBR-3)")
        if not self.pdf:
            raise ValueError("an ORU needs the report as PDF (OBX ED)")
        if self.result_status not in ("F", "C"):
            raise ValueError("OBR-25 is F (final) or C (corrected)")
        if not 1 <= len(self.control_id) <= 20:
            raise ValueError("MSH-10 is 1 to 20 characters")


def build_oru(report: OruReport, created_at: dt.datetime | None = None) -> bytes:
    """The ER7 message (segments ended by CR), UTF-8 encoded; MSH-7 is ``created_at`` (default now)."""
    created = _hl7_time(created_at or dt.datetime.now(dt.UTC))
    timestamp = _hl7_time(report.reported_at)
    name = report.patient_name.split("=")[0].split("^")  # the alphabetic group only
    order, accession = escape(report.order_number), escape(report.accession_number)
    segments = [
        "|".join(["MSH", "^~\\&", escape(report.sending_application), escape(report.sending_application),
                  escape(report.receiving_application), escape(report.receiving_facility), created, "",
                  "ORU^R01^ORU_R01", escape(report.control_id), "P", "2.5", "", "", "", "", "", "UNICODE UTF-8"]),
        "|".join(["PID", "1", "", escape(report.patient_id), "", _components(*name), "", escape(report.birth_date),
                  escape(report.sex)]),
        "|".join(["ORC", "RE", order, accession, "", "CM"]),
        "|".join(["OBR", "1", order, accession, _components(*report.title), "", "", timestamp] + [""] * 10
                 + [accession, "", "", "", timestamp, "", "", report.result_status]),
    ]
    lines = list(report.text_lines) or [""]
    segments += ["|".join(["OBX", str(number), "TX", _components(*REPORT_CODE), "1", escape(line), "", "", "", "",
                           "", report.result_status]) for number, line in enumerate(lines, 1)]
    encoded = base64.b64encode(report.pdf).decode("ascii")
    segments.append("|".join(["OBX", str(len(lines) + 1), "ED", _components(*PDF_CODE), "1",
                              f"^application^pdf^Base64^{encoded}", "", "", "", "", "", report.result_status]))
    return ("\r".join(segments) + "\r").encode("utf-8")


def _hl7_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y%m%d%H%M%S+0000")


class AckError(ValueError):
    """An answer that is not an acknowledgement of the message sent (no MSH or MSA, an unknown MSA-1, or
    MSA-2 naming another message)."""


@dataclass(frozen=True)
class Ack:
    """MSA-1 of an acknowledgement, and what it means for the sender."""

    code: str

    @property
    def accepted(self) -> bool:
        return self.code in ACCEPTED

    @property
    def rejected(self) -> bool:
        """AR/CR: the receiver refuses the message as it is; sending it again cannot help."""
        return self.code in REJECTED


def read_ack(answer: bytes, control_id: str) -> Ack:
    """The acknowledgement code of ``answer``, checked to acknowledge message ``control_id``.

    Raises:
        AckError: see :class:`AckError`.
    """
    text = answer.decode("utf-8", errors="replace").replace("\n", "\r")
    segments = [line for line in text.split("\r") if line.strip()]
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 8:
        raise AckError("the answer has no MSH segment")
    separator, component = segments[0][3], segments[0][4]
    msa = next((s.split(separator) for s in segments if s.startswith("MSA" + separator)), None)
    if msa is None or len(msa) < 3:
        raise AckError("the answer has no MSA segment with MSA-1 and MSA-2")
    code = msa[1].split(component)[0].strip().upper()
    if code not in ACCEPTED | ERROR | REJECTED:
        raise AckError("MSA-1 is not an acknowledgement code")
    if msa[2].split(component)[0].strip() != control_id:
        raise AckError("MSA-2 does not name the message sent")
    return Ack(code)


def report_text(dataset: Dataset) -> list[str]:
    """The report's text as lines: an SR's content items as ``Concept: value`` (indented by depth; image
    references left out), or an encapsulated document's title."""
    if dataset.get("SOPClassUID") == ENCAPSULATED_PDF:
        return [str(dataset.get("DocumentTitle", "") or "Report (see the attached PDF)")]
    lines: list[str] = []
    title = dataset.get("ConceptNameCodeSequence")
    if title:
        lines.append(str(title[0].get("CodeMeaning", "")))
    _content_lines(dataset, 0, lines)
    return lines


def _content_lines(container: Dataset, depth: int, lines: list[str]) -> None:
    for level, item in content_items(container, depth):
        name = concept_name(item)
        value = item_value(item, plain_names=True, dates_and_uids=True)
        for number, part in enumerate(value.splitlines() or [""]):
            label = f"{name}: " if name and number == 0 else ""
            lines.append(("  " * level + label + part).rstrip())


def report_title(dataset: Dataset) -> tuple[str, str, str]:
    """OBR-4: the SR's document title code, else the generic code of an imaging report."""
    names = dataset.get("ConceptNameCodeSequence")
    if names and names[0].get("CodeValue"):
        code = names[0]
        return str(code.CodeValue), str(code.get("CodeMeaning", "")), str(code.get("CodingSchemeDesignator", ""))
    return REPORT_CODE


def report_pdf(dataset: Dataset, lines: Sequence[str]) -> bytes:
    """The report as PDF: an encapsulated PDF's own bytes (its even-length padding dropped), else ``lines``
    typeset (reportlab, reproducible output)."""
    if dataset.get("SOPClassUID") == ENCAPSULATED_PDF:
        document = bytes(dataset.EncapsulatedDocument)
        length = dataset.get("EncapsulatedDocumentLength")
        return document[:int(length)] if length else document.rstrip(b"\0")
    return _typeset(lines)


def _typeset(lines: Sequence[str]) -> bytes:
    from xml.sax.saxutils import escape as xml_escape

    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.platypus import Paragraph, SimpleDocTemplate

    styles = getSampleStyleSheet()
    buffer = io.BytesIO()
    document = SimpleDocTemplate(buffer, pagesize=A4, title="Second opinion report", invariant=True)
    flow = [Paragraph(xml_escape(line) or "&nbsp;", styles["BodyText"]) for line in lines]
    document.build(flow or [Paragraph("&nbsp;", styles["BodyText"])])
    return buffer.getvalue()
