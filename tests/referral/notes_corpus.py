"""An annotated corpus of synthetic referral texts for measuring the notes scrubber.

Every case is written in a small markup and parsed into plain text plus spans:

* ``[[cat:text]]`` an identifier the node was NOT told about, of category ``cat``;
* ``[[cat!:text]]`` an identifier the node holds (it is also in the case's ``known`` fields);
* ``{{text}}`` a clinical term that must survive scrubbing.

Categories: ``name``, ``place``, ``org``, ``date``, ``id``, ``phone``, ``contact``. As in HIPAA's Safe
Harbor list, a year alone and a state or country of citizenship are not identifiers; a country of residence,
towns, streets and postcodes are.

:func:`generated_cases` builds cases from seeded random choices (``random.Random(SEED)``: the same
corpus on every run); :mod:`notes_corpus_hand` adds hand-written cases in the phrasing clinicians use,
which the generator's templates do not cover. Nothing here is tuned to a scrubber: the templates are
what referral letters say, and the hand-written cases were written before the scrubber was run on them.
"""

from __future__ import annotations

import datetime
import random
import re
from dataclasses import dataclass, field

SEED = 20261130
CATEGORIES = ("name", "place", "org", "date", "id", "phone", "contact")
_MARKUP = re.compile(r"\[\[(\w+)(!?):(.+?)\]\]|\{\{(.+?)\}\}")


@dataclass(frozen=True)
class Span:
    category: str
    start: int
    end: int
    text: str
    known: bool


@dataclass
class Case:
    """One referral text with its annotations and what the node is told."""

    key: str
    locale: str  # "uk", "us" or "de"
    text: str
    spans: list[Span]
    keep: list[Span]
    known: dict = field(default_factory=dict)  # KnownIdentifiers keyword arguments

    @property
    def day_first(self) -> bool:
        return self.locale != "us"


def parse(key: str, locale: str, marked: str, known: dict) -> Case:
    """Turn marked-up text into a :class:`Case` (plain text, identifier spans, must-keep spans)."""
    pieces: list[str] = []
    spans: list[Span] = []
    keep: list[Span] = []
    cursor = position = 0
    for match in _MARKUP.finditer(marked):
        pieces.append(marked[cursor:match.start()])
        position += match.start() - cursor
        body = match.group(3) if match.group(1) else match.group(4)
        if match.group(1):
            if match.group(1) not in CATEGORIES:
                raise ValueError(f"{key}: unknown category {match.group(1)}")
            spans.append(Span(match.group(1), position, position + len(body), body, bool(match.group(2))))
        else:
            keep.append(Span("keep", position, position + len(body), body, False))
        pieces.append(body)
        position += len(body)
        cursor = match.end()
    pieces.append(marked[cursor:])
    return Case(key, locale, "".join(pieces), spans, keep, known)


# --- pools -------------------------------------------------------------------------------------------

_FIRST = {
    "uk": ["Oliver", "Amelia", "Harry", "Isla", "Siobhan", "Niamh", "Rhys", "Zoë", "Priya", "Mohammed", "Chloé",
           "Eilidh", "Tomasz", "Aoife", "Graham", "Margaret", "Kwame", "Deborah", "Fergus", "Imogen"],
    "us": ["Jennifer", "Michael", "Tyrone", "Latisha", "José", "María", "Ashley", "Brandon", "Mei", "Dmitri",
           "Shanice", "Cody", "Esperanza", "Raj", "Kayleigh", "DeShawn", "Hannah", "Luis", "Nguyen", "Abigail"],
    "de": ["Jürgen", "Sabine", "Lukas", "Anneliese", "Björn", "Günther", "Leonie", "Mehmet", "Ayşe", "Katarzyna",
           "Dieter", "Ursula", "Maximilian", "Jana", "Horst", "Irmgard", "Fatma", "Jörg", "Wiebke", "Oleksandr"],
}
_LAST = {
    "uk": ["O'Brien", "Hargreaves", "Featherstonehaugh", "Okonkwo", "Patel", "McAllister", "Ffoulkes",
           "Smith-Jones", "Llewellyn", "Pemberton", "Nakamura", "Abernethy", "Cholmondeley", "Mensah", "Whitcombe"],
    "us": ["Ñúñez", "Washington", "Kowalczyk", "Delgado", "Thibodeaux", "Nguyen", "Rosenberg", "Van der Berg",
           "O'Malley", "Jefferson", "Castillo-Ruiz", "Yamamoto", "Abernathy", "Kuznetsov", "Okafor"],
    "de": ["Müller", "Schäfer", "Großmann", "Dvořák", "Yılmaz", "Weißenborn", "Kowalski", "Schmidt-Rottluff",
           "Bräuer", "Öztürk", "Hoffmeister", "von Ahlefeldt", "Zieliński", "Krüger", "Brandstätter"],
}
#: Surnames that are ordinary words (or clinical words): removed only where they are names.
_WORD_SURNAMES = ["Power", "Long", "Hand", "Brown", "Young", "Bishop", "Walker", "Foot", "Little", "Strong",
                  "Hart", "Wise", "Weeks", "Gross"]
