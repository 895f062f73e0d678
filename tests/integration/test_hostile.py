"""Hostile peers and clients against a real node: each is refused with its documented status
(docs/protocol.md), counted and logged, the node stays up, and an honest stream loses nothing.

A two-node mesh (a - b, link-state, mTLS) is launched once with low admission
limits (so exceeding them is cheap). Every test runs beside a background
stream of acknowledged messages from an SDK client on ``a`` to one on ``b``
(:class:`Background`), judged at the end with the chaos checker: nothing lost,
duplicated or unexpected. Meanwhile the test attacks node ``b``:

- as a rogue peer over the raw-bytes PeerService/Link stream, with a
  certificate of the mesh CA for a node the topology does not have (or of
  another CA, or none); for the cases that need it the rogue joins routing
  properly (identity record and signed advert), as a compromised member would;
- as a misbehaving application over ClientService with the CLI's certificate.

After every case node ``b`` must still answer health (SERVING) and Routes, the
mesh must converge again, and ``b``'s log must name the refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

from mesh.client import connect
from mesh.codec import ContentType, EncodedBody
from mesh.core import PROTOCOL_VERSION
from mesh.crypto import KeyRing, NodeIdentity
from mesh.directory import make_identity_record
from mesh.envelope import DEFAULT_LIMITS, Envelope, Header, Opener, Sealer, compute_digest
from mesh.errors import Status
from mesh.routing.link_state import advert_signing_bytes
from mesh.v1 import client_pb2, client_pb2_grpc, envelope_pb2, peer_pb2
from nodes import pki
from nodes.chaos.checker import ACCEPTED, ATTEMPT, Ledger, Verdict, check_ledgers
from nodes.chaos.workload import AckedSender, Receiver
from nodes.launcher import MeshHandle
from nodes.links import LINK_METHOD

TARGET = "b"
ROGUE = "rogue"
READ_TIMEOUT = 10.0
"""Seconds a refused stream may take to end (the node answers in milliseconds)."""
WAIT_TIMEOUT = 20.0
"""Bound on every wait for an event (a counter, a log line, a delivery)."""
MAX_FRAME = 64 * 1024 * 1024
MAX_INFLIGHT_SENDS = 8
MAX_CLIENT_STREAMS = 8
CLIENT_SERVICE = "/mesh.v1.ClientService"

TOPOLOGY = f"""\
mesh: pair
nodes: {{a: {{}}, b: {{}}}}
links: [{{a: a, b: b, cost: 1}}]
settings:
  max_inflight_sends: {MAX_INFLIGHT_SENDS}
  max_client_streams: {MAX_CLIENT_STREAMS}
"""


# --- the mesh, the rogue's certificate, the background stream ----------------------------------


@pytest.fixture(scope="module")
def pair(
    mesh_factory: Callable[..., MeshHandle], tmp_path_factory: pytest.TempPathFactory
) -> MeshHandle:
    topology = tmp_path_factory.mktemp("pair") / "pair.yaml"
    topology.write_text(TOPOLOGY)
    return mesh_factory(topology)


@pytest.fixture(scope="module")
def rogue_files(pair: MeshHandle, tmp_path_factory: pytest.TempPathFactory) -> pki.NodeFiles:
    """A node certificate from the mesh's own CA, for a node the topology does not have."""
    return pki.issue_node_certificate(
        ROGUE, pair.state_dir / "ca", tmp_path_factory.mktemp("rogue")
    )


