"""Clinical words the scrubber must never take for names, places or organisations.

Eponyms of spine examination and classification, abbreviations of tests, scores and imaging, and the
patterns of clinical values (vertebral levels, doses, scores, lab values, number series). The named-entity
model and the name rules consult them before claiming a span; the value patterns are protected before any
identifier rule runs, so that a short Study ID such as "120" cannot take "CRP 120".
"""

from __future__ import annotations

import re
import unicodedata

from gateway.privacy.vocabulary import is_clinical_form

__all__ = ["CLINICAL_NOUN_AFTER", "CLINICAL_VALUE", "EPONYMS", "is_clinical_word"]

#: Eponyms (folded, lower case): removed only where they are plainly a person's name.
EPONYMS = frozenset("""
babinski lasegue romberg hoffmann spurling brown sequard trommer tromner scheuermann denis cobb oswestry
lhermitte hawkins kernig brudzinski waddell patrick faber gaenslen schober adson phalen tinel froment
jendrassik chaddock oppenheim gordon wartenberg mennell trendelenburg bechterew forestier paget pott
chiari arnold klippel feil modic pfirrmann meyerding frankel asia jefferson hangman chance smith
robinson cloward tuffier mckenzie williams barthel glasgow karnofsky nurick japanese wiltse ranawat
tokuhashi tomita spinal kummell kummel baastrup bertolotti marfan ehlers danlos parkinson guillain barre
charcot graves gowers tarlov schmorl crohn addison bell down cushing lyme hodgkin sjogren reiter still bouchard heberden
claudicatio spinalis
horner harrington cotrel dubousset luque roy camille magerl tile anderson dalonzo weber
""".split())

#: Abbreviations and words of spine referrals (folded, lower case) that look like names to a model.
_ABBREVIATIONS = frozenset("""
odi vas nrs ehl slr mri mrt ct crp hb wcc esr emg ncs eng lws hws bws asr psr acdf pt ot gp md do tlics
asia mjoa joa cobb bmi ivd ddd pid tlif plif alif xlif olif acdf pcdf acf ssep mep sep cmap snap dml
ncv mv uv ms fbss sij si cauda equina conus medullaris lumbar thoracic cervical sacral sacrum coccyx
radiculopathy myelopathy stenosis spondylosis spondylolisthesis spondylolysis listhesis kyphosis lordosis
scoliosis discectomy microdiscectomy laminectomy laminotomy foraminotomy fusion spondylodese kyphoplastie
vertebroplasty kyphoplasty ischialgie lumbago lumboischialgie fussheberparese fussheberschwache
bandscheibenvorfall wurzelkompression spinalkanalstenose osteochondrose reithosenanasthesie kauda
physiotherapie rontgen gehstrecke radikulopathie ibuprofen pregabalin gabapentin naproxen tylenol
paracetamol diclofenac tramadol morphine oxycodone amitriptyline duloxetine vancomycin prednisolone
dexamethasone metamizol novalgin etoricoxib celecoxib codeine co-codamol baclofen tizanidine
x-ray xray mrt ssr bsr trizeps bizeps quadrizeps iliopsoas ehl tibialis peroneus peroneal sural tibial
median ulnar radial femoral sciatic n g2p1 hla b27 ra sle ankylosing dish opll olf
kraft syndrom myelopathie gangunsicherheit zervikale zeichen reflex reflexe sign test syndrome fracture
fraktur score scale grade type klassifikation manoeuvre maneuver phenomenon scan bladder odontoid
wedge pars hard collar theatre ward clinic cmap pelvic girdle insufficiency piriformis discitis
dural dura durale arachnoid thecal theca sac disc disk discs annulus anulus nucleus pulposus facet facets
pedicle pedicles lamina laminae spinous transverse process foramen foramina foraminal recess root roots
nerve nerves cord conus filum ligamentum flavum endplate endplates vertebra vertebrae vertebral body
uncovertebral atlas axis dens odontoid occiput sacroiliac iliac ilium coccygeal paraspinal psoas
multifidus erector spinae gluteal glutei hamstring hamstrings quadriceps dermatome myotome l1 l2 l3 l4 l5
power strength tone s1 s2 c1 c2 c3 c4 c5 c6 c7 c8 t1 t2 t3 t4 t5 t6 t7 t8 t9 t10 t11 t12
""".split())