_NICKNAMES = {"Robert": "Bob", "Elizabeth": "Liz", "William": "Bill", "Margaret": "Peggy", "Katherine": "Kate",
              "Alexander": "Sasha", "Johann": "Hans"}
_TOWNS = {
    "uk": ["Swindon", "Thornbury", "Harrogate", "Kirkcaldy", "Aberystwyth", "Chipping Sodbury", "Bideford",
           "Market Harborough", "Penzance", "Stornoway"],
    "us": ["Tuscaloosa", "Paducah", "Albuquerque", "Bozeman", "Sheboygan", "Poughkeepsie", "Chattanooga",
           "Kalamazoo", "Walla Walla", "Ypsilanti"],
    "de": ["München", "Würzburg", "Gelsenkirchen", "Bad Tölz", "Lüdenscheid", "Castrop-Rauxel", "Oberammergau",
           "Quedlinburg", "Görlitz", "Neuötting"],
}
_STATES = ["AL", "KY", "NM", "MT", "WI", "NY", "TN", "MI", "WA", "OH"]
_STREETS = {
    "uk": ["Elm Road", "Station Lane", "Gloucester Road", "Mill Close", "Kingsway Crescent", "Abbey Terrace"],
    "us": ["Maple Avenue", "Sycamore Drive", "Old Mill Road", "Lakeshore Boulevard", "Cedar Court", "Pine Street"],
    "de": ["Hauptstraße", "Lindenweg", "Am Markt", "Bahnhofstraße", "Schillerplatz", "Kirchgasse"],
}
_EMPLOYERS = {
    "uk": ["Tesco", "Sainsbury's", "Greggs", "B&Q", "Royal Mail", "Wetherspoons", "Boots", "Marks & Spencer"],
    "us": ["Walmart", "Home Depot", "Costco", "Kroger", "Dollar General", "UPS", "Chick-fil-A", "Target"],
    "de": ["Aldi Süd", "Siemens", "Deutsche Post", "Edeka", "BMW", "Rewe", "Bosch", "Lidl"],
}
_JOBS = {
    "uk": ["cashier", "shelf stacker", "delivery driver", "warehouse operative", "baker", "shop manager"],
    "us": ["cashier", "forklift operator", "stocker", "delivery driver", "store manager", "line cook"],
    "de": ["Kassiererin", "Lagerarbeiter", "Paketzusteller", "Mechatroniker", "Verkäuferin", "Monteur"],
}
_SCHOOLS = {
    "uk": ["St Aidan's Primary School", "Chipping Sodbury School", "Kingsfield Academy"],
    "us": ["Lincoln High School", "Roosevelt Middle School", "Bayside Elementary"],
    "de": ["Goethe-Gymnasium", "Grundschule am Lindenweg", "Realschule Bad Tölz"],
}
_HOSPITALS = {
    "uk": ["Southmead Hospital", "Royal Devon and Exeter Hospital", "Frenchay Hospital", "Airedale General"],
    "us": ["Mercy General Hospital", "St. Luke's Medical Center", "Baptist Memorial Hospital"],
    "de": ["Klinikum Großhadern", "Universitätsklinikum Würzburg", "Helios Klinik Lüdenscheid"],
}
_COUNTRIES = ["Portugal", "Poland", "Nigeria", "Ireland", "Turkey", "Vietnam", "Brazil", "Canada"]
_MONTHS_EN = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
              "November", "December"]
_MONTHS_DE = ["Januar", "Februar", "März", "April", "Mai", "Juni", "Juli", "August", "September", "Oktober",
              "November", "Dezember"]

