"""Every identifier the node holds for one case, and the search terms that find them in outgoing text.

One :class:`IdentifierSet` gathers, for a case:

- from the original DICOM header (kept in ``StudyIdentity``, see :func:`header_values`): every person name
  (patient, other and birth names, mother's birth name, referring, requesting, performing and reading
  physicians, operators, physicians of record; alphabetic, ideographic and phonetic groups), the patient's
  address split into street, town and postcode, telephone numbers and telecom addresses, patient and other
  patient IDs, accession number, birth date, institution name, address and department;
- from the referral: the patient (name, IDs, birth date, address, phones, e-mail), the referrer and contact;
- the source the study came from (configured name and AE title), and the original UIDs.

The scrubber and the outbound guard use the same set: the notes stage turns it into the scrubber's
``KnownIdentifiers``, and :meth:`IdentifierSet.search_terms` gives the guard (or any other check, such as
burned-in text) compiled patterns over :func:`gateway.privacy.text.fold`-ed text.

How a value is searched for:

- a person name: each pair of its words in a row, in either order ("Jane Doe", "Doe, Jane", "Smith-Jones"),
  each of its words after a title ("Mr Long", "Prof. Hand"), and each distinctive word on its own
  (:func:`gateway.privacy.words.is_distinctive`: "Hargreaves" yes, "Long" or "Prior" no); an ideographic
  or phonetic group as written (王伟), without word boundaries;
- an address, institution, department or source: the whole value when it has a distinctive word, and each
  distinctive word on its own; a postcode always, spaces optional;
- IDs and e-mail addresses as written, separators optional; phone numbers by their digits from the area
  code on, whatever the separators;
- the birth date in every common written form (ISO, compact, d/m/y, m/d/y, d.m.y, y/m/d, "5 March 1971",
  "5th of March 1971", "March 5, 1971", "05-Mar-1971", German month names, two-digit years);
- original UIDs as written.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from functools import cached_property
from typing import Any, cast

from gateway.privacy.text import fold, has_non_latin_letters, spelling_variants, words
from gateway.privacy.words import EPONYM_TAIL, TITLES, is_distinctive, zipf

__all__ = [
    "HEADER_KEYWORDS",
    "IdentifierSet",
    "SearchTerm",
    "from_header",
    "from_referral",
    "header_values",
    "identifier_set_for_study",
    "merge_header_values",
    "name_groups",
    "split_address",
]

#: Header attributes whose values the node keeps for the case (``StudyIdentity.header_values``), by role.
PATIENT_NAME_KEYWORDS = ("PatientName", "OtherPatientNames", "PatientBirthName")
RELATIVE_NAME_KEYWORDS = ("PatientMotherBirthName", "ResponsiblePerson")
CLINICIAN_NAME_KEYWORDS = ("ReferringPhysicianName", "RequestingPhysician", "PerformingPhysicianName",
                           "OperatorsName", "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy",
                           "ScheduledPerformingPhysicianName", "PhysicianApprovingInterpretation")
ADDRESS_KEYWORDS = ("PatientAddress", "ReferringPhysicianAddress", "RegionOfResidence")
PHONE_KEYWORDS = ("PatientTelephoneNumbers", "ReferringPhysicianTelephoneNumbers")
TELECOM_KEYWORDS = ("PatientTelecomInformation",)
ID_KEYWORDS = ("PatientID", "OtherPatientIDs", "IssuerOfPatientID", "AccessionNumber", "MedicalRecordLocator")
INSTITUTION_KEYWORDS = ("InstitutionName",)
ORGANISATION_KEYWORDS = ("InstitutionAddress", "InstitutionalDepartmentName", "RequestingService")
BIRTH_DATE_KEYWORDS = ("PatientBirthDate",)
HEADER_KEYWORDS = (*PATIENT_NAME_KEYWORDS, *RELATIVE_NAME_KEYWORDS, *CLINICIAN_NAME_KEYWORDS, *ADDRESS_KEYWORDS,
                   *PHONE_KEYWORDS, *TELECOM_KEYWORDS, *ID_KEYWORDS, *INSTITUTION_KEYWORDS,
                   *ORGANISATION_KEYWORDS, *BIRTH_DATE_KEYWORDS)
_MAX_VALUES_PER_KEYWORD = 32
_MEMO_MAX_TEXT = 256
_MEMO_MAX_ENTRIES = 8192

# Searched in folded text: a "word" character is a folded letter or digit.
_B = "(?<![a-z0-9])"
_E = "(?![a-z0-9])"
_NAME_JOIN = r"[\s,.\-]{1,3}"
_PHRASE_JOIN = r"[^a-z0-9]{1,3}"
_ID_JOIN = r"[\s\-/.]?"
# Titles that stand before a surname ("Mr Long", "Prof. Hand", "Frau Lang").
_PREFIX_TITLES = ("dr", "mr", "mrs", "ms", "miss", "mx", "master", "prof", "professor", "sir", "dame", "lord", "lady",
                  "rev", "revd", "reverend", "sister", "nurse", "herr", "frau", "hr", "fr", "madame", "mme", "mlle",
                  "monsieur")
_PREFIX_TITLE = "(?:" + "|".join(sorted(_PREFIX_TITLES, key=len, reverse=True)) + r")\.?\s+"
_UK_POSTCODE = re.compile(r"\b(?:[A-Z]{1,2}\d[A-Z\d]?|GIR) ?\d[ABD-HJLNP-UW-Z]{2}\b", re.IGNORECASE)
_ZIP = re.compile(r"\b\d{5}(?:-\d{4})?\b|\b[A-Z]\d[A-Z] ?\d[A-Z]\d\b", re.IGNORECASE)  # US, DE/FR, CA
_STREET_WORDS = frozenset("""
road rd street st avenue ave av lane ln drive dr close way crescent place pl court ct terrace gardens grove
square sq park parade row walk hill mews green boulevard blvd highway hwy strasse str weg gasse platz allee
ring damm ufer chaussee pfad steig rue
""".split())
_MIN_ID_WITH_LETTER = 3
_MIN_ID_DIGITS = 5
_MIN_PHONE_DIGITS = 7
_PHONE_TAIL_DIGITS = 9

_MONTHS_EN = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
              "november", "december")
_MONTHS_DE = ("januar", "februar", "marz", "april", "mai", "juni", "juli", "august", "september", "oktober",
              "november", "dezember")
_MONTHS_OTHER = (("janvier", "januari", "enero"), ("fevrier", "februari", "febrero", "fevr"),
                 ("mars", "marts", "marzo"), ("avril", "abril", "avr"), ("maj", "mayo"), ("juin", "junio"),
                 ("juillet", "julio", "juil"), ("aout", "augusti", "agosto"), ("septembre", "septiembre"),
                 ("octobre", "octubre"), ("novembre", "noviembre"), ("decembre", "diciembre"))
_MONTH_EXTRA = {1: ("jan", "janner", "jaenner"), 2: ("feb",), 3: ("mar", "mrz", "maerz"), 4: ("apr",),
                5: (), 6: ("jun",), 7: ("jul",), 8: ("aug",), 9: ("sep", "sept"), 10: ("oct", "okt"),
                11: ("nov",), 12: ("dec", "dez")}


@dataclass(frozen=True)
class SearchTerm:
    """A compiled pattern for one kind of identifier (``kind`` names the kind, never a value).

    ``folded`` patterns run over :func:`gateway.privacy.text.fold`-ed text; the others (ideographic and
    phonetic name groups, UIDs) over the text as written, NFKC-normalised.
    """

    kind: str
    pattern: re.Pattern[str]
    folded: bool = True


@dataclass(frozen=True)
class IdentifierSet:
    """Every identifier the node holds for one case (PHI: never logged, never sent).

    Person names are kept as written (DICOM PN with ``^`` components and ``=`` groups, or free text such as
    "Dr Alan Smith"); addresses already split into streets, towns and postcodes.
    """

    patient_names: tuple[str, ...] = ()
    relative_names: tuple[str, ...] = ()
    clinician_names: tuple[str, ...] = ()
    ids: tuple[str, ...] = ()
    birth_dates: tuple[dt.date, ...] = ()
    streets: tuple[str, ...] = ()
    towns: tuple[str, ...] = ()
    postcodes: tuple[str, ...] = ()
    phones: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    institutions: tuple[str, ...] = ()
    organisations: tuple[str, ...] = ()
    institution_addresses: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    uids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for item in fields(self):
            values = getattr(self, item.name)
            if isinstance(values, (str, bytes)):
                raise TypeError(f"IdentifierSet.{item.name} must be a sequence, not a single value")
            kept = tuple(dict.fromkeys(v for v in values if v is not None and (not isinstance(v, str) or v.strip())))
            object.__setattr__(self, item.name, kept)

    # --- combining ---

    def merged(self, *others: IdentifierSet) -> IdentifierSet:
        """This set and ``others`` together (duplicates removed, order kept)."""
        values = {item.name: list(getattr(self, item.name)) for item in fields(self)}
        for other in others:
            for name in values:
                values[name] += getattr(other, name)
        return IdentifierSet(**{name: tuple(v) for name, v in values.items()})

    def without(self, *names: str) -> IdentifierSet:
        """This set less whole categories (``"institutions"`` under Retain Institution Identity, ...)."""
        return replace(self, **{name: () for name in names})

    @property
    def person_names(self) -> tuple[str, ...]:
        return (*self.patient_names, *self.relative_names, *self.clinician_names)

    @property
    def places(self) -> tuple[str, ...]:
        """The patient's (and referrer's) address parts."""
        return (*self.streets, *self.towns, *self.postcodes)

    @property
    def institution_places(self) -> tuple[str, ...]:
        """The institution's address parts."""
        return tuple(part for parts in _split_all(self.institution_addresses) for part in parts)

    # --- searching ---

    def search_terms(self) -> tuple[SearchTerm, ...]:
        """Compiled patterns, one or a few per kind of identifier (see the module's docstring)."""
        return self._compiled

    def kinds_found(self, text: str) -> list[str]:
        """Every kind of identifier found in ``text`` (once each).

        Short texts are remembered: the images of a study repeat most of their values."""
        if len(text) > _MEMO_MAX_TEXT:
            return self._search(text)
        memo = self._memo
        if text not in memo:
            if len(memo) >= _MEMO_MAX_ENTRIES:
                memo.clear()
            memo[text] = self._search(text)
        return list(memo[text])

    def _search(self, text: str) -> list[str]:
        folded, raw = fold(text), _nfkc(text)
        terms = self._compiled if any(c.isupper() for c in raw) else self._compiled + self._lowercase_text_terms
        return list(dict.fromkeys(term.kind for term in terms
                                  if term.pattern.search(folded if term.folded else raw)))

    @cached_property
    def _lowercase_text_terms(self) -> tuple[SearchTerm, ...]:
        """A text written without capitals cannot tell "Baker" from "a baker": there, a surname that is an ordinary
        word is a hit as written (the guard then errs towards quarantine, as before the capital rule)."""
        terms: list[SearchTerm] = []
        for kind, names in (("patient name", self.patient_names), ("relative name", self.relative_names),
                            ("clinician name", self.clinician_names)):
            ordinary = [_word_body(part) + _NOT_IN_CLINICAL_TERM
                        for name in names for group in name_groups(name)
                        if not any(has_non_latin_letters(w) for w in group)
                        for word in _name_parts(group) for part in word
                        if is_distinctive(part) and _ordinary_word(part)]
            terms += _alternation(kind, ordinary)
        return tuple(terms)

    @cached_property
    def _memo(self) -> dict[str, list[str]]:
        return {}

    @cached_property
    def _compiled(self) -> tuple[SearchTerm, ...]:
        terms: list[SearchTerm] = []
        for kind, names in (("patient name", self.patient_names), ("relative name", self.relative_names),
                            ("clinician name", self.clinician_names)):
            terms += _name_terms(kind, names)
        terms += _alternation("id", [_id_body(v) for v in self.ids])
        terms += _alternation("birth date", [body for d in self.birth_dates for body in _date_bodies(d)],
                              boundary=("(?<![0-9])", "(?![0-9])"))
        terms += _alternation("address", [b for v in (*self.streets, *self.towns) for b in _phrase_bodies(v)])
        terms += _alternation("postcode", [_compact_body(v) for v in self.postcodes])
        terms += _alternation("phone", [b for b in map(_phone_body, self.phones) if b],
                              boundary=("", "(?![0-9])"))
        terms += _alternation("e-mail", [re.escape(fold(v)) for v in self.emails])
        terms += _alternation("institution", [b for v in self.institutions for b in _phrase_bodies(v)])
        terms += _alternation("organisation", [b for v in self.organisations for b in _phrase_bodies(v)])
        institution_streets, institution_towns, institution_postcodes = _split_all(self.institution_addresses)
        terms += _alternation("institution address", [b for v in (*institution_streets, *institution_towns)
                                                      for b in _phrase_bodies(v)])
        terms += _alternation("institution address", [_compact_body(v) for v in institution_postcodes])
        terms += _alternation("source", [b for v in self.sources for b in _phrase_bodies(v)])
        uids = [re.escape(u.strip()) for u in self.uids if u.strip()]
        if uids:
            terms.append(SearchTerm("uid", re.compile(r"(?<![0-9.])(?:" + "|".join(uids) + r")(?![0-9.])"),
                                    folded=False))
        return tuple(terms)


