"""Deterministic, offline scrubbing of referral free text, and the scrubbed notes it produces.

Two kinds of rules run, in this order, each on the text left unclaimed by the previous ones:

1. **patterns**: URLs, e-mail addresses, then the identifiers the gateway knows (patient IDs and
   accession, the referrer's contact, institution names), then **dates before phone numbers**
   (else "12 04 1971" would read as a phone number), UK/US postcodes, phone numbers, street
   addresses ("4 Elm Road");
2. **names**: patient and referrer name parts, matched whole and token by token after folding
   case and accents (NFKD), and fuzzily: a token of 5 or more letters within edit distance 1 of a
   name part of 5 or more letters goes too; last, digit runs of 6 or more.

Dates are shifted by the patient's date offset (days) and written in ISO form inside brackets,
``[2024-03-05]``; the birth date becomes ``[DOB]``; a date that cannot be parsed becomes
``[DATE]``. The brackets mark the scrubber's own output: such tokens are left alone by a second
pass, which makes scrubbing idempotent.
"""

from __future__ import annotations

import bisect
import datetime
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from gateway.privacy.vocabulary import detect_language, is_clinical, is_curated_clinical, is_eponym, is_known_word
from gateway.privacy.words import EPONYM_TAIL
from gateway.referral.allowlist import HOLIDAY_RUN, is_org_head, judge
from gateway.referral.clinical_terms import CLINICAL_NOUN_AFTER, CLINICAL_VALUE, is_clinical_word
from gateway.referral.codes import NON_URGENT_FLAGS
from gateway.referral.document import Referral, Urgency
from gateway.referral.entities import (
    IDENTIFIER,
    ORGANISATION,
    PERSON,
    PHONE_NUMBER,
    PLACE,
    Entity,
    find_entities,
    find_numbers,
    is_common_word,
    load_gazetteer,
    name_context,
)
from gateway.referral.redflags import FlagFinding, flags_for

__all__ = ["KnownIdentifiers", "Mark", "ScrubbedNotes", "ScrubbedPain", "TextScrubber", "scrub_referral"]

NAME, ID, DATE, DOB, PHONE, EMAIL, URL, POSTCODE, CONTACT, INSTITUTION, ADDRESS, REDACTED, UNKNOWN = (
    "[NAME]", "[ID]", "[DATE]", "[DOB]", "[PHONE]", "[EMAIL]", "[URL]", "[POSTCODE]", "[CONTACT]",
    "[INSTITUTION]", "[ADDRESS]", "[REDACTED]", "[REMOVED]",
)
_TOKENS = (NAME, ID, DATE, DOB, PHONE, EMAIL, URL, POSTCODE, CONTACT, INSTITUTION, ADDRESS, REDACTED, UNKNOWN)
_PROTECTED = re.compile("|".join(re.escape(t) for t in _TOKENS) + r"|\[(\d{4}-\d{2}-\d{2})\]")
_TITLES = {"dr", "mr", "mrs", "ms", "miss", "mx", "prof", "professor", "sir", "dame", "md", "frcs", "mbbs"}
_MASK = "\x00"      # claimed by an identifier rule
_KEPT = "\x01"      # protected: the scrubber's own tokens, clinical values
_FUZZY_MIN_LENGTH = 5
_SEPARATORS = r"[\s\-/.,_'’]{0,2}"
_TWO_DIGIT_YEAR_PIVOT = 40  # "71" is 1971, "23" is 2023

_MONTHS = {
    "jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6,
    "jul": 7, "aug": 8, "sep": 9, "oct": 10, "nov": 11, "dec": 12,
    "jän": 1, "mae": 3, "maer": 3, "mär": 3, "mai": 5, "okt": 10, "dez": 12,
    # French (folded: février -> fevrier), Danish, Swedish, Norwegian, Spanish
    "janv": 1, "fev": 2, "fevr": 2, "avr": 4, "juin": 6, "juil": 7, "aou": 8, "aout": 8, "dece": 12,
    "mars": 3, "maj": 5, "ene": 1, "abr": 4, "ago": 8, "dic": 12,
    # Italian, Dutch, Icelandic (folded: ágúst -> agust)
    # Finnish (folded: kesäkuu -> kesakuu)
    "tamm": 1, "helm": 2, "maal": 3, "huht": 4, "touk": 5, "kesa": 6, "hein": 7, "elok": 8, "syys": 9, "loka": 10,
    "marr": 11, "joul": 12,
    "gen": 1, "maa": 3, "mag": 5, "mei": 5, "giu": 6, "lug": 7, "agu": 8, "set": 9, "ott": 10,
}
# English and German month names (the text is folded: "März" reads "Marz").
_MONTH = (r"((?:tammi|helmi|maalis|huhti|touko|kesa|heina|elo|syys|loka|marras|joulu)kuu(?:ta|n|ssa)?|"  # Finnish
          r"jan(?:uary|uar|uari|vier|v|ner)?|jän(?:ner)?|feb(?:ruary|ruar|ruari)?|fevr(?:ier)?|fev|"
          r"m(?:ar|ae?r)(?:ch|z|s|ts)?|apr(?:il)?|avr(?:il)?|ma[yij]|jun[ei]?|juin|"
          r"jul[yi]?|juil(?:let)?|aug(?:ust|usti)?|aout|sep(?:t(?:ember|embre)?)?|o[ck]t(?:ober|obre)?|"
          r"nov(?:ember|embre)?|de[cz](?:ember|embre)?|"
          # Spanish, Italian, Portuguese, Dutch and Icelandic names, written in full
          r"enero|febrero|marzo|abril|mayo|junio|julio|agosto|se[pt]?tiembre|octubre|noviembre|diciembre|"
          r"gennaio|febbraio|aprile|maggio|giugno|luglio|settembre|ottobre|dicembre|maart|mei|augustus|agust|"
          r"janeiro|fevereiro|marco|maio|junho|julho|setembro|outubro|novembro|dezembro)\.?")
_ORD = r"(?:st|nd|rd|th|er|re|e|\.)?"
_DATE_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("ymd", re.compile(r"(?<![\d.])(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?![\d])")),
    ("numeric", re.compile(r"(?<![\d/.\-])(\d{1,2})[/.\-](\d{1,2})[/.\-](\d{4}|\d{2})(?![\d/\-]|\.\d)")),
    ("compact", re.compile(r"(?<!\d)((?:19|20)\d{2})(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?!\d)")),
    ("dmy_text", re.compile(rf"(?<!\d)(\d{{1,2}}){_ORD}(?:\s+(?:of|de|del|do|da))?[\s\-.]*{_MONTH}[\s\-.,]*"
                            rf"(?:(?:de|del|do)\s+)?(\d{{4}}|\d{{2}})(?!\d)",
                            re.IGNORECASE)),
    ("mdy_text", re.compile(rf"\b{_MONTH}\s+(\d{{1,2}}){_ORD},?\s+(\d{{4}})(?!\d)", re.IGNORECASE)),
    ("holiday", re.compile(r"\b(christmas day|christmas eve|boxing day|new year'?s day|new year'?s eve|"
                           r"heiligabend|silvester|neujahr|1\. weihnachtstag)(?:\s+(?:of\s+)?)(\d{4})(?!\d)",
                           re.IGNORECASE)),
    ("month_year", re.compile(rf"\b{_MONTH}\s+(\d{{4}})(?!\d)", re.IGNORECASE)),
    ("day_month", re.compile(rf"(?<![\d.])(\d{{1,2}}){_ORD}(?:\s+(?:of|de|del))?\s+{_MONTH}(?![\w])", re.IGNORECASE)),
    ("month_day", re.compile(rf"\b{_MONTH}\s+(\d{{1,2}}){_ORD}(?![\d\w]|:\d)", re.IGNORECASE)),
)
_WHOLE_DATE_KINDS = frozenset({"ymd", "compact", "dmy_text", "mdy_text", "holiday"})
# A weekday before a date goes with it ("Mon 11th March 2024").
_WEEKDAY = re.compile(r"\b(?:mon|tue|tues|wed|thu|thur|thurs|fri|sat|sun|montag|dienstag|mittwoch|donnerstag|"
                      r"freitag|samstag|sonntag|monday|tuesday|wednesday|thursday|friday|saturday|sunday|"
                      r"lundi|mardi|mercredi|jeudi|vendredi|samedi|dimanche|mandag|tirsdag|tisdag|onsdag|torsdag|"
                      r"fredag|lordag|sondag|maandag)\.?,?\s+(?:(?:night|morning|evening|afternoon|soir|matin|abend|"
                      r"morgen|nachmittag)\s*,?\s+)?(?=\[|\x00)", re.IGNORECASE)
