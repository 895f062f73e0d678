"""Fast fidelity: the same tables as full flooding and networkx, the same report shape, per seed."""

from __future__ import annotations

import random

import networkx as nx
import numpy as np
import pytest
from scipy.sparse import csr_array
from scipy.sparse.csgraph import dijkstra

from mesh.core import CoreConfig
from mesh.errors import InvalidArgument
from mesh.sim import CoreNetwork, Event, Scenario, Traffic, generate, simulate
from mesh.sim import fast as fast_mode
from mesh.sim.fast import BitParallelDial, FastCoreNetwork, resolve_fidelity
from mesh.sim.simulation import Simulation
from mesh.sim.truth import expected_tables
from nodes.commands.sim import report_json

CONFIG = CoreConfig(mesh_id="t", trace=True)

KINDS = ["erdos-renyi", "grid", "geometric", "barabasi-albert", "fat-tree", "star", "ring"]


def _graph(kind: str) -> nx.Graph:
    # A 24-node star's hub has 23 neighbours: the hub encoding, not the bit mask.
    return generate(kind, 24 if kind == "star" else 20, seed=3, costs=(1, 5))


def _cuttable(graph: nx.Graph) -> tuple[str, str]:
    """An edge whose loss keeps the graph connected when there is one (else any edge)."""
    bridges = {frozenset(e) for e in nx.bridges(graph)}
    for a, b in sorted(graph.edges):
        if frozenset((a, b)) not in bridges:
            return a, b
    a, b = sorted(graph.edges)[0]
    return a, b


@pytest.mark.parametrize("kind", KINDS)
def test_fast_tables_equal_full_flooding_and_networkx_before_and_after_a_cut(kind: str) -> None:
    graph = _graph(kind)
    full = CoreNetwork(graph, CONFIG, trusted=True)
    fast = FastCoreNetwork(graph, CONFIG, trusted=True)
    for net in (full, fast):
        net.run_until_converged()
    assert fast.tables() == full.tables() == expected_tables(fast.graph)
    a, b = _cuttable(graph)
    for net in (full, fast):
        net.cut(a, b)
        net.run_until_converged()
    assert fast.tables() == full.tables() == expected_tables(fast.graph)
    assert fast.model.counts.unmodelled_link_changes == 0


def test_every_row_decoded_from_distinct_sets_gives_the_same_tables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fast_mode, "_MASK_NEIGHBOURS", 0)  # every node as a hub
    graph = generate("erdos-renyi", 18, seed=4, costs=(1, 3))
    fast = FastCoreNetwork(graph, CONFIG)
    fast.run_until_converged()
    assert fast.tables() == expected_tables(fast.graph)


def test_bit_parallel_dial_equals_dijkstra_with_unreachable_nodes() -> None:
    rng = random.Random(7)
    graph = nx.gnp_random_graph(90, 0.04, seed=7)  # several components
    n = graph.number_of_nodes()
    u, v, w = [], [], []
    for a, b in graph.edges:
        cost = rng.randint(1, 7)
        u += [a, b]
        v += [b, a]
        w += [cost, cost]
    costs = csr_array((np.asarray(w, dtype=np.float64), (u, v)), shape=(n, n))
    costs.sort_indices()
    expected = dijkstra(costs, directed=True)
    expected[~np.isfinite(expected)] = np.iinfo(np.uint16).max
    out = np.empty((n, n), dtype=np.uint16)
    dial = BitParallelDial(costs)
    for start in range(0, n, 64):
        dial.distances(np.arange(start, min(n, start + 64)), out[start : start + 64])
    assert np.array_equal(out, expected.astype(np.uint16))


def _scenario(
    fidelity: str, seed: int = 5, costs: tuple[int, int] | None = (1, 4), **overrides: object
) -> Scenario:
    graph = generate("barabasi-albert", 30, seed=1, costs=costs)
    fields: dict[str, object] = {
        "graph": graph,
        "duration_s": 2.0,
        "seed": seed,
        "fidelity": fidelity,
        "traffic": (Traffic(kind="poisson", rate_per_s=150, size=64, mode="acknowledged"),),
        "events": (Event(at_s=1.0, cut=_cuttable(graph)),),
    }
    fields.update(overrides)
    return Scenario(**fields)  # type: ignore[arg-type]


def test_fast_report_is_the_same_byte_for_byte_per_seed() -> None:
    first = report_json({"x": simulate(_scenario("fast"))})
    assert first == report_json({"x": simulate(_scenario("fast"))})
    assert first != report_json({"x": simulate(_scenario("fast", seed=6))})


@pytest.mark.parametrize("kind", ["barabasi-albert", "geometric", "fat-tree"])
def test_fast_mode_without_failures_delivers_everything_on_shortest_paths(kind: str) -> None:
    scenario = Scenario(
        graph=generate(kind, 40, seed=2, costs=(1, 5)),
        duration_s=1.0,
        seed=1,
        fidelity="fast",
        traffic=(Traffic(kind="constant", rate_per_s=300, size=32, mode="async"),),
    )
    report = simulate(scenario).report
    assert report["fidelity"] == "fast"
    assert report["sent"] > 200
    assert report["delivery_ratio"] == 1.0
    assert report["stretch"] == 1.0 and report["stretch_max"] == 1.0
    assert report["loops_detected"] == 0
    assert report["convergence"][0]["converged_after_s"] is not None


