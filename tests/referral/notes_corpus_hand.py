"""Hand-written referral texts for the notes corpus (markup as in :mod:`notes_corpus`).

Written the way clinicians write: no templates, names without titles, lower-case slips, names that are
ordinary words, relatives and colleagues in passing, addresses and numbers in many national styles.
Several reproduce the over-scrubbing defects of issue 17 (patient "Power", "Weeks", "Long").
"""

from __future__ import annotations

import datetime

from notes_corpus import Case, parse

D = datetime.date

_HAND: list[tuple[str, str, dict, str]] = [
    ("hand-power", "uk", {"names": ["Power^Helen"], "ids": ["RX1234567"], "birth_dates": [D(1958, 7, 2)]},
     "Mrs [[name!:Helen Power]], DOB [[date!:02/07/1958]]. {{Power 4/5}} in the left {{EHL}}, {{power 5/5}} "
     "elsewhere. {{X-ray}} {{L-spine}}: {{L4-L5}} {{spondylosis}}. [[name!:Mrs Power]]'s daughter "
     "[[name:Kerry]] rang on [[phone:07700 900461]]. {{Foot drop}} for {{12 weeks}}."),
    ("hand-weeks", "uk", {"names": ["Weeks^Daniel"], "ids": ["1029384756"], "birth_dates": [D(1966, 1, 30)]},
     "[[name!:Daniel Weeks]] (hosp no [[id!:1029384756]]) has had {{back pain}} for {{8 weeks}}, "
     "{{leg pain}} for {{3 weeks}}. [[name!:Mr Weeks]] is a {{right}}-handed plasterer. "
     "{{Prior}} {{MRI}} {{2 weeks}} ago at [[org:Frenchay Hospital]]."),
    ("hand-long", "uk", {"names": ["Long^Andrew"], "ids": ["NHS4857773456"], "birth_dates": [D(1949, 11, 5)]},
     "{{Long}}-standing {{low back pain}}. [[name!:Andrew Long]], retired bus driver from [[place:Leighton Buzzard]]. "
     "{{Long}} {{tract signs}}: {{Hoffmann}} positive {{bilaterally}}, {{Babinski}} upgoing on the {{left}}. "
     "Seen by [[name:Dr. Priya Raman]] at [[org:Leighton Road Surgery]] on [[date:4th Jan 2024]]."),
    ("hand-brown", "uk", {"names": ["Brown^Sequoia"], "ids": ["A99887766"], "birth_dates": [D(1990, 3, 3)]},
     "[[name!:Sequoia Brown]]: incomplete {{Brown-Séquard}} syndrome after a fall from a horse at "
     "[[place:Pinkneys Green]]. {{Dural tear}} noted at surgery. {{Brown}} {{urine}} denied. "
     "Partner [[name:Jamie-Lee Cotterill]] present."),
    ("hand-hand", "us", {"names": ["Hand^Rebecca"], "ids": ["MRN883311"], "birth_dates": [D(1975, 9, 14)]},
     "Ms. [[name!:Hand]] reports {{hand}} numbness and {{hand}} weakness, {{grip}} {{4/5}}. "
     "Works the register at [[org:Piggly Wiggly]] in [[place:Opelika]]. Her PCP is [[name:Dr. Terrence Oyelaran]] "
     "([[phone:334-555-0187]]). {{C6}} {{radiculopathy}} on {{EMG}} [[date:3/14/2024]]."),
    ("hand-hoffmann", "de", {"names": ["Hoffmann^Klaus"], "ids": ["4711-0815"], "birth_dates": [D(1961, 2, 10)]},
     "Herr [[name!:Klaus Hoffmann]], geb. [[date!:10.02.1961]]. {{Hoffmann-Zeichen}} rechts positiv, "
     "{{Trömner}} positiv. Verdacht auf {{zervikale Myelopathie}} {{C4/5}}. Ehefrau [[name:Gisela]] berichtet "
     "über {{Gangunsicherheit}} seit {{4 Wochen}}. Überweisung durch [[name:Dr. Ralf Kuhnke]], "
     "[[org:MVZ Neuperlach]], [[place:München]]."),
    ("hand-us-dates", "us", {"names": ["Delacroix^Marie"], "ids": ["MRN-55102"], "birth_dates": [D(1980, 2, 10)]},
     "DOB [[date!:2/10/1980]]. Injury at work on [[date:11/3/2023]] lifting boxes at [[org:Amazon]] "
     "warehouse in [[place:Bessemer]]. MRI [[date:12/01/2023]] {{L5-S1}} {{extrusion}}. "
     "Follow-up [[date:Jan. 9, 2024]]. Husband [[name:Pierre]] asks for a call at [[phone:(205) 555-0143]]."),
    ("hand-de-address", "de", {"names": ["Weber^Anna-Lena"], "ids": ["P-0042"], "birth_dates": [D(1988, 12, 24)],
                               "places": ["Würzburg"]},
     "Frau [[name!:Anna-Lena Weber]], wohnhaft [[place:Sanderglacisstraße 3]], [[place:97072]] [[place!:Würzburg]]. "
     "Versichertennummer [[id:T987654328]]. Arbeitet als Erzieherin im [[org:Kindergarten St. Josef]]. "
     "{{LWS-Syndrom}} mit {{Ischialgie}} {{links}}, {{Lasègue}} bei 30°. Vorstellung am [[date:5. März 2024]]."),
    ("hand-cjk", "uk", {"names": ["Wang^Wei", "王^伟"], "ids": ["H0091827"], "birth_dates": [D(1979, 5, 20)]},
     "Mr [[name!:Wang Wei]] ([[name!:王伟]]) attends with his son [[name:Wang Hao]] who interprets. "
     "Restaurant owner, [[org:Golden Dragon]] on [[place:Lisburn Road]], [[place:Belfast]] [[place:BT9 6AB]]. "
     "{{Sciatica}} {{right}} {{S1}}, {{ankle jerk}} absent."),
    ("hand-dvorak", "de", {"names": ["Dvořák^Tomáš"], "ids": ["PID77120"], "birth_dates": [D(1970, 8, 8)]},
     "Herr [[name!:Tomáš Dvořák]] aus [[place:Plzeň]], Tschechien, seit 2019 in [[place:Regensburg]] "
     "bei [[org:Krones AG]] beschäftigt. Hausärztin [[name:Dr. Eva Nováková-Schmid]]. {{Spinalkanalstenose}} "
     "{{L3/4}}, {{Gehstrecke}} 200 m."),
    ("hand-nunez", "us", {"names": ["Ñúñez^José"], "ids": ["887766554"], "birth_dates": [D(1983, 6, 1)]},
     "[[name!:José Ñúñez]] (goes by [[name:Pepe]]), SSN [[id:219-09-9999]], landscaper for "
     "[[org:GreenScape LLC]] of [[place:Las Cruces]], NM [[place:88001]]. Prior {{microdiscectomy}} {{L4-L5}} "
     "by [[name:Dr. A. Gutiérrez]] at [[org:MountainView Regional]]. {{SLR}} {{positive}} {{left}} at 35°."),
    ("hand-obrien", "uk", {"names": ["O'Brien^Siobhan"], "ids": ["RVJ0011223"], "birth_dates": [D(1986, 4, 17)]},
     "[[name!:Siobhan O'Brien]], [[name!:O’Brien]] in the old notes, {{G2P1}}, {{32 weeks}} pregnant. "
     "GP: [[name:Dr Fionnuala McGettigan]], [[org:Ballykelly Medical Practice]]. Sister [[name:Róisín]] "
     "is her carer. Lives in [[place:Derry]]. {{Pelvic girdle pain}}, {{SIJ}} tender."),
    ("hand-muller", "de", {"names": ["Müller^Jürgen"], "ids": ["0815"], "birth_dates": [D(1955, 1, 1)]},
     "Patient [[name!:MUELLER]], [[name!:Jürgen]], Rentner, früher Schlosser bei [[org:Thyssenkrupp]] in "
     "[[place:Duisburg]]. Tochter [[name:Sabrina Müller-Lüdenscheidt]] ([[phone:0203 4567890]], "
     "[[contact:s.mueller-l@web.de]]). {{Osteoporotische Fraktur}} {{LWK 1}}, {{Kyphoplastie}} erwogen."),
    ("hand-zoe", "uk", {"names": ["Pemberton-Hale^Zoë"], "ids": ["K1928374"], "birth_dates": [D(2001, 10, 9)]},
     "[[name!:Zoë Pemberton-Hale]], student at [[org:University of Exeter]], plays for [[org:Exeter Chiefs]] "
     "women. Flatmate [[name:Tilly]] found her. {{Pars defect}} {{L5}}, {{spondylolysis}}. "
     "Mum ([[name:Caroline Hale]]) on [[phone:+44 7700 900 982]]."),
    ("hand-initials", "uk", {"names": ["Featherstone^Robert"], "ids": ["54321987"], "birth_dates": [D(1944, 2, 29)]},
     "[[name!:R. Featherstone]], known as [[name:Bob]], DOB [[date!:29.02.44]]. Discussed with "
     "[[name:J. K. Adeyemi]] (orthogeriatrics) and [[name:Prof. Lindqvist]]. {{Odontoid fracture}}, {{type II}}, "
     "in a {{hard collar}} for {{6 weeks}}."),
    ("hand-us-address", "us", {"names": ["Kowalski^Theodore"], "ids": ["E1234567"], "birth_dates": [D(1968, 12, 7)]},
     "Pt [[name:Ted]] [[name!:Kowalski]] lives at [[place:4471 N. Lincoln Ave, Apt 2B]], [[place:Chicago]], "
     "IL [[place:60625]]. Retired from [[org:CTA]]. Daughter [[name:Agnieszka]]. {{Cervical myelopathy}}, "
     "{{mJOA 12}}, {{C3-C4}} {{stenosis}}; {{Hoffmann}} + {{bilaterally}}."),
    ("hand-nhs", "uk", {"names": ["Okonkwo^Chidi"], "ids": ["N0987"], "birth_dates": [D(1972, 3, 19)]},
     "[[name!:Chidi Okonkwo]], NHS No. [[id:401 023 2137]], hospital number [[id:N0987]]. "
     "Security guard at [[org:Bluewater]] shopping centre, [[place:Greenhithe]]. {{Cauda equina}} {{red flags}} "
     "explained. {{Bladder scan}} {{80 ml}} {{post-void}}."),
    ("hand-kvnr", "de", {"names": ["Yılmaz^Ayşe"], "ids": ["M0071"], "birth_dates": [D(1969, 7, 15)]},
     "Frau [[name!:Yılmaz]], Versicherten-Nr. [[id:A123456780]], Reinigungskraft bei [[org:Klüh Service]] "
     "in [[place:Düsseldorf]]. Sohn [[name:Emre]] übersetzt. {{Radikulopathie}} {{L5}} {{links}}, "
     "{{Fußheberschwäche}} {{KG 4/5}}. Termin am [[date:17.04.2024]] um 10:30."),
    ("hand-emails", "us", {"names": ["Goldberg^Miriam"], "ids": ["G-5543"], "birth_dates": [D(1957, 4, 4)],
                           "emails": ["miriam.g@example.com"]},
     "Contact [[contact!:miriam.g@example.com]] or her son [[name:Ari Goldberg]] at [[contact:ari@goldberg.example]]. "
     "Office: [[phone:+1 (917) 555-0162 ext. 4]]. {{Adjacent segment disease}} above {{L4-L5}} {{fusion}}."),
    ("hand-lower", "uk", {"names": ["Baxter^Kevin"], "ids": ["B776655"], "birth_dates": [D(1979, 9, 9)]},
     "kevin baxter seen today. wife [[name:sharon]] says he fell at work ([[org:Screwfix]] [[place:Hinckley]]). "
     "{{tender}} {{L1}}, {{no neuro deficit}}. pls call [[phone:01455 613 227]] with results."),
    ("hand-lab", "uk", {"names": ["Ramsay^Ian"], "ids": ["120"], "birth_dates": [D(1950, 5, 5)]},
     "[[name!:Ian Ramsay]], study ID [[id!:120]]. {{CRP 120}}, {{ESR 88}}, {{Hb 12.0}}, {{WCC 15.1}}. "
     "{{Discitis}} {{T11-T12}} suspected; {{blood cultures}} sent. {{Vancomycin 1 g}} {{12-hourly}}."),
    ("hand-ncs", "us", {"names": ["Tran^Linh"], "ids": ["T88"], "birth_dates": [D(1985, 1, 20)]},
     "[[name!:Linh Tran]]: NCS peroneal {{4.2 (5.0) 11.3 (12.1) mV}}, tibial {{3.1 (4.0) 9.8 (10.5) mV}}, "
     "sural {{12 (6) uV}}. ROM {{0-90 0-30 0-45}}. Referred by [[name:Dr. Samantha Whitfield-Ortiz]] of "
     "[[org:Coastal Spine Associates]], [[place:Myrtle Beach]]."),
    ("hand-country", "uk", {"names": ["Silva^Joao"], "ids": ["S3322"], "birth_dates": [D(1993, 8, 30)]},
     "[[name!:João Silva]] moved here from [[place:Portugal]] last year, works nights at "
     "[[org:Tesco Extra]] [[place:Cheltenham]]. Previously treated in [[place:Porto]] at "
     "[[org:Hospital de Santo António]]. {{Scheuermann}} {{kyphosis}}, {{Cobb angle 62°}}."),
    ("hand-gp-letter", "uk", {"names": ["Ashworth^Pauline"], "ids": ["P55"], "birth_dates": [D(1961, 6, 6)],
                              "names_extra": []},
     "Dear colleague, I would be grateful if you could see [[name!:Pauline Ashworth]]. Kind regards, "
     "[[name:Dr Alasdair MacLeod]], [[org:Kingsway Health Centre]], [[place:12 Kingsway]], "
     "[[place:Dundee]] [[place:DD3 8TW]]. Tel [[phone:01382 000 111]]. {{Spinal stenosis}}, "
     "{{neurogenic claudication}}."),
    ("hand-dates-mixed", "uk", {"names": ["Curtis^Neil"], "ids": ["C4455"], "birth_dates": [D(1964, 12, 25)]},
     "[[name!:Neil Curtis]], born [[date!:Christmas Day 1964]]. Fell on [[date:1st March]], admitted "
     "[[date:03/03/24]], discharged [[date:Mon 11th March 2024]]. Review [[date:2024-04-02]]. "
     "{{Wedge fracture}} {{T12}}, {{TLICS 2}}."),
    ("hand-de-dr", "de", {"names": ["Becker^Lothar"], "ids": ["B-1"], "birth_dates": [D(1947, 3, 8)]},
     "Sehr geehrte Kolleginnen und Kollegen, wir berichten über Herrn [[name!:Becker]]. Mitbehandelnd: "
     "[[name:Prof. Dr. med. Hans-Georg Zimmermann]], [[org:Orthopädische Klinik König-Ludwig-Haus]]. "
     "Tel. [[phone:+49 (0) 931 803-0]]. {{Spondylodese}} {{L4-S1}} 2019."),
    ("hand-us-ssn", "us", {"names": ["Jackson^Darnell"], "ids": ["J7"], "birth_dates": [D(1971, 7, 4)]},
     "[[name!:Darnell Jackson]] SSN [[id:078-05-1120]] Medicaid. Mother [[name:Loretta Jackson]] at "
     "[[place:1202 Peachtree St NE]], [[place:Atlanta]], GA [[place:30309]]. {{Gunshot wound}} {{T8}}, "
     "{{ASIA B}}."),
    ("hand-possessive", "uk", {"names": ["Greenhalgh^Fiona"], "ids": ["G66"], "birth_dates": [D(1977, 2, 2)]},
     "[[name!:Fiona Greenhalgh]]'s symptoms began after [[name!:Greenhalgh]]'s fall. [[name:Marcus]]'s "
     "(partner) view is that it is worse. {{Piriformis}} {{syndrome}} vs {{S1 radiculopathy}}."),
    ("hand-double", "uk", {"names": ["Bowes-Lyon^Henrietta"], "ids": ["H12"], "birth_dates": [D(1939, 9, 1)]},
     "[[name!:Mrs Bowes-Lyon]] ([[name!:Lyon]] on the ward list). Husband [[name:Archibald Bowes-Lyon]]. "
     "{{Insufficiency fracture}} of the {{sacrum}}; {{Denis zone 1}}."),

    # --- written after the scrubber existed, without running it first: phrasing it was not built around ---
    ("hand-noctx", "uk", {"names": ["Price^Gareth"], "ids": ["Q1"], "birth_dates": [D(1970, 1, 2)]},
     "Spoke to [[name:Nkechi]] on the phone; [[name:Nkechi]] is anxious about surgery. [[name!:Gareth]] "
     "himself drives to [[place:Coventry]] daily. {{Schmorl's node}} at {{L2}}, {{Modic type 1}} change {{L4-L5}}."),
    ("hand-team", "uk", {"names": ["Lloyd^Bethan"], "ids": ["L0001"], "birth_dates": [D(1982, 5, 5)]},
     "Team: Dr [[name:Okafor]], Sr [[name:Bramley]], physio [[name:Lena]]. [[name!:Bethan]] is from "
     "[[place:Swansea]] originally, was on holiday in [[place:Tenerife]] when it started. {{Tarlov cyst}} {{S2}}, "
     "{{Crohn's disease}} on {{azathioprine 100 mg}}."),
    ("hand-employers", "uk", {"names": ["Evans^Rhodri"], "ids": ["E2"], "birth_dates": [D(1959, 9, 9)]},
     "[[name!:Rhodri Evans]] worked 20 years at [[org:British Steel]] [[place:Port Talbot]], now volunteers at "
     "[[org:Oxfam]]. Plays bowls for [[org:Llanelli Wanderers]]. {{Parkinson's disease}}, {{Trendelenburg gait}}, "
     "{{Bell's palsy}} 2015."),
    ("hand-us-kaiser", "us", {"names": ["Reyes^Carmen"], "ids": ["K-778112"], "birth_dates": [D(1977, 11, 30)]},
     "Chart [[id!:K-778112]]. [[name!:Carmen Reyes]], 46F, seen by Dr. [[name:Villanueva]] (ortho) at "
     "[[org:Kaiser Permanente Oakland]] on [[date:04-Jan-24]]. Medicare # [[id:1EG4-TE5-MK73]]. "
     "Cell [[phone:+1-415-555-0134]]. {{Chiari I}} malformation, {{Lhermitte's sign}} positive, {{Klippel-Feil}}."),
    ("hand-de-praxis", "de", {"names": ["Schulz^Petra"], "ids": ["S-99"], "birth_dates": [D(1964, 4, 1)]},
     "Zuweisung: Frau Dr. [[name:Bauer]], [[org:Gemeinschaftspraxis Bauer & Lenz]], [[place:Nürnberg]]. "
     "Frau [[name!:Schulz]] wohnt in der [[place:Goethestr. 5]] in [[place:04109]] [[place:Leipzig]], "
     "Arbeitgeber: [[org:Stadtwerke Bielefeld]]. Telefon [[phone:(+49) 171/2345678]]. {{Guillain-Barré}} 2010, "
     "jetzt {{Horner-Syndrom}} rechts, {{Trendelenburg-Hinken}}."),
    ("hand-quotes", "uk", {"names": ["Kenwright^Margaret"], "ids": ["MK7"], "birth_dates": [D(1938, 6, 6)]},
     "[[name!:Margaret]] (\"[[name:Peggy]]\") [[name!:Kenwright]], DOB: [[date!:1938-06-06]], lives alone in "
     "[[place:Morecambe]]; neighbour [[name:Stan Pilkington]] has a key. {{Paget's disease}} of {{L3}}, "
     "{{Charcot}} joint {{right}} ankle, {{Gowers}} sign absent."),
    ("hand-email-gp", "uk", {"names": ["Ahmed^Yusuf"], "ids": ["YA-1"], "birth_dates": [D(1991, 2, 14)]},
     "Queries to [[contact:dr.ahmed@nhs.net]] (no relation) or [[contact:reception.fairfield@nhs.net]]. "
     "[[name!:Yusuf Ahmed]], taxi driver for [[org:Uber]], previously [[org:Royal Navy]]. Tel "
     "[[phone:0121 496 0000 ext 2231]]. {{Down syndrome}} brother. {{Addison's disease}}, {{hydrocortisone 20 mg}}."),
    ("hand-dates-more", "us", {"names": ["Pruitt^Wayne"], "ids": ["WP-3"], "birth_dates": [D(1962, 3, 4)]},
     "DOB: [[date!:03/04/1962]]. Fell [[date:2 Feb]], ED visit [[date:Feb 3rd]], MRI [[date:2/10/2024]], "
     "f/u [[date:02/24/24]]. Wife [[name:Darlene]], daughter [[name:Kaylee Pruitt]]. {{L1 burst fracture}}, "
     "{{TLICS 4}}, {{Frankel C}}."),
    ("hand-mixed-script", "de", {"names": ["Papadopoulos^Nikos", "Παπαδόπουλος^Νίκος"], "ids": ["GR-5"],
                                 "birth_dates": [D(1955, 8, 15)]},
     "Herr [[name!:Nikos Papadopoulos]] ([[name!:Νίκος Παπαδόπουλος]]), Gastwirt in [[place:Offenbach]], "
     "Tochter [[name:Eleni]] übersetzt. {{Spondylolisthesis}} {{Meyerding II}} {{L5/S1}}, {{Claudicatio spinalis}}."),
    ("hand-address-uk", "uk", {"names": ["Hughes^Olwen"], "ids": ["OH-2"], "birth_dates": [D(1947, 7, 7)]},
     "Address: [[place:Flat 3, 27 Cathedral Road]], [[place:Cardiff]] [[place:CF11 9HA]]. Previously at "
     "[[place:Ty Gwyn Farm]], [[place:Llanwrtyd Wells]]. Carer from [[org:Bluebird Care]] visits twice daily. "
     "{{Osteoporosis}}, {{T-score -3.1}}, {{zoledronic acid 5 mg}}."),
    ("hand-ssn-formats", "us", {"names": ["Lindgren^Erik"], "ids": ["EL"], "birth_dates": [D(1973, 10, 10)]},
     "[[name!:Erik Lindgren]] SSN: [[id:123 45 6789]], alt ID [[id:456-78-9012]]. Employer [[org:Boeing]] "
     "[[place:Everett]], WA. Ph [[phone:425.555.0199]]. {{Ankylosing spondylitis}}, {{HLA-B27}} positive, "
     "{{Schober 2 cm}}."),
    ("hand-gp-surgery", "uk", {"names": ["Bell^Martin"], "ids": ["MB4"], "birth_dates": [D(1968, 12, 1)]},
     "Mr [[name!:Bell]] was reviewed at [[org:The Elms Medical Practice]] by [[name:Dr Sunita Varghese]]. "
     "He has {{Bell's palsy}} from 2019... {{L5}} {{radiculopathy}}, {{power 4/5}} {{EHL}}. "
     "He does shifts at [[org:Asda]] [[place:Pudsey]]."),
]


def hand_cases() -> list[Case]:
    cases = []
    for key, locale, known, marked in _HAND:
        known = {k: v for k, v in known.items() if k != "names_extra"}
        cases.append(parse(key, locale, marked, known))
    return cases
