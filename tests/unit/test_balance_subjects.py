"""Balancing policies, the retry budget and subject matching, as pure functions."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from mesh.balance import Balancer, Policy, RetryBudget
from mesh.errors import InvalidArgument
from mesh.routing.table import ServiceInstance
from mesh.subjects import check_pattern, check_subject, matches, offer, parse_offer

INSTANCES = [ServiceInstance(node=n, weight=w) for n, w in (("a", 1), ("b", 2), ("c", 3))]


def picks(balancer: Balancer, n: int, now: float = 0.0) -> Counter[str]:
    return Counter(balancer.choose("svc", INSTANCES, now) or "" for _ in range(n))


def test_round_robin_is_exact() -> None:
    assert picks(Balancer(random.Random(1)), 300) == {"a": 100, "b": 100, "c": 100}


def test_smooth_weighted_round_robin_is_exact_per_window() -> None:
    balancer = Balancer(random.Random(1))
    balancer.set_policy("svc", Policy.WEIGHTED)
    window = [balancer.choose("svc", INSTANCES, 0.0) for _ in range(6)]
    assert Counter(window) == {"a": 1, "b": 2, "c": 3}
    assert window != sorted(window)  # interleaved, not in blocks


def test_an_ejected_instance_is_skipped_until_its_time_is_up() -> None:
    balancer = Balancer(random.Random(1))
    balancer.finished("svc", "b", now=0.0, latency_s=1.0, ok=False)
    assert "b" not in picks(balancer, 30, now=0.5)
    assert balancer.ejected("svc", 0.5) == ["b"]
    assert "b" in picks(balancer, 30, now=1.5)


def test_when_every_instance_is_ejected_all_are_tried_again() -> None:
    balancer = Balancer(random.Random(1))
    for node in "abc":
        balancer.finished("svc", node, now=0.0, latency_s=1.0, ok=False)
    assert set(picks(balancer, 30, now=0.1)) == {"a", "b", "c"}


def test_latency_policy_prefers_the_fast_instance() -> None:
    balancer = Balancer(random.Random(1))
    balancer.set_policy("svc", "latency")
    for node, latency in (("a", 0.001), ("b", 0.050), ("c", 0.050)):
        balancer.started("svc", node)
        balancer.finished("svc", node, now=0.0, latency_s=latency, ok=True)
    counts = picks(balancer, 300)
    assert counts["a"] > counts["b"] + counts["c"]


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="round-robin"):
        Balancer(random.Random(1)).set_policy("svc", "fastest")


def test_the_retry_budget_caps_retries_at_a_fraction_of_requests() -> None:
    budget = RetryBudget(ratio=0.2, min_tokens=0, cap=100)
    retries = 0
    for _ in range(1000):
        budget.deposit()
        if budget.withdraw():
            retries += 1
    assert 190 <= retries <= 200


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("orders.*.eu", "orders.42.eu", True),
        ("orders.*.eu", "orders.42.us", False),
        ("orders.*.eu", "orders.42.eu.x", False),
        ("orders.>", "orders.42", True),
        ("orders.>", "orders.42.eu", True),
        ("orders.>", "orders", False),
        ("*", "orders", True),
        ("*", "orders.42", False),
        (">", "a.b.c", True),
        ("a.b", "a.b", True),
        ("a.b", "a.c", False),
        ("a.*.c", "a.b.c", True),
    ],
)
def test_wildcard_matches(pattern: str, subject: str, expected: bool) -> None:
    assert matches(check_pattern(pattern), check_subject(subject)) is expected


@pytest.mark.parametrize("bad", ["", "a..b", "a.>.b", "a b", "a.*", ">"])
def test_bad_subjects_are_refused(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        check_subject(bad)


def test_queue_groups_round_trip_through_offers() -> None:
    assert parse_offer(offer("jobs.*", "workers")) == ("jobs.*", "workers")
    assert parse_offer(offer("jobs.*", None)) == ("jobs.*", None)
    with pytest.raises(InvalidArgument):
        offer("jobs.*", "two words")
