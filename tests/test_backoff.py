"""The one back-off (gateway/backoff.py): exact waits, the ceiling, the jitter's range."""

from __future__ import annotations

import random

import pytest

from gateway.backoff import Backoff


def test_waits_double_from_the_first_up_to_the_ceiling():
    backoff = Backoff(initial_s=0.5, max_s=30.0)
    assert [backoff.wait_s(n) for n in range(1, 10)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_attempts_below_one_wait_like_the_first_and_huge_attempts_stay_at_the_ceiling():
    backoff = Backoff(initial_s=1.0, max_s=30.0)
    assert backoff.wait_s(0) == backoff.wait_s(-3) == 1.0
    assert backoff.wait_s(10_000) == 30.0


def test_a_ceiling_below_the_first_wait_caps_every_wait():
    assert [Backoff(initial_s=600, max_s=60).wait_s(n) for n in (1, 2, 5)] == [60, 60, 60]


def test_jitter_draws_from_the_upper_half_of_each_nominal_wait():
    backoff, rng = Backoff(initial_s=5.0, max_s=600.0, jitter=True), random.Random(24)
    for attempt in range(1, 15):
        ceiling = min(600.0, 5.0 * 2 ** (attempt - 1))
        draws = [backoff.wait_s(attempt, rng) for _ in range(200)]
        assert all(ceiling / 2 <= wait <= ceiling for wait in draws), attempt
        assert max(draws) - min(draws) > ceiling / 4, f"attempt {attempt}: the draws barely spread"


def test_jitter_is_reproducible_with_a_seeded_generator():
    backoff = Backoff(initial_s=10.0, max_s=600.0, jitter=True)
    assert backoff.wait_s(3, random.Random(7)) == backoff.wait_s(3, random.Random(7)) != backoff.wait_s(3)


@pytest.mark.parametrize(("initial_s", "max_s"), [(0, 10), (-1, 10), (1, 0)])
def test_waits_that_are_not_positive_are_refused(initial_s, max_s):
    with pytest.raises(ValueError, match="positive"):
        Backoff(initial_s=initial_s, max_s=max_s)
