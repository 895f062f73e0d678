"""The interface both routing engines implement, and what they emit.

An engine is sans-IO like the rest of the core: it is fed link events, frames
from neighbours and the time, and answers with frames to send. It never reads a
clock, sleeps or touches a socket. ``NodeCore`` owns one engine per node.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from mesh.routing.table import RoutingTable, ServiceInstance
from mesh.v1 import peer_pb2


@dataclass(frozen=True, slots=True, kw_only=True)
class Outgoing:
    """A routing frame the engine wants sent to one neighbour."""

    peer: str
    """Neighbour node id to send to."""
    frame: peer_pb2.Frame
    """The frame (an advert or a vector)."""


class RoutingEngine(Protocol):
    """What ``NodeCore`` needs from an engine; times are seconds on any clock."""

    node_id: str
    kind: peer_pb2.RoutingEngine

    def link_up(self, peer: str, cost: int, now: float) -> list[Outgoing]:
        """A link to ``peer`` came up (or its cost changed) with ``cost``."""
        ...

    def link_down(self, peer: str, now: float) -> list[Outgoing]:
        """The link to ``peer`` went down."""
        ...

    def set_local_offers(
        self, services: Mapping[str, int], subjects: Iterable[str], now: float
    ) -> list[Outgoing]:
        """Replace the services (name -> weight) and subjects this node advertises."""
        ...

    def receive(self, peer: str, frame: peer_pb2.Frame, now: float) -> list[Outgoing]:
        """Take an advert or vector from neighbour ``peer``.

        Raises a ``RemoteError`` subclass for unacceptable input, in which case
        no state has changed.
        """
        ...

    def tick(self, now: float) -> list[Outgoing]:
        """Run timers due at ``now`` (refresh, expiry, periodic updates)."""
        ...

    def next_wake(self) -> float | None:
        """When ``tick`` next has something to do, or None."""
        ...

    @property
    def table(self) -> RoutingTable:
        """The current routing table."""
        ...

    def services(self) -> Mapping[str, tuple[ServiceInstance, ...]]:
        """Service name -> reachable nodes offering it (this node included)."""
        ...

    def subjects(self) -> Mapping[str, frozenset[str]]:
        """Subject pattern -> reachable nodes subscribed to it (this node included)."""
        ...