# --- patterns ---

def _nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def _alternation(kind: str, bodies: Iterable[str], boundary: tuple[str, str] = (_B, _E)) -> list[SearchTerm]:
    unique = sorted(set(b for b in bodies if b), key=len, reverse=True)
    if not unique:
        return []
    start, end = boundary
    return [SearchTerm(kind, re.compile(f"{start}(?:{'|'.join(unique)}){end}"))]


def _word_body(word: str) -> str:
    """A folded word; an apostrophe in it is optional (O'Brien, OBrien)."""
    return re.escape(word).replace("'", "'?")


def name_groups(value: str) -> list[list[str]]:
    """The groups of a person name (alphabetic, ideographic, phonetic), each as its name words in reading
    order (given, middle, family).

    A DICOM PN value ("WANG^WEI=王^伟=ワン^ウェイ") gives one list per group, prefix and suffix dropped;
    free text ("Dr Alan Smith") gives one list, as written; titles are dropped either way. Words keep their
    script and their hyphens.
    """
    value = value.strip()
    if "^" in value or "=" in value:
        groups = []
        for group in value.split("="):
            family, given, middle = (group.split("^") + [""] * 3)[:3]
            groups.append([w for part in (given, middle, family) for w in part.split() if w])
    else:
        groups = [re.split(r"[\s,]+", value)]
    return [[w.strip(".,") for w in group if w.strip(".,") and fold(w).strip(".") not in TITLES]
            for group in groups]


