"""Simulator benchmark: link-state cold start of Barabasi-Albert meshes, then messages.

    .venv/bin/python bench/sim.py [--nodes 1000,10000] [--messages 100000] [--json PATH]
                                  [--fidelity auto|fast|full] [--quick]

For each size: trusted cores (pre-shared identities, unsigned adverts) boot
and converge on a virtual clock, then ``--messages`` async 256-byte messages
between random pairs are sent at 20,000 a second, each sealed at its source,
checked at every hop and opened at its destination by a real ``NodeCore``.
``auto`` runs meshes above 400 nodes in fast fidelity (flooding computed, see
docs/simulation.md); ``full`` delivers every advert as a frame.

Reported per size: wall and CPU seconds (the machine is shared: CPU time is
the steadier figure), the part spent in the all-pairs route computation,
discrete events per second (heap events actually processed), and
"equivalent" events per second (those plus the advert and heartbeat frames
fast mode counts instead of delivering: what a full-fidelity run would have
had to process), beside a bare heap loop that pops trivial events (the
floor). Peak RSS is the process's.

In full fidelity, a size whose estimated wall time exceeds ``--budget-s`` is
not run; its estimate (from the measured cost per event and the N x 2L
advert deliveries a flood needs) is reported instead, marked
``"estimated": true``.
"""

from __future__ import annotations

import argparse
import functools
import heapq
import itertools
import json
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _bootstrap  # noqa: F401  (before mesh: see bench/_bootstrap.py)

from mesh.sim import Scenario, Traffic, generate
from mesh.sim import fast as fast_mode
from mesh.sim.network import EPOCH
from mesh.sim.simulation import Simulation

RATE = 20_000.0
"""Messages per virtual second."""

TRAFFIC_START_S = 0.05
"""When traffic starts (virtual seconds): after the cold start has converged."""


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


class _Timed:
    """Wall seconds spent inside a wrapped function (here: the all-pairs computation)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        return timed


def run(nodes: int, messages: int, fidelity: str) -> dict[str, object]:
    graph = generate("barabasi-albert", nodes, seed=1)
    # The tables converge in ~10 ms of virtual time; traffic then sends exactly `messages`.
    # The simulator adds 1/RATE to an absolute time near 1.8e9 s, which rounds: replay
    # those additions to find when the last message leaves.
    last = EPOCH + TRAFFIC_START_S
    for _ in range(messages - 1):
        last += 1.0 / RATE
    scenario = Scenario(
        graph=graph,
        duration_s=last - EPOCH,
        drain_s=0.5,
        seed=1,
        trusted=True,
        convergence_resolution_ms=5,
        fidelity=fidelity,  # type: ignore[arg-type]
        traffic=(
            Traffic(
                kind="constant",
                rate_per_s=RATE,
                size=256,
                mode="async",
                start_s=TRAFFIC_START_S,
            ),
        ),
    )
    timer = _Timed()
    original = fast_mode.Paths.compute
    fast_mode.Paths.compute = timer.wrap(original)  # type: ignore[method-assign]
    try:
        started = time.perf_counter()
        cpu_started = time.process_time()
        sim = Simulation(scenario)
        built = time.perf_counter()
        report = sim.run().report
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    finally:
        fast_mode.Paths.compute = original  # type: ignore[method-assign]
    events = int(report["events_processed"])
    modelled = sum(report["modelled_frames"].values())
    running = wall - (built - started)
    return {
        "nodes": nodes,
        "links": graph.number_of_edges(),
        "fidelity": report["fidelity"],
        "build_s": round(built - started, 3),
        "routes_s": round(timer.seconds, 3),
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "events": events,
        "events_per_s": round(events / running, 1),
        "modelled_frames": report["modelled_frames"],
        "equivalent_events_per_s": round((events + modelled) / running, 1),
        "advert_frames": report["frames_by_kind"].get("advert", 0),
        "initial_convergence_s": report["initial_convergence_s"],
        "sent": report["sent"],
        "refused": sum(report["refused_at_source"].values()),
        "delivery_ratio": report["delivery_ratio"],
        "stretch": report["stretch"],
        "latency_ms_p50": report["latency_ms"]["p50"],
        "rss_mb_after": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "estimated": False,
    }


def _label(nodes: int) -> str:
    return f"{nodes // 1000}k" if nodes % 1000 == 0 else str(nodes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", default="1000,10000")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--fidelity", default="auto", choices=["auto", "fast", "full"])
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
        full = fast_mode.resolve_fidelity(args.fidelity, "link-state", nodes) == "full"
        expected_events = nodes * 2 * links + 10 * messages
        if full and per_event_s is not None and per_event_s * expected_events > args.budget_s:
            rows.append(
                {
                    "nodes": nodes,
                    "links": links,
                    "fidelity": "full",
                    "wall_s": round(per_event_s * expected_events, 1),
                    "events": expected_events,
                    "estimated": True,
                }
            )
            continue
        row = run(nodes, messages, args.fidelity)
        if full:
            per_event_s = 1.0 / float(row["events_per_s"])  # type: ignore[arg-type]
        rows.append(row)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    measured = [r for r in rows if not r["estimated"]]
    last = measured[-1] if measured else None
    result: dict[str, object] = {
        "rows": rows,
        "messages": messages,
        "events_per_s": last["events_per_s"] if last else None,
        "equivalent_events_per_s": last.get("equivalent_events_per_s") if last else None,
        "floor_events_per_s": round(floor, 1),
        "peak_rss_mb": round(peak_rss_mb, 1),
    }
    for r in rows:
        result[f"nodes_{_label(int(r['nodes']))}_wall_s"] = r["wall_s"]  # type: ignore[call-overload]
        result[f"nodes_{_label(int(r['nodes']))}_estimated"] = r["estimated"]  # type: ignore[call-overload]
    if last:
        result["events_per_s_vs_floor"] = round(float(last["events_per_s"]) / floor, 4)  # type: ignore[arg-type]
        result["equivalent_events_per_s_vs_floor"] = round(
            float(last["equivalent_events_per_s"]) / floor,  # type: ignore[arg-type]
            4,
        )
    header = (
        f"{'nodes':>7} {'links':>7} {'fidelity':>8} {'wall s':>8} {'cpu s':>8} {'routes s':>8} "
        f"{'events':>9} {'events/s':>9} {'equiv/s':>11} {'RSS MB':>7}  note"
    )
    print(header)
    for r in rows:
        if r["estimated"]:
            print(
                f"{r['nodes']:>7} {r['links']:>7} {r['fidelity']:>8} {r['wall_s']:>8} "
                f"{'-':>8} {'-':>8} {r['events']:>9} {'-':>9} {'-':>11} {'-':>7}  ESTIMATED"
            )
            continue
        print(
            f"{r['nodes']:>7} {r['links']:>7} {r['fidelity']:>8} {r['wall_s']:>8} "
            f"{r['cpu_s']:>8} {r['routes_s']:>8} {r['events']:>9} {r['events_per_s']:>9} "
            f"{r['equivalent_events_per_s']:>11} {r['rss_mb_after']:>7}  "
            f"converged in {r['initial_convergence_s']} s virtual, "
            f"delivery {r['delivery_ratio']}, stretch {r['stretch']}"
        )
    print(f"floor (bare heap loop): {floor:,.0f} events/s; peak RSS {peak_rss_mb:.0f} MB")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
