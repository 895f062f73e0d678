"""Hostile peers against a real node: each is refused with its documented status and counted,
and the node stays up.

A two-node mesh (a - b, link-state, mTLS) is launched once; each test dials
node ``b`` as a rogue peer over the raw-bytes PeerService/Link stream (as a
real neighbour does), using certificates issued by the mesh CA for a fake node
name (or by another CA). After every refusal the node must still answer
health (SERVING) and Routes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from mesh.core import PROTOCOL_VERSION
from mesh.envelope import compute_digest
from mesh.errors import Status
from mesh.v1 import envelope_pb2, peer_pb2
from nodes import pki
from nodes.launcher import MeshHandle
from nodes.links import LINK_METHOD

TARGET = "b"
ROGUE = "rogue"
READ_TIMEOUT = 10.0
"""Seconds a refused stream may take to end (the node answers in milliseconds)."""
MAX_FRAME = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def pair(
    mesh_factory: Callable[..., MeshHandle], tmp_path_factory: pytest.TempPathFactory
) -> MeshHandle:
    topology = tmp_path_factory.mktemp("pair") / "pair.yaml"
    topology.write_text("mesh: pair\nnodes: {a: {}, b: {}}\nlinks: [{a: a, b: b, cost: 1}]\n")
    return mesh_factory(topology)


@pytest.fixture(scope="module")
def rogue_files(pair: MeshHandle, tmp_path_factory: pytest.TempPathFactory) -> pki.NodeFiles:
    """A node certificate from the mesh's own CA, for a node the topology does not have."""
    return pki.issue_node_certificate(
        ROGUE, pair.state_dir / "ca", tmp_path_factory.mktemp("rogue")
    )


def _channel(pair: MeshHandle, credentials: grpc.ChannelCredentials) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(
        pair.addresses[TARGET],
        credentials,
        options=[
            *pki.channel_options(TARGET),
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", MAX_FRAME),
        ],
    )


def _hello(node_id: str = ROGUE, mesh_id: str = "pair") -> bytes:
    return peer_pb2.Frame(
        hello=peer_pb2.Hello(
            node_id=node_id,
            mesh_id=mesh_id,
            engine=peer_pb2.ROUTING_ENGINE_LINK_STATE,
            protocol_version=PROTOCOL_VERSION,
            cost=1,
        )
    ).SerializeToString()


async def _finish(call: grpc.aio.StreamStreamCall) -> tuple[grpc.StatusCode, list[peer_pb2.Frame]]:
    """Read what the node sends until it ends the stream; returns its status and frames."""
    frames: list[peer_pb2.Frame] = []
    try:
        while True:
            data = await call.read()
            if data is grpc.aio.EOF:
                break
            frame = peer_pb2.Frame()
            frame.ParseFromString(data)
            frames.append(frame)
    except grpc.aio.AioRpcError:
        pass
    return await call.code(), frames


def _counters(pair: MeshHandle) -> dict[str, int]:
    with pair.client(TARGET, timeout=5.0) as client:
        return client.stats()


def _assert_still_up(pair: MeshHandle) -> None:
    assert pair.running(TARGET)
    with pair.client(TARGET, timeout=5.0) as client:
        assert client.health() == "SERVING"
        routes = {route.destination for route in client.routes()}
        assert {"a", "b"} <= routes
    pair.wait_converged(timeout=10.0)  # the rogue's link is gone again; a - b still routes


async def test_certificate_from_another_ca_fails_the_handshake(
    pair: MeshHandle, tmp_path: Path
) -> None:
    other_ca = tmp_path / "other-ca"
    pki.init_ca(other_ca, "pair")
    stranger = pki.issue_node_certificate(ROGUE, other_ca, tmp_path / "stranger")
    # Trust the real mesh CA (so the node's certificate checks out) but present the stranger's.
    mesh_ca = (pair.state_dir / "ca" / pki.CA_CERT_FILE).read_bytes()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=mesh_ca,
        private_key=stranger.key.read_bytes(),
        certificate_chain=stranger.cert.read_bytes(),
    )
    async with _channel(pair, credentials) as channel:
        call = channel.stream_stream(LINK_METHOD, None, None)()
        with contextlib.suppress(grpc.aio.AioRpcError):  # the handshake may fail first
            await call.write(_hello())
        code, frames = await _finish(call)
    assert code == grpc.StatusCode.UNAVAILABLE
    assert frames == []
    _assert_still_up(pair)


