"""Fast fidelity: real cores carry the data, link-state flooding is computed, not replayed.

Why it exists: a full-fidelity link-state cold start delivers about N x 2L
adverts, each a real ``frame_received`` and LSDB update, and every core keeps
its own copy of every advert (N^2 entries). At 10,000 nodes that is hours and
tens of GiB. What the flood *decides* is cheap to compute directly:

- every node ends up with the same LSDB, so the routing tables of one topology
  version are one all-pairs shortest-path computation (:class:`Paths`), held
  in two N x N integer arrays (distance, next-hop code) that every node's
  table reads its own row of (:class:`SnapshotTable`): no per-node dicts;
- when a node gets that table is when the flood would reach it: an advert
  originated by ``x`` at ``t`` is forwarded at once by every node, so it
  arrives at ``v`` at ``t + delay-distance(x, v)``. :class:`FloodModel`
  computes those arrival times per change and installs each node's table then;
- what the flood would have cost (frames and bytes) is counted from the
  topology: a flood from ``x`` sends ``2L - (N - 1)`` frames in ``x``'s
  component (every node forwards the first copy to all neighbours but the one
  it came from).

Data still goes through the real ``NodeCore``: sealed at the source, digest
checked at every hop, opened at the destination, over the simulated links.
See docs/simulation.md, "Fidelity modes", for what is exact and what is
approximated.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import networkx as nx
import numpy as np
from scipy.sparse import csr_array
from scipy.sparse.csgraph import connected_components, dijkstra

from mesh.core import CoreConfig, NodeCore
from mesh.crypto import NodeIdentity, PublicIdentity, RandomBytes
from mesh.errors import InvalidArgument
from mesh.routing.base import Outgoing, RoutingEngine
from mesh.routing.errors import UnexpectedFrame
from mesh.routing.table import Route, RoutingTable, ServiceInstance
from mesh.sim.network import FRAME_OVERHEAD, CoreNetwork, Pipe
from mesh.v1 import peer_pb2

FAST_ABOVE_NODES = 400
"""``auto`` picks fast fidelity for link-state meshes with more nodes than this."""

SIGNATURE_BYTES = 64
"""An Ed25519 signature: what a signed advert carries on top of its content."""

_QUIET = 1.0e9
"""Heartbeat interval the real cores run with in fast mode: never, in practice."""

_CHUNK = 256
"""Sources per scipy call: bounds the float64 scratch to 256 x N."""

_MASK_NEIGHBOURS = 16
"""Nodes with at most this many neighbours store next hops as a bit mask."""

_EMPTY: frozenset[str] = frozenset()


def resolve_fidelity(requested: str, engine: str, nodes: int) -> Literal["full", "fast"]:
    """The fidelity a run uses: ``auto`` is fast above :data:`FAST_ABOVE_NODES` link-state nodes.

    Raises:
        InvalidArgument: an unknown fidelity, or ``fast`` with distance-vector
            (only link-state flooding is modelled).
    """
    if requested == "full":
        return "full"
    if requested == "fast":
        if engine != "link-state":
            raise InvalidArgument("fast fidelity models link-state flooding only; use full")
        return "fast"
    if requested == "auto":
        return "fast" if engine == "link-state" and nodes > FAST_ABOVE_NODES else "full"
    raise InvalidArgument(f"unknown fidelity {requested!r}; choose full, fast or auto")


# --- all-pairs paths of one topology version ----------------------------------------------------


DIAL_MAX_COST = 32
"""Largest link cost for which distances are computed by :class:`BitParallelDial`."""


class BitParallelDial:
    """Exact shortest distances from up to 64 sources at once over small integer costs.

    Dial's algorithm (buckets by distance) run on bit sets: bit ``i`` of
    ``frontier[t][v]`` says source ``i`` first reaches ``v`` at distance ``t``.
    Distance ``t`` is reached through an edge of cost ``c`` from the frontier
    of ``t - c``, so each step is a gather and an OR-reduction per distinct
    cost over the edge arrays: O(E) numpy work per distance for 64 sources,
    where Dijkstra pays O(E log N) Python-free but per source.
    """

    def __init__(self, costs: Any) -> None:
        n = costs.shape[0]
        self.size = n
        data = costs.data.astype(np.int64)
        tails = np.repeat(np.arange(n), np.diff(costs.indptr))
        heads = costs.indices
        self.groups: list[tuple[int, Any, Any, Any]] = []
        """Per distinct cost: (cost, tails sorted by head, distinct heads, segment starts)."""
        for cost in np.unique(data).tolist():
            chosen = data == cost
            u, v = tails[chosen], heads[chosen]
            order = np.argsort(v, kind="stable")
            u, v = u[order], v[order]
            starts = np.flatnonzero(np.r_[True, v[1:] != v[:-1]])
            self.groups.append((int(cost), u, v[starts], starts))
        self.max_cost = max((g[0] for g in self.groups), default=0)

    def distances(self, sources: Any, out: Any) -> None:
        """Fill ``out[i, v]`` with the distance from ``sources[i]`` (dtype max: unreachable)."""
        n = self.size
        k = len(sources)
        out[:, :] = np.iinfo(out.dtype).max
        out[np.arange(k), sources] = 0
        first = np.zeros(n, dtype=np.uint64)
        first[sources] = np.uint64(1) << np.arange(k, dtype=np.uint64)
        visited = first.copy()
        frontiers: list[Any] = [first]
        levels: list[tuple[int, Any, Any]] = []
        t = last = 0
        while t - last < self.max_cost:
            t += 1
            reached = np.zeros(n, dtype=np.uint64)
            for cost, tails, heads, starts in self.groups:
                if t < cost or frontiers[t - cost] is None:
                    continue
                reached[heads] |= np.bitwise_or.reduceat(frontiers[t - cost][tails], starts)
            new = reached & ~visited
            where = np.flatnonzero(new)
            if len(where) == 0:
                frontiers.append(None)
                continue
            last = t
            visited[where] |= new[where]
            frontiers.append(new)
            levels.append((t, where, new[where]))
        for t, where, bits in levels:
            hit = np.unpackbits(bits.view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")
            block = out[:, where]
            block[hit[:, :k].T.astype(bool)] = t
            out[:, where] = block


@dataclass(frozen=True, slots=True, kw_only=True)
class Edges:
    """The live undirected links of one topology version, as index arrays."""

    u: Any
    """Endpoint indices (int64), one per link."""
    v: Any
    """The other endpoints."""
    cost: Any
    """Configured costs (int64 >= 1)."""
    delay: Any
    """One-way propagation delays, seconds (float64)."""


class Paths:
    """Shortest paths between every pair of one topology version, shared by all nodes.

    ``dist[s, d]`` is the path cost (``unreachable`` when there is none) and
    ``codes[s, d]`` names the set of ``s``'s neighbours that start a shortest
    path: for a node with at most 16 neighbours the code is the bit mask over
    its neighbours in index order; above, an index into that row's table of
    distinct sets. Both are N x N unsigned 16-bit arrays up to 65,535 nodes
    (800 MB at 10k nodes would be a float64 matrix; this is 400 MB for both).
    Computed on first use, so a version superseded in the same instant costs
    nothing.
    """

    def __init__(
        self, names: list[str], index: Mapping[str, int], edges: Edges, alive: Any
    ) -> None:
        self.names = names
        self.index = index
        self.size = len(names)
        self.edges = edges
        self.alive = alive
        """Per node: running at this version (crashed nodes keep their index)."""
        n = self.size
        both_u = np.concatenate([edges.u, edges.v])
        both_v = np.concatenate([edges.v, edges.u])
        self.costs = csr_array(
            (np.concatenate([edges.cost, edges.cost]).astype(np.float64), (both_u, both_v)),
            shape=(n, n),
        )
        self.costs.sort_indices()
        self._delays: Any = None
        max_cost = int(edges.cost.max()) if len(edges.cost) else 1
        # Any finite distance is at most (n - 1) * max_cost; the sentinel must stay above it
        # (and above it minus one link, see _next_hops), so the dtype follows from that bound.
        bound = n * max_cost
        if bound < np.iinfo(np.uint16).max and n <= np.iinfo(np.uint16).max:
            self._dtype: Any = np.uint16
        else:
            self._dtype = np.uint32
        self.unreachable = int(np.iinfo(self._dtype).max)
        ratio = edges.delay / edges.cost if len(edges.cost) else np.zeros(0)
        self.delay_per_cost: float | None = None
        """Set when every link's delay is the same multiple of its cost."""
        self.delay_per_hop: float | None = None
        """Set when every link has the same delay."""
        if len(ratio) and np.allclose(ratio, ratio[0], rtol=1e-12, atol=0.0):
            self.delay_per_cost = float(ratio[0])
        if len(ratio) and np.allclose(edges.delay, edges.delay[0], rtol=1e-12, atol=0.0):
            self.delay_per_hop = float(edges.delay[0])
        self._hop_dial: BitParallelDial | None = None
        self._dist: Any = None
        self._codes: Any = None
        self._keys: list[Any] = []
        """Per hub row: its distinct next-hop sets as packed bit keys (code - 1 -> key)."""
        self._decoded: list[dict[int, frozenset[str]] | None] = []
        self._intern: dict[frozenset[str], frozenset[str]] = {}
        self._labels: Any = None

    # --- computing ---------------------------------------------------------------------

    @property
    def dist(self) -> Any:
        """The N x N distance matrix (computed on first use)."""
        if self._dist is None:
            self.compute()
        return self._dist

    @property
    def labels(self) -> Any:
        """Connected component of every node (a dead node is a component of its own)."""
        if self._labels is None:
            _, self._labels = connected_components(self.costs, directed=False)
        return self._labels

    def compute(self) -> None:
        """All-pairs distances, then next-hop codes.

        Small integer costs (at most :data:`DIAL_MAX_COST`, the usual case) use
        :class:`BitParallelDial`, 64 sources per pass (~6x faster than scipy's
        Dijkstra on unit costs, ~3x on costs 1..5); other costs use scipy.
        """
        if self._dist is not None:
            return
        n = self.size
        dist = np.empty((n, n), dtype=self._dtype)
        max_cost = int(self.edges.cost.max()) if len(self.edges.cost) else 0
        if 0 < max_cost <= DIAL_MAX_COST:
            dial = BitParallelDial(self.costs)
            for start in range(0, n, 64):
                dial.distances(np.arange(start, min(n, start + 64)), dist[start : start + 64])
        else:
            for start in range(0, n, _CHUNK):
                rows = dijkstra(
                    self.costs, directed=True, indices=np.arange(start, min(n, start + _CHUNK))
                )
                rows[~np.isfinite(rows)] = self.unreachable
                dist[start : start + len(rows)] = rows.astype(self._dtype)
        self._dist = dist
        self._codes = np.zeros((n, n), dtype=self._dtype)
        self._keys = [None] * n
        self._decoded = [None] * n
        for s in range(n):
            self._next_hops(s)

    def _next_hops(self, s: int) -> None:
        """Row ``s`` of the codes: neighbour ``m`` is a next hop to ``d`` exactly when
        ``cost(s, m) + dist(m, d) == dist(s, d)`` (every shortest path, as networkx's truth)."""
        lo, hi = self.costs.indptr[s], self.costs.indptr[s + 1]
        if lo == hi:
            return
        neighbours = self.costs.indices[lo:hi]
        work = np.int32 if self._dtype is np.uint16 else np.int64
        link_costs = self.costs.data[lo:hi].astype(work)
        row = self._dist[s].astype(work)
        # dist(m, d) == dist(s, d) - cost(s, m); an unreachable d (sentinel) never matches,
        # since a finite distance stays below the sentinel minus any link cost.
        tight = self._dist[neighbours] == (row[None, :] - link_costs[:, None])
        tight[:, s] = False
        packed = np.packbits(tight, axis=0, bitorder="little")
        if len(neighbours) <= _MASK_NEIGHBOURS:
            codes = packed[0].astype(self._dtype)
            if len(packed) > 1:
                codes |= packed[1].astype(self._dtype) << 8
            self._codes[s] = codes
            return
        # A hub: number its distinct sets; they are decoded when first asked for.
        keys = np.ascontiguousarray(packed.T).view(np.dtype((np.void, len(packed)))).ravel()
        unique, inverse = np.unique(keys, return_inverse=True)
        codes = inverse.astype(np.int64) + 1
        if not any(unique[0].tobytes()):
            codes[inverse == 0] = 0  # the empty set (sorted first) is code 0, as everywhere
        self._codes[s] = codes
        self._keys[s] = unique

    def release_next_hops(self) -> None:
        """Keep distances only (stretch of messages sent under this version still needs them)."""
        self._codes = None
        self._keys = []
        self._decoded = []

    # --- reading -----------------------------------------------------------------------

    def next_hops(self, s: int, j: int) -> frozenset[str]:
        """The next-hop set of row ``s`` towards column ``j`` (decoded once, then cached)."""
        if self._codes is None:
            self.compute()
        code: int = self._codes.item(s, j)
        if code == 0:
            return _EMPTY
        decoded = self._decoded[s]
        if decoded is None:
            decoded = self._decoded[s] = {}
        found = decoded.get(code)
        if found is None:
            found = decoded[code] = self._decode(s, code)
        return found

    def _decode(self, s: int, code: int) -> frozenset[str]:
        keys = self._keys[s]
        mask = code if keys is None else int.from_bytes(keys[code - 1].tobytes(), "little")
        lo = int(self.costs.indptr[s])
        indices = self.costs.indices
        members = frozenset(
            self.names[int(indices[lo + bit])]
            for bit in range(mask.bit_length())
            if mask >> bit & 1
        )
        return self._intern.setdefault(members, members)

    def farthest(self) -> Any:
        """Per node, the distance to the farthest node it reaches (0 when alone)."""
        n = self.size
        out = np.zeros(n, dtype=np.float64)
        for start in range(0, n, _CHUNK):
            rows = self.dist[start : start + _CHUNK]
            out[start : start + len(rows)] = np.where(rows == self.unreachable, 0, rows).max(axis=1)
        return out

    def position(self, node: object) -> int | None:
        """``node``'s row and column, or None when it was unknown at this version."""
        j = self.index.get(node) if isinstance(node, str) else None
        return None if j is None or j >= self.size else j

    def cost(self, s: int, j: int) -> int | None:
        """The distance of row ``s`` to column ``j``; None when unreachable."""
        value: int = self.dist.item(s, j)
        return None if value == self.unreachable else value

    def delay_rows(self, points: list[int]) -> Any:
        """Shortest *delay* from each of ``points`` to every node (inf: unreachable).

        Delays proportional to costs (equal costs and delays, the common case)
        reuse the distance matrix; equal delays are hop counts (bit-parallel
        BFS, 64 points a pass); anything else is one scipy Dijkstra per point.
        """
        if self.delay_per_cost is not None:
            rows = self.dist[points].astype(np.float64)
            rows[rows == self.unreachable] = np.inf
            return rows * self.delay_per_cost
        e = self.edges
        n = self.size
        both = (np.concatenate([e.u, e.v]), np.concatenate([e.v, e.u]))
        if self.delay_per_hop is not None:
            if self._hop_dial is None:
                ones = csr_array((np.ones(2 * len(e.u)), both), shape=(n, n))
                ones.sort_indices()
                self._hop_dial = BitParallelDial(ones)
            hops = np.empty((len(points), n), dtype=np.uint32)
            for start in range(0, len(points), 64):
                chunk = np.asarray(points[start : start + 64], dtype=np.int64)
                self._hop_dial.distances(chunk, hops[start : start + 64])
            rows = hops.astype(np.float64)
            rows[hops == np.iinfo(np.uint32).max] = np.inf
            return rows * self.delay_per_hop
        if self._delays is None:
            self._delays = csr_array((np.concatenate([e.delay, e.delay]), both), shape=(n, n))
        return dijkstra(self._delays, directed=True, indices=np.asarray(points, dtype=np.int64))