#: The Hijri months (gulf-style letters give the Hijri date beside the Gregorian): "21 Rajab 1409".
_HIJRI_MONTH = (r"(?:muharram|safar|rabi[\s\-]?(?:al|ul|el)?[\s\-]?(?:awwal|thani|akhir|sani)|"
                r"jumad[ae][\s\-]?(?:al|ul|el)?[\s\-]?(?:awwal|ula|thani|akhirah?|sani)|rajab|sha['’]?ban|"
                r"ramadan|ramzan|shawwal|dhu[\s\-]?(?:al|l)?[\s\-]?(?:qi['’]?dah?|hijjah?))")
_HIJRI_DATE = re.compile(rf"(?<![\d.])\d{{1,2}}(?:st|nd|rd|th)?\s+(?i:{_HIJRI_MONTH})"
                         rf"(?:,?\s+\d{{4}}(?:\s*(?:AH|H)\b)?)?")
#: Words written as part of a date just before it: its article ("the 3rd of May"), where in the month it fell
#: ("early June", "mi-janvier", "Anfang März") and the first day of a range ("du 20 au 24 janvier").
_DATE_LEAD = re.compile(
    r"(?i:\b(?:the\s+(?:(?:first|second|third|fourth|last)\s+(?:week|weekend|days?)\s+of\s+)?|le\s+|den\s+|"
    r"(?:early|late|mid|end\s+of|beginning\s+of|start\s+of|middle\s+of|fin|début|debut|mi|anfang|mitte|ende)"
    r"[\s\-]+(?:(?:of|de|d['’])\s*)?|"
    r"(?:(?:from|between|du|vom|fra|entre|le)\s+)?\d{1,2}(?:st|nd|rd|th|er|\.)?\s*(?:to|and|au|bis|til|till|et|-|–)\s*|"
    r"(?:(?:twenty|thirty)[\s\-]?)?(?:first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|eleventh|"
    r"twelfth|[a-z]+teenth|twentieth|thirtieth|(?:[a-z]+und)?(?:ersten|zweiten|dritten|vierten|fünften|funften|"
    r"sechsten|siebten|achten|neunten|zehnten|elften|zwölften|zwolften|[a-zäöü]+zehnten|zwanzigsten|"
    r"dreißigsten|dreissigsten)|premier|deux|trois|quatre|cinq|six|sept|huit|neuf|dix|onze|douze|treize|"
    r"quatorze|quinze|seize|dix-[a-z]+|vingt(?:[\s\-][a-z]+)*|trente(?:[\s\-][a-z]+)*)\s+(?:of\s+)?))$")
#: A year written with an apostrophe after its month ("Jan '24").
#: A month without its day, written with where in it something fell ("early June", "mi-février", "Anfang März")
#: or with an apostrophe year ("Jan '24").
_MONTH_IN_PART = re.compile(
    rf"\b(?i:early|late|mid|end\s+of|beginning\s+of|start\s+of|middle\s+of|fin|début|debut|mi|anfang|mitte|ende|"
    rf"(?:the\s+)?(?:first|second|third|fourth|last)\s+(?:week|weekend|days?|half|fortnight)\s+of)"
    rf"[\s\-]+(?:(?:of|de|d['’])\s*)?(?i:{_MONTH})(?![\w])|\b(?i:{_MONTH})\s?['’]\d{{2}}(?!\d)")
_SHIFTED_DATE = re.compile(r"\[\d{4}-\d{2}-\d{2}\]")
_DATE_TAIL = re.compile(r"\s?['’]\d{2}(?!\d)|"
                        # a year spelled out: "mille neuf cent cinquante-trois", "nineteen fifty-three"
                        r"(?i:\s+(?:mille|nineteen|eighteen|neunzehnhundert|achtzehnhundert)"
                        r"(?:[\s\-]+(?:neuf|huit|cent|vingt|trente|quarante|cinquante|soixante|dix|onze|douze|treize|"
                        r"quatorze|quinze|seize|un|une|deux|trois|quatre|cinq|six|sept|et|hundred|and|ten|eleven|"
                        r"twelve|[a-z]+teen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|one|two|three|four|"
                        r"five|six|seven|eight|nine|[a-zäöü]+und[a-zäöü]+zig|zwanzig|dreißig|vierzig|fünfzig|"
                        r"sechzig|siebzig|achtzig|neunzig))+)")
#: A day written alone as an ordinal, where only a date can stand: after "the" or a weekday and before the end
#: of the clause ("came in on the 15th.", "Friday 7th,", "Thursday the 12th with").
_ORDINAL_DAY = re.compile(
    r"(?i:\b(?:the|(?:mon|tues|wednes|thurs|fri|satur|sun)day(?:\s+the)?)\s+"
    r"(?:[1-9]|[12]\d|3[01])(?:st|nd|rd|th))\b(?=\s*(?:[.,;:)\n]|$|(?i:\s+(?:with|and|at|in|when|after|before|"
    r"until|for|but|or|he|she|they|we|i)\b)))")
#: A day and month in figures without the year ("fell off his bike 3/9.", "CT 8/29"): not a score or a power
#: (x/5, x/10), no UK duration (x/7, x/12, x/52), no proper fraction (1/2, 3/4), no level (L4/5), no value with
#: its unit, label or an acronym before it ("MRC 4/5", "Schober 10/12", "ZCQ 3/9").
_DAY_MONTH_SLASH = re.compile(r"(?<![\w/.\-+\x00\x01])(\d{1,2})/(\d{1,2})(?![\w/\x00\x01]|[.,]\d)")
_NOT_DATE_BEFORE = re.compile(
    r"(?i:\b(?:grade|graded|power|score|strength|mrc|vas|nrs|eva|gcs|scale|level|ratio|lag|stage|class|reflexes|"
    r"reflex|tone|sensation|x|tab|tabs|take|takes|taking|dose|approx|about|only|than|plus|ca|"
    r"flat|apt|apartment|unit|no|nr|room|house|box|block|plot|door|villa|building|lot|#)\.?)\s*[:=]?\s*$")
