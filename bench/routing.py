"""Routing benchmark: SPF speed against scipy and networkx, and engine convergence cost.

Two parts, both on seeded random connected graphs (average degree 8, integer
costs 1..100), so runs are comparable:

1. *Table computation*: time for the link-state engine's SPF to produce a full
   :class:`~mesh.routing.table.RoutingTable` (costs and equal-cost next-hop
   sets, as ``Route`` objects) from an LSDB of 1k, 10k and 50k nodes, right
   after one advert changed (so the CSR rebuild is included), beside
   ``scipy.sparse.csgraph.dijkstra`` and ``networkx.single_source_dijkstra``
   from the same source on the same graph, and the pure-Python fallback.
2. *Convergence*: every engine in :data:`ENGINES`, wired by the deterministic
   in-memory driver of the unit tests: frames, bytes and virtual time to
   converge from cold on 100 and 1,000 nodes, then the frames one link cut
   costs against the floor of 2 x links in the component.

Usage: ``python bench/routing.py [--quick] [--json PATH]``. ``--quick`` keeps
the 1k and 10k tables and the 100-node convergence (under a minute on two
cores; a cold link-state start on 1,000 nodes floods ~7M frames through the
Python driver, which takes a minute or two on its own).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
from rich.console import Console
from rich.table import Table
from scipy.sparse import csr_array
from scipy.sparse.csgraph import dijkstra

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the driver lives with the unit tests
    sys.path.insert(0, str(ROOT))


from mesh.routing.base import RoutingEngine  # noqa: E402
from mesh.routing.link_state import LinkStateEngine  # noqa: E402
from mesh.routing.spf import Topology, dijkstra_ecmp  # noqa: E402
from tests.unit.routing.driver import Driver, expected_table  # noqa: E402

ENGINES: dict[str, Callable[[str], RoutingEngine]] = {
    "link-state": LinkStateEngine,
}
try:  # written in parallel; the benchmark works before it exists
    from mesh.routing.distance_vector import DistanceVectorEngine  # type: ignore[import-not-found]
except ImportError:
    pass
else:
    ENGINES["distance-vector"] = DistanceVectorEngine

# Seconds an engine may keep a timer pending and still count as quiet (see
# Driver.run_until_quiet): an engine that defers triggered updates sets it here.
QUIET_IDLE: dict[str, float] = {}
QUIET_IDLE["distance-vector"] = 0.05  # DistanceVectorConfig().triggered_min_interval

DEGREE = 8
MAX_COST = 100


def random_mesh(n: int, seed: int, degree: int = DEGREE) -> nx.Graph:
    """A connected random graph: n nodes, ~n*degree/2 links, integer ``cost`` 1..MAX_COST."""
    rng = random.Random(seed)
    g = nx.gnm_random_graph(n, n * degree // 2, seed=seed)
    comps = [min(c) for c in nx.connected_components(g)]
    for a, b in itertools.pairwise(comps):
        g.add_edge(a, b)
    for u, v in g.edges:
        g.edges[u, v]["cost"] = rng.randint(1, MAX_COST)
    return nx.relabel_nodes(g, str)


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``fn`` in ms, GC off while timing (as timeit does)."""
    samples = []
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        try:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1000)
        finally:
            gc.enable()
    return statistics.median(samples)