# Clinical sentences: {{...}} must survive. {P} is the patient's surname (ordinary-word surnames test
# collisions), {Pr} the pronoun.
_CLINICAL = {
    "uk": [
        "On examination {{power 4/5}} in ankle dorsiflexion on the {{left}}, with {{foot drop}}.",
        "{{X-ray}} of the {{lumbar spine}} showed {{L4-L5}} disc space narrowing.",
        "{{Babinski}} negative, {{Romberg}} negative, {{Hoffmann}} sign absent.",
        "{{Lasègue}} positive at 40 degrees on the {{right}}; {{S1}} {{radiculopathy}} suspected.",
        "Pain score {{VAS 7/10}}, {{ODI 42%}}, symptoms for {{12 weeks}}.",
        "Taking {{naproxen 500 mg}} twice daily and {{pregabalin 75 mg}} at night.",
        "Bloods: {{CRP 120}}, {{Hb 12.0}}, {{WCC 11.2}}.",
        "Nerve conduction: {{4.2 (5.0) 11.3 (12.1) mV}} in the peroneal nerve.",
        "Range of motion {{0-90 0-30 0-45}} at the hip.",
        "No {{saddle anaesthesia}}; {{cauda equina}} syndrome not suspected.",
        "Previous {{dural tear}} at {{L5/S1}} repaired in theatre.",
        "Incomplete {{Brown-Séquard}} picture below {{T10}}.",
        "Reflexes: {{knee jerks}} brisk, {{ankle jerks}} absent {{bilaterally}}.",
        "Physiotherapy for {{6 weeks}} with little benefit; {{hand}} grip normal.",
        "{{Long}} history of {{mechanical back pain}}, worse {{walking}} {{little}} distances.",
    ],
    "us": [
        "Motor exam {{power 4/5}} {{EHL}} {{left}}, {{SLR}} positive at 30 degrees.",
        "{{MRI}} shows {{L5-S1}} {{herniated disc}} with {{foraminal stenosis}}.",
        "Taking {{gabapentin 300 mg}} TID and {{Tylenol 500 mg}} as needed.",
        "Pain {{VAS 8/10}}, {{ODI 56%}}, duration {{3 months}}.",
        "Labs: {{CRP 120}}, {{Hb 12.0}}, {{ESR 45}}.",
        "{{Spurling}} test positive on the {{right}}, {{Hoffmann}} negative, {{Babinski}} downgoing.",
        "Completed {{PT}} for {{6 weeks}}; {{epidural steroid injection}} at {{L4-L5}} on the {{left}}.",
        "EMG: {{4.2 (5.0) 11.3 (12.1) mV}}, consistent with {{L5 radiculopathy}}.",
        "Lumbar {{range of motion}} {{0-90 0-30 0-45}}.",
        "No {{bowel or bladder}} dysfunction; rule out {{cauda equina}}.",
        "{{X-ray}} {{flexion-extension}} views: {{grade 1 spondylolisthesis}}.",
        "History of {{dural tear}} after {{C5-C6}} {{ACDF}}.",
        "Patient reports {{foot drop}} and {{Brown-Séquard}} features, {{strong}} {{hand}} grip.",
        "Smoker, {{20 pack-years}}; {{BMI 31}}.",
        "{{Romberg}} positive, {{gait}} {{wide-based}}.",
    ],
    "de": [
        "Klinisch {{Kraft 4/5}} der Fußhebung {{links}}, {{Fußheberparese}}.",
        "{{Lasègue}}-Zeichen {{positiv}} bei 40 Grad {{rechts}}; {{Hoffmann-Zeichen}} negativ.",
        "{{MRT}} der {{LWS}}: {{Bandscheibenvorfall}} {{L5/S1}} mit {{Wurzelkompression}} {{S1}}.",
        "Schmerz {{VAS 7/10}}, {{ODI 42%}}, seit {{12 Wochen}}.",
        "Medikation: {{Ibuprofen 600 mg}} 1-0-1, {{Pregabalin 75 mg}} zur Nacht.",
        "Labor: {{CRP 120}}, {{Hb 12.0}}, {{Leukozyten 11.2}}.",
        "{{ENG}}: {{4.2 (5.0) 11.3 (12.1) mV}} am {{N. peroneus}}.",
        "Beweglichkeit Hüfte {{0-90 0-30 0-45}}.",
        "Kein {{Kauda-Syndrom}}, keine {{Reithosenanästhesie}}; {{Cauda equina}} unwahrscheinlich.",
        "Z. n. {{Duraverletzung}} ({{dural tear}}) bei Operation {{L4-L5}}.",
        "{{Babinski}} beidseits negativ, {{Romberg}} unauffällig.",
        "{{Physiotherapie}} über {{6 Wochen}} ohne Besserung.",
        "{{Brown-Séquard}}-Konstellation unterhalb {{Th10}}.",
        "{{Röntgen}} der {{HWS}}: {{Osteochondrose}} {{C5/C6}}.",
        "{{ASR}} {{links}} abgeschwächt, {{PSR}} seitengleich.",
    ],
}


