"""The simulator: determinism, ground truth on every generated kind, failures, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import networkx as nx
import pytest
from typer.testing import CliRunner

from mesh.sim import KINDS, Event, Scenario, Traffic, generate, simulate
from mesh.sim.simulation import Simulation
from nodes.cli import app
from nodes.commands.sim import load_scenario, report_json, topology_yaml
from nodes.config import ConfigError, load_topology

SCENARIOS = Path(__file__).resolve().parents[3] / "deploy" / "scenarios"


def small(seed: int = 5, **overrides: object) -> Scenario:
    graph = generate("erdos-renyi", 12, seed=1, costs=(1, 4))
    fields: dict[str, object] = {
        "graph": graph,
        "duration_s": 3.0,
        "seed": seed,
        "traffic": (Traffic(kind="poisson", rate_per_s=100, size=64, mode="acknowledged"),),
        "events": (Event(at_s=1.0, cut=tuple(sorted(next(iter(graph.edges))))),),
    }
    fields.update(overrides)
    return Scenario(**fields)  # type: ignore[arg-type]


def test_same_seed_same_report_byte_for_byte() -> None:
    first = report_json({"x": simulate(small())})
    second = report_json({"x": simulate(small())})
    assert first == second


def test_a_different_seed_gives_a_different_report() -> None:
    assert report_json({"x": simulate(small(5))}) != report_json({"x": simulate(small(6))})


@pytest.mark.parametrize("kind", KINDS)
def test_no_failures_means_every_message_delivered_on_a_shortest_path(kind: str) -> None:
    graph = generate(kind, 16, seed=2, costs=(1, 5))
    scenario = Scenario(
        graph=graph,
        duration_s=1.5,
        seed=1,
        traffic=(Traffic(kind="constant", rate_per_s=200, size=32, mode="async"),),
    )
    report = simulate(scenario).report
    assert report["sent"] > 100
    assert report["delivery_ratio"] == 1.0
    assert report["stretch"] == 1.0 and report["stretch_max"] == 1.0
    assert report["loops_detected"] == 0
    assert report["convergence"][0]["converged_after_s"] is not None


@pytest.mark.parametrize("engine", ["link-state", "distance-vector"])
def test_failures_record_convergence_and_lose_no_acknowledged_message(engine: str) -> None:
    graph = generate("grid", 16, seed=0)
    scenario = Scenario(
        graph=graph,
        duration_s=8.0,
        seed=3,
        traffic=(
            Traffic(
                kind="poisson",
                rate_per_s=100,
                size=128,
                mode="acknowledged",
                sources=("n1",),
                to=("n16",),
                stop_s=4.0,
            ),
        ),
        events=(
            Event(at_s=1.0, cut=("n1", "n2")),
            Event(at_s=2.0, crash="n5"),
            Event(at_s=3.0, restart="n5"),
            Event(at_s=3.5, heal=("n1", "n2")),
        ),
    )
    report = simulate(scenario, engine=engine).report
    assert [c["event"] for c in report["convergence"]] == [
        "start",
        "cut n1-n2",
        "crash n5",
        "restart n5",
        "heal n1-n2",
    ]
    assert all(c["converged_after_s"] is not None for c in report["convergence"])
    # n1 keeps a path to n16 throughout (after detection), so nothing acknowledged is lost.
    assert report["acknowledged"]["acked"] == report["acknowledged"]["sent"] > 200
    assert report["delivered"] == report["sent"]
    assert report["acknowledged"]["pending_at_end"] == 0
    assert report["failed"] == {}
    assert report["duplicates_delivered"] == 0
    if engine == "link-state":
        assert report["loops_detected"] == 0


def test_a_partitioned_mesh_delivers_acknowledged_traffic_after_healing() -> None:
    graph = nx.path_graph(["a", "b", "c", "d"])
    scenario = Scenario(
        graph=graph,
        duration_s=6.0,
        seed=1,
        traffic=(
            Traffic(
                kind="constant",
                rate_per_s=50,
                mode="acknowledged",
                sources=("a",),
                to=("d",),
                stop_s=3.0,
            ),
        ),
        events=(Event(at_s=1.0, partition=(("a", "b"),)), Event(at_s=2.5, heal_all=True)),
    )
    report = simulate(scenario).report
    assert report["convergence"][1]["event"].startswith("partition")
    assert report["acknowledged"]["acked"] == report["acknowledged"]["sent"]
    assert report["acknowledged"]["pending_at_end"] == 0
    # Messages accepted during the partition were held until there was a path again:
    # their first copy left then, and is not counted as a retransmission.
    assert report["held_no_route"] > 0


def test_links_with_bandwidth_queue_and_loss_delay_but_keep_order() -> None:
    graph = nx.path_graph(["a", "b"])
    graph.edges["a", "b"].update(rate_mbit=1.0, loss=0.05)
    scenario = Scenario(
        graph=graph,
        duration_s=2.0,
        drain_s=3.0,
        traffic=(
            Traffic(
                kind="burst",
                rate_per_s=2,
                burst_size=50,
                size=1000,
                mode="acknowledged",
                sources=("a",),
            ),
        ),
    )
    sim = Simulation(scenario)
    report = sim.run().report
    assert report["acknowledged"]["acked"] == report["acknowledged"]["sent"] > 0
    # 50 x ~1.1 KB at 1 Mbit/s is ~0.45 s of serialisation: the last of a burst waits.
    assert report["latency_ms"]["max"] > 300
    assert report["link_retransmissions"] > 0
    (row,) = report["link_load"]
    assert row["a"] == "a" and row["bytes_ab"] > 100_000


def test_generated_topologies_round_trip_through_the_topology_file(tmp_path: Path) -> None:
    graph = generate("geometric", 30, seed=4)
    path = tmp_path / "geo.yaml"
    path.write_text(topology_yaml(graph, "geo"), encoding="utf-8")
    loaded = load_topology(path).graph()
    assert sorted(loaded.edges) == sorted(graph.edges)
    assert all(loaded.edges[e]["cost"] == graph.edges[e]["cost"] >= 1 for e in graph.edges)
    assert list(generate("geometric", 30, seed=4).edges(data=True)) == list(graph.edges(data=True))


@pytest.mark.parametrize("name", ["ring6-cut.yaml", "demo-failover.yaml", "ba100.yaml"])
def test_shipped_scenarios_load(name: str) -> None:
    scenario = load_scenario(SCENARIOS / name)
    assert scenario.graph.number_of_nodes() >= 6
    assert scenario.traffic


BAD = {
    "unknown node in an event": (
        "events:\n  - {at_s: 1, cut: [a, zz]}\n",
        "events[0].cut: 'zz' is not a node of the topology",
    ),
    "negative delay": (
        "link_defaults: {delay_ms: -1}\n",
        "link_defaults.delay_ms: Input should be greater than or equal to 0",
    ),
    "zero cost in an event": (
        "events:\n  - {at_s: 1, cost: [a, b, 0]}\n",
        "events[0].cost[2]: Input should be greater than or equal to 1",
    ),
    "zero link cost": (
        "links_extra: true\n",
        "links_extra: unknown field",
    ),
    "two actions": (
        "events:\n  - {at_s: 1, crash: a, restart: b}\n",
        "events[0]: needs exactly one of",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_scenario_is_refused_with_file_field_and_reason(tmp_path: Path, case: str) -> None:
    text, expected = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(
        "nodes: {a: {}, b: {}, c: {}}\nlinks: [{a: a, b: b}, {a: b, b: c, cost: 2}]\n" + text,
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_scenario(path)
    assert f"{path}: {expected}" in str(caught.value)


def test_a_zero_cost_link_in_an_inline_topology_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("nodes: {a: {}, b: {}}\nlinks: [{a: a, b: b, cost: 0}]\n", encoding="utf-8")
    with pytest.raises(
        ConfigError, match=r"links\[0\]\.cost: Input should be greater than or equal to 1"
    ):
        load_scenario(path)


def test_a_relative_topology_path_is_relative_to_the_scenario_file(tmp_path: Path) -> None:
    (tmp_path / "topo").mkdir()
    (tmp_path / "topo" / "t.yaml").write_text(
        "mesh: t\nrouting: distance-vector\nnodes: {a: {}, b: {}}\nlinks: [{a: a, b: b}]\n",
        encoding="utf-8",
    )
    (tmp_path / "s.yaml").write_text("topology: topo/t.yaml\nduration_s: 1\n", encoding="utf-8")
    scenario = load_scenario(tmp_path / "s.yaml")
    assert scenario.routing == "distance-vector"
    assert sorted(scenario.graph.nodes) == ["a", "b"]
    report = json.loads(report_json({"x": simulate(scenario)}))
    assert report["convergence"][0]["converged_after_s"] is not None


def test_the_fidelity_is_chosen_in_the_file_and_a_bad_one_refused(tmp_path: Path) -> None:
    base = "nodes: {a: {}, b: {}}\nlinks: [{a: a, b: b}]\nduration_s: 1\n"
    (tmp_path / "fast.yaml").write_text(base + "fidelity: fast\n", encoding="utf-8")
    assert load_scenario(tmp_path / "fast.yaml").fidelity == "fast"
    (tmp_path / "bad.yaml").write_text(base + "fidelity: quick\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="fidelity"):
        load_scenario(tmp_path / "bad.yaml")


def test_mesh_simulate_runs_a_scenario_with_the_fidelity_asked_for(tmp_path: Path) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text(
        "nodes: {a: {}, b: {}, c: {}}\nlinks: [{a: a, b: b}, {a: b, b: c}]\nduration_s: 1\n"
        "traffic: [{kind: constant, rate_per_s: 10, from: [a], to: [c]}]\n",
        encoding="utf-8",
    )
    report = tmp_path / "r.json"
    args = ["simulate", str(scenario), "--fidelity", "fast", "--json", str(report)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["fidelity"] == "fast"
    refused = CliRunner().invoke(
        app, [*args[:2], "--engine", "distance-vector", "--fidelity", "fast"]
    )
    assert refused.exit_code != 0
    assert "link-state" in refused.output
