"""The scrubber's last layer: keep only what is known to be safe.

After the identifier rules (known identifiers, patterns, named entities) have claimed what they recognise, every
word and number still standing in the text is judged on its own:

* a **word** stays when it is known (:func:`gateway.privacy.vocabulary.is_known_word`: an ordinary word of the
  text's language or of English, or a clinical word). An unknown word that is capitalised, or written in
  capitals at five letters or more, goes (a village, a firm, a surname nobody declared); an unknown word in
  lower case stays (a typo, a rare clinical term) and is *marked* for the person who reviews the notes. A word
  that ends like a street (Danish -vej, German -straße, Swedish -gatan ...) goes as an address;
* a **number** stays only as a clinical value: a vertebral level, a score, a dose, a duration or a count with its
  unit, a year on its own, a number of one or two digits; every other number goes (house numbers of
  more than two digits, postcodes, national numbers and their fragments, phone numbers in any national format).
  Clinical values that carry their unit or label are protected earlier (``clinical_terms.CLINICAL_VALUE``).

The functions work on the scrubber's view of the text: folded letters (case kept), with what earlier rules
claimed masked by ``\\x00`` (removed) or ``\\x01`` (kept).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass

from gateway.privacy.text import has_non_latin_letters
from gateway.privacy.vocabulary import (
    is_clinical,
    is_clinical_acronym,
    is_curated_clinical,
    is_known_word,
    is_name_when_capitalised,
)
from gateway.privacy.words import TITLES, zipf
from gateway.referral.clinical_terms import is_clinical_word

__all__ = ["HOLIDAY_RUN", "HOLIDAY_WORDS", "Judgement", "is_day_or_month", "is_org_head", "is_org_tail", "judge"]

REMOVED, ADDRESS, ID = "[REMOVED]", "[ADDRESS]", "[ID]"

#: A word or number; the vowel signs of the Indic, Thai and Myanmar scripts (marks, no letters to ``\w``) are
#: part of the word they stand in.
_TOKEN = re.compile(r"(?:[^\W_]|[\u0900-\u0DFF\u0E00-\u0E7F\u1000-\u109F])+"
                    r"(?:['’\-](?:[^\W_]|[\u0900-\u0DFF\u0E00-\u0E7F\u1000-\u109F])+)*")
#: Letter and digit groups of plates and references: "MH 02 FG 4417", "B-EY 4471", "SG/PI/2024/33871".
_ALNUM_CLUSTER = re.compile(r"(?<![\w\x00\x01])(?:[A-ZÀ-Þ]{1,3}|[A-ZÀ-Þ]{4,6}(?=-)|\d+)"
                            r"(?:(?:[ /.]{1,2}|-)(?:[A-ZÀ-Þ]{1,3}|\d+)|-[A-ZÀ-Þ]{4,6})+(?![\w\x01])")
#: Roads and sectors by number: "A39", "US-59", "Route 27", "Interchange 4", "Sec 35".
_ROAD = re.compile(r"\b(?:[ABMNE]\d{1,4}(?![.,]\d)|(?:US|SR|CR|I|RN|RD|RV|Rte)-?\d{1,4}|"
                   r"(?i:route|highway|hwy|interstate|exit|"
                   r"junction|interchange|sec|sector|block|plot|lot|space|phase|gali|lane no)\.?\s?\d{1,4}[A-Z]?|"
                   # a street, zone, building or door by its number, as Gulf and Indian addresses give them
                   r"(?:Street|Road|Zone|Building|Bldg|Villa|Flat|Apt|Apartment|Room|House|Door)\.?\s?(?:No\.?\s?)?"
                   r"\d{1,4}[A-Z]?|(?:No|Door No|H\.?\s?No)\.\s?\d{1,4}/\d{1,4}[A-Z]?)\b")
#: Place names joined by their particle ("Luc-sur-Mer", "Frankfurt-am-Main") or named for a saint ("Saint-Denis").
_HYPHENATED_PLACE = re.compile(r"[A-ZÀ-Ý][^\W\d_]+(?:-(?:sur|sous|en|lès|les|le|la|de|du|des|aux|au|am|an|der|"
                               r"upon|on|by|in|under)-[A-ZÀ-Ý][^\W\d_]+)+|(?:Saint|Sainte|Sankt|San|Santa)-[A-ZÀ-Ý][^\W\d_]+"
                               r"(?:-[A-ZÀ-Ý][^\W\d_]+)*")
#: French (and Québec) streets, written in lower case: "rue de l'Arbalète", "avenue du Mont-Royal".
_FRENCH_STREET = re.compile(r"\b(?:rue|avenue|av\.|boulevard|bd|chemin|allee|impasse|place|quai|cours|route|rang|"
                            r"lieu-dit|montee|cote)\s+(?:(?:de\s+la|de|du|des|d['’]|l['’]|la|le|les)\s*){0,2}"
                            r"[A-Z][\w'’\-]+(?:[\s\-][A-Z][\w'’\-]+)*")
_CLUSTER = re.compile(r"\+?\(?\d+\)?(?:[ .\-/]\(?\d+\)?)+")  # digit groups joined by single separators
_STREET_END = re.compile(
    r"(?:stra(?:ss|ß)e|str|gasse|weg|allee|platz|ring|damm|ufer|chaussee|steig|pfad|zeile|"   # German
    r"vej|vejen|gade|gaden|stræde|straede|torv|alle|allé|plads|"                            # Danish
    r"gatan|gata|vagen|vägen|vag|väg|stigen|backe|torget|"                                 # Swedish
    r"veien|veg|vegen|gate|gaten|stien|"                                                    # Norwegian
    r"katu|kuja|polku|"                                                                     # Finnish
    r"gasse)$", re.IGNORECASE)
_SENTENCE_START = re.compile(r"(?:^|[.!?:;\n(\[•*\-–]\s*|\n\s*\d+[.)]\s*)$")
_UNIT_AFTER = re.compile(
    r"\s*[\-]?\s*(?:weeks?|wks?|w|days?|d|months?|mths?|mo|years?|yrs?|y|y/o|yo|hours?|hrs?|h|minutes?|mins?|"
    r"seconds?|secs?|times|x|episodes?|steps?|yards?|metres?|meters?|m|km|miles?|feet|foot|ft|inch(?:es)?|"
    r"degrees?|deg|°|pack|packs|pack-years?|cigarettes?|units?|tablets?|tabs?|doses?|levels?|segments?|"
    r"children|kids|pregnancies|floors?|stairs|flights?|sessions?|injections?|cycles?|per|a\b|an\b|"
    r"wochen|woche|tagen?|monaten?|monat|jahren?|jahre|jahr|stunden?|minuten|meter|schritte|grad|etagen?|mal|"
    r"semaines?|jours?|mois|ans?|années?|annees?|heures?|mètres?|metres?|étages?|fois|séances?|"
    r"uger?|dage|dag|måneder|maaneder|år|timer|ugers|veckor|vecka|dagar|månader|manader|timmar|uker|uke|dager|"
    r"viikkoa|päivää|kuukautta|vuotta)\b", re.IGNORECASE)
_LABEL_BEFORE = re.compile(
    r"(?<![^\W\d_])(?:grade|type|stage|level|score|class|classe|grad|typ|stadium|stufe|kraftgrad|power|mrc|asia|"
    r"vas|nrs|odi|ndi|gcs|bmi|temp|temperature|bp|hr|rr|sats|spo2|hb|crp|esr|wcc|x|n|nr|no|group|"
    r"phase|series|image|images|slice|slices|bild|serie|cycle|gravida|para|g|p|day|dag|tag|jour|week|woche|"
    r"semaine|post-op|postop|pod)\.?\s*[:=]?\s*$", re.IGNORECASE)
_ID_LABEL_BEFORE = re.compile(r"(?<![^\W\d_])(?:no|\bnr|#|number|nummer|numéro|numero|box|postfach|id|ref|mrn|nhs|ssn|"
                              r"cpr|pin|code|kode|plate|licen[cs]e)\.?\s*[:=]?\s*$", re.IGNORECASE)
_CLINICAL_ALNUM = re.compile(
    r"(?:[CTLS]\d{1,2}|Th\d{1,2}|[A-Za-z]{1,5}-?\d{1,2}[a-z]?|"        # L5, Th12, HLA-B27, PHQ9, SF-36
    r"\d{1,3}(?:st|nd|rd|th|er|e|ème|eme|x|T|yo|y|yrs?|h|hrs?|min|mins|d|wk|wks|w|mo|mos|mg|mcg|ml|kg|cm|mm|"
    r"m|km|g|l|°|%)|"                                                  # 3rd, 2x, 54yo, 50mg, 1.5T
    r"\d{1,2}[:h]\d{2}(?:am|pm)?|\d{1,2}(?:am|pm)|G\d+P\d+|"
    r"q\d{1,2}(?:h|hr|hrs|d|wk|wks|w|mo|m)?)")                          # dosing intervals: q8h, q2wk


def _muscle_grade(view: str, match: re.Match[str]) -> bool:
    """"M4" after a muscle or a movement is a strength grade (M0-M5); a motorway is written after "the" or a
    preposition ("off the M4", "via M5")."""
    return re.fullmatch(r"M[0-5]", match.group(0)) is not None and re.search(
        r"(?i:\b(?:the|on|off|near|via|from|to|onto|along|junction|j)\W*)$",
        view[max(0, match.start() - 12):match.start()]) is None


@dataclass(frozen=True)
class Judgement:
    """One token the allowlist removes (``token`` its replacement) or keeps unknown (``token`` None); positions
    in the scrubber's folded view."""

    start: int
    end: int
    token: str | None