# --- one installed version: paths plus what every node offers ----------------------------------


Offers = tuple[tuple[tuple[str, int], ...], frozenset[str]]
"""(sorted (service, weight) pairs, subjects) one node advertises."""


class RouteSnapshot:
    """What every node's link-state database holds once a change has flooded: paths + offers.

    Also the ground truth of its version (``distance``, ``table``), so the
    simulator checks and measures against the very arrays the nodes route by
    (tests compare them with networkx through :class:`~mesh.sim.truth.GroundTruth`).
    """

    def __init__(self, paths: Paths, offers: Mapping[str, Offers], version: int) -> None:
        self.paths = paths
        self.offers = offers
        self.version = version
        self._tables: dict[str, SnapshotTable] = {}
        self._services: dict[int, dict[str, tuple[ServiceInstance, ...]]] = {}
        self._subjects: dict[int, dict[str, frozenset[str]]] = {}

    def table(self, node: str) -> RoutingTable:
        """``node``'s routing table under this version (one shared row, no copy)."""
        table = self._tables.get(node)
        if table is None:
            table = self._tables[node] = SnapshotTable(self.paths, self.paths.index[node])
        return table

    def distance(self, source: str, destination: str) -> int | None:
        """Shortest path cost, or None when there is no path (or a node is absent)."""
        i = self.paths.position(source)
        j = self.paths.position(destination)
        if i is None or j is None:
            return None
        return self.paths.cost(i, j)

    def services(self, node: str) -> dict[str, tuple[ServiceInstance, ...]]:
        """Service -> instances reachable from ``node`` (itself included), by node id."""
        label = int(self.paths.labels[self.paths.index[node]])
        cached = self._services.get(label)
        if cached is None:
            cached = self._services[label] = self._collect(label)[0]
        return cached

    def subjects(self, node: str) -> dict[str, frozenset[str]]:
        """Subject -> subscribed nodes reachable from ``node`` (itself included)."""
        label = int(self.paths.labels[self.paths.index[node]])
        cached = self._subjects.get(label)
        if cached is None:
            cached = self._subjects[label] = self._collect(label)[1]
        return cached

    def _collect(
        self, label: int
    ) -> tuple[dict[str, tuple[ServiceInstance, ...]], dict[str, frozenset[str]]]:
        labels = self.paths.labels
        by_service: dict[str, list[ServiceInstance]] = {}
        by_subject: dict[str, set[str]] = {}
        for node, (services, subjects) in sorted(self.offers.items()):
            j = self.paths.position(node)
            if j is None or int(labels[j]) != label:
                continue
            for name, weight in services:
                by_service.setdefault(name, []).append(ServiceInstance(node=node, weight=weight))
            for subject in subjects:
                by_subject.setdefault(subject, set()).add(node)
        return (
            {k: tuple(v) for k, v in sorted(by_service.items())},
            {k: frozenset(v) for k, v in sorted(by_subject.items())},
        )