async def test_certificate_name_must_match_the_hello(
    pair: MeshHandle, rogue_files: pki.NodeFiles
) -> None:
    before = _counters(pair).get("links_unauthenticated", 0)
    async with _channel(pair, pki.channel_credentials(rogue_files)) as channel:
        call = channel.stream_stream(LINK_METHOD, None, None)()
        await call.write(_hello(node_id="a"))  # certified as "rogue", claims to be "a"
        code, _ = await _finish(call)
        details = await call.details()
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "rogue" in details
    assert _counters(pair)["links_unauthenticated"] == before + 1
    _assert_still_up(pair)


async def test_garbage_bytes_on_the_link(pair: MeshHandle, rogue_files: pki.NodeFiles) -> None:
    before = _counters(pair).get("garbage_frames", 0)
    async with _channel(pair, pki.channel_credentials(rogue_files)) as channel:
        call = channel.stream_stream(LINK_METHOD, None, None)()
        await call.write(b"\xff\xff garbage")
        code, _ = await _finish(call)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert _counters(pair)["garbage_frames"] == before + 1
    _assert_still_up(pair)


async def test_hello_for_another_mesh(pair: MeshHandle, rogue_files: pki.NodeFiles) -> None:
    before = _counters(pair).get("links_refused", 0)
    async with _channel(pair, pki.channel_credentials(rogue_files)) as channel:
        call = channel.stream_stream(LINK_METHOD, None, None)()
        await call.write(_hello(mesh_id="elsewhere"))
        code, frames = await _finish(call)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    errors = [f.error for f in frames if f.HasField("error")]
    assert [e.status for e in errors] == [Status.FAILED_PRECONDITION]
    assert "elsewhere" in errors[0].reason
    assert _counters(pair)["links_refused"] == before + 1
    _assert_still_up(pair)


async def test_envelope_with_a_wrong_digest_is_refused_with_data_loss(
    pair: MeshHandle, rogue_files: pki.NodeFiles
) -> None:
    before = _counters(pair).get("rejected_envelope_data_loss", 0)
    header = envelope_pb2.EnvelopeHeader(
        message_id=os.urandom(16), source=ROGUE, destination="a", recipient="a"
    ).SerializeToString()
    payload = os.urandom(64)
    digest = bytearray(compute_digest(1, header, payload))
    digest[0] ^= 0x01  # one bit off
    envelope = envelope_pb2.Envelope(
        version=1, header=header, payload=payload, digest=bytes(digest), ttl=8
    )
    batch = peer_pb2.Frame(batch=peer_pb2.EnvelopeBatch(envelopes=[envelope]))
    async with _channel(pair, pki.channel_credentials(rogue_files)) as channel:
        call = channel.stream_stream(LINK_METHOD, None, None)()
        await call.write(_hello())
        await call.write(batch.SerializeToString())
        ack = None
        while ack is None:
            data = await call.read()
            assert data is not grpc.aio.EOF, "the node ended the link instead of answering"
            frame = peer_pb2.Frame()
            frame.ParseFromString(data)
            if frame.HasField("ack"):
                ack = frame.ack
        call.cancel()
    assert ack.status == Status.DATA_LOSS
    assert "digest" in ack.detail
    assert _counters(pair)["rejected_envelope_data_loss"] == before + 1
    _assert_still_up(pair)


async def test_oversized_frame_is_refused_by_grpc(
    pair: MeshHandle, rogue_files: pki.NodeFiles
) -> None:
    async with _channel(pair, pki.channel_credentials(rogue_files)) as channel:
        call = channel.stream_stream(LINK_METHOD, None, None)()
        with contextlib.suppress(grpc.aio.AioRpcError):  # refused while still writing
            await call.write(b"\x00" * (MAX_FRAME + 1024 * 1024))
        code, _ = await _finish(call)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    _assert_still_up(pair)
