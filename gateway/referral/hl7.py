"""HL7 v2 order messages (ORM^O01, OMI^O23) to :class:`Referral`, and their acknowledgements.

hl7apy reads the envelope: it takes the separators from MSH-1 (field) and MSH-2 (component, repetition,
escape, subcomponent, and in v2.7 truncation), checks the MSH segment and the message structure, and
builds the ACK. Field values are read from each segment's text, split with *those* separators and then
unescaped by :func:`unescape` (HL7 v2.5 chapter 2.7). They are not read through hl7apy's element tree,
which is lossy for this purpose (hl7apy 1.3.5; each point is proved in ``tests/referral/test_hl7_escapes.py``):

- hl7apy has no unescaping at all, and ``to_er7()`` of a parsed text field escapes again every escape
  sequence it does not know: ``\\X41\\`` comes back as ``\\E\\X41\\E\\``, ``\\.br\\`` as
  ``\\E\\.br\\E\\``;
- numeric components are stored as numbers, so a telephone's ``020`` comes back as ``20``.

Field mapping:

=====================  ==========================================================================
Referral field         HL7 source
=====================  ==========================================================================
source                 MSH-4 sending facility (HD.1), mapped through the ``facility_sources`` dict
accession_number       IPC-1 (OMI), else OBR-18 placer field 1, else OBR-3 / ORC-3 filler order
order_number           ORC-2 placer order number (EI.1), else OBR-2
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
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from hl7apy.core import Message
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message

from gateway.referral import codes
from gateway.referral.document import Referral, validate_referral_data
from gateway.referral.errors import HL7ParseError, ReferralValidationError

__all__ = ["SUPPORTED_MESSAGE_TYPES", "Separators", "build_ack", "parse_hl7_referral", "unescape"]

SUPPORTED_MESSAGE_TYPES = frozenset({("ORM", "O01"), ("OMI", "O23")})
_URGENT_PRIORITIES = {"S", "A"}
# ERR-3 codes from HL7 table 0357.
_ERROR_APPLICATION = "207^Application internal error^HL70357"
_ERROR_REJECTED = "200^Unsupported message type^HL70357"
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


class Separators(NamedTuple):
    r"""A message's own encoding characters (MSH-1 and MSH-2); the defaults are ``|^~\&``."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str | None = None  # v2.7: the fifth character of MSH-2, when present

    @classmethod
    def of(cls, message: Message) -> Separators:
        """The separators hl7apy read from the message's MSH-1 and MSH-2."""
        chars = message.encoding_chars
        return cls(chars["FIELD"], chars["COMPONENT"], chars["REPETITION"], chars["ESCAPE"],
                   chars["SUBCOMPONENT"], chars.get("TRUNCATION"))


DEFAULT_SEPARATORS = Separators()
# Formatting commands of FT (chapter 2.7.6) as plain text: line breaks kept, layout dropped.
_FORMATTING = re.compile(r"\.(br|sp|ce|sk|fi|nf|in|ti)(?:\s*([+-]?\d+))?")


def unescape(text: str, separators: Separators = DEFAULT_SEPARATORS) -> str:
    r"""Resolve HL7 v2 escape sequences (chapter 2.7) in one component or subcomponent, left to right.

    ``\F\ \S\ \T\ \R\ \E\`` (and v2.7 ``\P\``) become the message's own separators, ``\Xhh..\`` the bytes
    it spells (UTF-8, else Latin-1), ``\.br\`` and the other formatting commands line breaks or nothing;
    highlighting (``\H\ \N\``), character-set switches (``\C..\ \M..\``) and local escapes (``\Z..\``)
    are dropped. An escape character that opens no known sequence stays as written, and the reading
    goes on from the next one (which may open a sequence), so a sender's unescaped ``C:\dir\file``
    survives. ``\`` stands for the message's escape character throughout.
    """
    escape = separators.escape
    parts: list[str] = []
    position = 0
    while (start := text.find(escape, position)) >= 0:
        end = text.find(escape, start + 1)
        if end < 0:
            break
        meaning = _escape_sequence(text[start + 1:end], separators)
        if meaning is None:  # not a sequence: the escape character and what follows it are text
            parts.append(text[position:end])
        else:
            parts.append(text[position:start] + meaning)
            end += 1
        position = end
    parts.append(text[position:])
    return "".join(parts)


def _escape_sequence(body: str, separators: Separators) -> str | None:
    """The text one escape sequence stands for; None when ``body`` is not a known sequence."""
    named = {"F": separators.field, "S": separators.component, "T": separators.subcomponent,
             "R": separators.repetition, "E": separators.escape, "P": separators.truncation,
             "H": "", "N": ""}
    if body in named:
        return named[body]
    if body[:1] == "X":
        return _hex_text(body[1:])
    if body[:1] in ("Z", "C", "M") and len(body) > 1:
        return ""
    formatting = _FORMATTING.fullmatch(body)
    if formatting:
        return _formatting_text(formatting.group(1), formatting.group(2))
    return None


