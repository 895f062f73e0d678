"""Delivery guarantees on real node processes: balancing, exactly-once, crashes.

Applications attach through the ClientService RPCs (raw grpc.aio stubs, so
these tests do not depend on the SDK); node processes are started by the
launcher over mTLS and killed with SIGKILL where a test says so.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

from mesh.v1 import client_pb2, client_pb2_grpc, envelope_pb2
from nodes.admin_client import aio_channel, target_for
from nodes.launcher import MeshHandle

SERVICE = envelope_pb2.DESTINATION_KIND_SERVICE
NODE = envelope_pb2.DESTINATION_KIND_NODE
JSON = envelope_pb2.CONTENT_TYPE_JSON

STAR = """\
mesh: star
routing: link-state
nodes: {hub: {}, s1: {}, s2: {}, s3: {}}
links:
  - {a: hub, b: s1}
  - {a: hub, b: s2}
  - {a: hub, b: s3}
"""

LINE3 = """\
mesh: line3
routing: link-state
nodes: {a: {}, b: {}, c: {}}
links:
  - {a: a, b: b}
  - {a: b, b: c}
"""


def channel(handle: MeshHandle, node: str) -> grpc.aio.Channel:
    target = target_for(handle.state, node)
    assert target.tls is not None  # the launcher runs mTLS
    return aio_channel(target)


def mesh(make: Callable[..., MeshHandle], tmp_path: Path, text: str) -> MeshHandle:
    path = tmp_path / "topology.yaml"
    path.write_text(text)
    return make(path)


async def serve(
    stub: client_pb2_grpc.ClientServiceStub, service: str, name: str, weight: int
) -> None:
    """Attach one instance that answers {"instance": name}; runs until cancelled."""
    replies: asyncio.Queue[client_pb2.ServeUpstream] = asyncio.Queue()

    async def upstream() -> AsyncIterator[client_pb2.ServeUpstream]:
        yield client_pb2.ServeUpstream(
            register=client_pb2.ServiceRegistration(service=service, weight=weight, instance=name)
        )
        while True:
            yield await replies.get()

    call = stub.Serve(upstream())
    try:
        async for down in call:
            if down.HasField("request"):
                body = json.dumps({"instance": name}).encode()
                await replies.put(
                    client_pb2.ServeUpstream(
                        reply=client_pb2.HandlerReply(
                            request_id=down.request.message_id,
                            body=client_pb2.Body(content_type=JSON, data=body),
                        )
                    )
                )
    finally:
        call.cancel()


async def request_many(
    stub: client_pb2_grpc.ClientServiceStub,
    count: int,
    *,
    policy: str,
    concurrency: int = 64,
    between: Callable[[int], None] | None = None,
) -> tuple[Counter[str], list[grpc.StatusCode]]:
    """``count`` requests to service ``work``, ``concurrency`` in flight."""
    answered: Counter[str] = Counter()
    errors: list[grpc.StatusCode] = []
    next_index = iter(range(count))

    async def worker() -> None:
        for index in next_index:
            if between is not None:
                between(index)
            try:
                reply = await stub.Request(
                    client_pb2.RequestMessage(
                        target=client_pb2.Address(kind=SERVICE, name="work"),
                        body=client_pb2.Body(content_type=JSON, data=b"{}"),
                        timeout_ms=10_000,
                        policy=policy,
                    ),
                    timeout=15,
                )
            except grpc.aio.AioRpcError as exc:
                errors.append(exc.code())
                continue
            answered[json.loads(reply.body.data)["instance"]] += 1

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), 120)
    return answered, errors


async def attach_three(handle: MeshHandle, weights: dict[str, int]) -> list[asyncio.Task[None]]:
    tasks = []
    for node, weight in weights.items():
        stub = client_pb2_grpc.ClientServiceStub(channel(handle, node))
        tasks.append(asyncio.ensure_future(serve(stub, "work", node, weight)))
    # Registrations are advertised and flooded: poll until every instance answers.
    hub = client_pb2_grpc.ClientServiceStub(channel(handle, "hub"))
    answered: set[str] = set()
    deadline = asyncio.get_running_loop().time() + 15
    while answered != set(weights):
        assert asyncio.get_running_loop().time() < deadline, f"only {answered} answer"
        found, _ = await request_many(hub, 3 * len(weights), policy="round-robin", concurrency=1)
        answered |= set(found)
    return tasks


async def test_weighted_and_round_robin_balancing(
    mesh_factory: Callable[..., MeshHandle], tmp_path: Path
) -> None:
    handle = mesh(mesh_factory, tmp_path, STAR)
    tasks = await attach_three(handle, {"s1": 1, "s2": 2, "s3": 3})
    hub = client_pb2_grpc.ClientServiceStub(channel(handle, "hub"))
    try:
        answered, errors = await request_many(hub, 6000, policy="weighted")
        assert errors == []
        for node, share in (("s1", 1 / 6), ("s2", 2 / 6), ("s3", 3 / 6)):
            assert abs(answered[node] - 6000 * share) <= 0.05 * 6000 * share, answered
        answered, errors = await request_many(hub, 300, policy="round-robin")
        assert errors == [] and answered == {"s1": 100, "s2": 100, "s3": 100}
    finally:
        for task in tasks:
            task.cancel()


async def test_an_instance_that_dies_mid_run_stops_receiving(
    mesh_factory: Callable[..., MeshHandle], tmp_path: Path
) -> None:
    handle = mesh(mesh_factory, tmp_path, STAR)
    tasks = await attach_three(handle, {"s1": 1, "s2": 1, "s3": 1})
    hub = client_pb2_grpc.ClientServiceStub(channel(handle, "hub"))
    killed_at = 300

    def kill_s2(index: int) -> None:
        if index == killed_at:
            handle.kill("s2")  # SIGKILL of the node: its instance and its in-flight requests

    try:
        answered, errors = await request_many(hub, 900, policy="round-robin", between=kill_s2)
        assert errors == []  # in-flight requests to s2 were retried elsewhere
        assert sum(answered.values()) == 900
        assert answered["s2"] <= killed_at // 3 + 64  # nothing after the kill (+ in flight)
    finally:
        for task in tasks:
            task.cancel()


async def receiving(
    stub: client_pb2_grpc.ClientServiceStub, seen: Counter[int]
) -> asyncio.Task[None]:
    """Count deliveries on ``stub``'s Receive stream; returns once the stream is attached."""
    call = stub.Receive(client_pb2.ReceiveRequest())
    await asyncio.wait_for(call.initial_metadata(), 10)  # sent by the node once attached

    async def count() -> None:
        async for delivery in call:
            seen[json.loads(delivery.body.data)["seq"]] += 1

    return asyncio.ensure_future(count())


