"""The priors rules and the relative dates the notes print (no peer: the PACS's answers are given)."""

from __future__ import annotations

import pytest

from gateway.config import PriorsConfig
from gateway.dicom.qr import FoundSeries, FoundStudy
from gateway.routing import priors as priors_lib
from gateway.routing.priors import choose, relative_interval
from gateway.storage.models import CaseState, PriorFetch, PriorFetchState, PriorStudy, Study, utcnow
from routing_db import db, make_case  # noqa: F401 - the fixture

CURRENT = "1.2.3.100"
STUDIES = [
    FoundStudy(CURRENT, "20261120", ("MR",), "MR LSPINE"),                    # the case itself
    FoundStudy("1.2.3.1", "20240815", ("MR",), "MR LUMBAR SPINE"),            # spine MR, 2 y 3 m before
    FoundStudy("1.2.3.2", "20250120", ("CT",), ""),                           # spine CT (by its series)
    FoundStudy("1.2.3.3", "20251001", ("CT",), "CT HEAD"),                    # not spine
    FoundStudy("1.2.3.4", "20080101", ("MR",), "MR LSPINE"),                  # too old
    FoundStudy("1.2.3.5", "20261201", ("MR",), "MR LSPINE"),                  # after the case: not a prior
    FoundStudy("1.2.3.6", "20230101", ("US",), "US LSPINE"),                  # a modality not asked for
]
SERIES = {
    "1.2.3.1": [FoundSeries("MR", "LSPINE"), FoundSeries("SR", "")],
    "1.2.3.2": [FoundSeries("CT", "LSPINE")],
    "1.2.3.3": [FoundSeries("CT", "HEAD")],
    "1.2.3.4": [FoundSeries("MR", "LSPINE")],
    "1.2.3.5": [FoundSeries("MR", "LSPINE")],
    "1.2.3.6": [FoundSeries("US", "LSPINE")],
}


def _choose(rules: PriorsConfig, asked: list[str] | None = None) -> list[str]:
    asked = [] if asked is None else asked

    def series_of(uid: str) -> list[FoundSeries]:
        asked.append(uid)
        return SERIES[uid]

    chosen = choose(STUDIES, current_uid=CURRENT, current_date="20261120", rules=rules, series_of=series_of)
    return [prior.study_uid for prior in chosen]


def test_the_rules_keep_the_spine_priors_newest_first():
    asked: list[str] = []
    assert _choose(PriorsConfig(), asked) == ["1.2.3.2", "1.2.3.1"]
    assert not {CURRENT, "1.2.3.4", "1.2.3.5", "1.2.3.6"} & set(asked), \
        "no series query for the case, a study too old, after it or of another modality"


def test_max_priors_and_max_years_bound_the_choice():
    assert _choose(PriorsConfig(max_priors=1)) == ["1.2.3.2"]
    assert _choose(PriorsConfig(max_years=2.0)) == ["1.2.3.2"]
    assert _choose(PriorsConfig(max_priors=0)) == []
    assert _choose(PriorsConfig(max_years=30.0)) == ["1.2.3.2", "1.2.3.1", "1.2.3.4"]


def test_modalities_and_body_parts_are_configurable():
    assert _choose(PriorsConfig(modalities=["MR"])) == ["1.2.3.1"]
    assert _choose(PriorsConfig(body_parts=["HEAD"])) == ["1.2.3.3"]


def test_a_study_without_body_parts_in_its_series_is_judged_by_its_description():
    found = [FoundStudy("1.2.3.7", "20250101", (), "MR LSPINE WITHOUT CONTRAST"),
             FoundStudy("1.2.3.8", "20250102", (), "MR BRAIN")]
    chosen = choose(found, current_uid=CURRENT, current_date="20261120", rules=PriorsConfig(),
                    series_of=lambda uid: [FoundSeries("MR", "")])
    assert [prior.study_uid for prior in chosen] == ["1.2.3.7"]
    assert chosen[0].modalities == "MR"


@pytest.mark.parametrize(("prior", "current", "said"), [
    ("20240815", "20261120", "2 years 3 months before"),
    ("20250120", "20261120", "1 year 10 months before"),
    ("20251120", "20261120", "1 year before"),
    ("20261020", "20261120", "1 month before"),
    ("20261021", "20261120", "30 days before"),
    ("20261119", "20261120", "1 day before"),
    ("20261120", "20261120", "the same day"),
    ("", "20261120", "date unknown"),
])
def test_relative_interval(prior, current, said):
    assert relative_interval(prior, current) == said


# --- the case's fetch in the database: what the notes wait for and what they say ---



def _waiting(sources: list[str]) -> set[int]:
    return {s.id for s in Study.select().where(priors_lib.notes_wait_for_priors(sources))}


def test_the_notes_wait_until_the_priors_are_done_or_given_up(db):  # noqa: F811 - the fixture
    case = make_case(CaseState.DEIDENTIFIED)
    assert _waiting(["st-marys"]) == {case.id}, "not begun: the priors stage has not looked yet"
    assert _waiting(["other-source"]) == set(), "a source without a PACS: nothing to wait for"
    assert [s.id for s in priors_lib.due_to_begin(["st-marys"])] == [case.id]
    fetch = priors_lib.begin(case, "st-marys", 60)
    assert fetch is not None and priors_lib.begin(case, "st-marys", 60) is None, "one fetch per case"
    assert priors_lib.due_to_begin(["st-marys"]) == []
    for state in (PriorFetchState.RETRIEVING, PriorFetchState.DEIDENTIFYING):
        assert priors_lib.set_state(fetch, state)
        assert _waiting(["st-marys"]) == {case.id}
    assert priors_lib.set_state(fetch, PriorFetchState.DONE)
    assert _waiting(["st-marys"]) == set()
    assert PriorFetch.get_by_id(fetch.id).finished_at is not None


def test_the_notes_say_which_priors_came_and_which_did_not(db):  # noqa: F811 - the fixture
    case = make_case(CaseState.DEIDENTIFIED)
    assert priors_lib.notes_summary(case, "20261120") is None, "no fetch: nothing to say"
    fetch = priors_lib.begin(case, "st-marys", 60)
    priors_lib.record_choice(fetch, [])
    assert fetch.state == PriorFetchState.DONE
    assert priors_lib.notes_summary(case, "20261120") == priors_lib.NONE_FOUND_NOTE + "."

    other = make_case(CaseState.DEIDENTIFIED)
    fetch = priors_lib.begin(other, "st-marys", 60)
    priors_lib.record_choice(fetch, [priors_lib.ChosenPrior("1.2.3.1", "20240815", "MR", "LSPINE"),
                                     priors_lib.ChosenPrior("1.2.3.2", "20260120", "CT", "LSPINE")])
    PriorStudy.update(state="retrieved", instances=3, retrieved_at=utcnow()).where(
        PriorStudy.study_uid == "1.2.3.1").execute()
    priors_lib.set_state(fetch, PriorFetchState.UNAVAILABLE, reason="no association")
    text = priors_lib.notes_summary(other, "20261120")
    assert text == ("Prior 1: MR LSPINE, 2 years 3 months before this study (3 instances)\n"
                    + priors_lib.UNAVAILABLE_NOTE + " (some of them).")
    assert "2024" not in text and "1.2.3" not in text