#: Words after an eponym that make it clinical: "Hoffmann sign", "Jefferson fracture", "Brown-Séquard".
CLINICAL_NOUN_AFTER = re.compile(r"[\s\-]*(?:sign|test|reflex|zeichen|syndrome?|fracture|fraktur|score|scale|"
                                 r"grade|type|classification|klassifikation|manoeuvre|maneuver|phenomenon|"
                                 r"disease|positive|negative|positiv|negativ|sequard|séquard|palsy|node|nodes|cyst|joint|gait|"
                                 r"arthropathy|neuropathy|triad|lähmung|krankheit|syndrom|hinken|malformation|"
                                 r"classification|ratio|angle|line|position|manoeuvre)\b", re.IGNORECASE)

_LEVEL = r"(?:[CTLS]|Th|LWK|BWK|HWK)\s?\d{1,2}"
#: Clinical values protected from every identifier rule (case-sensitive where case carries meaning).
CLINICAL_VALUE = re.compile("|".join((
    rf"\b{_LEVEL}(?:[-/–](?:{_LEVEL}|\d{{1,2}}(?![/.\d]))|\s?[-/–]\s?{_LEVEL})*\b",  # L4-L5, L5/S1, C5/6, LWK 1
    r"\bHLA-?B\s?27\b",
    r"\b(?:VAS|NRS|ODI|NDI|mJOA|JOA|EQ-5D|BMI|GCS|ASIA|TLICS|SINS|BASDAI|BASFI|ADI|EIFEL|DN4|PHQ-?9|GAD-?7)\s?[A-E]?\d{1,3}(?:[.,]\d+)?(?:\s?/\s?\d{1,3}|\s?%)?(?!\d)",
    r"\b(?:CRP|Hb|Hgb|WCC|WBC|ESR|BSG|PCT|INR|Na|K|Cr|eGFR|HbA1c|PSA|ALP|Ca|Leukozyten|Thrombozyten|Plt)"
    r"\s?(?:of\s)?(?:0|[1-9]\d{0,3})(?:[.,]\d+)?(?![\d\w])",  # no leading zero: "K 005" is a serial
    r"(?<![\d/.\-])\b\d{1,5}(?:[.,]\d+)?\s?(?:mg|g|mcg|µg|ug|ml|mL|l|IU|IE|units|mmol|mV|uV|µV|ms|m/s|cm|mm|kg|Grad|°|%)"
    r"(?![\w])",
    r"\b\d+[.,]\d+\s?\(\d+[.,]\d+\)(?:\s+\d+(?:[.,]\d+)?\s?\(\d+(?:[.,]\d+)?\))*\s?(?:mV|uV|µV|ms|m/s)?",
    r"\b\d+\s?\(\d+\)(?:\s+\d+\s?\(\d+\))*\s?(?:mV|uV|µV|ms|m/s)\b",
    r"(?<![\d/.\-])\d{1,3}\s?-\s?\d{1,3}(?:\s+\d{1,3}\s?-\s?\d{1,3})+(?![\d/.\-])",  # 0-90 0-30 0-45
    r"(?<![\d/])\b\d{1,2}/(?:5|10)\b(?![\d/])",                                       # 4/5, 7/10
    r"(?<![\d\-])[0-3]-[0-3]-[0-3](?:-[0-3])?(?![\d\-])",                                # 1-0-1 (dosing)
)))


def _fold(word: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", word.lower()) if not unicodedata.combining(c))


def is_clinical_word(word: str) -> bool:
    """True when ``word`` (any case, any accents) is an eponym or clinical abbreviation of the list, or clinical
    by its form (:func:`gateway.privacy.vocabulary.is_clinical_form`)."""
    folded = _fold(word).strip(".'’")
    if folded in EPONYMS or folded in _ABBREVIATIONS:
        return True
    parts = [p for p in re.split(r"[\-/]", folded) if p]
    if len(parts) > 1 and any(p in EPONYMS or p in _ABBREVIATIONS for p in parts):
        return True
    return is_clinical_form(word)
