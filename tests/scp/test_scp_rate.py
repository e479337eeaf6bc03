"""``gateway.scp.rate.AssociationRate``: a second's worth at once, then the rate; only admitted requests count;
kept in memory for one process, or in the node's association file for all the processes on its port."""

from __future__ import annotations

import os

import pytest

from gateway.scp import rate as rate_module
from gateway.scp import slots as slots_module
from gateway.scp.rate import AssociationRate
from gateway.scp.slots import AssociationSlots


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
    assert len(rate.buckets) <= 11
    clock.now += 1.0
    rate.take(["host:new"])
    assert len(rate.buckets) == 1


@pytest.fixture
def two_processes():
    """The node's association file as the node and one receiving process open it (two open files)."""
    node = AssociationSlots.create(2, 8)
    receiver = AssociationSlots.inherited(os.dup(node.fileno()), 2, 1, 8)
    yield node, receiver
    receiver.close()
    node.close()


def test_processes_on_one_port_spend_one_rate(two_processes):
    node, receiver = two_processes
    clock = Clock()
    in_node = AssociationRate(4, clock=clock, buckets=node.rate_buckets())
    in_receiver = AssociationRate(4, clock=clock, buckets=receiver.rate_buckets())
    taken = [(in_node if n % 2 else in_receiver).take(["host:a", "ae:X"]) for n in range(6)]
    assert taken == [None] * 4 + ["host:a"] * 2, "a second's worth for the node, not for each process"
    assert in_node.take(["host:b"]) is None, "another peer keeps its own rate"
    clock.now += 0.5
    assert in_receiver.take(["host:a", "ae:X"]) is None and in_node.take(["host:a", "ae:X"]) is None
    assert in_node.take(["host:a", "ae:X"]) == "host:a"


def test_a_full_window_gives_way_to_a_new_peer_and_refilled_buckets_first(two_processes, monkeypatch):
    monkeypatch.setattr(slots_module, "RATE_BUCKETS", 4)
    monkeypatch.setattr(slots_module, "RATE_PROBES", 4)  # one window: every key meets every other
    node, _ = two_processes
    clock = Clock()
    rate = AssociationRate(2, clock=clock, buckets=node.rate_buckets())
    for peer in "abcd":
        assert rate.take([f"host:{peer}"]) is None
        assert rate.take([f"host:{peer}"]) is None
    assert rate.take(["host:a"]) == "host:a", "a peer kept while the window has room"
    clock.now += 0.1
    assert rate.take(["host:e"]) is None, "a new peer gets a place: the one counted longest ago gives way"
    clock.now += 1.0  # every bucket refilled
    for _ in range(2):
        assert rate.take(["host:f"]) is None
    assert rate.take(["host:f"]) == "host:f"
