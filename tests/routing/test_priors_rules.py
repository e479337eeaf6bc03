"""The priors rules and the relative dates the notes print (no peer: the PACS's answers are given)."""

from __future__ import annotations

import pytest

from gateway.config import PriorsConfig
from gateway.dicom.qr import FoundSeries, FoundStudy
from gateway.routing.priors import choose, relative_interval

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
