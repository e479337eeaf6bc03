"""``gateway.scp.rate.AssociationRate``: a second's worth at once, then the rate; only admitted requests count."""

from __future__ import annotations

from gateway.scp import rate as rate_module
from gateway.scp.rate import AssociationRate


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_of_one_seconds_worth_is_admitted_then_the_rate():
    clock = Clock()
    rate = AssociationRate(5, clock=clock)
    assert [rate.take(["host:a"]) for _ in range(6)] == [None] * 5 + ["host:a"]
    clock.now += 0.2  # one more token
    assert rate.take(["host:a"]) is None
    assert rate.take(["host:a"]) == "host:a"


def test_refused_requests_take_no_token_and_every_key_must_have_one():
    clock = Clock()
    rate = AssociationRate(2, clock=clock)
    assert rate.take(["host:a", "ae:X"]) is None
    assert rate.take(["host:b", "ae:X"]) is None
    assert rate.take(["host:c", "ae:X"]) == "ae:X"  # the AE title is over its rate, whatever the host
    assert rate.take(["host:c"]) is None, "host:c took no token when refused"
    assert rate.take(["host:c"]) is None
    for _ in range(100):  # hammering while refused never postpones the next admission
        assert rate.take(["host:a", "ae:X"]) is not None
    clock.now += 0.5
    assert rate.take(["host:a", "ae:X"]) is None


def test_peers_idle_for_a_second_are_forgotten_past_the_bound(monkeypatch):
    monkeypatch.setattr(rate_module, "MAX_PEERS", 10)
    clock = Clock()
    rate = AssociationRate(50, clock=clock)
    for n in range(11):
        rate.take([f"host:{n}"])
    assert rate.peers() <= 11
    clock.now += 1.0
    rate.take(["host:new"])
    assert rate.peers() == 1
