"""Ground truth for routing: what every node's table must be, from networkx.

networkx is the oracle: the cost to each destination is its shortest-path
length, and the next hops are the first hops of *all* shortest paths, which is
what equal-cost multipath must keep.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, Protocol

import networkx as nx
import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from mesh.routing.table import Route, RoutingTable


def normalise(graph: nx.Graph) -> nx.Graph:
    """A copy of ``graph`` with ``str`` node ids and an integer ``cost`` on every edge."""
    out = nx.Graph()
    out.add_nodes_from(str(n) for n in graph.nodes)
    for u, v, data in graph.edges(data=True):
        out.add_edge(str(u), str(v), cost=int(data.get("cost", 1)))
    return out


def _table(
    g: nx.Graph,
    source: str,
    dist: Mapping[str, int],
    neighbour_dist: Mapping[str, Mapping[str, int]],
) -> RoutingTable:
    """Neighbour ``n`` is a next hop to ``d`` exactly when cost(s, n) + dist(n, d) == dist(s, d)."""
    routes: dict[str, Route] = {}
    for destination, cost in dist.items():
        hops = frozenset(
            n
            for n, nd in neighbour_dist.items()
            if destination in nd and g.edges[source, n]["cost"] + nd[destination] == cost
        )
        routes[destination] = Route(
            destination=destination,
            cost=int(cost),
            next_hops=hops if destination != source else frozenset(),
        )
    return RoutingTable(routes)


def expected_table(graph: nx.Graph, source: Hashable) -> RoutingTable:
    """The routing table ``source`` must converge to on ``graph`` (edge attribute ``cost``).

    Single source plus its neighbours: cheaper than all pairs on big graphs.
    """
    g = normalise(graph)
    s = str(source)
    dist = nx.single_source_dijkstra_path_length(g, s, weight="cost")
    neighbour_dist = {
        n: nx.single_source_dijkstra_path_length(g, n, weight="cost") for n in g.neighbors(s)
    }
    return _table(g, s, dist, neighbour_dist)


def expected_tables(graph: nx.Graph) -> dict[str, RoutingTable]:
    """Every node's correct table, keyed by ``str(node)`` (all pairs at once)."""
    g = normalise(graph)
    dist = dict(nx.all_pairs_dijkstra_path_length(g, weight="cost"))
    return {s: _table(g, s, dist[s], {n: dist[n] for n in g.neighbors(s)}) for s in g.nodes}


def forwarding_path(
    tables: Mapping[str, RoutingTable], source: str, destination: str, limit: int = 10_000
) -> list[str] | None:
    """Follow next hops (the smallest id at each step) from source to destination.

    Returns the path, or None when a node on the way has no route. Raises
    AssertionError on a loop, which must never happen.
    """
    path = [source]
    seen = {source}
    node = source
    while node != destination:
        hops = tables[node].next_hops(destination) if node in tables else frozenset()
        if not hops:
            return None
        node = min(hops)
        if node in seen or len(path) > limit:
            raise AssertionError(f"forwarding loop from {source} to {destination}: {[*path, node]}")
        seen.add(node)
        path.append(node)
    return path


class Truth(Protocol):
    """What the simulator checks tables against and measures stretch with."""

    def distance(self, source: str, destination: str) -> int | None:
        """Shortest path cost, or None when there is no path (or a node is absent)."""
        ...

    def table(self, node: str) -> RoutingTable:
        """The table ``node`` must hold."""
        ...


class GroundTruth:
    """Shortest paths of one graph, computed once in arrays (scipy) and read often.

    What the simulator checks tables against and measures stretch with; a new
    instance per graph change. Rows of the distance matrix are computed for
    all nodes at once up to ``dense_limit`` nodes, lazily per source above.
    """

    def __init__(self, graph: nx.Graph, dense_limit: int = 3000) -> None:
        self.graph = graph
        self.nodes: list[str] = [str(n) for n in graph.nodes]
        self.index: dict[str, int] = {n: i for i, n in enumerate(self.nodes)}
        size = len(self.nodes)
        rows, cols, data = [], [], []
        for u, v, attrs in graph.edges(data=True):
            i, j = self.index[str(u)], self.index[str(v)]
            cost = float(attrs.get("cost", 1))
            rows += [i, j]
            cols += [j, i]
            data += [cost, cost]
        self._matrix = csr_matrix((data, (rows, cols)), shape=(size, size))
        self._rows: dict[int, Any] = {}
        self._tables: dict[str, RoutingTable] = {}
        if 0 < size <= dense_limit:
            self._fill(list(range(size)))

    def _fill(self, sources: list[int]) -> None:
        missing = [s for s in sources if s not in self._rows]
        if not missing:
            return
        dist = dijkstra(self._matrix, directed=False, indices=missing)
        for k, s in enumerate(missing):
            self._rows[s] = dist[k]

    def distance(self, source: str, destination: str) -> int | None:
        """Shortest path cost, or None when there is no path (or a node is absent)."""
        i = self.index.get(source)
        j = self.index.get(destination)
        if i is None or j is None:
            return None
        self._fill([i])
        value = self._rows[i][j]
        return None if value == float("inf") else int(value)

    def table(self, node: str) -> RoutingTable:
        """The table ``node`` must hold (as :func:`expected_table`, much faster)."""
        cached = self._tables.get(node)
        if cached is not None:
            return cached
        i = self.index[node]
        neighbours = [
            (self.index[str(n)], str(n), int(self.graph.edges[node, n].get("cost", 1)))
            for n in self.graph.neighbors(node)
        ]
        self._fill([i] + [j for j, _, _ in neighbours])
        row = self._rows[i]
        reachable = np.flatnonzero(np.isfinite(row))
        first: dict[int, set[str]] = {}
        for j, name, cost in neighbours:
            hits = np.flatnonzero(self._rows[j][reachable] + cost == row[reachable])
            for d in reachable[hits].tolist():
                first.setdefault(d, set()).add(name)
        destinations = [self.nodes[d] for d in reachable.tolist()]
        costs = [int(c) for c in row[reachable].tolist()]
        hops = [frozenset() if d == i else frozenset(first.get(d, ())) for d in reachable.tolist()]
        table = RoutingTable.from_columns(destinations, costs, hops)
        self._tables[node] = table
        return table


__all__ = [
    "GroundTruth",
    "Truth",
    "expected_table",
    "expected_tables",
    "forwarding_path",
    "normalise",
]
