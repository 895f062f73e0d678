"""Local applications of a node: when they count as full, and what a leaving receiver leaves."""

from __future__ import annotations

import asyncio

from mesh.actions import Deliver
from mesh.codec import encode_body
from mesh.envelope import OpenedMessage
from mesh.v1 import envelope_pb2
from nodes.apps import LocalApps


def message(n: int) -> OpenedMessage:
    header = envelope_pb2.EnvelopeHeader(
        message_id=n.to_bytes(16, "big"),
        source="a",
        destination="b",
        destination_kind=envelope_pb2.DESTINATION_KIND_NODE,
    )
    return OpenedMessage(header=header, body=encode_body({"n": n}), signed=False)


def apps(inbox_max: int = 10, headroom: int = 3) -> LocalApps:
    return LocalApps("b", lambda *args: None, inbox_max=inbox_max, headroom=headroom)


def test_the_inbox_counts_as_full_one_batch_before_it_is() -> None:
    local = apps()
    for n in range(6):
        local.deliver(Deliver(message=message(n)))
    assert not local.saturated()
    local.deliver(Deliver(message=message(6)))
    assert local.saturated()  # 7 of 10: one more batch of 3 would overflow


def test_a_receiver_behind_makes_the_node_full() -> None:
    local = apps()
    queue: asyncio.Queue[OpenedMessage] = asyncio.Queue(maxsize=10)
    local.receivers.add(queue)
    for n in range(7):
        local.deliver(Deliver(message=message(n)))
    assert queue.qsize() == 7
    assert local.saturated()


def test_a_receiver_that_leaves_puts_back_what_it_had_not_written() -> None:
    local = apps()
    queue: asyncio.Queue[OpenedMessage] = asyncio.Queue(maxsize=10)
    local.receivers.add(queue)
    for n in (1, 2, 3):
        local.deliver(Deliver(message=message(n)))
    queue.get_nowait()  # 1 was written to the stream
    local.detach_receiver(queue)
    assert [int.from_bytes(m, "big") for m in local.inbox] == [2, 3]
    assert local.receivers == set()