def judge(view: str, original: Callable[[int, int], str], language: str,
          named: Iterable[tuple[int, int]] = (), places: Container[str] = ()) -> Iterator[Judgement]:
    """Judge every unclaimed token of ``view`` (see the module's docstring).

    Args:
        view: the folded text with claimed characters masked.
        original: the original text of a folded ``(start, end)``, to read accents and case as written.
        language: the language of the text (``vocabulary.LANGUAGES``).
        named: the spans earlier rules removed as names, places or organisations (a capitalised word next to
            one is taken with it).
        places: lower-case names of known places (the gazetteer): a town written after a removed name.
    """
    clusters = [(m.start(), m.end()) for m in _CLUSTER.finditer(view) if _cluster_is_identifier(view, m)]
    alphanumeric = [(m.start(), m.end()) for m in _ALNUM_CLUSTER.finditer(view)
                    if _enough_digits(view, m) and re.search(r"[A-Z]", m.group(0))
                    and not re.fullmatch(r"[A-Z]{1,5}[ \-]?\d{1,3}(?:[.,]\d)?/\d{1,3}", m.group(0))
                    and not _clinical_with_value(m.group(0))]
    # a reference with its letters ("BR-25-00877", "12 170279 K 005") replaces the bare number clusters it
    # overlaps, and takes in what they held beyond it (a closing bracket)
    whole = []
    for a, b in alphanumeric:
        overlapping = [(s, e) for s, e in clusters if s < b and a < e]
        whole.append((min([a, *(s for s, _ in overlapping)]), max([b, *(e for _, e in overlapping)])))
    clusters = [(s, e) for s, e in clusters if not any(s < b and a < e for a, b in whole)]
    clusters = sorted(set(clusters + [w for w in whole if not any(o != w and o[0] <= w[0] and w[1] <= o[1]
                                                                for o in whole)]))
    streets = [(m.start(), m.end()) for m in _ROAD.finditer(view) if not any(s <= m.start() < e for s, e in clusters)
               and not re.search(r"(?i:typ|type|grade|ao|class|classe|stadium|stage)\W*$",
                                 view[max(0, m.start() - 8):m.start()]) and not _muscle_grade(view, m)]
    streets += [(m.start(), m.end()) for m in _FRENCH_STREET.finditer(view)]
    clusters += streets
    tokens: list[_Token] = []
    for match in _TOKEN.finditer(view):
        start, end = match.start(), match.end()
        if any(s <= start and end <= e for s, e in clusters):
            continue
        written = original(start, end)
        verdict: str | None
        if any(c.isdigit() for c in match.group(0)):
            verdict = _KNOWN if _number_is_clinical(view, start, end) else ID
        else:
            verdict = _word_verdict(view, start, end, written, language)
        tokens.append(_Token(start, end, written, verdict))
    removed_already = [_Token(start, end, "X", "[MASKED]") for start, end in named]
    # a number cluster removed here takes a letter prefix joined to it ("BR-25-00877", "SG/PI/2024/33871")
    removed_already += [_Token(start, end, "0", "[CLUSTER]") for start, end in clusters]
    merged = sorted(tokens + removed_already, key=lambda t: t.start)
    _spread_over_names(view, merged, language, places)
    _capitalised_names_mid_sentence(view, tokens, language)
    _remove_nicknames(view, tokens)
    _names_after_titles_and_kin(view, tokens)
    _titles_and_credentials_of_names(view, merged)
    street_starts = {start for start, _ in streets}
    for token in tokens:  # the authority a road is numbered by: "BIA Route 27", "FM 1960", "NY Route 9"
        if token.verdict in (_KNOWN, None) and re.fullmatch(r"[A-Z]{2,5}", token.written) and \
                token.end + 1 in street_starts and view[token.end] == " ":
            token.verdict = ADDRESS
    for start, end in clusters:
        yield Judgement(start, end, ADDRESS if (start, end) in streets else ID)
    _words_of_dates(view, tokens)
    for index, token in enumerate(tokens[1:], start=1):
        before = tokens[index - 1]
        if token.verdict == "[DATE]" and before.verdict in (_KNOWN, None) and _ORDINAL_WORDS.fullmatch(
                before.written) and re.fullmatch(r"\s{1,2}(?:of\s)?", view[before.end:token.start]):
            before.verdict = "[DATE]"  # "am dritten Januar", "the thirtieth of October"
    _particles_inside_names(view, merged)
    _house_numbers_of_streets(view, merged)
    _org_tails(view, merged, capitalised_only=True)  # again: a name removed by the later rules takes its head
    for token in tokens:
        if token.verdict is not _KNOWN:
            yield Judgement(token.start, token.end, token.verdict)


#: Words that open a line or address someone: never taken into a name they stand before.
_NOT_ABSORBED = frozenset("""dear re to from cc dr mr mrs ms miss mx prof professor sir madam herr frau sehr
geehrte geehrter liebe lieber madame monsieur mme mlle cher chère chere kære kaere hej hei bonjour patient pt
name nom date datum attn fao""".split())


_KNOWN = "known"
_NAME_LIKE = frozenset({REMOVED, ADDRESS, "[NAME]", "[INSTITUTION]", "[MASKED]"})
_NICKNAME = re.compile(
    r"(?:\x00|\b(?:known as|goes by|called|aka|a\.k\.a\.|nicknamed|prefers|genannt|gen\.|dit|dite|surnommée?))"
    r"[\s,]*[\"“”'‘(„«]\s*([A-Z][^\W\d_]+)\s*[\"“”'’)»]|"
    r"\b(?:known as|goes by|called|aka|nicknamed|genannt|dit|dite|surnommée?)\s+([A-Z][^\W\d_]+)")


_QUOTED_WORD = re.compile(r"[\"“„«]\s?([A-Z][^\W\d_]+)\s?[\"”»]|\(\s?['‘]?([A-Z][^\W\d_]+)['’]?\s?\)")
_KIN = re.compile(
    r"(?i:\b(?:dr|mr|mrs|ms|miss|mx|prof|herr|herrn|frau|mme|mlle|m|fru|hr|sgt|doc|"
    r"husband|wife|partner|son|daughter|mother|mum|mom|father|dad|brother|sister|sister-in-law|brother-in-law|"
    r"friend|buddy|neighbour|neighbor|carer|caregiver|colleague|nurse|physio|uncle|aunt|niece|nephew|cousin|"
    r"grandson|granddaughter|fiancée?|caller|ehemann|ehefrau|tochter|sohn|bruder|schwester|mutter|vater|"
    r"nachbar|nachbarin|kollege|kollegin|mari|femme|épouse|epouse|fils|fille|frère|frere|sœur|soeur|mère|mere|"
    r"père|pere|voisin|voisine|ami|amie|compagnon|compagne|hustru|datter|søn|son|bror|søster|syster|dotter|"
    r"mand|maka|make)\.?\s+)$")


def _names_after_titles_and_kin(view: str, tokens: list[_Token]) -> None:
    """A capitalised word after a title, a relative or a role is a name, clinical word or not ("Dr Weber",
    "sister-in-law Gemma", "sa sœur Véronique"), unless a clinical noun follows ("Dr Weber's fracture" is rare)."""
    for index, token in enumerate(tokens):
        if token.verdict not in (_KNOWN, None) or not token.written[:1].isupper() or token.written.isupper():
            continue
        if token.written.lower() in _NOT_ABSORBED or token.written.lower() in TITLES:
            continue
        if _KIN.search(view[max(0, token.start - 20):token.start]):
            token.verdict = "[NAME]"
            following = tokens[index + 1] if index + 1 < len(tokens) else None
            if following is not None and following.verdict in (_KNOWN, None) and _is_capitalised(following) \
                    and re.fullmatch(r" ", view[token.end:following.start]) and not following.written.isupper():
                following.verdict = "[NAME]"


#: Ranks, academic and professional titles written before a name ("PD Dr.", "Mag.", "Oberfeldarzt", "Sgt").
_TITLE_BEFORE = re.compile(
    r"(?:PD|Mag|Dipl|Ing|DI|OA|OÄ|Prim|Univ|Doz|Sgt|Cpl|Capt|Cpt|Maj|Col|Lt|Det|Insp|Cst|PC|Pte|Spc|Sr|Br|Fr|"
    r"Rev|Hon|Shri|Smt|Sri|Kum|Staff|Nurse|Sister|Officer|Sergeant|Sergent|Corporal|Captain|Major|Colonel|"
    r"Lieutenant|Detective|Constable|Private|Conscript|Matron|Adv|Advocate|Er|"
    r"[^\W\d_]*(?:arzt|ärztin|aerztin|schwester|pfleger|feldwebel|leutnant|hauptmann|meister))")