_NOT_DATE_AFTER = re.compile(r"(?i:\s*(?:of\b|tabs?\b|tablets?\b|cups?\b|doses?\b|mg\b|ml\b|g\b|x\b|times\b|%|"
                             r"power\b|strength\b|in\b))")
_HOLIDAYS = {"christmasday": (12, 25), "christmaseve": (12, 24), "boxingday": (12, 26), "newyearsday": (1, 1),
             "newyearday": (1, 1), "newyearseve": (12, 31), "newyeareve": (12, 31), "heiligabend": (12, 24),
             "silvester": (12, 31), "neujahr": (1, 1), "1weihnachtstag": (12, 25)}
_URL = re.compile(r"\b(?:https?://|ftp://|www\.)[^\s<>\"]+", re.IGNORECASE)
#: A web address written without its scheme: "Amazon.com", "nav.no".
_DOMAIN = re.compile(r"\b[A-Za-z][\w\-]*(?:\.[\w\-]+)*\.(?:com|net|org|io|gov|edu|co\.uk|org\.uk|nhs\.uk|de|fr|dk|"
                     r"no|se|fi|is|in|ae|sa|qa|om|bh|kw)\b(?![.\-]\w)")
_EMAIL = re.compile(r"[\w.+\-]+@[\w\-]+(?:\.[\w\-]+)+", re.IGNORECASE)
_UK_POSTCODE = re.compile(r"\b(?:[A-Z]{1,2}\d[A-Z\d]?|GIR) ?\d[ABD-HJLNP-UW-Z]{2}\b")
_US_STATES = ("AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH "
              "NJ NM NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY").split()
_US_ZIP = re.compile(r"\b\d{5}-\d{4}\b|(?<=\b(?:" + "|".join(_US_STATES) + r") )\d{5}\b")
# House number and capitalised street name ("4 Elm Road", "12a High St"); case-sensitive on purpose.
_STREET_ADDRESS = re.compile(
    r"\b\d{1,4}[a-zA-Z]?,?\s+(?:[A-Z][a-z]+\s+){1,3}(?:Road|Street|Avenue|Lane|Drive|Close|Way|Crescent|"
    r"Place|Court|Terrace|Gardens|Grove|Square|Rd|St|Ave)\b\.?"
)
#: US post-office and rural-route boxes: "PO Box 988", "Rt. 3 Box 190", "RR 2, Box 14", "HC 61 Box 3".
_BOX_ADDRESS = re.compile(r"\b(?:P\.?\s?O\.?\s?Box|Post\s+Office\s+Box|(?:R\.?\s?R\.?|Rte?\.?|Route|H\.?\s?C\.?|"
                          r"Star\s+Route)\s*\d{1,4},?\s*Box)\s*#?\s*\d{1,6}\b", re.IGNORECASE)
#: A street named by its ending, with its house number: "Nørrebrogade 88", "Hauptstraße 12/3/7", "Storgata 91".
_NAMED_STREET_NUMBER = re.compile(
    r"\b[A-Z][^\W\d_]*(?:stra(?:ss|ß)e|gasse|weg|allee|platz|vej|gade|gatan|gata|gate|veien|vegen|vägen|vagen|"
    r"väg|vag|katu|kuja)\s+\d{1,4}[a-zA-Z]?(?:/\d{1,3}){0,3}\b"
    # with its floor and door as Danish and Norwegian addresses give them: "40, st. mf.", "2. tv.", "leil. H0402"
    r"(?:,?\s+(?:st|kl|\d{1,2})\.\s?(?:tv|th|mf)\b\.?|,?\s+leil\.?\s?[HUKL]\d{4}\b)?")
#: A Paris, Lyon or Marseille district: "13e arrondissement", "dans le 13e".
_ARRONDISSEMENT = re.compile(r"\b\d{1,2}(?:e|er|ème|eme)\s+arr(?:ondissement\b|\.)|"
                             r"(?<=\bdans le )\d{1,2}(?:e|ème|eme)\b(?![\s\-]*[^\W\d_])")
#: A day and month in figures without the year, where only a date can stand ("am 14.01.", "(21.6.)").
_DAY_MONTH_FIGURES = re.compile(
    r"(?:(?<=\()|(?<=\bam )|(?<=\bvom )|(?<=\bseit )|(?<=\bbis )|(?<=\bab )|(?<=\bzum )|(?<=\bden )|(?<=\bon )|"
    r"(?<=\bsince )|(?<=\bfrom )|(?<=\buntil )|(?<=\bfra )|(?<=\btil )|(?<=\ble )|(?<=\bdu )|(?<=\bau ))"
    r"(?:0?[1-9]|[12]\d|3[01])\.(?:0?[1-9]|1[0-2])\.(?!\d)|"
    # without a cue when written with two-digit day and month and the closing dot ("15.04.", "03.11."): no
    # clinical value is written so (the labelled ones are protected before)
    r"(?<![\w.,/\-])(?:0[1-9]|[12]\d|3[01])\.(?:0[1-9]|1[0-2])\.(?![\d\w])")
_DIGIT_RUN = re.compile(r"\d{6,}")
_EPONYM_TERM = re.compile(
    r"\b[A-Z][a-z]+(?:[\-][A-Z][a-z]+)?(?:['’]s?[ \t\-]*|[ \t\-]+)"
    r"(?i:disease|sign|signs|test|tests|lesion|lesions|cyst|"
    r"tumou?r|fracture|grade|classification|score|scale|syndrome|palsy|node|nodes|(?<=['’]s )spine|knötchen|knotchen|"
    r"zeichen|syndrom|krankheit|manoeuvre|maneuver|reflex|phenomenon|criteria|index|arthritis|angle|line|"
    r"triad|procedure|operation|approach|joint)\b")
#: The same with the guard's wider tail: modifiers between the eponym and its noun ("Adams forward bend test",
#: "Charcot spinal arthropathy"), and the orthoses named after a place ("Milwaukee brace").
_EPONYM_WIDE = re.compile(rf"\b[A-Z][a-z]+(?:-[A-Z][a-z]+)?(?i:{EPONYM_TAIL})")
#: An eponym of two persons or of a person's two names, written with a space ("Pedro Pons sign", "Guillain
#: Barré syndrome", "Arnold Chiari malformation" is hyphenated or spaced alike).
_EPONYM_DOUBLE = re.compile(rf"\b([A-Z][^\W\d_]+)[ \t]+([A-Z][^\W\d_]+)(?i:{EPONYM_TAIL})")
#: "maladie de Charcot", "signe de Lasègue", "Morbus Bechterew", "M. Scheuermann".
_EPONYM_NAMED = re.compile(r"\b(?i:maladie|signe|syndrome|manoeuvre|manœuvre|morbus)\s+(?:de\s+|d['’])?"
                           r"[A-Z][a-z]+(?:-[A-Z][a-z]+)?")
_DRUG_WITH_DOSE = re.compile(
    r"\b([A-Z][\w\-]{3,}(?:\s+(?:Forte|Retard|SR|CR|XL|LP|Plus|Duo))?)\s+\d+(?:[.,]\d+)?(?:/\d+(?:[.,]\d+)?)?\s?"
    r"(?:mg|mcg|µg|ug|g|ml|IU|IE|UI|units|mmol)\b")
_LETTER_TOKEN = re.compile(r"[^\W\d_]+")
_WORDS = re.compile(r"[^\W\d_]+")


