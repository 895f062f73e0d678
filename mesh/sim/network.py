"""A virtual network of real ``NodeCore`` instances on a discrete-event clock.

The same core the runtime drives over gRPC is driven here by a heap of events:
frames in flight on links, each core's next ``Wake``, and calls the simulator
schedules (traffic, scenario events, convergence checks). Nothing reads a real
clock and all randomness comes from seeded ``random.Random`` instances, so a
run is exact and repeatable.

Links are modelled as the runtime's links are: one ordered stream per
direction (a gRPC stream over TCP), so frames never overtake each other. Edge
attributes of the graph describe each link:

- ``cost`` (default 1): the configured routing cost;
- ``delay_s``: one-way propagation delay (default: the network's ``delay``);
- ``jitter_s``: a uniform extra delay in ``[0, jitter_s]`` per frame (kept FIFO);
- ``bandwidth_bps``: bits per second; a frame waits for the frames queued
  before it and then takes ``8 * size / bandwidth`` to serialise (None: no limit);
- ``loss``: probability that a transmission is lost. On a TCP stream a lost
  segment is retransmitted after a timeout, so a loss shows up as head-of-line
  delay (``rto_s`` per loss, repeated while the retransmission is lost too),
  never as a missing frame.

A node crash keeps what a real crash keeps: the durable outbox (``Persist`` /
``Forget``) and the dedupe window (``Remember``); everything else is lost with
the core object.
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
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

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
from mesh.routing.base import RoutingEngine
from mesh.routing.link_state import LinkStateEngine
from mesh.routing.table import RoutingTable
from mesh.sim.truth import expected_tables
from mesh.v1 import envelope_pb2, peer_pb2

Handler = Callable[[OpenedMessage], EncodedBody]
"""A simulated service instance: the reply body for a request."""

EPOCH = 1_800_000_000.0
"""Virtual time starts here (Unix seconds), so envelope timestamps look real."""

FRAME_OVERHEAD = 14
"""Bytes a frame costs on the wire beyond its protobuf size (HTTP/2 frame + gRPC prefix)."""

CONTROL_KINDS = frozenset({"advert", "vector"})
"""Frame kinds counted as routing control traffic."""


@dataclass(slots=True)
class NetworkStats:
    """Counts over the life of a network."""

    frames: Counter[str] = field(default_factory=Counter)
    """Frames sent, by kind (hello, advert, vector, batch, ...)."""
    bytes: Counter[str] = field(default_factory=Counter)
    """Bytes sent, by kind."""
    dropped_in_flight: int = 0
    """Frames lost because their link was cut while they travelled."""
    retransmissions: int = 0
    """Transmissions lost on a lossy link and repeated (head-of-line delay)."""

    @property
    def control_frames(self) -> int:
        return sum(n for kind, n in self.frames.items() if kind in CONTROL_KINDS)

    @property
    def control_bytes(self) -> int:
        return sum(n for kind, n in self.bytes.items() if kind in CONTROL_KINDS)


@dataclass(slots=True)
class Pipe:
    """One direction of a link: its queue and what crossed it."""

    delay: float
    jitter: float
    bandwidth: float | None
    loss: float
    free_at: float = 0.0
    """When the sender finishes serialising what is already queued."""
    last_arrival: float = 0.0
    """Arrival time of the last frame sent (frames stay in order)."""
    frames: int = 0
    bytes: int = 0
    envelopes: int = 0
    max_queue_s: float = 0.0
    """Longest a frame waited behind others before its serialisation began."""


class _Link:
    """A live link between a and b; a new object each time it (re)opens."""

    __slots__ = ("a", "b", "pipes")

    def __init__(self, a: str, b: str, pipes: dict[str, Pipe]) -> None:
        self.a = a
        self.b = b
        self.pipes = pipes
        """Sender node id -> the pipe it sends on."""


class TrustedNodeCore(NodeCore):
    """A core whose link-state adverts are neither signed nor verified.

    For large simulations of a mesh whose members all trust each other: an
    Ed25519 verification costs ~150 us per advert per node, which dominates
    a flood. Everything else is the production ``NodeCore``.
    """

    def _make_engine(self) -> RoutingEngine:
        if self.config.engine == peer_pb2.ROUTING_ENGINE_LINK_STATE:
            return LinkStateEngine(self.node_id, self.config.link_state)
        return super()._make_engine()


def seeded_identity(node: str, seed: int) -> NodeIdentity:
    """Keys derived from ``(seed, node)``, so a run is reproducible down to its keys."""
    rng = random.Random(f"identity/{seed}/{node}")
    return NodeIdentity(
        node,
        Ed25519PrivateKey.from_private_bytes(rng.randbytes(32)),
        X25519PrivateKey.from_private_bytes(rng.randbytes(32)),
    )


class CoreNetwork:
    """NodeCores wired by a networkx graph (edge attributes: see the module docstring).

    ``trusted`` runs :class:`TrustedNodeCore` and pre-shares every identity
    (no identity flooding, no advert signatures): large simulations.
    ``reconnect_s`` reopens, after that delay, a link a core closed while both
    ends are alive and the link is still in the graph (what the runtime's
    reconnect loop does); None never reopens.
    """

    def __init__(
        self,
        graph: nx.Graph,
        config: CoreConfig,
        *,
        seed: int = 0,
        delay: float = 0.005,
        identities: Mapping[str, NodeIdentity] | None = None,
        preload_keys: bool = False,
        trusted: bool = False,
        reconnect_s: float | None = None,
        keep_messages: bool = True,
    ) -> None:
        self.config = config
        self.delay = delay
        self.seed = seed
        self.random = random.Random(seed)
        self._link_random = random.Random(f"links/{seed}")
        self.graph: nx.Graph = nx.relabel_nodes(graph, str, copy=True)
        self.now = EPOCH
        self.stats = NetworkStats()
        self.trusted = trusted
        self.reconnect_s = reconnect_s
        self.keep_messages = keep_messages
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
        self._events: list[tuple[float, int, int, Any]] = []
        self._counter = itertools.count()
        self._wake_at: dict[str, float] = {}
        self._links: dict[frozenset[str], _Link] = {}
        self.pipes_closed: list[tuple[str, str, Pipe]] = []
        """Pipes of links that went away, so their load is still reported."""
        self.events_processed = 0
        for node in self.graph.nodes:
            self._add_core(node)
        self.preload_keys = preload_keys or trusted
        if self.preload_keys:  # skip identity flooding: large simulations that trust every node
            self._preload_identities()
        for a, b in self.graph.edges:
            self._open_link(a, b)

    # --- topology ---------------------------------------------------------------

    def _add_core(self, node: str) -> None:
        identity = self._identities.get(node)
        if identity is None:
            identity = seeded_identity(node, self.seed)
            self._identities[node] = identity
        self.cores[node] = self._make_core(identity)
        for store in (self.delivered, self.acked, self.replied, self.failed):
            store.setdefault(node, [])
        self.outbox.setdefault(node, {})
        self.seen.setdefault(node, {})

    def _make_core(self, identity: NodeIdentity) -> NodeCore:
        """The core a node runs (overridden by the fast-fidelity network)."""
        kind = TrustedNodeCore if self.trusted else NodeCore
        return kind(identity, self.config, random_bytes=self.random.randbytes)

    def _preload_identities(self) -> None:
        """Give every core every other node's public identity (no identity flooding)."""
        for node, core in self.cores.items():
            for other in self.cores:
                if other != node:
                    core.keyring.add_peer(self._identities[other].public)

    def _share_identity(self, node: str) -> None:
        """A (re)started ``node`` and every running core learn each other's identity."""
        for other, core in self.cores.items():
            if other != node:
                core.keyring.add_peer(self._identities[node].public)
                self.cores[node].keyring.add_peer(self._identities[other].public)

    def identity(self, node: str) -> NodeIdentity:
        """The identity ``node`` runs (and keeps across restarts)."""
        return self._identities[node]

    def _cost(self, a: str, b: str) -> int:
        return int(self.graph.edges[a, b].get("cost", 1))

    def _pipe(self, a: str, b: str) -> Pipe:
        attrs = self.graph.edges[a, b] if self.graph.has_edge(a, b) else {}
        bandwidth = attrs.get("bandwidth_bps")
        return Pipe(
            delay=float(attrs.get("delay_s", self.delay)),
            jitter=float(attrs.get("jitter_s", 0.0)),
            bandwidth=None if bandwidth is None else float(bandwidth),
            loss=float(attrs.get("loss", 0.0)),
            free_at=self.now,
            last_arrival=self.now,
        )

    def _open_link(self, a: str, b: str) -> None:
        link = _Link(a, b, {a: self._pipe(a, b), b: self._pipe(b, a)})
        self._links[frozenset((a, b))] = link
        cost = self._cost(a, b)
        self.link_changed(a, b)
        self._apply(a, self.cores[a].link_up(b, cost, self.now))
        self._apply(b, self.cores[b].link_up(a, cost, self.now))

    def _drop_link(self, a: str, b: str) -> None:
        link = self._links.pop(frozenset((a, b)), None)
        if link is not None:
            self.pipes_closed.extend(
                (node, other, link.pipes[node]) for node, other in ((a, b), (b, a))
            )

    def live_pipes(self) -> list[tuple[str, str, Pipe]]:
        """(sender, receiver, pipe) of every link now open."""
        out: list[tuple[str, str, Pipe]] = []
        for link in self._links.values():
            out.append((link.a, link.b, link.pipes[link.a]))
            out.append((link.b, link.a, link.pipes[link.b]))
        return out

    def cut(self, a: Hashable, b: Hashable) -> None:
        """Fail the link a-b: frames in flight are lost, both ends see it go down."""
        a, b = str(a), str(b)
        self.graph.remove_edge(a, b)
        self._drop_link(a, b)
        self.link_changed(a, b)
        for x, y in ((a, b), (b, a)):
            if x in self.cores:
                self._apply(x, self.cores[x].link_down(y, self.now))

    def cut_silently(self, a: Hashable, b: Hashable) -> None:
        """Make the link a-b drop everything without telling either end.

        What a dead cable or a hung peer looks like: only heartbeats notice.
        """
        a, b = str(a), str(b)
        self.graph.remove_edge(a, b)
        self._drop_link(a, b)
        self.link_changed(a, b)

    def heal(self, a: Hashable, b: Hashable, cost: int = 1, **attributes: Any) -> None:
        """(Re)create the link a-b with ``cost`` (and link attributes such as ``delay_s``)."""
        a, b = str(a), str(b)
        if self.graph.has_edge(a, b):
            self.cut(a, b)
        self.graph.add_edge(a, b, cost=cost, **attributes)
        self._open_link(a, b)

    def set_cost(self, a: Hashable, b: Hashable, cost: int) -> None:
        """Change the configured cost of a-b at both ends."""
        a, b = str(a), str(b)
        self.graph.edges[a, b]["cost"] = cost
        self.link_changed(a, b)
        self._apply(a, self.cores[a].set_cost(b, cost, self.now))
        self._apply(b, self.cores[b].set_cost(a, cost, self.now))

    def remove_node(self, node: Hashable, *, silently: bool = False) -> None:
        """Crash ``node``: it stops, and its neighbours see their links go down.

        ``silently``: the neighbours are not told; their heartbeats notice.
        """
        node = str(node)
        for other in list(self.graph.neighbors(node)):
            if silently:
                self.cut_silently(node, other)
            else:
                self.cut(node, other)
        self.graph.remove_node(node)
        del self.cores[node]
        self._wake_at.pop(node, None)

    def add_node(self, node: Hashable, links: Mapping[Hashable, int | Mapping[str, Any]]) -> None:
        """Start ``node`` (again, with the same identity if it existed) and link it.

        ``links`` maps each neighbour to a cost, or to the edge attributes.
        """
        node = str(node)
        self.graph.add_node(node)
        self._add_core(node)
        if self.preload_keys:
            self._share_identity(node)
        core = self.cores[node]
        core.remember_seen(self.seen[node].items(), self.now)
        entries = [(p.message_id, p.envelope, p.deadline_ms) for p in self.outbox[node].values()]
        self._apply(node, core.resume(entries, self.now))
        for neighbour, spec in links.items():
            attributes = {"cost": spec} if isinstance(spec, int) else dict(spec)
            self.graph.add_edge(node, str(neighbour), **attributes)
            self._open_link(node, str(neighbour))

    # --- hooks for the simulator (no-ops here) ------------------------------------

    def link_changed(self, a: str, b: str) -> None:
        """The graph's link a-b appeared, went or changed cost."""

    def observe(self, node: str, action: Deliver | Acked | Replied | Failed) -> None:
        """An outcome at ``node`` (a delivery, an ack, a reply, a failure)."""

    def observe_batch(self, src: str, dst: str, frame: peer_pb2.Frame) -> None:
        """A batch of envelopes is about to cross src -> dst."""

    # --- traffic -----------------------------------------------------------------

    def send(
        self, source: Hashable, destination: Hashable, body: EncodedBody, **options: Any
    ) -> bytes:
        """Submit a message at ``source``; returns its id. Raises as ``NodeCore.submit``."""
        node = str(source)
        message_id, actions = self.cores[node].submit(str(destination), body, self.now, **options)
        self._apply(node, actions)
        return message_id

    def publish(
        self, source: Hashable, subject: str, body: EncodedBody, **options: Any
    ) -> list[bytes]:
        """Publish at ``source``; returns the ids of the copies. Raises as ``NodeCore.publish``."""
        node = str(source)
        ids, actions = self.cores[node].publish(subject, body, self.now, **options)
        self._apply(node, actions)
        return ids

    def serve(self, node: Hashable, service: str, handler: Handler, weight: int = 1) -> None:
        """Attach a service instance to ``node`` and advertise it."""
        self.offer(node, {service: weight}, (), handler)

    def offer(
        self,
        node: Hashable,
        services: Mapping[str, int],
        subjects: tuple[str, ...] | list[str],
        handler: Handler | None = None,
    ) -> None:
        """Set what ``node`` advertises; ``handler`` answers its requests."""
        name = str(node)
        if handler is not None:
            self.handlers[name] = handler
        core = self.cores[name]
        self._apply(name, core.set_offers(services, list(subjects), self.now))

    def request(self, source: Hashable, service: str, body: EncodedBody, **options: Any) -> bytes:
        """Send a request from ``source``; the answer lands in ``replied`` or ``failed``."""
        node = str(source)
        message_id, actions = self.cores[node].request(service, body, self.now, **options)
        self._apply(node, actions)
        return message_id

    # --- running ---------------------------------------------------------------------

    def schedule(self, at: float, call: Callable[[], None]) -> None:
        """Run ``call`` at absolute virtual time ``at`` (after what is due before it)."""
        heapq.heappush(self._events, (at, next(self._counter), _CALL, call))

    def run_until(self, until: float) -> None:
        """Process events up to virtual time ``until`` (absolute)."""
        events = self._events
        cores = self.cores
        links = self._links
        while events and events[0][0] <= until:
            at, _, kind, data = heapq.heappop(events)
            self.now = at
            self.events_processed += 1
            if kind == _FRAME:
                link, src, dst, frame = data
                if links.get(frozenset((src, dst))) is not link or dst not in cores:
                    self.stats.dropped_in_flight += 1
                    continue
                self._apply(dst, cores[dst].frame_received(src, frame, at))
            elif kind == _WAKE:
                if self._wake_at.get(data) != at or data not in cores:
                    continue
                del self._wake_at[data]
                self._apply(data, cores[data].tick(at))
            elif kind == _RECONNECT:
                a, b = data
                key = frozenset((a, b))
                if key not in links and a in cores and b in cores and self.graph.has_edge(a, b):
                    self._open_link(a, b)
            else:
                data()
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
                if self.keep_messages:
                    self.delivered[node].append(action.message)
                self.observe(node, action)
                self._maybe_answer(node, action.message)
            elif isinstance(action, Persist):
                self.outbox[node][action.message_id] = action
            elif isinstance(action, Forget):
                self.outbox[node].pop(action.message_id, None)
            elif isinstance(action, Remember):
                self.seen[node][action.message_id] = action.created_ms
            elif isinstance(action, Acked):
                if self.keep_messages:
                    self.acked[node].append(action)
                self.observe(node, action)
            elif isinstance(action, Replied):
                if self.keep_messages:
                    self.replied[node].append(action)
                self.observe(node, action)
            elif isinstance(action, Failed):
                self.failed[node].append(action)
                self.observe(node, action)
            elif isinstance(action, CloseLink):
                self.closed.append((node, action))
                self._close(node, action.peer)
            elif isinstance(action, Rejected):
                self.rejected.append((node, action))
            else:  # pragma: no cover - the action union is closed
                raise InvalidArgument(f"unknown action {action!r}")

    def _maybe_answer(self, node: str, message: OpenedMessage) -> None:
        handler = self.handlers.get(node)
        if handler is None or message.header.kind != envelope_pb2.ENVELOPE_KIND_REQUEST:
            return
        self._apply(node, self.cores[node].reply(message.header, handler(message), self.now))

    def _transmit(self, src: str, dst: str, frame: peer_pb2.Frame) -> None:
        kind = frame.WhichOneof("body") or "empty"
        if kind == "identity" and self.trusted:
            return  # identities are pre-shared in a trusted simulation
        size = frame.ByteSize() + FRAME_OVERHEAD
        self.stats.frames[kind] += 1
        self.stats.bytes[kind] += size
        link = self._links.get(frozenset((src, dst)))
        if link is None:
            self.stats.dropped_in_flight += 1
            return
        pipe = link.pipes[src]
        pipe.frames += 1
        pipe.bytes += size
        if kind == "batch":
            pipe.envelopes += len(frame.batch.envelopes)
            self.observe_batch(src, dst, frame)
            # Copy: the receiver mutates (ttl, trace) what the sender may still hold.
            copy = peer_pb2.Frame()
            copy.CopyFrom(frame)
            frame = copy
        heapq.heappush(
            self._events,
            (self._arrival(pipe, size), next(self._counter), _FRAME, (link, src, dst, frame)),
        )

    def _arrival(self, pipe: Pipe, size: int) -> float:
        now = self.now
        sent = now
        if pipe.bandwidth is not None:
            start = pipe.free_at if pipe.free_at > now else now
            pipe.max_queue_s = max(pipe.max_queue_s, start - now)
            sent = start + 8.0 * size / pipe.bandwidth
            pipe.free_at = sent
        arrival = sent + pipe.delay
        if pipe.jitter:
            arrival += self._link_random.uniform(0.0, pipe.jitter)
        if pipe.loss:
            rto = max(0.2, 4.0 * pipe.delay)
            while self._link_random.random() < pipe.loss:
                arrival += rto
                self.stats.retransmissions += 1
        arrival = max(arrival, pipe.last_arrival)  # one ordered stream: no overtaking
        pipe.last_arrival = arrival
        return arrival

    def _schedule_wake(self, node: str, at: float) -> None:
        current = self._wake_at.get(node)
        if current is not None and current <= at and current >= self.now:
            return
        self._wake_at[node] = at
        heapq.heappush(self._events, (at, next(self._counter), _WAKE, node))

    def _close(self, node: str, peer: str) -> None:
        """A core closed a link: the transport goes away, the other end sees it down."""
        key = frozenset((node, peer))
        link = self._links.get(key)
        if link is None:
            return
        self._drop_link(node, peer)
        if peer in self.cores:
            self._apply(peer, self.cores[peer].link_down(node, self.now))
        if self.reconnect_s is not None:
            delay = self.reconnect_s * (1.0 + self._link_random.random())
            heapq.heappush(
                self._events, (self.now + delay, next(self._counter), _RECONNECT, (node, peer))
            )


_FRAME, _WAKE, _RECONNECT, _CALL = 0, 1, 2, 3

__all__ = [
    "CONTROL_KINDS",
    "EPOCH",
    "FRAME_OVERHEAD",
    "CoreNetwork",
    "NetworkStats",
    "Pipe",
    "TrustedNodeCore",
    "seeded_identity",
]
