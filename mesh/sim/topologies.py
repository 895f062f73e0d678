"""Seedable topology generators (networkx underneath) for the simulator and `mesh topology`.

Every generator returns an undirected ``nx.Graph`` whose nodes are names
``n1..nN`` (sorted by the generator's own order) and whose edges carry
``cost`` (an int >= 1) and ``delay_ms``. The graph is always connected: a
random kind that comes out in pieces is redrawn with the next seed, and
after a few tries its components are joined by their closest nodes.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable

import networkx as nx

from mesh.errors import InvalidArgument

KINDS = (
    "line",
    "ring",
    "grid",
    "torus",
    "star",
    "tree",
    "erdos-renyi",
    "barabasi-albert",
    "geometric",
    "fat-tree",
)
"""What ``mesh topology generate KIND`` accepts."""

DEFAULT_DELAY_MS = 1.0


def _side(n: int) -> tuple[int, int]:
    rows = max(1, math.isqrt(n))
    while n % rows:
        rows -= 1
    return rows, n // rows


def _grid(n: int, periodic: bool) -> nx.Graph:
    rows, cols = _side(n)
    if periodic and (rows < 3 or cols < 3):
        raise InvalidArgument(f"a torus needs a rows x cols factorisation of {n} with both >= 3")
    return nx.grid_2d_graph(rows, cols, periodic=periodic)


def _tree(n: int, rng: random.Random) -> nx.Graph:
    # A balanced binary tree cut to n nodes (deterministic; the seed is unused).
    graph = nx.Graph()
    graph.add_node(0)
    for child in range(1, n):
        graph.add_edge((child - 1) // 2, child)
    return graph


def _erdos_renyi(n: int, rng: random.Random) -> nx.Graph:
    p = min(1.0, 2.0 * math.log(max(n, 2)) / max(n, 2))
    return nx.gnp_random_graph(n, p, seed=rng.randrange(2**32))


def _geometric(n: int, rng: random.Random) -> nx.Graph:
    radius = math.sqrt(2.5 * math.log(max(n, 2)) / (math.pi * max(n, 2)))
    graph = nx.random_geometric_graph(n, radius, seed=rng.randrange(2**32))
    for u, v in graph.edges:
        (x1, y1), (x2, y2) = graph.nodes[u]["pos"], graph.nodes[v]["pos"]
        distance = math.hypot(x1 - x2, y1 - y2)
        # Cost and delay grow with distance, as on a wireless or WAN map (unit square = 10 ms).
        graph.edges[u, v]["cost"] = max(1, round(100 * distance))
        graph.edges[u, v]["delay_ms"] = round(10.0 * distance, 3)
    return graph


def _fat_tree(n: int, rng: random.Random) -> nx.Graph:
    """A k-ary fat-tree's switches (k even): (k/2)^2 core, k pods of k/2 agg + k/2 edge.

    ``n`` picks the smallest k whose switch count (5k^2/4) reaches it; the
    count is then exactly 5k^2/4 (20, 45, 80, 125, ...).
    """
    k = 2
    while 5 * k * k // 4 < n:
        k += 2
    half = k // 2
    graph = nx.Graph()
    core = [("core", i) for i in range(half * half)]
    graph.add_nodes_from(core)
    for pod in range(k):
        aggs = [("agg", pod, i) for i in range(half)]
        edges = [("edge", pod, i) for i in range(half)]
        for a in aggs:
            for e in edges:
                graph.add_edge(a, e, cost=1)
        for i, a in enumerate(aggs):
            for j in range(half):
                graph.add_edge(a, core[i * half + j], cost=1)
    return graph


def _random(
    make: Callable[[int, random.Random], nx.Graph],
) -> Callable[[int, random.Random], nx.Graph]:
    def generate(n: int, rng: random.Random) -> nx.Graph:
        graph = make(n, rng)
        for _ in range(8):
            if nx.is_connected(graph):
                return graph
            graph = make(n, rng)
        return _join(graph, rng)

    return generate


def _join(graph: nx.Graph, rng: random.Random) -> nx.Graph:
    parts = sorted((sorted(c, key=str) for c in nx.connected_components(graph)), key=len)
    for small, big in itertools.pairwise(parts):
        graph.add_edge(small[0], rng.choice(big))
    return graph


_GENERATORS: dict[str, Callable[[int, random.Random], nx.Graph]] = {
    "line": lambda n, rng: nx.path_graph(n),
    "ring": lambda n, rng: nx.cycle_graph(n),
    "grid": lambda n, rng: _grid(n, periodic=False),
    "torus": lambda n, rng: _grid(n, periodic=True),
    "star": lambda n, rng: nx.star_graph(n - 1),
    "tree": _tree,
    "erdos-renyi": _random(_erdos_renyi),
    "barabasi-albert": lambda n, rng: nx.barabasi_albert_graph(
        n, min(2, n - 1), seed=rng.randrange(2**32)
    ),
    "geometric": _random(_geometric),
    "fat-tree": _fat_tree,
}

_MINIMUM = {"ring": 3, "torus": 9, "line": 2, "star": 2, "tree": 2, "fat-tree": 1}


def generate(
    kind: str, nodes: int, seed: int = 0, *, costs: tuple[int, int] | None = None
) -> nx.Graph:
    """A connected topology of ``kind`` with about ``nodes`` nodes, named ``n1..``.

    ``costs=(lo, hi)`` draws each link cost uniformly in that range (a
    geometric topology's costs come from distance and are kept). Grid and
    torus use the most square factorisation of ``nodes``; a fat-tree rounds
    up to the next full tree.

    Raises:
        InvalidArgument: an unknown kind or too few nodes for it.
    """
    if kind not in _GENERATORS:
        raise InvalidArgument(f"unknown topology kind {kind!r}; choose one of {', '.join(KINDS)}")
    if nodes < _MINIMUM.get(kind, 2):
        raise InvalidArgument(f"a {kind} needs at least {_MINIMUM.get(kind, 2)} nodes, got {nodes}")
    rng = random.Random(f"topology/{kind}/{nodes}/{seed}")
    raw = _GENERATORS[kind](nodes, rng)
    order = sorted(raw.nodes, key=lambda n: (str(type(n)), n))
    names = {old: f"n{i + 1}" for i, old in enumerate(order)}
    graph = nx.Graph(kind=kind, seed=seed)
    graph.add_nodes_from(names[n] for n in order)
    position = {n: i for i, n in enumerate(order)}
    edges = sorted(
        (
            (*sorted((u, v), key=position.__getitem__), attrs)
            for u, v, attrs in raw.edges(data=True)
        ),
        key=lambda e: (position[e[0]], position[e[1]]),
    )
    for u, v, attrs in edges:
        cost = int(attrs.get("cost", 1))
        if costs is not None and kind != "geometric":
            cost = rng.randint(*costs)
        graph.add_edge(
            names[u],
            names[v],
            cost=cost,
            delay_ms=float(attrs.get("delay_ms", DEFAULT_DELAY_MS)),
        )
    return graph


__all__ = ["KINDS", "generate"]