def _name_terms(kind: str, names: Sequence[str]) -> list[SearchTerm]:
    folded_bodies: list[str] = []
    raw_bodies: list[str] = []
    for name in names:
        for group in name_groups(name):
            if not group:
                continue
            if any(has_non_latin_letters(w) for w in group):
                raw_bodies += _raw_name_bodies(group)
            folded_bodies += _latin_name_bodies(group)
    terms = _alternation(kind, folded_bodies)
    capitalised = [_capitalised_body(part) for name in names for group in name_groups(name)
                   if not any(has_non_latin_letters(w) for w in group)
                   for word in _name_parts(group) for part in word if is_distinctive(part) and _ordinary_word(part)]
    if capitalised:
        terms.append(SearchTerm(kind, re.compile(
            rf"(?<![^\W_])(?:{'|'.join(sorted(set(capitalised), key=len, reverse=True))})(?![^\W_])"), folded=False))
    if raw_bodies:
        unique = sorted(set(raw_bodies), key=len, reverse=True)
        terms.append(SearchTerm(kind, re.compile("|".join(unique)), folded=False))
    return terms


def _name_parts(group: list[str]) -> list[tuple[str, ...]]:
    """Each name word as its folded parts ("Smith-Jones": smith, jones), one tuple per spelling variant."""
    return [tuple(dict.fromkeys(part for variant in spelling_variants(word) for part in words(variant)))
            for word in group]


