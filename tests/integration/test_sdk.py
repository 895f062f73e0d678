"""The application SDK (mesh/client.py) against real node processes over mTLS.

One 3-node line (n1 - n2 - n3) is launched for the module with
:func:`nodes.launcher.launch`; clients attach through its state dir (the CLI
client certificate) or with explicit certificate files. Every wait is bounded
and every service and subject name is unique to its test, so a test never sees
another's leftovers.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import mesh
from mesh.client import (
    Client,
    ConnectError,
    DeadlineExceeded,
    Message,
    RemoteCallError,
    Subscription,
    Unavailable,
)
from mesh.errors import InvalidArgument, Status
from nodes.launcher import MeshHandle, launch

TOPOLOGY = """\
mesh: sdk
routing: link-state
nodes: {n1: {}, n2: {}, n3: {}}
links:
  - {a: n1, b: n2, cost: 1}
  - {a: n2, b: n3, cost: 1}
"""
WAIT = 10.0
"""Seconds any one wait in these tests may take before the test fails."""

Connect = Callable[[str], Awaitable[Client]]


@pytest.fixture(scope="module")
def line3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshHandle]:
    directory = tmp_path_factory.mktemp("sdk")
    topology = directory / "sdk.yaml"
    topology.write_text(TOPOLOGY, encoding="utf-8")
    handle = launch(topology, directory / "state", insecure=False, timeout=30.0)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
async def connect(line3: MeshHandle) -> AsyncIterator[Connect]:
    """``await connect("n1") -> Client`` through the state dir; all closed at teardown."""
    clients: list[Client] = []

    async def make(node: str) -> Client:
        client = await mesh.connect(node=node, state_dir=line3.state_dir, timeout=WAIT)
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for client in clients:
            await client.close()


async def request_when_known(client: Client, service: str, body: Any, **kwargs: Any) -> Any:
    """Request ``service`` once the caller's node has heard of it (its advert travels)."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            return await client.request(service, body, **kwargs)
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def collect(subscription: Subscription, into: list[Message]) -> None:
    async for message in subscription:
        into.append(message)


async def until(condition: Callable[[], bool], what: str, action: Any = None) -> None:
    """Poll ``condition`` (running ``action`` before each look) until true or WAIT passes."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        if action is not None:
            await action()
        await asyncio.sleep(0.05)


def cli_files(handle: MeshHandle) -> tuple[Path, Path, Path]:
    """The CLI's client certificate files recorded in ``mesh.json``."""
    cli = json.loads((handle.state_dir / "mesh.json").read_text())["cli"]
    return Path(cli["ca"]), Path(cli["cert"]), Path(cli["key"])


# --- one-way messages ------------------------------------------------------------------------


async def test_send_reaches_the_node_it_is_addressed_to(connect: Connect) -> None:
    n1, n3 = await connect("n1"), await connect("n3")
    async with n3.receive() as inbox:
        message_id = await n1.send("n3", {"order": 7})
        message = await inbox.get(WAIT)
    assert message.message_id == message_id
    assert (message.source, message.destination, message.kind) == ("n1", "n3", "node")
    assert message.json() == {"order": 7}
    assert message.content_type is mesh.ContentType.JSON


async def test_acknowledged_send_waits_for_the_destinations_ack(connect: Connect) -> None:
    n1, n3 = await connect("n1"), await connect("n3")
    async with n3.receive() as inbox:
        durable = await n1.send("n3", b"\x00stored", acknowledged=True)
        acked = await n1.send("n3", b"\x01acked", wait_for_ack=True, timeout=WAIT)
        got = {m.message_id: m for m in [await inbox.get(WAIT), await inbox.get(WAIT)]}
    assert set(got) == {durable, acked}
    assert got[acked].raw == b"\x01acked"
    assert got[acked].body == b"\x01acked"  # RAW decodes to bytes


async def test_send_batch_delivers_every_item_once_in_one_write(connect: Connect) -> None:
    n1, n3 = await connect("n1"), await connect("n3")
    async with n3.receive() as inbox:
        ids = await n1.send_batch([("n3", {"i": i}) for i in range(200)], acknowledged=True)
        ids += await n1.send_batch([("n3", {"i": i}) for i in range(200, 300)])
        got = [await inbox.get(WAIT) for _ in range(300)]
    assert len(set(ids)) == 300
    assert sorted(m.json()["i"] for m in got) == list(range(300))
    assert {m.message_id for m in got} == set(ids)


async def test_send_batch_reports_refused_items_one_by_one(connect: Connect) -> None:
    n1, n3 = await connect("n1"), await connect("n3")
    async with n3.receive() as inbox:  # take the one that goes through: leave no mail behind
        with pytest.raises(mesh.client.BatchSendError) as refused:
            await n1.send_batch([("n3", {"ok": 1}), ("nowhere", {"ok": 0})])
        assert (await inbox.get(WAIT)).json() == {"ok": 1}
    first, second = refused.value.outcomes
    assert isinstance(first, bytes)
    assert isinstance(second, mesh.client.RemoteCallError)
    assert second.status is mesh.Status.UNAVAILABLE


