"""HL7 v2 order messages (ORM^O01, OMI^O23) to :class:`Referral`, and their acknowledgements.

Parsing is done by hl7apy (segments taken flat, ``find_groups=False``). Field mapping:

=====================  ==========================================================================
Referral field         HL7 source
=====================  ==========================================================================
source                 MSH-4 sending facility (HD.1), mapped through the ``facility_sources`` dict
accession_number       IPC-1 (OMI), else OBR-18 placer field 1, else OBR-3 / ORC-3 filler order
patient.id/name/dob    PID-3 (first CX.1), PID-5 (XPN family^given), PID-7 (date part)
patient.other_ids      PID-3 repetitions after the first (CX.1)
patient.address        PID-11 (first XAD: street^other^city^state^postcode^country)
patient.phones/email   PID-13 home and PID-14 business (every XTN; XTN.4 e-mail address)
referrer               ORC-12 ordering provider (else OBR-16); ORC-14 call-back phone as contact
urgency                priority S (stat) or A (ASAP) in TQ1-9, ORC-7.6, OBR-27.6 or OBR-5 -> urgent
study_date             TQ1-7 start, else OBR-7, else ORC-7.4 (date part)
clinical.question      OBR-31 reason for study (CE text, else identifier), repetitions joined
clinical.history       OBR-13 relevant clinical information, DG1-3 diagnoses, unknown OBX text
clinical.symptoms      NTE-3 comments
OBX by OBX-3.1         72514-3 (LOINC) pain intensity; RF red flag (OBX-5.1 code); PAINLOC, PAINNAT,
                       PAINRAD, PAINDUR (weeks), SYMPT, EXAM, EMGNCS, PRIORTX, PRIORIMG, QUESTION
                       (scheme 99SPINEGW, see :mod:`codes`)
=====================  ==========================================================================
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from hl7apy.core import Message
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message

from gateway.referral import codes
from gateway.referral.document import Referral, validate_referral_data
from gateway.referral.errors import HL7ParseError, ReferralValidationError

__all__ = ["SUPPORTED_MESSAGE_TYPES", "build_ack", "parse_hl7_referral"]

SUPPORTED_MESSAGE_TYPES = frozenset({("ORM", "O01"), ("OMI", "O23")})
_URGENT_PRIORITIES = {"S", "A"}
# ERR-3 codes from HL7 table 0357.
_ERROR_APPLICATION = "207^Application internal error^HL70357"
_ERROR_REJECTED = "200^Unsupported message type^HL70357"
_ESCAPES = {"\\F\\": "|", "\\S\\": "^", "\\T\\": "&", "\\R\\": "~", "\\E\\": "\\", "\\.br\\": "\n"}
_OBX_TEXT_FIELDS = {
    codes.PRESENTING_SYMPTOMS.value: "symptoms",
    codes.EXAMINATION.value: "examination",
    codes.EMG_NCS.value: "emg",
    codes.PRIOR_TREATMENT.value: "prior_treatment",
    codes.PRIOR_IMAGING.value: "prior_imaging",
    codes.CLINICAL_QUESTION.value: "question",
}
_OBX_PAIN_FIELDS = {
    codes.PAIN_LOCATION.value: "location",
    codes.PAIN_NATURE.value: "nature",
    codes.PAIN_RADIATION.value: "radiation",
}


def _unescape(text: str) -> str:
    for escaped, plain in _ESCAPES.items():
        text = text.replace(escaped, plain)
    return text


def _normalise(raw: str | bytes) -> str:
    if isinstance(raw, bytes):
        encoded = raw
        try:
            raw = encoded.decode("utf-8")
        except UnicodeDecodeError:
            raw = encoded.decode("latin-1")
    text = raw.strip("\x0b\x1c\r\n ")
    return text.replace("\r\n", "\r").replace("\n", "\r")


def _parse(raw: str | bytes | Message) -> Message:
    if isinstance(raw, Message):
        return raw
    if not isinstance(raw, (str, bytes)):
        raise TypeError("message must be str, bytes or hl7apy Message")
    text = _normalise(raw)
    if not text.startswith("MSH"):
        raise HL7ParseError("not an HL7 v2 message: does not start with an MSH segment")
    try:
        return parse_message(text, find_groups=False)
    except (HL7apyException, ValueError, IndexError) as exc:
        raise HL7ParseError(f"malformed HL7 message ({type(exc).__name__})") from None


def _segments(message: Message, name: str) -> list[Any]:
    return [child for child in message.children if child.name == name]


def _first(message: Message, name: str) -> Any | None:
    found = _segments(message, name)
    return found[0] if found else None


def _components(segment: Any, field: int, repetition: int = 0) -> list[str]:
    """Components of one repetition of a field, unescaped; [] when the field is absent."""
    if segment is None:
        return []
    fields = [child for child in segment.children if child.name == f"{segment.name}_{field}"]
    if len(fields) <= repetition:
        return []
    separator = "^"
    return [_unescape(part) for part in fields[repetition].to_er7().split(separator)]


def _component(segment: Any, field: int, component: int = 1) -> str:
    parts = _components(segment, field)
    return parts[component - 1].split("&")[0].strip() if len(parts) >= component else ""


def _repetitions(segment: Any, field: int) -> list[list[str]]:
    if segment is None:
        return []
    count = len([c for c in segment.children if c.name == f"{segment.name}_{field}"])
    return [_components(segment, field, index) for index in range(count)]


def _coded_text(parts: list[str]) -> str:
    """Text of a CE/CWE value: its text component, else its identifier."""
    if len(parts) >= 2 and parts[1].strip():
        return parts[1].strip()
    return parts[0].strip() if parts else ""


def _hl7_date(value: str, field_name: str) -> str | None:
    if not value:
        return None
    try:
        return datetime.datetime.strptime(value[:8], "%Y%m%d").date().isoformat()
    except ValueError:
        raise HL7ParseError(f"{field_name}: not a valid HL7 date") from None


def _person(parts: list[str]) -> str:
    """XCN/XPN to a readable name: prefix, given, family (ID and suffixes dropped)."""
    return " ".join(p for p in (parts[5:6] + parts[2:3] + parts[1:2]) if p.strip()).strip()


def _message_type(message: Message) -> tuple[str, str]:
    parts = _components(message.msh, 9)
    return (parts[0] if parts else "", parts[1] if len(parts) > 1 else "")


def _accession(message: Message) -> str:
    candidates = [
        (_first(message, "IPC"), 1),
        (_first(message, "OBR"), 18),
        (_first(message, "OBR"), 3),
        (_first(message, "ORC"), 3),
    ]
    for segment, field in candidates:
        value = _component(segment, field)
        if value:
            return value
    raise HL7ParseError("no accession number: IPC-1, OBR-18, OBR-3 and ORC-3 are all empty")


def _is_urgent(message: Message) -> bool:
    orc, obr, tq1 = _first(message, "ORC"), _first(message, "OBR"), _first(message, "TQ1")
    priorities = [_component(tq1, 9), _component(orc, 7, 6), _component(obr, 27, 6), _component(obr, 5)]
    return any(p.upper() in _URGENT_PRIORITIES for p in priorities if p)


def _referrer(message: Message) -> dict[str, str] | None:
    orc, obr = _first(message, "ORC"), _first(message, "OBR")
    name = _person(_components(orc, 12)) or _person(_components(obr, 16))
    if not name:
        return None
    referrer = {"name": name}
    phone = _telephone(_components(orc, 14))
    if phone:
        referrer["contact"] = phone
    return referrer


def _telephone(parts: list[str]) -> str:
    """XTN to text: "+country area local" from XTN.5-7, else the formatted number in XTN.1."""
    country, area, local = (parts + [""] * 7)[4:7]
    if local:
        return " ".join(p for p in (f"+{country}" if country else "", area, local) if p)
    return parts[0] if parts else ""


def _patient(pid: Any) -> dict[str, Any]:
    ids = [parts[0].split("&")[0].strip() for parts in _repetitions(pid, 3) if parts and parts[0].strip()]
    patient: dict[str, Any] = {
        "id": ids[0] if ids else "",
        "name": "^".join(p for p in _components(pid, 5)[:2]),
        "birth_date": _hl7_date(_component(pid, 7), "PID-7"),
    }
    other_ids = list(dict.fromkeys(i for i in ids[1:] if i != patient["id"]))
    if other_ids:
        patient["other_ids"] = other_ids
    address = _address(_components(pid, 11))
    if address:
        patient["address"] = address
    telecoms = _repetitions(pid, 13) + _repetitions(pid, 14)
    phones = list(dict.fromkeys(p for p in (_telephone(parts) for parts in telecoms) if p.strip()))
    if phones:
        patient["phones"] = phones
    emails = [parts[3].strip() for parts in telecoms if len(parts) > 3 and "@" in parts[3]]
    if emails:
        patient["email"] = emails[0]
    return patient


def _address(parts: list[str]) -> dict[str, str]:
    """XAD to the referral's address: street (SAD.1), other, city, state, postcode, country."""
    names = ("street", "other", "town", "region", "postcode", "country")
    return {name: part.split("&")[0].strip() for name, part in zip(names, parts) if part.split("&")[0].strip()}


