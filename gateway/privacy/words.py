"""Which words are too common to identify anyone on their own.

A surname such as Long, Hand, Power or Brown, a surname equal to a word the notes themselves print
("weeks" in "No improvement after 6 weeks", "Prior" in "Prior imaging") or a title ("Miss", "Professor") is
searched for only as part of a full name or next to a title or first name; a rare surname or a town is
searched for on its own.

Common means any of:

- frequent in English or German: a Zipf frequency (log10 of occurrences per billion words) of at least
  :data:`COMMON_ZIPF` in the word-frequency lists of the ``wordfreq`` package (shipped with it as data,
  the "small" lists: nothing is downloaded; about 30 MB of memory once loaded);
- a word of the notes' own vocabulary: section titles, red flag labels and the other fixed text of the
  notes SR and PDF (:mod:`gateway.referral.codes`);
- clinical vocabulary (:data:`CLINICAL_WORDS`) and titles (:data:`TITLES`);
- shorter than :data:`MIN_DISTINCTIVE_LENGTH` letters.
"""

from __future__ import annotations

import functools

from gateway.privacy.text import fold, words

__all__ = ["CLINICAL_TERM_NOUNS", "CLINICAL_WORDS", "COMMON_ZIPF", "EPONYM_MODIFIERS", "EPONYM_TAIL",
           "MIN_DISTINCTIVE_LENGTH", "TITLES", "is_common", "is_distinctive",
           "notes_vocabulary"]

#: Zipf frequency from which a word counts as common (4.5: about once in 30,000 words; "long" is 5.8,
#: "weeks" 5.2, "prior" 4.9, "smith" 4.9; "kettering" 2.9, "hargreaves" 2.8).
COMMON_ZIPF = 4.5
MIN_DISTINCTIVE_LENGTH = 3
_LANGUAGES = ("en", "de")

#: The nouns that make a surname before them a clinical term ("Paget's disease", "Hoffmann sign", "Milwaukee
#: brace"), as a regular expression of folded words; the scrubber and the guard read the same list.
CLINICAL_TERM_NOUNS = (r"(?:disease|sign|signs|test|tests|fracture|syndrome|palsy|node|nodes|cyst|tumou?r|lesion|"
                       r"lesions|reflex|grade|classification|score|scale|phenomenon|manoeuvre|maneuver|zeichen|"
                       r"syndrom|krankheit|fraktur|knotchen|angle|line|joint|arthropathy|neuropathy|criteria|index|"
                       r"triad|brace|collar|orthosis|corset|jacket)")
#: Words that stand between an eponym and its noun ("Adams forward bend test", "Charcot spinal arthropathy"): a
#: closed list, so that no verb or article ("Smith had a test") lets a surname pass for an eponym.
EPONYM_MODIFIERS = (r"(?:forward|bend|spinal|neuropathic|neurogenic|flexion|extension|rotation|compression|"
                    r"distraction|hip|knee|neck|head|lumbar|thoracic|cervical|sacroiliac|straight|leg|raise|"
                    r"crossed|reverse|reversed|modified|provocation|release|tension|stress|standing|seated|"
                    r"sitting|prone|supine|thumb|finger|hand|arm|foot|toe)")
#: An eponym's tail up to its clinical noun, after the eponym (folded text): a possessive, at most two
#: modifiers, the noun.
EPONYM_TAIL = (rf"(?:'s|s'|'|’s|s’|’)?(?:[ \t\-]+{EPONYM_MODIFIERS}){{0,2}}[ \t\-]+{CLINICAL_TERM_NOUNS}"
               r"(?![^\W\d_])")

#: Titles and honorifics, in the languages of the notes; never an identifier on their own.
TITLES = frozenset("""
dr mr mrs ms miss mx master prof professor sir dame lord lady rev revd reverend sr jr md phd frcs frcp mbbs mrcp
mrcgp dm consultant nurse sister herr frau fr hr dipl ing med univ priv doz pd madame mme mlle monsieur
""".split())