#: A surname inside a clinical term is no hit ("Jefferson fracture", "Paget's disease", "maladie de Charcot",
#: "Morbus Bechterew"); the same surname anywhere else is.
_NOT_IN_CLINICAL_TERM = rf"(?!{EPONYM_TAIL})"
_ORDINARY_ZIPF = 3.5  # "baker" 4.2, "stone" 4.9; "hargreaves" 2.8, "kettering" 2.9
_NOT_AFTER_CLINICAL = r"(?<!morbus )(?<!maladie de )(?<!signe de )(?<!syndrome de )(?<!maladie d')(?<!signe d')"


def _latin_name_bodies(group: list[str]) -> list[str]:
    """Two name words in reading order ("Jane Doe", "Jane Marie", "Smith-Jones"), or family first with a
    comma ("Doe, Jane"); each word after a title ("Mr Long"); each distinctive word alone ("Hargreaves")."""
    parts = [p for word in _name_parts(group) for p in word]
    bodies: list[str] = []
    for part in dict.fromkeys(parts):
        bodies.append(_PREFIX_TITLE + _word_body(part))
        if is_distinctive(part) and not _ordinary_word(part):
            bodies.append(_NOT_AFTER_CLINICAL + _word_body(part) + _NOT_IN_CLINICAL_TERM)
    for i, first in enumerate(parts):
        for second in parts[i + 1:]:
            if first != second:
                bodies.append(_word_body(first) + _NAME_JOIN + _word_body(second))
                bodies.append(_word_body(second) + r"\s*,\s*" + _word_body(first))
    return bodies


