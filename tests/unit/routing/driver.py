"""A deterministic in-memory driver for routing engines, and networkx ground truth.

Routing engines are sans-IO, so a test can wire any number of them together in
one process: this driver keeps the topology as a networkx graph, calls
``link_up``/``link_down`` on both ends when the topology changes, queues the
frames engines emit and delivers them after a fixed per-link delay on a virtual
clock, and runs engine timers (``next_wake``/``tick``) in time order. Nothing
here reads a real clock or draws a random number, so every run is exact and
repeatable.

It works with any :class:`mesh.routing.base.RoutingEngine` (link-state,
distance-vector): the constructor takes a factory ``make_engine(node_id)``.
Node ids are strings; a graph with other node labels (ints, tuples from
``grid_2d_graph``) is relabelled with ``str``. Edge costs come from the integer
``cost`` edge attribute (1 when absent).

Import it from a test module in this package with ``from .driver import ...``
(pytest puts ``tests/unit`` on ``sys.path``, not the repository root), and from
a script with the repository root on ``sys.path`` as
``from tests.unit.routing.driver import ...``.

The API (stable; other engines' tests depend on it)::

    d = Driver(graph, make_engine, delay=0.01)
    stats = d.run_until_quiet(max_time=600.0)   # -> RunStats
    d.cut(a, b); d.heal(a, b, cost); d.set_cost(a, b, cost)
    d.remove_node(n); d.add_node(n, {neighbour: cost})
    d.set_offers(n, {"svc": 1}, ["subject"])
    d.advance(dt); d.run_until(t)
    d.tables() == d.expected()                  # expected_tables(d.graph)
    d.inject(src, dst, frame)                   # deliver a crafted frame now
    d.frames, d.bytes, d.refused, d.log (when d.record is True)
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field

import networkx as nx

from mesh.errors import RemoteError
from mesh.routing.base import Outgoing, RoutingEngine
from mesh.routing.table import RoutingTable
from mesh.sim.truth import expected_table, expected_tables, normalise
from mesh.v1 import peer_pb2

__all__ = [
    "Driver",
    "DriverError",
    "Refusal",
    "RunStats",
    "Transmission",
    "expected_table",
    "expected_tables",
    "forwarding_path",
    "normalise",
]


class DriverError(AssertionError):
    """An engine broke the driver's contract (e.g. sent to a non-neighbour)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Transmission:
    """One frame put on a link (recorded only while ``Driver.record`` is true)."""

    at: float
    """Virtual time it was sent."""
    src: str
    """Sending node."""
    dst: str
    """Receiving neighbour."""
    frame: peer_pb2.Frame
    """The frame as sent."""
    size: int
    """``frame.ByteSize()`` at send time."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    """A frame an engine refused by raising a ``RemoteError``."""

    at: float
    """Virtual time of delivery."""
    src: str
    """Neighbour that sent it."""
    dst: str
    """Node that refused it."""
    error: RemoteError
    """What it raised."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStats:
    """What one ``run_*`` call did."""

    started: float
    """Virtual time when the run began."""
    ended: float
    """Virtual time when it stopped (time of the last event when quiet)."""
    frames: int
    """Frames sent during the run (including those emitted by topology calls since the last run)."""
    bytes: int
    """Sum of ``ByteSize()`` of those frames."""
    ticks: int
    """Timer callbacks run."""
    quiet: bool
    """True when it stopped because nothing was in flight, False at the time limit."""
    delay: float
    """The driver's per-link delay, to express ``elapsed`` in rounds."""

    @property
    def elapsed(self) -> float:
        """Virtual seconds the run took."""
        return self.ended - self.started

    @property
    def rounds(self) -> int:
        """Elapsed virtual time in units of the per-link delay (rounded up)."""
        return math.ceil(self.elapsed / self.delay - 1e-9) if self.delay > 0 else 0


@dataclass(slots=True)
class _Counters:
    frames: int = 0
    bytes: int = 0
    ticks: int = 0
    mark_frames: int = 0
    mark_bytes: int = 0
    extra: dict[str, int] = field(default_factory=dict)