class SnapshotTable(RoutingTable):
    """A node's routing table as a view of one row of :class:`Paths` (no per-node copy).

    Equal to (and hashable like) any :class:`RoutingTable` with the same routes.
    """

    __slots__ = ("_paths", "_row")

    def __init__(self, paths: Paths, row: int) -> None:
        super().__init__()
        self._paths = paths
        self._row = row

    def _column(self, destination: object) -> int | None:
        return self._paths.position(destination)

    def next_hops(self, destination: str) -> frozenset[str]:
        """As :meth:`RoutingTable.next_hops`, read from the shared row."""
        j = self._column(destination)
        return _EMPTY if j is None else self._paths.next_hops(self._row, j)

    def cost(self, destination: str) -> int | None:
        """As :meth:`RoutingTable.cost`, read from the shared row."""
        j = self._column(destination)
        return None if j is None else self._paths.cost(self._row, j)

    def cost_of(self, destination: str) -> int:
        """As :meth:`RoutingTable.cost_of`; KeyError when unreachable."""
        cost = self.cost(destination)
        if cost is None:
            raise KeyError(destination)
        return cost

    def hops_of(self, destination: str) -> frozenset[str]:
        """As :meth:`RoutingTable.hops_of`; KeyError when unreachable."""
        self.cost_of(destination)
        return self.next_hops(destination)

    def __getitem__(self, destination: str) -> Route:
        return Route(
            destination=destination,
            cost=self.cost_of(destination),
            next_hops=self.next_hops(destination),
        )

    def _reachable(self) -> Any:
        return np.flatnonzero(self._paths.dist[self._row] != self._paths.unreachable)

    def __iter__(self) -> Iterator[str]:
        names = self._paths.names
        return iter([names[j] for j in self._reachable().tolist()])

    def __len__(self) -> int:
        return len(self._reachable())

    def __contains__(self, destination: object) -> bool:
        j = self._column(destination)
        return j is not None and self._paths.cost(self._row, j) is not None


