"""The hand-written referral corpus of ``tests/referral/corpus/``: a development half and a held-out half.

Each file holds cases written by hand, in the block format below, by writers who had not read the scrubber
(``gateway/referral/``, ``gateway/privacy/``); the held-out half is measured, never tuned on::

    ### case: ha-001
    style: uk                       (uk, us, de, fr, nordic, india, gulf)
    language: en                    (en, de, fr)
    patient: Family^Given           (declared; alias: repeats for other scripts)
    birth_date: 1958-07-02
    patient_id: RX1234567
    accession: RAD123
    referrer: Family^Given          (optional; so are street, town, postcode, country, phone, email, other_id)
    text:
    marked-up text, as in :mod:`notes_corpus`
    ### end

:func:`load` turns each block into a :class:`notes_corpus.Case` and the :class:`~gateway.referral.document.Referral`
the node would receive: the scrubber is then given what the node gives it for that referral.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from pathlib import Path

from gateway.referral.document import Referral
from notes_corpus import Case, parse

ROOT = Path(__file__).parent / "corpus"
HALVES = ("dev", "heldout")
_BLOCK = re.compile(r"^### case: *(?P<key>\S+)\s*\n(?P<body>.*?)^### end\s*$", re.MULTILINE | re.DOTALL)
_REPEATED = ("alias", "phone", "other_id")


@dataclass
class CorpusCase:
    case: Case
    referral: Referral
    style: str
    language: str


def load(half: str) -> list[CorpusCase]:
    """Every case of one half (``dev`` or ``heldout``), in file and block order."""
    cases: list[CorpusCase] = []
    for path in sorted((ROOT / half).glob("*.txt")):
        for match in _BLOCK.finditer(path.read_text(encoding="utf-8")):
            cases.append(_case(match.group("key"), match.group("body")))
    return cases


def _case(key: str, body: str) -> CorpusCase:
    header_text, _, marked = body.partition("\ntext:\n") if not body.startswith("text:\n") else ("", "", body[6:])
    fields: dict[str, list[str]] = {}
    for line in header_text.splitlines():
        name, sep, value = line.partition(":")
        if sep and value.strip():
            fields.setdefault(name.strip(), []).append(value.strip())
    style = _one(fields, "style", "uk").split()[0].split("|")[0]
    referral = _referral(fields, marked)
    case = parse(key, "us" if style == "us" else ("de" if style == "de" else "uk"), marked.rstrip("\n"), {})
    return CorpusCase(case, referral, style, _one(fields, "language", "en"))


def _one(fields: dict[str, list[str]], name: str, default: str = "") -> str:
    return fields.get(name, [default])[0]


def _referral(fields: dict[str, list[str]], marked: str) -> Referral:
    name = "=".join([_one(fields, "patient", "Unknown^Patient"), *fields.get("alias", [])])
    address = {part: _one(fields, part) for part in ("street", "town", "postcode", "country") if _one(fields, part)}
    birth = _one(fields, "birth_date")
    patient: dict = {"id": _one(fields, "patient_id", "UNKNOWN"), "name": name,
                     "phones": fields.get("phone", []), "other_ids": fields.get("other_id", [])}
    if birth:
        patient["birth_date"] = datetime.date.fromisoformat(birth).isoformat()
    if address:
        patient["address"] = address
    if _one(fields, "email"):
        patient["email"] = _one(fields, "email")
    document: dict = {"source": "CORPUS", "accession_number": _one(fields, "accession", "ACC1"),
                      "patient": patient, "clinical": {"history": parse("x", "uk", marked, {}).text}}
    if _one(fields, "referrer"):
        document["referrer"] = {"name": _one(fields, "referrer")}
    return Referral.model_validate(document)
