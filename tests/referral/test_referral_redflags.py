"""Negation-aware red flag detection in free text."""

from __future__ import annotations

import datetime

import pytest

from gateway.referral.codes import RedFlag
from gateway.referral.document import Clinical, Patient, Referral
from gateway.referral.redflags import DetectedFlag, FlagFinding, detect_red_flags, flags_for

CE = RedFlag.CAUDA_EQUINA
PND = RedFlag.PROGRESSIVE_NEUROLOGICAL_DEFICIT
FEVER = RedFlag.FEVER_OR_INFECTION
CANCER = RedFlag.CANCER_HISTORY
WEIGHT = RedFlag.UNEXPLAINED_WEIGHT_LOSS
TRAUMA = RedFlag.SIGNIFICANT_TRAUMA
IMMUNO = RedFlag.IMMUNOSUPPRESSION
IVDU = RedFlag.IV_DRUG_USE
AGE = RedFlag.AGE_OVER_50_NEW_PAIN
NIGHT = RedFlag.NIGHT_OR_REST_PAIN
NOIMP = RedFlag.NO_IMPROVEMENT_6_WEEKS

PHRASINGS = [
    # cauda equina
    ("Saddle anaesthesia and new urinary retention.", {CE}),
    ("Reports saddle anesthesia since yesterday.", {CE}),
    ("No saddle anaesthesia.", set()),
    ("Denies saddle numbness or urinary retention.", set()),
    ("No saddle anaesthesia but new urinary retention.", {CE}),
    ("New bladder/bowel dysfunction.", {CE}),
    ("Bladder and bowel function normal, no incontinence.", set()),
    ("Faecal incontinence since Tuesday.", {CE}),
    ("Cauda equina syndrome was ruled out on MRI.", set()),
    ("Cauda equina not ruled out.", {CE}),
    ("Negative for perineal numbness.", set()),
    ("Reduced anal tone on PR.", {CE}),
    # neurological deficit
    ("Left foot drop for two weeks.", {PND}),
    ("Progressive weakness of the right leg.", {PND}),
    ("No progressive weakness.", set()),
    ("Worsening numbness in both feet.", {PND}),
    ("Without any foot drop.", set()),
    # fever and infection
    ("Denies fever.", set()),
    ("Febrile at 38.9 with rigors.", {FEVER}),
    ("Absence of fever; CRP normal.", set()),
    ("Raised CRP and suspected discitis.", {FEVER}),
    ("Pyrexial overnight.", {FEVER}),
    # cancer
    ("History of breast cancer in 2015.", {CANCER}),
    ("No history of malignancy.", set()),
    ("Family history of bowel cancer.", set()),
    ("Known prostate carcinoma with bone metastases.", {CANCER}),
    # weight loss
    ("Weight loss of 8 kg in three months.", {WEIGHT}),
    ("She has lost 6 kg since summer.", {WEIGHT}),
    ("No weight loss.", set()),
    ("Denies fever, night sweats or weight loss.", set()),
    # trauma
    ("Fall from height at work.", {TRAUMA}),
    ("Fell off a ladder in March.", {TRAUMA}),
    ("No history of trauma.", set()),
    ("RTC at high speed last month.", {TRAUMA}),
    # immunosuppression
    ("On long-term steroids for COPD.", {IMMUNO}),
    ("Immunosuppressed after renal transplant.", {IMMUNO}),
    ("Not immunocompromised.", set()),
    # IV drug use
    ("IVDU.", {IVDU}),
    ("Ex intravenous drug user.", {IVDU}),
    ("Denies IV drug use.", set()),
    # night / rest pain
    ("Night pain.", {NIGHT}),
    ("Pain wakes him at night.", {NIGHT}),
    ("No night pain.", set()),
    ("Pain at rest and worse at night.", {NIGHT}),
    # no improvement
    ("No improvement after 8 weeks of physiotherapy.", {NOIMP}),
    ("No improvement after 3 weeks.", set()),
    ("Symptoms have not improved despite 10 weeks of analgesia.", {NOIMP}),
    ("Failed conservative management.", {NOIMP}),
    # age
    ("Aged over 50 with new back pain.", {AGE}),
    # nothing
    ("Mechanical low back pain, L4-L5 tenderness, VAS 7/10.", set()),
    ("Straight leg raise positive at 40 degrees; power 5/5.", set()),
]


@pytest.mark.parametrize("text,expected", PHRASINGS, ids=[p[0][:40] for p in PHRASINGS])
def test_phrasings(text, expected):
    assert {flag.code for flag in detect_red_flags(text)} == expected


def test_detected_flag_reports_span_and_trigger():
    text = "Stable. Saddle Anaesthesia since Monday."
    [flag] = detect_red_flags(text)
    assert isinstance(flag, DetectedFlag)
    start, end = flag.phrase_span
    assert text[start:end] == flag.trigger_phrase == "Saddle Anaesthesia"


def test_negation_scope_ends_at_sentence():
    assert {f.code for f in detect_red_flags("No fever. Night sweats and weight loss.")} == {FEVER, WEIGHT}


def test_negation_window_is_limited():
    text = "No pain in the neck, the shoulders, the arms, the hands or the legs, and fever."
    assert {f.code for f in detect_red_flags(text)} == {FEVER}


def _referral(**clinical) -> Referral:
    return Referral(source="s", accession_number="A1", patient=Patient(id="P", name="X^Y",
                    birth_date=datetime.date(1960, 1, 1)), clinical=Clinical(**clinical),
                    study_date=datetime.date(2024, 3, 5))


def test_flags_for_combines_declared_and_detected():
    referral = _referral(history="History of breast cancer.", symptoms="Night pain.",
                         red_flags=[CANCER, IVDU])
    findings = flags_for(referral)
    assert findings == [
        FlagFinding(CANCER, declared=True, detected=True, phrase="cancer"),
        FlagFinding(IVDU, declared=True, detected=False, phrase=None),
        FlagFinding(NIGHT, declared=False, detected=True, phrase="Night pain"),
    ]


def test_flags_for_infers_age_flag_from_dates():
    findings = flags_for(_referral(history="New onset of low back pain."))
    assert [(f.code, f.detected) for f in findings] == [(AGE, True)]


def test_flags_for_no_age_flag_when_young_or_pain_not_new():
    young = _referral(history="New onset of low back pain.").model_copy(
        update={"patient": Patient(id="P", name="X^Y", birth_date=datetime.date(1990, 1, 1))})
    assert flags_for(young) == []
    assert flags_for(_referral(history="Longstanding low back pain.")) == []
