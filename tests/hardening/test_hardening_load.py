"""Load, correctness only (never timings): 8 associations at once from three sources, DCMTK storescu and
pynetdicom, 400 instances, while the gateway delivers to a storescp reviewer. Every acknowledged instance is
stored and delivered exactly once. ``bench/load.py`` runs the full-size version and reports the figures."""

from __future__ import annotations

import pytest

from hardening_flow import assert_exactly_once
from hardening_load import make_studies, run_load


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_eight_concurrent_associations_400_instances_each_delivered_once(tmp_path, database_url):
    studies = make_studies(tmp_path / "studies", associations=8, instances=400, rows=64)
    result = run_load(tmp_path / "run", studies, database_url, timeout=300)
    assert len(result.account.acknowledged) == 400, result.report()
    assert_exactly_once(result.account)
    assert result.account.resent == 0, result.report()
