"""Issue 23, item 1: the allowlist's general rules (gateway/referral/allowlist.py), one test per rule, on sentences
written here (not taken from either corpus half). Each rule is checked both ways: what it removes and the clinical
terms it must keep."""

from __future__ import annotations

import pytest

from gateway.referral.scrub import KnownIdentifiers, TextScrubber


def _scrub(text: str, language: str = "en") -> str:
    return TextScrubber(KnownIdentifiers(), 0, language=language).scrub(text)


@pytest.mark.parametrize("text,gone,kept", [
    # a word in capitals is an acronym: known only as a clinical one, whatever its letters spell in lower case
    ("She stacks shelves for ASDA and drives for UPS at night; TLSO when upright.", ["ASDA", "UPS"], ["TLSO"]),
    ("Blood cultures grew MSSA; BMD T-score -2.9; not at MMI yet.", [], ["MSSA", "BMD", "MMI"]),
    ("PLAN: physiotherapy. NOT for surgery.", [], ["PLAN", "NOT"]),
    # an acronym before an identifier label is the number's issuer
    ("Registered at RVH no. 4471209.", ["RVH"], []),
])
def test_acronyms_are_known_only_as_clinical_ones(text, gone, kept):
    out = _scrub(text)
    assert not [w for w in gone if w in out], out
    assert all(w in out for w in kept), out


@pytest.mark.parametrize("text", [
    "Takes co-codamol 30/500 two tablets QDS.",
    "Brucella agglutination titre 1:1280 on admission.",
    "Prostate cancer, Gleason 7, treated with XRT.",
    "On adalimumab 40 mg q2wk.",
])
def test_a_value_after_its_clinical_name_stays(text):
    assert _scrub(text) == text


@pytest.mark.parametrize("text,number", [
    ("Billing: Acct 8831 at the front desk.", "8831"),
    ("Ring 555-0104 ext. 22 in the evening.", "22"),
])
def test_a_form_label_never_makes_its_number_a_clinical_value(text, number):
    assert number not in _scrub(text)


@pytest.mark.parametrize("text,gone,kept", [
    ("She teaches yoga at Lotus Garden Studio on weekdays.", ["Lotus", "Garden", "Studio"], ["yoga"]),
    ("Suspected Cauda Equina Syndrome, referred urgently.", [], ["Cauda Equina Syndrome"]),
    ("Frail (Clinical Frailty Scale 6) and on a walker.", [], ["Clinical Frailty Scale 6"]),
    ("He works as a porter at Meadow Farm Dairies.", ["Meadow", "Farm", "Dairies"], []),
])
def test_capitalised_words_mid_sentence_are_a_name(text, gone, kept):
    out = _scrub(text)
    assert not [w for w in gone if w in out], out
    assert all(w in out for w in kept), out


@pytest.mark.parametrize("text,language,gone", [
    ("Signed: Oberfeldarzt Dr. Jens Kiefer", "de", ["Oberfeldarzt", "Jens", "Kiefer"]),
    ("Dictated by Carla Ruiz, PA-C, for the team.", "en", ["Carla", "Ruiz", "PA-C"]),
    ('Her partner "Moose" drives her to clinic.', "en", ["Moose"]),
    ("Claim reference KSV-24-118832 for the insurer.", "en", ["KSV", "118832"]),
])
def test_what_belongs_to_a_removed_name_or_number_goes_with_it(text, language, gone):
    out = _scrub(text, language)
    assert not [w for w in gone if w in out], out


@pytest.mark.parametrize("text,language,gone", [
    ("Fell from the ladder last Thurs, pain since.", "en", ["Thurs"]),
    ("Douleurs depuis le réveillon de Noël.", "fr", ["réveillon", "Noël"]),
    ("Née le deux mars mille neuf cent soixante.", "fr", ["mars", "mille", "soixante"]),
])
def test_a_date_takes_the_words_written_with_it(text, language, gone):
    out = _scrub(text, language)
    assert not [w for w in gone if w in out], out