#: Words of spine referrals, anatomy, examination and imaging that the frequency lists rank rare but that
#: name no one (a patient called Walker or Cobb does not make "walker" or "cobb angle" an identifier).
CLINICAL_WORDS = frozenset("""
walker frame crutches stick physio physiotherapy physiotherapist osteopath chiropractor gp surgery clinic ward
pacs ris mri mr ct xray x-ray dexa spect pet emg ncs ncv eeg ecg echo ultrasound fluoroscopy myelogram
lumbar thoracic cervical sacral sacrum coccyx sacroiliac spine spinal vertebra vertebral vertebrae disc discs
radicular radiculopathy myelopathy stenosis spondylosis spondylolisthesis spondylolysis listhesis scoliosis
kyphosis lordosis foramen foraminal facet facets ligamentum flavum annulus annular nucleus pulposus
herniation prolapse protrusion extrusion sequestration osteophyte osteophytes modic endplate endplates
cauda equina conus medullaris myelomalacia syrinx dermatome dermatomal myotome sciatica cruralgia
claudication paraesthesia paresthesia paraesthesiae hypoaesthesia dysaesthesia allodynia hyperreflexia
areflexia hyporeflexia clonus babinski lasegue lasègue romberg hoffmann hoffman spurling slr ehl fhl tibialis
gastrocnemius quadriceps hamstring hamstrings iliopsoas gluteal glutei piriformis adductor abductor
dorsiflexion plantarflexion saddle anaesthesia anesthesia incontinence retention urinary bowel bladder
perianal catheter
laminectomy discectomy microdiscectomy fusion decompression foraminotomy laminotomy vertebroplasty
kyphoplasty rhizotomy epidural injection injections steroid nerve root block radiofrequency ablation
naproxen ibuprofen diclofenac paracetamol acetaminophen codeine tramadol morphine oxycodone gabapentin
pregabalin amitriptyline duloxetine nortriptyline prednisolone dexamethasone methotrexate metformin
warfarin apixaban rivaroxaban aspirin clopidogrel tapentadol buprenorphine fentanyl
vas odi nrs roland morris oswestry ndi jaoa sf36 eq5d mmt mrc asia frankel nurick joa
crp esr hb wbc psa pth alp inr egfr
brown sequard séquard pott potts scheuermann bechterew bekhterev baastrup bertolotti tarlov schmorl
cobb meyerding pfirrmann modic kambin wiltse
bilateral unilateral left right links rechts beidseits lateral medial anterior posterior ventral dorsal
cranial caudal proximal distal paramedian paracentral foraminal extraforaminal
radiology neuroradiology neurosurgery neurosurgical orthopaedics orthopedics orthopaedic orthopedic neurology
rheumatology oncology haematology hematology urology physiotherapy anaesthetics anesthesiology
musculoskeletal msk outpatient outpatients inpatient department dept unit imaging radiographer radiologist
neurologist neurosurgeon rheumatologist orthopaedist spinal triage
""".split())

_NOTES_TEXT = """
Referral clinical notes de-identified spine-gateway History Symptoms Examination EMG nerve conduction
Prior treatment Prior imaging Clinical question Pain pattern Location Character Radiation Duration weeks
Intensity Red flags Red flag Declared Detected Phrase Yes No Urgency Urgent Routine score week
No referral received these notes come from the DICOM header of the study
"""


@functools.cache
def notes_vocabulary() -> frozenset[str]:
    """Every word the notes SR and PDF print themselves: section titles, red flag labels, fixed text."""
    from gateway.referral import codes  # bottom layer of the referral package: no imports of its own

    texts = [_NOTES_TEXT]
    texts += [value.meaning for value in vars(codes).values() if isinstance(value, codes.Code)]
    texts += [code.meaning for code in codes.RED_FLAG_CODES.values()]
    texts += [flag.value.replace("_", " ") for flag in codes.RedFlag]
    return frozenset(word for text in texts for word in words(fold(text)))


@functools.cache
def _zipf(word: str) -> float:
    from wordfreq import zipf_frequency

    return max(zipf_frequency(word, language, wordlist="small") for language in _LANGUAGES)


def zipf(word: str) -> float:
    """The Zipf frequency of ``word`` (folded) in English or German, whichever is higher (wordfreq's small lists)."""
    return _zipf(fold(word).strip("'"))


def is_common(word: str) -> bool:
    """Whether ``word`` (one word, any case or accents) is too common to identify anyone on its own."""
    folded = fold(word).strip("'")
    if len(folded) < MIN_DISTINCTIVE_LENGTH or folded.isdigit():
        return True
    if folded in TITLES or folded in CLINICAL_WORDS or folded in notes_vocabulary():
        return True
    return _zipf(folded) >= COMMON_ZIPF


def is_distinctive(word: str) -> bool:
    """The opposite of :func:`is_common`: a word worth searching for on its own."""
    return not is_common(word)