def _join(*texts: str | None) -> str | None:
    kept = [text.strip() for text in texts if text and text.strip()]
    return "\n".join(kept) if kept else None


def _apply_observations(message: Message, clinical: dict[str, Any], pain: dict[str, Any]) -> None:
    for obx in _segments(message, "OBX"):
        code = _component(obx, 3)
        value = "~".join("^".join(parts) for parts in _repetitions(obx, 5))
        label = f"OBX-3 {code}"
        if code == codes.PAIN_INTENSITY.value:
            pain["intensity"] = _int(value, f"{label} pain intensity")
        elif code == codes.PAIN_DURATION.value:
            pain["duration_weeks"] = _int(value, f"{label} pain duration")
        elif code in ("RF", "REDFLAG"):
            clinical["red_flags"].append(value.split("^")[0].strip())
        elif code in _OBX_PAIN_FIELDS:
            pain[_OBX_PAIN_FIELDS[code]] = _join(pain.get(_OBX_PAIN_FIELDS[code]), value)
        elif code in _OBX_TEXT_FIELDS:
            key = _OBX_TEXT_FIELDS[code]
            clinical[key] = _join(clinical.get(key), value)
        elif _component(obx, 2) in {"TX", "ST", "FT", "CE", "CWE", "NM"}:
            observation = _coded_text(_components(obx, 3)) or code
            clinical["history"] = _join(clinical.get("history"), f"{observation}: {value}")