def _ordinary_word(part: str) -> bool:
    """A name word that is also an ordinary English word ("baker", "stone", "walker"): alone, it is the name
    only where it is written capitalised ("Baker", "BAKER"); "a retired baker" is the word."""
    return part.isascii() and part.isalpha() and zipf(part) >= _ORDINARY_ZIPF


def _capitalised_body(part: str) -> str:
    """``part`` as written with a capital first letter (the rest in any case), not inside a clinical term."""
    not_after = "".join(f"(?<!(?i:{re.escape(p)}))" for p in ("morbus ", "maladie de ", "signe de ",
                                                              "syndrome de ", "maladie d'", "signe d'"))
    return not_after + re.escape(part[0].upper()) + f"(?i:{_word_body(part[1:])}{_NOT_IN_CLINICAL_TERM})"


def _raw_name_bodies(group: list[str]) -> list[str]:
    """An ideographic or phonetic group as written: its words together, any or no space or dot between."""
    if sum(len(w) for w in group) < 2:
        return []
    joined = r"[\s・·.]*".join(re.escape(_nfkc(w)) for w in group)
    bodies = [joined]
    if len(group) >= 2:
        bodies.append(r"[\s・·.]*".join(re.escape(_nfkc(w)) for w in reversed(group)))
    return bodies


def _phrase_bodies(value: str) -> list[str]:
    """A place, institution or source: whole when it has a distinctive word; distinctive words alone
    ("Hospital A" is not searched: "admitted to hospital a week ago")."""
    bodies: list[str] = []
    for variant in spelling_variants(value):
        parts = words(variant)
        if not parts:
            continue
        distinctive = [p for p in parts if not p.isdigit() and is_distinctive(p)]
        if distinctive:
            bodies.append(_PHRASE_JOIN.join(_word_body(p) for p in parts))
        bodies += [_word_body(p) for p in distinctive]
    return bodies


