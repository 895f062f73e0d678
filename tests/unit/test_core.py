"""NodeCore driven through an in-memory network of real cores on a virtual clock."""

from __future__ import annotations

import random

import networkx as nx
import pytest

from mesh.actions import CloseLink, Deliver, Rejected, SendFrame, Wake
from mesh.codec import encode_body
from mesh.core import CoreConfig, LinkPhase, NodeCore
from mesh.envelope import read_header
from mesh.errors import NoRoute, Status
from mesh.linkcost import CostPolicy
from mesh.routing.link_state import advert_signing_bytes
from mesh.sim import CoreNetwork, forwarding_path
from mesh.v1 import peer_pb2
from tests.unit.conftest import identity

ENGINES = {
    "link-state": peer_pb2.ROUTING_ENGINE_LINK_STATE,
    "distance-vector": peer_pb2.ROUTING_ENGINE_DISTANCE_VECTOR,
}


def config(engine: str = "link-state", **overrides: object) -> CoreConfig:
    return CoreConfig(mesh_id="test", engine=ENGINES[engine], **overrides)  # type: ignore[arg-type]


def with_costs(graph: nx.Graph, seed: int, top: int = 10) -> nx.Graph:
    rng = random.Random(seed)
    for u, v in graph.edges:
        graph.edges[u, v]["cost"] = rng.randint(1, top)
    return graph


TOPOLOGIES = {
    "line": lambda: nx.path_graph(8),
    "ring": lambda: with_costs(nx.cycle_graph(9), 1),
    "grid": lambda: with_costs(nx.grid_2d_graph(4, 4), 2, top=3),
    "star": lambda: nx.star_graph(7),
    "random": lambda: with_costs(nx.connected_watts_strogatz_graph(40, 4, 0.3, seed=3), 4),
}


@pytest.mark.parametrize("engine", list(ENGINES))
@pytest.mark.parametrize("topology", list(TOPOLOGIES))
def test_cores_converge_to_the_networkx_shortest_paths(engine: str, topology: str) -> None:
    net = CoreNetwork(TOPOLOGIES[topology](), config(engine))
    net.run_until_converged(max_time=60)
    assert net.tables() == net.expected()
    assert not net.rejected


@pytest.mark.parametrize("engine", list(ENGINES))
def test_messages_cross_the_mesh_and_reach_only_the_recipient(engine: str) -> None:
    net = CoreNetwork(nx.path_graph(["a", "b", "c", "d"]), config(engine, trace=True))
    net.run_until_converged()
    net.send("a", "d", encode_body({"n": 1}))
    net.advance(0.1)
    (message,) = net.delivered["d"]
    assert message.header.source == "a"
    assert message.body.data == b'{"n":1}'
    assert not net.delivered["b"] and not net.delivered["c"]
    assert net.cores["b"].stats["forwarded"] == 1
    assert net.cores["c"].stats["forwarded"] == 1