async def test_send_to_a_node_without_a_route_is_unavailable(connect: Connect) -> None:
    n1 = await connect("n1")
    with pytest.raises(Unavailable) as caught:
        await n1.send("nowhere", {"x": 1})
    assert caught.value.status is Status.UNAVAILABLE


# --- request / reply -------------------------------------------------------------------------


async def test_request_reaches_a_handler_at_another_node(connect: Connect) -> None:
    n1, n3 = await connect("n1"), await connect("n3")

    async def double(message: Message) -> dict[str, int]:
        return {"double": message.json()["n"] * 2}

    async with n3.serve("sdk-double", double) as serving:
        assert serving.instance.startswith("n3/")
        reply = await request_when_known(n1, "sdk-double", {"n": 21}, timeout=WAIT)
    assert reply.body == {"double": 42}
    assert reply.responder == "n3"
    assert reply.raw.content_type is mesh.ContentType.JSON


async def test_request_reaches_a_plain_function_handler_at_the_same_node(
    connect: Connect,
) -> None:
    n1 = await connect("n1")
    seen: list[str] = []

    def shout(message: Message) -> bytes:  # runs in a worker thread
        seen.append(message.source)
        return message.raw.upper()

    async with n1.serve("sdk-shout", shout, instance="shouter"):
        reply = await request_when_known(n1, "sdk-shout", b"hello", timeout=WAIT)
    assert reply.body == b"HELLO"
    assert reply.responder == "n1"
    assert seen == ["n1"]


async def test_handler_exception_becomes_internal_error_with_its_message(
    connect: Connect,
) -> None:
    n1, n2 = await connect("n1"), await connect("n2")

    async def fail(message: Message) -> None:
        if message.json() == "invalid":
            raise InvalidArgument("order id must be positive")
        raise RuntimeError("the warehouse is on fire")

    async with n2.serve("sdk-fail", fail):
        with pytest.raises(RemoteCallError) as internal:
            await request_when_known(n1, "sdk-fail", "crash", timeout=WAIT)
        with pytest.raises(RemoteCallError) as invalid:
            await n1.request("sdk-fail", "invalid", timeout=WAIT)
    assert internal.value.status is Status.INTERNAL
    assert "the warehouse is on fire" in str(internal.value)
    assert "Traceback" not in str(internal.value)
    assert invalid.value.status is Status.INVALID_ARGUMENT  # a MeshError keeps its status
    assert "order id must be positive" in str(invalid.value)


async def test_request_to_a_missing_service_is_unavailable(connect: Connect) -> None:
    n1 = await connect("n1")
    with pytest.raises(Unavailable) as caught:
        await n1.request("sdk-nobody-serves-this", {}, timeout=2.0)
    assert caught.value.status is Status.UNAVAILABLE


async def test_slow_handler_gives_deadline_exceeded(connect: Connect) -> None:
    n1, n2 = await connect("n1"), await connect("n2")
    started = asyncio.Event()

    async def slow(message: Message) -> str:
        started.set()
        await asyncio.sleep(30)
        return "too late"

    async with n2.serve("sdk-slow", slow):
        with pytest.raises(DeadlineExceeded) as caught:
            # Bounded twice: the SDK's own deadline, and this test's.
            await asyncio.wait_for(_request_slow(n1), timeout=WAIT)
        assert started.is_set()
    assert caught.value.status is Status.DEADLINE_EXCEEDED


async def _request_slow(client: Client) -> Any:
    deadline = time.monotonic() + WAIT
    while True:  # until n1 knows the service; then the one real attempt times out
        try:
            return await client.request("sdk-slow", {"work": 1}, timeout=0.5)
        except Unavailable:
            assert time.monotonic() < deadline, "sdk-slow never became known at n1"
            await asyncio.sleep(0.05)


async def test_bad_arguments_fail_before_anything_is_sent(connect: Connect) -> None:
    n1 = await connect("n1")
    with pytest.raises(mesh.EncodeError):
        await n1.send("n2", {1, 2})
    with pytest.raises(InvalidArgument):
        await n1.request("svc", {}, policy="fastest")
    with pytest.raises(InvalidArgument):
        n1.subscribe("orders.>.eu")


# --- pub/sub -----------------------------------------------------------------------------------