def _compact_body(value: str) -> str:
    characters = [c for c in fold(value) if c.isalnum()]
    return r"\s?".join(re.escape(c) for c in characters) if len(characters) >= 3 else ""


def _id_body(value: str) -> str:
    characters = [c for c in fold(value) if c.isalnum()]
    has_letter = any(c.isalpha() for c in characters)
    if len(characters) < (_MIN_ID_WITH_LETTER if has_letter else _MIN_ID_DIGITS):
        return ""
    return _ID_JOIN.join(re.escape(c) for c in characters)


def _phone_body(value: str) -> str:
    """Digits from the area code on (country code and trunk 0 dropped), any separators between them."""
    digits = re.sub(r"\D", "", value)
    if len(digits) < _MIN_PHONE_DIGITS:
        return ""
    tail = digits[-_PHONE_TAIL_DIGITS:] if len(digits) > _PHONE_TAIL_DIGITS else digits.lstrip("0")
    return r"[\s\-./()]{0,3}".join(tail)


def _date_bodies(day: dt.date) -> list[str]:
    d, m, y = day.day, day.month, day.year
    days = f"0?{d}" if d < 10 else f"{d}"
    months = f"0?{m}" if m < 10 else f"{m}"
    years = f"(?:{y}|{y % 100:02d})"
    sep = r"[\s./\-]{1,2}"
    names = (_MONTHS_EN[m - 1], _MONTHS_DE[m - 1], _MONTHS_EN[m - 1][:3], *_MONTH_EXTRA[m], *_MONTHS_OTHER[m - 1])
    month_name = "(?:" + "|".join(sorted(set(names), key=len, reverse=True)) + r")\.?"
    ordinal = r"(?:st|nd|rd|th|er|re|e|\.)?"
    return [
        f"{y}{m:02d}{d:02d}",
        f"{y}{sep}{months}{sep}{days}",
        f"{days}{sep}{months}{sep}{years}",
        f"{months}{sep}{days}{sep}{years}",
        rf"{days}{ordinal}[\s\-./]{{0,3}}(?:of\s+)?{month_name}[\s\-.,/]{{0,3}}{years}",
        rf"{month_name}\s*{days}{ordinal},?\s+{years}",
    ]


# --- building ---

def split_address(value: str) -> tuple[list[str], list[str], list[str]]:
    """Streets, towns and postcodes of one address ("12 Acacia Avenue, Kettering NN15 7QT", or the HL7 form
    "Hauptstr. 5^^Berlin^^10115^DEU").

    Postcodes are found by their national forms (UK, US ZIP, five-digit European, Canadian); a part with a
    house number or a street word (Road, Straße, Weg, ...) is a street; any other part is a town (or region,
    or country).
    """
    streets: list[str] = []
    towns: list[str] = []
    postcodes: list[str] = []
    for part in re.split(r"[\^,;\n\r]+", value):
        rest = part
        for pattern in (_UK_POSTCODE, _ZIP):
            for match in pattern.finditer(rest):
                postcodes.append(match.group(0).strip())
            rest = pattern.sub(" ", rest)
        rest = " ".join(rest.split()).strip(" .-")
        if not rest:
            continue
        part_words = words(fold(rest))
        if any(w.isdigit() for w in part_words) or any(w in _STREET_WORDS or w.endswith(("strasse", "weg"))
                                                       for w in part_words):
            streets.append(rest)
        else:
            towns.append(rest)
    return streets, towns, postcodes


def _split_all(addresses: Iterable[str]) -> tuple[list[str], list[str], list[str]]:
    streets: list[str] = []
    towns: list[str] = []
    postcodes: list[str] = []
    for address in addresses:
        s, t, p = split_address(address)
        streets += s
        towns += t
        postcodes += p
    return streets, towns, postcodes