class Background:
    """Acknowledged messages a -> b through the SDK, one at a time, until :meth:`finish`.

    Ids are ``{run}-{n}``; ids a test injects itself (``{run}-...``) can be added
    to the sender's ledger with :meth:`expect`, so the checker holds them to
    "exactly once" as well. Anything else with this run's prefix that arrives
    is unexpected.
    """

    def __init__(self, sender: AckedSender, receiver: Receiver, run: str) -> None:
        self.sender = sender
        self.receiver = receiver
        self.run = run
        self.sent = sender.ledger
        self.received = receiver.ledger
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._send_until_stopped())

    async def _send_until_stopped(self) -> None:
        while not self._stop.is_set():
            await self.sender.send_one()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.02)

    async def wait_flowing(self) -> None:
        """Until the first message was acknowledged (bounded)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_TIMEOUT
        while self.sender.stats.accepted == 0:
            assert self._task is not None and not self._task.done(), "the stream stopped"
            assert loop.time() < deadline, f"no message acknowledged: {self.sender.stats}"
            await asyncio.sleep(0.05)

    def expect(self, message_id: str) -> None:
        """An id the test delivered itself, accepted by the mesh: it must arrive once."""
        self.sent.record(ATTEMPT, message_id)
        self.sent.record(ACCEPTED, message_id)

    async def finish(self) -> Verdict:
        """Stop sending, wait (bounded) for every accepted id, and judge the run."""
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, WAIT_TIMEOUT + 5)
        await self.receiver.wait_for(set(self.sent.ids(ACCEPTED)), WAIT_TIMEOUT)
        # Only this run's ids: a message of an earlier test's that was never
        # confirmed (indeterminate there) may still turn up in b's inbox.
        ours = Ledger()
        for entry in self.received.records:
            if entry["id"].startswith((f"{self.run}-", "<not ours")):
                ours.record(entry["event"], entry["id"])
        return check_ledgers([self.sent], [ours])

    async def assert_nothing_lost(self) -> None:
        verdict = await self.finish()
        assert verdict.ok, verdict.summary()
        assert verdict.accepted > 0, f"no message got through: {self.sender.stats.refused}"

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.receiver.stop()


@pytest.fixture
async def stream(pair: MeshHandle) -> AsyncIterator[Background]:
    """The steady background stream a -> b (see :class:`Background`), already flowing."""
    run = f"bg{uuid.uuid4().hex[:8]}"
    async with (
        connect(node="a", state_dir=pair.state_dir) as sending,
        connect(node=TARGET, state_dir=pair.state_dir) as receiving,
    ):
        receiver = Receiver(receiving, Ledger())
        await receiver.start()
        sender = AckedSender(sending, TARGET, Ledger(), run=run, size=256, timeout=20.0)
        background = Background(sender, receiver, run)
        background.start()
        try:
            await background.wait_flowing()
            yield background
        finally:
            await background.close()


# --- helpers: the node's state, its log, channels ------------------------------------------------


def _counters(pair: MeshHandle) -> dict[str, int]:
    with pair.client(TARGET, timeout=5.0) as client:
        return client.stats()


async def _wait_counter(pair: MeshHandle, name: str, at_least: int) -> int:
    """Poll ``b``'s counter until it reaches ``at_least`` (bounded); returns its value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_TIMEOUT
    while True:
        value = _counters(pair).get(name, 0)
        if value >= at_least or loop.time() > deadline:
            return value
        await asyncio.sleep(0.1)


def _assert_still_up(pair: MeshHandle) -> None:
    assert pair.running(TARGET)
    with pair.client(TARGET, timeout=5.0) as client:
        assert client.health() == "SERVING"
        routes = {route.destination for route in client.routes()}
        assert {"a", "b"} <= routes
    pair.wait_converged(timeout=WAIT_TIMEOUT)  # the rogue is gone again; a - b still routes


class NodeLog:
    """``b``'s JSON log from the moment this was made on."""

    def __init__(self, pair: MeshHandle) -> None:
        self.path = Path(pair.state.nodes[TARGET].log)
        self.offset = self.path.stat().st_size

    def lines(self) -> list[str]:
        """New lines: our JSON records, and grpc core's own (e.g. failed handshakes)."""
        with self.path.open("rb") as file:
            file.seek(self.offset)
            return file.read().decode("utf-8", "replace").splitlines()

    async def wait_for(self, *needles: str) -> str:
        """The first new line containing every needle (bounded wait)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_TIMEOUT
        while True:
            for line in self.lines():
                if all(needle in line for needle in needles):
                    return line
            if loop.time() > deadline:
                raise AssertionError(f"no log line at {TARGET} with {needles}: {self.lines()}")
            await asyncio.sleep(0.05)


@pytest.fixture
def node_log(pair: MeshHandle) -> NodeLog:
    return NodeLog(pair)


def _channel(
    pair: MeshHandle,
    credentials: grpc.ChannelCredentials,
    options: list[tuple[str, int]] | None = None,
) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(
        pair.addresses[TARGET],
        credentials,
        options=[
            *pki.channel_options(TARGET),
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", MAX_FRAME),
            *(options or []),
        ],
    )


def _client_credentials(pair: MeshHandle) -> grpc.ChannelCredentials:
    """The CLI's client certificate: what an application attached to ``b`` presents."""
    cli = pair.state.cli
    assert cli is not None
    return pki.channel_credentials(pki.node_files(Path(cli.ca), Path(cli.cert), Path(cli.key)))


def _client_channel(
    pair: MeshHandle, options: list[tuple[str, int]] | None = None
) -> grpc.aio.Channel:
    return _channel(pair, _client_credentials(pair), options)


async def _finish(call: grpc.aio.StreamStreamCall) -> tuple[grpc.StatusCode, list[peer_pb2.Frame]]:
    """Read what the node sends until it ends the stream; returns its status and frames."""
    frames: list[peer_pb2.Frame] = []

    async def read_all() -> None:
        while True:
            data = await call.read()
            if data is grpc.aio.EOF:
                return
            frame = peer_pb2.Frame()
            frame.ParseFromString(data)
            frames.append(frame)

    with contextlib.suppress(grpc.aio.AioRpcError):
        await asyncio.wait_for(read_all(), READ_TIMEOUT)
    return await asyncio.wait_for(call.code(), READ_TIMEOUT), frames


# --- the rogue peer ------------------------------------------------------------------------------


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