# --- the engine each fast core runs ------------------------------------------------------------


class ModelledLinkStateEngine:
    """A :class:`~mesh.routing.base.RoutingEngine` whose tables come from the :class:`FloodModel`.

    It sends no adverts and runs no SPF: the model installs a table when the
    flood of a change would have reached this node (:meth:`install`). Its own
    link and offer changes are reported to the model, which floods them.
    """

    kind = peer_pb2.ROUTING_ENGINE_LINK_STATE

    def __init__(self, node_id: str, model: FloodModel) -> None:
        self.node_id = node_id
        self._model = model
        self._neighbours: dict[str, int] = {}
        self._services: dict[str, int] = {}
        self._subjects: frozenset[str] = frozenset()
        self.snapshot: RouteSnapshot | None = None
        """The installed version; None until the first install."""
        self._table: RoutingTable = RoutingTable(
            {node_id: Route(destination=node_id, cost=0, next_hops=frozenset())}
        )

    def install(self, snapshot: RouteSnapshot) -> None:
        """The hook the model calls: from now on route by ``snapshot``."""
        self.snapshot = snapshot
        self._table = snapshot.table(self.node_id)

    def link_up(self, peer: str, cost: int, now: float) -> list[Outgoing]:
        """Record the neighbour; the model floods the change (nothing is sent from here)."""
        self._neighbours[peer] = cost
        self._model.engine_link_changed(self.node_id, peer, up=True)
        return []

    def link_down(self, peer: str, now: float) -> list[Outgoing]:
        """Forget the neighbour; the model floods the change (nothing is sent from here)."""
        if self._neighbours.pop(peer, None) is not None:
            self._model.engine_link_changed(self.node_id, peer, up=False)
        return []

    def set_local_offers(
        self, services: Mapping[str, int], subjects: Iterable[str], now: float
    ) -> list[Outgoing]:
        """As the real engine: replace the offers (weights >= 1); the model floods them.

        Raises :class:`~mesh.errors.InvalidArgument` for a weight below 1.
        """
        new_services = dict(services)
        new_subjects = frozenset(subjects)
        if any(w < 1 for w in new_services.values()):
            raise InvalidArgument("service weights must be >= 1")
        if new_services == self._services and new_subjects == self._subjects:
            return []
        self._services = new_services
        self._subjects = new_subjects
        self._model.offers_changed(
            self.node_id, (tuple(sorted(new_services.items())), new_subjects), now
        )
        return []

    def receive(self, peer: str, frame: peer_pb2.Frame, now: float) -> list[Outgoing]:
        """Never called in fast mode (nobody sends adverts); refused as the real engine would."""
        raise UnexpectedFrame("fast fidelity floods no adverts")

    def tick(self, now: float) -> list[Outgoing]:
        """No timers: refreshes and ageing have nothing to model between changes."""
        return []

    def next_wake(self) -> float | None:
        """Never: see :meth:`tick`."""
        return None

    @property
    def table(self) -> RoutingTable:
        """The installed table (only this node's own route before the first install)."""
        return self._table

    def services(self) -> Mapping[str, tuple[ServiceInstance, ...]]:
        """Service -> reachable instances under the installed version (own offers before)."""
        if self.snapshot is None:
            own = [
                (n, (ServiceInstance(node=self.node_id, weight=w),))
                for n, w in self._services.items()
            ]
            return dict(sorted(own))
        return self.snapshot.services(self.node_id)

    def subjects(self) -> Mapping[str, frozenset[str]]:
        """Subject -> reachable subscribers under the installed version (own ones before)."""
        if self.snapshot is None:
            return {s: frozenset({self.node_id}) for s in sorted(self._subjects)}
        return self.snapshot.subjects(self.node_id)


