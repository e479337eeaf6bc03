"""Issue 23: forms nobody foresaw, on sentences written here (not from either corpus half).

- an eponym of two words ("Pedro Pons sign", "Klippel Feil syndrome") is a clinical term for the scrubber and the
  guard; a name the node holds, or a word after a title or a person's preposition, before the sign is no part of it;
"""

from __future__ import annotations

import pytest

from gateway.privacy.identifiers import IdentifierSet
from gateway.referral.scrub import KnownIdentifiers, TextScrubber


def _scrubbed(text: str, name: str = "Doe^Jane", language: str = "en") -> str:
    return TextScrubber(KnownIdentifiers(names=(name,)), 0, language=language).scrub(text)


@pytest.mark.parametrize("name,term", [
    ("Doe^Jane", "Pedro Pons sign"),
    ("Doe^Jane", "Klippel Feil syndrome"),
    ("Feil^Jonas", "Klippel Feil syndrome"),
])
def test_an_eponym_of_two_words_is_kept_by_scrubber_and_guard(name, term):
    text = f"MRI: collection at L4 with a {term} at the anterosuperior corner. Seen with Ms {name.split('^')[1]}."
    out = _scrubbed(text, name)
    assert term in out, out
    assert name.split("^")[1] not in out.replace(term, ""), out
    assert IdentifierSet(patient_names=(name,)).kinds_found(out) == [], out


@pytest.mark.parametrize("name,text,gone", [
    ("Pedro^Luis", "MRI: Pedro Pons sign at L4.", "Pedro"),             # the node holds the first word
    ("Doe^Jane", "Mrs Hargreaves Babinski sign was negative.", "Hargreaves"),   # after a title
    ("Doe^Jane", "Seen by Hargreaves Babinski sign noted.", "Hargreaves"),    # after a person's preposition
])
def test_a_name_before_an_eponym_still_goes(name, text, gone):
    out = _scrubbed(text, name)
    assert gone not in out and "Babinski sign" in out or "Pons sign" in out, out
    assert gone not in out, out


def test_an_ordinary_word_before_an_eponym_is_judged_on_its_own():
    assert _scrubbed("Positive Babinski sign on the left.") == "Positive Babinski sign on the left."