def _int(value: str, what: str) -> int:
    try:
        return int(float(value.strip()))
    except ValueError:
        raise HL7ParseError(f"{what}: not a number") from None


def _clinical(message: Message) -> dict[str, Any]:
    obr = _first(message, "OBR")
    diagnoses = [_coded_text(parts) for dg1 in _segments(message, "DG1") for parts in [_components(dg1, 3)]]
    clinical: dict[str, Any] = {
        "history": _join(_component(obr, 13), *(f"Diagnosis: {d}" for d in diagnoses if d)),
        "symptoms": _join(*(" ".join(_components(nte, 3)) for nte in _segments(message, "NTE"))),
        "question": _join(*(_coded_text(parts) for parts in _repetitions(obr, 31))),
        "red_flags": [],
    }
    pain: dict[str, Any] = {}
    _apply_observations(message, clinical, pain)
    if pain:
        clinical["pain"] = pain
    return {key: value for key, value in clinical.items() if value not in (None, [])}


def parse_hl7_referral(raw: str | bytes | Message, facility_sources: Mapping[str, str]) -> Referral:
    """Parse an ORM^O01 or OMI^O23 message into a :class:`Referral`.

    Args:
        raw: the ER7 message (segments separated by CR; LF and MLLP framing are tolerated).
        facility_sources: sending facility (MSH-4, first component) -> gateway source name.

    Raises:
        HL7ParseError: malformed message, unsupported type, unknown facility or missing or invalid
            required content; the one-line reason names the HL7 field, never its value.
    """
    message = _parse(raw)
    kind = _message_type(message)
    if kind not in SUPPORTED_MESSAGE_TYPES:
        raise HL7ParseError("MSH-9: unsupported message type (expected ORM^O01 or OMI^O23)")
    facility = _component(message.msh, 4)
    if facility not in facility_sources:
        raise HL7ParseError("MSH-4: sending facility is not mapped to a source")
    pid = _first(message, "PID")
    if pid is None:
        raise HL7ParseError("PID segment missing")
    obr, orc, tq1 = _first(message, "OBR"), _first(message, "ORC"), _first(message, "TQ1")
    study_date = _component(tq1, 7) or _component(obr, 7) or _component(orc, 7, 4)
    data: dict[str, Any] = {
        "source": facility_sources[facility],
        "accession_number": _accession(message),
        "patient": _patient(pid),
        "urgency": "urgent" if _is_urgent(message) else "routine",
        "referrer": _referrer(message),
        "clinical": _clinical(message),
        "study_date": _hl7_date(study_date, "study date (TQ1-7/OBR-7/ORC-7.4)"),
    }
    try:
        return validate_referral_data(data)
    except ReferralValidationError as exc:
        raise HL7ParseError("message content invalid: " + "; ".join(exc.problems)) from None