class FastNodeCore(NodeCore):
    """The production ``NodeCore`` with a :class:`ModelledLinkStateEngine` as its engine."""

    def __init__(
        self,
        identity: NodeIdentity,
        config: CoreConfig,
        *,
        random_bytes: RandomBytes,
        model: FloodModel,
    ) -> None:
        self._model = model  # before super().__init__, which makes the engine
        super().__init__(identity, config, random_bytes=random_bytes)

    def _make_engine(self) -> RoutingEngine:
        return self._model.engine_for(self.node_id)


# --- the flood model ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Origination:
    """``node`` originates a new advert at ``at`` (absolute virtual time)."""

    node: str
    at: float


Group = tuple[Origination, ...]
"""Adverts of which a node needs *any one* (the first to arrive) to see a change.

A cut is one group of both ends (either end's new advert breaks the two-way
check); a heal is two groups (the link is usable once both ends claim it).
A node's table changes when it has one advert of every group it can reach.
"""


@dataclass(slots=True)
class FloodCounts:
    """What the modelled floods would have put on the wire."""

    advert_frames: int = 0
    advert_bytes: int = 0
    identity_frames: int = 0
    """Identity records flooded at the cold start (untrusted meshes)."""
    identity_bytes: int = 0
    installs: int = 0
    """Tables installed (one per node per version it reached)."""
    unmodelled_link_changes: int = 0
    """Link changes a core made on its own (not a scenario event); not flooded."""