def _nhs_number(rng: random.Random) -> str:
    while True:
        digits = [rng.randrange(10) for _ in range(9)]
        check = 11 - sum(d * w for d, w in zip(digits, range(10, 1, -1))) % 11
        check = 0 if check == 11 else check
        if check != 10 and digits[0] != 0:
            text = "".join(map(str, digits + [check]))
            return rng.choice([f"{text[:3]} {text[3:6]} {text[6:]}", text, f"{text[:3]}-{text[3:6]}-{text[6:]}"])


def _ssn(rng: random.Random) -> str:
    area = rng.choice([n for n in range(1, 900) if n != 666])
    return f"{area:03d}-{rng.randrange(1, 100):02d}-{rng.randrange(1, 10000):04d}"


def _kvnr(rng: random.Random) -> str:
    """A German health insurance number (Krankenversichertennummer): letter, 8 digits, check digit."""
    letter = rng.choice("ABCDEFGHIJKLMNOPRSTUVWZ")
    digits = f"{ord(letter) - 64:02d}" + "".join(str(rng.randrange(10)) for _ in range(8))
    total = 0
    for index, char in enumerate(digits):
        product = int(char) * (1 if index % 2 == 0 else 2)
        total += product // 10 + product % 10
    return f"{letter}{digits[2:]}{total % 10}"


def _phone(rng: random.Random, locale: str) -> str:
    if locale == "uk":
        number = f"7700 900{rng.randrange(100, 999)}"
        return rng.choice([f"0{number}", f"+44 {number}", f"(0117) 496 0{rng.randrange(100, 999)}",
                           f"0117-496-0{rng.randrange(100, 999)}", f"+44 (0)20 7946 0{rng.randrange(100, 999)}"])
    if locale == "us":
        area = rng.choice([205, 270, 505, 406, 920, 845, 423, 269])
        line = f"{rng.randrange(200, 999)}-{rng.randrange(1000, 9999)}"
        return rng.choice([f"({area}) {line}", f"{area}-{line}", f"+1 {area} {line.replace('-', ' ')}",
                           f"{area}.{line.replace('-', '.')}"])
    return rng.choice([f"+49 89 {rng.randrange(1000000, 9999999)}", f"0171 {rng.randrange(1000000, 9999999)}",
                       f"(030) {rng.randrange(100, 999)} {rng.randrange(1000, 9999)}",
                       f"0931/{rng.randrange(100000, 999999)}"])


def _date_text(rng: random.Random, locale: str, day: datetime.date) -> str:
    d, m, y = day.day, day.month, day.year
    if locale == "us":
        return rng.choice([f"{m}/{d}/{y}", f"{m:02d}/{d:02d}/{y}", f"{_MONTHS_EN[m - 1]} {d}, {y}",
                           f"{_MONTHS_EN[m - 1][:3]} {d}, {y}", f"{m}/{d}/{y % 100:02d}", day.isoformat()])
    if locale == "de":
        return rng.choice([f"{d:02d}.{m:02d}.{y}", f"{d}.{m}.{y}", f"{d}. {_MONTHS_DE[m - 1]} {y}",
                           f"{d:02d}.{m:02d}.{y % 100:02d}", day.isoformat()])
    return rng.choice([f"{d:02d}/{m:02d}/{y}", f"{d} {_MONTHS_EN[m - 1]} {y}", f"{d}-{_MONTHS_EN[m - 1][:3]}-{y}",
                       f"{d}{'th' if d not in (1, 2, 3, 21, 22, 23, 31) else ''} of {_MONTHS_EN[m - 1]} {y}",
                       f"{d}.{m}.{y % 100:02d}", day.isoformat()])


def _random_day(rng: random.Random, start: int = 2022, end: int = 2025) -> datetime.date:
    return datetime.date(rng.randrange(start, end), rng.randrange(1, 13), rng.randrange(1, 29))


_TITLES = {"uk": ["Mr", "Mrs", "Ms", "Miss"], "us": ["Mr.", "Mrs.", "Ms."], "de": ["Herr", "Frau"]}


