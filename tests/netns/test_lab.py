"""The testbed: real namespaces, real veth links with delay and loss (root only).

Six nodes on links with 1-2 % loss and a few ms of delay: routes equal the
networkx ground truth; with RTT-derived costs they follow the delays; a cut
link reroutes, a partition heals, a killed node comes back; acknowledged
traffic sent through all of it arrives exactly once; and after `mesh lab
down` nothing of a lab is left, even when its state file was lost.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import networkx as nx
import pytest
import typer
from typer.testing import CliRunner

from mesh.v1 import client_pb2, client_pb2_grpc, envelope_pb2
from nodes import lab
from nodes.admin_client import _channel, table_of, target_for
from nodes.commands import lab as lab_commands
from tests.netns.conftest import REASON, write

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(REASON is not None, reason=REASON or ""),
]

DETECTION_BUDGET = 15.0
"""Generous bound for a reroute: dead_ms (1 s) + flooding + polling, on a noisy machine."""

# The demo mesh with impairments: a-b-c-f (cost 4) is best, a-d-e-f (7) the disjoint backup.
MESH6 = """\
mesh: lab6
routing: link-state
nodes: {a: {}, b: {}, c: {}, d: {}, e: {}, f: {}}
links:
  - {a: a, b: b, cost: 1, delay_ms: 2, loss: 0.02}
  - {a: b, b: c, cost: 2, delay_ms: 3, loss: 0.01}
  - {a: c, b: f, cost: 1, delay_ms: 2, loss: 0.02, rate_mbit: 50}
  - {a: a, b: d, cost: 2, delay_ms: 1, loss: 0.01}
  - {a: d, b: e, cost: 3, delay_ms: 2}
  - {a: e, b: f, cost: 2, delay_ms: 1, loss: 0.01}
  - {a: b, b: e, cost: 5, delay_ms: 4, loss: 0.01}
settings: {heartbeat_ms: 200, dead_ms: 1000}
"""

# A ring whose static costs favour the a-b link that the delays make slow.
RING_RTT = """\
mesh: ringrtt
routing: link-state
nodes: {a: {}, b: {}, c: {}, d: {}, e: {}, f: {}}
links:
  - {a: a, b: b, cost: 1, delay_ms: 25}
  - {a: b, b: c, cost: 50, delay_ms: 2}
  - {a: c, b: d, cost: 50, delay_ms: 2}
  - {a: d, b: e, cost: 50, delay_ms: 2}
  - {a: e, b: f, cost: 50, delay_ms: 2}
  - {a: f, b: a, cost: 50, delay_ms: 2}
settings: {heartbeat_ms: 100, dead_ms: 1000, cost_mode: rtt}
"""

SMALL = """\
mesh: small
nodes: {x: {}, y: {}, z: {}}
links:
  - {a: x, b: y, delay_ms: 3, loss: 0.01}
  - {a: y, b: z}
