"""The applications attached to one node, as the runtime sees them.

Applications attach over ClientService streams: ``Receive`` (messages for
the node), ``Serve`` (instances of a service), ``Subscribe`` (subjects, maybe
in a queue group). This module keeps those attachments, hands each
``Deliver`` the core produces to the right one, and holds the futures of
callers waiting for an ack or a reply. Built-in handlers (``echo``) are
instances like any other, answered in-process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from mesh.actions import Acked, Deliver, Failed, Replied
from mesh.balance import Balancer, Policy
from mesh.codec import ContentType, EncodedBody
from mesh.envelope import EnvelopeHeader, OpenedMessage
from mesh.routing.table import ServiceInstance
from mesh.subjects import matches, offer
from mesh.v1 import envelope_pb2

log = logging.getLogger("mesh.apps")

T = TypeVar("T")
ReplyFn = Callable[[EnvelopeHeader, EncodedBody, int], None]
"""How an instance answers: (request header, body, status)."""


@dataclass(eq=False, slots=True)
class Instance:
    """One attached instance of a service."""

    service: str
    name: str
    weight: int
    queue: asyncio.Queue[OpenedMessage] | None = None
    """Where requests for a remote (streamed) instance go; None for built-ins."""
    builtin: Callable[[OpenedMessage], EncodedBody] | None = None
    in_flight: int = 0


@dataclass(eq=False, slots=True)
class Subscription:
    """One attached subscriber."""

    pattern: str
    queue_group: str | None
    queue: asyncio.Queue[OpenedMessage]

    @property
    def offer(self) -> str:
        return offer(self.pattern, self.queue_group)


@dataclass(slots=True)
class _Turns:
    counters: dict[str, int] = field(default_factory=dict)

    def pick(self, key: str, items: list[T]) -> T:
        turn = self.counters.get(key, 0)
        self.counters[key] = turn + 1
        return items[turn % len(items)]


def echo_handler(instance: str) -> Callable[[OpenedMessage], EncodedBody]:
    """The built-in echo: the body back, with the instance that answered."""

    def handle(message: OpenedMessage) -> EncodedBody:
        body = message.body
        if body.content_type is ContentType.JSON:
            echoed: object = json.loads(body.data or b"null")
        else:
            echoed = body.data.decode("utf-8", "replace")
        reply = {"instance": instance, "echo": echoed}
        return EncodedBody(data=json.dumps(reply).encode(), content_type=ContentType.JSON)

    return handle


class LocalApps:
    """Attachments, local fan-out and waiting callers of one node."""

    def __init__(
        self, node_id: str, reply: ReplyFn, *, inbox_max: int = 10_000, headroom: int = 1024
    ) -> None:
        self.node_id = node_id
        self._reply = reply
        self.inbox_max = inbox_max
        self.headroom = min(headroom, inbox_max // 2)
        """Room kept free in every queue: one frame can deliver a whole batch at once."""
        self.receivers: set[asyncio.Queue[OpenedMessage]] = set()
        self.inbox: OrderedDict[bytes, OpenedMessage] = OrderedDict()
        self.instances: dict[str, list[Instance]] = {}
        self.subscriptions: list[Subscription] = []
        self.acks: dict[bytes, asyncio.Future[Acked | Failed]] = {}
        self.replies: dict[bytes, asyncio.Future[Replied | Failed]] = {}
        self.serving: dict[bytes, tuple[EnvelopeHeader, Instance]] = {}
        self.dropped = 0
        self._turns = _Turns()
        self._local = Balancer(random.Random(0))

    # --- what the node advertises -----------------------------------------------

    def offers(self) -> tuple[dict[str, int], list[str]]:
        """Services (name -> summed weight) and subject offers of local attachments."""
        services: dict[str, int] = {}
        for name, instances in self.instances.items():
            if instances:
                services[name] = sum(i.weight for i in instances)
        subjects = sorted({s.offer for s in self.subscriptions})
        return services, subjects

    # --- attachments ----------------------------------------------------------------

    def add_instance(self, instance: Instance) -> None:
        self.instances.setdefault(instance.service, []).append(instance)

    def remove_instance(self, instance: Instance) -> None:
        instances = self.instances.get(instance.service, [])
        if instance in instances:
            instances.remove(instance)
        if not instances:
            self.instances.pop(instance.service, None)
        for request_id, (_, owner) in list(self.serving.items()):
            if owner is instance:  # its callers will time out and retry elsewhere
                del self.serving[request_id]

    # --- deliveries -----------------------------------------------------------------

    def deliver(self, action: Deliver) -> None:
        """Hand one delivered message to whoever it is for."""
        message = action.message
        header = message.header
        kind = header.destination_kind
        if header.kind == envelope_pb2.ENVELOPE_KIND_REQUEST or (
            kind == envelope_pb2.DESTINATION_KIND_SERVICE
        ):
            self._to_instance(message)
        elif kind == envelope_pb2.DESTINATION_KIND_SUBJECT:
            self._to_subscribers(message)
        else:
            self._to_receivers(message)

    def saturated(self) -> bool:
        """Whether the applications are too far behind to be promised more messages:
        a receiver's or subscriber's queue (or the inbox, with nobody attached) is
        within ``headroom`` of full. The core then leaves acknowledged messages
        unacked, for their sources to retry, instead of this node dropping them."""
        limit = self.inbox_max - self.headroom
        if not self.receivers and len(self.inbox) >= limit:
            return True
        return any(queue.qsize() >= limit for queue in self.receivers) or any(
            sub.queue.qsize() >= limit for sub in self.subscriptions
        )

    def detach_receiver(self, queue: asyncio.Queue[OpenedMessage]) -> None:
        """A Receive stream ended: what it had not yet written goes back to the inbox
        (first in line) when no other receiver got its own copy."""
        self.receivers.discard(queue)
        if self.receivers:
            return
        left: list[OpenedMessage] = []
        while not queue.empty():
            left.append(queue.get_nowait())
        for message in reversed(left):
            self.inbox[message.header.message_id] = message
            self.inbox.move_to_end(message.header.message_id, last=False)

    def _to_receivers(self, message: OpenedMessage) -> None:
        if not self.receivers:
            self.inbox[message.header.message_id] = message
            while len(self.inbox) > self.inbox_max:
                self.inbox.popitem(last=False)
                self.dropped += 1
            return
        for queue in self.receivers:
            if queue.full():
                self.dropped += 1
            else:
                queue.put_nowait(message)

    def _to_subscribers(self, message: OpenedMessage) -> None:
        subject = message.header.destination
        chosen_groups = set(message.header.queue_groups)
        groups: dict[str, list[Subscription]] = {}
        for sub in self.subscriptions:
            if not matches(sub.pattern, subject):
                continue
            if sub.queue_group is None:
                self._offer(sub.queue, message)
            elif sub.offer in chosen_groups:
                groups.setdefault(sub.offer, []).append(sub)
        for key, members in groups.items():
            self._offer(self._turns.pick(key, members).queue, message)

    def _to_instance(self, message: OpenedMessage) -> None:
        header = message.header
        instances = self.instances.get(header.destination, [])
        if header.destination_kind != envelope_pb2.DESTINATION_KIND_SERVICE:
            instances = [i for group in self.instances.values() for i in group]
        if not instances:
            self._reply(
                header,
                _error_body(f"no instance of {header.destination!r} on {self.node_id!r}"),
                14,  # UNAVAILABLE: the caller's balancer ejects this node and retries
            )
            return
        # Among the least busy, smooth weighted round-robin by registered weight.
        least = min(i.in_flight for i in instances)
        idle = {i.name: i for i in instances if i.in_flight == least}
        chosen = self._local.choose(
            header.destination,
            [ServiceInstance(node=name, weight=i.weight) for name, i in idle.items()],
            0.0,
            policy=Policy.WEIGHTED,
        )
        instance = idle[chosen] if chosen is not None else next(iter(idle.values()))
        if instance.builtin is not None:
            self._reply(header, instance.builtin(message), 0)
            return
        assert instance.queue is not None
        if instance.queue.full():
            self._reply(header, _error_body(f"instance {instance.name!r} is saturated"), 8)
            return
        instance.in_flight += 1
        self.serving[header.message_id] = (header, instance)
        while len(self.serving) > 100_000:
            self.serving.pop(next(iter(self.serving)))
        instance.queue.put_nowait(message)

    def answered(self, request_id: bytes) -> tuple[EnvelopeHeader, Instance] | None:
        """The request an instance answers, if it is still expected."""
        entry = self.serving.pop(request_id, None)
        if entry is not None:
            entry[1].in_flight = max(0, entry[1].in_flight - 1)
        return entry

    def _offer(self, queue: asyncio.Queue[OpenedMessage], message: OpenedMessage) -> None:
        if queue.full():
            self.dropped += 1
        else:
            queue.put_nowait(message)

    # --- waiting callers ------------------------------------------------------------

    def resolve(self, action: Acked | Replied | Failed) -> None:
        """Wake the caller waiting for this ack, reply or failure, if any."""
        message_id = action.message_id
        if isinstance(action, Acked):
            ack = self.acks.pop(message_id, None)
            if ack is not None and not ack.done():
                ack.set_result(action)
            return
        if isinstance(action, Replied):
            reply = self.replies.pop(message_id, None)
            if reply is not None and not reply.done():
                reply.set_result(action)
            return
        for table in (self.acks, self.replies):
            waiting = table.pop(message_id, None)
            if waiting is not None and not waiting.done():
                waiting.set_result(action)


def _error_body(text: str) -> EncodedBody:
    return EncodedBody(data=text.encode(), content_type=ContentType.RAW)


__all__ = ["Instance", "LocalApps", "Subscription", "echo_handler"]