#: Credentials written after a name ("Maria Castellanos, DO", "Luis Ortega, PA-C", "Kim R., RN").
_CREDENTIAL_AFTER = re.compile(
    r"(?:MD|DO|PA|PA-C|NP|APRN|FNP|FNP-BC|DNP|RN|BSN|LPN|CNA|PT|DPT|OT|OTR|DC|PhD|MBBS|MBChB|MRCP|FRCP|FRCS|"
    r"FRCR|MRCGP|FRACS|FACS|MS|MCh|DNB|MPT|BPT|CRNA|LCSW|PsyD|Dr\.?\s?med)")


def _titles_and_credentials_of_names(view: str, tokens: list[_Token]) -> None:
    """A rank or a title right before a removed name ("PD Dr. [NAME]", "Oberfeldarzt Dr. [NAME]") and a
    credential right after it (", DO", ", PA-C") are part of the name as written."""
    for index, token in enumerate(tokens):
        if token.verdict not in ("[NAME]", "[MASKED]", REMOVED):
            continue
        probe = index - 1
        while probe >= 0 and re.fullmatch(r"\.?[ \t]{1,2}", view[tokens[probe].end:token.start if probe == index - 1
                                                                     else tokens[probe + 1].start]):
            before = tokens[probe]
            if before.verdict in (_KNOWN, None) and _TITLE_BEFORE.fullmatch(before.written):
                before.verdict = "[NAME]"
            elif before.written.lower().rstrip(".") not in ("dr", "prof", "med", "herr", "frau", "mr", "mrs", "ms"):
                break
            probe -= 1
        if index + 1 < len(tokens):
            after = tokens[index + 1]
            if after.verdict in (_KNOWN, None) and _CREDENTIAL_AFTER.fullmatch(after.written) and \
                    re.fullmatch(r"\.?,[ \t]", view[token.end:after.start]):
                after.verdict = "[NAME]"


_JOINING_PARTICLES = frozenset("""of and for the de du des la le al el bin von van der den zu y da di dos på af av
ved et und og och e i""".split())
_CONJUNCTIONS = frozenset("and und et og och y e i".split())


def _particles_inside_names(view: str, tokens: list[_Token]) -> None:
    """One or two particles between two removed parts of a name on the same line are part of that name
    ("[Houillères] du [Bassin] du [Nord]", "[Cercle Nautique] et [Touristique]", "[Bank] of the [West]"); a
    conjunction joins only within an organisation's name ("[Peter] and [Anna]", "[Leeds] and [York]" are two)."""
    for index, token in enumerate(tokens):
        if token.verdict not in _NAME_LIKE:
            continue
        following = index + 1
        while following < len(tokens) and following <= index + 2 and tokens[following].verdict in (_KNOWN, None) \
                and tokens[following].written.lower() in _JOINING_PARTICLES:
            following += 1
        if following == index + 1 or following >= len(tokens) or tokens[following].verdict not in _NAME_LIKE:
            continue
        between = tokens[index + 1:following]
        if not all(re.fullmatch(r"[ \t]+", view[a.end:b.start]) for a, b in zip(tokens[index:following],
                                                                               tokens[index + 1:following + 1])):
            continue
        if any(word.written.lower() in _CONJUNCTIONS for word in between) and (
                token.verdict != "[INSTITUTION]" or _starts_an_organisation(tokens[following:following + 2])):
            continue  # "[Peter] and [Anna]", "[3rd Battalion] and [7 Corps]": two; "[Cercle Nautique] et ..." is one
        label = token.verdict if token.verdict != "[MASKED]" else tokens[following].verdict
        for word in between:
            word.verdict = label if label != "[MASKED]" else REMOVED


#: A street's head written as its own word after the street's name: "Bygdøy allé", "Kongens gate".
_STREET_WORD = re.compile(r"(?i:all[ée]|alle|vej|gade|gate|gata|gatan|v[äa]g|v[äa]gen|veien|vegen|weg|platz|plads|"
                          r"torv|torget|stra(?:ss|ß)e|str|gasse|ring|damm|ufer|kuja|katu|tie)\.?")


def _house_numbers_of_streets(view: str, tokens: list[_Token]) -> None:
    """A street removed takes its own head written as a word after it ("[Bygdøy] allé") and its house number
    written right before or after it ("4 [place du Marché]", "[Kieler Straße] 40"), not a count with its unit."""
    for index, token in enumerate(tokens):
        street = token.verdict == ADDRESS or (token.verdict == "[CLUSTER]" and _FRENCH_STREET.match(view, token.start))
        after = tokens[index + 1] if index + 1 < len(tokens) else None
        if token.verdict in _NAME_LIKE and after is not None and after.verdict in (_KNOWN, None) and \
                _STREET_WORD.fullmatch(after.written) and view[token.end:after.start] == " ":
            after.verdict = token.verdict = ADDRESS
            street, token = True, after
            after = tokens[index + 2] if index + 2 < len(tokens) else None
        if not street:
            continue
        for number in (tokens[index - 1] if index else None, after):
            if number is None or number.verdict not in (_KNOWN, None) or \
                    not re.fullmatch(r"\d{1,4}[a-zA-Z]?", number.written):
                continue
            gap = view[number.end:token.start] if number.end <= token.start else view[token.end:number.start]
            if gap == " " and not _UNIT_AFTER.match(view, number.end):
                number.verdict = ADDRESS


def _starts_an_organisation(words: list[_Token]) -> bool:
    """The words after a conjunction name an organisation of their own: a number or an organisation's head."""
    return bool(words) and (words[0].written[:1].isdigit() or any(
        _ORG_HEAD.fullmatch(word.written.rstrip(".")) for word in words))


def _remove_nicknames(view: str, tokens: list[_Token]) -> None:
    """A nickname given in quotes or brackets, or after "known as", goes wherever it is used."""
    nicknames = {m.group(1) or m.group(2) for m in _NICKNAME.finditer(view)}
    nicknames |= {word for m in _QUOTED_WORD.finditer(view) for word in m.groups()
                  if word and not is_curated_clinical(word) and not is_clinical_word(word)}
    if not nicknames:
        return
    for token in tokens:
        if token.verdict in (_KNOWN, None) and view[token.start:token.end] in nicknames:
            token.verdict = "[NAME]"


@dataclass
class _Token:
    start: int
    end: int
    written: str
    verdict: str | None


_ORG_HEAD = re.compile(
    r"(?:hospitals?|clinic|clinics|klinik|klinikum|kliniken|clinique|hôpital|hopital|centre|center|zentrum|"
    r"institute|institut|university|universität|universite|université|college|school|schule|gymnasium|academy|"
    r"station|brigade|regiment|battalion|bn|division|corps|company|co|ltd|llc|inc|plc|gmbh|ag|sa|sarl|as|ab|"
    r"group|services|insurance|versicherung|assurance|bank|club|sc|fc|church|kirche|église|eglise|mosque|temple|"
    r"practice|praxis|cabinet|surgery|cluster|authority|trust|foundation|stiftung|healthcare|health|medicine|"
    r"medical|care|pharmacy|apotheke|pharmacie|prison|jail|mine|factory|fabrik|hotel|restaurant|cafe|café|"
    r"supermarket|store|stores|shop|markets?|farm|garage|airlines?|airways|railways?|police|army|navy|motors|"
    r"industries|logistics|systems|technologies|solutions|partners|associates|laboratory|laboratories|dairy|"
    r"rehab|rugby|administration|commission|mutualité|poste|"
    r"force|forces|team|league|building|house|tower|mall|plaza|park|lake|river|road|street|avenue|lane|"
    r"drive|way|close|crescent|terrace|gardens|square|estate|village|city|county|district|"
    r"sanatorium|ordination|hausarztpraxis|gemeinschaftspraxis|mvz|landesstelle|unfallkasse|krankenkasse|kasse|"
    r"feuerwache|feuerwehr|berufsfeuerwehr|polizei|bundeswehr|bataillon|kompanie|kaserne|stadtwerke|linien|kg|"
    r"chu|chr|chum|hôpital|hôpitaux|hopitaux|clinique|cabinet|mairie|régiment|regiment|caserne|lycée|lycee|"
    r"collège|école|ecole|mutualité|mutualite|mutuelle|librairie|boulangerie|pharmacie|usine|"
    r"sjukhus|sygehus|sykehus|sairaala|vårdcentral|vardcentral|legekontor|lægehus|laegehus|kommune|kommun|"
    r"hospitals|healthcare|fitness|motors|airways|logistics|solutions|partners|associates|"
    r"[^\W\d_]*(?:klinik|klinikum|praxis|kasse|wache|bataillon|schule|versicherung|werke|gmbh))$",
    re.IGNORECASE)
_PARTICLES = frozenset("of and for the & de du des la le al el bin von van der den zu y da di dos på af av ved".split())
_STATE_CODES = frozenset(
    "AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY NC ND "
    "OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY UK GB US USA UAE KSA NI".split())


def is_org_head(word: str) -> bool:
    """An organisation's head noun ("Center", "Hospitals", "Motors"): what names a place or firm, no eponym."""
    return _ORG_HEAD.fullmatch(word.lower().rstrip(".")) is not None


def is_org_tail(word: str) -> bool:
    """An organisation's head written after its name, also as the end of a Nordic compound ("centralsjukhus")."""
    return _ORG_TAIL.fullmatch(word) is not None


def _is_capitalised(token: _Token) -> bool:
    return token.written[:1].isupper() and any(c.isalpha() for c in token.written)


