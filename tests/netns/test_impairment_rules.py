"""The commands a lab's impairments turn into, checked without root or a kernel.

These run everywhere (the rest of tests/netns needs root): the nft script
that replaces a namespace's loss rules in one transaction, and the qdisc a
link's rate cap (tbf) or all its impairments (netem) become.
"""

from __future__ import annotations

from pathlib import Path

from nodes import lab
from nodes.config import Topology

TOPOLOGY = Topology.model_validate(
    {
        "mesh": "rules",
        "nodes": {"a": {}, "b": {}, "c": {}},
        "links": [
            {"a": "a", "b": "b", "loss": 0.3},
            {"a": "b", "b": "c", "rate_mbit": 1, "delay_ms": 5},
        ],
    }
)


def _state(tmp_path: Path, *, netem: bool) -> lab.LabState:
    state = lab.plan(TOPOLOGY, tmp_path / "t.yaml", tmp_path / "lab")
    state.methods = (
        {"delay": "netem", "loss": "netem", "rate": "netem"}
        if netem
        else {"delay": "relay", "loss": "nftables", "rate": "tbf"}
    )
    return state


def test_loss_rules_replace_the_table_atomically_and_count_drops(tmp_path: Path) -> None:
    state = _state(tmp_path, netem=False)
    ab = state.links[0]
    script = lab._loss_script(state, state.nodes["b"].namespace)
    lines = script.splitlines()
    # One transaction: make sure the table exists, delete it, write it anew.
    assert lines[:2] == ["table inet mwlab {}", "delete table inet mwlab"]
    assert f"counter drop_{ab.veth_b} {{}}" in script
    assert (
        f'iifname "{ab.veth_b}" numgen random mod 10000 < 3000 counter name "drop_{ab.veth_b}" drop'
    ) in script
    assert ab.veth_a not in script  # a's end drops in a's namespace
    # A namespace with no lossy link only clears the table.
    ab.loss = 0.0
    assert lab._loss_script(state, state.nodes["b"].namespace).splitlines() == lines[:2]


def test_a_rate_cap_is_tbf_without_netem_and_part_of_netem_with_it(tmp_path: Path) -> None:
    state = _state(tmp_path, netem=False)
    ab, bc = state.links
    assert lab._qdisc_args(state, ab) == []  # loss is nftables' business
    assert lab._qdisc_args(state, bc)[:3] == ["tbf", "rate", "1.0mbit"]
    bc.rate_mbit = None
    assert lab._qdisc_args(state, bc) == []  # the delay is the relay's
    netem = _state(tmp_path, netem=True)
    ab, bc = netem.links
    assert lab._qdisc_args(netem, ab) == ["netem", "loss", "30.000%"]
    assert lab._qdisc_args(netem, bc) == ["netem", "delay", "5.0ms", "rate", "1.0mbit"]


def test_counters_since_an_earlier_reading() -> None:
    earlier = lab.LinkCounters(
        a="a",
        b="b",
        bytes_ab=100,
        packets_ab=2,
        dropped_ab=5,
        bytes_ba=50,
        packets_ba=1,
        dropped_ba=0,
    )
    later = lab.LinkCounters(
        a="a",
        b="b",
        bytes_ab=400,
        packets_ab=6,
        dropped_ab=7,
        bytes_ba=80,
        packets_ba=3,
        dropped_ba=2,
    )
    delta = later.since(earlier)
    assert (delta.bytes_ab, delta.packets_ab, delta.dropped_ab) == (300, 4, 2)
    assert (delta.bytes_ba, delta.packets_ba, delta.dropped_ba) == (30, 2, 2)
    # The loss rule was replaced in between: its counter restarted from zero.
    reset = lab.LinkCounters(
        a="a",
        b="b",
        bytes_ab=500,
        packets_ab=7,
        dropped_ab=1,
        bytes_ba=90,
        packets_ba=4,
        dropped_ba=2,
    )
    assert reset.since(later).dropped_ab == 1
