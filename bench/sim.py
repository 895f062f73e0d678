"""Simulator benchmark: link-state cold start of Barabasi-Albert meshes, then messages.

    .venv/bin/python bench/sim.py [--nodes 1000,10000] [--messages 100000] [--json PATH] [--quick]

For each size: real (trusted: unsigned adverts, pre-shared identities) cores
boot, flood and converge on a virtual clock, then ``--messages`` async
messages between random pairs are sent at a fixed rate. Reported: wall time,
simulator events per second, peak RSS, beside a bare heap loop that pops the
same number of trivial events (the floor).

A size whose estimated wall time exceeds ``--budget-s`` is not run; its
estimate (from the measured cost per event and the N x 2L advert deliveries
a flood needs) is reported instead, marked ``"estimated": true``.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import resource
import time
from pathlib import Path

import _bootstrap  # noqa: F401  (before mesh: see bench/_bootstrap.py)

from mesh.sim import Scenario, Traffic, generate
from mesh.sim.simulation import Simulation


def floor_events_per_s(count: int) -> float:
    events: list[tuple[float, int, int, object]] = []
    counter = itertools.count()
    for i in range(1000):
        heapq.heappush(events, (i * 0.001, next(counter), 0, None))
    started = time.perf_counter()
    for _ in range(count):
        at, _, kind, data = heapq.heappop(events)
        heapq.heappush(events, (at + 1.0, next(counter), kind, data))
    return count / (time.perf_counter() - started)


def run(nodes: int, messages: int) -> dict[str, object]:
    graph = generate("barabasi-albert", nodes, seed=1)
    rate = 20_000.0
    scenario = Scenario(
        graph=graph,
        duration_s=messages / rate,
        drain_s=0.5,
        seed=1,
        trusted=True,
        convergence_resolution_ms=50,
        traffic=(Traffic(kind="constant", rate_per_s=rate, size=256, mode="async"),),
    )
    started = time.perf_counter()
    sim = Simulation(scenario)
    built = time.perf_counter()
    report = sim.run().report
    wall = time.perf_counter() - started
    events = int(report["events_processed"])
    return {
        "nodes": nodes,
        "links": graph.number_of_edges(),
        "build_s": round(built - started, 3),
        "wall_s": round(wall, 3),
        "events": events,
        "events_per_s": round(events / (wall - (built - started)), 1),
        "advert_frames": report["frames_by_kind"].get("advert", 0),
        "initial_convergence_s": report["initial_convergence_s"],
        "sent": report["sent"],
        "delivery_ratio": report["delivery_ratio"],
        "estimated": False,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", default="1000,10000")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--budget-s", type=float, default=900.0)
    parser.add_argument("--quick", action="store_true", help="200 and 500 nodes, 10k messages")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sizes = [200, 500] if args.quick else [int(n) for n in args.nodes.split(",")]
    messages = 10_000 if args.quick else args.messages
    floor = floor_events_per_s(2_000_000)
    rows: list[dict[str, object]] = []
    per_event_s: float | None = None
    for nodes in sizes:
        links = 2 * nodes  # Barabasi-Albert with m=2
        expected_events = nodes * 2 * links + 10 * messages
        if per_event_s is not None and per_event_s * expected_events > args.budget_s:
            rows.append(
                {
                    "nodes": nodes,
                    "links": links,
                    "wall_s": round(per_event_s * expected_events, 1),
                    "events": expected_events,
                    "estimated": True,
                }
            )
            continue
        row = run(nodes, messages)
        per_event_s = 1.0 / float(row["events_per_s"])  # type: ignore[arg-type]
        rows.append(row)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    measured = [r for r in rows if not r["estimated"]]
    result = {
        "rows": rows,
        "nodes_10k_wall_s": next((r["wall_s"] for r in rows if r["nodes"] == 10_000), None),
        "nodes_10k_estimated": next((r["estimated"] for r in rows if r["nodes"] == 10_000), None),
        "events_per_s": measured[-1]["events_per_s"] if measured else None,
        "floor_events_per_s": round(floor, 1),
        "peak_rss_mb": round(peak_rss_mb, 1),
    }
    print(f"{'nodes':>7} {'links':>7} {'wall s':>9} {'events':>11} {'events/s':>10}  note")
    for r in rows:
        note = (
            "ESTIMATED (not run)"
            if r["estimated"]
            else f"converged in {r['initial_convergence_s']} s virtual"
        )
        rate = r.get("events_per_s", "-")
        size = f"{r['nodes']:>7} {r['links']:>7}"
        print(f"{size} {r['wall_s']:>9} {r['events']:>11} {rate!s:>10}  {note}")
    print(f"floor (bare heap loop): {floor:,.0f} events/s; peak RSS {peak_rss_mb:.0f} MB")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