def _spread_over_names(view: str, tokens: list[_Token], language: str, places: Container[str]) -> None:
    """A removed capitalised word takes the capitalised words it stands with (and the particles between
    them): "Dubai Health", "Blue Cross Blue Shield of Illinois"; a run of capitalised words that ends in an
    organisation's or a place's head noun goes whole ("National Hospital for Neurology"); a state or country
    code next to what was removed goes with it ("Marietta, GA"); a token joined to a removed one by a hyphen,
    slash or dot goes with it ("WC" of "WC3049917284-0001")."""
    runs = _capitalised_runs(view, tokens)
    for run in runs:
        capitals = [t for t in run if _is_capitalised(t)]
        removed = any(t.verdict in _NAME_LIKE and _is_capitalised(t) for t in run)
        heads = [t for t in capitals if _ORG_HEAD.fullmatch(t.written.rstrip(".")) and not re.match(
            r"[ \t]{0,2}\x01", view[t.end:t.end + 3])]  # "Fußheber KG 2/5": a strength grade, no firm's "KG"
        headed = len(capitals) >= 2 and bool(heads)
        headed_by_word = headed and any(_ORG_HEAD.fullmatch(t.written.rstrip(".")) and not t.written.isupper()
                                        for t in capitals)
        if (removed and len(capitals) >= 2) or headed:
            for token in run:
                short_capitals = token.written.isupper() and len(token.written) <= 5 and not (
                    headed_by_word and token.written.isalpha() and not is_clinical(token.written)
                    and not is_clinical_word(token.written) and token.written not in _STATE_CODES)
                if token.verdict in (_KNOWN, None) and token.written.lower().rstrip(".") not in _NOT_ABSORBED \
                        and not short_capitals:
                    token.verdict = REMOVED
    for index, token in enumerate(tokens[:-1]):
        after = tokens[index + 1]
        if token.verdict not in (_KNOWN, None) or after.verdict in (_KNOWN, None) or not _is_capitalised(after):
            continue
        gap = view[token.end:after.start]
        if re.fullmatch(r"\.?/?\s{0,2}", gap) and (re.fullmatch(r"\d{1,4}(?:st|nd|rd|th|e|er|ème)", token.written)
                                                   or (gap.startswith(".") and token.written.isdigit())):
            token.verdict = REMOVED  # "82nd Airborne Division", "2e régiment", "3./Panzergrenadierbataillon"
        elif re.fullmatch(r"\s(?:(?:de|du|des|of|for|am|im|an|der|des)\s)?|\sd['’]", gap) and \
                _ORG_HEAD.fullmatch(token.written):
            token.verdict = REMOVED  # "hôpital d'Aurillac", "mairie de Belin-Béliet"
    _head_first_organisations(view, tokens)
    _numbered_units(view, tokens)
    _org_tails_and_cues(view, tokens, language)
    _numbers_after_organisations(view, tokens)
    _acronyms_and_forms_beside_organisations(view, tokens)
    _towns_after_removed_names(view, tokens, places)
    changed = True
    while changed:
        changed = False
        for index, token in enumerate(tokens):
            if token.verdict not in (_KNOWN, None):
                continue
            if _touches_removed(view, tokens, index) or (
                    token.written in _STATE_CODES and _next_to_removed(view, tokens, index)):
                token.verdict = ID if any(c.isdigit() for c in token.written) else REMOVED
                changed = True


_ORG_TAIL = re.compile(
    r"(?i:health|centre|center|station|clinic|hospital|practice|surgery|school|hf|ehf|as|asa|ab|oy|oyj|gmbh|ag|sa|"
    r"sas|sarl|llc|inc|ltd|plc|site|plant|factory|mine|depot|warehouse|unit|ward|laboratory|lab|garage|yard|"
    r"dairy|mill|works|university|fc|if|bk|ik|sk|club|pd|fd|afb|police|sheriff|precinct|barracks|platoon|company|"
    r"squadron|battalion|regiment|brigade|"
    # Nordic heads, alone or at the end of a compound, with or without their definite ending
    r"[^\W\d_]*(?:legekontor|legesenter|legevakt|lægehus|laegehus|lægepraksis|vårdcentral|vardcentral|vårdcentrum|"
    r"hälsocentral|halsocentral|kommun|kommune|kyrka|kirke|kirkja|skole|skola|skóli|lasarett|sjukhus|sjukehus|sykehus|"
    r"sygehus|sairaala|terveysasema|terveyskeskus|fysioterapia|fysioterapi|postterminal|terminal|omsorg|"
    r"universitet|högskola|hogskola|gymnasium|videregående|videregaende|klubb|sameby|förening|forening|"
    r"forbund|förbund|rederi|verkstad|verksted|værksted)(?:et|en|an|n|a|t)?)")
#: Where a place's own lower-case head follows its name: "Hebbal flyover", "Cutbona jetty".
_PLACE_TAIL = re.compile(r"(?i:flyover|jetty|bridge|junction|chowk|bazaar|quay|pier|harbour|harbor|marina|"
                         r"roundabout|crossing|underpass|overpass|länken|lanken|leden|broen|bron)")
_AFFILIATION_CUE = re.compile(
    r"(?i:\b(?:employer|employed by|works? (?:at|for|in)|worked (?:at|for)|working (?:at|for)|insurer|insured with|"
    r"carrier|arbeitgeber|dienstgeber|beschäftigt bei|arbeitet bei|versichert bei(?: der)?|chez|pour|travaille à|"
    r"travaille au|employé (?:à|par)|affiliée? à(?: la)?|arbejder (?:hos|på|for)|arbeider (?:i|på|for|hos)|"
    r"arbetar (?:på|för|hos)|jobber (?:i|på|for|hos)|drives for|rides for|driver for|rider for|at the|at)"
    r"\s*[:(]?\s*)$")


#: Heads that open an organisation's name in French, German and the Nordic languages (and in English names
#: built the same way): "hôpital Lariboisière", "centre hospitalier du Chinonais", "Klinik für Neurologie",
#: "Hausarztpraxis am Lindenkeller", "Institut Gustave-Roussy".
_HEAD_FIRST = re.compile(
    r"(?i:hôpital|hopital|hôpitaux|hopitaux|centre|center|clinique|cliniques|cabinet|maternité|maternite|mairie|"
    r"institut|institute|université|universite|universität|universitat|école|ecole|lycée|lycee|collège|college|"
    r"caserne|régiment|regiment|bataillon|klinik|kliniken|klinikum|universitätsklinik|universitatsklinik|"
    r"universitätsklinikum|praxis|hausarztpraxis|gemeinschaftspraxis|physio|physiotherapie|schule|hospital|"
    r"clinic|school|university|maison|résidence|residence|ehpad|chu|chr|chum|mutualité|mutualite|mutuelle|"
    r"commission|ministère|ministere|ministerium|sjukhus|sykehus|sygehus|deild|legevakt|fakultät|faculté|"
    r"boulevard|avenue|rue|chemin|allée|allee|impasse|quai)")
_STREET_HEAD = re.compile(r"(?i:boulevard|avenue|rue|chemin|allée|allee|impasse|quai)")
_HEAD_JOINERS = frozenset("""de du des d l la le les et à a au aux en sur für fur am im an der die das dem den
zum zur of for the and på i av af ved""".split())
_ROMAN = re.compile(r"(?:I{1,3}|IV|VI{0,3}|IX|X{1,3})")


def _head_first_organisations(view: str, tokens: list[_Token]) -> None:
    """An organisation head followed, within a few lower-case words and particles on the same line, by a name
    (removed already, or capitalised): the head, the words between and the name go together ("hôpital
    d'Aurillac", "Centre de santé Henri-Barbusse", "Cabinet de kiné du Port")."""
    for index, token in enumerate(tokens):
        if token.verdict not in (_KNOWN, None) or not _HEAD_FIRST.fullmatch(_without_elision(token.written)):
            continue
        end = _name_after_head(view, tokens, index)
        if end is None:
            continue
        label = ADDRESS if _STREET_HEAD.fullmatch(_without_elision(token.written)) else "[INSTITUTION]"
        for word in tokens[index:end + 1]:
            if word.verdict in (_KNOWN, None):
                word.verdict = label


def _name_after_head(view: str, tokens: list[_Token], index: int) -> int | None:
    """The index of the last word of the name that follows the head at ``index``, or None."""
    lower_words = 0
    position = index + 1
    while position < len(tokens) and position <= index + 6:
        token, before = tokens[position], tokens[position - 1]
        if not re.fullmatch(r"[ \t]{1,2}|['’]|[ \t]?[-–][ \t]?", view[before.end:token.start]):
            return None
        bare = _without_elision(token.written)
        if token.verdict in _NAME_LIKE or (_is_name_word(token) and (tokens[index].written[:1].isupper() or not (
                is_clinical(token.written) or is_clinical_word(token.written)))):
            return _end_of_name(view, tokens, position)  # "clinic for Pain" is no name; "Klinik für Neurologie" is
        if token.written.lower() in _HEAD_JOINERS or bare.lower() in _HEAD_JOINERS:
            position += 1
            continue
        if bare.islower() and token.verdict in (_KNOWN, None) and lower_words < 2:
            lower_words += 1
            position += 1
            continue
        if bare[:1].isupper() and bare != token.written and bare.isalpha():
            return _end_of_name(view, tokens, position)  # "d'Aurillac", "l'Arbalète"
        return None
    return None