def _fold(text: str) -> tuple[str, list[int]]:
    """Strip accents (NFKD without combining marks), keeping a map to the original positions."""
    chars: list[str] = []
    origin: list[int] = []
    for position, char in enumerate(text):
        for part in unicodedata.normalize("NFKD", char):
            if not unicodedata.combining(part):
                chars.append(part)
                origin.append(position)
    return "".join(chars), origin


def _fold_plain(text: str) -> str:
    return _fold(text)[0].lower()


def levenshtein_at_most_one(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` differ by at most one insertion, deletion or substitution."""
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) > len(b):
        a, b = b, a
    for index, (x, y) in enumerate(zip(a, b)):
        if x != y:
            tail = index if len(a) < len(b) else index + 1
            return a[tail:] == b[index + 1:]
    return True


def _flexible_literal(value: str) -> re.Pattern[str] | None:
    """Pattern for ``value`` ignoring case, accents and light punctuation between its characters."""
    compact = [c for c in _fold_plain(value) if c.isalnum()]
    if not compact:
        return None
    body = _SEPARATORS.join(re.escape(c) for c in compact)
    plus = r"\+?" if value.lstrip().startswith("+") else ""
    return re.compile(rf"(?<![^\W_]){plus}{body}(?![^\W_])", re.IGNORECASE)


def _longest_first_patterns(values: Iterable[str], min_length: int) -> list[re.Pattern[str]]:
    """Flexible patterns for ``values``, longest first so "St Mary's Hospital" wins over "St Mary's"."""
    kept = sorted({v for v in values if len(v.strip()) >= min_length}, key=lambda v: (-len(v), v))
    return [pattern for pattern in map(_flexible_literal, kept) if pattern is not None]


def _name_parts(name: str) -> set[str]:
    """Folded parts of a person name, with their German transliterations (ü → ue, ß → ss)."""
    parts = re.split(r"[^\w]+|_|\d", name.replace("^", " ").lower())
    kept = {p for p in parts if len(p) >= 2 and _fold_plain(p) not in _TITLES and not _is_cjk(p)}
    return {_fold_plain(v) for p in kept for v in _spellings(p)}


@dataclass(frozen=True)
class KnownIdentifiers:
    """Every identifier the gateway knows for one referral; all are removed from free text.

    Attributes:
        names: person names (patient and referrer), in any form ("Doe^Jane", "Dr Alan Smith").
        ids: patient IDs, accession numbers and other identifiers.
        birth_dates: the patient's birth date(s).
        contacts: contact strings (phone numbers, e-mail addresses, addresses).
        institutions: names of the referring institution(s) and the source name.
        places: addresses and their parts (street, town, postcode, country of residence).
        organisations: institutions' departments and addresses, employers, any other organisation.
        phones: telephone numbers, as written anywhere (header or referral).
        emails: e-mail addresses.
        redactions: phrases a person chose to remove (the referrer before sending, an operator before a
            release): removed wherever they stand, as ``[REDACTED]``.
    """

    names: tuple[str, ...] = ()
    ids: tuple[str, ...] = ()
    birth_dates: tuple[datetime.date, ...] = ()
    contacts: tuple[str, ...] = ()
    institutions: tuple[str, ...] = ()
    places: tuple[str, ...] = ()
    organisations: tuple[str, ...] = ()
    phones: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    redactions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for attribute in ("names", "ids", "contacts", "institutions", "places", "organisations", "phones",
                          "emails", "redactions"):
            values = getattr(self, attribute)
            if isinstance(values, str) or not all(isinstance(v, str) for v in values):
                raise TypeError(f"KnownIdentifiers.{attribute} must be a sequence of str")
        if not all(isinstance(d, datetime.date) for d in self.birth_dates):
            raise TypeError("KnownIdentifiers.birth_dates must be a sequence of datetime.date")

    @classmethod
    def from_referral(cls, referral: Referral, institution_names: Iterable[str] = ()) -> KnownIdentifiers:
        """Collect the identifiers of ``referral`` plus the given institution names."""
        names = [referral.patient.name]
        contacts: list[str] = []
        if referral.referrer is not None:
            names.append(referral.referrer.name)
            if referral.referrer.contact:
                contacts += [c.strip() for c in re.split(r"[,;]", referral.referrer.contact) if c.strip()]
        birth = (referral.patient.birth_date,) if referral.patient.birth_date else ()
        return cls(
            names=tuple(names),
            ids=(referral.patient.id, referral.accession_number),
            birth_dates=birth,
            contacts=tuple(contacts),
            institutions=(referral.source, *institution_names),
        )


@dataclass(frozen=True)
class Mark:
    """A span of the original text: removed (``token`` is what replaces it) or kept unknown (``token`` None)."""

    start: int
    end: int
    token: str | None


@dataclass
class _Work:
    """Text being scrubbed: folded copy with claimed regions masked, and the claims so far."""

    original: str
    folded: str
    origin: list[int]
    masked: list[str]
    claims: list[tuple[int, int, str]] = field(default_factory=list)
    unknown_kept: list[tuple[int, int]] = field(default_factory=list)  # original positions
    language: str = "en"
    named: list[tuple[int, int]] = field(default_factory=list)  # folded positions claimed as names or places

    def view(self) -> str:
        return "".join(self.masked)

    def claim(self, start: int, end: int, replacement: str | None) -> None:
        if start >= end or any(c in (_MASK, _KEPT) for c in self.masked[start:end]):
            return
        self.masked[start:end] = [_MASK if replacement is not None else _KEPT] * (end - start)
        if replacement is not None:
            self.claims.append((self.origin[start], self.origin[end - 1] + 1, replacement))
            if replacement in (NAME, ADDRESS, INSTITUTION, UNKNOWN, REDACTED):
                self.named.append((start, end))

    def extend_claim(self, original_start: int, start: int, end: int) -> None:
        """Widen the claim that starts at ``original_start`` to the folded ``start:end`` (one token for a date
        and the words written with it), when what it takes in is still unclaimed."""
        index = next(i for i, claim in enumerate(self.claims) if claim[0] == original_start)
        old_start, old_end = self.folded_index(self.claims[index][0]), self.folded_index(self.claims[index][1])
        if any(c in (_MASK, _KEPT) for c in self.masked[start:old_start] + self.masked[old_end:end]):
            return
        self.masked[start:end] = [_MASK] * (end - start)
        self.claims[index] = (self.origin[start], self.origin[end - 1] + 1, self.claims[index][2])

    def folded_index(self, position: int) -> int:
        """The folded index where original ``position`` starts (``len`` for the end)."""
        return bisect.bisect_left(self.origin, position)

    def original_slice(self, start: int, end: int) -> str:
        return self.original[self.origin[start]:self.origin[end - 1] + 1] if end > start else ""

    def result(self) -> str:
        pieces, cursor = [], 0
        for start, end, replacement in sorted(self.claims):
            if start < cursor:
                continue
            pieces += [self.original[cursor:start], replacement]
            cursor = end
        pieces.append(self.original[cursor:])
        return "".join(pieces)


class TextScrubber:
    """Removes known identifiers and identifier patterns from free text.

    Args:
        known: the identifiers of this referral.
        date_offset_days: days added to every date found (the patient's pseudonymous offset).
        day_first: read ambiguous numeric dates as day/month (UK) rather than month/day (US).

    Raises:
        TypeError: if ``known`` is not a :class:`KnownIdentifiers` or the offset not an int.
    """

    def __init__(self, known: KnownIdentifiers, date_offset_days: int, *, day_first: bool = True,
                 use_model: bool = True, language: str | None = None) -> None:
        if not isinstance(known, KnownIdentifiers):
            raise TypeError("known must be a KnownIdentifiers")
        if isinstance(date_offset_days, bool) or not isinstance(date_offset_days, int):
            raise TypeError("date_offset_days must be an int")
        self._offset = datetime.timedelta(days=date_offset_days)
        self._day_first = day_first
        self._use_model = use_model
        self._language = language
        self._birth_dates = frozenset(known.birth_dates)
        whole_names = [" ".join(p for p in re.split(r"[\s^]+", name) if _fold_plain(p) not in _TITLES)
                       for name in known.names]
        whole_names += ["".join(re.split(r"[\s^]+", name)) for name in known.names if _is_cjk(name)]
        whole_names += [part for name in known.names for part in re.split(r"[\s^]+", name)
                        if re.search(r"\w[\-'’]\w", part)]  # double-barrelled: Smith-Jones, O'Brien
        self._redaction_patterns = _longest_first_patterns(known.redactions, min_length=1)
        self._id_patterns = _longest_first_patterns(known.ids, min_length=1)
        self._contact_patterns = _longest_first_patterns((*known.contacts, *known.phones, *known.emails),
                                                         min_length=5)
        self._institution_patterns = _longest_first_patterns(known.institutions, min_length=4)
        declared_places = (*known.places, *known.organisations)
        # An address is written in pieces as often as whole ("Flat 4B, Kestrel House" of a longer street line).
        pieces = [p.strip() for v in declared_places for p in re.split(r"[,;\n]", v) if len(p.strip()) >= 4]
        self._place_patterns = _longest_first_patterns((*declared_places, *pieces), min_length=4)
        self._whole_name_patterns = _longest_first_patterns(
            [n for n in whole_names if len(_WORDS.findall(n)) > 1 or _is_cjk(n)], min_length=3)
        parts = {variant for n in known.names for part in _name_parts(n) for variant in _spellings(part)}
        parts |= {c for n in known.names for c in n if _is_cjk(c)}
        # A part that is an ordinary or clinical word (Power, Long, Weeks, Hoffmann) goes only where the text
        # uses it as a name; the others go wherever they stand, and near misses of 5+ letters go when capitalised.
        self._ambiguous_parts = frozenset(p for p in parts if is_common_word(p))
        self._given_parts = frozenset(v for n in known.names for g in _given_names(n) for v in _name_parts(g))
        self._name_parts = frozenset(parts - self._ambiguous_parts)
        self._fuzzy_parts = tuple(sorted(p for p in self._name_parts if len(p) >= _FUZZY_MIN_LENGTH))

    def scrub(self, text: str) -> str:
        """Return ``text`` with every identifier replaced by a bracketed token."""
        return self._scrub(text).result()

    def spans(self, text: str) -> list[tuple[int, int, str]]:
        """The spans of ``text`` that :meth:`scrub` replaces, with their tokens, in order."""
        return sorted(self._scrub(text).claims)

    def marks(self, text: str) -> list[Mark]:
        """What a person reviewing the scrubbed ``text`` is shown: every span removed (with its token) and every
        word kept that the scrubber does not know (``token`` None), in order of position in ``text``."""
        work = self._scrub(text)
        marks = [Mark(start, end, token) for start, end, token in work.claims]
        marks += [Mark(start, end, None) for start, end in work.unknown_kept]
        return sorted(marks, key=lambda m: (m.start, m.end))

    def _scrub(self, text: str) -> _Work:
        if not isinstance(text, str):
            raise TypeError("text must be str")
        folded, origin = _fold(text)
        work = _Work(text, folded, origin, list(folded), language=self._language or detect_language(text))
        self._protect_own_tokens(work)
        for pattern in self._redaction_patterns:
            self._replace_pattern(work, pattern, REDACTED)
        self._replace_pattern(work, _URL, URL)
        self._replace_pattern(work, _EMAIL, EMAIL)
        self._replace_pattern(work, _DOMAIN, URL)
        self._replace_whole_dates(work)  # before the clinical values: "VAS 12/04/1971" is no score
        self._replace_pattern(work, _DRUG_WITH_DOSE, None, accept=self._is_drug_with_dose)
        self._replace_pattern(work, CLINICAL_VALUE, None)  # kept as they are: "CRP 120", "L4-L5", "4.2 (5.0)"
        self._replace_pattern(work, _EPONYM_DOUBLE, None, accept=self._is_double_eponym)
        self._replace_pattern(work, _EPONYM_TERM, None, accept=self._is_eponym_term)
        self._replace_pattern(work, _EPONYM_WIDE, None, accept=self._is_eponym_term)
        self._replace_pattern(work, _EPONYM_NAMED, None, accept=self._is_eponym_term)
        for pattern in self._id_patterns:
            self._replace_pattern(work, pattern, ID)
        for pattern in self._contact_patterns:
            self._replace_pattern(work, pattern, CONTACT)
        self._replace_dates(work)
        numbers = find_numbers(text)
        self._claim_entities(work, [e for e in numbers if e.kind == IDENTIFIER], ID)
        self._replace_pattern(work, _UK_POSTCODE, POSTCODE)
        self._replace_pattern(work, _US_ZIP, POSTCODE)
        self._claim_entities(work, [e for e in numbers if e.kind == PHONE_NUMBER], PHONE)
        self._replace_pattern(work, _STREET_ADDRESS, ADDRESS)
        for pattern in self._place_patterns:  # declared first: a declared address is taken whole
            self._replace_pattern(work, pattern, ADDRESS)
        self._replace_pattern(work, _BOX_ADDRESS, ADDRESS)
        self._replace_pattern(work, _NAMED_STREET_NUMBER, ADDRESS)
        self._replace_pattern(work, _ARRONDISSEMENT, ADDRESS)
        for pattern in self._institution_patterns:
            self._replace_pattern(work, pattern, INSTITUTION)
        for pattern in self._whole_name_patterns:
            self._replace_pattern(work, pattern, NAME)
        self._replace_name_tokens(work)
        tokens = {PERSON: NAME, ORGANISATION: INSTITUTION, PLACE: ADDRESS}
        for entity in find_entities(text, use_model=self._use_model):
            self._claim_entities(work, [entity], tokens[entity.kind])
        self._replace_pattern(work, _DIGIT_RUN, ID)
        self._keep_only_known(work, work.language)
        return work

    @staticmethod
    def _keep_only_known(work: _Work, language: str) -> None:
        """The allowlist (:mod:`gateway.referral.allowlist`): what no rule claimed stays only when known."""
        for judgement in list(judge(work.view(), work.original_slice, language, work.named, load_gazetteer())):
            if judgement.token is None:
                start, end = work.origin[judgement.start], work.origin[judgement.end - 1] + 1
                work.unknown_kept.append((start, end))
            else:
                work.claim(judgement.start, judgement.end, judgement.token)

    def _is_eponym_term(self, match: re.Match[str]) -> bool:
        """"Paget's disease", "Kemp's test", "Schmorl-Knötchen": an eponym with its clinical noun, not after a
        title ("Mrs Paget's test results" is the patient), and not a name the node holds that is no clinical word."""
        eponym = re.search(r"[A-Z][^\W\d_]+", match.group(0))
        return (eponym is None or self._may_name_a_sign(eponym.group(0))) and not _after_title(match)

    def _is_double_eponym(self, match: re.Match[str]) -> bool:
        """"Pedro Pons sign": the second word is a listed eponym or clinical word that may name a sign, and the
        first is part of the eponym: a listed eponym, or a word the vocabulary does not know (an ordinary word
        before it, "Positive Babinski sign", is no part of the eponym and is judged on its own)."""
        first, second = match.group(1), match.group(2)
        if not (is_eponym(second) or is_clinical(second)) or not self._may_name_a_sign(second):
            return False
        if not self._may_name_a_sign(first) or _fold_plain(first) in self._name_parts | self._ambiguous_parts:
            return False  # a name the node holds before an eponym is the patient's: "Jane Babinski sign"
        before = match.string[max(0, match.start() - 40):match.start()]
        if name_context(match.string, match.start(), match.start(1) + len(first)) or _PERSON_PREPOSITION.search(before):
            return False  # "seen by Smith Babinski sign", "letter to Hargreaves Babinski sign": a person named first
        return is_eponym(first) or not is_known_word(first, "en")

    def _may_name_a_sign(self, word: str) -> bool:
        """A capitalised ``word`` before a clinical noun may be an eponym: no firm's head word, and either a
        listed eponym or clinical word, or an unknown word that is no name the node holds (nor a slip of one)."""
        if is_org_head(word):
            return False  # "Medical Center - Spine", "KIMS Hospitals Spine Centre": a firm's name, no eponym
        if is_eponym(word) or is_clinical_word(word):
            return True
        if is_known_word(word, "en") and not is_clinical(word):
            return False  # an ordinary word names no sign: "Comprehensive Spine Center", "Northside Pain"
        folded = _fold_plain(word)
        return folded not in self._name_parts and not (len(folded) >= _FUZZY_MIN_LENGTH and any(
            levenshtein_at_most_one(folded, part) for part in self._fuzzy_parts))  # "Pembertin reflex"

    def _is_drug_with_dose(self, match: re.Match[str]) -> bool:
        """A capitalised word before a dose is a drug ("Tramal 50 mg"), unless it is a name the node holds."""
        return _fold_plain(match.group(1)) not in self._name_parts

    @staticmethod
    def _claim_entities(work: _Work, entities: Iterable[Entity], token: str) -> None:
        """Claim each entity's still unclaimed stretches that hold a letter or digit; an entity made only of
        clinical words ("Kyphoplastie", "Lumbalgie" taken for places by a model trained on English) is none."""
        for entity in entities:
            if token != ID and _only_clinical_words(work.original[entity.start:entity.end]) and \
                    not _place_after_preposition(work.original, entity):
                continue
            start, end = work.folded_index(entity.start), work.folded_index(entity.end)
            pieces = []
            for run in re.finditer(r"[^\x00\x01]+", work.view()[start:end]):
                piece = run.group(0)
                if any(c.isalnum() for c in piece):
                    lead = len(piece) - len(piece.lstrip(" ,;:)'’-" if ")" in piece else " ,;:()'’-"))
                    trail = len(piece) - len(piece.rstrip(" ,;:()'’-"))
                    pieces.append((start + run.start() + lead, start + run.end() - trail))
            if pieces and not TextScrubber._widen_claim(work, entity, token, pieces):
                for piece_start, piece_end in pieces:
                    work.claim(piece_start, piece_end, token)

    @staticmethod
    def _widen_claim(work: _Work, entity: Entity, token: str, pieces: list[tuple[int, int]]) -> bool:
        """One entity is one token: when a claim of the same kind already stands inside it (a known institution
        "St Mary's" in "St Mary's A&E"), that claim takes in the entity's unclaimed pieces, rather than each
        piece becoming a token of its own ("[INSTITUTION] [INSTITUTION]&E"). False when there is no such claim,
        or another claim stands between (each piece is then claimed alone)."""
        if token == ID:
            return False
        inside = [claim for claim in work.claims
                  if claim[2] == token and entity.start <= claim[0] and claim[1] <= entity.end]
        if len(inside) != 1:
            return False
        claim_start, claim_end = work.folded_index(inside[0][0]), work.folded_index(inside[0][1])
        start, end = min(pieces[0][0], claim_start), max(pieces[-1][1], claim_end)
        if any(c in (_MASK, _KEPT) for c in work.masked[start:claim_start] + work.masked[claim_end:end]):
            return False
        work.extend_claim(inside[0][0], start, end)
        work.named.append((start, end))
        return True

    def _protect_own_tokens(self, work: _Work) -> None:
        for match in _PROTECTED.finditer(work.view()):
            iso = match.group(1)
            is_birth = iso is not None and self._is_birth_date(iso)
            work.claim(match.start(), match.end(), DOB if is_birth else None)

    def _is_birth_date(self, iso: str) -> bool:
        try:
            return datetime.date.fromisoformat(iso) in self._birth_dates
        except ValueError:
            return False

    @staticmethod
    def _replace_pattern(work: _Work, pattern: re.Pattern[str], token: str | None,
                         accept: Callable[[re.Match[str]], bool] | None = None) -> None:
        for match in list(pattern.finditer(work.view())):
            end = match.end()
            if token == URL:
                end -= len(match.group(0)) - len(match.group(0).rstrip(".,;:)!?'\""))
            if accept is None or accept(match):
                work.claim(match.start(), end, token)

    def _replace_dates(self, work: _Work) -> None:
        for kind, pattern in _DATE_PATTERNS:
            for match in list(pattern.finditer(work.view())):
                work.claim(match.start(), match.end(), self._date_token(kind, match.groups()))
        self._replace_pattern(work, _DAY_MONTH_FIGURES, DATE)
        self._replace_pattern(work, _HIJRI_DATE, DATE)
        self._replace_pattern(work, HOLIDAY_RUN, DATE)  # "Maha Shivratri day", "Easter Monday", "Eid al-Fitr 2024"
        self._replace_pattern(work, _MONTH_IN_PART, DATE, accept=_is_month_word)
        self._replace_pattern(work, _ORDINAL_DAY, DATE)
        self._replace_pattern(work, _DAY_MONTH_SLASH, DATE, accept=self._is_day_and_month)
        self._replace_pattern(work, _WEEKDAY, "")
        self._extend_dates(work)

    def _is_day_and_month(self, match: re.Match[str]) -> bool:
        """"3/9" is a date only where it reads as a valid day and month and as no score, duration or fraction."""
        first, second = int(match.group(1)), int(match.group(2))
        day, month = (first, second) if self._day_first else (second, first)
        if _safe_date(2000, month, day) is None or second in (5, 10) or (first <= second <= 4):
            return False
        if self._day_first and second in (7, 12):
            return False  # "3/7", "4/12": three days, four months in British notes
        view = match.string
        return _NOT_DATE_BEFORE.search(view[max(0, match.start() - 16):match.start()]) is None and \
            _NOT_DATE_AFTER.match(view, match.end()) is None

    @staticmethod
    def _extend_dates(work: _Work) -> None:
        """A date claimed takes the words written as part of it: its article, where in the month it fell, the
        first day of its range and an apostrophe year (:data:`_DATE_LEAD`, :data:`_DATE_TAIL`)."""
        dates = [(s, e) for s, e, token in work.claims if token in (DATE, DOB) or _SHIFTED_DATE.fullmatch(token)]
        for start, end in dates:
            folded_start, folded_end = work.folded_index(start), work.folded_index(end)
            view = work.view()
            lead = _DATE_LEAD.search(view[max(0, folded_start - 40):folded_start])
            if lead is not None and lead.group(0).strip():
                work.extend_claim(start, folded_start - len(lead.group(0)), folded_end)
                folded_start -= len(lead.group(0))
            tail = _DATE_TAIL.match(view, folded_end)
            if tail is not None:
                work.extend_claim(start, folded_start, tail.end())

    def _replace_whole_dates(self, work: _Work) -> None:
        """Dates that cannot be anything else, claimed before the clinical values so that none keeps a piece of
        one (a score or a lab value written against it: "VAS 12/04/1971", "CRP 12.04.2020"): the patient's
        birth date in any form, and every date with its year in four digits or its month in words."""
        for kind, pattern in _DATE_PATTERNS:
            for match in list(pattern.finditer(work.view())):
                token = self._date_token(kind, match.groups())
                whole = kind in _WHOLE_DATE_KINDS or (kind == "numeric" and len(match.group(3)) == 4)
                if token == DOB or whole:
                    work.claim(match.start(), match.end(), token)

    def _date_token(self, kind: str, groups: Sequence[str]) -> str:
        candidates = _date_candidates(kind, groups, self._day_first)
        if any(day in self._birth_dates for day in candidates):
            return DOB
        if not candidates:
            return DATE
        shifted = candidates[0] + self._offset
        return DATE if shifted in self._birth_dates else f"[{shifted.isoformat()}]"

    def _replace_name_tokens(self, work: _Work) -> None:
        view = work.view()
        for match in list(_LETTER_TOKEN.finditer(view)):
            token = match.group(0).lower()
            original = work.original_slice(match.start(), match.end())
            if token in self._name_parts or (
                len(token) >= _FUZZY_MIN_LENGTH and original[:1].isupper() and not is_common_word(token)
                and any(levenshtein_at_most_one(token, part) for part in self._fuzzy_parts)
            ):
                work.claim(match.start(), match.end(), NAME)
            elif token in self._ambiguous_parts and self._used_as_name(work, match.start(), match.end()):
                work.claim(match.start(), match.end(), NAME)

    def _used_as_name(self, work: _Work, start: int, end: int) -> bool:
        """An ordinary word that is also the patient's name is a name here: capitalised, and after a title,
        next to another part of the name, possessive, or capitalised mid-sentence and standing alone."""
        original = work.original_slice(start, end)
        if not original[:1].isupper():
            return False
        before, after = work.folded[max(0, start - 40):start], work.folded[end:end + 40]
        if work.language == "de" and re.search(r"\b[a-zäöüß]+\s+$", before) and not re.search(
                r"\b(?:herr|herrn|frau|dr|prof|von|zu)\.?\s+$", before):
            return False  # German writes every noun capitalised: "ein frischer Bruch" is the fracture
        if re.search(r"(?:\b(?:dr|mr|mrs|ms|miss|mx|prof|professor|herr|herrn|frau|sir|dame|m|mme|mlle|monsieur|"
                     r"madame|fru|hr|doc|sgt|cpl|pte|capt|maj|col|lt|sr|sra|dott)\.?\s*|"
                     r"\b(?:name|surname|nom|name ist|heisst|heißt|called|named)\s+(?:is\s+|:\s*)?|"
                     r"\x00[\s,]*|(?:patient|pt|name|nee|geb\.?)[:\s]+)$", _masked_tail(work, start), re.IGNORECASE):
            return True
        if _NAME_BETWEEN.search(_masked_tail(work, start)):
            return True  # after the given name and a middle initial or nickname: "Harold W. Parkinson"
        if re.search(r"[\"“„«]$", before) and re.match(r"[\"”»]", after):
            return True  # quoted alone, the name itself: "transliterated as \"Sjogren\""
        if re.match(rf"\s+{_NAME_VERBS}\b", after) and re.search(r"(?:^|[.!?:;\n(]\s*)$", before) and \
                _fold_plain(original) in (self._given_parts | self._ambiguous_parts):
            return True  # "Patrick is a 41-year-old", "Power reports weakness"
        if is_clinical_word(original) and CLINICAL_NOUN_AFTER.match(
                after[2:] if re.match(r"['’]s\b", after) else after):
            return False  # "Bell's palsy", "Hoffmann sign", "Brown-Séquard"
        if re.match(r"[\s,]*\x00", work.view()[end:end + 4]) or re.match(r"['’]s\b", after):
            return True
        if re.match(r"[\s,]+(?:[a-z]+\s+)?[^\W\d_]", after) and self._next_word_is_name(after):
            return True
        joined = re.match(r"[\-/]", after) or re.search(r"[\-/]$", before)
        if joined or not original.isalpha() or is_clinical_word(original):
            return False  # "Brown-Séquard", "Power 4/5" (power is a clinical word)
        if re.search(r"(?:^|[.!?:;\n(]\s*)$", before):
            if _fold_plain(original) in self._given_parts:
                return True  # a given name (Alan, Margaret) opens a sentence as a name, not as a word
            # At the start of a sentence "Long history", "Brown urine" are words; "Smith reports",
            # "Margaret (Peggy)", "Alan L4-L5" and "Weeks, 54," are the name.
            return not re.match(r"\s+[a-zß-ÿ]", after) or re.match(rf"\s+{_NAME_VERBS}\b", after) is not None
        return original.isupper() or original.istitle()

    def _next_word_is_name(self, after: str) -> bool:
        word = re.match(r"[\s,]+([^\W\d_]+)", after)
        return word is not None and word.group(1).lower() in self._name_parts


#: A removed name, then a middle initial or a nickname in quotes or brackets, before a surname.
def _after_title(match: re.Match[str]) -> bool:
    """``match`` stands after a title ("Mrs Paget's test results" is the patient, no eponym)."""
    return re.search(r"(?i:\b(?:dr|mr|mrs|ms|miss|mx|prof|herr|frau|mme|m)\.?\s*)$",
                     match.string[max(0, match.start() - 8):match.start()]) is not None


#: Words after which a capitalised word is more likely a person than the first half of an eponym.
_PERSON_PREPOSITION = re.compile(r"(?i:\b(?:by|to|from|with|and|for|cc|von|durch|für|an|par|pour|avec|et)[\s:,]+)$")

_NAME_BETWEEN = re.compile(r"\x00\.?[\s,]+(?:[a-z]\.?|[\"“'‘(][^\"”'’)\n]{1,24}[\"”'’)])\s+$", re.IGNORECASE)

_NAME_VERBS = (r"(?:is|was|has|had|reports?|reported|says|said|states|stated|describes|described|complains|"
               r"presents|presented|denies|denied|feels|felt|tells|told|attends|attended|came|went|lives|lived|"
               r"works|worked|walks|would|will|can|could|does|did|notes|noticed|wants|wishes|asks|asked|"
               r"ist|war|hat|hatte|berichtet|klagt|gibt|kam|wurde|wird|kann|möchte|lebt|arbeitet)")


def _given_names(name: str) -> list[str]:
    """The given names of a person name: after the family name in DICOM form (Doe^Jane^Marie), before it
    otherwise (Dr Alan Whitcombe)."""
    if "^" in name:
        return [g for g in name.split("^")[1:3] if g]
    words = [w for w in re.split(r"[\s,]+", name) if w and _fold_plain(w).rstrip(".") not in _TITLES]
    return words[:-1]


#: Where a capitalised word is a place even when a scale is named after it ("lives in Oxford", "Oxford scale").
_RESIDENCE_BEFORE = re.compile(r"(?i:\b(?:in|from|at|near|aus|nach|bei|im|à|a|en|i|fra|från)\s+)$")


def _place_after_preposition(text: str, entity: Entity) -> bool:
    """A place the gazetteer names, capitalised after a place preposition and with no clinical noun after it."""
    value = text[entity.start:entity.end]
    return entity.kind == PLACE and value[:1].isupper() and not value.isupper() and \
        _RESIDENCE_BEFORE.search(text[max(0, entity.start - 8):entity.start]) is not None and \
        CLINICAL_NOUN_AFTER.match(text, entity.end) is None


def _only_clinical_words(text: str) -> bool:
    words = _WORDS.findall(text)
    return bool(words) and all(is_curated_clinical(w) or is_clinical_word(w) for w in words)


def _masked_tail(work: _Work, start: int) -> str:
    return work.view()[max(0, start - 40):start]


def _is_cjk(text: str) -> bool:
    return any("\u3040" <= c <= "\u9fff" or "\uac00" <= c <= "\ud7af" for c in text)


def _spellings(part: str) -> set[str]:
    """A folded name part and its German transliteration (Müller → mueller, Strauß → strauss)."""
    umlauts = {"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "æ": "ae", "ø": "oe"}
    return {part, "".join(umlauts.get(c, c) for c in part)}


def _is_month_word(match: re.Match[str]) -> bool:
    """"late May" is a month; "early may" and "mid march" in lower case are words of English."""
    month = re.search(r"[^\W\d_]+(?=\W*(?:['’]\d{2})?$)", match.group(0))
    return month is None or month.group(0)[:1].isupper() or month.group(0).lower() not in ("may", "march", "mar")


def _month_number(word: str) -> int:
    """The month of a month name or abbreviation in any of the notes' languages (folded: "fevrier" is 2)."""
    word = word.lower().rstrip(".")
    for length in (4, 3):
        if word[:length] in _MONTHS:
            return _MONTHS[word[:length]]
    raise KeyError(word)


def _year(text: str) -> int:
    year = int(text)
    if len(text) == 2:
        year += 2000 if year < _TWO_DIGIT_YEAR_PIVOT else 1900
    return year


def _safe_date(year: int, month: int, day: int) -> datetime.date | None:
    try:
        return datetime.date(year, month, day)
    except ValueError:
        return None


def _date_candidates(kind: str, groups: Sequence[str], day_first: bool) -> list[datetime.date]:
    """Possible readings of a date match, preferred first; [] when none is a valid date."""
    if kind in ("ymd", "compact"):
        readings = [(int(groups[0]), int(groups[1]), int(groups[2]))]
    elif kind == "numeric":
        first, second, year = int(groups[0]), int(groups[1]), _year(groups[2])
        day_month = (year, second, first)
        month_day = (year, first, second)
        readings = [day_month, month_day] if day_first else [month_day, day_month]
    elif kind == "dmy_text":
        readings = [(_year(groups[2]), _month_number(groups[1]), int(groups[0]))]
    elif kind == "mdy_text":
        readings = [(int(groups[2]), _month_number(groups[0]), int(groups[1]))]
    elif kind == "holiday":
        month, day = _HOLIDAYS[re.sub(r"[^a-z1]", "", groups[0].lower())]
        readings = [(int(groups[1]), month, day)]
    else:  # month and year only: not a day, cannot be shifted
        return []
    return [d for d in (_safe_date(*r) for r in readings) if d is not None]


@dataclass(frozen=True)
class ScrubbedPain:
    """Pain pattern with scrubbed text fields."""

    location: str | None = None
    intensity: int | None = None
    nature: str | None = None
    duration_weeks: int | None = None
    radiation: str | None = None


@dataclass(frozen=True)
class ScrubbedNotes:
    """The clinical notes of a referral, free of identifiers, ready for the DICOM builders."""

    urgency: Urgency
    flags: tuple[FlagFinding, ...] = ()
    history: str | None = None
    symptoms: str | None = None
    pain: ScrubbedPain | None = None
    examination: str | None = None
    emg: str | None = None
    prior_treatment: str | None = None
    prior_imaging: str | None = None
    question: str | None = None
    subspecialty: str | None = None
    # Not the referrer's words: the gateway's list of the priors sent with the case (modality, body part, date
    # relative to the case's study; gateway.routing.priors), or why there are none.
    priors: str | None = None

    def texts(self) -> list[str]:
        """Every free-text value of the notes (for checks and previews)."""
        values = [self.history, self.symptoms, self.examination, self.emg, self.prior_treatment,
                  self.prior_imaging, self.question, self.subspecialty, self.priors]
        if self.pain is not None:
            values += [self.pain.location, self.pain.nature, self.pain.radiation]
        values += [f.phrase for f in self.flags]
        return [v for v in values if v]


def scrub_referral(referral: Referral, date_offset_days: int, institution_names: Iterable[str] = (),
                   *, day_first: bool = True, known: KnownIdentifiers | None = None) -> ScrubbedNotes:
    """Scrub every free-text field of ``referral`` and combine declared and detected red flags.

    Red flags are detected on the original text (identifiers do not affect them); their trigger
    phrases are scrubbed too. The urgency is ``urgent`` if the referrer said so or any red flag,
    declared or detected, other than the three non-urgent ones is present. ``known`` replaces the
    identifiers taken from the referral itself (the node passes those of the whole case).
    """
    if not isinstance(referral, Referral):
        raise TypeError("referral must be a Referral")
    known = known or KnownIdentifiers.from_referral(referral, institution_names)
    clinical, pain = referral.clinical, referral.clinical.pain
    every_text = [clinical.history, clinical.symptoms, clinical.examination, clinical.emg, clinical.prior_treatment,
                  clinical.prior_imaging, clinical.question,
                  *((pain.location, pain.nature, pain.radiation) if pain else ())]
    # One language for the whole referral: a short field ("seit 3 Wochen") says too little on its own.
    language = detect_language(" ".join(t for t in every_text if t))
    scrubber = TextScrubber(known, date_offset_days, day_first=day_first, language=language)

    def clean(text: str | None) -> str | None:
        return scrubber.scrub(text) if text else None

    findings = tuple(replace(f, phrase=clean(f.phrase)) for f in flags_for(referral))
    urgent = referral.urgency is Urgency.URGENT or any(f.code not in NON_URGENT_FLAGS for f in findings)
    return ScrubbedNotes(
        urgency=Urgency.URGENT if urgent else Urgency.ROUTINE,
        flags=findings,
        history=clean(clinical.history),
        symptoms=clean(clinical.symptoms),
        pain=None if pain is None else ScrubbedPain(
            location=clean(pain.location), intensity=pain.intensity, nature=clean(pain.nature),
            duration_weeks=pain.duration_weeks, radiation=clean(pain.radiation),
        ),
        examination=clean(clinical.examination),
        emg=clean(clinical.emg),
        prior_treatment=clean(clinical.prior_treatment),
        prior_imaging=clean(clinical.prior_imaging),
        question=clean(clinical.question),
        subspecialty=clean(referral.subspecialty),
    )
