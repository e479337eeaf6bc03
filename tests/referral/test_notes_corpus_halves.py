"""The scrubber and the guard on the hand-written corpus halves (tests/referral/corpus/): development and
held-out, the held-out half written by people who had not read the scrubber and never tuned on.

Issue 23's targets are not all met yet (see docs/privacy.md for the figures of the day): these tests hold the
figures measured when the allowlist landed as floors, so that a change that loses ground fails, and print both
halves' reports. Raise the floors as the scrubber improves; never lower them to let a change through.
"""

from __future__ import annotations

import pytest

from corpus_eval import score
from corpus_files import load
from notes_eval import report

pytestmark = pytest.mark.slow  # scores each corpus half: a minute or more of scrubbing

#: (category, known) -> the lowest recall accepted, held-out half: measured 7 December 2026 (bench/notes_privacy.py
#: --halves, after the allowlist's general rules of issue 23 were tuned on the development half), less about one
#: point. Not told: names 96.7, places 92.1, organisations 91.5, dates 93.6, IDs 92.7, phones 95.7 % (measured
#: before the fix that keeps form labels out of the clinical words: 'Tel', 'Ext', 'Acct' had made the number after
#: them a clinical value; the floor stays at 99 %, run this test to see it hold); clinical terms kept 95.4 %.
#: Raised after the eponym, name-form, script and acronym rules of session 34 (measured the same way): told names
#: 98.1 %, organisations not told 92.1 %, dates not told 94.2 %, clinical terms kept 95.7 %.
#: Raised after the two-word eponym, holiday, particle, organisation-head and clinical-form rules of session 35:
#: places not told 93.4 %, organisations not told 92.5 %, dates not told 94.8 %, clinical terms kept 96.4 %.
HELDOUT_FLOORS = {
    ("name", True): 0.97, ("name", False): 0.95, ("place", True): 0.97, ("place", False): 0.93,
    ("org", False): 0.92, ("date", True): 0.98, ("date", False): 0.94, ("id", True): 0.99, ("id", False): 0.91,
    ("phone", True): 0.99, ("phone", False): 0.99,
}
KEEP_FLOOR = 0.96
WRONGFUL_QUARANTINE_CEILING = 0.01


@pytest.fixture(scope="module", params=["dev", "heldout"])
def half(request):
    items = load(request.param)
    result, guard = score(items)
    print(report(request.param, result))
    print(f"  cases quarantined by the guard {len(guard.quarantined)} of {guard.cases}, "
          f"wrongly {len(guard.wrongful())}")
    return request.param, items, result, guard


def test_the_halves_are_large_and_varied(half):
    name, items, _, _ = half
    assert len(items) >= 150
    styles = {item.style for item in items}
    assert {"uk", "us", "de", "fr", "nordic"} <= styles | ({"uk", "us"} if name == "dev" else set())
    assert {item.language for item in items} >= {"en", "de", "fr"}


def test_heldout_recall_holds_its_floor(half):
    name, _, result, _ = half
    if name != "heldout":
        pytest.skip("floors are held on the held-out half")
    below = {key: result.recall(*key) for key, floor in HELDOUT_FLOORS.items()
             if (result.recall(*key) or 0) < floor}
    assert below == {}, report(name, result)
    assert result.keep_rate() >= KEEP_FLOOR, result.destroyed[:40]


def test_few_cases_are_quarantined_for_what_is_no_identifier(half):
    _, items, _, guard = half
    assert len(guard.wrongful()) <= WRONGFUL_QUARANTINE_CEILING * len(items), guard.wrongful()
