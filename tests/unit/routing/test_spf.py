"""SPF with equal-cost next-hop sets, checked against networkx as the oracle."""

from __future__ import annotations

import itertools
import random

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.routing.spf import HAVE_SCIPY, Topology, dijkstra_ecmp, make_route
from mesh.routing.table import Route

from .driver import expected_table, normalise


def random_connected(n: int, degree: float, max_cost: int, seed: int) -> nx.Graph:
    """A connected random graph with integer ``cost`` edges (str node ids)."""
    rng = random.Random(seed)
    g = nx.gnm_random_graph(n, int(n * degree / 2), seed=seed)
    comps = [sorted(c) for c in nx.connected_components(g)]
    for a, b in itertools.pairwise(comps):
        g.add_edge(a[0], b[0])
    for u, v in g.edges:
        g.edges[u, v]["cost"] = rng.randint(1, max_cost)
    return normalise(g)


def topology_of(g: nx.Graph) -> Topology:
    t = Topology()
    for u in sorted(g.nodes):
        t.set_links(u, {v: g.edges[u, v]["cost"] for v in g[u]})
    return t


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("max_cost", [1, 3, 50])
def test_spf_matches_networkx_on_random_graphs(seed: int, max_cost: int) -> None:
    g = random_connected(60, 4, max_cost, seed)
    t = topology_of(g)
    adjacency = t.adjacency()
    for s in sorted(g.nodes)[:8]:
        want = expected_table(g, s)
        assert dijkstra_ecmp(adjacency, s).to_table() == want
        assert t.shortest_paths(s).to_table() == want
        assert t.routing_table(s) == want


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 25),
    extra=st.integers(0, 40),
    max_cost=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_spf_matches_networkx_hypothesis(n: int, extra: int, max_cost: int, seed: int) -> None:
    rng = random.Random(seed)
    g = nx.gnm_random_graph(n, min(extra, n * (n - 1) // 2), seed=seed)  # may be disconnected
    for u, v in g.edges:
        g.edges[u, v]["cost"] = rng.randint(1, max_cost)
    g = normalise(g)
    t = topology_of(g)
    for s in g.nodes:
        want = expected_table(g, s)
        assert t.routing_table(s) == want
        assert dijkstra_ecmp(t.adjacency(), s).to_table() == want


def test_spf_ecmp_diamond_keeps_both_first_hops() -> None:
    g = nx.Graph()
    g.add_edge("s", "a", cost=1)
    g.add_edge("s", "b", cost=1)
    g.add_edge("a", "d", cost=1)
    g.add_edge("b", "d", cost=1)
    g.add_edge("d", "e", cost=5)
    table = topology_of(g).routing_table("s")
    assert table["d"].next_hops == {"a", "b"}
    assert table["e"] == Route(destination="e", cost=7, next_hops=frozenset({"a", "b"}))
    assert table["s"] == Route(destination="s", cost=0, next_hops=frozenset())


def test_spf_neighbour_reached_also_through_another_neighbour() -> None:
    # s-b direct (2) ties with s-a-b (1+1): b has next hops {a, b}.
    t = Topology()
    t.set_links("s", {"a": 1, "b": 2})
    t.set_links("a", {"s": 1, "b": 1})
    t.set_links("b", {"s": 2, "a": 1})
    assert t.routing_table("s")["b"].next_hops == {"a", "b"}
    assert dijkstra_ecmp(t.adjacency(), "s").next_hops["b"] == {"a", "b"}


def test_two_way_check_ignores_links_reported_by_one_end() -> None:
    t = Topology()
    t.set_links("s", {"a": 1})
    t.set_links("a", {"s": 1, "x": 1})  # x never reports a: no usable edge a-x
    t.set_links("x", {})
    table = t.routing_table("s")
    assert set(table) == {"s", "a"}
    t.set_links("x", {"a": 1})
    assert t.routing_table("s")["x"].cost == 2
    t.set_links("a", {"s": 1})  # a withdraws the link: x unreachable again
    assert "x" not in t.routing_table("s")


def test_spf_uses_each_direction_cost_as_reported_by_its_tail() -> None:
    t = Topology()
    t.set_links("s", {"a": 5})
    t.set_links("a", {"s": 1})
    assert t.routing_table("s")["a"].cost == 5
    assert t.routing_table("a")["s"].cost == 1


def test_unknown_source_has_only_itself() -> None:
    t = Topology()
    table = t.routing_table("nobody")
    assert dict(table) == {"nobody": Route(destination="nobody", cost=0, next_hops=frozenset())}


@pytest.mark.parametrize("seed", range(4))
def test_topology_incremental_changes_match_a_fresh_build(seed: int) -> None:
    rng = random.Random(seed)
    g = random_connected(40, 4, 9, seed)
    t = topology_of(g)
    for _ in range(60):
        op = rng.random()
        nodes = sorted(g.nodes)
        if op < 0.3 and g.number_of_edges() > 1:
            u, v = rng.choice(sorted(g.edges))
            g.remove_edge(u, v)
        elif op < 0.6:
            u, v = rng.sample(nodes, 2)
            g.add_edge(u, v, cost=rng.randint(1, 9))
        elif op < 0.8 and len(nodes) > 3:
            u = rng.choice(nodes)
            g.remove_node(u)
            t.remove(u)
            continue
        else:
            u = str(1000 + rng.randint(0, 50))
            if u in g:
                continue
            g.add_node(u)
            for v in rng.sample(nodes, 2):
                g.add_edge(u, v, cost=rng.randint(1, 9))
        for x in {u, v} if op < 0.6 else {u, *g[u]}:
            t.set_links(x, {y: g.edges[x, y]["cost"] for y in g[x]})
        s = rng.choice(sorted(g.nodes))
        assert t.routing_table(s) == expected_table(g, s)


def test_make_route_equals_the_dataclass_constructor() -> None:
    hops = frozenset({"a", "b"})
    made = make_route("d", 3, hops)
    plain = Route(destination="d", cost=3, next_hops=hops)
    assert made == plain
    assert hash(made) == hash(plain)
    with pytest.raises(AttributeError):
        made.cost = 4  # type: ignore[misc]


def test_scipy_is_available_in_the_dev_environment() -> None:
    # The fast path is what the benchmark measures; without scipy the
    # pure-Python fallback (tested above) is used.
    assert HAVE_SCIPY