def _telecom_parts(value: str) -> tuple[list[str], list[str]]:
    """Phones and e-mail addresses in a telecom value (e.g. PatientTelecomInformation)."""
    emails = re.findall(r"[\w.+\-]+@[\w\-]+(?:\.[\w\-]+)+", value)
    rest = value
    for email in emails:
        rest = rest.replace(email, " ")
    phones = [p for p in re.split(r"[\\;,]+", rest) if sum(c.isdigit() for c in p) >= _MIN_PHONE_DIGITS]
    return phones, emails


def _parse_dicom_date(value: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(value.strip()[:8], "%Y%m%d").date()
    except ValueError:
        return None


def from_header(values: Mapping[str, Sequence[str]]) -> IdentifierSet:
    """The identifiers in header values kept for a case (keyword → values, as :func:`header_values` gives)."""
    def get(*keywords: str) -> list[str]:
        return [v for keyword in keywords for v in values.get(keyword, ()) if v and str(v).strip()]

    streets, towns, postcodes = _split_all(get(*ADDRESS_KEYWORDS))
    phones = get(*PHONE_KEYWORDS)
    emails: list[str] = []
    for telecom in get(*TELECOM_KEYWORDS):
        p, e = _telecom_parts(telecom)
        phones += p
        emails += e
    return IdentifierSet(
        patient_names=tuple(get(*PATIENT_NAME_KEYWORDS)),
        relative_names=tuple(get(*RELATIVE_NAME_KEYWORDS)),
        clinician_names=tuple(get(*CLINICIAN_NAME_KEYWORDS)),
        ids=tuple(get(*ID_KEYWORDS)),
        birth_dates=tuple(d for d in map(_parse_dicom_date, get(*BIRTH_DATE_KEYWORDS)) if d),
        streets=tuple(streets), towns=tuple(towns), postcodes=tuple(postcodes),
        phones=tuple(phones), emails=tuple(emails),
        institutions=tuple(get(*INSTITUTION_KEYWORDS)),
        organisations=tuple(get("InstitutionalDepartmentName", "RequestingService")),
        institution_addresses=tuple(get("InstitutionAddress")),
    )


def from_referral(referral: Any) -> IdentifierSet:
    """The identifiers in a :class:`gateway.referral.document.Referral`'s structured fields."""
    patient = referral.patient
    streets, towns, postcodes = [], [], []
    address = getattr(patient, "address", None)
    if address is not None:
        streets += [v for v in (address.street, address.other) if v]
        towns += [v for v in (address.town, address.region) if v]
        postcodes += [address.postcode] if address.postcode else []
    phones = list(getattr(patient, "phones", ()) or ())
    emails = [patient.email] if getattr(patient, "email", None) else []
    clinicians: list[str] = []
    if referral.referrer is not None:
        clinicians.append(referral.referrer.name)
        contact_phones, contact_emails = _telecom_parts(referral.referrer.contact or "")
        phones += contact_phones
        emails += contact_emails
    return IdentifierSet(
        patient_names=(patient.name,),
        clinician_names=tuple(clinicians),
        ids=(patient.id, referral.accession_number, *(getattr(patient, "other_ids", ()) or ())),
        birth_dates=(patient.birth_date,) if patient.birth_date else (),
        streets=tuple(streets), towns=tuple(towns), postcodes=tuple(postcodes),
        phones=tuple(phones), emails=tuple(emails),
        sources=(referral.source,),
    )


def header_values(dataset: Any) -> dict[str, list[str]]:
    """The identifying values of an original DICOM dataset, by keyword (:data:`HEADER_KEYWORDS`).

    Nested values count too (``OtherPatientIDsSequence`` items' Patient ID is kept under
    ``OtherPatientIDs``); multi-valued elements give one value each; person names keep all their groups.
    """
    from gateway.dicom import undecoded  # here: pydicom is loaded only by what reads DICOM

    found: dict[str, list[str]] = {}

    def keep(keyword: str, value: object) -> None:
        several = isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"  # pydicom's, by name
        items = list(cast("Iterable[object]", value)) if several else [value]
        bucket = found.setdefault(keyword, [])
        for item in items:
            text = str(item or "").strip()
            if text and text not in bucket and len(bucket) < _MAX_VALUES_PER_KEYWORD:
                bucket.append(text)

    def walk(ds: Any, nested: bool) -> None:
        # Elements of other keywords are left undecoded (``dicom.undecoded``): the writer copies their bytes.
        for elem in undecoded.elements(ds, lambda tag, vr: _keyword(tag) in _HEADER_KEYWORD_SET):
            if elem.VR == "SQ":
                for item in elem.value or ():
                    walk(item, True)
            elif elem.keyword in HEADER_KEYWORDS and elem.value not in (None, ""):
                keyword = "OtherPatientIDs" if nested and elem.keyword == "PatientID" else elem.keyword
                keep(keyword, elem.value)

    walk(dataset, False)
    return {keyword: values for keyword, values in found.items() if values}


_HEADER_KEYWORD_SET = frozenset(HEADER_KEYWORDS)


@functools.lru_cache(maxsize=4096)
def _keyword(tag: int) -> str:
    from pydicom.datadict import dictionary_has_tag, dictionary_keyword
    return dictionary_keyword(tag) if dictionary_has_tag(tag) else ""


def merge_header_values(stored: str, *more: Mapping[str, Sequence[str]]) -> str:
    """JSON of ``stored`` (JSON, possibly empty) with the values of ``more`` added; the same text when
    nothing is new."""
    current: dict[str, list[str]] = json.loads(stored) if stored else {}
    changed = False
    for values in more:
        for keyword, items in values.items():
            bucket = current.setdefault(keyword, [])
            for item in items:
                if item not in bucket and len(bucket) < _MAX_VALUES_PER_KEYWORD:
                    bucket.append(item)
                    changed = True
    return json.dumps(current, ensure_ascii=False, sort_keys=True) if changed else stored


def _identity_columns(identity: Any) -> IdentifierSet:
    return from_header({
        "PatientName": [identity.patient_name], "PatientID": [identity.patient_id],
        "PatientBirthDate": [identity.birth_date], "AccessionNumber": [identity.accession_number],
        "ReferringPhysicianName": [identity.referring_physician], "InstitutionName": [identity.institution_name],
    })


def identifier_set_for_study(study: Any, referral: Any | None = None, *, include_uids: bool = True,
                             include_institution: bool = True) -> IdentifierSet:
    """Everything the node holds for ``study`` (a ``models.Study`` that has been de-identified).

    Args:
        study: the case.
        referral: its matched :class:`gateway.referral.document.Referral`, if any.
        include_uids: add the study's original UIDs (leave out under Retain UIDs).
        include_institution: add the institution's name, address and department (leave out under Retain
            Institution Identity, where they are meant to stay in the images).

    Raises:
        LookupError: the study has no ``StudyIdentity`` yet (it was not de-identified).
    """
    from gateway.storage.models import Source, StudyIdentity, UidMap

    identity = StudyIdentity.get_or_none(StudyIdentity.study == study.id)
    if identity is None:
        raise LookupError("the case has no de-identification identity")
    held = json.loads(identity.header_values) if identity.header_values else {}
    found = _identity_columns(identity).merged(from_header(held))
    if referral is not None:
        found = found.merged(from_referral(referral))
    source = Source.get_or_none(Source.id == study.source_id) if study.source_id else None
    found = found.merged(IdentifierSet(sources=tuple(v for v in (
        source.name if source else None, source.ae_title if source else None, study.calling_ae) if v)))
    if include_uids:
        originals = [study.study_uid, *(m.original_uid for m in UidMap.select().where(UidMap.study == study.id))]
        found = found.merged(IdentifierSet(uids=tuple(originals)))
    if not include_institution:
        found = found.without("institutions", "organisations", "institution_addresses")
    return found