class FloodModel:
    """Link-state flooding of one :class:`FastCoreNetwork`, computed per change.

    Changes in one virtual instant are coalesced into one version (a partition
    of many links is one all-pairs recompute). Each node installs the version
    at ``max over groups (min over the group's adverts (origination + delay
    distance))``, never before the previous version it was due.
    """

    def __init__(self, net: FastCoreNetwork, *, signed_adverts: bool) -> None:
        self.net = net
        self.signed_adverts = signed_adverts
        self.names: list[str] = []
        self.index: dict[str, int] = {}
        self.engines: dict[str, ModelledLinkStateEngine] = {}
        self.offers: dict[str, Offers] = {}
        self.counts = FloodCounts()
        self.current: RouteSnapshot | None = None
        self._paths: Paths | None = None
        self._graph_dirty = True
        self._pending: list[Group] = []
        self._links_up: list[tuple[str, str]] = []
        self._partial: list[str] = []
        self._flood_identities = False
        self._flush_scheduled = False
        self._version = 0
        self._sequence: dict[str, int] = {}
        self._due: dict[str, float] = {}
        self._retiring: list[Paths] = []

    # --- what the network and the engines report ----------------------------------------------

    def engine_for(self, node: str) -> ModelledLinkStateEngine:
        """Make (and register) the engine of the core of ``node``: the model installs its tables."""
        engine = ModelledLinkStateEngine(node, self)
        self.engines[node] = engine
        self._name(node)
        return engine

    def engine_link_changed(self, node: str, peer: str, *, up: bool) -> None:
        """A core's engine saw a link come up or go down: expected when the graph agrees."""
        if self.net.graph.has_edge(node, peer) != up:
            self.counts.unmodelled_link_changes += 1

    def offers_changed(self, node: str, offers: Offers, now: float) -> None:
        """``node`` now offers ``offers``: a new advert, flooded like a link change."""
        self.offers[node] = offers
        self.change([(Origination(node, now),)], graph=False)

    def node_removed(self, node: str) -> None:
        """``node`` crashed: no more installs for it."""
        self.engines.pop(node, None)
        self._due.pop(node, None)

    def change(
        self,
        groups: Iterable[Group],
        *,
        graph: bool = True,
        links_up: Iterable[tuple[str, str]] = (),
        partial_floods: Iterable[str] = (),
        identities: bool = False,
    ) -> None:
        """Record adverts a change originates; they are flooded at the end of this instant.

        ``partial_floods``: origins of adverts superseded before the change settles
        (counted, not installed); ``identities``: identity records flood too (cold start).
        """
        self._pending.extend(groups)
        self._links_up.extend(links_up)
        self._partial.extend(partial_floods)
        self._flood_identities |= identities
        self._graph_dirty |= graph
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.net.schedule(self.net.now, self.flush)

    # --- versions --------------------------------------------------------------------------

    def _name(self, node: str) -> int:
        i = self.index.get(node)
        if i is None:
            # Grown in place: Paths built before ignore indices at or past their size.
            i = self.index[node] = len(self.names)
            self.names.append(node)
        return i

    def _edges(self) -> Edges:
        graph = self.net.graph
        u: list[int] = []
        v: list[int] = []
        cost: list[int] = []
        delay: list[float] = []
        default = self.net.delay
        for a, b, attrs in graph.edges(data=True):
            u.append(self._name(a))
            v.append(self._name(b))
            cost.append(int(attrs.get("cost", 1)))
            delay.append(float(attrs.get("delay_s", default)))
        return Edges(
            u=np.asarray(u, dtype=np.int64),
            v=np.asarray(v, dtype=np.int64),
            cost=np.asarray(cost, dtype=np.int64),
            delay=np.asarray(delay, dtype=np.float64),
        )

    def truth(self) -> RouteSnapshot:
        """The newest version (flushing changes of this instant first): what tables must be."""
        if self._pending or self.current is None or self._graph_dirty:
            self.flush()
        assert self.current is not None
        return self.current

    def flush(self) -> None:
        """Make the pending changes one version and schedule each node's install."""
        self._flush_scheduled = False
        if not self._pending and not self._graph_dirty and self.current is not None:
            return
        groups, self._pending = self._pending, []
        links_up, self._links_up = self._links_up, []
        old = self._paths
        if self._graph_dirty or self._paths is None:
            for node in self.net.graph.nodes:
                self._name(node)
            edges = self._edges()
            running = np.zeros(len(self.names), dtype=bool)
            running[[self.index[n] for n in self.net.graph.nodes]] = True
            self._paths = Paths(self.names, self.index, edges, running)
            self._graph_dirty = False
        paths = self._paths
        if old is not None and old is not paths:
            self._retiring.append(old)
        self._version += 1
        snapshot = RouteSnapshot(paths, dict(self.offers), self._version)
        self.current = snapshot
        now = self.net.now
        alive = [g for g in (self._alive_points(g) for g in groups) if g]
        arrival = self._arrival(alive, paths, now)
        self._count(alive, links_up, old, paths)
        by_time: dict[float, list[str]] = {}
        for node in sorted(self.engines):
            at = arrival[self.index[node]]
            at = now if not math.isfinite(at) or at < now else float(at)
            at = max(at, self._due.get(node, now))
            self._due[node] = at
            by_time.setdefault(at, []).append(node)
        for at in sorted(by_time):
            self.net.schedule(at, functools.partial(self._install, snapshot, by_time[at]))

    def _alive_points(self, group: Group) -> Group:
        return tuple(o for o in group if o.node in self.engines and self.net.graph.has_node(o.node))

    def _arrival(self, groups: list[Group], paths: Paths, now: float) -> Any:
        """Per node: when it holds one advert of every group it can reach (-inf: no group)."""
        result = np.full(paths.size, -np.inf)
        # A node needed alone several times: only its latest advert matters.
        latest: dict[str, Origination] = {}
        for group in groups:
            if len(group) == 1 and group[0].at >= latest.get(group[0].node, group[0]).at:
                latest[group[0].node] = group[0]
        singles = list(latest.values())
        groups = [g for g in groups if len(g) > 1]
        if (
            paths.delay_per_cost is not None
            and not groups
            and len(singles) == int(paths.alive.sum())
            and len({o.at for o in singles}) == 1
        ):
            # A cold start with equal link delays: every running node originates at the
            # same instant, so the last advert to reach v comes from v's farthest node.
            return singles[0].at + paths.delay_per_cost * paths.farthest()
        for start in range(0, len(singles), _CHUNK):
            chunk = singles[start : start + _CHUNK]
            rows = paths.delay_rows([self.index[o.node] for o in chunk])
            rows += np.asarray([o.at for o in chunk])[:, None]
            rows[~np.isfinite(rows)] = -np.inf
            np.maximum(result, rows.max(axis=0), out=result)
        for group in groups:
            rows = paths.delay_rows([self.index[o.node] for o in group])
            rows += np.asarray([o.at for o in group])[:, None]
            first = rows.min(axis=0)
            first[~np.isfinite(first)] = -np.inf
            np.maximum(result, first, out=result)
        return result

    def _install(self, snapshot: RouteSnapshot, nodes: list[str]) -> None:
        for node in nodes:
            engine = self.engines.get(node)
            if engine is None or (
                engine.snapshot is not None and engine.snapshot.version >= snapshot.version
            ):
                continue
            engine.install(snapshot)
            self.counts.installs += 1

    def installed_fraction(self) -> float:
        """Share of running nodes routing by the newest version (1.0: converged)."""
        current = self.truth()
        if not self.engines:
            return 1.0
        done = sum(
            1
            for e in self.engines.values()
            if e.snapshot is not None and e.snapshot.version == current.version
        )
        if done == len(self.engines):
            for paths in self._retiring:
                if paths is not current.paths:
                    paths.release_next_hops()
            self._retiring.clear()
        return done / len(self.engines)

    # --- what the floods cost --------------------------------------------------------------

    def advert_size(self, node: str, *, links: bool = True) -> int:
        """Bytes on the wire of ``node``'s advert frame as the real engine would build it
        (``links=False``: before any of its links was up)."""
        graph = self.net.graph
        services, subjects = self.offers.get(node, ((), frozenset()))
        advert = peer_pb2.LinkStateAdvert(
            origin=node,
            sequence=max(1, self._sequence.get(node, 1)),
            links=[
                peer_pb2.AdvertLink(neighbor=n, cost=int(graph.edges[node, n].get("cost", 1)))
                for n in sorted(graph.neighbors(node))
                if links
            ],
            services=[peer_pb2.ServiceInstance(name=n, weight=w) for n, w in services],
            subjects=sorted(subjects),
            signature=b"\x00" * SIGNATURE_BYTES if self.signed_adverts else b"",
        )
        return peer_pb2.Frame(advert=advert).ByteSize() + FRAME_OVERHEAD

    def identity_size(self, node: str) -> int:
        """Bytes on the wire of ``node``'s identity record frame."""
        record = next(iter(self.net.cores[node].directory))
        return peer_pb2.Frame(identity=record).ByteSize() + FRAME_OVERHEAD

    def _count(
        self,
        groups: list[Group],
        links_up: list[tuple[str, str]],
        old: Paths | None,
        paths: Paths,
    ) -> None:
        """Frames and bytes the real floods would send (see docs/simulation.md)."""
        labels = paths.labels
        nodes_in = np.bincount(labels[paths.alive], minlength=int(labels.max()) + 1)
        links_in = np.bincount(labels[paths.edges.u], minlength=len(nodes_in))
        counts = self.counts

        def flood_frames(label: int) -> int:
            return max(0, 2 * int(links_in[label]) - (int(nodes_in[label]) - 1))

        for node in sorted({o.node for g in groups for o in g}):
            self._sequence[node] = self._sequence.get(node, 0) + 1
            frames = flood_frames(int(labels[self.index[node]]))
            counts.advert_frames += frames
            counts.advert_bytes += frames * self.advert_size(node)
            if self._flood_identities:
                counts.identity_frames += frames
                counts.identity_bytes += frames * self.identity_size(node)
        sizes: dict[str, int] = {}
        for node in self._partial:
            if node in self.engines and self.net.graph.has_node(node):
                self._sequence[node] = self._sequence.get(node, 0) + 1
                frames = flood_frames(int(labels[self.index[node]]))
                if node not in sizes:
                    # A partial advert carries some of the links: on average half of them.
                    sizes[node] = (
                        self.advert_size(node) + self.advert_size(node, links=False)
                    ) // 2
                counts.advert_frames += frames
                counts.advert_bytes += frames * sizes[node]
        self._partial.clear()
        self._flood_identities = False
        if old is None:
            return
        # A link coming up exchanges whole databases (each end sends every advert it
        # holds); when it joins parts that were apart, each part's adverts are new to
        # the rest of the merged component and flood through it once.
        old_labels = old.labels
        old_alive = old.alive
        old_nodes = np.bincount(old_labels[old_alive], minlength=int(old_labels.max()) + 1)
        old_links = np.bincount(old_labels[old.edges.u], minlength=len(old_nodes))

        def part_of(node: str) -> int | None:
            i = old.index.get(node)
            if i is None or i >= old.size or not old_alive[i]:
                return None
            return int(old_labels[i])

        joined: dict[int, str] = {}
        for a, b in links_up:
            pa, pb = part_of(a), part_of(b)
            held = sum(int(old_nodes[p]) for p in (pa, pb) if p is not None)
            size = self.advert_size(a)
            counts.advert_frames += held
            counts.advert_bytes += held * size
            if pa != pb:
                for p, x in ((pa, a), (pb, b)):
                    if p is not None:
                        joined.setdefault(p, x)
        for part, member in sorted(joined.items()):
            whole = int(labels[self.index[member]])
            rest_links = int(links_in[whole]) - int(old_links[part])
            rest_nodes = int(nodes_in[whole]) - int(old_nodes[part])
            each = max(0, 2 * rest_links - rest_nodes + 1)
            extra = int(old_nodes[part]) * each
            counts.advert_frames += extra
            counts.advert_bytes += extra * self.advert_size(member)


