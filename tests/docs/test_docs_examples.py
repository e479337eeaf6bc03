"""The examples in the docs work with the shipped configuration (config/gateway.yaml): the referral example is
valid, names a configured source and is routable to a shipped reviewer; every YAML configuration fragment of
docs/operations.md, laid over the shipped file, is a valid configuration."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest
import yaml

from gateway.config import load_config
from gateway.referral.document import parse_referral
from gateway.routing.assignment import CaseNeeds, ReviewerPool, unsatisfiable_rules

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "config" / "gateway.yaml"


def blocks(doc: str, language: str) -> list[str]:
    text = (ROOT / "docs" / doc).read_text()
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def referral_examples() -> list[str]:
    return [block for block in blocks("referrals.md", "json") if '"clinical"' in block]


def test_the_docs_hold_a_referral_example():
    assert referral_examples()


@pytest.mark.parametrize("example", referral_examples())
def test_the_referral_example_is_routed_by_the_shipped_configuration(example):
    config = load_config(SHIPPED, environ={})
    referral = parse_referral(example)
    assert referral.source in {source.name for source in config.sources}
    needs = CaseNeeds(frozenset({"MR"}), referral.subspecialty, referral.urgency.value == "urgent")
    pool = ReviewerPool(config.reviewers)
    now = dt.datetime(2026, 12, 7, 12, 0)
    choice = pool.choose(needs, now, {}, {}, set())
    assert choice is not None, pool.why_none(needs, now, {}, set())


def test_a_subspecialty_no_reviewer_lists_is_named_as_the_reason():
    """The hold the docs' old example ran into, in the words every surface shows."""
    config = load_config(SHIPPED, environ={})
    referral = json.loads(referral_examples()[0])
    referral["subspecialty"] = "spine"
    parsed = parse_referral(json.dumps(referral))
    needs = CaseNeeds(frozenset({"MR"}), parsed.subspecialty, False)
    pool = ReviewerPool(config.reviewers)
    now = dt.datetime(2026, 12, 7, 12, 0)
    assert pool.choose(needs, now, {}, {}, set()) is None
    assert pool.why_none(needs, now, {}, set()) == \
        "no reviewer with subspecialty spine is configured: 0 of 1 reviewers match"
    assert any("subspecialty" in warning for warning in unsatisfiable_rules(config.reviewers))


def _merge(base: dict, overlay: dict) -> dict:
    merged = dict(base)
    for key, value in overlay.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) \
            else value
    return merged


@pytest.mark.parametrize("fragment", [b for b in blocks("operations.md", "yaml")])
def test_every_configuration_fragment_of_the_operations_guide_is_valid(fragment, tmp_path):
    merged = _merge(yaml.safe_load(SHIPPED.read_text()), yaml.safe_load(fragment))
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(merged))
    load_config(path, environ={})


def test_the_findings_file_example_of_docs_reports_is_valid():
    from gateway.reports.findings import parse_findings

    (example,) = blocks("reports.md", "yaml")
    document = parse_findings(example)
    assert document.observer == "Reviewer^Ann" and len(document.findings) == 2 and document.findings[0].images == [1]


def test_the_findings_file_keys_are_all_documented():
    from gateway.reports.findings import Finding, FindingsDocument

    table = (ROOT / "docs" / "reports.md").read_text()
    keys = [*FindingsDocument.model_fields, *(f"findings[].{name}" for name in Finding.model_fields)]
    missing = [key for key in keys if f"| `{key}` |" not in table and key != "findings"]
    assert not missing, missing