@pytest.mark.parametrize(("trusted", "costs"), [(True, (1, 4)), (False, (1, 4)), (True, None)])
def test_with_equal_link_delays_the_cold_start_costs_what_real_flooding_sends(
    trusted: bool, costs: tuple[int, int] | None
) -> None:
    # Costs 1..4: delays are hop counts; all costs 1: delays follow the cost matrix.
    common: dict[str, object] = {
        "duration_s": 1.0,
        "trusted": trusted,
        "events": (),
        "costs": costs,
    }
    full = simulate(_scenario("full", **common)).report
    fast = simulate(_scenario("fast", **common)).report
    for key in ("control_messages", "control_bytes", "initial_convergence_s"):
        assert fast[key] == full[key], key
    for kind in ("advert", "heartbeat", "identity", "hello"):
        assert fast["frames_by_kind"].get(kind) == full["frames_by_kind"].get(kind), kind
    assert fast["delivered"] == full["delivered"]


def test_fast_mode_failures_converge_as_flooding_would_and_lose_nothing_acknowledged() -> None:
    def run(fidelity: str) -> dict[str, object]:
        scenario = Scenario(
            graph=generate("grid", 16, seed=0),
            duration_s=7.0,
            seed=3,
            fidelity=fidelity,  # type: ignore[arg-type]
            traffic=(
                Traffic(
                    kind="poisson",
                    rate_per_s=80,
                    mode="acknowledged",
                    sources=("n1",),
                    to=("n16",),
                    stop_s=5.0,
                ),
            ),
            events=(
                Event(at_s=1.0, cut=("n1", "n2")),
                Event(at_s=2.0, crash="n6"),
                Event(at_s=3.0, restart="n6"),
                Event(at_s=3.5, heal=("n1", "n2")),
                Event(at_s=4.0, partition=(("n1", "n2", "n5", "n6"),)),
                Event(at_s=4.5, heal_all=True),
                Event(at_s=5.0, cost=("n6", "n7", 5)),
            ),
        )
        sim = Simulation(scenario)
        report = sim.run().report
        assert sim.net.tables() == expected_tables(sim.net.graph)
        return report

    full, fast = run("full"), run("fast")
    assert fast["fidelity"] == "fast"
    assert [c["event"] for c in fast["convergence"]] == [c["event"] for c in full["convergence"]]
    for f, q in zip(full["convergence"], fast["convergence"], strict=True):  # type: ignore[call-overload]
        assert q["converged_after_s"] is not None
        # Virtual seconds: the crash is noticed a dead interval later in both modes.
        assert abs(q["converged_after_s"] - f["converged_after_s"]) <= 0.05
    acked = fast["acknowledged"]
    assert acked["acked"] == acked["sent"] > 100  # type: ignore[index]
    assert acked["pending_at_end"] == 0  # type: ignore[index]
    assert fast["failed"] == {} and fast["duplicates_delivered"] == 0
    # Adverts are counted, not sent; events are far fewer than flooding them one by one.
    assert fast["modelled_frames"]["advert"] > 0  # type: ignore[index]
    assert fast["events_processed"] < full["events_processed"]


def test_services_are_resolved_through_the_modelled_database() -> None:
    graph = generate("ring", 8, seed=0)
    graph.nodes["n5"]["services"] = {"echo": 1}
    scenario = Scenario(
        graph=graph,
        duration_s=1.0,
        seed=2,
        fidelity="fast",
        traffic=(Traffic(kind="constant", rate_per_s=50, mode="request", service="echo", size=16),),
    )
    report = simulate(scenario).report
    assert report["requests"]["sent"] > 20
    assert report["requests"]["replied"] == report["requests"]["sent"]


def test_auto_fidelity_is_fast_only_for_large_link_state_meshes() -> None:
    big = fast_mode.FAST_ABOVE_NODES + 1
    assert resolve_fidelity("auto", "link-state", big) == "fast"
    assert resolve_fidelity("auto", "link-state", 50) == "full"
    assert resolve_fidelity("auto", "distance-vector", big) == "full"
    assert resolve_fidelity("full", "link-state", big) == "full"
    with pytest.raises(InvalidArgument, match="link-state"):
        resolve_fidelity("fast", "distance-vector", 10)
    with pytest.raises(InvalidArgument, match="unknown fidelity"):
        resolve_fidelity("quick", "link-state", 10)


def test_large_costs_use_wider_distances_and_stay_exact() -> None:
    graph = generate("erdos-renyi", 20, seed=5, costs=(3000, 9000))  # 20 x 9000 > 65535
    fast = FastCoreNetwork(graph, CONFIG)
    fast.run_until_converged()
    assert fast.model.truth().paths.dist.dtype == np.uint32
    assert fast.tables() == expected_tables(fast.graph)
