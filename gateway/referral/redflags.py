"""Offline, deterministic, negation-aware detection of red flags in referral free text.

A NegEx-style approach (Chapman et al. 2001): each flag has trigger phrase patterns; a trigger is
discarded when a negation cue precedes it within :data:`NEGATION_WINDOW_WORDS` words of the same
clause, or a post-negation cue ("... was ruled out") follows it closely. Clauses end at sentence
punctuation and at contrastive conjunctions ("but", "however"), so "no saddle anaesthesia but new
urinary retention" still reports cauda equina. "Family history of ..." is treated like a negation:
the finding belongs to someone else.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass

from gateway.referral.codes import RedFlag
from gateway.referral.document import Referral

__all__ = ["DetectedFlag", "FlagFinding", "detect_red_flags", "flags_for", "NEGATION_WINDOW_WORDS"]

#: How many words may separate a negation cue from the trigger it negates.
NEGATION_WINDOW_WORDS = 7

_AN = r"an?a?esthe(?:sia|tic)"  # anaesthesia, anesthesia, anaesthetic
_PARA = r"par(?:a|ae)esthes(?:ia|iae)"  # paraesthesia, paresthesia
_NUMB = rf"(?:numbness|numb|{_AN}|{_PARA}|sensory (?:loss|change|disturbance))"
_BB = r"(?:bladder|bowel|sphincter|urinary|faecal|fecal)"
_BB_PAIR = rf"{_BB}(?:\s*(?:/|or|and|&)\s*{_BB})?"

_TRIGGERS: dict[RedFlag, tuple[str, ...]] = {
    RedFlag.CAUDA_EQUINA: (
        r"cauda equina",
        rf"saddle(?:[- ]area)? {_NUMB}",
        rf"(?:perineal|perianal) {_NUMB}",
        r"urinary retention|retention of urine",
        rf"{_BB_PAIR} (?:dysfunction|disturbance|incontinence|symptoms|retention|control)",
        r"(?:urinary|faecal|fecal|double) incontinence",
        r"(?:loss of|reduced|lax) anal (?:tone|sphincter)",
    ),
    RedFlag.PROGRESSIVE_NEUROLOGICAL_DEFICIT: (
        r"(?:progressive|progressing|worsening|increasing|deteriorating|new) "
        r"(?:motor |neurological |leg |limb |hand |arm )?(?:weakness|deficit|numbness|paresis)",
        r"foot ?drop|drop ?foot",
        r"myelopath(?:y|ic)",
        r"bilateral (?:leg|lower limb|sciatica)(?: symptoms| weakness| numbness)?",
        r"(?:weakness|deficit|numbness) (?:is )?(?:progressing|worsening|getting worse)",
    ),
    RedFlag.FEVER_OR_INFECTION: (
        r"fevers?|febrile|pyrexi(?:a|al)|rigors|night sweats",
        r"infection|infective|sepsis|septic|discitis|osteomyelitis|abscess|spondylodiscitis",
        r"(?:raised|elevated|high) (?:crp|esr|inflammatory markers|white cell count|wcc)",
    ),
    RedFlag.CANCER_HISTORY: (
        r"cancer|carcinoma|malignan(?:cy|t)|metasta(?:sis|ses|tic)|myeloma|lymphoma|melanoma|sarcoma",
        r"oncology|chemotherapy|radiotherapy",
    ),
    RedFlag.UNEXPLAINED_WEIGHT_LOSS: (
        r"weight loss|loss of weight|losing weight|lost weight|cachexi(?:a|c)",
        r"lost \d+(?:\.\d+)? ?(?:kg|kilos?|lbs?|pounds|stone)",
    ),
    RedFlag.SIGNIFICANT_TRAUMA: (
        r"fall from (?:a )?(?:height|ladder|roof|horse|scaffold\w*)",
        r"fell (?:from|off) (?:a )?(?:height|ladder|roof|horse|scaffold\w*)",
        r"(?:road traffic|motor vehicle|car|motorbike|motorcycle|high[- ]speed) (?:accident|collision|crash)",
        r"\b(?:rta|rtc|mva|mvc)\b",
        r"(?:significant|major|high[- ]energy|severe) (?:trauma|injury)",
        r"trauma",
        r"(?:vertebral|spinal|compression|wedge) fracture",
    ),
    RedFlag.IMMUNOSUPPRESSION: (
        r"immuno ?suppress(?:ed|ion|ive|ants?)|immunocompromised|immunodeficien(?:cy|t)",
        r"(?:long[- ]term|chronic|oral|high[- ]dose|regular) (?:oral )?"
        r"(?:steroids?|corticosteroids?|prednisolone|prednisone)",
        r"(?:on|taking) (?:oral )?(?:steroids|corticosteroids|prednisolone|prednisone|methotrexate|"
        r"azathioprine|tacrolimus|biologics)",
        r"\bhiv\b|\baids\b|(?:renal|liver|organ|kidney) transplant",
    ),
    RedFlag.IV_DRUG_USE: (
        r"\b(?:ivdu|ivda|pwid)\b",
        r"(?:intravenous|iv|injecting|injection) drug (?:use|user|abuse|misuse)",
        r"injects? (?:drugs|heroin)|heroin",
    ),
    RedFlag.AGE_OVER_50_NEW_PAIN: (
        r"(?:aged?|older than|over|above) (?:>\s*)?(?:50|fifty)\b.{0,40}new|"
        r"new[- ]onset .{0,40}(?:aged?|older than|over|above) (?:>\s*)?(?:50|fifty)\b",
        r"first (?:ever )?(?:episode|onset) of (?:back |neck |spinal )?pain (?:at|after) (?:the )?age (?:of )?"
        r"(?:5[1-9]|[6-9]\d)",
    ),
    RedFlag.NIGHT_OR_REST_PAIN: (
        r"night pain|nocturnal pain|pain at night|pain (?:at|during) (?:rest|night)|rest pain",
        r"(?:wakes|waking|woken|wakening) (?:\w+ )?(?:up )?(?:at night|from sleep)",
        r"unremitting (?:pain|back pain)|non[- ]mechanical (?:pain|back pain)|pain (?:is )?worse at night",
        r"worse at night",
    ),
    RedFlag.NO_IMPROVEMENT_6_WEEKS: (
        r"no (?:significant |meaningful )?(?:improvement|benefit|response)",
        r"not (?:improved|improving|improve|responded|responding|settled|settling)",
        r"failed to (?:improve|respond|settle)|failed conservative (?:treatment|management|therapy)",
        r"(?:without|despite) (?:any )?(?:improvement|benefit|response)",
        r"persist(?:s|ent|ing) (?:despite|after)",
    ),
}

_PRE_NEGATION = re.compile(
    r"\b(?:no|not|nil|denies|denied|deny|without|negative for|absence of|absent|free of|"
    r"no evidence of|no signs? of|no history of|never|ruled out|excluded|family history of|"
    r"fh of|rather than)\b"
)
_POST_NEGATION = re.compile(
    r"^\W*(?:\w+\W+){0,3}?(?:(?:was|were|is|are|has been|have been|been)\s+)?"
    r"(?:ruled out|excluded|denied|absent|negative|not present|resolved)\b"
)
# Phrases that contain a cue word yet do not negate ("not ruled out" keeps the finding possible).
_PSEUDO_NEGATION = re.compile(r"\b(?:not ruled out|cannot be ruled out|cannot be excluded|not excluded|"
                              r"no longer improving|not only|no change in)\b")
_CLAUSE_BOUNDARY = re.compile(
    r"[.;:!?\n](?!\d)|\b(?:but|however|although|though|except|yet|whereas|apart from|aside from)\b"
)
_WORD = re.compile(r"\w+")
_WEEKS = re.compile(r"\b(\d+|six|eight|ten|twelve)\s*(?:weeks?|wks?)\b")
_WORD_NUMBERS = {"six": 6, "eight": 8, "ten": 10, "twelve": 12}


@dataclass(frozen=True)
class DetectedFlag:
    """A red flag found in free text: the code, the (start, end) span and the trigger text."""

    code: RedFlag
    phrase_span: tuple[int, int]
    trigger_phrase: str


@dataclass(frozen=True)
class FlagFinding:
    """A red flag of a referral: declared by the referrer, detected in text, or both."""

    code: RedFlag
    declared: bool
    detected: bool
    phrase: str | None


_COMPILED = {flag: [re.compile(rf"\b(?:{p})\b") for p in patterns] for flag, patterns in _TRIGGERS.items()}


def _clause_bounds(text: str, position: int) -> tuple[int, int]:
    start, end = 0, len(text)
    for boundary in _CLAUSE_BOUNDARY.finditer(text):
        if boundary.end() <= position:
            start = boundary.end()
        elif boundary.start() >= position:
            end = boundary.start()
            break
    return start, end


def _negated_before(before: str) -> bool:
    cues = list(_PRE_NEGATION.finditer(before))
    if not cues:
        return False
    last = cues[-1]
    if _PSEUDO_NEGATION.search(before[max(0, last.start() - 10):]):
        return False
    return len(_WORD.findall(before[last.end():])) <= NEGATION_WINDOW_WORDS


def _negated_after(after: str) -> bool:
    if _PSEUDO_NEGATION.match(after.lstrip()) or re.match(r"^\W*(?:\w+\W+){0,3}?(?:not|cannot) ", after):
        return False
    return bool(_POST_NEGATION.match(after))


def _short_duration(flag: RedFlag, clause: str) -> bool:
    """For 'no improvement', a stated duration under six weeks does not make the red flag."""
    if flag is not RedFlag.NO_IMPROVEMENT_6_WEEKS:
        return False
    weeks = [int(w) if w.isdigit() else _WORD_NUMBERS[w] for w in _WEEKS.findall(clause)]
    return bool(weeks) and max(weeks) < 6


def detect_red_flags(text: str) -> list[DetectedFlag]:
    """Find the red flags asserted (not negated) in ``text``, in order of position.

    Matching is case-insensitive; ``text`` itself is not modified.
    """
    lowered = text.lower()
    found: list[DetectedFlag] = []
    for flag, patterns in _COMPILED.items():
        taken: list[tuple[int, int]] = []
        for pattern in patterns:
            for match in pattern.finditer(lowered):
                start, end = match.span()
                if any(start < e and s < end for s, e in taken):
                    continue
                clause_start, clause_end = _clause_bounds(lowered, start)
                if _negated_before(lowered[clause_start:start]) or _negated_after(lowered[end:clause_end]):
                    continue
                if _short_duration(flag, lowered[clause_start:clause_end]):
                    continue
                taken.append((start, end))
                found.append(DetectedFlag(flag, (start, end), text[start:end]))
    return sorted(found, key=lambda item: (item.phrase_span, list(RedFlag).index(item.code)))


def _free_texts(referral: Referral) -> list[str]:
    clinical = referral.clinical
    pain = clinical.pain
    texts = [clinical.history, clinical.symptoms, clinical.examination, clinical.emg,
             clinical.prior_treatment, clinical.prior_imaging, clinical.question]
    if pain is not None:
        texts += [pain.location, pain.nature, pain.radiation]
    return [text for text in texts if text]


_NEW_ONSET = re.compile(r"\bnew(?:[- ]onset)?\b.{0,30}\bpain\b|\bfirst (?:ever )?episode\b")


def _age_on(birth_date: datetime.date, day: datetime.date) -> int:
    return day.year - birth_date.year - ((day.month, day.day) < (birth_date.month, birth_date.day))


def _age_over_50_with_new_pain(referral: Referral, texts: list[str]) -> str | None:
    """Infer the age flag from the birth and study dates when the text says the pain is new."""
    birth, study = referral.patient.birth_date, referral.study_date
    if birth is None or study is None or _age_on(birth, study) <= 50:
        return None
    for text in texts:
        for match in _NEW_ONSET.finditer(text.lower()):
            clause_start, _ = _clause_bounds(text.lower(), match.start())
            if not _negated_before(text.lower()[clause_start:match.start()]):
                return text[match.start():match.end()]
    return None


def flags_for(referral: Referral) -> list[FlagFinding]:
    """Combine the declared red flags with those detected in the referral's free text.

    The age flag is also inferred when the patient is over 50 on the study date and the text
    describes new pain. Findings come in :class:`RedFlag` order, one per flag.
    """
    texts = _free_texts(referral)
    phrases: dict[RedFlag, str] = {}
    for text in texts:
        for detected in detect_red_flags(text):
            phrases.setdefault(detected.code, detected.trigger_phrase)
    if RedFlag.AGE_OVER_50_NEW_PAIN not in phrases:
        inferred = _age_over_50_with_new_pain(referral, texts)
        if inferred is not None:
            phrases[RedFlag.AGE_OVER_50_NEW_PAIN] = inferred
    declared = set(referral.clinical.red_flags)
    return [
        FlagFinding(flag, flag in declared, flag in phrases, phrases.get(flag))
        for flag in RedFlag
        if flag in declared or flag in phrases
    ]