# --- the network ---------------------------------------------------------------------------------


class FastCoreNetwork(CoreNetwork):
    """A :class:`CoreNetwork` whose link-state control plane is the :class:`FloodModel`.

    Identities are pre-shared (one dict for every key ring, not N per node).
    The real cores run with heartbeats off; what heartbeats decide is
    modelled: a silent failure is noticed ``dead_interval`` after the last
    heartbeat that got through, and heartbeat frames are counted, not sent.
    ``config`` holds the nominal timers being modelled.
    """

    def __init__(
        self,
        graph: nx.Graph,
        config: CoreConfig,
        *,
        seed: int = 0,
        delay: float = 0.005,
        identities: Mapping[str, NodeIdentity] | None = None,
        trusted: bool = False,
        reconnect_s: float | None = None,
        keep_messages: bool = True,
    ) -> None:
        self.nominal = config
        self.model = FloodModel(self, signed_adverts=not trusted)
        self._directory: dict[str, PublicIdentity] = {}
        self._opened_at: dict[frozenset[str], float] = {}
        self._heartbeat_spans: list[float] = []
        """Seconds each closed link was open (both directions send heartbeats)."""
        self._booting = True
        self._accounted = False
        self.modelled_frames: dict[str, int] = {}
        """Frames counted, not sent (filled by :meth:`finish_accounting`)."""
        quiet = dataclasses.replace(config, heartbeat_interval=_QUIET, dead_interval=2 * _QUIET)
        super().__init__(
            graph,
            quiet,
            seed=seed,
            delay=delay,
            identities=identities,
            preload_keys=True,
            trusted=True,  # identities pre-shared, identity frames not sent
            reconnect_s=reconnect_s,
            keep_messages=keep_messages,
        )
        self._booting = False
        self._boot()

    def _boot(self) -> None:
        """The cold start: each node's last advert leaves when its last link is up.

        Earlier ones (one per distinct instant a link of it comes up) are
        counted as floods too; with equal link delays and no jitter there is
        exactly one, with jitter one per link (hellos never arrive together).
        """
        groups: list[Group] = []
        extra: list[str] = []
        for node in sorted(self.cores):
            neighbours = list(self.graph.neighbors(node))
            times = sorted({self._hello_at(node, n) for n in neighbours})
            groups.append((Origination(node, times[-1] if times else self.now),))
            jittered = any(self._links[frozenset((node, n))].pipes[n].jitter for n in neighbours)
            extra += [node] * ((len(neighbours) if jittered else len(times)) - 1)
        self.model.change(groups, partial_floods=extra, identities=self.model.signed_adverts)

    # --- cores and identities ---------------------------------------------------------------

    def _make_core(self, identity: NodeIdentity) -> NodeCore:
        core = FastNodeCore(
            identity, self.config, random_bytes=self.random.randbytes, model=self.model
        )
        self._share_keys(core)
        return core

    def _share_keys(self, core: NodeCore) -> None:
        # One directory for every key ring: per-node copies are N^2 entries (~3 GB at 10k).
        core.keyring.share_directory(self._directory)

    def _preload_identities(self) -> None:
        """Nothing to do: every core shares the one directory from its creation."""

    def _share_identity(self, node: str) -> None:
        self._directory[node] = self._identities[node].public

    # --- links --------------------------------------------------------------------------------

    def _hello_at(self, node: str, peer: str) -> float:
        """When ``node`` hears ``peer``'s hello on a link opened now (the link comes up)."""
        link = self._links.get(frozenset((node, peer)))
        return self.now + (link.pipes[peer].delay if link is not None else self.delay)

    def _open_link(self, a: str, b: str) -> None:
        super()._open_link(a, b)
        self._opened_at[frozenset((a, b))] = self.now
        if not self._booting:
            self.model.change(
                [(Origination(a, self._hello_at(a, b)),), (Origination(b, self._hello_at(b, a)),)],
                links_up=[(a, b)],
            )

    def _drop_link(self, a: str, b: str) -> None:
        opened = self._opened_at.pop(frozenset((a, b)), None)
        if opened is not None:
            self._heartbeat_spans.append(self.now - opened)
        super()._drop_link(a, b)

    def cut(self, a: Hashable, b: Hashable) -> None:
        """As :meth:`CoreNetwork.cut`; both ends originate at once."""
        super().cut(a, b)
        now = self.now
        self.model.change([(Origination(str(a), now), Origination(str(b), now))])

    def cut_silently(self, a: Hashable, b: Hashable) -> None:
        """The link dies unannounced: each end notices ``dead_interval`` after the last
        heartbeat it heard (heartbeats only; data frames are not counted as heard)."""
        a, b = str(a), str(b)
        opened = self._opened_at.get(frozenset((a, b)), self.now)
        link = self._links.get(frozenset((a, b)))
        super().cut_silently(a, b)
        points: list[Origination] = []
        for x, y in ((a, b), (b, a)):
            pipe = link.pipes[y] if link is not None else None
            at = self._detected_at(opened, pipe)
            points.append(Origination(x, at))
            self.schedule(at, functools.partial(self._detect, x, y, opened))
        self.model.change([tuple(points)])

    def _detected_at(self, opened: float, pipe: Pipe | None) -> float:
        """``dead_interval`` after the last frame heard over ``pipe``: the last heartbeat
        (sent every interval since ``opened``) or the last other frame, if later."""
        interval = self.nominal.heartbeat_interval
        delay = pipe.delay if pipe is not None else self.delay
        beats = math.floor((self.now - delay - opened) / interval)
        last = opened + beats * interval + delay if beats >= 1 else opened
        if pipe is not None:
            # A frame still in flight was lost with the link; one had just arrived before it.
            last = max(last, min(pipe.last_arrival, self.now))
        return last + self.nominal.dead_interval

    def _detect(self, node: str, peer: str, opened: float) -> None:
        if node not in self.cores or frozenset((node, peer)) in self._links:
            return  # crashed meanwhile, or the link was reopened (it was heard again)
        self._apply(node, self.cores[node].link_down(peer, self.now))

    def set_cost(self, a: Hashable, b: Hashable, cost: int) -> None:
        """As :meth:`CoreNetwork.set_cost`; both ends originate at once."""
        super().set_cost(a, b, cost)
        now = self.now
        self.model.change([(Origination(str(a), now),), (Origination(str(b), now),)])

    def remove_node(self, node: Hashable, *, silently: bool = False) -> None:
        """As :meth:`CoreNetwork.remove_node`; its neighbours originate when they notice."""
        super().remove_node(node, silently=silently)
        self.model.node_removed(str(node))

    # --- accounting ---------------------------------------------------------------------------

    def finish_accounting(self) -> None:
        """Add the modelled adverts and heartbeats to the frame counts (once, at the end)."""
        if self._accounted:
            return
        self._accounted = True
        counts = self.model.counts
        self.stats.frames["advert"] += counts.advert_frames
        self.stats.bytes["advert"] += counts.advert_bytes
        if counts.identity_frames:
            self.stats.frames["identity"] += counts.identity_frames
            self.stats.bytes["identity"] += counts.identity_bytes
        interval = self.nominal.heartbeat_interval
        spans = self._heartbeat_spans + [self.now - t for t in self._opened_at.values()]
        # Heartbeats leave at opened + k * interval, k >= 1, while the link is open.
        beats = sum(2 * max(0, math.ceil(round(span / interval, 6)) - 1) for span in spans)
        if beats:
            sample = peer_pb2.Frame(
                heartbeat=peer_pb2.Heartbeat(
                    sequence=100,
                    sent_ms=int(self.now * 1000),
                    echo_sequence=100,
                    echo_delay_us=int(interval * 1e6),
                )
            )
            self.stats.frames["heartbeat"] += beats
            self.stats.bytes["heartbeat"] += beats * (sample.ByteSize() + FRAME_OVERHEAD)
        self.modelled_frames = {
            "advert": counts.advert_frames,
            "heartbeat": beats,
            "identity": counts.identity_frames,
        }

    def converged(self) -> bool:
        """Whether every running node routes by the newest version."""
        return self.model.installed_fraction() == 1.0

    def run_until_converged(self, max_time: float = 120.0, step: float = 0.05) -> float:
        """Advance in steps until every node installed the newest version; virtual seconds taken.

        Raises:
            AssertionError: not converged within ``max_time``.
        """
        started = self.now
        while not self.converged():
            if self.now - started > max_time:
                raise AssertionError(f"not converged after {max_time} virtual seconds")
            self.advance(step)
        return self.now - started


__all__ = [
    "DIAL_MAX_COST",
    "FAST_ABOVE_NODES",
    "BitParallelDial",
    "Edges",
    "FastCoreNetwork",
    "FastNodeCore",
    "FloodCounts",
    "FloodModel",
    "ModelledLinkStateEngine",
    "Origination",
    "Paths",
    "RouteSnapshot",
    "SnapshotTable",
    "resolve_fidelity",
]