def _link(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


class Driver:
    """Engines wired by a topology, a virtual clock and a queue of in-flight frames.

    Every frame takes exactly ``delay`` virtual seconds to cross a link; frames
    on one link are delivered in the order sent. Cutting a link (or removing a
    node) drops what is in flight on it, as a real broken stream would.
    Topology calls happen "now" and return at once; the frames they cause are
    delivered by the next ``run_*`` call. At equal times frames are delivered
    before timers run, so several events at one instant can be coalesced by an
    engine that arms a timer for ``now``.
    """

    def __init__(
        self,
        graph: nx.Graph,
        make_engine: Callable[[str], RoutingEngine],
        *,
        delay: float = 0.01,
        start_time: float = 0.0,
        record: bool = False,
    ) -> None:
        if delay <= 0:
            raise ValueError("delay must be > 0")
        self.make_engine = make_engine
        self.delay = delay
        self.now = start_time
        self.record = record
        """When true, every frame sent is appended to ``log``."""
        self.log: list[Transmission] = []
        self.refused: list[Refusal] = []
        self.graph: nx.Graph = nx.Graph()
        """The current topology (str node ids, ``cost`` on edges): the ground truth."""
        self.engines: dict[str, RoutingEngine] = {}
        self._counters = _Counters()
        self._seq = 0
        # (deliver_at, 0, seq, src, dst, epoch, frame); 0 sorts frames before timers.
        self._frames: list[tuple[float, int, int, str, str, int, peer_pb2.Frame]] = []
        # (wake_at, 1, seq, node): lazily invalidated against _armed.
        self._wakes: list[tuple[float, int, int, str]] = []
        self._armed: dict[str, float] = {}
        self._epoch: dict[tuple[str, str], int] = {}
        g = normalise(graph)
        for n in sorted(g.nodes):
            self._spawn(n)
        for u, v in sorted(_link(a, b) for a, b in g.edges):
            self.heal(u, v, g.edges[u, v]["cost"])

    # --- counters ----------------------------------------------------------------

    @property
    def frames(self) -> int:
        """Frames sent since the driver was created."""
        return self._counters.frames

    @property
    def bytes(self) -> int:
        """Bytes (``ByteSize()``) sent since the driver was created."""
        return self._counters.bytes

    @property
    def in_flight(self) -> int:
        """Frames queued and not yet delivered (some may be on links since cut)."""
        return len(self._frames)

    def reset_log(self) -> None:
        """Forget recorded transmissions and refusals."""
        self.log.clear()
        self.refused.clear()

    # --- topology ----------------------------------------------------------------

    def _spawn(self, node: str) -> None:
        if node in self.engines:
            raise DriverError(f"node {node!r} already exists")
        engine = self.make_engine(node)
        self.engines[node] = engine
        self.graph.add_node(node)
        self._arm(node)

    def add_node(self, node: Hashable, links: Mapping[Hashable, int] | None = None) -> None:
        """Start a fresh engine for ``node`` and bring up ``links`` (neighbour -> cost)."""
        n = str(node)
        self._spawn(n)
        for peer, cost in sorted((links or {}).items(), key=lambda kv: str(kv[0])):
            self.heal(n, peer, cost)

    def remove_node(self, node: Hashable) -> None:
        """Crash ``node``: its neighbours see their links to it go down; it is forgotten."""
        n = str(node)
        for peer in sorted(self.graph.neighbors(n)):
            self.cut(n, peer)
        self.graph.remove_node(n)
        del self.engines[n]
        self._armed.pop(n, None)

    def heal(self, a: Hashable, b: Hashable, cost: int) -> None:
        """Bring up a link between ``a`` and ``b`` with ``cost`` (both ends told now)."""
        u, v = str(a), str(b)
        if self.graph.has_edge(u, v):
            raise DriverError(f"link {u}-{v} is already up")
        for n in (u, v):
            if n not in self.engines:
                raise DriverError(f"unknown node {n!r}")
        self.graph.add_edge(u, v, cost=int(cost))
        self._epoch[_link(u, v)] = self._epoch.get(_link(u, v), 0) + 1
        self._call(u, self.engines[u].link_up(v, int(cost), self.now))
        self._call(v, self.engines[v].link_up(u, int(cost), self.now))

    def cut(self, a: Hashable, b: Hashable) -> None:
        """Take the link ``a``-``b`` down; frames in flight on it are lost."""
        u, v = str(a), str(b)
        if not self.graph.has_edge(u, v):
            raise DriverError(f"no link {u}-{v}")
        self.graph.remove_edge(u, v)
        self._epoch[_link(u, v)] += 1
        self._call(u, self.engines[u].link_down(v, self.now))
        self._call(v, self.engines[v].link_down(u, self.now))

    def set_cost(self, a: Hashable, b: Hashable, cost: int) -> None:
        """Change the cost of an up link: both ends get ``link_up`` with the new cost."""
        u, v = str(a), str(b)
        if not self.graph.has_edge(u, v):
            raise DriverError(f"no link {u}-{v}")
        self.graph.edges[u, v]["cost"] = int(cost)
        self._call(u, self.engines[u].link_up(v, int(cost), self.now))
        self._call(v, self.engines[v].link_up(u, int(cost), self.now))

    def set_offers(
        self, node: Hashable, services: Mapping[str, int], subjects: Iterable[str]
    ) -> None:
        """Change what ``node`` advertises."""
        n = str(node)
        self._call(n, self.engines[n].set_local_offers(services, list(subjects), self.now))

    def inject(self, src: Hashable, dst: Hashable, frame: peer_pb2.Frame) -> None:
        """Hand ``frame`` to ``dst`` now as if from neighbour ``src``; errors propagate.

        For adversarial tests: unlike queued frames, a ``RemoteError`` raised
        here is not caught, so the test can assert on it.
        """
        s, d = str(src), str(dst)
        self._call(d, self.engines[d].receive(s, frame, self.now))

    # --- running -----------------------------------------------------------------

    def _arm(self, node: str) -> None:
        wake = self.engines[node].next_wake()
        if wake is None:
            self._armed.pop(node, None)
            return
        if self._armed.get(node) != wake:
            self._armed[node] = wake
            self._seq += 1
            heapq.heappush(self._wakes, (wake, 1, self._seq, node))

    def _call(self, node: str, out: list[Outgoing]) -> None:
        """Queue what ``node`` emitted and re-arm its timer."""
        c = self._counters
        for o in out:
            peer = o.peer
            if not self.graph.has_edge(node, peer):
                raise DriverError(f"{node} sent a frame to {peer}, which is not a neighbour")
            size = o.frame.ByteSize()
            c.frames += 1
            c.bytes += size
            if self.record:
                self.log.append(
                    Transmission(at=self.now, src=node, dst=peer, frame=o.frame, size=size)
                )
            self._seq += 1
            heapq.heappush(
                self._frames,
                (
                    self.now + self.delay,
                    0,
                    self._seq,
                    node,
                    peer,
                    self._epoch[_link(node, peer)],
                    o.frame,
                ),
            )
        self._arm(node)

    def _next_wake(self) -> tuple[float, str] | None:
        """The earliest still-valid timer, discarding stale heap entries."""
        wakes = self._wakes
        while wakes:
            at, _, _, node = wakes[0]
            if node in self.engines and self._armed.get(node) == at:
                return at, node
            heapq.heappop(wakes)
        return None

    def _step(self, deadline: float) -> bool:
        """Run the earliest event if it is due by ``deadline``; False when none is."""
        wake = self._next_wake()
        frame_at = self._frames[0][0] if self._frames else math.inf
        wake_at = wake[0] if wake is not None else math.inf
        if min(frame_at, wake_at) > deadline:
            return False
        if frame_at <= wake_at:
            at, _, _, src, dst, epoch, frame = heapq.heappop(self._frames)
            self.now = max(self.now, at)
            if self._epoch.get(_link(src, dst)) != epoch or dst not in self.engines:
                return True  # the link was cut (or re-made) while the frame was on it
            try:
                out = self.engines[dst].receive(src, frame, self.now)
            except RemoteError as exc:
                self.refused.append(Refusal(at=self.now, src=src, dst=dst, error=exc))
                self._arm(dst)
                return True
            self._call(dst, out)
            return True
        assert wake is not None
        at, node = wake
        heapq.heappop(self._wakes)
        self._armed.pop(node, None)
        self.now = max(self.now, at)
        self._counters.ticks += 1
        self._call(node, self.engines[node].tick(self.now))
        return True

    def _stats(self, started: float, quiet: bool) -> RunStats:
        c = self._counters
        stats = RunStats(
            started=started,
            ended=self.now,
            frames=c.frames - c.mark_frames,
            bytes=c.bytes - c.mark_bytes,
            ticks=c.ticks,
            quiet=quiet,
            delay=self.delay,
        )
        c.mark_frames, c.mark_bytes, c.ticks = c.frames, c.bytes, 0
        return stats

    def run_until_quiet(self, max_time: float = 3600.0, *, idle: float = 0.0) -> RunStats:
        """Deliver frames and run timers until nothing is in flight.

        Quiet means no frame is in flight and no timer is due within ``idle``
        seconds (periodic refreshes far ahead do not count; an engine that
        defers triggered updates by a timer needs ``idle`` at least that long).
        Gives up after ``max_time`` virtual seconds with ``quiet=False``.
        """
        started = self.now
        deadline = self.now + max_time
        while True:
            wake = self._next_wake()
            if not self._frames and (wake is None or wake[0] > self.now + idle):
                return self._stats(started, True)
            if not self._step(deadline):
                self.now = deadline
                return self._stats(started, False)

    def run_until(self, t: float) -> RunStats:
        """Run every event due up to virtual time ``t``, then set the clock to ``t``."""
        started = self.now
        while self._step(t):
            pass
        self.now = max(self.now, t)
        return self._stats(started, not self._frames)

    def advance(self, dt: float) -> RunStats:
        """Run for ``dt`` virtual seconds."""
        return self.run_until(self.now + dt)

    # --- results -----------------------------------------------------------------

    def tables(self) -> dict[str, RoutingTable]:
        """Every engine's current table."""
        return {n: e.table for n, e in self.engines.items()}

    def expected(self) -> dict[str, RoutingTable]:
        """Ground truth for the current topology."""
        return expected_tables(self.graph)

    def mismatches(self) -> dict[str, tuple[RoutingTable, RoutingTable]]:
        """Nodes whose table differs from the ground truth: node -> (actual, expected)."""
        want = self.expected()
        return {n: (e.table, want[n]) for n, e in self.engines.items() if e.table != want[n]}


# --- ground truth ------------------------------------------------------------


def forwarding_path(
    tables: Mapping[str, RoutingTable], source: str, destination: str
) -> list[str] | None:
    """Follow next hops (every choice) from ``source``; the longest path walked, or None.

    Returns None when some choice of next hops loops or dead-ends before
    ``destination``; otherwise one longest hop sequence found, for messages.
    Explores every equal-cost branch, so a loop on any branch is found.
    """
    best: list[str] = []
    done: set[str] = set()  # nodes from which every branch is known to arrive

    def walk(node: str, path: list[str], on_path: set[str]) -> bool:
        nonlocal best
        if node == destination:
            if len(path) > len(best):
                best = list(path)
            return True
        if node in done:
            return True
        table = tables.get(node)
        hops = table.next_hops(destination) if table is not None else frozenset()
        if not hops:
            return False
        for h in sorted(hops):
            if h in on_path:
                return False
            path.append(h)
            on_path.add(h)
            ok = walk(h, path, on_path)
            on_path.discard(h)
            path.pop()
            if not ok:
                return False
        done.add(node)
        return True

    return best if walk(source, [source], {source}) else None
