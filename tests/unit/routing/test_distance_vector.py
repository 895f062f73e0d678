"""Unit tests of the distance-vector engine: single-engine behaviour and whole meshes.

Meshes run on the shared in-memory driver (``driver.py``) and are compared with
its networkx ground truth, so a pass means every node has the exact cost and
the exact set of equal-cost next hops. Loop-freedom is checked not only once a
mesh is quiet but after every single event while it re-converges, through an
engine subclass that inspects the forwarding graph after each call.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import networkx as nx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.errors import InvalidArgument, Malformed, RemoteError
from mesh.routing.base import Outgoing, RoutingEngine
from mesh.routing.distance_vector import DistanceVectorConfig, DistanceVectorEngine
from mesh.routing.errors import (
    InvalidCost,
    NotANeighbour,
    OversizedUpdate,
    StaleUpdate,
    UnexpectedFrame,
)
from mesh.routing.table import RoutingTable, ServiceInstance
from mesh.v1 import peer_pb2

from .driver import Driver, RunStats

INF = DistanceVectorConfig().infinity
IDLE = 1.0  # longer than any triggered-update damping, so "quiet" means converged


# --- helpers -----------------------------------------------------------------------


def with_costs(graph: nx.Graph, seed: int, low: int = 1, high: int = 10) -> nx.Graph:
    """``graph`` with a random integer ``cost`` on every edge."""
    rng = random.Random(seed)
    for u, v in sorted(graph.edges):
        graph.edges[u, v]["cost"] = rng.randint(low, high)
    return graph


def random_connected(n: int, extra: int, seed: int) -> nx.Graph:
    """A random spanning tree on ``n`` nodes plus ``extra`` random chords."""
    rng = random.Random(seed)
    g = nx.Graph()
    g.add_node(0)
    for i in range(1, n):
        g.add_edge(i, rng.randrange(i))
    while extra > 0:
        u, v = rng.sample(range(n), 2)
        if not g.has_edge(u, v):
            g.add_edge(u, v)
            extra -= 1
    return g


def absent_links(graph: nx.Graph) -> list[tuple[str, str]]:
    """Node pairs without a link, in an order that does not depend on set iteration."""
    return sorted((min(u, v), max(u, v)) for u, v in nx.non_edges(graph))


def converge(d: Driver, max_time: float = 120.0) -> RunStats:
    """Run ``d`` until quiet and check every table against networkx."""
    stats = d.run_until_quiet(max_time=max_time, idle=IDLE)
    assert stats.quiet, "the mesh did not settle"
    assert not d.mismatches()
    assert not d.refused
    return stats


def find_loop(tables: Mapping[str, RoutingTable], start: str) -> tuple[str, str] | None:
    """A (destination, node) such that following next hops from ``start`` returns to it."""
    for destination in tables[start]:
        if destination == start:
            continue
        seen: set[str] = set()
        stack = list(tables[start].next_hops(destination))
        while stack:
            node = stack.pop()
            if node == start:
                return destination, start
            if node in seen or node == destination or node not in tables:
                continue
            seen.add(node)
            stack.extend(tables[node].next_hops(destination))
    return None


@dataclass(slots=True)
class Watch:
    """Shared state of the engines of one watched mesh."""

    driver: Driver | None = None
    loops: list[tuple[str, str, str]] = field(default_factory=list)
    events: int = 0


class WatchedEngine(DistanceVectorEngine):
    """An engine that checks for forwarding loops through itself after every call.

    Other nodes' tables cannot change during this node's call, so a loop
    created by the call must pass through this node; checking from it after
    each call therefore checks every intermediate instant of the mesh.
    """

    def __init__(self, node_id: str, watch: Watch, config: DistanceVectorConfig | None) -> None:
        super().__init__(node_id, config)
        self.watch = watch

    def _check(self, out: list[Outgoing]) -> list[Outgoing]:
        self.watch.events += 1
        d = self.watch.driver
        if d is not None and self.node_id in d.engines:
            tables = {n: e.table for n, e in d.engines.items()}
            loop = find_loop(tables, self.node_id)
            if loop is not None:
                self.watch.loops.append((loop[0], loop[1], f"t={d.now}"))
        return out

    def link_up(self, peer: str, cost: int, now: float) -> list[Outgoing]:
        return self._check(super().link_up(peer, cost, now))

    def link_down(self, peer: str, now: float) -> list[Outgoing]:
        return self._check(super().link_down(peer, now))

    def receive(self, peer: str, frame: peer_pb2.Frame, now: float) -> list[Outgoing]:
        return self._check(super().receive(peer, frame, now))

    def tick(self, now: float) -> list[Outgoing]:
        return self._check(super().tick(now))


def watched(graph: nx.Graph, config: DistanceVectorConfig | None = None) -> tuple[Driver, Watch]:
    """A driver whose engines report any forwarding loop at any instant."""
    watch = Watch()

    def make(node: str) -> RoutingEngine:
        return WatchedEngine(node, watch, config)

    d = Driver(graph, make)
    watch.driver = d
    return d, watch


def dv_driver(graph: nx.Graph, config: DistanceVectorConfig | None = None) -> Driver:
    """A plain driver of distance-vector engines."""

    def make(node: str) -> RoutingEngine:
        return DistanceVectorEngine(node, config)

    return Driver(graph, make)


def vector(
    origin: str,
    sequence: int,
    routes: Iterable[peer_pb2.RouteEntry],
    *,
    full: bool = False,
) -> peer_pb2.Frame:
    """A vector frame as a neighbour would send it."""
    return peer_pb2.Frame(
        vector=peer_pb2.DistanceVector(
            origin=origin, sequence=sequence, full=full, routes=list(routes)
        )
    )


def entry(destination: str, metric: int, seqno: int = 0) -> peer_pb2.RouteEntry:
    return peer_pb2.RouteEntry(destination=destination, metric=metric, seqno=seqno)


def entries_of(out: list[Outgoing], peer: str) -> dict[str, peer_pb2.RouteEntry]:
    """Every route entry sent to ``peer`` in ``out``, by destination (last wins)."""
    found: dict[str, peer_pb2.RouteEntry] = {}
    for o in out:
        if o.peer == peer:
            for e in o.frame.vector.routes:
                found[e.destination] = e
    return found


SHAPES: dict[str, Callable[[], nx.Graph]] = {
    "line": lambda: nx.path_graph(12),
    "ring": lambda: nx.cycle_graph(16),
    "grid": lambda: nx.grid_2d_graph(6, 6),
    "star": lambda: nx.star_graph(14),
    "random": lambda: random_connected(30, 25, seed=7),
    "complete": lambda: nx.complete_graph(8),
}


# --- the interface -------------------------------------------------------------------


def test_engine_satisfies_the_routing_engine_protocol() -> None:
    engine: RoutingEngine = DistanceVectorEngine("a")
    assert engine.kind == peer_pb2.ROUTING_ENGINE_DISTANCE_VECTOR
    assert engine.node_id == "a"
    assert engine.next_wake() is None  # no time has been given yet


def test_lone_node_has_itself_at_cost_zero() -> None:
    engine = DistanceVectorEngine("a")
    assert engine.table.cost("a") == 0
    assert engine.table.next_hops("a") == frozenset()
    assert list(engine.table) == ["a"]


def test_config_is_frozen_and_checked() -> None:
    config = DistanceVectorConfig()
    with pytest.raises(AttributeError):
        config.infinity = 5  # type: ignore[misc]
    with pytest.raises(InvalidArgument):
        DistanceVectorConfig(infinity=10, max_link_cost=10)
    with pytest.raises(InvalidArgument):
        DistanceVectorConfig(update_interval=0)


def test_link_up_refuses_bad_costs() -> None:
    engine = DistanceVectorEngine("a", DistanceVectorConfig(max_link_cost=100))
    for cost in (0, -1, 101):
        with pytest.raises(InvalidArgument):
            engine.link_up("b", cost, 0.0)
    with pytest.raises(InvalidArgument):
        engine.link_up("a", 1, 0.0)
    assert list(engine.table) == ["a"]


# --- whole meshes: convergence to the networkx truth -----------------------------------


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_converges_to_shortest_paths_with_every_equal_cost_hop(
    shape: str, record_property: Callable[[str, object], None]
) -> None:
    d = dv_driver(with_costs(SHAPES[shape](), seed=len(shape)))
    stats = converge(d)
    record_property("frames", stats.frames)
    record_property("rounds", stats.rounds)


@pytest.mark.parametrize("shape", ["grid", "ring"])
def test_unit_costs_keep_every_equal_cost_next_hop(shape: str) -> None:
    d = dv_driver(SHAPES[shape]())
    converge(d)
    # A unit grid has many equal-cost paths: make sure some were kept, not just one.
    assert any(len(r.next_hops) > 1 for t in d.tables().values() for r in t.values())


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_reconverges_after_each_kind_of_change(
    shape: str, record_property: Callable[[str, object], None]
) -> None:
    d, watch = watched(with_costs(SHAPES[shape](), seed=3))
    converge(d)
    rng = random.Random(shape)
    edges = sorted(d.graph.edges)
    u, v = rng.choice(edges)
    d.cut(u, v)
    record_property("cut", converge(d).frames)
    d.heal(u, v, 2)
    record_property("heal", converge(d).frames)
    a, b = rng.choice(sorted(d.graph.edges))
    d.set_cost(a, b, d.graph.edges[a, b]["cost"] + 7)
    record_property("cost_up", converge(d).frames)
    d.set_cost(a, b, 1)
    record_property("cost_down", converge(d).frames)
    non_edges = absent_links(d.graph)
    if non_edges:
        x, y = rng.choice(non_edges)
        d.heal(x, y, 1)
        record_property("add_link", converge(d).frames)
    victim = sorted(d.graph.nodes)[len(d.graph) // 2]
    d.remove_node(victim)
    record_property("remove_node", converge(d).frames)
    assert all(victim not in t for t in d.tables().values())
    d.add_node(victim, {n: 3 for n in sorted(d.graph.nodes)[:2]})
    record_property("add_node", converge(d).frames)
    assert not watch.loops


def test_random_mesh_of_200_nodes_converges_and_reconverges(
    record_property: Callable[[str, object], None],
) -> None:
    d = dv_driver(with_costs(random_connected(200, 150, seed=11), seed=12))
    stats = converge(d)
    record_property("initial", (stats.frames, stats.rounds))
    hub = max(sorted(d.graph.nodes), key=d.graph.degree)
    d.remove_node(hub)
    stats = converge(d)
    record_property("remove_hub", (stats.frames, stats.rounds))
    d.add_node(hub, {n: 4 for n in sorted(d.graph.nodes)[:3]})
    stats = converge(d)
    record_property("add_back", (stats.frames, stats.rounds))


def test_cost_increase_on_a_shortest_path_gets_a_new_seqno_and_exact_routes() -> None:
    # d - x - a is the best path; raising x-a makes d - y - z - a best, which a
    # can only accept after d originates a newer seqno (a's FD is 2 under the old one).
    g = nx.Graph()
    g.add_edge("d", "x", cost=1)
    g.add_edge("x", "a", cost=1)
    g.add_edge("d", "y", cost=1)
    g.add_edge("y", "z", cost=1)
    g.add_edge("z", "a", cost=1)
    d, watch = watched(g)
    converge(d)
    assert d.engines["a"].table.next_hops("d") == frozenset({"x"})
    seqno_before = d.engines["d"].seqno  # type: ignore[attr-defined]
    d.set_cost("x", "a", 5)
    converge(d)
    assert d.engines["a"].table["d"].cost == 3
    assert d.engines["a"].table.next_hops("d") == frozenset({"z"})
    assert d.engines["d"].seqno != seqno_before  # type: ignore[attr-defined]
    assert not watch.loops


# --- no count to infinity, no loops ----------------------------------------------------


def advertised_metrics(d: Driver, destination: str) -> list[int]:
    """Every finite metric advertised for ``destination`` in the recorded log."""
    return [
        e.metric
        for t in d.log
        for e in t.frame.vector.routes
        if e.destination == destination and e.metric < INF
    ]


def test_no_count_to_infinity_when_a_destination_behind_a_triangle_dies() -> None:
    # The textbook case split horizon alone cannot save: a, b, c in a triangle, d behind c.
    g = nx.Graph()
    g.add_edges_from([("a", "b"), ("b", "c"), ("a", "c"), ("c", "d")], cost=1)
    d, watch = watched(g)
    converge(d)
    d.record = True
    d.cut("c", "d")
    stats = converge(d)
    # Nothing more than the old distances was ever advertised; d is gone within a few rounds.
    assert max(advertised_metrics(d, "d"), default=0) <= 2
    assert stats.rounds <= 20
    assert stats.frames <= 30
    assert all("d" not in t for n, t in d.tables().items() if n != "d")
    assert not watch.loops


@pytest.mark.parametrize("shape", ["ring", "grid", "random", "line"])
def test_removed_node_disappears_without_metrics_climbing(shape: str) -> None:
    d, watch = watched(with_costs(SHAPES[shape](), seed=5))
    converge(d)
    victim = sorted(d.graph.nodes)[1]
    ceiling = max(t[victim].cost for t in d.tables().values())
    max_link = max(c for _, _, c in d.graph.edges(data="cost"))
    d.record = True
    d.remove_node(victim)
    stats = converge(d)
    # Under one seqno a node advertises less than its FD plus one link: no creeping upwards.
    assert max(advertised_metrics(d, victim), default=0) < ceiling + max_link
    assert stats.elapsed < DistanceVectorConfig().update_interval  # gone before any refresh
    assert all(victim not in t for t in d.tables().values())
    assert not watch.loops


def test_partition_then_heal() -> None:
    left = nx.relabel_nodes(nx.grid_2d_graph(3, 4), lambda n: f"l{n[0]}{n[1]}")
    right = nx.relabel_nodes(nx.cycle_graph(8), lambda n: f"r{n}")
    g = with_costs(nx.union(left, right), seed=9)
    g.add_edge("l00", "r0", cost=2)
    g.add_edge("l23", "r4", cost=5)
    d, watch = watched(g)
    converge(d)
    ceiling = max(r.cost for t in d.tables().values() for r in t.values())
    ceiling += max(c for _, _, c in d.graph.edges(data="cost"))
    d.record = True
    d.cut("l00", "r0")
    d.cut("l23", "r4")
    stats = converge(d)  # each half equals the truth of its own component
    assert stats.elapsed < DistanceVectorConfig().update_interval
    assert all(e.metric < ceiling or e.metric == INF for t in d.log for e in t.frame.vector.routes)
    for node, table in d.tables().items():
        side = node[0]
        assert all(dest[0] == side for dest in table), f"{node} still routes across the cut"
    d.heal("l00", "r0", 2)
    d.heal("l23", "r4", 5)
    converge(d)
    assert all(len(t) == len(g) for t in d.tables().values())
    assert not watch.loops


def test_unreachable_destination_is_forgotten_after_garbage_collection() -> None:
    config = DistanceVectorConfig(update_interval=5.0, route_timeout=20.0, gc_delay=12.0)
    d = dv_driver(nx.path_graph(4), config)
    converge(d)
    d.cut("2", "3")
    converge(d)
    a = d.engines["0"]
    assert a.feasibility_distance("3") is not None  # type: ignore[attr-defined]
    d.advance(40.0)
    assert a.feasibility_distance("3") is None  # type: ignore[attr-defined]
    d.record = True
    d.advance(6.0)  # one more periodic update: "3" is no longer mentioned at all
    assert d.log
    assert all(e.destination != "3" for t in d.log for e in t.frame.vector.routes)
    assert not d.mismatches()


# --- hypothesis: random graphs, random change sequences --------------------------------

change = st.tuples(
    st.sampled_from(["cut", "heal", "cost", "remove", "add"]),
    st.integers(min_value=0, max_value=10_000),
    st.integers(min_value=1, max_value=6),
)


def apply_change(d: Driver, kind: str, pick: int, cost: int, fresh: list[int]) -> None:
    """Apply one change chosen by ``pick`` (an index into sorted candidates)."""
    nodes = sorted(d.graph.nodes)
    edges = sorted(d.graph.edges)
    if kind == "cut" and edges:
        d.cut(*edges[pick % len(edges)])
    elif kind == "heal":
        missing = absent_links(d.graph)
        if missing:
            u, v = missing[pick % len(missing)]
            d.heal(u, v, cost)
    elif kind == "cost" and edges:
        u, v = edges[pick % len(edges)]
        d.set_cost(u, v, cost)
    elif kind == "remove" and len(nodes) > 2:
        d.remove_node(nodes[pick % len(nodes)])
    elif kind == "add":
        fresh[0] += 1
        d.add_node(f"n{fresh[0]}", {nodes[pick % len(nodes)]: cost})


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    n=st.integers(min_value=2, max_value=9),
    extra=st.integers(min_value=0, max_value=8),
    seed=st.integers(min_value=0, max_value=2**16),
    changes=st.lists(change, min_size=1, max_size=5),
)
def test_random_changes_keep_tables_exact_and_never_loop(
    n: int, extra: int, seed: int, changes: list[tuple[str, int, int]]
) -> None:
    extra = min(extra, n * (n - 1) // 2 - (n - 1))
    d, watch = watched(with_costs(random_connected(n, extra, seed), seed=seed, high=4))
    converge(d)
    fresh = [0]
    for kind, pick, cost in changes:
        nodes = sorted(d.graph.nodes)
        victim = nodes[pick % len(nodes)] if kind == "remove" and len(nodes) > 2 else None
        if victim is not None:
            # Bound for "no count to infinity": old worst distance plus one link.
            ceiling = max((t.cost(victim) or 0) for t in d.tables().values())
            ceiling += max((c for _, _, c in d.graph.edges(data="cost")), default=0)
            d.record = True
            d.reset_log()
        apply_change(d, kind, pick, cost, fresh)
        converge(d)
        assert not watch.loops, watch.loops
        if victim is not None:
            assert max(advertised_metrics(d, victim), default=0) < ceiling
            d.record = False


# --- services and subjects --------------------------------------------------------------


def test_services_and_subjects_follow_reachability_and_changes() -> None:
    d = dv_driver(nx.path_graph(5))
    d.set_offers("0", {"db": 2}, ["orders.*"])
    d.set_offers("4", {"db": 1, "web": 3}, ["orders.*", "audit"])
    converge(d)
    mid = d.engines["2"]
    assert mid.services() == {
        "db": (ServiceInstance(node="0", weight=2), ServiceInstance(node="4", weight=1)),
        "web": (ServiceInstance(node="4", weight=3),),
    }
    assert mid.subjects() == {"orders.*": frozenset({"0", "4"}), "audit": frozenset({"4"})}
    assert d.engines["0"].services()["db"][0] == ServiceInstance(node="0", weight=2)
    d.set_offers("4", {"web": 1}, [])
    converge(d)
    assert mid.services() == {
        "db": (ServiceInstance(node="0", weight=2),),
        "web": (ServiceInstance(node="4", weight=1),),
    }
    assert mid.subjects() == {"orders.*": frozenset({"0"})}
    d.cut("3", "4")
    converge(d)
    assert "web" not in mid.services()


def test_local_offers_are_checked() -> None:
    engine = DistanceVectorEngine("a", DistanceVectorConfig(max_offers=2))
    with pytest.raises(InvalidArgument):
        engine.set_local_offers({"svc": 0}, [], 0.0)
    with pytest.raises(InvalidArgument):
        engine.set_local_offers({"a": 1, "b": 1}, ["c"], 0.0)
    with pytest.raises(InvalidArgument):
        engine.set_local_offers({}, [""], 0.0)
    assert engine.services() == {}


# --- one engine: updates, timers, split horizon ----------------------------------------


def test_split_horizon_poisons_the_route_back_to_its_next_hop() -> None:
    a = DistanceVectorEngine("a")
    a.link_up("b", 1, 0.0)
    a.link_up("c", 1, 0.0)
    a.receive("b", vector("b", 1, [entry("b", 0), entry("x", 2, seqno=7)]), 0.0)
    out = a.tick(a.next_wake() or 0.0)
    to_b, to_c = entries_of(out, "b"), entries_of(out, "c")
    assert to_b["x"].metric == INF  # poisoned reverse
    assert to_c["x"].metric == 3
    assert to_c["x"].seqno == 7
    assert to_c["b"].metric == 1


def test_changes_at_one_instant_are_coalesced_into_one_triggered_update() -> None:
    a = DistanceVectorEngine("a")
    a.link_up("b", 1, 0.0)
    a.link_up("c", 1, 0.0)
    assert a.receive("b", vector("b", 1, [entry("b", 0), entry("x", 1)]), 0.5) == []
    assert a.receive("c", vector("c", 1, [entry("c", 0), entry("y", 1)]), 0.5) == []
    assert a.next_wake() == 0.5
    out = a.tick(0.5)
    assert sorted(o.peer for o in out) == ["b", "c"]
    assert {"b", "c", "x", "y"} <= set(entries_of(out, "c"))
    assert all(not o.frame.vector.full for o in out)


def test_triggered_updates_are_rate_limited() -> None:
    config = DistanceVectorConfig(triggered_min_interval=0.5)
    a = DistanceVectorEngine("a", config)
    a.link_up("b", 1, 0.0)
    a.receive("b", vector("b", 1, [entry("b", 0)]), 0.0)
    assert a.tick(0.0)
    a.receive("b", vector("b", 2, [entry("b", 0), entry("x", 1)]), 0.1)
    assert a.next_wake() == pytest.approx(0.5)
    assert a.tick(0.2) == []
    assert entries_of(a.tick(0.5), "b")["x"].metric == INF


def test_periodic_full_vector_goes_to_every_neighbour() -> None:
    config = DistanceVectorConfig(update_interval=4.0)
    a = DistanceVectorEngine("a", config)
    a.link_up("b", 1, 0.0)
    a.link_up("c", 2, 0.0)
    a.receive("b", vector("b", 1, [entry("b", 0)]), 0.0)
    a.tick(0.0)
    assert a.next_wake() == 4.0
    out = a.tick(4.0)
    assert sorted(o.peer for o in out) == ["b", "c"]
    assert all(o.frame.vector.full for o in out)
    assert set(entries_of(out, "c")) == {"a", "b"}
    assert a.next_wake() == 8.0


def test_jitter_comes_from_the_injected_rng_only() -> None:
    config = DistanceVectorConfig(update_interval=10.0, update_jitter=0.5)
    wakes = []
    for _ in range(2):
        engine = DistanceVectorEngine("a", config, rng=random.Random(42))
        engine.link_up("b", 1, 0.0)
        wakes.append(engine.next_wake())
    assert wakes[0] == wakes[1]
    assert wakes[0] is not None
    assert 5.0 <= wakes[0] < 10.0


def test_silent_routes_time_out() -> None:
    config = DistanceVectorConfig(update_interval=5.0, route_timeout=12.0, gc_delay=10.0)
    a = DistanceVectorEngine("a", config)
    a.link_up("b", 1, 0.0)
    a.receive("b", vector("b", 1, [entry("b", 0), entry("x", 3)]), 0.0)
    now = 0.0
    while now < 10.0:  # b keeps itself alive but stops mentioning x
        now += 5.0
        a.receive("b", vector("b", int(now), [entry("b", 0)], full=True), now)
        a.tick(now)
    assert a.table.cost("x") == 4
    a.receive("b", vector("b", 15, [entry("b", 0)], full=True), 15.0)
    a.tick(15.0)
    assert "x" not in a.table
    assert a.table.cost("b") == 1


def test_link_down_drops_routes_at_once_and_retracts_them() -> None:
    a = DistanceVectorEngine("a")
    a.link_up("b", 1, 0.0)
    a.link_up("c", 1, 0.0)
    a.receive("b", vector("b", 1, [entry("b", 0), entry("x", 1)]), 0.0)
    a.tick(0.0)
    a.link_down("b", 1.0)
    assert "x" not in a.table and "b" not in a.table
    out = a.tick(a.next_wake() or 1.0)
    assert entries_of(out, "c")["x"].metric == INF


def test_destination_answers_a_seqno_request_by_jumping_to_it() -> None:
    d = DistanceVectorEngine("d")
    d.link_up("n", 1, 0.0)
    d.receive("n", vector("n", 1, [entry("n", 0), entry("d", INF, seqno=0)]), 0.0)
    assert d.seqno == 0  # an ordinary poisoned reverse is no request
    d.receive("n", vector("n", 2, [entry("n", 0), entry("d", INF, seqno=5)]), 0.1)
    assert d.seqno == 5
    out = d.tick(d.next_wake() or 0.1)
    assert entries_of(out, "n")["d"].seqno == 5


def test_unfeasible_route_is_not_taken_and_asks_for_a_newer_seqno() -> None:
    a = DistanceVectorEngine("a")
    a.link_up("b", 1, 0.0)
    a.link_up("c", 1, 0.0)
    a.receive("b", vector("b", 1, [entry("b", 0), entry("x", 1, seqno=3)]), 0.0)
    assert a.feasibility_distance("x") == (3, 2)
    # c offers x at metric 2 under the same seqno: not below a's FD of 2, so it might loop.
    a.receive("c", vector("c", 1, [entry("c", 0), entry("x", 2, seqno=3)]), 0.0)
    a.link_down("b", 0.0)
    assert "x" not in a.table
    out = a.tick(a.next_wake() or 0.0)
    assert entries_of(out, "c")["x"].metric == INF
    assert entries_of(out, "c")["x"].seqno == 4  # the request
    # The newer seqno arrives: feasible whatever its metric.
    a.receive("c", vector("c", 2, [entry("x", 2, seqno=4)]), 0.2)
    assert a.table.cost("x") == 3
    assert a.feasibility_distance("x") == (4, 3)


def test_pending_request_is_repeated_to_a_neighbour_that_may_have_missed_it() -> None:
    a = DistanceVectorEngine("a")
    a.link_up("b", 1, 0.0)
    a.link_up("c", 1, 0.0)
    a.receive("b", vector("b", 1, [entry("b", 0), entry("x", 1, seqno=3)]), 0.0)
    a.tick(0.0)
    a.receive("b", vector("b", 2, [entry("x", 5, seqno=3)]), 0.1)  # worse: unfeasible
    out = a.tick(a.next_wake() or 0.1)
    assert entries_of(out, "c")["x"].seqno == 4  # the request, to everyone
    # c knew nothing of x then (and so dropped the request); now it offers x under seqno 3.
    a.receive("c", vector("c", 1, [entry("c", 0), entry("x", 7, seqno=3)]), 0.3)
    wake = a.next_wake()
    assert wake is not None and wake < 1.0
    out = a.tick(wake)
    assert entries_of(out, "c")["x"].metric == INF
    assert entries_of(out, "c")["x"].seqno == 4
    # A refresh of the same route is no reason to repeat it again.
    a.receive("c", vector("c", 2, [entry("c", 0), entry("x", 7, seqno=3)]), 0.5)
    assert a.next_wake() == DistanceVectorConfig().update_interval


# --- bad input: refused with the right error, nothing changed ---------------------------


def settled_pair() -> tuple[DistanceVectorEngine, list[peer_pb2.Frame]]:
    """Engine "a" linked to "b", having accepted two vectors from b (returned)."""
    a = DistanceVectorEngine("a", DistanceVectorConfig(max_routes=4))
    a.link_up("b", 2, 0.0)
    sent = [
        vector("b", 10, [entry("b", 0), entry("x", 1)]),
        vector("b", 11, [entry("b", 0), entry("x", 1), entry("y", 4)]),
    ]
    for frame in sent:
        a.receive("b", frame, 0.0)
    a.tick(0.0)
    return a, sent


def snapshot(a: DistanceVectorEngine) -> tuple[object, ...]:
    return (
        a.table,
        a.next_wake(),
        a.seqno,
        a.services(),
        {x: a.feasibility_distance(x) for x in ("b", "x", "y", "z")},
    )


BAD_FRAMES: dict[str, tuple[type[RemoteError], peer_pb2.Frame]] = {
    "absurd metric": (InvalidCost, vector("b", 12, [entry("b", 0), entry("z", INF + 1)])),
    "huge metric": (InvalidCost, vector("b", 12, [entry("z", 2**32 - 1)])),
    "self not at 0": (InvalidCost, vector("b", 12, [entry("b", 3)])),
    "other at 0": (InvalidCost, vector("b", 12, [entry("z", 0)])),
    "oversized vector": (
        OversizedUpdate,
        vector("b", 12, [entry("b", 0)] + [entry(f"z{i}", 1) for i in range(4)]),
    ),
    "too many routes held": (
        OversizedUpdate,
        vector("b", 12, [entry("z1", 1), entry("z2", 1)]),
    ),
    "stale sequence": (StaleUpdate, vector("b", 10, [entry("b", 0), entry("z", 1)])),
    "wrong origin": (Malformed, vector("c", 12, [entry("z", 1)])),
    "repeated destination": (Malformed, vector("b", 12, [entry("z", 1), entry("z", 2)])),
    "empty destination": (Malformed, vector("b", 12, [entry("", 1)])),
    "not a vector": (UnexpectedFrame, peer_pb2.Frame(advert=peer_pb2.LinkStateAdvert())),
}


@pytest.mark.parametrize("case", sorted(BAD_FRAMES))
def test_bad_vector_is_refused_and_changes_nothing(case: str) -> None:
    error, frame = BAD_FRAMES[case]
    a, _ = settled_pair()
    before = snapshot(a)
    with pytest.raises(error):
        a.receive("b", frame, 1.0)
    assert snapshot(a) == before
    # The refused sequence was not consumed: the next good vector is still taken.
    a.receive("b", vector("b", 12, [entry("b", 0), entry("x", 1), entry("z", 1)]), 1.0)
    assert a.table.cost("z") == 3


def test_bad_offers_in_a_vector_are_refused() -> None:
    a, _ = settled_pair()
    before = snapshot(a)
    many = peer_pb2.RouteEntry(destination="x", metric=1, subjects=[f"s{i}" for i in range(300)])
    zero = peer_pb2.RouteEntry(
        destination="x", metric=1, services=[peer_pb2.ServiceInstance(name="db", weight=0)]
    )
    with pytest.raises(OversizedUpdate):
        a.receive("b", vector("b", 12, [many]), 1.0)
    with pytest.raises(Malformed):
        a.receive("b", vector("b", 12, [zero]), 1.0)
    assert snapshot(a) == before


route_entries = st.builds(
    peer_pb2.RouteEntry,
    destination=st.sampled_from(["", "a", "b", "x", "y", "z", "w" * 300]),
    metric=st.one_of(st.integers(0, 4), st.sampled_from([INF - 1, INF, INF + 1, 2**32 - 1])),
    seqno=st.integers(0, 2**32 - 1),
    services=st.lists(
        st.builds(
            peer_pb2.ServiceInstance,
            name=st.sampled_from(["", "db", "web"]),
            weight=st.integers(0, 3),
        ),
        max_size=3,
    ),
    subjects=st.lists(st.sampled_from(["", "s", "t"]), max_size=3),
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    origin=st.sampled_from(["b", "c"]),
    sequence=st.integers(0, 2**32 - 1),
    routes=st.lists(route_entries, max_size=6),
)
def test_garbage_vectors_only_raise_remote_errors_and_change_nothing_when_they_do(
    origin: str, sequence: int, routes: list[peer_pb2.RouteEntry]
) -> None:
    a, _ = settled_pair()
    before = snapshot(a)
    try:
        a.receive("b", vector(origin, sequence, routes), 1.0)
    except RemoteError:
        assert snapshot(a) == before
        return
    # Accepted: the table is still sane (self at 0, every other route via b).
    assert a.table.cost("a") == 0
    assert all(r.next_hops == {"b"} for d, r in a.table.items() if d != "a")


def test_vector_from_a_stranger_is_refused() -> None:
    a, _ = settled_pair()
    before = snapshot(a)
    with pytest.raises(NotANeighbour):
        a.receive("c", vector("c", 1, [entry("c", 0)]), 1.0)
    assert snapshot(a) == before


def test_duplicate_of_the_last_vector_is_ignored() -> None:
    a, sent = settled_pair()
    before = snapshot(a)
    assert a.receive("b", sent[-1], 1.0) == []
    assert snapshot(a) == before


def test_new_session_restarts_sequence_numbering() -> None:
    a, _ = settled_pair()
    a.link_down("b", 1.0)
    a.link_up("b", 2, 2.0)
    a.receive("b", vector("b", 1, [entry("b", 0), entry("x", 1)]), 2.0)
    assert a.table.cost("x") == 3


def test_refusals_through_the_driver_change_no_table() -> None:
    d = dv_driver(nx.path_graph(3))
    converge(d)
    before = d.tables()
    with pytest.raises(InvalidCost):
        d.inject("1", "0", vector("1", 2**31, [entry("2", INF + 5)]))
    assert d.tables() == before