def _is_name_word(token: _Token) -> bool:
    """A capitalised word of letters (no level such as "L4", no acronym of a clinical test)."""
    word = _without_possessive(token.written)
    return word[:1].isupper() and any(c.islower() for c in word) and word.replace("-", "").isalpha() \
        and word.lower() not in _NOT_ABSORBED


def _end_of_name(view: str, tokens: list[_Token], position: int) -> int:
    """The name that starts at ``position`` runs on through capitalised words, removed words, Roman numerals and
    the particles between them ("Bout du Monde", "Toulouse III – Paul Sabatier")."""
    last = position
    probe = position + 1
    while probe < len(tokens) and re.fullmatch(r"['’]?[ \t]{1,2}|-|[ \t]?[-–][ \t]?",
                                               view[tokens[probe - 1].end:tokens[probe].start]):
        token = tokens[probe]
        if token.verdict in _NAME_LIKE or _is_name_word(token) or _ROMAN.fullmatch(token.written):
            last = probe
        elif token.written.lower() not in _HEAD_JOINERS:
            break
        probe += 1
    return last


#: The head of a numbered unit: "4 Corps", "3rd Battalion", "1st Bn", "Riverton 4th Ward", "2e régiment".
_UNIT_HEAD = re.compile(
    r"(?i:corps|battalion|bn|regiment|regt|brigade|bde|division|div|company|coy|squadron|sqn|platoon|troop|"
    r"battery|wing|fleet|infantry|rifles|artillery|engineers|signals|para|commando|ward|legion|régiment|"
    r"bataillon|compagnie|escadron|kompanie|staffel|geschwader|[^\W\d_]*bataillon|precinct|district|local|"
    r"station|unit|lodge|chapter|post)")


def _numbered_units(view: str, tokens: list[_Token]) -> None:
    """A number or ordinal before a capitalised run that names a unit, or before a name removed already (as a
    military unit is written: "4 JAT", "14 Sikh Light Infantry"), goes with it; so does the run."""
    for index, token in enumerate(tokens[:-1]):
        if token.verdict not in (_KNOWN, None) or not re.fullmatch(r"\d{1,3}(?:st|nd|rd|th|e|er|ème)?", token.written):
            continue
        run: list[_Token] = []
        probe = index + 1
        while probe < len(tokens) and re.fullmatch(r"\.?/?[ \t]{0,2}|['’][ \t]", view[tokens[probe - 1].end:
                                                                                      tokens[probe].start]):
            following = tokens[probe]
            if not (_is_capitalised(following) and not any(c.isdigit() for c in following.written)):
                break
            run.append(following)
            probe += 1
        following = tokens[index + 1]
        if not run and _LOWER_UNIT_HEAD.fullmatch(following.written) and re.fullmatch(r"[ \t]", view[
                token.end:following.start]):
            token.verdict = following.verdict = "[INSTITUTION]"  # "2e régiment étranger", "3 bataillon"
            continue
        if not run or view[token.end:run[0].start] == "":
            continue
        if any(_UNIT_HEAD.fullmatch(t.written) for t in run) or \
                (run[0].verdict in _NAME_LIKE and not _UNIT_AFTER.match(view, token.end)):
            for word in [token, *run]:
                if word.verdict in (_KNOWN, None):
                    word.verdict = "[INSTITUTION]"


_LOWER_UNIT_HEAD = re.compile(r"(?i:régiment|regiment|bataillon|battalion|compagnie|escadron|brigade|kompanie)")


def _numbers_after_organisations(view: str, tokens: list[_Token]) -> None:
    """A number written after an organisation's or a place's name is part of it ("SDIS 35", "IBEW Local 584",
    "Leeco No. 62", a boat's "VE 15", "Paris 13e", "Saint-Denis (93)"): it goes when no unit follows it."""
    for index, token in enumerate(tokens[1:], start=1):
        before = tokens[index - 1]
        if token.verdict not in (_KNOWN, None) or not re.fullmatch(r"\d{1,4}|\d{1,2}(?:e|ème|eme)", token.written):
            continue
        if before.verdict not in _NAME_LIKE or not (before.verdict == "[INSTITUTION]" or before.written.isupper()):
            continue
        bracketed = view[before.end:token.start] == " (" and view[token.end:token.end + 1] == ")"
        if (bracketed or re.fullmatch(r"[ \t]|[ \t]No\.?[ \t]", view[before.end:token.start], re.IGNORECASE)) and \
                not _UNIT_AFTER.match(view, token.end) and not _DOSE_UNIT.match(view, token.end):
            token.verdict = "[INSTITUTION]"


def _towns_after_removed_names(view: str, tokens: list[_Token], places: Container[str]) -> None:
    """A known place written after a removed name and a comma, at the end of its clause, is that name's town
    ("Nuffield Orthopaedic Centre, Oxford", "Dr Nguyen, Paris"), even when it is also a word."""
    for before, token in zip(tokens, tokens[1:]):
        if token.verdict not in (_KNOWN, None) or before.verdict not in _NAME_LIKE or not token.written.istitle():
            continue
        clause_ends = re.match(r"[ \t]*(?:[.,;)\n]|$)", view[token.end:]) is not None
        if re.fullmatch(r",[ \t]+", view[before.end:token.start]) and clause_ends \
                and token.written.lower() in places and not is_clinical_word(token.written):
            token.verdict = ADDRESS


_LEGAL_FORM = re.compile(r"(?i:ltd|inc|llc|plc|gmbh|corp|bv|nv|oy|oyj|sarl|sas|pty|pvt)")


def _acronyms_and_forms_beside_organisations(view: str, tokens: list[_Token]) -> None:
    """A short acronym written against an organisation's or a place's removed name is part of it ("MC Liège",
    "UZ Brussel", "IF Metall", "Oakland PD", "AP-HM"), unless it is a clinical abbreviation or a state code;
    so is a legal form after an abbreviation's dot ("Pvt. Ltd.")."""
    for index, token in enumerate(tokens):
        if token.verdict not in (_KNOWN, None):
            continue
        neighbours = [(tokens[index - 1], view[tokens[index - 1].end:token.start])] if index else []
        if index + 1 < len(tokens):
            neighbours.append((tokens[index + 1], view[token.end:tokens[index + 1].start]))
        beside = [n for n, gap in neighbours if n.verdict in ("[INSTITUTION]", "[MASKED]") and gap in (" ", "-")]
        if not beside:
            continue
        word = token.written
        if re.fullmatch(r"[A-Z]{2,5}", word) and word not in _STATE_CODES and not is_clinical(word) \
                and not is_clinical_word(word) and word.lower() not in _NOT_ABSORBED and word.lower() not in TITLES:
            token.verdict = "[INSTITUTION]"
    for before, token in zip(tokens, tokens[1:]):
        if token.verdict in (_KNOWN, None) and before.verdict in _NAME_LIKE and _LEGAL_FORM.fullmatch(token.written) \
                and re.fullmatch(r"\.?,?[ \t]", view[before.end:token.start]):
            token.verdict = "[INSTITUTION]"


def _org_tails(view: str, tokens: list[_Token], capitalised_only: bool = False) -> None:
    """An organisation's or a place's head written after its removed name goes with it ("Storhaug legesenter",
    "[St Anne]'s Ward", "[Oakland] PD", "[Hebbal] flyover")."""
    for index, token in enumerate(tokens):
        if token.verdict not in _NAME_LIKE:
            continue
        between: list[_Token] = []
        for before, following in zip(tokens[index:index + 4], tokens[index + 1:index + 5]):
            gap = view[before.end:following.start]
            if before is token and following.written == "s" and gap in ("'", "’"):
                following.start -= 1  # the possessive of a masked name, with its apostrophe: "[St Anne]'s Ward"
                between.append(following)
                continue
            possessive = (before is token and re.fullmatch(r"['’]s?[ \t]", gap) or between[-1:] and
                          between[-1].written == "s") and following.written[:1].isupper()
            if between[-1:] and between[-1].written == "s" and not possessive:
                break
            if following.verdict not in (_KNOWN, None) or not (re.fullmatch(r"[ \t]", gap) or possessive) or (
                    capitalised_only and not following.written[:1].isupper()):
                break
            tail = _ORG_TAIL.fullmatch(following.written) or _PLACE_TAIL.fullmatch(following.written)
            if tail is None and following.verdict is None and following.written.islower() and len(between) < 1:
                between.append(following)  # a word of the name in its own language: "Oulun kaupungin fysioterapia"
                continue
            if tail is None:
                break
            for word in [*between, following]:
                word.verdict = "[INSTITUTION]" if _ORG_TAIL.fullmatch(following.written) else ADDRESS
            between = []


def _org_tails_and_cues(view: str, tokens: list[_Token], language: str) -> None:
    """The lower-case head of an organisation after its removed name ("Storhaug legesenter", "Hervanta health
    centre") goes with it; so does a capitalised name after an employer's or an insurer's cue ("Employer:
    Amazon", "works at Tesco", "insurer (Progressive")."""
    _org_tails(view, tokens)
    for index, token in enumerate(tokens):
        if token.verdict not in (_KNOWN, None) or not token.written[:1].isupper() or token.written.isupper():
            continue
        if _clinical_not_everyday(token.written) or token.written.lower() in _NOT_ABSORBED:
            continue  # "Progressive" after "insurer (" names a firm; "Sciatica" after "at" does not
        cue = _AFFILIATION_CUE.search(view[max(0, token.start - 30):token.start])
        partner = _coordinated_with(view, tokens, index)
        if (cue is not None and (not cue.group(0).lower().startswith("at") or not _is_sentence_word(token))) or \
                partner is not None and (partner.verdict == "[INSTITUTION]" or language in _LOWER_CASE_NOUNS):
            # and what is named with it: "pour Uber et Bolt", "her sons Tom and Grace"
            token.verdict = "[INSTITUTION]" if partner is None or partner.verdict == "[INSTITUTION]" else REMOVED


