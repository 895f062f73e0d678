"""Shortest-path-first: Dijkstra from one node with equal-cost next-hop sets.

The link-state engine assembles a graph from the adverts it holds and needs,
for every reachable destination, the path cost and the set of neighbours that
start *some* shortest path (equal-cost multipath). This module provides:

- :class:`Topology`: the two-way-checked directed graph, kept incrementally in
  arrays so a recompute does not rebuild it from dicts. An edge ``u -> v`` with
  ``u``'s cost exists only while *both* ``u`` and ``v`` report each other (the
  OSPF two-way check), so a dead node's stale advert cannot attract traffic.
- :func:`shortest_paths`: SPF over a :class:`Topology`. With scipy it runs
  ``scipy.sparse.csgraph.dijkstra`` for distances, then derives the ECMP
  next-hop sets from the tight edges of the shortest-path DAG (see
  :func:`_ecmp_from_distances`); without scipy it falls back to
  :func:`dijkstra_ecmp`.
- :func:`dijkstra_ecmp`: the pure-Python reference (heapq with a counter for
  deterministic ties, as networkx does; next-hop sets as bitmasks over the
  source's neighbours, OR-ed along tight edges).

Costs are positive integers, so every predecessor on a shortest path is
settled before its successor and float64 distances (sums of integers far below
2**53) compare exactly.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mesh.routing.table import Route, RoutingTable

try:  # numpy/scipy make a 10k-node SPF ~8x faster; the engine works without them.
    import numpy as np
    from scipy.sparse import csr_array
    from scipy.sparse.csgraph import dijkstra as _scipy_dijkstra

    HAVE_SCIPY = True
except ImportError:  # pragma: no cover - exercised only where scipy is absent
    HAVE_SCIPY = False

__all__ = [
    "HAVE_SCIPY",
    "ShortestPaths",
    "Topology",
    "dijkstra_ecmp",
    "make_route",
    "shortest_paths",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class ShortestPaths:
    """The result of one SPF run from ``source``."""

    source: str
    """The node the paths start from."""
    cost: Mapping[str, int]
    """Reachable destination (the source included, at 0) -> shortest path cost."""
    next_hops: Mapping[str, frozenset[str]]
    """Reachable destination -> neighbours of the source starting a shortest path."""

    def to_table(self, previous: RoutingTable | None = None) -> RoutingTable:
        """The routing table for these paths, reusing unchanged routes of ``previous``.

        Reuse keeps the common case (one advert changed, most routes did not)
        from allocating a fresh :class:`Route` per destination.
        """
        routes: dict[str, Route] = {}
        hops = self.next_hops
        if previous is None:
            for d, c in self.cost.items():
                routes[d] = make_route(d, c, hops[d])
        else:
            get = previous.get
            for d, c in self.cost.items():
                h = hops[d]
                old = get(d)
                if old is not None and old.cost == c and old.next_hops == h:
                    routes[d] = old
                else:
                    routes[d] = make_route(d, c, h)
        return RoutingTable(routes)


# Building a Route through its slot descriptors skips keyword parsing in the
# generated frozen __init__ (which itself sets slots via object.__setattr__);
# it halves the cost of materialising a 10k-route table. The result is an
# ordinary, equal, hashable, immutable Route.
_new_route = Route.__new__
_set_destination = vars(Route)["destination"].__set__
_set_cost = vars(Route)["cost"].__set__
_set_next_hops = vars(Route)["next_hops"].__set__


def make_route(destination: str, cost: int, next_hops: frozenset[str]) -> Route:
    """``Route(destination=..., cost=..., next_hops=...)``, faster."""
    r = _new_route(Route)
    _set_destination(r, destination)
    _set_cost(r, cost)
    _set_next_hops(r, next_hops)
    return r


def dijkstra_ecmp(adjacency: Mapping[str, Mapping[str, int]], source: str) -> ShortestPaths:
    """Pure-Python Dijkstra from ``source`` with equal-cost next-hop sets.

    ``adjacency[u][v]`` is the (positive integer) cost of the directed edge
    ``u -> v``. The next-hop set of a destination is the OR of its tight
    predecessors' sets, where the source's own neighbours contribute their own
    bit; with positive costs every tight predecessor is settled (and its set
    final) before the destination is popped.
    """
    first = sorted(adjacency.get(source, {}))
    bit = {n: 1 << i for i, n in enumerate(first)}
    dist: dict[str, int] = {}
    seen: dict[str, int] = {source: 0}
    mask: dict[str, int] = {source: 0}
    counter = 0
    heap: list[tuple[int, int, str]] = [(0, 0, source)]
    pop, push = heapq.heappop, heapq.heappush
    while heap:
        d, _, u = pop(heap)
        if u in dist:
            continue
        dist[u] = d
        mu = mask[u]
        for v, w in adjacency.get(u, {}).items():
            nd = d + w
            contrib = bit[v] if u == source else mu
            old = seen.get(v)
            if old is None or nd < old:
                seen[v] = nd
                mask[v] = contrib
                counter += 1
                push(heap, (nd, counter, v))
            elif nd == old and v not in dist:
                mask[v] |= contrib
    sets = _mask_sets(first)
    return ShortestPaths(
        source=source,
        cost=dist,
        next_hops={v: sets(mask[v]) for v in dist},
    )


def _mask_sets(first: list[str]) -> Any:
    """A memoised ``mask -> frozenset of neighbours`` (many destinations share one)."""
    cache: dict[int, frozenset[str]] = {0: frozenset()}

    def sets(m: int) -> frozenset[str]:
        s = cache.get(m)
        if s is None:
            s = frozenset(n for i, n in enumerate(first) if m >> i & 1)
            cache[m] = s
        return s

    return sets


class Topology:
    """The directed, two-way-checked link graph, kept incrementally in arrays.

    ``set_links(u, links)`` records what ``u``'s advert claims; the usable
    graph holds ``u -> v`` (at ``u``'s cost) only while ``v`` claims ``u`` too.
    Node indices are stable while a node has a claim, so the edge arrays are
    patched in place (slots reused) rather than rebuilt; the CSR matrix scipy
    needs is built from them once per change of the graph, not per query.
    """

    __slots__ = (
        "_alive",
        "_claims",
        "_csr",
        "_dst",
        "_edges",
        "_free_nodes",
        "_free_slots",
        "_index",
        "_names",
        "_names_arr",
        "_nslots",
        "_pending",
        "_src",
        "_w",
        "version",
    )

    def __init__(self) -> None:
        self._claims: dict[str, dict[str, int]] = {}
        self._index: dict[str, int] = {}
        self._names: list[str | None] = []
        # The same names as a numpy object array, rebuilt only when the node set
        # changes: SPF output is then gathered by fancy indexing, not a Python loop.
        self._names_arr: Any = None
        self._free_nodes: list[int] = []
        # Usable directed edges: (u index, v index) -> slot in the arrays below.
        self._edges: dict[tuple[int, int], int] = {}
        self._free_slots: list[int] = []
        self._nslots = 0
        self._pending: dict[int, tuple[int, int, int] | None] = {}
        # numpy arrays when scipy is available (untyped: numpy stubs vary by version).
        self._src: Any = None
        self._dst: Any = None
        self._w: Any = None
        self._alive: Any = None
        if HAVE_SCIPY:
            self._src = np.zeros(64, dtype=np.intp)
            self._dst = np.zeros(64, dtype=np.intp)
            self._w = np.zeros(64, dtype=np.float64)
            self._alive = np.zeros(64, dtype=bool)
        self._csr: Any = None
        self.version = 0
        """Bumped on every change of the usable graph."""

    # --- claims ------------------------------------------------------------------

    def claims(self, node: str) -> Mapping[str, int]:
        """What ``node``'s advert says: neighbour -> cost (empty when unknown)."""
        return self._claims.get(node, {})

    def nodes(self) -> Iterable[str]:
        """Nodes with a claim (an advert)."""
        return self._claims.keys()

    def adjacency(self) -> dict[str, dict[str, int]]:
        """The usable (two-way) graph as ``u -> {v: cost}``, for the pure-Python path."""
        out: dict[str, dict[str, int]] = {}
        for u, links in self._claims.items():
            row: dict[str, int] = {}
            for v, c in links.items():
                back = self._claims.get(v)
                if back is not None and u in back:
                    row[v] = c
            out[u] = row
        return out

    def set_links(self, node: str, links: Mapping[str, int]) -> None:
        """Replace ``node``'s claimed links (neighbour -> positive integer cost)."""
        old = self._claims.get(node, {})
        new = dict(links)
        u = self._node_index(node)
        for v in old.keys() - new.keys():
            vi = self._index.get(v)
            if vi is not None:
                self._drop_edge(u, vi)
                self._drop_edge(vi, u)
        self._claims[node] = new
        for v, c in new.items():
            back = self._claims.get(v)
            if back is None or node not in back or v == node:
                continue
            vi = self._index[v]
            if old.get(v) != c or (u, vi) not in self._edges:
                self._put_edge(u, vi, c)
            if (vi, u) not in self._edges:
                self._put_edge(vi, u, back[node])

    def remove(self, node: str) -> None:
        """Forget ``node``'s claim entirely (its advert expired or was flushed)."""
        if node not in self._claims:
            return
        self.set_links(node, {})
        del self._claims[node]
        i = self._index.pop(node)
        self._names[i] = None
        self._names_arr = None
        self._free_nodes.append(i)

    def _node_index(self, node: str) -> int:
        i = self._index.get(node)
        if i is None:
            if self._free_nodes:
                i = self._free_nodes.pop()
                self._names[i] = node
            else:
                i = len(self._names)
                self._names.append(node)
            self._names_arr = None
            self._index[node] = i
        return i

    def _put_edge(self, u: int, v: int, cost: int) -> None:
        slot = self._edges.get((u, v))
        if slot is None:
            slot = self._free_slots.pop() if self._free_slots else self._new_slot()
            self._edges[(u, v)] = slot
        # Array writes are batched until the next SPF: numpy scalar stores cost
        # ~0.5 us each, and a flood of adverts changes many edges between SPFs.
        if HAVE_SCIPY:
            self._pending[slot] = (u, v, cost)
        self.version += 1
        self._csr = None

    def _drop_edge(self, u: int, v: int) -> None:
        slot = self._edges.pop((u, v), None)
        if slot is None:
            return
        if HAVE_SCIPY:
            self._pending[slot] = None
        self._free_slots.append(slot)
        self.version += 1
        self._csr = None

    def _new_slot(self) -> int:
        slot = self._nslots
        self._nslots += 1
        return slot

    def _flush(self) -> None:
        """Write pending edge changes into the arrays (growing them as needed)."""
        pending = self._pending
        if not pending:
            return
        self._grow(self._nslots)
        slots = np.fromiter(pending.keys(), dtype=np.intp, count=len(pending))
        rows = [e if e is not None else (0, 0, 0) for e in pending.values()]
        arr = np.array(rows, dtype=np.int64).reshape(-1, 3)
        self._src[slots] = arr[:, 0]
        self._dst[slots] = arr[:, 1]
        self._w[slots] = arr[:, 2]
        self._alive[slots] = np.fromiter(
            (e is not None for e in pending.values()), dtype=bool, count=len(pending)
        )
        pending.clear()

    def _grow(self, need: int) -> None:
        if need <= len(self._src):
            return
        size = max(need, 2 * len(self._src))
        for name in ("_src", "_dst", "_w", "_alive"):
            arr = getattr(self, name)
            grown = np.zeros(size, dtype=arr.dtype)
            grown[: len(arr)] = arr
            setattr(self, name, grown)

    # --- SPF ---------------------------------------------------------------------

    def _arrays(self) -> tuple[Any, Any, Any, Any]:
        """(csr matrix, src, dst, weight) of the usable edges, cached per version."""
        if self._csr is None:
            self._flush()
            n = max(len(self._names), 1)
            alive = self._alive[: self._nslots]
            src = self._src[: self._nslots][alive]
            dst = self._dst[: self._nslots][alive]
            w = self._w[: self._nslots][alive]
            csr = csr_array((w, (src, dst)), shape=(n, n))
            self._csr = (csr, src, dst, w)
        return self._csr  # type: ignore[no-any-return]

    def shortest_paths(self, source: str) -> ShortestPaths:
        """SPF from ``source`` over the usable graph (scipy when available)."""
        if source not in self._index:
            return ShortestPaths(source=source, cost={source: 0}, next_hops={source: frozenset()})
        if not HAVE_SCIPY:
            return dijkstra_ecmp(self.adjacency(), source)
        dests, costs, hops = self._spf_lists(source)
        return ShortestPaths(
            source=source,
            cost=dict(zip(dests, costs, strict=True)),
            next_hops=dict(zip(dests, hops, strict=True)),
        )

    def routing_table(self, source: str) -> RoutingTable:
        """The routing table of ``source``: SPF straight into routes, no intermediate maps."""
        if source not in self._index or not HAVE_SCIPY:
            return self.shortest_paths(source).to_table()
        dests, costs, hops = self._spf_lists(source)
        return RoutingTable.from_columns(dests, costs, hops)

    def _spf_lists(self, source: str) -> tuple[list[str], list[int], list[frozenset[str]]]:
        csr, src, dst, w = self._arrays()
        s = self._index[source]
        dist = _scipy_dijkstra(csr, directed=True, indices=s)
        if self._names_arr is None or len(self._names_arr) != len(dist):
            self._names_arr = np.array(
                self._names + [None] * (len(dist) - len(self._names)), dtype=object
            )
        return _ecmp_from_distances(self._names_arr, s, dist, src=src, dst=dst, w=w)


def shortest_paths(topology: Topology, source: str) -> ShortestPaths:
    """SPF from ``source`` over ``topology``; see :meth:`Topology.shortest_paths`."""
    return topology.shortest_paths(source)


def _ecmp_from_distances(
    names: Any, s: int, dist: Any, *, src: Any, dst: Any, w: Any
) -> tuple[list[str], list[int], list[frozenset[str]]]:
    """Next-hop sets from exact distances, mostly vectorised.

    An edge is tight when ``dist[u] + w == dist[v]``; the tight edges form the
    shortest-path DAG. A node with exactly one tight predecessor (other than
    the source) has that predecessor's next-hop set, so chains of such nodes
    are collapsed by pointer jumping onto their *root*: a neighbour of the
    source reached directly, or a node where equal-cost paths merge. Only the
    merge nodes (few with varied costs) are visited in Python, in order of
    distance, OR-ing their predecessors' sets as bitmasks.
    """
    n = len(dist)
    finite = np.isfinite(dist)
    dsrc = dist[src]
    # inf + w == inf: edges among unreachable nodes look tight; they only touch
    # nodes never reported, except via the merge loop, which skips them.
    tight = dsrc + w == dist[dst]
    tsrc = src[tight]
    tdst = dst[tight]
    indeg = np.bincount(tdst, minlength=n)
    parent = np.arange(n, dtype=np.int64)
    single = (indeg[tdst] == 1) & (tsrc != s)
    parent[tdst[single]] = tsrc[single]
    while True:
        jumped = parent[parent]
        if np.array_equal(jumped, parent):
            break
        parent = jumped

    first_idx = sorted(int(v) for v in dst[src == s])
    first = sorted(str(names[i]) for i in first_idx)
    bit_of_name = {name: 1 << i for i, name in enumerate(first)}
    bit = {i: bit_of_name[str(names[i])] for i in first_idx}
    root_mask: dict[int, int] = {}
    # Roots fed only by the source: their own bit.
    direct = tsrc == s
    for v in tdst[direct & (indeg[tdst] == 1)].tolist():
        root_mask[v] = bit[v]
    # Merge nodes, in order of distance so their predecessors' roots are done.
    merge = (indeg[tdst] > 1) & finite[tdst]
    if merge.any():
        msrc = tsrc[merge]
        mdst = tdst[merge]
        order = np.lexsort((mdst, dist[mdst]))
        proots = parent[msrc[order]].tolist()
        for v, p, pr in zip(mdst[order].tolist(), msrc[order].tolist(), proots, strict=True):
            contrib = bit[v] if p == s else root_mask[pr]
            root_mask[v] = root_mask.get(v, 0) | contrib

    sets = _mask_sets(first)
    root_set = np.empty(n, dtype=object)
    for r, m in root_mask.items():
        root_set[r] = sets(m)
    root_set[s] = frozenset()
    reach = np.flatnonzero(finite)
    dests: list[str] = names[reach].tolist()
    costs: list[int] = dist[reach].astype(np.int64).tolist()
    hops: list[frozenset[str]] = root_set[parent[reach]].tolist()
    return dests, costs, hops