def _generated(rng: random.Random, index: int) -> Case:
    locale = ("uk", "us", "de")[index % 3]
    first = rng.choice(_FIRST[locale])
    last = rng.choice(_WORD_SURNAMES) if index % 5 == 0 else rng.choice(_LAST[locale])
    title = rng.choice(_TITLES[locale])
    birth = _random_day(rng, 1940, 2000)
    patient_id = f"{rng.choice(['MRN', 'RX', 'PID', ''])}{rng.randrange(100000, 9999999)}"
    town = rng.choice(_TOWNS[locale])
    gp_first, gp_last = rng.choice(_FIRST[locale]), rng.choice(_LAST[locale])
    relative_first = rng.choice(_FIRST[locale])
    employer, job = rng.choice(_EMPLOYERS[locale]), rng.choice(_JOBS[locale])
    phone = _phone(rng, locale)
    street = rng.choice(_STREETS[locale])
    house = rng.randrange(1, 250)
    hospital = rng.choice(_HOSPITALS[locale])
    header_town_known = rng.random() < 0.5
    known = {"names": [f"{last}^{first}"], "ids": [patient_id], "birth_dates": [birth]}
    if header_town_known:
        known["places"] = [town]
    town_mark = f"[[place{'!' if header_town_known else ''}:{town}]]"
    sentences = [
        f"{title} [[name!:{first} {last}]] ([[id!:{patient_id}]], DOB [[date!:{_date_text(rng, locale, birth)}]]).",
    ]
    if locale == "uk":
        nhs = _nhs_number(rng)
        sentences += [
            f"Works as a {job} at [[org:{employer}]] in {town_mark}.",
            f"Examined by Dr [[name:{gp_first} {gp_last}]], [[org:{town} Surgery]], on "
            f"[[date:{_date_text(rng, locale, _random_day(rng))}]].",
            f"Her husband [[name:{relative_first}]] drives her to appointments.",
            f"Lives at [[place:{house} {street}]], {town_mark}; NHS number [[id:{nhs}]].",
            f"Mobile [[phone:{phone}]].",
        ]
    elif locale == "us":
        state = rng.choice(_STATES)
        ssn = _ssn(rng)
        sentences += [
            f"Employed as a {job} at [[org:{employer}]] in {town_mark}, {state}.",
            f"Seen by [[name:{gp_first} {gp_last}]], MD at [[org:{hospital}]] on "
            f"[[date:{_date_text(rng, locale, _random_day(rng))}]].",
            f"Lives with his wife [[name:{relative_first} {last}]] at [[place:{house} {street}]], {town_mark}, {state} "
            f"[[place:{rng.randrange(10000, 99999)}]].",
            f"SSN [[id:{ssn}]]; cell [[phone:{phone}]].",
        ]
    else:
        kvnr = _kvnr(rng)
        sentences += [
            f"Tätig als {job} bei [[org:{employer}]] in {town_mark}.",
            f"Hausarzt Dr. med. [[name:{gp_first} {gp_last}]], Praxis in {town_mark}, Untersuchung am "
            f"[[date:{_date_text(rng, locale, _random_day(rng))}]].",
            f"Ehemann [[name:{relative_first}]] begleitet die Patientin.",
            f"Wohnhaft [[place:{street} {house}]], [[place:{rng.randrange(10000, 99999)}]] {town_mark}; "
            f"Versichertennummer [[id:{kvnr}]].",
            f"Tel. [[phone:{phone}]].",
        ]
    rng.shuffle(sentences[1:])
    clinical = rng.sample(_CLINICAL[locale], 4)
    extras = []
    if index % 4 == 1:
        nick_full, nick = rng.choice(sorted(_NICKNAMES.items()))
        known["names"].append(f"{last}^{nick_full}")
        extras.append(f"Prefers to be called [[name:{nick}]].")
    if index % 4 == 2:
        country = rng.choice(_COUNTRIES)
        extras.append(f"Moved from [[place:{country}]] in {rng.randrange(1995, 2015)}." if locale != "de"
                      else f"Zugezogen aus [[place:{country}]] im Jahr {rng.randrange(1995, 2015)}.")
    if index % 4 == 3:
        school = rng.choice(_SCHOOLS[locale])
        extras.append(f"Teaching assistant at [[org:{school}]]." if locale != "de"
                      else f"Arbeitet zusätzlich an der [[org:{school}]].")
    if index % 6 == 0:
        extras.append(f"[[name!:{last}]]'s pain is worse at night." if locale != "de"
                      else f"Bei {title} [[name!:{last}]] Schmerz nachts stärker.")
    email = f"{first.lower()}.{last.lower()}@example.org".replace("'", "").replace(" ", "")
    if index % 7 == 0:
        extras.append(f"E-mail [[contact:{email}]].")
    body = " ".join(sentences + clinical + extras)
    return parse(f"gen-{index:03d}", locale, body, known)


def generated_cases(count: int = 210) -> list[Case]:
    rng = random.Random(SEED)
    return [_generated(rng, index) for index in range(count)]


def all_cases() -> list[Case]:
    from notes_corpus_hand import hand_cases

    return generated_cases() + hand_cases()