def label(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 else str(n)


def bench_table(n: int, results: dict[str, Any]) -> list[str]:
    """SPF timings for one size; fills ``results`` and returns a table row."""
    g = random_mesh(n, seed=n)
    topo = Topology()
    for u in g.nodes:
        topo.set_links(u, {v: g.edges[u, v]["cost"] for v in g[u]})
    source = "0"
    # What the engine does after an advert changed: patch it in, recompute.
    node, peers = "1", {v: g.edges["1", v]["cost"] for v in g["1"]}
    first = min(peers)
    flip = [0]

    def recompute() -> object:
        flip[0] ^= 1
        topo.set_links(node, {**peers, first: peers[first] + flip[0]})
        return topo.routing_table(source)

    recompute()  # warm-up
    repeat = 15 if n <= 10_000 else 5
    table_ms = timed(recompute, repeat)
    table = topo.routing_table(source)

    index = {v: i for i, v in enumerate(g.nodes)}
    src, dst, w = [], [], []
    for u, v, c in g.edges(data="cost"):
        src += [index[u], index[v]]
        dst += [index[v], index[u]]
        w += [c, c]
    matrix = csr_array(
        (np.array(w, dtype=np.float64), (np.array(src), np.array(dst))), shape=(n, n)
    )
    scipy_ms = timed(lambda: dijkstra(matrix, directed=True, indices=index[source]), repeat)
    slow = 3 if n > 10_000 else 5
    nx_ms = timed(lambda: nx.single_source_dijkstra(g, source, weight="cost"), slow)
    adjacency = topo.adjacency()
    heapq_ms = timed(lambda: dijkstra_ecmp(adjacency, source), slow)
    if n <= 10_000:  # correctness of what was timed, against networkx
        assert table == expected_table(g, source), "SPF disagrees with networkx"
    k = label(n)
    results[f"table_{k}_ms"] = round(table_ms, 3)
    results[f"scipy_{k}_ms"] = round(scipy_ms, 3)
    results[f"networkx_{k}_ms"] = round(nx_ms, 3)
    results[f"heapq_{k}_ms"] = round(heapq_ms, 3)
    results[f"table_vs_scipy_{k}"] = round(table_ms / scipy_ms, 2)
    return [
        f"{n:,}",
        f"{g.number_of_edges():,}",
        f"{table_ms:.2f}",
        f"{scipy_ms:.2f}",
        f"{table_ms / scipy_ms:.2f}x",
        f"{heapq_ms:.1f}",
        f"{nx_ms:.1f}",
    ]


def bench_convergence(sizes: list[int], results: dict[str, Any]) -> list[list[str]]:
    """Cold-start convergence and the cost of one link cut, per engine and size."""
    rows = []
    for name, factory in ENGINES.items():
        key = name.replace("-", "_")
        for n in sizes:
            g = random_mesh(n, seed=7 + n)
            t0 = time.perf_counter()
            d = Driver(g, factory)
            idle = QUIET_IDLE.get(name, 0.0)
            cold = d.run_until_quiet(max_time=600.0, idle=idle)
            wall = time.perf_counter() - t0
            # Spot-check against the truth; recorded, not fatal, so one engine's
            # bug does not hide the other's figures.
            correct = all(
                d.engines[s].table == expected_table(d.graph, s) for s in ("0", str(n // 2))
            )
            # One change: cut a link whose loss keeps the mesh connected.
            bridges = set(nx.bridges(d.graph))
            u, v = next(
                e for e in sorted(d.graph.edges) if e not in bridges and e[::-1] not in bridges
            )
            d.cut(u, v)
            change = d.run_until_quiet(max_time=600.0, idle=idle)
            correct = correct and d.engines["0"].table == expected_table(d.graph, "0")
            minimum = 2 * d.graph.number_of_edges()
            results[f"{key}_converge_{n}_messages"] = cold.frames
            results[f"{key}_converge_{n}_bytes"] = cold.bytes
            results[f"{key}_converge_{n}_virtual_s"] = round(cold.elapsed, 6)
            results[f"{key}_converge_{n}_rounds"] = cold.rounds
            results[f"{key}_converge_{n}_wall_s"] = round(wall, 2)
            results[f"{key}_change_{n}_messages"] = change.frames
            results[f"{key}_change_{n}_minimum"] = minimum
            results[f"{key}_change_{n}_virtual_s"] = round(change.elapsed, 6)
            results[f"{key}_{n}_correct"] = correct
            rows.append(
                [
                    name,
                    f"{n:,}",
                    f"{d.graph.number_of_edges():,}",
                    f"{cold.frames:,}",
                    f"{cold.bytes / 1e6:.1f}",
                    f"{cold.elapsed:.3f} ({cold.rounds})",
                    f"{change.frames:,} / {minimum:,}",
                    f"{change.elapsed:.3f}",
                    f"{wall:.1f}",
                    "yes" if correct else "NO",
                ]
            )
    return rows


def show(title: str, header: list[str], rows: list[list[str]]) -> None:
    table = Table(title=title)
    for h in header:
        table.add_column(h, justify="right")
    for row in rows:
        table.add_row(*row)
    Console(width=160).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--quick", action="store_true", help="1k/10k tables, 100-node convergence")
    args = parser.parse_args(argv)

    results: dict[str, Any] = {"degree": DEGREE, "max_cost": MAX_COST, "quick": args.quick}
    table_sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 50_000]
    converge_sizes = [100] if args.quick else [100, 1_000]

    rows = [bench_table(n, results) for n in table_sizes]
    show(
        "Full routing table from the LSDB (ms, median)",
        ["nodes", "links", "link-state", "scipy", "ratio", "heapq (fallback)", "networkx"],
        rows,
    )
    rows = bench_convergence(converge_sizes, results)
    show(
        "Convergence on the in-memory driver (10 ms per link)",
        [
            "engine",
            "nodes",
            "links",
            "frames",
            "MB",
            "virtual s (rounds)",
            "one cut: frames / 2xlinks",
            "cut: virtual s",
            "wall s",
            "tables correct",
        ],
        rows,
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