def _hex_text(digits: str) -> str | None:
    r"""``\Xhh..\``: the bytes as text (line ends as ``\n``); None when not an even run of hex digits."""
    if not digits or len(digits) % 2 or not re.fullmatch(r"[0-9A-Fa-f]+", digits):
        return None
    data = bytes.fromhex(digits)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _formatting_text(command: str, number: str | None) -> str:
    count = int(number) if number else 1
    if command == "br":
        return "\n"
    if command == "sp":
        return "\n" * (1 + max(count, 0))  # end the line, then skip ``count`` lines
    if command == "ce":
        return "\n"
    if command == "sk":
        return " " * max(count, 0)
    return ""  # .fi .nf .in .ti: fill and indent, nothing in plain text


def _escape(text: str) -> str:
    """Plain text as one ER7 value in the default separators (the ACK's), on one line."""
    text = text.replace("\\", "\\E\\")
    for plain, escaped in (("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        text = text.replace(plain, escaped)
    return " ".join(text.split())


@dataclass(frozen=True)
class _Segment:
    """One segment's fields as written (``fields[n]`` is SEG-n), and the message's separators."""

    name: str
    fields: tuple[str, ...]
    separators: Separators

    def field(self, number: int) -> str:
        return self.fields[number] if number < len(self.fields) else ""


@dataclass(frozen=True)
class _Message:
    """A parsed message: hl7apy's reading of it, and its segments as written."""

    hl7apy: Message
    segments: tuple[_Segment, ...]

    @property
    def msh(self) -> _Segment:
        return self.segments[0]

    def all(self, name: str) -> list[_Segment]:
        return [segment for segment in self.segments if segment.name == name]

    def first(self, name: str) -> _Segment | None:
        found = self.all(name)
        return found[0] if found else None


def _normalise(raw: str | bytes) -> str:
    if isinstance(raw, bytes):
        try:
            decoded = raw.decode("utf-8")
        except UnicodeDecodeError:
            decoded = raw.decode("latin-1")
    else:
        decoded = raw
    text = decoded.strip("\x0b\x1c\r\n ")
    return text.replace("\r\n", "\r").replace("\n", "\r")


def _parse(raw: str | bytes | Message) -> _Message:
    if isinstance(raw, Message):
        raw = raw.to_er7()
    if not isinstance(raw, (str, bytes)):
        raise TypeError("message must be str, bytes or hl7apy Message")
    text = _normalise(raw)
    if not text.startswith("MSH"):
        raise HL7ParseError("not an HL7 v2 message: does not start with an MSH segment")
    try:
        message = parse_message(text, find_groups=False)
    except (HL7apyException, ValueError, IndexError) as exc:
        raise HL7ParseError(f"malformed HL7 message ({type(exc).__name__})") from None
    separators = Separators.of(message)
    return _Message(message, tuple(_split_segment(line.strip(), separators)
                                   for line in text.split("\r") if line.strip()))


def _split_segment(text: str, separators: Separators) -> _Segment:
    """Fields of one segment as written; MSH-1 is the field separator itself, MSH-2 the rest of MSH-2."""
    parts = text.split(separators.field)
    if parts[0] == "MSH":
        return _Segment("MSH", ("MSH", separators.field, *parts[1:]), separators)
    return _Segment(parts[0], tuple(parts), separators)


def _leaves(segment: _Segment | None, field: int, repetition: int = 0) -> list[list[str]]:
    """One repetition of a field as components of unescaped subcomponents; [] when absent."""
    if segment is None:
        return []
    text = segment.field(field)
    if not text:
        return []
    separators = segment.separators
    repetitions = [text] if (segment.name, field) == ("MSH", 2) else text.split(separators.repetition)
    if len(repetitions) <= repetition:
        return []
    return [[unescape(sub, separators) for sub in component.split(separators.subcomponent)]
            for component in repetitions[repetition].split(separators.component)]


def _repetition_count(segment: _Segment | None, field: int) -> int:
    if segment is None or not segment.field(field):
        return 0
    return len(segment.field(field).split(segment.separators.repetition))


def _components(segment: _Segment | None, field: int, repetition: int = 0) -> list[str]:
    """The first subcomponent of each component of one repetition, unescaped; [] when absent."""
    return [subcomponents[0] for subcomponents in _leaves(segment, field, repetition)]


def _component(segment: _Segment | None, field: int, component: int = 1) -> str:
    parts = _components(segment, field)
    return parts[component - 1].strip() if len(parts) >= component else ""


def _repetitions(segment: _Segment | None, field: int) -> list[list[str]]:
    return [_components(segment, field, index) for index in range(_repetition_count(segment, field))]


def _text(segment: _Segment | None, field: int, component_joiner: str | None = None) -> str:
    """A text field whole: every repetition, component and subcomponent unescaped, joined again by the
    separators the sender wrote (so ``pain & numbness`` stays whole) or ``component_joiner``."""
    if segment is None:
        return ""
    separators = segment.separators
    joiner = separators.component if component_joiner is None else component_joiner
    return separators.repetition.join(
        joiner.join(separators.subcomponent.join(subs) for subs in _leaves(segment, field, index))
        for index in range(_repetition_count(segment, field)))


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


def _message_type(message: _Message) -> tuple[str, str]:
    parts = _components(message.msh, 9)
    return (parts[0] if parts else "", parts[1] if len(parts) > 1 else "")


def _accession(message: _Message) -> str:
    candidates = [
        (message.first("IPC"), 1),
        (message.first("OBR"), 18),
        (message.first("OBR"), 3),
        (message.first("ORC"), 3),
    ]
    for segment, field in candidates:
        value = _component(segment, field)
        if value:
            return value
    raise HL7ParseError("no accession number: IPC-1, OBR-18, OBR-3 and ORC-3 are all empty")


def _is_urgent(message: _Message) -> bool:
    orc, obr, tq1 = message.first("ORC"), message.first("OBR"), message.first("TQ1")
    priorities = [_component(tq1, 9), _component(orc, 7, 6), _component(obr, 27, 6), _component(obr, 5)]
    return any(p.upper() in _URGENT_PRIORITIES for p in priorities if p)


def _referrer(message: _Message) -> dict[str, str] | None:
    orc, obr = message.first("ORC"), message.first("OBR")
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


def _patient(pid: _Segment) -> dict[str, Any]:
    ids = [parts[0].strip() for parts in _repetitions(pid, 3) if parts and parts[0].strip()]
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
    return {name: part.strip() for name, part in zip(names, parts) if part.strip()}


def _join(*texts: str | None) -> str | None:
    kept = [text.strip() for text in texts if text and text.strip()]
    return "\n".join(kept) if kept else None


def _apply_observations(message: _Message, clinical: dict[str, Any], pain: dict[str, Any]) -> None:
    for obx in message.all("OBX"):
        code = _component(obx, 3)
        value = _text(obx, 5)
        label = f"OBX-3 {code}"
        if code == codes.PAIN_INTENSITY.value:
            pain["intensity"] = _int(value, f"{label} pain intensity")
        elif code == codes.PAIN_DURATION.value:
            pain["duration_weeks"] = _int(value, f"{label} pain duration")
        elif code in ("RF", "REDFLAG"):
            clinical["red_flags"].append(_component(obx, 5))
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


def _clinical(message: _Message) -> dict[str, Any]:
    obr = message.first("OBR")
    diagnoses = [_coded_text(parts) for dg1 in message.all("DG1") for parts in [_components(dg1, 3)]]
    clinical: dict[str, Any] = {
        "history": _join(_text(obr, 13), *(f"Diagnosis: {d}" for d in diagnoses if d)),
        "symptoms": _join(*(_text(nte, 3, component_joiner=" ") for nte in message.all("NTE"))),
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
        raw: the ER7 message (segments separated by CR; LF and MLLP framing are tolerated); an hl7apy
            ``Message`` is read from its ``to_er7()``.
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
    pid = message.first("PID")
    if pid is None:
        raise HL7ParseError("PID segment missing")
    obr, orc, tq1 = message.first("OBR"), message.first("ORC"), message.first("TQ1")
    study_date = _component(tq1, 7) or _component(obr, 7) or _component(orc, 7, 4)
    data: dict[str, Any] = {
        "source": facility_sources[facility],
        "accession_number": _accession(message),
        "order_number": _component(orc, 2) or _component(obr, 2) or None,
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
    ack = Message("ACK", version=_component(msh, 12) or "2.5")
    ack.msh.msh_3 = _reencoded(msh, 5)
    ack.msh.msh_4 = _reencoded(msh, 6)
    ack.msh.msh_5 = _reencoded(msh, 3)
    ack.msh.msh_6 = _reencoded(msh, 4)
    trigger = _escape(_message_type(original)[1])
    ack.msh.msh_9 = f"ACK^{trigger}^ACK" if trigger else "ACK"
    ack.msh.msh_10 = control_id or "ACK" + datetime.datetime.now(datetime.UTC).strftime("%y%m%d%H%M%S%f")[:16]
    ack.msh.msh_11 = _reencoded(msh, 11) or "P"
    ack.msa.msa_1 = "AA" if accept else ("AR" if reject else "AE")
    ack.msa.msa_2 = _reencoded(msh, 10)
    if not accept:
        reason = _escape((error_text or "message not accepted")[:80])
        ack.msa.msa_3 = reason
        ack.add_segment("ERR")
        ack.err.err_3 = _ERROR_REJECTED if reject else _ERROR_APPLICATION
        ack.err.err_4 = "E"
        ack.err.err_8 = reason
    return ack.to_er7()


def _reencoded(segment: _Segment, field: int) -> str:
    """A field of the original (first repetition) in the ACK's default separators: the original may use
    others (MSH-1, MSH-2), so its text cannot be copied as written."""
    return "^".join("&".join(_escape(sub) for sub in subs) for subs in _leaves(segment, field)).rstrip("^&")