async def _send(stub: client_pb2_grpc.ClientServiceStub, seq: int) -> bytes:
    response = await stub.Send(
        client_pb2.SendRequest(
            target=client_pb2.Address(kind=NODE, name="c"),
            body=client_pb2.Body(content_type=JSON, data=json.dumps({"seq": seq}).encode()),
            mode=envelope_pb2.DELIVERY_MODE_ACKNOWLEDGED,
            timeout_ms=120_000,
        ),
        timeout=30,
    )
    return bytes(response.message_id)


async def _wait_for(seen: Counter[int], count: int, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(seen) < count and loop.time() < deadline:
        await asyncio.sleep(0.1)


async def test_acknowledged_messages_survive_a_middle_node_crash_exactly_once(
    mesh_factory: Callable[..., MeshHandle], tmp_path: Path
) -> None:
    handle = mesh(mesh_factory, tmp_path, LINE3)
    sender = client_pb2_grpc.ClientServiceStub(channel(handle, "a"))
    receiver = client_pb2_grpc.ClientServiceStub(channel(handle, "c"))
    seen: Counter[int] = Counter()
    counting = await receiving(receiver, seen)
    total = 10_000
    try:
        sem = asyncio.Semaphore(128)

        async def one(seq: int) -> None:
            async with sem:
                await _send(sender, seq)

        first = asyncio.gather(*(one(seq) for seq in range(total // 2)))
        await asyncio.wait_for(first, 120)
        handle.kill("b")  # the only path: messages wait in a's outbox
        await asyncio.wait_for(asyncio.gather(*(one(seq) for seq in range(total // 2, total))), 120)
        handle.restart("b")
        await _wait_for(seen, total, 150)
        assert len(seen) == total, f"lost {total - len(seen)}"
        assert [s for s, n in seen.items() if n > 1] == []
    finally:
        counting.cancel()


async def test_the_sender_killed_and_restarted_loses_nothing(
    mesh_factory: Callable[..., MeshHandle], tmp_path: Path
) -> None:
    handle = mesh(mesh_factory, tmp_path, LINE3)
    receiver = client_pb2_grpc.ClientServiceStub(channel(handle, "c"))
    seen: Counter[int] = Counter()
    counting = await receiving(receiver, seen)
    try:
        handle.kill("b")  # nothing can leave a: every accepted message is in its outbox
        sender = client_pb2_grpc.ClientServiceStub(channel(handle, "a"))
        accepted = [await _send(sender, seq) for seq in range(200)]
        assert len(set(accepted)) == 200
        handle.kill("a")  # kill -9 with 200 accepted, unacked messages on disk
        handle.restart("a")
        handle.restart("b")
        await _wait_for(seen, 200, 60)
        assert sorted(seen) == list(range(200))
        assert max(seen.values()) == 1
    finally:
        counting.cancel()


async def test_no_instance_and_slow_handlers_fail_clearly(
    mesh_factory: Callable[..., MeshHandle], tmp_path: Path
) -> None:
    handle = mesh(mesh_factory, tmp_path, LINE3)
    caller = client_pb2_grpc.ClientServiceStub(channel(handle, "a"))
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await caller.Request(
            client_pb2.RequestMessage(
                target=client_pb2.Address(kind=SERVICE, name="ghost"),
                body=client_pb2.Body(content_type=JSON, data=b"{}"),
                timeout_ms=2_000,
            ),
            timeout=10,
        )
    assert missing.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "ghost" in (missing.value.details() or "")

    # A handler that never answers: the caller gets DEADLINE_EXCEEDED, not a hang.
    slow = client_pb2_grpc.ClientServiceStub(channel(handle, "c"))

    async def upstream() -> AsyncIterator[client_pb2.ServeUpstream]:
        yield client_pb2.ServeUpstream(
            register=client_pb2.ServiceRegistration(service="slow", weight=1)
        )
        await asyncio.sleep(3600)

    call = slow.Serve(upstream())
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while True:  # UNAVAILABLE until the registration has been flooded to a
            started = loop.time()
            with pytest.raises(grpc.aio.AioRpcError) as late:
                await caller.Request(
                    client_pb2.RequestMessage(
                        target=client_pb2.Address(kind=SERVICE, name="slow"),
                        body=client_pb2.Body(content_type=JSON, data=b"{}"),
                        timeout_ms=1_500,
                    ),
                    timeout=10,
                )
            if late.value.code() != grpc.StatusCode.UNAVAILABLE or loop.time() > deadline:
                break
            await asyncio.sleep(0.05)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert loop.time() - started < 9  # it came back by itself, before the RPC timeout
    finally:
        call.cancel()
