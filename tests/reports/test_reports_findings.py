"""The findings file of ``report create``: examples, one-line errors, and any input parses or fails cleanly."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.reports.errors import FindingsError
from gateway.reports.findings import load_findings, parse_findings

GOOD = """
title: mri-spine
observer: "Reviewer^Ann"
clinical_information: Low back pain.
findings:
  - text: L4-L5 left paracentral extrusion.
    images: [3, "2.25.123456789"]
  - text: No fracture.
impressions: L4-L5 extrusion.
recommendations: [Surgical opinion.]
"""


def test_reports_findings_example_parses():
    document = parse_findings(GOOD)
    assert document.findings[0].images == [3, "2.25.123456789"]
    assert document.impressions == ["L4-L5 extrusion."] and document.recommendations == ["Surgical opinion."]
    assert parse_findings(json.dumps({"findings": [{"text": "x"}], "impressions": ["y"]})).title is None


@pytest.mark.parametrize(("text", "message"), [
    ("findings: [{text: x}]", "impressions"),
    ("impressions: [y]", "findings"),
    ("findings: []\nimpressions: [y]", "findings"),
    ("findings: [{text: x, images: [0]}]\nimpressions: [y]", "findings.0.images"),
    ("findings: [{text: x, images: ['1.02.3']}]\nimpressions: [y]", "findings.0.images"),
    ("findings: [{text: x}]\nimpressions: [y]\ncolour: red", "colour: unknown key"),
    ("findings: [{text: x}]\nimpressions: [y]\ntitle: chest", "title"),
    ("- a list", "top level"),
    ("findings: [", "not valid YAML"),
])
def test_reports_findings_errors_are_one_line(text, message):
    with pytest.raises(FindingsError, match=message) as error:
        parse_findings(text, "f.yaml")
    assert "\n" not in str(error.value) and str(error.value).startswith("f.yaml: ")


def test_reports_findings_unreadable_file(tmp_path):
    with pytest.raises(FindingsError, match="cannot read"):
        load_findings(tmp_path / "missing.yaml")


@pytest.mark.slow  # hypothesis, many examples: 2 s
@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                              lambda inner: st.lists(inner, max_size=4)
                              | st.dictionaries(st.sampled_from(["findings", "impressions", "text", "images",
                                                                 "title", "x"]), inner, max_size=4),
                              max_leaves=12).map(json.dumps)))
def test_reports_findings_any_input_parses_or_raises_findings_error(text):
    try:
        parse_findings(text)
    except FindingsError as error:
        assert "\n" not in str(error)