_CONJUNCTION = re.compile(r"(?i:and|et|und|og|och|y|or|ou|oder|eller)")


def _coordinated_with(view: str, tokens: list[_Token], index: int) -> _Token | None:
    """The removed name, place or organisation that the token at ``index`` is joined to by a conjunction ("Uber
    et Bolt", "Tom and Grace"), if any."""
    token = tokens[index]
    if index >= 1 and tokens[index - 1].verdict in _NAME_LIKE and re.fullmatch(
            r"[ \t]*&[ \t]*", view[tokens[index - 1].end:token.start]):
        return tokens[index - 1]
    if index < 2:
        return None
    partner, conjunction = tokens[index - 2], tokens[index - 1]
    if partner.verdict in _NAME_LIKE and \
            _CONJUNCTION.fullmatch(conjunction.written) and \
            re.fullmatch(r"[ \t]+", view[partner.end:conjunction.start]) and \
            re.fullmatch(r"[ \t]+", view[conjunction.end:token.start]):
        return partner
    return None


#: Where a writer capitalises an ordinary word: a line's or a sentence's start, after a colon or a bullet.
_CAPITALISED_BY_POSITION = re.compile(r"(?:^|[.!?:;•*\n]\s*|\n\s*\d+[.)]\s*|\n\s*[\-–]\s*)$")
#: Languages that write ordinary nouns in lower case (German capitalises every noun).
_LOWER_CASE_NOUNS = frozenset({"en", "fr", "da", "sv", "nb", "es"})


def _capitalised_names_mid_sentence(view: str, tokens: list[_Token], language: str) -> None:
    """Two or more capitalised words in the middle of a sentence are a name, whatever words they are made of
    ("Elephant Physio", "Peachtree Spine & Sports", "Viking Line", "(Western Command)"): where ordinary words
    are written in lower case, capitals mark a proper noun. A run made only of clinical words ("Cauda Equina
    Syndrome"), of acronyms, titles or month names stays."""
    if language not in _LOWER_CASE_NOUNS:
        return
    for run in _capitalised_runs(view, tokens):
        words = [t for t in run if _is_capitalised(t) and t.written.isalpha() and len(t.written) >= 2]
        if len(words) < 2 or all(t.written.isupper() for t in words) or all(
                t.verdict not in (_KNOWN, None) for t in words):
            continue
        if _NAMED_INSTRUMENT.fullmatch(words[-1].written) or re.match(r"[ \t]*\d", view[run[-1].end:]) or any(
                t.written.isupper() and _clinical_not_everyday(t.written) for t in words):
            continue  # a named scale, sign or score: "Clinical Frailty Scale 6", "AO Spine", "TLSO Brace"
        if _CAPITALISED_BY_POSITION.search(view[max(0, run[0].start - 12):run[0].start]):
            continue
        if any(t.written.lower() in _NOT_ABSORBED or t.written.lower() in TITLES or
               _fold_month(t.written) in _MONTH_NAMES for t in words):
            continue
        partly_removed = any(t.verdict not in (_KNOWN, None) for t in words)
        if not partly_removed and all(_clinical_not_everyday(t.written) for t in words):
            continue  # a name partly removed takes its clinical words with it: "[Elephant] Physio"
        for token in run:
            if token.verdict in (_KNOWN, None) and token.written.lower() not in _PARTICLES:
                token.verdict = "[INSTITUTION]"


_NAMED_INSTRUMENT = re.compile(r"(?i:scale|score|test|sign|syndrome|disease|classification|grade|criteria|index|"
                               r"questionnaire|inventory|manoeuvre|maneuver|reflex|brace|collar|orthosis)")


def _clinical_not_everyday(word: str) -> bool:
    """A clinical word of the curated lists, a clinical acronym, or a word of the medical lists that everyday
    English does not use ("Cauda", "Equina"; not "Elephant", which the medical list also holds)."""
    if word.isupper():
        return is_clinical_acronym(word) or is_clinical_word(word)
    return is_curated_clinical(word) or is_clinical_word(word) or (is_clinical(word) and zipf(word) < 4.0)


def _fold_month(word: str) -> str:
    return word.lower().rstrip(".")


def _is_sentence_word(token: _Token) -> bool:
    """Words that follow "at" without naming a place ("at Night", "at Rest" in a heading)."""
    return token.written.lower() in {"night", "rest", "work", "home", "school", "times", "least", "first", "last",
                                     "present", "the", "this", "that", "risk", "baseline", "onset"}


def _capitalised_runs(view: str, tokens: list[_Token]) -> list[list[_Token]]:
    """Maximal runs of capitalised tokens on one line, joined by spaces and particles."""
    runs: list[list[_Token]] = []
    current: list[_Token] = []
    for token in tokens:
        joined = current and re.fullmatch(r"['’]?[ \t]{1,2}|[ \t]?&[ \t]?|-|[ \t][-–][ \t]",
                                          view[current[-1].end:token.start])
        if _is_capitalised(token) or (joined and token.written.lower() in _PARTICLES):
            if current and not joined:
                runs.append(current)
                current = []
            current.append(token)
        else:
            if current:
                runs.append(current)
            current = []
    if current:
        runs.append(current)
    for run in runs:
        while run and not _is_capitalised(run[-1]):
            run.pop()
    return [run for run in runs if run]


def _touches_removed(view: str, tokens: list[_Token], index: int) -> bool:
    token = tokens[index]
    if not (any(c.isdigit() for c in token.written) or token.written[:1].isupper()):
        return False
    left = view[max(0, token.start - 1):token.start]
    right = view[token.end:token.end + 1]
    if left == "\x00" or right == "\x00":
        return True
    for other in (tokens[index - 1] if index else None, tokens[index + 1] if index + 1 < len(tokens) else None):
        if other is None or other.verdict in (_KNOWN, None):
            continue
        gap = view[min(token.end, other.end):max(token.start, other.start)]
        if gap in ("-", "/", "."):
            return True
    return re.search(r"\x00[\-/.]$", view[max(0, token.start - 2):token.start]) is not None or \
        re.match(r"[\-/.]\x00", view[token.end:token.end + 2]) is not None


def _next_to_removed(view: str, tokens: list[_Token], index: int) -> bool:
    token = tokens[index]
    if re.search(r"\x00[\s,]{0,2}$", view[max(0, token.start - 3):token.start]):
        return True
    if re.match(r"[\s,]{0,2}\x00", view[token.end:token.end + 3]):
        return True
    for other in (tokens[index - 1] if index else None, tokens[index + 1] if index + 1 < len(tokens) else None):
        if other is not None and other.verdict not in (_KNOWN, None):
            gap = view[min(token.end, other.end):max(token.start, other.start)]
            if re.fullmatch(r"[\s,]{1,3}", gap):
                return True
    return False


#: Holidays and feasts that date an event in the notes' languages and national styles (folded: "Pâques" reads
#: "paques"), one word each; the words that make a holiday of two with them are in :data:`HOLIDAY_RUN`.
HOLIDAY_WORDS = frozenset("""
christmas xmas easter whitsun whitsunday pentecost hogmanay thanksgiving midsummer halloween hanukkah chanukah
passover pesach purim kippur hashanah weihnachten weihnachtstag ostern ostermontag ostersonntag karfreitag
grundonnerstag pfingsten pfingstmontag pfingstsonntag himmelfahrt fronleichnam allerheiligen allerseelen
silvester neujahr fasching fastnacht karneval rosenmontag aschermittwoch nikolaustag reformationstag heiligabend
nationalfeiertag noel paques pentecote toussaint reveillon chandeleur epiphanie assomption navidad nochebuena
nochevieja diwali deepavali deepawali holi dussehra dasara navratri onam pongal lohri shivratri mahashivratri
chaturthi janmashtami rakhi baisakhi vaisakhi ugadi sankranti bihu chhath gurpurab eid bakrid ramadan ramazan
ramzan ashura mawlid paske pasky pinse midsommar midsommarafton juhannus joulu jouluaatto vappu juleaften
julaften juledag julafton juldagen walpurgis walpurgisnacht valborg nytarsaften nyarsafton nytarsdag nyarsdagen
pinsedag paskedag grundlovsdag
""".split())
#: Holidays of more than one word, none of them a holiday word alone.
_HOLIDAY_PHRASES = (r"good\s+friday|shrove\s+tuesday|ash\s+wednesday|maundy\s+thursday|palm\s+sunday|"
                    r"holy\s+(?:saturday|week)|mardi\s+gras|bank\s+holiday|new\s+year(?:['’]s)?|nouvel\s+an|"
                    r"jour\s+de\s+l['’]an|saint[\s\-]sylvestre|f[eê]te\s+(?:nationale|du\s+travail)|"
                    r"tag\s+der\s+(?:arbeit|deutschen\s+einheit)|semana\s+santa|store\s+bededag|"
                    r"kristi\s+himmelfartsdag|sankt\s?hans|guy\s+fawkes|burns\s+night|bonfire\s+night|"
                    r"fourth\s+of\s+july|f[eê]te\s+du\s+canada|je[uû]ne\s+genevois|canada\s+day|"
                    r"(?:independence|republic|national|liberation|labou?r|memorial|veterans|remembrance|anzac|"
                    r"bastille|armistice|mother['’]s|father['’]s|valentine['’]s|(?:st\.?|saint)\s+[a-z]+['’]s)"
                    r"\s+day")
