"""Ground truth for routing: what every node's table must be, from networkx.

networkx is the oracle: the cost to each destination is its shortest-path
length, and the next hops are the first hops of *all* shortest paths, which is
what equal-cost multipath must keep.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import networkx as nx

from mesh.routing.table import Route, RoutingTable


def _cost(graph: nx.Graph, u: Hashable, v: Hashable) -> int:
    return int(graph.edges[u, v].get("cost", 1))


def expected_table(graph: nx.Graph, source: Hashable) -> RoutingTable:
    """The routing table ``source`` must converge to on ``graph`` (edge attribute ``cost``)."""
    dist: Mapping[Hashable, int] = nx.single_source_dijkstra_path_length(
        graph, source, weight=lambda u, v, d: int(d.get("cost", 1))
    )
    # Distances from every neighbour, to find all first hops of all shortest paths.
    neighbour_dist = {
        n: nx.single_source_dijkstra_path_length(
            graph, n, weight=lambda u, v, d: int(d.get("cost", 1))
        )
        for n in graph.neighbors(source)
    }
    routes: dict[str, Route] = {}
    for destination, cost in dist.items():
        if destination == source:
            routes[str(source)] = Route(destination=str(source), cost=0, next_hops=frozenset())
            continue
        hops = frozenset(
            str(n)
            for n, nd in neighbour_dist.items()
            if destination in nd and _cost(graph, source, n) + nd[destination] == cost
        )
        routes[str(destination)] = Route(
            destination=str(destination), cost=int(cost), next_hops=hops
        )
    return RoutingTable(routes)


def expected_tables(graph: nx.Graph) -> dict[str, RoutingTable]:
    """:func:`expected_table` for every node, keyed by ``str(node)``."""
    return {str(node): expected_table(graph, node) for node in graph.nodes}


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


__all__ = ["expected_table", "expected_tables", "forwarding_path"]
