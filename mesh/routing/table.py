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

    Unreachable destinations are simply absent.
    """

    __slots__ = ("_routes",)

    def __init__(self, routes: Mapping[str, Route] | None = None) -> None:
        self._routes: dict[str, Route] = dict(routes or {})

    def __getitem__(self, destination: str) -> Route:
        return self._routes[destination]

    def __iter__(self) -> Iterator[str]:
        return iter(self._routes)

    def __len__(self) -> int:
        return len(self._routes)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RoutingTable):
            return self._routes == other._routes
        return NotImplemented

    def __hash__(self) -> int:
        return hash(frozenset(self._routes.items()))

    def __repr__(self) -> str:
        return f"RoutingTable({sorted(self._routes.values(), key=lambda r: r.destination)!r})"

    def cost(self, destination: str) -> int | None:
        """Path cost to ``destination``, or None when it is unreachable."""
        route = self._routes.get(destination)
        return None if route is None else route.cost

    def next_hops(self, destination: str) -> frozenset[str]:
        """Equal-cost next hops towards ``destination``; empty when unreachable."""
        route = self._routes.get(destination)
        return frozenset() if route is None else route.next_hops