class Rogue:
    """A linked peer driven by hand: it says hello, keeps the link alive with
    heartbeats, collects every frame ``b`` sends, and can join routing."""

    def __init__(self, pair: MeshHandle, call: grpc.aio.StreamStreamCall) -> None:
        self.pair = pair
        self.call = call
        self.frames: list[peer_pb2.Frame] = []
        self.ended: grpc.StatusCode | None = None
        self._arrived = asyncio.Event()
        self._writing = asyncio.Lock()  # grpc allows one write in flight per call
        self._tasks: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        await self.write(_hello())
        self._tasks = [
            asyncio.ensure_future(self._read()),
            asyncio.ensure_future(self._heartbeats()),
        ]
        await self.wait_for(lambda f: f.HasField("hello"))

    async def _read(self) -> None:
        try:
            while True:
                data = await self.call.read()
                if data is grpc.aio.EOF:
                    break
                frame = peer_pb2.Frame()
                frame.ParseFromString(data)
                self.frames.append(frame)
                self._arrived.set()
        except grpc.aio.AioRpcError:
            pass
        self.ended = await self.call.code()
        self._arrived.set()

    async def _heartbeats(self) -> None:
        sequence = 0
        while True:
            sequence += 1
            beat = peer_pb2.Heartbeat(sequence=sequence, sent_ms=int(time.time() * 1000))
            await self.send(peer_pb2.Frame(heartbeat=beat))
            await asyncio.sleep(0.1)

    async def send(self, frame: peer_pb2.Frame) -> None:
        await self.write(frame.SerializeToString())

    async def write(self, data: bytes) -> None:
        async with self._writing:
            await self.call.write(data)

    async def send_envelopes(self, *envelopes: Envelope) -> None:
        await self.send(peer_pb2.Frame(batch=peer_pb2.EnvelopeBatch(envelopes=envelopes)))

    async def wait_for(
        self, match: Callable[[peer_pb2.Frame], bool], *, after: int = 0
    ) -> peer_pb2.Frame:
        """The first frame (from index ``after``) that ``match``es; fails if the link ends."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READ_TIMEOUT
        while True:
            for frame in self.frames[after:]:
                if match(frame):
                    return frame
            assert self.ended is None, f"{TARGET} ended the link ({self.ended})"
            remaining = deadline - loop.time()
            assert remaining > 0, f"no such frame from {TARGET} within {READ_TIMEOUT} s"
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    async def next_nack(self) -> peer_pb2.LinkAck:
        """The next refusal (LinkAck) ``b`` sends after now."""
        frame = await self.wait_for(lambda f: f.HasField("ack"), after=len(self.frames))
        return frame.ack

    async def join(self, identity: NodeIdentity, certificate: bytes) -> None:
        """Become a routing member: flood our identity, then a signed advert linking us
        to ``b``; returns once ``b`` routes to us."""
        record = make_identity_record(identity, int(time.time()), certificate)
        await self.send(peer_pb2.Frame(identity=record))
        advert = peer_pb2.LinkStateAdvert(
            origin=ROGUE,
            sequence=int(time.time() * 10) & 0xFFFFFFFF,  # newer than any earlier test's
            links=[peer_pb2.AdvertLink(neighbor=TARGET, cost=1)],
        )
        advert.signature = identity.sign(advert_signing_bytes(advert))
        await self.send(peer_pb2.Frame(advert=advert))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_TIMEOUT
        while True:
            with self.pair.client(TARGET, timeout=5.0) as client:
                if any(route.destination == ROGUE for route in client.routes()):
                    return
            assert loop.time() < deadline, f"{TARGET} never routed to the rogue"
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        """End the stream politely (so ``b`` sees it end at once), then cancel it."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.ended is None:
            with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError):
                await asyncio.wait_for(self.call.done_writing(), READ_TIMEOUT)
        self.call.cancel()


@pytest.fixture
async def rogue(pair: MeshHandle, rogue_files: pki.NodeFiles) -> AsyncIterator[Rogue]:
    """A rogue peer linked to ``b`` (hello exchanged, heartbeating)."""
    try:
        async with _channel(pair, pki.channel_credentials(rogue_files)) as channel:
            peer = Rogue(pair, channel.stream_stream(LINK_METHOD, None, None)())
            await peer.open()
            try:
                yield peer
            finally:
                await peer.close()
    finally:
        await _wait_unlinked(pair)


async def _wait_unlinked(pair: MeshHandle) -> None:
    """Until ``b`` no longer lists the rogue as a peer, so the next test can link again."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_TIMEOUT
    while loop.time() < deadline:
        with pair.client(TARGET, timeout=5.0) as client:
            if all(peer.node_id != ROGUE for peer in client.peers()):
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{TARGET} still lists {ROGUE!r} as a peer")


async def _rogue_link(pair: MeshHandle, channel: grpc.aio.Channel) -> Rogue:
    peer = Rogue(pair, channel.stream_stream(LINK_METHOD, None, None)())
    await peer.open()
    return peer


def _identity(pair: MeshHandle, node: str) -> NodeIdentity:
    """A node's identity keys, read from the state dir (the test plays that node)."""
    return NodeIdentity.load(node, pair.state_dir / node / "keys")


