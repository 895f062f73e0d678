"""A virtual network of real ``NodeCore`` instances on a discrete-event clock.

The same core the runtime drives over gRPC is driven here by a heap of events:
frames in flight on links (with a per-link delay, edge attribute ``delay_s``,
FIFO per direction, dropped when the link is cut), and each core's next
``Wake``. Nothing reads a real clock and all randomness comes from one seeded
``random.Random``, so a run is exact and repeatable. This is the seed of the
simulator (``mesh simulate``).
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from mesh.actions import (
    Acked,
    Action,
    CloseLink,
    Deliver,
    Failed,
    Forget,
    Persist,
    Rejected,
    Remember,
    Replied,
    SendFrame,
    Wake,
)
from mesh.codec import EncodedBody
from mesh.core import CoreConfig, NodeCore
from mesh.crypto import NodeIdentity
from mesh.envelope import OpenedMessage
from mesh.errors import InvalidArgument
from mesh.routing.table import RoutingTable
from mesh.sim.truth import expected_tables
from mesh.v1 import envelope_pb2, peer_pb2

Handler = Callable[[OpenedMessage], EncodedBody]
"""A simulated service instance: the reply body for a request."""

EPOCH = 1_800_000_000.0
"""Virtual time starts here (Unix seconds), so envelope timestamps look real."""


@dataclass(slots=True)
class NetworkStats:
    """Counts over the life of a network."""

    frames: Counter[str] = field(default_factory=Counter)
    """Frames sent, by kind (hello, advert, vector, batch, ...)."""
    bytes: Counter[str] = field(default_factory=Counter)
    """Bytes sent, by kind."""
    dropped_in_flight: int = 0
    """Frames lost because their link was cut while they travelled."""

    @property
    def control_frames(self) -> int:
        return sum(n for kind, n in self.frames.items() if kind in ("advert", "vector"))

    @property
    def control_bytes(self) -> int:
        return sum(n for kind, n in self.bytes.items() if kind in ("advert", "vector"))


@dataclass(frozen=True, slots=True)
class _Link:
    a: str
    b: str
    generation: int


class CoreNetwork:
    """NodeCores wired by a networkx graph (edge attribute ``cost``, default 1)."""

    def __init__(
        self,
        graph: nx.Graph,
        config: CoreConfig,
        *,
        seed: int = 0,
        delay: float = 0.005,
        identities: Mapping[str, NodeIdentity] | None = None,
        preload_keys: bool = False,
    ) -> None:
        self.config = config
        self.delay = delay
        self.random = random.Random(seed)
        self.graph: nx.Graph = nx.relabel_nodes(graph, str, copy=True)
        self.now = EPOCH
        self.stats = NetworkStats()
        self.delivered: dict[str, list[OpenedMessage]] = {}
        self.closed: list[tuple[str, CloseLink]] = []
        self.rejected: list[tuple[str, Rejected]] = []
        self.acked: dict[str, list[Acked]] = {}
        self.replied: dict[str, list[Replied]] = {}
        self.failed: dict[str, list[Failed]] = {}
        # What survives a crash: each node's durable outbox and dedupe window.
        self.outbox: dict[str, dict[bytes, Persist]] = {}
        self.seen: dict[str, dict[bytes, int]] = {}
        self.handlers: dict[str, Handler] = {}
        self._identities = dict(identities or {})
        self.cores: dict[str, NodeCore] = {}
        self._events: list[tuple[float, int, str, Any]] = []
        self._counter = itertools.count()
        self._wake_at: dict[str, float] = {}
        self._links: dict[frozenset[str], _Link] = {}
        self._generation = itertools.count(1)
        for node in self.graph.nodes:
            self._add_core(node)
        self.preload_keys = preload_keys
        if preload_keys:  # skip identity flooding: large simulations that trust every node
            for node, core in self.cores.items():
                for other in self.cores:
                    if other != node:
                        core.keyring.add_peer(self._identities[other].public)
        for a, b in self.graph.edges:
            self._open_link(a, b)

    # --- topology ---------------------------------------------------------------

    def _add_core(self, node: str) -> None:
        identity = self._identities.get(node)
        if identity is None:
            identity = NodeIdentity.generate(node)
            self._identities[node] = identity
        self.cores[node] = NodeCore(identity, self.config, random_bytes=self.random.randbytes)
        for store in (self.delivered, self.acked, self.replied, self.failed):
            store.setdefault(node, [])
        self.outbox.setdefault(node, {})
        self.seen.setdefault(node, {})

    def _cost(self, a: str, b: str) -> int:
        return int(self.graph.edges[a, b].get("cost", 1))

    def _delay(self, a: str, b: str) -> float:
        if not self.graph.has_edge(a, b):
            return self.delay
        return float(self.graph.edges[a, b].get("delay_s", self.delay))

    def _open_link(self, a: str, b: str) -> None:
        link = _Link(a, b, next(self._generation))
        self._links[frozenset((a, b))] = link
        cost = self._cost(a, b)
        self._apply(a, self.cores[a].link_up(b, cost, self.now))
        self._apply(b, self.cores[b].link_up(a, cost, self.now))

    def cut(self, a: Hashable, b: Hashable) -> None:
        """Fail the link a-b: frames in flight are lost, both ends see it go down."""
        a, b = str(a), str(b)
        self.graph.remove_edge(a, b)
        self._links.pop(frozenset((a, b)), None)
        for x, y in ((a, b), (b, a)):
            if x in self.cores:
                self._apply(x, self.cores[x].link_down(y, self.now))

    def cut_silently(self, a: Hashable, b: Hashable) -> None:
        """Make the link a-b drop everything without telling either end.

        What a dead cable or a hung peer looks like: only heartbeats notice.
        """
        a, b = str(a), str(b)
        self.graph.remove_edge(a, b)
        self._links.pop(frozenset((a, b)), None)

    def heal(self, a: Hashable, b: Hashable, cost: int = 1) -> None:
        """(Re)create the link a-b with ``cost``."""
        a, b = str(a), str(b)
        if self.graph.has_edge(a, b):
            self.cut(a, b)
        self.graph.add_edge(a, b, cost=cost)
        self._open_link(a, b)

    def set_cost(self, a: Hashable, b: Hashable, cost: int) -> None:
        """Change the configured cost of a-b at both ends."""
        a, b = str(a), str(b)
        self.graph.edges[a, b]["cost"] = cost
        self._apply(a, self.cores[a].link_up(b, cost, self.now))
        self._apply(b, self.cores[b].link_up(a, cost, self.now))

    def remove_node(self, node: Hashable) -> None:
        """Crash ``node``: it stops, its neighbours see their links go down."""
        node = str(node)
        for other in list(self.graph.neighbors(node)):
            self.cut(node, other)
        self.graph.remove_node(node)
        del self.cores[node]
        self._wake_at.pop(node, None)

    def add_node(self, node: Hashable, links: Mapping[Hashable, int]) -> None:
        """Start ``node`` (again, with the same identity if it existed) and link it."""
        node = str(node)
        self.graph.add_node(node)
        self._add_core(node)
        if self.preload_keys:
            for other, core in self.cores.items():
                if other != node:
                    core.keyring.add_peer(self._identities[node].public)
                    self.cores[node].keyring.add_peer(self._identities[other].public)
        core = self.cores[node]
        core.remember_seen(self.seen[node].items(), self.now)
        entries = [(p.message_id, p.envelope, p.deadline_ms) for p in self.outbox[node].values()]
        self._apply(node, core.resume(entries, self.now))
        for neighbour, cost in links.items():
            self.graph.add_edge(node, str(neighbour), cost=cost)
            self._open_link(node, str(neighbour))

    # --- traffic -----------------------------------------------------------------

    def send(
        self, source: Hashable, destination: Hashable, body: EncodedBody, **options: Any
    ) -> bytes:
        """Submit a message at ``source``; returns its id. Raises as ``NodeCore.submit``."""
        node = str(source)
        message_id, actions = self.cores[node].submit(str(destination), body, self.now, **options)
        self._apply(node, actions)
        return message_id

    # --- running ---------------------------------------------------------------------

    def run_until(self, until: float) -> None:
        """Process events up to virtual time ``until`` (absolute)."""
        while self._events and self._events[0][0] <= until:
            at, _, kind, data = heapq.heappop(self._events)
            self.now = at
            if kind == "frame":
                link, src, dst, frame = data
                if self._links.get(frozenset((src, dst))) != link or dst not in self.cores:
                    self.stats.dropped_in_flight += 1
                    continue
                self._apply(dst, self.cores[dst].frame_received(src, frame, at))
            else:
                node = data
                if self._wake_at.get(node) != at or node not in self.cores:
                    continue
                del self._wake_at[node]
                self._apply(node, self.cores[node].tick(at))
        self.now = max(self.now, until)

    def advance(self, seconds: float) -> None:
        """Run for ``seconds`` of virtual time."""
        self.run_until(self.now + seconds)

    def tables(self) -> dict[str, RoutingTable]:
        return {node: core.table for node, core in self.cores.items()}

    def expected(self) -> dict[str, RoutingTable]:
        return expected_tables(self.graph)

    def converged(self) -> bool:
        """Whether every table equals the networkx ground truth right now."""
        return self.tables() == self.expected()

    def run_until_converged(self, max_time: float = 120.0, step: float = 0.05) -> float:
        """Advance in steps until converged; returns the virtual seconds it took.

        Raises:
            AssertionError: not converged within ``max_time``.
        """
        started = self.now
        expected = self.expected()
        while self.tables() != expected:
            if self.now - started > max_time:
                raise AssertionError(f"not converged after {max_time} virtual seconds")
            self.advance(step)
        return self.now - started

    # --- actions -----------------------------------------------------------------

    def _apply(self, node: str, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendFrame):
                self._transmit(node, action.peer, action.frame)
            elif isinstance(action, Wake):
                self._schedule_wake(node, action.at)
            elif isinstance(action, Deliver):
                self.delivered[node].append(action.message)
                self._maybe_answer(node, action.message)
            elif isinstance(action, Persist):
                self.outbox[node][action.message_id] = action
            elif isinstance(action, Forget):
                self.outbox[node].pop(action.message_id, None)
            elif isinstance(action, Remember):
                self.seen[node][action.message_id] = action.created_ms
            elif isinstance(action, Acked):
                self.acked[node].append(action)
            elif isinstance(action, Replied):
                self.replied[node].append(action)
            elif isinstance(action, Failed):
                self.failed[node].append(action)
            elif isinstance(action, CloseLink):
                self.closed.append((node, action))
                self._close(node, action.peer)
            elif isinstance(action, Rejected):
                self.rejected.append((node, action))
            else:  # pragma: no cover - the action union is closed
                raise InvalidArgument(f"unknown action {action!r}")

    def serve(self, node: Hashable, service: str, handler: Handler, weight: int = 1) -> None:
        """Attach a service instance to ``node`` and advertise it."""
        name = str(node)
        self.handlers[name] = handler
        core = self.cores[name]
        self._apply(name, core.set_offers({service: weight}, [], self.now))

    def request(self, source: Hashable, service: str, body: EncodedBody, **options: Any) -> bytes:
        """Send a request from ``source``; the answer lands in ``replied`` or ``failed``."""
        node = str(source)
        message_id, actions = self.cores[node].request(service, body, self.now, **options)
        self._apply(node, actions)
        return message_id

    def _maybe_answer(self, node: str, message: OpenedMessage) -> None:
        handler = self.handlers.get(node)
        if handler is None or message.header.kind != envelope_pb2.ENVELOPE_KIND_REQUEST:
            return
        self._apply(node, self.cores[node].reply(message.header, handler(message), self.now))

    def _transmit(self, src: str, dst: str, frame: peer_pb2.Frame) -> None:
        kind = frame.WhichOneof("body") or "empty"
        self.stats.frames[kind] += 1
        self.stats.bytes[kind] += frame.ByteSize()
        link = self._links.get(frozenset((src, dst)))
        if link is None:
            self.stats.dropped_in_flight += 1
            return
        # Copy: the receiver may mutate (ttl, trace) what the sender still holds.
        copy = peer_pb2.Frame()
        copy.CopyFrom(frame)
        heapq.heappush(
            self._events,
            (
                self.now + self._delay(src, dst),
                next(self._counter),
                "frame",
                (link, src, dst, copy),
            ),
        )

    def _schedule_wake(self, node: str, at: float) -> None:
        current = self._wake_at.get(node)
        if current is not None and current <= at and current >= self.now:
            return
        self._wake_at[node] = at
        heapq.heappush(self._events, (at, next(self._counter), "wake", node))

    def _close(self, node: str, peer: str) -> None:
        """A core closed a link: the transport goes away, the other end sees it down."""
        link = self._links.pop(frozenset((node, peer)), None)
        if link is not None and peer in self.cores:
            self._apply(peer, self.cores[peer].link_down(node, self.now))


__all__ = ["EPOCH", "CoreNetwork", "NetworkStats"]
