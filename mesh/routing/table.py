"""The routing table both engines produce: destination -> cost and next hops.

Equal-cost next hops are kept as a set so forwarding can spread load over them;
the table is immutable, so an engine swaps in a new one after each recompute and
readers never see half an update.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """How to reach one destination node."""

    destination: str
    """Node id of the destination."""
    cost: int
    """Total path cost from this node; 0 for the node itself."""
    next_hops: frozenset[str]
    """Neighbours that start a shortest path; empty for the node itself."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceInstance:
    """One node's offer of a named service, as learned through routing."""

    node: str
    """Node id hosting the instance(s)."""
    weight: int
    """Relative share of load the node asks for (>= 1)."""


class RoutingTable(Mapping[str, Route]):
    """Immutable mapping of reachable destination -> :class:`Route`.

    Unreachable destinations are simply absent. A table built by SPF is held
    as columns (destination -> index, costs, next-hop sets) and makes a
    :class:`Route` only when one is asked for: a 10k-node recompute then pays
    for one dict and three lists, not 10k objects, and forwarding reads
    :meth:`next_hops` straight from the columns.
    """

    __slots__ = ("_costs", "_hops", "_index", "_routes")

    def __init__(self, routes: Mapping[str, Route] | None = None) -> None:
        self._routes: dict[str, Route] = dict(routes or {})
        self._index: dict[str, int] | None = None
        self._costs: list[int] = []
        self._hops: list[frozenset[str]] = []

    @classmethod
    def from_columns(
        cls, destinations: list[str], costs: list[int], next_hops: list[frozenset[str]]
    ) -> RoutingTable:
        """A table from parallel lists, with routes made on demand."""
        table = cls()
        table._index = dict(zip(destinations, range(len(destinations)), strict=False))
        table._costs = costs
        table._hops = next_hops
        return table

    def __getitem__(self, destination: str) -> Route:
        route = self._routes.get(destination)
        if route is not None:
            return route
        if self._index is None:
            raise KeyError(destination)
        i = self._index[destination]
        route = Route(destination=destination, cost=self._costs[i], next_hops=self._hops[i])
        self._routes[destination] = route
        return route

    def __iter__(self) -> Iterator[str]:
        return iter(self._routes if self._index is None else self._index)

    def __len__(self) -> int:
        return len(self._routes if self._index is None else self._index)

    def __contains__(self, destination: object) -> bool:
        if self._index is None:
            return destination in self._routes
        return destination in self._index

    def _items(self) -> dict[str, tuple[int, frozenset[str]]]:
        return {d: (self.cost_of(d), self.hops_of(d)) for d in self}

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RoutingTable):
            return self._items() == other._items()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(frozenset(self._items().items()))

    def __repr__(self) -> str:
        return f"RoutingTable({sorted(self.values(), key=lambda r: r.destination)!r})"

    def cost_of(self, destination: str) -> int:
        if self._index is None:
            return self._routes[destination].cost
        return self._costs[self._index[destination]]

    def hops_of(self, destination: str) -> frozenset[str]:
        if self._index is None:
            return self._routes[destination].next_hops
        return self._hops[self._index[destination]]

    def cost(self, destination: str) -> int | None:
        """Path cost to ``destination``, or None when it is unreachable."""
        if self._index is None:
            route = self._routes.get(destination)
            return None if route is None else route.cost
        i = self._index.get(destination)
        return None if i is None else self._costs[i]

    def next_hops(self, destination: str) -> frozenset[str]:
        """Equal-cost next hops towards ``destination``; empty when unreachable."""
        if self._index is None:
            route = self._routes.get(destination)
            return frozenset() if route is None else route.next_hops
        i = self._index.get(destination)
        return _EMPTY if i is None else self._hops[i]


_EMPTY: frozenset[str] = frozenset()
