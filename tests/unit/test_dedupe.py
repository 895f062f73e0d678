"""The bounded replay window."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.dedupe import DedupeWindow
from mesh.errors import Expired, Replayed


def mid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def test_a_replayed_id_is_reported_as_such() -> None:
    window = DedupeWindow()
    window.accept(mid(1), created_ms=1_000, now_ms=1_000)
    with pytest.raises(Replayed, match=mid(1).hex()):
        window.accept(mid(1), created_ms=1_000, now_ms=1_500)


def test_messages_older_than_the_horizon_are_refused() -> None:
    window = DedupeWindow(horizon_ms=1_000)
    with pytest.raises(Expired):
        window.accept(mid(1), created_ms=0, now_ms=5_000)


def test_the_window_forgets_ids_past_the_horizon() -> None:
    window = DedupeWindow(horizon_ms=1_000)
    window.accept(mid(1), created_ms=0, now_ms=0)
    window.expire(now_ms=2_000)
    assert len(window) == 0


def test_eviction_by_capacity_never_lets_a_replay_in() -> None:
    window = DedupeWindow(capacity=2, horizon_ms=10_000)
    for n in range(3):
        window.accept(mid(n), created_ms=100 + n, now_ms=200)
    assert len(window) == 2
    assert window.floor_ms == 100
    with pytest.raises(Expired):  # id 0 was evicted; its replay is refused as too old
        window.accept(mid(0), created_ms=100, now_ms=200)


@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 50)), max_size=80))
def test_no_id_is_ever_accepted_twice(events: list[tuple[int, int]]) -> None:
    # A replay carries the original, authenticated creation time.
    window = DedupeWindow(capacity=5, horizon_ms=30)
    accepted: set[int] = set()
    created: dict[int, int] = {}
    now = 0
    for n, age in events:
        now += 1
        created.setdefault(n, now - age)
        try:
            window.accept(mid(n), created_ms=created[n], now_ms=now)
        except (Replayed, Expired):
            continue
        assert n not in accepted
        accepted.add(n)
    assert len(window) <= 5


def test_a_restored_window_keeps_its_floor() -> None:
    window = DedupeWindow(capacity=10, horizon_ms=10_000)
    window.restore([(mid(5), 500)], floor_ms=400)
    with pytest.raises(Replayed):
        window.accept(mid(5), created_ms=500, now_ms=600)
    with pytest.raises(Expired):  # evicted before the restart: refused, not redelivered
        window.accept(mid(1), created_ms=300, now_ms=600)
    window.accept(mid(2), created_ms=550, now_ms=600)
