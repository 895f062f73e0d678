"""PNG charts of simulation results (matplotlib, optional).

Each function returns PNG bytes; the caller decides where they go (the core
writes no files). :func:`available` says whether matplotlib is installed.
"""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Mapping
from typing import Any

import networkx as nx

from mesh.sim.simulation import Result


def available() -> bool:
    """Whether matplotlib can be imported."""
    return importlib.util.find_spec("matplotlib") is not None


def _pyplot() -> Any:
    import matplotlib  # noqa: PLC0415 - optional dependency

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    # No timestamps in the metadata: the same run makes the same bytes.
    figure.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    _pyplot().close(figure)
    return buffer.getvalue()


def topology_load(result: Result, title: str = "") -> bytes:
    """The topology, each link's width and colour by the bytes it carried."""
    plt = _pyplot()
    graph = result.graph
    positions = nx.spring_layout(graph, seed=1) if graph.number_of_nodes() else {}
    loads = [result.link_load.get(tuple(sorted((u, v))), 0) for u, v in graph.edges]
    top = max(loads, default=0) or 1
    figure, axes = plt.subplots(figsize=(8, 6))
    nx.draw_networkx_edges(
        graph,
        positions,
        ax=axes,
        width=[0.5 + 5 * load / top for load in loads],
        edge_color=loads,
        edge_cmap=plt.get_cmap("viridis"),
    )
    nx.draw_networkx_nodes(graph, positions, ax=axes, node_size=40 if len(graph) > 60 else 200)
    if len(graph) <= 60:
        nx.draw_networkx_labels(graph, positions, ax=axes, font_size=7)
    axes.set_title(title or f"link load (bytes), max {top:,}")
    axes.axis("off")
    return _png(figure)


def latency_cdf(results: Mapping[str, Result]) -> bytes:
    """Delivery latency CDF, one line per engine."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name, result in results.items():
        values = result.latencies_ms
        if values:
            fractions = [(i + 1) / len(values) for i in range(len(values))]
            axes.step(values, fractions, where="post", label=name)
    axes.set_xscale("symlog", linthresh=1.0)
    axes.set_xlabel("latency (ms)")
    axes.set_ylabel("fraction delivered")
    axes.set_title("delivery latency CDF")
    axes.grid(True, alpha=0.3)
    axes.legend()
    return _png(figure)


def convergence_timeline(results: Mapping[str, Result]) -> bytes:
    """Fraction of nodes whose table matches the ground truth over time, events marked."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(9, 4.5))
    for name, result in results.items():
        if result.timeline:
            times, fractions = zip(*result.timeline, strict=True)
            axes.step(times, fractions, where="post", label=name, marker=".", markersize=3)
    first = next(iter(results.values()), None)
    if first is not None:
        for entry in first.report["convergence"]:
            axes.axvline(entry["at_s"], color="grey", linestyle=":", linewidth=0.8)
            axes.annotate(
                entry["event"],
                (entry["at_s"], 1.02),
                fontsize=7,
                rotation=30,
                xycoords=("data", "axes fraction"),
            )
        axes.set_xlim(0, first.report["duration_s"])
    axes.set_ylim(-0.02, 1.05)
    axes.set_xlabel("time (s)")
    axes.set_ylabel("tables matching ground truth")
    axes.legend(loc="lower right")
    figure.tight_layout()
    return _png(figure)


def charts(results: Mapping[str, Result]) -> dict[str, bytes]:
    """Every chart for one run (or one per engine with ``--compare``): file name -> PNG."""
    out: dict[str, bytes] = {}
    for name, result in results.items():
        out[f"topology-{name}.png"] = topology_load(result, f"{name}: link load (bytes)")
    out["latency-cdf.png"] = latency_cdf(results)
    out["convergence.png"] = convergence_timeline(results)
    return out


__all__ = ["available", "charts", "convergence_timeline", "latency_cdf", "topology_load"]
