"""Link costs: static, or smoothed from RTT with hysteresis."""

from __future__ import annotations

import pytest

from mesh.errors import InvalidArgument
from mesh.linkcost import CostPolicy, LinkCost


def test_static_costs_never_move() -> None:
    cost = LinkCost(7, CostPolicy())
    assert not cost.sample(50_000, now=0.0)
    assert cost.cost == 7
    assert cost.srtt_us == 50_000  # still measured, for operators


def test_the_first_rtt_sample_sets_the_cost() -> None:
    cost = LinkCost(1, CostPolicy(rtt_derived=True))
    assert cost.sample(2_050, now=0.0)
    assert cost.cost == 21  # ceil(2050 us / 100 us)


def test_jitter_inside_the_band_does_not_move_the_cost() -> None:
    cost = LinkCost(1, CostPolicy(rtt_derived=True, hold_s=0.0))
    cost.sample(10_000, now=0.0)
    changes = [cost.sample(10_000 + (1_500 if n % 2 else -1_500), now=n) for n in range(1, 50)]
    assert not any(changes)
    assert cost.cost == 100


def test_a_lasting_change_moves_the_cost_after_the_hold_time() -> None:
    cost = LinkCost(1, CostPolicy(rtt_derived=True, hold_s=5.0))
    cost.sample(10_000, now=0.0)
    moved_at = None
    for step in range(1, 200):
        if cost.sample(40_000, now=step * 0.1):
            moved_at = step * 0.1
            break
    assert moved_at is not None and moved_at >= 5.0
    assert cost.cost > 200


def test_costs_are_clamped() -> None:
    cost = LinkCost(1, CostPolicy(rtt_derived=True, max_cost=50))
    cost.sample(1e9, now=0.0)
    assert cost.cost == 50
    low = LinkCost(1, CostPolicy(rtt_derived=True, min_cost=3))
    low.sample(1, now=0.0)
    assert low.cost == 3


def test_negative_samples_are_ignored() -> None:
    cost = LinkCost(4, CostPolicy(rtt_derived=True))
    assert not cost.sample(-5, now=0.0)
    assert cost.srtt_us is None


def test_bad_policies_and_costs_are_refused() -> None:
    with pytest.raises(InvalidArgument):
        CostPolicy(gain=0)
    with pytest.raises(InvalidArgument):
        CostPolicy(min_cost=5, max_cost=4)
    with pytest.raises(InvalidArgument):
        LinkCost(0, CostPolicy())