def _seal(
    source: NodeIdentity,
    recipient: NodeIdentity,
    message_id: str,
    *,
    created_ms: int | None = None,
    reply_to: str = "",
) -> Envelope:
    """An acknowledged message ``{"id": message_id}`` from ``source`` to ``recipient``,
    sealed as the protocol says (what ``source``'s node would send)."""
    keyring = KeyRing(source, random_bytes=os.urandom)
    keyring.add_peer(recipient.public)
    header = Header(
        message_id=os.urandom(16),
        source=source.node_id,
        destination_kind=envelope_pb2.DESTINATION_KIND_NODE,
        destination=recipient.node_id,
        recipient=recipient.node_id,
        mode=envelope_pb2.DELIVERY_MODE_ACKNOWLEDGED,
        created_ms=int(time.time() * 1000) if created_ms is None else created_ms,
        reply_to=reply_to,
    )
    body = json.dumps({"id": message_id, "sent": time.time()}).encode()
    return Sealer(keyring).seal(
        header, EncodedBody(data=body, content_type=ContentType.JSON), ttl=8
    )


def _raw_envelope(
    recipient: str, *, ttl: int = 8, reply_to: str = "", digest_ok: bool = True
) -> Envelope:
    """An envelope a forwarder accepts (digest and shape right) without any key."""
    header = envelope_pb2.EnvelopeHeader(
        message_id=os.urandom(16),
        source=ROGUE,
        destination=recipient,
        recipient=recipient,
        reply_to=reply_to,
    ).SerializeToString()
    payload = os.urandom(64)
    digest = bytearray(compute_digest(1, header, payload))
    if not digest_ok:
        digest[0] ^= 0x01  # one bit off
    return Envelope(version=1, header=header, payload=payload, digest=bytes(digest), ttl=ttl)


def _redigest(envelope: Envelope) -> Envelope:
    """Recompute the digest after tampering, so every hop lets it through."""
    envelope.digest = compute_digest(envelope.version, envelope.header, envelope.payload)
    return envelope


def _forwarded_ids(rogue: Rogue) -> set[bytes]:
    """Digests of every envelope ``b`` sent the rogue in batches."""
    return {e.digest for f in rogue.frames if f.HasField("batch") for e in f.batch.envelopes}


# --- handshake and hello -------------------------------------------------------------------------