def build_ack(message: str | bytes | Message, accept: bool, error_text: str | None = None,
              *, reject: bool = False, control_id: str | None = None) -> str:
    """Build the ER7 acknowledgement of ``message``.

    MSA-1 is AA when ``accept``, else AR when ``reject`` (message refused outright, e.g.
    unsupported type) or AE (application error). MSA-2 echoes the original MSH-10. Sender and
    receiver are swapped; MSH-9 is ``ACK^<trigger>^ACK``. On error, MSA-3 and ERR-8 carry
    ``error_text``, which must not contain PHI.

    Raises:
        HL7ParseError: if ``message`` cannot be parsed far enough to read its MSH segment.
    """
    original = _parse(message)
    msh = original.msh
    ack = Message("ACK", version=msh.msh_12.to_er7().split("^")[0] or "2.5")
    ack.msh.msh_3 = msh.msh_5.to_er7()
    ack.msh.msh_4 = msh.msh_6.to_er7()
    ack.msh.msh_5 = msh.msh_3.to_er7()
    ack.msh.msh_6 = msh.msh_4.to_er7()
    trigger = _message_type(original)[1]
    ack.msh.msh_9 = f"ACK^{trigger}^ACK" if trigger else "ACK"
    ack.msh.msh_10 = control_id or "ACK" + datetime.datetime.now(datetime.UTC).strftime("%y%m%d%H%M%S%f")[:16]
    ack.msh.msh_11 = msh.msh_11.to_er7() or "P"
    ack.msa.msa_1 = "AA" if accept else ("AR" if reject else "AE")
    ack.msa.msa_2 = msh.msh_10.to_er7()
    if not accept:
        reason = _escape(error_text or "message not accepted")[:80]
        ack.msa.msa_3 = reason
        ack.add_segment("ERR")
        ack.err.err_3 = _ERROR_REJECTED if reject else _ERROR_APPLICATION
        ack.err.err_4 = "E"
        ack.err.err_8 = reason
    return ack.to_er7()


def _escape(text: str) -> str:
    text = text.replace("\\", "\\E\\")
    for plain, escaped in (("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        text = text.replace(plain, escaped)
    return " ".join(text.split())