"""


@pytest.fixture(scope="module")
def mesh6(lab_factory: Callable[[str, str], lab.Lab]) -> Iterator[lab.Lab]:
    handle = lab_factory("lab6", MESH6)
    try:
        yield handle
    finally:
        handle.close()


@pytest.fixture
def healed(mesh6: lab.Lab) -> Iterator[lab.Lab]:
    """The six-node lab, whole again after the test (every link up, every node running)."""
    try:
        yield mesh6
    finally:
        mesh6.heal_all()
        for node in mesh6.nodes:
            if not mesh6.running(node):
                mesh6.start(node)
        mesh6.wait_converged(timeout=DETECTION_BUDGET * 2)


def test_six_nodes_on_lossy_delayed_links_match_the_ground_truth(mesh6: lab.Lab) -> None:
    rows = mesh6.poll()
    assert [r.node for r in rows if not r.converged] == []
    state = mesh6.state
    assert len({n.namespace for n in state.nodes.values()}) == 6
    assert all(n.namespace.startswith(f"mw-{state.lab_id}-") for n in state.nodes.values())
    assert all(len(v) <= 15 for link in state.links for v in (link.veth_a, link.veth_b))

    # The impairments are real: the relay's delay shows in the measured RTT ...
    deadline = time.monotonic() + 10
    with mesh6.client("b") as client:
        while True:
            peer = next(p for p in client.peers() if p.node_id == "e")
            if peer.rtt_ms > 0 or time.monotonic() > deadline:
                break  # the first heartbeat round trip is in
            time.sleep(0.2)
    assert peer.state == "up"
    assert peer.rtt_ms >= 2 * 4 * 0.9  # 4 ms each way on b-e
    # ... and the status names the method of each impairment.
    app = typer.Typer()
    lab_commands.register(app)
    app.command("noop")(lambda: None)  # a group needs a sibling to stay a group
    result = CliRunner().invoke(app, ["lab", "status", "--json", "--state", state.state_dir])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["methods"]["loss"] in ("netem", "nftables")
    assert status["methods"]["delay"] in ("netem", "relay")
    cf = next(link for link in status["links"] if {link["a"], link["b"]} == {"c", "f"})
    assert cf["state"] == "up"
    assert set(cf["methods"]) == {"delay", "loss", "rate"}
    assert all(node["converged"] for node in status["nodes"])


def _second_best_ratio(graph: nx.Graph, source: str, target: str) -> tuple[float, list[str]]:
    paths = nx.shortest_simple_paths(graph, source, target, weight="rtt")
    best = next(paths)
    weight = nx.path_weight(graph, best, "rtt")
    other = next(paths, None)
    if other is None:
        return float("inf"), best
    return nx.path_weight(graph, other, "rtt") / weight, best


def test_rtt_derived_costs_follow_the_delays(lab_factory: Callable[[str, str], lab.Lab]) -> None:
    ring = lab_factory("ringrtt", RING_RTT)
    try:
        graph = ring.topology.graph()
        for _a, _b, data in graph.edges(data=True):
            data["rtt"] = 2 * data["delay_ms"] + 1.5  # + ~1.5 ms of gRPC and Python per link
        checks = {}
        for source, target in itertools.permutations(graph.nodes, 2):
            ratio, best = _second_best_ratio(graph, source, target)
            if ratio >= 1.3:  # the delays decide clearly
                checks[(source, target)] = best[1]
        assert checks[("a", "b")] == "f"  # static costs would go direct (1 against 250)

        def follow_delays() -> list[str]:
            wrong = []
            for node in ring.nodes:
                with ring.client(node) as client:
                    table = table_of(client.routes())
                for (source, target), hop in checks.items():
                    if source == node and table.get(target, (0, frozenset()))[1] != {hop}:
                        wrong.append(f"{source}->{target}: {table.get(target)} (want via {hop})")
            return wrong

        deadline = time.monotonic() + 30
        wrong = follow_delays()
        while wrong and time.monotonic() < deadline:
            time.sleep(0.5)
            wrong = follow_delays()
        assert wrong == []
    finally:
        ring.close()


def test_a_cut_link_reroutes_and_heals(healed: lab.Lab) -> None:
    mesh6 = healed
    with mesh6.client("a") as client:
        assert table_of(client.routes())["f"] == (4, frozenset({"b"}))
    mesh6.cut("c", "f")
    took = mesh6.wait_converged(timeout=DETECTION_BUDGET)
    assert took < DETECTION_BUDGET
    with mesh6.client("a") as client:
        assert table_of(client.routes())["f"] == (7, frozenset({"d"}))  # a-d-e-f
    assert {(r["a"], r["b"]) for r in _links(mesh6) if r["state"] == "cut"} == {("c", "f")}
    mesh6.heal("c", "f")
    mesh6.wait_converged(timeout=DETECTION_BUDGET)
    with mesh6.client("a") as client:
        assert table_of(client.routes())["f"] == (4, frozenset({"b"}))


def _links(handle: lab.Lab) -> list[dict[str, object]]:
    return [{"a": link.a, "b": link.b, "state": link.state} for link in handle.link_status()]


def test_a_partition_heals_and_a_killed_node_returns(healed: lab.Lab) -> None:
    mesh6 = healed
    cut = mesh6.partition(["a", "b", "d"], ["c", "e", "f"])
    assert sorted(cut) == [("b", "c"), ("b", "e"), ("d", "e")]
    mesh6.wait_converged(timeout=DETECTION_BUDGET)
    with mesh6.client("a") as client:
        assert set(table_of(client.routes())) == {"a", "b", "d"}
    mesh6.heal_all()
    mesh6.wait_converged(timeout=DETECTION_BUDGET)
    mesh6.kill("c")
    assert not mesh6.running("c")
    mesh6.wait_converged(timeout=DETECTION_BUDGET)  # the truth without c
    mesh6.start("c")
    mesh6.wait_converged(timeout=DETECTION_BUDGET * 2)
    with mesh6.client("a") as client:
        assert table_of(client.routes())["f"] == (4, frozenset({"b"}))


def _counter(handle: lab.Lab, nodes: tuple[str, ...], *names: str) -> int:
    total = 0
    for node in nodes:
        with handle.client(node) as client:
            stats = client.stats()
        total += sum(stats.get(name, 0) for name in names)
    return total


def test_a_link_silent_for_half_its_hold_is_dialled_afresh(healed: lab.Lab) -> None:
    # Both ends alive, the connection silent (what lost NAT state looks like):
    # halfway through the hold the dialling end gives up on it and dials again.
    # (The accepting end's replacement of a suspect stream is not asserted here:
    # whether the new stream or the old one's reset reaches it first is a race.)
    mesh6 = healed
    before = _counter(mesh6, ("d", "e"), "links_redialled_suspect")
    mesh6.cut("d", "e")
    deadline = time.monotonic() + DETECTION_BUDGET
    while _counter(mesh6, ("d", "e"), "links_redialled_suspect") == before:
        assert time.monotonic() < deadline, "no fresh dial within the budget"
        time.sleep(0.5)
    mesh6.heal("d", "e")
    mesh6.wait_converged(timeout=DETECTION_BUDGET * 2)


def _stub(handle: lab.Lab, node: str) -> tuple[grpc.Channel, client_pb2_grpc.ClientServiceStub]:
    channel = _channel(target_for(handle.mesh, node))
    return channel, client_pb2_grpc.ClientServiceStub(channel)


def test_acknowledged_traffic_through_cuts_partitions_and_crashes_arrives_exactly_once(
    healed: lab.Lab,
) -> None:
    mesh6 = healed
    total = 300
    seen: Counter[int] = Counter()
    receiver_channel, receiver = _stub(mesh6, "f")
    sender_channel, sender = _stub(mesh6, "a")
    stream = receiver.Receive(client_pb2.ReceiveRequest(), timeout=180)

    def receive() -> None:
        try:
            for delivery in stream:
                seen[json.loads(delivery.body.data)["seq"]] += 1
        except grpc.RpcError:
            return  # cancelled at the end

    receiving = threading.Thread(target=receive, daemon=True)
    receiving.start()
    time.sleep(0.5)  # the Receive stream is attached

    def send(seqs: range) -> None:
        for seq in seqs:
            sender.Send(
                client_pb2.SendRequest(
                    target=client_pb2.Address(kind=envelope_pb2.DESTINATION_KIND_NODE, name="f"),
                    body=client_pb2.Body(
                        content_type=envelope_pb2.CONTENT_TYPE_JSON,
                        data=json.dumps({"seq": seq}).encode(),
                    ),
                    mode=envelope_pb2.DELIVERY_MODE_ACKNOWLEDGED,
                    timeout_ms=120_000,
                ),
                timeout=30,
            )
            time.sleep(0.005)

    try:
        send(range(0, 60))
        mesh6.cut("c", "f")
        send(range(60, 120))
        mesh6.partition(["a", "b", "d"], ["c", "e", "f"])
        send(range(120, 180))  # accepted into a's outbox; no way to f yet
        time.sleep(2)
        mesh6.heal_all()
        send(range(180, 240))
        mesh6.kill("b")
        send(range(240, 270))
        mesh6.start("b")
        send(range(270, total))
        deadline = time.monotonic() + 60
        while len(seen) < total and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # a late duplicate would show up now
        assert sorted(set(range(total)) - set(seen)) == []
        assert {seq: n for seq, n in seen.items() if n != 1} == {}
        assert len(seen) == total
    finally:
        stream.cancel()
        receiving.join(timeout=5)
        receiver_channel.close()
        sender_channel.close()


def test_down_leaves_nothing_even_without_its_state_file(tmp_path: Path) -> None:
    topology = write(tmp_path, "small.yaml", SMALL)
    state_dir = tmp_path / "lab"
    try:
        small = lab.up(topology, state_dir, timeout=30)
        small.close()
        found = lab.leftovers(state_dir)
        assert len(found["namespaces"]) == 3
        assert len(found["processes"]) == 6  # a relay and a node per namespace
        assert found["veths"] == []  # never in the host namespace
        with pytest.raises(lab.LabError, match="already exists"):
            lab.up(topology, state_dir, timeout=30)
        # A crash that lost lab.json: down still finds the lab by its prefix.
        (state_dir / lab.LAB_FILE).unlink()
        lab.down(state_dir)
        assert lab.leftovers(state_dir) == {"namespaces": [], "veths": [], "processes": []}
        assert lab.down(state_dir) == []  # idempotent
    finally:
        lab.down(state_dir)