async def test_publish_reaches_wildcard_subscribers(connect: Connect) -> None:
    n1, n2, n3 = await connect("n1"), await connect("n2"), await connect("n3")
    one_token, the_rest = n2.subscribe("sdk.orders.*"), n3.subscribe("sdk.orders.>")
    got: dict[str, list[Message]] = {"*": [], ">": []}
    readers = [
        asyncio.create_task(collect(one_token, got["*"])),
        asyncio.create_task(collect(the_rest, got[">"])),
    ]
    try:
        # Subscriptions travel as adverts: probe until n1 sends a copy to both nodes.
        copies = 0

        async def probe() -> None:
            nonlocal copies
            copies = await n1.publish("sdk.orders.probe", "probe")

        await until(lambda: copies == 2, "both subscriptions to be known at n1", probe)
        assert await n1.publish("sdk.orders.created", {"id": 1}) == 2
        assert await n1.publish("sdk.orders.eu.created", {"id": 2}) == 1

        def real(key: str) -> list[Any]:
            return [m.json() for m in got[key] if m.destination != "sdk.orders.probe"]

        await until(lambda: len(real("*")) >= 1 and len(real(">")) >= 2, "both publications")
        assert real("*") == [{"id": 1}]
        assert real(">") == [{"id": 1}, {"id": 2}]
        assert {m.kind for m in got[">"]} == {"subject"}
    finally:
        for reader in readers:
            reader.cancel()
        await one_token.stop()
        await the_rest.stop()


async def test_queue_group_splits_messages_between_members(connect: Connect) -> None:
    n1, n2, n3 = await connect("n1"), await connect("n2"), await connect("n3")
    members = {
        "n2": n2.subscribe("sdk.jobs.>", queue="workers"),
        "n3": n3.subscribe("sdk.jobs.>", queue="workers"),
    }
    got: dict[str, list[Message]] = {name: [] for name in members}
    readers = [asyncio.create_task(collect(sub, got[name])) for name, sub in members.items()]
    try:
        # A group is one copy however many members n1 knows: probe until each got one.
        async def probe() -> None:
            await n1.publish("sdk.jobs.probe", "probe")

        await until(lambda: all(got.values()), "every queue member to receive a probe", probe)
        for i in range(20):
            await n1.publish(f"sdk.jobs.n{i}", i)

        def real(name: str) -> list[int]:
            return [m.json() for m in got[name] if m.destination != "sdk.jobs.probe"]

        await until(lambda: len(real("n2")) + len(real("n3")) >= 20, "all 20 jobs")
        assert sorted(real("n2") + real("n3")) == list(range(20))  # each exactly once
        assert sorted([len(real("n2")), len(real("n3"))]) == [10, 10]  # round-robin
    finally:
        for reader in readers:
            reader.cancel()
        for sub in members.values():
            await sub.stop()


# --- connecting and the blocking client --------------------------------------------------------


async def test_connect_fails_fast_on_a_wrong_node_name_or_a_dead_address(
    line3: MeshHandle,
) -> None:
    ca, cert, key = cli_files(line3)
    # n1's address, but expecting n2's certificate: the TLS name check refuses it.
    with pytest.raises(Unavailable):
        await mesh.connect(
            line3.addresses["n1"], node_id="n2", timeout=1.0, ca=ca, cert=cert, key=key
        )
    with pytest.raises(Unavailable):
        await mesh.connect("127.0.0.1:1", insecure=True, timeout=0.5)
    with pytest.raises(ConnectError):
        await mesh.connect(line3.addresses["n1"])  # neither TLS files nor insecure
    async with mesh.connect(
        line3.addresses["n1"], node_id="n1", ca=ca, cert=cert, key=key
    ) as client:
        assert client.node == "n1"


def test_blocking_client_round_trip(line3: MeshHandle) -> None:
    ca, cert, key = cli_files(line3)
    with (
        mesh.connect_sync(
            line3.addresses["n3"], node_id="n3", timeout=WAIT, ca=ca, cert=cert, key=key
        ) as n3,
        mesh.connect_sync(node="n1", state_dir=line3.state_dir, timeout=WAIT) as n1,
    ):
        with n3.serve("sdk-sync-add", lambda m: sum(m.json())) as serving:
            deadline = time.monotonic() + WAIT
            while True:
                try:
                    reply = n1.request("sdk-sync-add", [1, 2, 3], timeout=WAIT)
                    break
                except Unavailable:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
            assert (reply.body, reply.responder) == (6, "n3")
            assert serving.handled == 1
        with n3.receive() as inbox:
            message_id = n1.send("n3", "direct", wait_for_ack=True, timeout=WAIT)
            message = inbox.get(WAIT)
            assert (message.message_id, message.json()) == (message_id, "direct")
            with pytest.raises(TimeoutError):
                inbox.get(0.2)


async def test_serving_reattaches_after_its_node_restarts(
    line3: MeshHandle, connect: Connect
) -> None:
    n1, n3 = await connect("n1"), await connect("n3")

    async def where(message: Message) -> str:
        return "n3"

    async with n3.serve("sdk-survivor", where) as serving:
        await request_when_known(n1, "sdk-survivor", None, timeout=WAIT)
        await asyncio.to_thread(line3.restart, "n3", WAIT)
        await serving.registered(WAIT)  # the stream was re-opened and re-registered
        await asyncio.to_thread(line3.wait_converged, None, WAIT)
        reply = await request_when_known(n1, "sdk-survivor", None, timeout=WAIT)
    assert reply.body == "n3"