async def test_certificate_from_another_ca_fails_the_handshake(
    pair: MeshHandle, stream: Background, node_log: NodeLog, tmp_path: Path
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
    await node_log.wait_for("Handshake failed", "CERTIFICATE_VERIFY_FAILED")
    _assert_still_up(pair)
    await stream.assert_nothing_lost()


async def test_peer_without_a_client_certificate_fails_the_handshake(
    pair: MeshHandle, stream: Background, node_log: NodeLog
) -> None:
    mesh_ca = (pair.state_dir / "ca" / pki.CA_CERT_FILE).read_bytes()
    credentials = grpc.ssl_channel_credentials(root_certificates=mesh_ca)
    async with _channel(pair, credentials) as channel:
        call = channel.stream_stream(LINK_METHOD, None, None)()
        with contextlib.suppress(grpc.aio.AioRpcError):
            await call.write(_hello())
        code, frames = await _finish(call)
        assert code == grpc.StatusCode.UNAVAILABLE
        assert frames == []
        # The client API is behind the same handshake.
        stub = client_pb2_grpc.ClientServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Send(client_pb2.SendRequest(), timeout=READ_TIMEOUT)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    await node_log.wait_for("Handshake failed", "PEER_DID_NOT_RETURN_A_CERTIFICATE")
    _assert_still_up(pair)
    await stream.assert_nothing_lost()


async def test_certificate_name_must_match_the_hello(
    pair: MeshHandle, rogue_files: pki.NodeFiles, stream: Background, node_log: NodeLog
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
    await node_log.wait_for("refused link", "certificate is for 'rogue'")
    _assert_still_up(pair)
    await stream.assert_nothing_lost()


async def test_hello_for_another_mesh(
    pair: MeshHandle, rogue_files: pki.NodeFiles, stream: Background, node_log: NodeLog
) -> None:
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
    await node_log.wait_for("link refused", "elsewhere")
    _assert_still_up(pair)
    await stream.assert_nothing_lost()


# --- malformed, truncated and oversized input on the link ----------------------------------------


async def test_garbage_bytes_on_the_link(
    pair: MeshHandle, rogue_files: pki.NodeFiles, stream: Background, node_log: NodeLog
) -> None:
    before = _counters(pair).get("garbage_frames", 0)
    async with _channel(pair, pki.channel_credentials(rogue_files)) as channel:
        call = channel.stream_stream(LINK_METHOD, None, None)()
        await call.write(b"\xff\xff garbage")
        code, _ = await _finish(call)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert _counters(pair)["garbage_frames"] == before + 1
    await node_log.wait_for("refused input", "not a mesh.v1.Frame")
    _assert_still_up(pair)
    await stream.assert_nothing_lost()


async def test_garbage_and_truncated_frames_after_the_hello(
    pair: MeshHandle, rogue_files: pki.NodeFiles, stream: Background, node_log: NodeLog
) -> None:
    whole = peer_pb2.Frame(
        batch=peer_pb2.EnvelopeBatch(envelopes=[_raw_envelope("a"), _raw_envelope("a")])
    ).SerializeToString()
    # Frame has one field, so a cut anywhere inside it leaves a length that runs past the end.
    bad = [b"\xff\xff garbage", whole[:1], whole[: len(whole) // 2], whole[:-1]]
    before = _counters(pair).get("garbage_frames", 0)
    async with _channel(pair, pki.channel_credentials(rogue_files)) as channel:
        for data in bad:
            peer = await _rogue_link(pair, channel)
            await peer.write(data)
            code, _ = await _finish(peer.call)
            await peer.close()
            assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{len(data)} bytes: {code}"
            await _wait_unlinked(pair)
    assert _counters(pair)["garbage_frames"] == before + len(bad)
    await node_log.wait_for("refused input", "not a mesh.v1.Frame")
    _assert_still_up(pair)
    await stream.assert_nothing_lost()


async def test_oversized_frame_is_refused_by_grpc(
    pair: MeshHandle, rogue_files: pki.NodeFiles, stream: Background
) -> None:
    async with _channel(pair, pki.channel_credentials(rogue_files)) as channel:
        call = channel.stream_stream(LINK_METHOD, None, None)()
        with contextlib.suppress(grpc.aio.AioRpcError):  # refused while still writing
            await call.write(b"\x00" * (MAX_FRAME + 1024 * 1024))
        code, _ = await _finish(call)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    _assert_still_up(pair)
    await stream.assert_nothing_lost()


async def test_envelope_header_twice_the_size_limit_is_resource_exhausted(
    pair: MeshHandle, rogue: Rogue, stream: Background, node_log: NodeLog
) -> None:
    """Twice the header limit (4 KiB); a payload twice the envelope limit is refused the
    same way, and a whole frame over gRPC's limit by grpc (the test above)."""
    huge = _raw_envelope("a", reply_to="x" * (2 * DEFAULT_LIMITS.max_header_bytes))
    before = _counters(pair).get("rejected_envelope_resource_exhausted", 0)
    nack = asyncio.ensure_future(rogue.next_nack())
    await rogue.send_envelopes(huge)
    ack = await nack
    assert ack.status == Status.RESOURCE_EXHAUSTED
    assert "over the 4096-byte limit" in ack.detail
    assert _counters(pair)["rejected_envelope_resource_exhausted"] == before + 1
    assert huge.digest not in _forwarded_ids(rogue)
    await node_log.wait_for("refused input", "over the 4096-byte limit")
    assert rogue.ended is None  # one bad envelope costs the envelope, not the link
    _assert_still_up(pair)
    await stream.assert_nothing_lost()


# --- envelopes that must not go on, or must not be delivered -------------------------------------


async def test_envelope_with_a_wrong_digest_is_refused_with_data_loss(
    pair: MeshHandle, rogue: Rogue, stream: Background, node_log: NodeLog
) -> None:
    before = _counters(pair)
    nack = asyncio.ensure_future(rogue.next_nack())
    await rogue.send_envelopes(_raw_envelope("a", digest_ok=False))
    ack = await nack
    assert ack.status == Status.DATA_LOSS
    assert "digest" in ack.detail
    after = _counters(pair)
    assert after["rejected_envelope_data_loss"] == before.get("rejected_envelope_data_loss", 0) + 1
    assert after.get("forwarded", 0) == before.get("forwarded", 0)  # never forwarded
    await node_log.wait_for("refused input", "digest")
    _assert_still_up(pair)
    await stream.assert_nothing_lost()


async def test_ttl_zero_is_refused_and_ttl_one_is_dropped(
    pair: MeshHandle, rogue: Rogue, stream: Background, node_log: NodeLog
) -> None:
    before = _counters(pair)
    nack = asyncio.ensure_future(rogue.next_nack())
    await rogue.send_envelopes(_raw_envelope("a", ttl=0))
    ack = await nack
    assert ack.status == Status.INVALID_ARGUMENT
    assert "ttl 0" in ack.detail
    await rogue.send_envelopes(_raw_envelope("a", ttl=1))  # its last hop was us: dropped
    dropped = await _wait_counter(pair, "dropped_ttl", before.get("dropped_ttl", 0) + 1)
    assert dropped == before.get("dropped_ttl", 0) + 1
    after = _counters(pair)
    assert after["rejected_envelope_invalid_argument"] == (
        before.get("rejected_envelope_invalid_argument", 0) + 1
    )
    assert after.get("forwarded", 0) == before.get("forwarded", 0)
    await node_log.wait_for("refused input", "ttl 0")
    _assert_still_up(pair)
    await stream.assert_nothing_lost()


async def test_forced_loop_is_dropped_and_counted(
    pair: MeshHandle,
    rogue: Rogue,
    rogue_files: pki.NodeFiles,
    stream: Background,
) -> None:
    """The rogue joins routing, so ``b``'s only way to it is back over the link the
    envelopes came in on: each is dropped at once (no bounce until ttl runs out)."""
    identity = NodeIdentity.load(ROGUE, rogue_files.signing.parent)
    await rogue.join(identity, pki.certificate_der(rogue_files))
    looping = [_raw_envelope(ROGUE, ttl=64) for _ in range(20)]
    before = _counters(pair)
    await rogue.send_envelopes(*looping)
    expected = before.get("dropped_loop", 0) + len(looping)
    assert await _wait_counter(pair, "dropped_loop", expected) == expected
    after = _counters(pair)
    assert after.get("forwarded", 0) == before.get("forwarded", 0)
    assert not {e.digest for e in looping} & _forwarded_ids(rogue)  # nothing came back
    await rogue.close()
    _assert_still_up(pair)
    await stream.assert_nothing_lost()


async def test_tampered_ciphertext_or_header_is_never_delivered(
    pair: MeshHandle, rogue: Rogue, stream: Background, node_log: NodeLog
) -> None:
    a, b = _identity(pair, "a"), _identity(pair, TARGET)
    payload = _seal(a, b, f"{stream.run}-tampered-payload")
    flipped = bytearray(payload.payload)
    flipped[0] ^= 0x01
    payload.payload = bytes(flipped)
    header = _seal(a, b, f"{stream.run}-tampered-header")
    fields = envelope_pb2.EnvelopeHeader()
    fields.ParseFromString(header.header)
    fields.created_ms += 1
    header.header = fields.SerializeToString()
    before = _counters(pair).get("rejected_delivery_unauthenticated", 0)
    for envelope in (_redigest(payload), _redigest(header)):
        nack = asyncio.ensure_future(rogue.next_nack())
        await rogue.send_envelopes(envelope)
        ack = await nack
        assert ack.status == Status.UNAUTHENTICATED
        assert "AEAD" in ack.detail
    assert _counters(pair)["rejected_delivery_unauthenticated"] == before + 2
    await node_log.wait_for("refused input", "AEAD tag does not verify")
    _assert_still_up(pair)
    await stream.assert_nothing_lost()  # a delivery of either would be "unexpected"


async def test_spoofed_source_is_unauthenticated(
    pair: MeshHandle, rogue: Rogue, stream: Background, node_log: NodeLog
) -> None:
    """Sealed by someone else's keys under the name ``a``: the pair key ``b`` derives
    from ``a``'s real public key does not open it."""
    impostor = NodeIdentity.generate("a")
    envelope = _seal(impostor, _identity(pair, TARGET), f"{stream.run}-spoofed")
    nack = asyncio.ensure_future(rogue.next_nack())
    await rogue.send_envelopes(envelope)
    ack = await nack
    assert ack.status == Status.UNAUTHENTICATED
    await node_log.wait_for("refused input", "AEAD tag does not verify")
    _assert_still_up(pair)
    await stream.assert_nothing_lost()


async def test_replay_inside_the_window_is_acknowledged_not_delivered_again(
    pair: MeshHandle, rogue: Rogue, rogue_files: pki.NodeFiles, stream: Background
) -> None:
    """A captured envelope of ``a``'s, replayed: ``b`` acks each copy (the first ack
    may have been lost) and delivers it once. The acks go to ``reply_to``, the rogue,
    so the test can read them."""
    identity = NodeIdentity.load(ROGUE, rogue_files.signing.parent)
    await rogue.join(identity, pki.certificate_der(rogue_files))
    message_id = f"{stream.run}-replayed"
    envelope = _seal(_identity(pair, "a"), _identity(pair, TARGET), message_id, reply_to=ROGUE)
    sealed_id = envelope_pb2.EnvelopeHeader.FromString(envelope.header).message_id
    keyring = KeyRing(identity, random_bytes=os.urandom)
    keyring.add_peer(_identity(pair, TARGET).public)
    opener = Opener(keyring)

    def acks() -> int:
        count = 0
        for frame in rogue.frames:
            for sent in frame.batch.envelopes if frame.HasField("batch") else ():
                header = opener.open(sent).header
                if header.kind == envelope_pb2.ENVELOPE_KIND_ACK:
                    count += header.correlation_id == sealed_id
        return count

    before = _counters(pair).get("duplicates", 0)
    for copies in (1, 2):
        await rogue.send_envelopes(envelope)
        await rogue.wait_for(lambda _, n=copies: acks() >= n)
        if copies == 1:
            stream.expect(message_id)  # acknowledged: it must arrive, and only once
    assert _counters(pair)["duplicates"] >= before + 1
    _assert_still_up(pair)
    await stream.assert_nothing_lost()


async def test_replay_outside_the_window_is_refused_as_expired(
    pair: MeshHandle, rogue: Rogue, stream: Background, node_log: NodeLog
) -> None:
    horizon_ms = 600_000  # DeliveryConfig.dedupe_horizon_ms: nothing older is vouched for
    created_ms = int(time.time() * 1000) - horizon_ms - 60_000
    envelope = _seal(
        _identity(pair, "a"), _identity(pair, TARGET), f"{stream.run}-stale", created_ms=created_ms
    )
    nack = asyncio.ensure_future(rogue.next_nack())
    await rogue.send_envelopes(envelope)
    ack = await nack
    assert ack.status == Status.DEADLINE_EXCEEDED
    assert "older than the dedupe window" in ack.detail
    await node_log.wait_for("refused input", "older than the dedupe window")
    _assert_still_up(pair)
    await stream.assert_nothing_lost()  # a delivery would be "unexpected"


# --- the client API ------------------------------------------------------------------------------


async def test_malformed_client_requests_are_invalid_argument(
    pair: MeshHandle, stream: Background, node_log: NodeLog
) -> None:
    before = _counters(pair).get("refused_malformed_calls", 0)
    async with _client_channel(pair) as channel:
        send = channel.unary_unary(f"{CLIENT_SERVICE}/Send", None, None)
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await send(b"\xff\xff garbage", timeout=READ_TIMEOUT)
        batches = channel.stream_stream(f"{CLIENT_SERVICE}/SendStream", None, None)()
        await batches.write(b"\xff\xff garbage")
        await batches.done_writing()
        streamed = await asyncio.wait_for(batches.code(), READ_TIMEOUT)
    assert unary.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "mesh.v1.SendRequest" in (unary.value.details() or "")
    assert streamed == grpc.StatusCode.INVALID_ARGUMENT
    assert _counters(pair)["refused_malformed_calls"] == before + 2
    await node_log.wait_for("refused call", "mesh.v1.SendRequest")
    _assert_still_up(pair)
    await stream.assert_nothing_lost()


async def test_truncated_client_request_is_invalid_argument(
    pair: MeshHandle, stream: Background, node_log: NodeLog
) -> None:
    whole = client_pb2.SendRequest(
        target=client_pb2.Address(kind=envelope_pb2.DESTINATION_KIND_NODE, name="a"),
        body=client_pb2.Body(data=b"x" * 100),
    ).SerializeToString()
    async with _client_channel(pair) as channel:
        send = channel.unary_unary(f"{CLIENT_SERVICE}/Send", None, None)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await send(whole[:-10], timeout=READ_TIMEOUT)  # cut inside the body
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await node_log.wait_for("refused call", "mesh.v1.SendRequest")
    _assert_still_up(pair)
    await stream.assert_nothing_lost()


async def test_client_body_twice_the_size_limit_is_resource_exhausted(
    pair: MeshHandle, stream: Background, node_log: NodeLog
) -> None:
    request = client_pb2.SendRequest(
        target=client_pb2.Address(kind=envelope_pb2.DESTINATION_KIND_NODE, name="a"),
        body=client_pb2.Body(data=b"\x00" * (2 * DEFAULT_LIMITS.max_body_bytes)),
        mode=envelope_pb2.DELIVERY_MODE_ACKNOWLEDGED,
    )
    async with _client_channel(pair) as channel:
        stub = client_pb2_grpc.ClientServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Send(request, timeout=WAIT_TIMEOUT)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await node_log.wait_for("refused client call", "over the")
    _assert_still_up(pair)
    await stream.assert_nothing_lost()


async def _sink(stub: client_pb2_grpc.ClientServiceStub, service: str) -> grpc.aio.StreamStreamCall:
    """A service instance at ``b`` that takes requests and never answers them."""
    serve = stub.Serve()
    await serve.write(
        client_pb2.ServeUpstream(register=client_pb2.ServiceRegistration(service=service))
    )
    registered = await asyncio.wait_for(serve.read(), READ_TIMEOUT)
    assert registered is not grpc.aio.EOF and registered.HasField("registered")
    return serve


async def test_sends_over_the_admission_limit_are_refused_at_once(
    pair: MeshHandle, stream: Background, node_log: NodeLog
) -> None:
    """``max_inflight_sends`` requests hang on an instance that never answers; one
    more Send is refused with RESOURCE_EXHAUSTED instead of waiting for a slot."""
    service = f"sink-{stream.run}"
    request = client_pb2.RequestMessage(
        target=client_pb2.Address(kind=envelope_pb2.DESTINATION_KIND_SERVICE, name=service),
        body=client_pb2.Body(data=b"?"),
        timeout_ms=60_000,
    )
    before = _counters(pair).get("refused_sends_in_flight", 0)
    async with _client_channel(pair) as channel:
        stub = client_pb2_grpc.ClientServiceStub(channel)
        serve = await _sink(stub, service)
        hanging: list[grpc.aio.UnaryUnaryCall] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_TIMEOUT
        # One read of the sink's stream stays pending across attempts: cancelling a
        # pending grpc.aio read cancels the whole Serve call.
        taken = asyncio.ensure_future(serve.read())
        while len(hanging) < MAX_INFLIGHT_SENDS:
            call = stub.Request(request, timeout=60.0)
            answered = asyncio.ensure_future(call)
            await asyncio.wait(
                {taken, answered}, timeout=READ_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
            if taken.done():
                read = taken.result()
                assert read is not grpc.aio.EOF and read.HasField("request"), read
                hanging.append(call)
                taken = asyncio.ensure_future(serve.read())
                continue
            # Not routed to the new instance yet (its advert is on its way): try again.
            assert answered.done(), "the request neither reached the sink nor failed"
            assert await call.code() == grpc.StatusCode.UNAVAILABLE, await call.code()
            assert loop.time() < deadline, "the sink never got a request"
            await asyncio.sleep(0.1)
        taken.cancel()  # the test is done with the sink; its calls are cancelled below
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Send(
                client_pb2.SendRequest(
                    target=client_pb2.Address(kind=envelope_pb2.DESTINATION_KIND_NODE, name="a"),
                    body=client_pb2.Body(data=b"one too many"),
                ),
                timeout=READ_TIMEOUT,
            )
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _counters(pair)["refused_sends_in_flight"] >= before + 1
        for call in hanging:
            call.cancel()
        serve.cancel()
        # The slots come back once the node has seen the cancellations.
        while True:
            try:
                await stub.Send(
                    client_pb2.SendRequest(
                        target=client_pb2.Address(
                            kind=envelope_pb2.DESTINATION_KIND_NODE, name="a"
                        ),
                        body=client_pb2.Body(data=b"room again"),
                    ),
                    timeout=READ_TIMEOUT,
                )
                break
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert loop.time() < deadline + WAIT_TIMEOUT, "the slots never came back"
                await asyncio.sleep(0.1)
    await node_log.wait_for("refused call", "client sends in progress")
    _assert_still_up(pair)
    await stream.assert_nothing_lost()


async def test_streams_over_the_limit_are_refused(
    pair: MeshHandle, stream: Background, node_log: NodeLog
) -> None:
    subject = f"hostile.{stream.run}"
    publish = client_pb2.SendRequest(
        target=client_pb2.Address(kind=envelope_pb2.DESTINATION_KIND_SUBJECT, name=subject),
        body=client_pb2.Body(data=b"hello subscribers"),
    )
    before = _counters(pair).get("refused_client_streams", 0)
    async with _client_channel(pair) as channel:
        stub = client_pb2_grpc.ClientServiceStub(channel)
        calls = [
            stub.Subscribe(client_pb2.SubscribeRequest(subject=subject))
            for _ in range(MAX_CLIENT_STREAMS + 1)
        ]
        for call in calls:
            await asyncio.wait_for(call.initial_metadata(), READ_TIMEOUT)
        firsts = [asyncio.ensure_future(call.read()) for call in calls]
        # Publish until every stream has either a delivery or its refusal.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_TIMEOUT
        while not all(first.done() for first in firsts):
            assert loop.time() < deadline, "some subscriptions got neither a message nor an error"
            await stub.Send(publish, timeout=READ_TIMEOUT)
            await asyncio.wait(firsts, timeout=0.2, return_when=asyncio.ALL_COMPLETED)
        refused = [f.exception() for f in firsts if f.exception() is not None]
        served = [f.result() for f in firsts if f.exception() is None]
        for call in calls:
            call.cancel()
    assert refused, "no stream was refused"
    for error in refused:
        assert isinstance(error, grpc.aio.AioRpcError)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert all(isinstance(d, client_pb2.Delivery) for d in served)
    # The background receiver holds one of b's stream slots.
    assert len(served) >= MAX_CLIENT_STREAMS - 1
    assert _counters(pair)["refused_client_streams"] >= before + len(refused)
    await node_log.wait_for("refused call", "client streams in progress")
    _assert_still_up(pair)
    await stream.assert_nothing_lost()


async def test_keepalive_pings_too_fast_end_the_connection(
    pair: MeshHandle, stream: Background, node_log: NodeLog
) -> None:
    """A client pinging far more often than the node allows (10 s) is sent GOAWAY
    (too_many_pings) after a few strikes; its calls fail with UNAVAILABLE."""
    abusive = [
        ("grpc.keepalive_time_ms", 100),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    async with _client_channel(pair, abusive) as channel:
        stub = client_pb2_grpc.ClientServiceStub(channel)
        call = stub.Subscribe(client_pb2.SubscribeRequest(subject=f"idle.{stream.run}"))
        await asyncio.wait_for(call.initial_metadata(), READ_TIMEOUT)
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await asyncio.wait_for(call.read(), WAIT_TIMEOUT)
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "ping" in (ended.value.details() or "").lower()
    await node_log.wait_for("client stream cancelled")
    _assert_still_up(pair)
    await stream.assert_nothing_lost()