#: A holiday as written in a date: the words before it that belong to it ("Maha Shivratri", "Good Friday",
#: "Eid al-Fitr", "Yom Kippur"), the holiday, the words after it ("day", "Eve", "Monday", "weekend") and a
#: year ("Boxing Day 2023" with its year is shifted by the scrubber's date patterns first).
_HOLIDAY_LEAD = (r"maha|good|holy|palm|ash|shrove|maundy|easter|whit|ganesh|vinayaka|makar|raksha|durga|karwa|"
                 r"karva|bhai|gudi|yom|rosh|eid|chinese|lunar|hari|guru|mardi|lundi|veille|lendemain|"
                 r"reveillon|st\.?|saint|sankt|new\s+year['’]?s?|soir|nuit|matin|"
                 r"(?:the\s+)?(?:first|second|third|last)\s+(?:day|days|night|week|weekend)(?:\s+of)?")
_HOLIDAY_TAIL = (r"day|eve|night|weekend|morning|holidays?|break|vacation|monday|sunday|friday|saturday|"
                 r"al[\-\s]fitr|al[\-\s]adha|ul[\-\s]fitr|ul[\-\s]adha|ul[\-\s]azha|bandhan|padwa|puja|"
                 r"chauth|dooj|jayanti|purnima|ferien|feiertage?|abend|montag|sonntag|dag|dagen|aften|afton")
HOLIDAY_RUN = re.compile(
    rf"(?:\b(?i:{_HOLIDAY_LEAD})[ \t\-]+(?i:(?:de|du|of)[ \t]+|d['’])?)*"
    rf"\b(?i:{_HOLIDAY_PHRASES}|{'|'.join(sorted(HOLIDAY_WORDS, key=len, reverse=True))})"
    rf"(?:['’]s)?\b(?:[ \t\-]+(?i:(?:de\s+|du\s+|of\s+)?(?:{_HOLIDAY_TAIL}))\b)*(?:,?[ \t]+(?:19|20)\d{{2}}(?!\d))?")
_MONTH_NAMES = frozenset("""
january february march april june july august september october november december jan feb mar apr jun jul
aug sep sept oct nov dec januar februar marz maerz juni juli oktober dezember janvier fevrier mars avril mai
juin juillet aout septembre octobre novembre decembre januari februari maart augusti marts maj
ramadan ramzan shawwal muharram safar rajab shaban dhul
""".split()) | HOLIDAY_WORDS
_ORDINAL_WORDS = re.compile(
    r"(?i:first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|eleventh|twelfth|thirteenth|"
    r"[a-z]+teenth|twentieth|thirtieth|twenty-[a-z]+|thirty-first|ersten|zweiten|dritten|vierten|fünften|"
    r"funften|sechsten|siebten|achten|neunten|zehnten|[a-z]+zehnten|zwanzigsten|[a-z]+zwanzigsten|dreißigsten|"
    r"dreissigsten|einunddreißigsten|premier|deux|trois|quatre|cinq|six|sept|huit|neuf|dix|onze|douze|treize|"
    r"quatorze|quinze|seize|dix-[a-z]+|vingt(?:-[a-z]+)?|trente(?:-[a-z]+)?)")
_DRUG_BEFORE = re.compile(r"(?:tab|tabs|inj|cap|caps|syp|syr|susp|gel|oint|cr|sr|xl|er|tbl|kps|amp)\.?\s*$",
                          re.IGNORECASE)
_DOSE_AFTER = re.compile(r"\s*(?:\(|\s)?\d+(?:[.,]\d+)?(?:/\d+(?:[.,]\d+)?)?\s?"
                         r"(?:mg|mcg|µg|ug|g|ml|iu|ie|units|%|mmol)\b",
                         re.IGNORECASE)


_WEEKDAYS = frozenset("""monday tuesday wednesday thursday friday saturday sunday mon tue tues wed thu thur thurs
fri sat sun montag dienstag mittwoch donnerstag freitag samstag sonntag lundi mardi mercredi jeudi vendredi samedi
dimanche mandag tirsdag onsdag torsdag fredag lordag lørdag sondag søndag tisdag lördag söndag""".split())
#: Words written before a day or a holiday as part of the date: "last Tues", "réveillon de Noël", "Christmas Eve".
_DATE_LEAD_WORDS = frozenset("""last next this réveillon reveillon veille lendemain eve nuit jour day night
vorabend heiligabend""".split())


_SPELLED_YEAR_START = re.compile(r"(?i:mille|nineteen|eighteen|neunzehnhundert|achtzehnhundert)")
_SPELLED_NUMBER = re.compile(
    r"(?i:neuf|huit|cent|vingt|trente|quarante|cinquante|soixante|dix|onze|douze|treize|quatorze|quinze|seize|"
    r"un|une|deux|trois|quatre|cinq|six|sept|et|hundred|and|ten|eleven|twelve|[a-z]+teen|twenty|thirty|forty|"
    r"fifty|sixty|seventy|eighty|ninety|one|two|three|four|five|seven|eight|nine)(?:-[a-z]+)*")


def is_day_or_month(word: str) -> bool:
    """A weekday or a month, in full or abbreviated, in one of the scrubber's languages."""
    folded = word.lower().rstrip(".")
    return folded in _WEEKDAYS or folded in _MONTH_NAMES


def _words_of_dates(view: str, tokens: list[_Token]) -> None:
    """A day, month or holiday removed takes the words written as part of it ("last Tues", "réveillon de Noël")."""
    for index, token in enumerate(tokens):
        if token.verdict != "[DATE]":
            continue
        probe = index - 1
        if probe >= 1 and tokens[probe].written.lower() in ("de", "du", "of") and \
                tokens[probe - 1].written.lower() in _DATE_LEAD_WORDS:
            probe -= 1
        if probe >= 0 and tokens[probe].written.lower() in _DATE_LEAD_WORDS and \
                tokens[probe].verdict in (_KNOWN, None) and \
                re.fullmatch(r"[ \t]+(?:(?:de|du|of)[ \t]+)?", view[tokens[probe].end:token.start]):
            for word in tokens[probe:index]:
                word.verdict = "[DATE]"
    for index, token in enumerate(tokens[1:-1], start=1):  # "réveillon de Noël", "first of May"
        if token.verdict in (_KNOWN, None) and token.written.lower() in ("de", "du", "of") and \
                tokens[index - 1].verdict == "[DATE]" and tokens[index + 1].verdict == "[DATE]":
            token.verdict = "[DATE]"
    in_year = False  # a year spelled out after its month: "novembre mille neuf cent cinquante-trois"
    for before, token in zip(tokens, tokens[1:]):
        spaced = re.fullmatch(r"[ \t]+", view[before.end:token.start]) is not None
        if token.verdict not in (_KNOWN, None) or not spaced:
            in_year = False
            continue
        if before.verdict == "[DATE]" and _SPELLED_YEAR_START.fullmatch(token.written):
            in_year = True
        elif not (in_year and _SPELLED_NUMBER.fullmatch(token.written)):
            in_year = False
        if in_year:
            token.verdict = "[DATE]"


def _word_verdict(view: str, start: int, end: int, written: str, language: str) -> str | None:
    """``_KNOWN``, None (kept but unknown) or the token that replaces the word."""
    parts = [p for p in re.split(r"[\-]", _without_possessive(_without_elision(written))) if p]
    if re.fullmatch(r"[µμ][a-zA-Z]{0,4}", written):
        return _KNOWN  # µg, µV: a unit, not a Greek word
    if any(len(p) >= 4 and _STREET_END.search(p) and p.lower() != "gate" and not is_clinical(p) for p in parts) \
            and written[:1].isupper():
        return ADDRESS
    if _HYPHENATED_PLACE.fullmatch(written):
        return ADDRESS
    folded = view[start:end].lower()
    if folded.rstrip(".") in _NOT_ABSORBED or folded in TITLES:
        return _KNOWN
    if folded.rstrip(".") in _WEEKDAYS and written[:1].isupper() and len(folded) > 3:
        return "[DATE]"
    if folded in _MONTH_NAMES and (written[:1].isupper() or language in ("fr", "da", "sv", "nb")) and \
            not (folded in ("mar", "dec", "mai", "marts") and language == "en"):
        return "[DATE]"
    if _ACRONYM.fullmatch(written):
        if _ISSUER_LABEL_AFTER.match(view, end):
            return REMOVED  # the issuer of a number: "RVH no. RVH4471209", "DHA licence 00441723", "GOSH MRN"
        if is_clinical_acronym(written) or is_clinical_word(written) or folded in _FORM_LABELS:
            return _KNOWN
        if not _ordinary_in_capitals(view, start, end, written):
            if re.match(r"\s{0,2}\x01", view[end:end + 3]) or _DOSE_AFTER.match(view, end):
                return None  # an acronym before a clinical value: "EVA 8/10", "PIVD L4-L5", "FBA 25 cm"
            return REMOVED
    unknown = [p for p in parts if len(p) > 2 and not is_known_word(p, language) and not is_clinical_word(p)]
    if any(has_non_latin_letters(p) for p in parts):
        return REMOVED
    if not unknown:
        mid_sentence = not _SENTENCE_START.search(view[max(0, start - 8):start])
        if mid_sentence and written.istitle() and language != "de" and any(
                len(p) > 2 and is_name_when_capitalised(p, language) for p in parts):
            return REMOVED  # Peter, Gemma, Ross: a word of the lists, but as a name
        return _KNOWN
    if any(_looks_like_a_name(p) for p in unknown):
        if written.isupper() and re.match(r"\s{0,2}\x01", view[end:end + 3]):
            return None  # an acronym before a clinical value: "EVA 8/10", "PIVD L4-L5", "FBA 25 cm"
        if _DOSE_AFTER.match(view, end) or _DRUG_BEFORE.search(view[max(0, start - 8):start]):
            return None  # a drug the lists do not know, written with its dose or form ("Tab. Shelcal 500 mg")
        return REMOVED
    return None


