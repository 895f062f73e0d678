"""Whole meshes as real processes: routes equal networkx's ground truth, messages cross them.

A 5-node line (link-state) and a 6-node ring with unequal costs
(distance-vector) are launched over mTLS; every node's table, read through the
real `mesh routes --json`, must equal :func:`mesh.sim.truth.expected_tables`.
Then a message crosses the line, a ring node is killed with SIGKILL and the
others route around it, and it rejoins after a restart.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from nodes.admin_client import pid_alive, read_state, table_of
from nodes.launcher import NODE_COMMAND, MeshHandle, down, expected_routes
from tests.integration.conftest import CLI_TIMEOUT, cli_json, run_cli

REROUTE_TIMEOUT = 20.0
"""Seconds the mesh may take to route around a dead node (dead interval 0.8 s + convergence)."""

Table = dict[str, tuple[int, frozenset[str]]]


@pytest.fixture(scope="module")
def line5(mesh_factory: Callable[..., MeshHandle]) -> MeshHandle:
    return mesh_factory("line5.yaml")


@pytest.fixture(scope="module")
def ring6(mesh_factory: Callable[..., MeshHandle]) -> MeshHandle:
    return mesh_factory("ring6.yaml")


def cli_routes(handle: MeshHandle) -> dict[str, Table]:
    """`mesh routes --node N --json` for every node, run concurrently."""
    running = {
        node: subprocess.Popen(
            [*NODE_COMMAND, "routes", "--node", node, "--state", str(handle.state_dir), "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in handle.nodes
    }
    tables: dict[str, Table] = {}
    for node, process in running.items():
        out, err = process.communicate(timeout=CLI_TIMEOUT)
        assert process.returncode == 0, f"mesh routes --node {node}: {err.strip()}"
        rows = json.loads(out)
        assert all(set(row) == {"destination", "cost", "next_hops"} for row in rows)
        tables[node] = {r["destination"]: (r["cost"], frozenset(r["next_hops"])) for r in rows}
    return tables


@pytest.mark.parametrize("name", ["line5", "ring6"])
def test_cli_routes_equal_ground_truth(request: pytest.FixtureRequest, name: str) -> None:
    handle: MeshHandle = request.getfixturevalue(name)
    expected = expected_routes(handle.topology.graph())
    assert cli_routes(handle) == expected
    # The ring has two ways round; its near-tie must not be mistaken for equal cost.
    if name == "ring6":
        assert expected["r1"]["r5"] == (10, frozenset({"r2"}))


def test_message_sent_at_one_end_arrives_at_the_other(line5: MeshHandle) -> None:
    state = str(line5.state_dir)
    receiver = subprocess.Popen(
        [
            *NODE_COMMAND,
            "receive",
            "--node",
            "n5",
            "--count",
            "1",
            "--timeout",
            "20",
            "--state",
            state,
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        body = {"order": 42, "items": ["widget"] * 50, "note": "from n1 to n5"}
        sent = cli_json("send", "n5", json.dumps(body), "--node", "n1", "--state", state)
        out, err = receiver.communicate(timeout=CLI_TIMEOUT)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    assert receiver.returncode == 0, err
    delivery = json.loads(out.splitlines()[0])
    assert delivery["message_id"] == sent["message_id"]
    assert delivery["source"] == "n1"
    assert delivery["destination"] == "n5"
    assert delivery["content_type"] == "json"
    assert delivery["body"] == body


def test_binary_body_crosses_the_line_intact(line5: MeshHandle) -> None:
    data = os.urandom(64 * 1024)
    with line5.client("n1", timeout=5.0) as near, line5.client("n5", timeout=5.0) as far:
        message_id = near.send("n5", data)
        deliveries = list(far.receive(count=1, timeout=10.0))
    assert [d.message_id for d in deliveries] == [message_id.hex()]
    assert deliveries[0].data == data
    assert deliveries[0].content_type == "raw"


def test_ring_routes_around_a_killed_node_and_takes_it_back(ring6: MeshHandle) -> None:
    full = ring6.topology.graph()
    without = full.copy()
    without.remove_node("r3")

    ring6.kill("r3")
    rerouted = ring6.wait_converged(without, timeout=REROUTE_TIMEOUT)
    with ring6.client("r2") as r2:
        # r2 reached r4 through r3 (cost 5); now only the long way round is left.
        assert table_of(r2.routes())["r4"] == (1 + 6 + 5 + 4, frozenset({"r1"}))
        assert "r3" not in table_of(r2.routes())

    ring6.restart("r3")
    rejoined = ring6.wait_converged(full, timeout=REROUTE_TIMEOUT)
    assert cli_routes(ring6) == expected_routes(full)
    assert rerouted < REROUTE_TIMEOUT
    assert rejoined < REROUTE_TIMEOUT


def test_cli_up_detached_status_and_down(tmp_path: Path) -> None:
    topology = tmp_path / "tri.yaml"
    topology.write_text(
        "mesh: tri\nnodes: {x: {}, y: {}, z: {}}\n"
        "links: [{a: x, b: y, cost: 2}, {a: y, b: z, cost: 2}, {a: x, b: z, cost: 5}]\n"
    )
    state = tmp_path / "state"
    try:
        up = run_cli("up", str(topology), "--state", str(state), "--detach", "--timeout", "30")
        assert up.returncode == 0, up.stderr
        assert "running detached" in up.stdout

        shown = cli_json("status", "--state", str(state))
        assert [row["node"] for row in shown["nodes"]] == ["x", "y", "z"]
        assert all(row["running"] and row["converged"] for row in shown["nodes"])
        pids = {name: entry.pid for name, entry in read_state(state).nodes.items()}
        assert all(pid is not None for pid in pids.values())

        routes = cli_json("routes", "--node", "x", "--state", str(state))
        assert {r["destination"]: r["next_hops"] for r in routes}["z"] == ["y"]

        gone = run_cli("down", "--state", str(state))
        assert gone.returncode == 0, gone.stderr
        assert not state.exists()
        deadline = time.monotonic() + 5
        while any(pid_alive(pid) for pid in pids.values() if pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # reaped by init once the launcher's children exit
        assert not any(pid_alive(pid) for pid in pids.values() if pid)
    finally:
        if (state / "mesh.json").exists():
            down(state)


def test_cli_errors_are_one_line(line5: MeshHandle) -> None:
    state = str(line5.state_dir)
    unknown = run_cli("routes", "--node", "nope", "--state", state)
    assert unknown.returncode == 1
    assert unknown.stderr.strip().startswith("error:")
    assert len(unknown.stderr.strip().splitlines()) == 1

    # No node of the line offers "echo": refused with a status (or, before the delivery
    # issue, "not served yet" and exit 2); one line either way.
    unserved = run_cli("request", "echo", "hi", "--node", "n1", "--state", state)
    assert unserved.returncode == 1
    assert unserved.stderr.startswith("error:")
    assert "no reachable instance of service 'echo'" in unserved.stderr
    assert len(unserved.stderr.strip().splitlines()) == 1

    traced = run_cli("trace", "00" * 16, "--node", "n1", "--state", state)
    assert traced.returncode == 1
    assert "NOT_FOUND" in traced.stderr and len(traced.stderr.strip().splitlines()) == 1


def test_trace_shows_the_path_with_per_hop_times(
    mesh_factory: Callable[..., MeshHandle],
) -> None:
    handle = mesh_factory("line5.yaml")
    state = str(handle.state_dir)
    sent = cli_json("send", "n5", '{"traced": true}', "--node", "n1", "--trace", "--state", state)
    deadline = time.monotonic() + 10
    while True:
        result = run_cli("trace", sent["message_id"], "--node", "n5", "--state", state, "--json")
        if result.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert result.returncode == 0, result.stderr
    hops = json.loads(result.stdout)["hops"]
    assert [hop["node"] for hop in hops] == ["n1", "n2", "n3", "n4", "n5"]
    assert all(hop["ms_since_previous"] >= 0 for hop in hops[1:])