def test_equal_cost_next_hops_are_used_in_turn() -> None:
    diamond = nx.Graph([("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
    net = CoreNetwork(diamond, config())
    net.run_until_converged()
    assert net.cores["a"].table.next_hops("d") == {"b", "c"}
    for n in range(6):
        net.send("a", "d", encode_body(bytes([n])))
    net.advance(0.1)
    assert len(net.delivered["d"]) == 6
    assert net.cores["b"].stats["forwarded"] == 3
    assert net.cores["c"].stats["forwarded"] == 3


def test_a_tampered_envelope_is_refused_at_the_next_hop_and_not_forwarded() -> None:
    net = CoreNetwork(nx.path_graph(["a", "b", "c"]), config())
    net.run_until_converged()
    core_a = net.cores["a"]
    _, actions = core_a.submit("c", encode_body(b"secret" * 10), net.now)
    (send,) = [a for a in actions if isinstance(a, SendFrame)]
    envelope = send.frame.batch.envelopes[0]
    envelope.payload = envelope.payload[:-1] + bytes([envelope.payload[-1] ^ 0x80])
    actions = net.cores["b"].frame_received("a", send.frame, net.now)
    rejected = [a for a in actions if isinstance(a, Rejected)]
    assert [r.status for r in rejected] == [Status.DATA_LOSS]
    nacks = [a for a in actions if isinstance(a, SendFrame) and a.frame.HasField("ack")]
    assert nacks and nacks[0].peer == "a" and nacks[0].frame.ack.status == Status.DATA_LOSS
    assert not [a for a in actions if isinstance(a, SendFrame) and a.frame.HasField("batch")]
    assert net.cores["b"].stats["forwarded"] == 0


def test_ttl_runs_out_and_is_counted() -> None:
    net = CoreNetwork(nx.path_graph(["a", "b", "c", "d"]), config(default_ttl=2))
    net.run_until_converged()
    net.send("a", "d", encode_body(b"far"))
    net.advance(0.1)
    assert not net.delivered["d"]
    assert net.cores["c"].stats["dropped_ttl"] == 1


def test_the_ttl_is_decremented_at_each_hop() -> None:
    net = CoreNetwork(nx.path_graph(["a", "b", "c"]), config(default_ttl=5))
    net.run_until_converged()
    _, actions = net.cores["a"].submit("c", encode_body(b"x"), net.now)
    (send,) = [a for a in actions if isinstance(a, SendFrame)]
    forwarded = [
        a
        for a in net.cores["b"].frame_received("a", send.frame, net.now)
        if isinstance(a, SendFrame) and a.frame.HasField("batch")
    ]
    assert forwarded[0].frame.batch.envelopes[0].ttl == 4
    assert read_header(forwarded[0].frame.batch.envelopes[0]).recipient == "c"


def test_no_route_is_a_clear_error_at_the_source() -> None:
    graph = nx.Graph([("a", "b")])
    graph.add_node("z")
    net = CoreNetwork(graph, config())
    net.run_until_converged()
    with pytest.raises(NoRoute, match="'z'"):
        net.send("a", "z", encode_body(b""))


@pytest.mark.parametrize(
    ("theirs", "message"),
    [
        (config("distance-vector"), "runs distance-vector routing, this mesh runs link-state"),
        (CoreConfig(mesh_id="other"), "is in mesh 'other'"),
    ],
)
def test_a_peer_with_another_engine_or_mesh_is_refused(theirs: CoreConfig, message: str) -> None:
    ours = NodeCore(identity("a"), config(), random_bytes=random.Random(1).randbytes)
    peer = NodeCore(identity("b"), theirs, random_bytes=random.Random(2).randbytes)
    ours.link_up("b", 1, 0.0)
    actions = ours.frame_received("b", peer.hello(0.0), 0.0)
    closes = [a for a in actions if isinstance(a, CloseLink)]
    assert len(closes) == 1 and closes[0].status == Status.FAILED_PRECONDITION
    assert message in closes[0].reason
    errors = [a for a in actions if isinstance(a, SendFrame) and a.frame.HasField("error")]
    assert message in errors[0].frame.error.reason
    assert ours.stats["links_refused"] == 1
    assert ours.peers() == []


def test_a_peer_claiming_another_node_id_is_refused() -> None:
    ours = NodeCore(identity("a"), config(), random_bytes=random.Random(1).randbytes)
    impostor = NodeCore(identity("c"), config(), random_bytes=random.Random(2).randbytes)
    ours.link_up("b", 1, 0.0)
    actions = ours.frame_received("b", impostor.hello(0.0), 0.0)
    (close,) = [a for a in actions if isinstance(a, CloseLink)]
    assert "expected node 'b'" in close.reason


@pytest.mark.parametrize(
    ("offset_s", "refused"), [(30, False), (-30, False), (300, True), (-300, True)]
)
def test_a_peer_clock_beyond_the_skew_bound_is_refused(offset_s: float, refused: bool) -> None:
    now = 1_800_000_000.0
    ours = NodeCore(identity("a"), config(), random_bytes=random.Random(1).randbytes)
    peer = NodeCore(identity("b"), config(), random_bytes=random.Random(2).randbytes)
    ours.link_up("b", 1, now)
    actions = ours.frame_received("b", peer.hello(now + offset_s), now)
    closes = [a for a in actions if isinstance(a, CloseLink)]
    if not refused:
        assert closes == []
        assert [p.peer for p in ours.peers()] == ["b"]
        return
    (close,) = closes
    assert close.status == Status.FAILED_PRECONDITION
    assert f"clock is {offset_s:+.1f} s from this node's" in close.reason
    assert ours.stats["links_refused_clock"] == 1


@pytest.mark.parametrize(("late_s", "forwarded"), [(20, True), (70, False)])
def test_forwarders_drop_only_messages_late_by_more_than_the_skew(
    late_s: float, forwarded: bool
) -> None:
    # The deadline is on the source's clock, up to 60 s from the forwarder's: a
    # message 20 s "late" may be on time at its source, one 70 s late cannot be.
    net = CoreNetwork(nx.path_graph(["a", "b", "c"]), config())
    net.run_until_converged()
    deadline_ms = int((net.now - late_s) * 1000)
    net.send("a", "c", encode_body(b"late?"), deadline_ms=deadline_ms)
    net.advance(1.0)
    assert net.cores["b"].stats["forwarded"] == (1 if forwarded else 0)
    assert net.cores["b"].stats["dropped_expired"] == (0 if forwarded else 1)


def test_data_before_hello_is_a_protocol_violation() -> None:
    ours = NodeCore(identity("a"), config(), random_bytes=random.Random(1).randbytes)
    ours.link_up("b", 1, 0.0)
    actions = ours.frame_received("b", peer_pb2.Frame(batch=peer_pb2.EnvelopeBatch()), 0.0)
    (close,) = [a for a in actions if isinstance(a, CloseLink)]
    assert close.status == Status.FAILED_PRECONDITION
    assert "batch frame from 'b' while the link is awaiting-hello" in close.reason


def test_mismatched_engines_never_form_a_link_in_a_network() -> None:
    ours = NodeCore(identity("a"), config(), random_bytes=random.Random(1).randbytes)
    theirs = NodeCore(
        identity("b"), config("distance-vector"), random_bytes=random.Random(2).randbytes
    )
    a_out = ours.link_up("b", 1, 0.0)
    b_out = theirs.link_up("a", 1, 0.0)
    hello_a = next(a for a in a_out if isinstance(a, SendFrame))
    hello_b = next(a for a in b_out if isinstance(a, SendFrame))
    assert any(isinstance(x, CloseLink) for x in ours.frame_received("b", hello_b.frame, 0.0))
    assert any(isinstance(x, CloseLink) for x in theirs.frame_received("a", hello_a.frame, 0.0))
    assert ours.table.next_hops("b") == frozenset()


@pytest.mark.parametrize("engine", list(ENGINES))
def test_a_silent_link_is_declared_dead_within_a_second_and_routes_move(engine: str) -> None:
    ring = nx.cycle_graph(["a", "b", "c", "d"])
    net = CoreNetwork(ring, config(engine))
    net.run_until_converged()
    cut_at = net.now
    net.cut_silently("a", "b")
    took = net.run_until_converged(max_time=10, step=0.01)
    assert took < 1.0 + 0.5  # detection (< 1 s) plus reconvergence, in virtual time
    assert net.now - cut_at == pytest.approx(took)
    assert forwarding_path(net.tables(), "a", "b") == ["a", "d", "c", "b"]
    # Routed around at once; the silent transport is kept dead_hold longer, then closed.
    assert net.cores["a"].link_phase("b") is LinkPhase.SUSPECT
    assert net.closed == []
    net.advance(CoreConfig(mesh_id="x").dead_hold)
    closed = {node: action for node, action in net.closed}
    assert closed["a"].status == Status.UNAVAILABLE and "declared dead" in closed["a"].reason
    assert net.cores["a"].link_phase("b") is None


def test_a_dead_link_heard_again_within_the_hold_comes_back_without_a_redial() -> None:
    heartbeat = peer_pb2.Frame(heartbeat=peer_pb2.Heartbeat(sequence=1))
    ours = _linked_pair(100.0)
    actions = ours.tick(100.81)  # silent for 0.8 s: dead
    assert ours.link_phase("b") is LinkPhase.SUSPECT
    assert not any(isinstance(a, CloseLink) for a in actions)
    assert ours.stats["links_down"] == 1  # out of routing at once (see the ring test)
    assert any(isinstance(a, SendFrame) for a in ours.tick(101.1))  # heartbeats go on
    # TCP delivers again: the link is back in routing on the same transport,
    # and it is told every identity it may have missed meanwhile.
    actions = ours.frame_received("b", heartbeat, 105.0)
    assert ours.link_phase("b") is LinkPhase.UP
    assert any(isinstance(a, SendFrame) and a.frame.HasField("identity") for a in actions)
    assert ours.stats["links_revived"] == 1
    # It waited 4.2 s: the next stall that long is tolerated (up to dead_stretch).
    assert not _dead(ours, 108.0)


def test_a_dead_link_is_closed_after_the_hold_or_at_once_without_one() -> None:
    held = _linked_pair(100.0)
    held.tick(100.81)
    assert held.link_phase("b") is LinkPhase.SUSPECT
    assert not any(isinstance(a, CloseLink) for a in held.tick(110.79))
    (close,) = [a for a in held.tick(110.81) if isinstance(a, CloseLink)]
    assert "declared dead" in close.reason
    assert held.peers() == []

    ours = NodeCore(identity("a"), config(dead_hold=0.0), random_bytes=random.Random(1).randbytes)
    peer = NodeCore(identity("b"), config(), random_bytes=random.Random(2).randbytes)
    ours.link_up("b", 1, 100.0)
    ours.frame_received("b", peer.hello(100.0), 100.0)
    assert any(isinstance(a, CloseLink) for a in ours.tick(100.81))


def test_a_frame_that_ends_a_suspect_link_does_not_revive_it_first() -> None:
    error = peer_pb2.Frame(error=peer_pb2.LinkError(status=14, reason="bye"))
    ours = _linked_pair(100.0)
    ours.tick(100.81)
    actions = ours.frame_received("b", error, 101.0)
    assert [a for a in actions if isinstance(a, SendFrame)] == []  # no identities, no advert
    assert any(isinstance(a, CloseLink) for a in actions)
    assert ours.stats["links_revived"] == 0 and ours.stats["links_down"] == 1

    peer = NodeCore(identity("b"), config(), random_bytes=random.Random(2).randbytes)
    ours = _linked_pair(100.0)
    ours.tick(100.81)
    actions = ours.frame_received("b", peer.hello(101.0), 101.0)  # a hello mid-link
    (close,) = [a for a in actions if isinstance(a, CloseLink)]
    assert "hello frame from 'b' while the link is suspect" in close.reason
    assert ours.stats["links_revived"] == 0 and ours.stats["links_down"] == 1


def test_a_cost_change_on_a_suspect_link_keeps_it() -> None:
    ours = _linked_pair(100.0)
    ours.tick(100.81)
    actions = ours.set_cost("b", 7, 101.0)
    assert ours.link_phase("b") is LinkPhase.SUSPECT
    assert not any(isinstance(a, SendFrame) and a.frame.HasField("hello") for a in actions)


def test_a_new_transport_replaces_a_suspect_link() -> None:
    ours = _linked_pair(100.0)
    ours.tick(100.81)
    actions = ours.link_up("b", 1, 101.0)  # the peer restarted and dialled again
    assert ours.link_phase("b") is LinkPhase.AWAITING_HELLO
    assert any(isinstance(a, SendFrame) and a.frame.HasField("hello") for a in actions)


def _linked_pair(now: float) -> NodeCore:
    ours = NodeCore(identity("a"), config(), random_bytes=random.Random(1).randbytes)
    peer = NodeCore(identity("b"), config(), random_bytes=random.Random(2).randbytes)
    ours.link_up("b", 1, now)
    ours.frame_received("b", peer.hello(now), now)
    return ours


def _dead(core: NodeCore, now: float) -> bool:
    """Whether ``core`` has declared its link to b dead by ``now`` (routed around it)."""
    core.tick(now)
    return core.link_phase("b") in (None, LinkPhase.SUSPECT)


def test_a_link_that_stalls_is_given_longer_before_it_is_declared_dead() -> None:
    heartbeat = peer_pb2.Frame(heartbeat=peer_pb2.Heartbeat(sequence=1))
    clean = _linked_pair(100.0)
    for t in (100.2, 100.4, 100.6):
        clean.frame_received("b", heartbeat, t)
    assert not _dead(clean, 101.39)
    assert _dead(clean, 101.41)  # 0.8 s of silence on a link that never stalled

    lossy = _linked_pair(100.0)
    for t in (100.2, 100.9, 101.6):  # TCP delivering in 0.7 s stalls
        lossy.frame_received("b", heartbeat, t)
    assert not _dead(lossy, 102.6)  # 1.0 s: tolerated (1.5 x the 0.7 s gap)
    assert _dead(lossy, 102.66)

    # The next incarnation of the link starts from what the last one learnt,
    # including the 1.06 s stall that killed it (never measured as a gap).
    lossy.link_up("b", 1, 103.0)
    peer = NodeCore(identity("b"), config(), random_bytes=random.Random(3).randbytes)
    lossy.frame_received("b", peer.hello(103.0), 103.0)
    assert not _dead(lossy, 104.5)
    assert _dead(lossy, 104.7)

    # A peer that stayed away (frozen, crashed) for longer teaches nothing from its
    # death: its next one is noticed as fast as the gaps actually measured allow.
    frozen = _linked_pair(100.0)
    frozen.frame_received("b", heartbeat, 100.2)
    assert _dead(frozen, 101.0)
    frozen.link_up("b", 1, 111.0)
    frozen.frame_received("b", peer.hello(111.0), 111.0)
    assert not _dead(frozen, 111.79)
    assert _dead(frozen, 111.81)


@pytest.mark.parametrize("engine", list(ENGINES))
def test_partition_and_heal(engine: str) -> None:
    graph = nx.barbell_graph(4, 0)  # two cliques joined by the edge 3-4
    net = CoreNetwork(graph, config(engine))
    net.run_until_converged()
    net.cut(3, 4)
    net.run_until_converged(max_time=120)
    left, right = {"0", "1", "2", "3"}, {"4", "5", "6", "7"}
    for node in left:
        assert set(net.cores[node].table) == left
    for node in right:
        assert set(net.cores[node].table) == right
    net.heal(3, 4)
    net.run_until_converged(max_time=120)
    assert all(len(table) == 8 for table in net.tables().values())


@pytest.mark.parametrize("engine", list(ENGINES))
def test_a_crashed_node_is_routed_around_and_rejoins(engine: str) -> None:
    graph = with_costs(nx.connected_watts_strogatz_graph(16, 4, 0.2, seed=7), 8)
    net = CoreNetwork(graph, config(engine))
    net.run_until_converged()
    neighbours = {str(n): graph.edges[5, n]["cost"] for n in graph.neighbors(5)}
    net.remove_node(5)
    net.run_until_converged(max_time=200)
    net.add_node(5, neighbours)
    net.run_until_converged(max_time=200)
    net.send("0", "5", encode_body(b"welcome back"))
    net.advance(0.5)
    assert [m.body.data for m in net.delivered["5"]] == [b"welcome back"]


def test_rtt_derived_costs_follow_link_delay() -> None:
    # a-b direct is slow (20 ms), a-c-b is fast (2 x 1 ms): with RTT costs a goes via c.
    graph = nx.Graph()
    graph.add_edge("a", "b", cost=1, delay_s=0.020)
    graph.add_edge("a", "c", cost=1, delay_s=0.001)
    graph.add_edge("c", "b", cost=1, delay_s=0.001)
    rtt = CostPolicy(rtt_derived=True, hold_s=1.0)
    net = CoreNetwork(graph, config(cost_policy=rtt))
    net.advance(3.0)
    assert net.cores["a"].table.next_hops("b") == {"c"}
    peers = {p.peer: p for p in net.cores["a"].peers()}
    assert peers["b"].rtt_ms == pytest.approx(40, rel=0.1)
    assert peers["c"].rtt_ms == pytest.approx(2, rel=0.1)
    assert peers["b"].cost > 10 * peers["c"].cost


def test_identities_flood_so_any_node_can_seal_to_any_other() -> None:
    net = CoreNetwork(nx.path_graph(6), config("distance-vector"))
    net.run_until_converged()
    for node, core in net.cores.items():
        for other in net.cores:
            assert core.keyring.peer(other) is not None, (node, other)


def test_every_action_list_ends_with_the_next_wake() -> None:
    core = NodeCore(identity("a"), config(), random_bytes=random.Random(1).randbytes)
    actions = core.link_up("b", 1, 10.0)
    assert isinstance(actions[-1], Wake) and actions[-1].at == pytest.approx(10.2)
    delivered = [a for a in core.tick(11.0) if isinstance(a, Deliver)]
    assert delivered == []


def _advert(origin: str, sequence: int, cost: int) -> peer_pb2.LinkStateAdvert:
    return peer_pb2.LinkStateAdvert(
        origin=origin, sequence=sequence, links=[peer_pb2.AdvertLink(neighbor="a", cost=cost)]
    )


def test_bad_adverts_are_refused_with_a_status_and_change_nothing() -> None:
    net = CoreNetwork(
        nx.path_graph(["a", "b"]), config(), identities={n: identity(n) for n in "ab"}
    )
    net.run_until_converged()
    core = net.cores["a"]
    before = core.table
    unsigned = _advert("b", 1000, 5)
    absurd = _advert("b", 1001, 0)
    absurd.signature = identity("b").sign(advert_signing_bytes(absurd))
    stranger = _advert("zed", 1, 5)
    cases = [
        (unsigned, Status.UNAUTHENTICATED),
        (absurd, Status.INVALID_ARGUMENT),
        (stranger, Status.UNAUTHENTICATED),
    ]
    for advert, status in cases:
        actions = core.frame_received("b", peer_pb2.Frame(advert=advert), net.now)
        rejected = [a for a in actions if isinstance(a, Rejected)]
        assert [r.status for r in rejected] == [status]
        assert core.table == before
    assert not [a for a in net.closed if a[0] == "a"]  # the link survives bad input