#: Labels of referral forms written in capitals: known words, but never clinical ones, so that no number after
#: them passes for a clinical value ("Acct 8831", "ext. 22" stay identifiers).
_FORM_LABELS = frozenset("""dob dod mrn ssn npi ein nhs chi upi pid hcn acct tel fax ext ref req dept ward bed
fao attn enc encl pto""".split())
#: A word in capitals short enough to be an acronym; a longer one is judged as a word (headings: "HISTORY").
_ACRONYM = re.compile(r"[A-ZÀ-ÞÅÆØ]{3,5}")
_ISSUER_LABEL_AFTER = re.compile(r"[ \t]+(?i:no\.|nr\.?|number|licen[cs]e|mrn|id|#|card|reg\.|regd?\.? no)(?!\w)")
_CAPITALS_AROUND = re.compile(r"[A-ZÀ-Þ]{2,}[ \t]+$")


def _ordinary_in_capitals(view: str, start: int, end: int, written: str) -> bool:
    """A word in capitals that is an ordinary word as written: a very common one anywhere ("NOT given", "PLAN"),
    a common one in a heading (followed by a colon or among other words in capitals: "EXAM:", "PAST HISTORY").
    Anything else in capitals is an acronym, known only as a clinical one: UPS, GOSH, NAV name a firm, a
    hospital, an agency, whatever "ups" or "gosh" mean in lower case."""
    frequency = zipf(written)
    if frequency >= 5.0:
        return True
    heading = re.match(r"[ \t]*:", view[end:end + 3]) is not None or \
        _CAPITALS_AROUND.search(view[max(0, start - 24):start]) is not None or \
        re.match(r"[ \t]+[A-ZÀ-Þ]{2,}\b", view[end:end + 24]) is not None
    return heading and frequency >= 4.0


def _looks_like_a_name(part: str) -> bool:
    """An unknown word written as names are: capitalised, in any language (German capitalises every noun, but
    an unknown one is no less unknown), or in capitals from three letters (a surname in a form: MUELLER)."""
    if part.isupper():
        return len(part) >= 3  # RVH, SUVA, CPAM: an acronym that is no clinical one names a place or a body
    return part[:1].isupper()


def _without_elision(word: str) -> str:
    """French elided articles and pronouns: l'examen, d'une, qu'il."""
    head = re.match(r"(?i)(?:l|d|j|qu|n|s|c|m|t)['’](?=\w)", word)
    return word[head.end():] if head and head.group(0)[:1].islower() else word


def _without_possessive(word: str) -> str:
    """The word without its possessive or an English contraction's tail ("Paget's", "I'd", "we'll", "don't")."""
    return re.sub(r"['’](?:s|d|m|ve|ll|re|t)?$|n['’]t$", "", word)


def _enough_digits(view: str, match: re.Match[str]) -> bool:
    """A reference holds four digits or more; its tail after a removed number may hold fewer: the letter and
    serial number of a German pension number ("12 170279 K 005"), the check group of a reference."""
    digits = sum(c.isdigit() for c in match.group(0))
    return digits >= 4 or (digits >= 2 and view[max(0, match.start() - 2):match.start()] in ("\x00 ", "\x00-"))


def _clinical_with_value(text: str) -> bool:
    """A clinical acronym with a value or a year, not a reference: "MRI 2024", "SF-36 12", "CT 2023"."""
    letters = re.findall(r"[^\W\d_]+", text)
    numbers = re.findall(r"\d+", text)
    return all(is_clinical_acronym(w) or is_clinical_word(w) for w in letters) and len(numbers) <= 2 and \
        all(len(n) <= 4 for n in numbers)


def _cluster_is_identifier(view: str, match: re.Match[str]) -> bool:
    """A run of digit groups (phone numbers, national numbers, postcodes with a space) is an identifier when it
    holds five or more digits and is no clinical value: not a dose or a ratio written with its unit
    ("37.5/325 mg", "30/500"), nor a range or series with its unit."""
    text = match.group(0)
    digits = sum(c.isdigit() for c in text)
    if digits < 5:
        return False
    groups = re.findall(r"\d+", text)
    if re.fullmatch(r"\d{1,3}(?:[.,]\d{1,2})?/\d{1,4}(?:[.,]\d{1,2})?", text) and not _ID_LABEL_BEFORE.search(
            view[max(0, match.start() - 24):match.start()]):
        return False  # a ratio or a combined dose: 30/500, 37.5/325, 130/80
    unit_after = _UNIT_AFTER.match(view, match.end()) is not None or _DOSE_UNIT.match(view, match.end())
    return not (unit_after and max(len(g) for g in groups) <= 4)


_DOSE_UNIT = re.compile(r"\s?(?:mg|mcg|µg|ug|g|ml|iu|ie|units|mmol|mv|uv|µv|ms|mm|cm|kg|%)\b", re.IGNORECASE)
_LEVEL = re.compile(r"(?:[CTLSD]|Th|LWK|BWK|HWK)\d{1,2}", re.IGNORECASE)


def _number_is_clinical(view: str, start: int, end: int) -> bool:
    token = view[start:end]
    if any(c.isdigit() and not c.isascii() for c in token):
        return False  # digits of another script ("২৩ এপ্রিল"): clinical values are written in Western digits
    if token.isdigit():
        return _plain_number_is_clinical(view, start, end, token)
    if _CLINICAL_ALNUM.fullmatch(token) or _LEVEL.fullmatch(token):
        return True
    parts = token.split("-")
    if len(parts) > 1 and all(_LEVEL.fullmatch(p) or (p.isdigit() and len(p) <= 2) for p in parts):
        return True  # D10-D11, L4-5
    if len(parts) > 1 and all((p.isdigit() and len(p) <= 2) or _LEVEL.fullmatch(p) or
                              (p.isalpha() and (p.isupper() or is_clinical(p) or is_clinical_word(p))) for p in parts):
        return True  # LWK-1-Fraktur, Th12-Fraktur
    if len(parts) > 1 and all(p.isdigit() and len(p) <= 3 for p in parts):
        return bool(_UNIT_AFTER.match(view, end) or _DOSE_UNIT.match(view, end))  # 8-12 weeks
    # "54-year-old", "6-week", "3-monatige": digits joined to a word by a hyphen
    head = re.fullmatch(r"(\d{1,3})-([^\W\d_]+(?:-[^\W\d_]+)*)", token)
    return head is not None and int(head.group(1)) < 90


#: The word a value follows, with the first number of a ratio or a dose pair between them ("30/" of 30/500).
_VALUE_NAME_BEFORE = re.compile(r"([^\W\d_](?:[^\W\d_]|-(?=[^\W\d_])){2,})\s*[:=]?\s*"
                                r"(?:\d{1,4}(?:[.,]\d{1,2})?\s?[/:]\s?)?$")


def _names_a_value(word: str) -> bool:
    """A clinical word, score or acronym that a value follows: a drug, a test, a titre, a scale."""
    if word.isupper():
        return is_clinical_acronym(word) or is_clinical_word(word)
    return (len(word) >= 4 and is_clinical(word)) or is_clinical_word(word)


def _plain_number_is_clinical(view: str, start: int, end: int, token: str) -> bool:
    before = view[max(0, start - 24):start]
    if _ID_LABEL_BEFORE.search(before):
        return False
    if _UNIT_AFTER.match(view, end) or _DOSE_UNIT.match(view, end) or _LABEL_BEFORE.search(before):
        return len(token) <= 4 and not (int(token) >= 90 and re.match(r"\s*-?\s*(?:y|years?|jahre|ans|år)",
                                                                       view[end:end + 8], re.IGNORECASE))
    if len(token) <= 2:
        return True
    word = _VALUE_NAME_BEFORE.search(before)
    if word and len(token) <= 4 and _names_a_value(word.group(1)):
        return True  # after its clinical name: "alkaline phosphatase 310", "co-codamol 30/500", "titre 1:1280"
    return len(token) == 4 and 1900 <= int(token) <= 2039
