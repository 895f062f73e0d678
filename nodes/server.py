"""The node process: one grpc.aio server serving peers, applications and operators.

``create_server`` binds the services (PeerService over raw bytes, ClientService,
AdminService, gRPC health and reflection) to one port; ``run_node`` loads a
node config, starts the runtime and stops gracefully on SIGTERM/SIGINT: health
goes NOT_SERVING, the server stops accepting and drains in-flight RPCs, links
close, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mesh.actions import Acked, Action, Failed, Replied
from mesh.client import TIMEOUT_METADATA
from mesh.codec import ContentType, EncodedBody
from mesh.core import CoreConfig, DeliveryConfig
from mesh.crypto import NodeIdentity
from mesh.envelope import DEFAULT_LIMITS, OpenedMessage
from mesh.errors import InvalidArgument, LocalError, Malformed, MeshError, Status
from mesh.linkcost import CostPolicy
from mesh.subjects import check_pattern, offer
from mesh.v1 import admin_pb2, admin_pb2_grpc, client_pb2, client_pb2_grpc, envelope_pb2, peer_pb2
from nodes import logs, pki
from nodes.apps import Instance, Subscription
from nodes.config import NodeConfig, NodeSettings, load_node_config
from nodes.links import LinkSettings
from nodes.metrics import start_metrics
from nodes.runtime import NeighbourSpec, NodeRuntime, RuntimeOptions, Transport
from nodes.status import grpc_code
from nodes.store import Store

log = logging.getLogger("mesh.server")

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


MAX_SEND_BATCH = 4096
MAX_DELIVERY_BATCH = 256


class Busy(LocalError):
    """The node refuses new messages until its link queues drain."""

    status = Status.RESOURCE_EXHAUSTED


class ListenError(LocalError):
    """The node cannot bind its listen address."""

    status = Status.UNAVAILABLE


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerLimits:
    """Bounds on what clients and peers may ask of the server (from :class:`NodeSettings`).

    Each is answered with a documented status (docs/protocol.md) instead of a
    queue that grows until deadlines pass: a node under attack or overload
    refuses at its door, logs it and stays up.
    """

    max_message_bytes: int = MAX_MESSAGE_BYTES
    """Largest gRPC message either way; grpc answers a bigger one RESOURCE_EXHAUSTED."""
    max_inflight_sends: int = 1024
    """Client Send/Request calls in progress at once; one more is refused (``Busy``)."""
    max_client_streams: int = 1024
    """Long-lived client streams open at once; one more is refused (RESOURCE_EXHAUSTED)."""
    max_concurrent_streams: int = 4096
    """HTTP/2 streams per connection (the transport's own bound, above the two above)."""
    keepalive_min_interval_ms: int = 10_000
    """Pings closer together than this earn the connection a strike."""
    keepalive_max_ping_strikes: int = 2
    """Strikes before GOAWAY (ENHANCE_YOUR_CALM, too_many_pings)."""
    max_queue_delay_ms: int = 1000
    """A client send that waited longer than this before the node got to it is refused
    (``Busy``): the queue in front of a saturated node stays this short."""

    @classmethod
    def of(cls, settings: NodeSettings) -> ServerLimits:
        return cls(
            max_inflight_sends=settings.max_inflight_sends,
            max_client_streams=settings.max_client_streams,
            max_concurrent_streams=settings.max_concurrent_streams,
            keepalive_min_interval_ms=settings.keepalive_min_interval_ms,
            keepalive_max_ping_strikes=settings.keepalive_max_ping_strikes,
            max_queue_delay_ms=settings.max_queue_delay_ms,
        )

    def server_options(self) -> list[tuple[str, int]]:
        """grpc.aio server options enforcing the transport bounds."""
        return [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            # The SDK pings every 300 s (mesh.client.KEEPALIVE_MS), idle streams
            # included; anything much faster is abuse and ends its connection.
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", self.keepalive_min_interval_ms),
            ("grpc.http2.max_ping_strikes", self.keepalive_max_ping_strikes),
        ]


class _Gate:
    """Calls of one kind in progress at this node, refused past ``limit``.

    A counter, not a semaphore: a call over the limit must be answered at
    once, never queued behind the ones in progress.
    """

    def __init__(self, limit: int, what: str, counter: str) -> None:
        self.limit = limit
        self.what = what
        self.counter = counter
        self.in_use = 0

    def try_enter(self) -> bool:
        if self.in_use >= self.limit:
            return False
        self.in_use += 1
        return True

    def leave(self) -> None:
        self.in_use -= 1


class _QuietLog:
    """Lines a client can trigger at will, at most one per key per second.

    A hostile or overloaded client must not be able to fill the disk with our
    logs; what is held back is counted and reported with the next line. Keys
    name the kind of refusal and the client connection, so one noisy client
    does not hide another's first refusal; at most ``max_keys`` are tracked.
    """

    def __init__(self, interval: float = 1.0, max_keys: int = 1024) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def log(self, level: int, key: str, message: str, fields: dict[str, object]) -> None:
        now = time.monotonic()
        if len(self._last) >= self.max_keys and key not in self._last:
            self._last.clear()  # forgetting only lets a few more lines through
            self._held.clear()
        if now - self._last.get(key, -self.interval) < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            fields = {**fields, "suppressed": held}
        log.log(level, message, extra={"fields": fields})


class _CallGuard:
    """What every client and admin call passes first: parsing and admission.

    The services are served over raw bytes, so a request that does not parse is
    refused here with INVALID_ARGUMENT (grpcio's own deserializer would answer
    UNKNOWN, with a Python exception name in the details).
    """

    def __init__(self, runtime: NodeRuntime, limits: ServerLimits) -> None:
        self.runtime = runtime
        self.max_queue_delay_ms = limits.max_queue_delay_ms
        self.sends = _Gate(limits.max_inflight_sends, "client sends", "refused_sends_in_flight")
        self.streams = _Gate(limits.max_client_streams, "client streams", "refused_client_streams")
        self.quiet = _QuietLog()

    async def parse(
        self,
        request_class: type[Message],
        data: object,
        method: str,
        context: grpc.aio.ServicerContext,
    ) -> Any:
        """The request message in ``data``; aborts with INVALID_ARGUMENT if it does not parse."""
        request = request_class()
        try:
            if not isinstance(data, bytes):
                raise Malformed(f"{method}: expected bytes, got {type(data).__name__}")
            try:
                request.ParseFromString(data)
            except DecodeError:
                raise Malformed(
                    f"{len(data)} bytes are not a {request_class.DESCRIPTOR.full_name}"
                ) from None
        except Malformed as exc:
            await self.refuse(exc, "refused_malformed_calls", "malformed", method, context)
        return request

    async def refuse(
        self,
        error: MeshError,
        counter: str,
        kind: str,
        method: str,
        context: grpc.aio.ServicerContext,
    ) -> None:
        """Count, log (rate-limited per kind and client) and abort the call with ``error``."""
        self.runtime.count(counter)
        self.quiet.log(
            logging.WARNING,
            f"{kind}:{method}:{context.peer()}",
            f"refused call: {error}",
            {"method": method, "client": context.peer(), "status": error.status.name},
        )
        await context.abort(grpc_code(error.status), str(error))

    async def parse_each(
        self,
        request_class: type[Message],
        requests: AsyncIterable[object],
        method: str,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[Any]:
        async for data in requests:
            yield await self.parse(request_class, data, method, context)

    @contextlib.asynccontextmanager
    async def admit(
        self, gate: _Gate | None, method: str, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[None]:
        """Hold a place in ``gate`` for the call, or refuse it with RESOURCE_EXHAUSTED."""
        if gate is None:
            yield
            return
        queued_ms = _queued_ms(context) if gate is self.sends else None
        if queued_ms is not None and queued_ms > self.max_queue_delay_ms:
            # The calls in progress are few, yet this one waited: the queue is in
            # gRPC, in front of a saturated node. Refusing costs far less than
            # accepting, so the queue drains and callers hear it while it matters.
            overloaded = Busy(
                f"node {self.runtime.node_id!r} is overloaded: this call waited "
                f"{queued_ms:.0f} ms before the node could take it (the limit is "
                f"{self.max_queue_delay_ms} ms); retry later"
            )
            await self.refuse(overloaded, "refused_queue_delay", "busy", method, context)
        if not gate.try_enter():
            full = Busy(
                f"node {self.runtime.node_id!r} already has {gate.in_use} {gate.what} in "
                f"progress (the limit is {gate.limit}); retry later"
            )
            await self.refuse(full, gate.counter, "busy", method, context)
        try:
            yield
        except asyncio.CancelledError:
            if gate is self.streams:  # the client went away, or its connection did (GOAWAY)
                self.quiet.log(
                    logging.INFO,
                    f"cancelled:{method}:{context.peer()}",
                    "client stream cancelled",
                    {"method": method, "client": context.peer()},
                )
            raise
        finally:
            gate.leave()


def _queued_ms(context: grpc.aio.ServicerContext) -> float | None:
    """How long a call waited between its client and this handler, in ms.

    gRPC sends deadlines as a relative timeout, and the SDK also sends the
    whole timeout (``mesh-timeout-ms``): what is missing from the remaining time
    was spent in transit and in the queue. None for callers that do not say.
    """
    remaining = context.time_remaining()
    if remaining is None:
        return None
    for key, value in context.invocation_metadata() or ():
        if key == TIMEOUT_METADATA:
            try:
                return int(value) - float(remaining) * 1000
            except (TypeError, ValueError):
                return None
    return None


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _raw_handlers(
    service: ServiceDescriptor,
    servicer: object,
    guard: _CallGuard,
    gates: Mapping[str, _Gate] | None = None,
) -> dict[str, grpc.RpcMethodHandler]:
    """Method handlers for ``service`` that take raw bytes and parse them in the guard.

    Every method of the service descriptor gets one, so a method added to the
    proto cannot silently fall back to grpcio's deserializer.
    """
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        handlers[method.name] = _raw_handler(
            f"/{service.full_name}/{method.name}",
            GetMessageClass(method.input_type),
            getattr(servicer, method.name),
            guard,
            (gates or {}).get(method.name),
            client_streaming=method.client_streaming,
            server_streaming=method.server_streaming,
        )
    return handlers


def _raw_handler(
    name: str,
    request_class: type[Message],
    behaviour: Callable[..., Any],
    guard: _CallGuard,
    gate: _Gate | None,
    *,
    client_streaming: bool,
    server_streaming: bool,
) -> grpc.RpcMethodHandler:
    if not client_streaming and not server_streaming:

        async def unary_unary(data: bytes, context: grpc.aio.ServicerContext) -> Any:
            request = await guard.parse(request_class, data, name, context)
            async with guard.admit(gate, name, context):
                return await behaviour(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, request_deserializer=None, response_serializer=_serialize
        )
    if not client_streaming:

        async def unary_stream(data: bytes, context: grpc.aio.ServicerContext) -> Any:
            request = await guard.parse(request_class, data, name, context)
            async with guard.admit(gate, name, context):
                async for response in behaviour(request, context):
                    yield response

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, request_deserializer=None, response_serializer=_serialize
        )
    if not server_streaming:

        async def stream_unary(
            requests: AsyncIterable[object], context: grpc.aio.ServicerContext
        ) -> Any:
            async with guard.admit(gate, name, context):
                parsed = guard.parse_each(request_class, requests, name, context)
                return await behaviour(parsed, context)

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, request_deserializer=None, response_serializer=_serialize
        )

    async def stream_stream(
        requests: AsyncIterable[object], context: grpc.aio.ServicerContext
    ) -> Any:
        async with guard.admit(gate, name, context):
            parsed = guard.parse_each(request_class, requests, name, context)
            async for response in behaviour(parsed, context):
                yield response

    return grpc.stream_stream_rpc_method_handler(
        stream_stream, request_deserializer=None, response_serializer=_serialize
    )


SERVICE_NAMES = (
    "mesh.v1.PeerService",
    "mesh.v1.ClientService",
    "mesh.v1.AdminService",
)
_ENGINES = {
    "link-state": peer_pb2.ROUTING_ENGINE_LINK_STATE,
    "distance-vector": peer_pb2.ROUTING_ENGINE_DISTANCE_VECTOR,
}


def _body(message: OpenedMessage) -> client_pb2.Body:
    return client_pb2.Body(
        content_type=cast("envelope_pb2.ContentType", message.body.content_type),
        body_type=message.body.body_type,
        data=message.body.data,
    )


def _delivery(message: OpenedMessage) -> client_pb2.Delivery:
    header = message.header
    return client_pb2.Delivery(
        message_id=header.message_id,
        source=header.source,
        destination=client_pb2.Address(kind=header.destination_kind, name=header.destination),
        body=_body(message),
        created_ms=header.created_ms,
        deadline_ms=header.deadline_ms,
        expects_reply=header.kind == envelope_pb2.ENVELOPE_KIND_REQUEST,
    )


def _encoded_or_raise(body: client_pb2.Body) -> EncodedBody:
    try:
        content_type = ContentType(body.content_type or ContentType.RAW)
    except ValueError:
        raise InvalidArgument(f"unknown content type {body.content_type}") from None
    return EncodedBody(data=body.data, content_type=content_type, body_type=body.body_type)


async def _encoded(body: client_pb2.Body, context: grpc.aio.ServicerContext) -> EncodedBody:
    try:
        return _encoded_or_raise(body)
    except InvalidArgument as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        raise AssertionError("unreachable") from None


class ClientServicer(client_pb2_grpc.ClientServiceServicer):
    """What applications attached to this node call (the SDK speaks only this)."""

    def __init__(self, runtime: NodeRuntime) -> None:
        self.runtime = runtime
        self.quiet = _QuietLog()

    async def _abort(self, context: grpc.aio.ServicerContext, error: MeshError) -> None:
        """Refuse the call with the error's status; logged (at most once a second per
        kind of error, as a client can repeat a bad call at will)."""
        self.quiet.log(
            logging.WARNING,
            f"{type(error).__name__}:{context.peer()}",
            f"refused client call: {error}",
            {"client": context.peer(), "status": error.status.name},
        )
        await context.abort(grpc_code(error.status), str(error))

    def _submit(
        self, request: client_pb2.SendRequest, now: float
    ) -> tuple[bytes, list[bytes], list[Action]]:
        """Hand one SendRequest to the core: (message id, ids to wait for, actions).

        Raises:
            MeshError: the request is refused (no route, bad body, busy node...).
        """
        runtime = self.runtime
        core = runtime.core
        target = request.target
        body = _encoded_or_raise(request.body)
        mode = request.mode or envelope_pb2.DELIVERY_MODE_ASYNC
        deadline_ms = int(now * 1000) + request.timeout_ms if request.timeout_ms else 0
        if not runtime.has_capacity():
            runtime.count("refused_busy")
            raise Busy("this node's links are full; slow down")
        if target.kind == envelope_pb2.DESTINATION_KIND_SUBJECT:
            ids, actions = core.publish(target.name, body, now, mode=mode, deadline_ms=deadline_ms)
            return (ids[0] if ids else b""), ids, actions
        message_id, actions = core.submit(
            target.name,
            body,
            now,
            mode=mode,
            deadline_ms=deadline_ms,
            destination_kind=target.kind or envelope_pb2.DESTINATION_KIND_NODE,
            message_id=request.message_id or None,
            policy=request.policy or None,
            trace=request.trace,
        )
        return message_id, [message_id], actions

    async def Send(
        self, request: client_pb2.SendRequest, context: grpc.aio.ServicerContext
    ) -> client_pb2.SendResponse:
        runtime = self.runtime
        try:
            message_id, waits, actions = self._submit(request, runtime.clock())
        except MeshError as exc:
            await self._abort(context, exc)
            raise AssertionError("unreachable") from None
        acknowledged = request.mode == envelope_pb2.DELIVERY_MODE_ACKNOWLEDGED
        futures = []
        if acknowledged and request.wait_for_ack:
            loop = asyncio.get_running_loop()
            for waited in waits:
                future: asyncio.Future[Acked | Failed] = loop.create_future()
                runtime.apps.acks[waited] = future
                futures.append(future)
        if runtime.apply(actions):
            runtime.count("dropped_queue_full")
        # Durable from here on: apply() committed the outbox before returning.
        for future in futures:
            outcome = await future
            if isinstance(outcome, Failed):
                await context.abort(grpc_code(outcome.status), outcome.reason)
        return client_pb2.SendResponse(
            message_id=message_id, acknowledged=bool(futures), copies=len(waits)
        )

    async def SendStream(
        self,
        request_iterator: AsyncIterator[client_pb2.SendBatch],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[client_pb2.SendBatchResult]:
        """Batches of sends: one core pass and one durable commit per batch."""
        runtime = self.runtime
        async for batch in request_iterator:
            if len(batch.requests) > MAX_SEND_BATCH:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"a batch holds at most {MAX_SEND_BATCH} sends, got {len(batch.requests)}",
                )
            now = runtime.clock()
            results = []
            actions: list[Action] = []
            for request in batch.requests:
                if request.wait_for_ack:
                    results.append(
                        client_pb2.SendResult(
                            status=Status.INVALID_ARGUMENT,
                            error="wait_for_ack is not supported in SendStream; use Send",
                        )
                    )
                    continue
                try:
                    message_id, waits, more = self._submit(request, now)
                except MeshError as exc:
                    results.append(client_pb2.SendResult(status=exc.status, error=str(exc)))
                    continue
                actions += more
                results.append(client_pb2.SendResult(message_id=message_id, copies=len(waits)))
            if runtime.apply(actions):
                runtime.count("dropped_queue_full")
            # Durable from here on: the whole batch was committed in one transaction.
            yield client_pb2.SendBatchResult(results=results)

    async def Request(
        self, request: client_pb2.RequestMessage, context: grpc.aio.ServicerContext
    ) -> client_pb2.ReplyMessage:
        runtime = self.runtime
        core = runtime.core
        body = await _encoded(request.body, context)
        kind = request.target.kind or envelope_pb2.DESTINATION_KIND_SERVICE
        remaining = context.time_remaining()
        timeout_ms = request.timeout_ms or None
        if remaining is not None:
            grpc_ms = int(remaining * 1000)
            timeout_ms = min(timeout_ms, grpc_ms) if timeout_ms else grpc_ms
        try:
            message_id, actions = core.request(
                request.target.name,
                body,
                runtime.clock(),
                timeout_ms=timeout_ms,
                destination_kind=kind,
                policy=request.policy or None,
            )
        except MeshError as exc:
            await self._abort(context, exc)
            raise AssertionError("unreachable") from None
        future: asyncio.Future[Replied | Failed] = asyncio.get_running_loop().create_future()
        runtime.apps.replies[message_id] = future
        runtime.apply(actions)
        try:
            outcome = await future
        finally:
            runtime.apps.replies.pop(message_id, None)
        if isinstance(outcome, Failed):
            await context.abort(grpc_code(outcome.status), outcome.reason)
            raise AssertionError("unreachable")
        reply = outcome.reply
        status = reply.header.status
        if status != 0:
            text = reply.body.data.decode("utf-8", "replace")[:1024]
            await context.abort(
                grpc_code(Status.of(status)),
                f"{reply.header.source!r} answered {Status.of(status).name}: {text}",
            )
        return client_pb2.ReplyMessage(
            message_id=message_id, body=_body(reply), responder=reply.header.source
        )

    async def Serve(
        self,
        request_iterator: AsyncIterator[client_pb2.ServeUpstream],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[client_pb2.ServeDownstream]:
        runtime = self.runtime
        # The stream is read through the (parsing) iterator, never context.read(),
        # which would hand over raw bytes.
        upstream = aiter(request_iterator)
        first = await anext(upstream, None)
        if first is None or not first.HasField("register"):
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "the first Serve message must register"
            )
            raise AssertionError("unreachable")
        registration = first.register
        if not 0 < len(registration.service.encode()) <= 255:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "a service name of 1..255 bytes is required"
            )
        runtime.instance_seq += 1
        name = registration.instance or (
            f"{runtime.node_id}/{registration.service}/{runtime.instance_seq}"
        )
        queue: asyncio.Queue[OpenedMessage] = asyncio.Queue(maxsize=runtime.options.inbox_max)
        instance = Instance(
            service=registration.service,
            name=name,
            weight=max(1, registration.weight),
            queue=queue,
        )
        runtime.apps.add_instance(instance)
        runtime.refresh_offers()
        log.info(
            "instance attached", extra={"fields": {"service": instance.service, "instance": name}}
        )

        async def replies() -> None:
            async for message in upstream:
                if not message.HasField("reply"):
                    continue
                answer = message.reply
                entry = runtime.apps.answered(answer.request_id)
                if entry is None:
                    runtime.count("late_replies")
                    continue
                header, _ = entry
                if answer.status:
                    body = EncodedBody(data=answer.error.encode(), content_type=ContentType.RAW)
                else:
                    body = await _encoded(answer.body, context)
                runtime.apply(
                    runtime.core.reply(
                        header, body, runtime.clock(), status=Status.of(answer.status)
                    )
                )

        reader = asyncio.ensure_future(replies())
        try:
            yield client_pb2.ServeDownstream(
                registered=client_pb2.ServiceRegistration(
                    service=instance.service, weight=instance.weight, instance=name
                )
            )
            while not reader.done():
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                yield client_pb2.ServeDownstream(request=_delivery(getter.result()))
            if not reader.cancelled() and reader.exception() is not None:
                # The reader aborted the call (an upstream message that does not
                # parse, a reply body that does not encode): end with its status.
                raise cast("BaseException", reader.exception())
        finally:
            reader.cancel()
            runtime.apps.remove_instance(instance)
            runtime.refresh_offers()
            log.info("instance detached", extra={"fields": {"instance": name}})

    async def Subscribe(
        self, request: client_pb2.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[client_pb2.Delivery]:
        runtime = self.runtime
        try:
            check_pattern(request.subject)
            offer(request.subject, request.queue or None)
        except MeshError as exc:
            await self._abort(context, exc)
        queue: asyncio.Queue[OpenedMessage] = asyncio.Queue(maxsize=runtime.options.inbox_max)
        subscription = Subscription(
            pattern=request.subject, queue_group=request.queue or None, queue=queue
        )
        runtime.apps.subscriptions.append(subscription)
        runtime.refresh_offers()
        await context.send_initial_metadata(())  # tells the caller it is attached
        try:
            while True:
                yield _delivery(await queue.get())
        finally:
            runtime.apps.subscriptions.remove(subscription)
            runtime.refresh_offers()

    async def Receive(
        self, request: client_pb2.ReceiveRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[client_pb2.Delivery]:
        runtime = self.runtime
        queue: asyncio.Queue[OpenedMessage] = asyncio.Queue(maxsize=runtime.options.inbox_max)
        while runtime.apps.inbox:  # what arrived before anyone listened
            _, early = runtime.apps.inbox.popitem(last=False)
            queue.put_nowait(early)
        runtime.apps.receivers.add(queue)
        await context.send_initial_metadata(())  # tells the caller it is attached
        try:
            while True:
                yield _delivery(await queue.get())
        finally:
            runtime.apps.detach_receiver(queue)

    async def ReceiveBatches(
        self, request: client_pb2.ReceiveRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[client_pb2.DeliveryBatch]:
        """As Receive, but every write carries whatever has queued up (up to 256)."""
        runtime = self.runtime
        queue: asyncio.Queue[OpenedMessage] = asyncio.Queue(maxsize=runtime.options.inbox_max)
        while runtime.apps.inbox:
            _, early = runtime.apps.inbox.popitem(last=False)
            queue.put_nowait(early)
        runtime.apps.receivers.add(queue)
        await context.send_initial_metadata(())
        try:
            while True:
                batch = [_delivery(await queue.get())]
                while len(batch) < MAX_DELIVERY_BATCH and not queue.empty():
                    batch.append(_delivery(queue.get_nowait()))
                yield client_pb2.DeliveryBatch(deliveries=batch)
        finally:
            runtime.apps.detach_receiver(queue)


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """What operators and `mesh routes/peers/topology/status` call."""

    def __init__(self, runtime: NodeRuntime) -> None:
        self.runtime = runtime

    async def Routes(
        self, request: admin_pb2.RoutesRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RoutesResponse:
        core = self.runtime.core
        routes = [
            admin_pb2.Route(
                destination=route.destination, cost=route.cost, next_hops=sorted(route.next_hops)
            )
            for route in sorted(core.table.values(), key=lambda r: r.destination)
        ]
        return admin_pb2.RoutesResponse(
            node_id=core.node_id, engine=core.config.engine, routes=routes
        )

    async def Peers(
        self, request: admin_pb2.PeersRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.PeersResponse:
        runtime = self.runtime
        peers = []
        for info in runtime.core.peers():
            link = runtime.links.get(info.peer)
            peers.append(
                admin_pb2.Peer(
                    node_id=info.peer,
                    address=runtime.addresses.get(info.peer, ""),
                    state=info.phase,
                    cost=info.cost,
                    rtt_ms=info.rtt_ms or 0.0,
                    frames_sent=link.frames_written if link else info.frames_sent,
                    frames_received=info.frames_received,
                )
            )
        return admin_pb2.PeersResponse(peers=peers)

    async def Topology(
        self, request: admin_pb2.TopologyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.TopologyResponse:
        core = self.runtime.core
        links = []
        database = getattr(core.engine, "database", None)
        if callable(database):  # link-state: the whole graph as adverts describe it
            for advert in database().values():
                for link in advert.links:
                    if advert.origin < link.neighbor:
                        links.append(
                            admin_pb2.TopologyLink(a=advert.origin, b=link.neighbor, cost=link.cost)
                        )
        else:  # distance-vector knows only its own links
            for info in core.peers():
                a, b = sorted((core.node_id, info.peer))
                links.append(admin_pb2.TopologyLink(a=a, b=b, cost=info.cost))
        return admin_pb2.TopologyResponse(nodes=sorted(core.table), links=links)

    async def Stats(
        self, request: admin_pb2.StatsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.StatsResponse:
        counters = dict(self.runtime.core.stats)
        counters.update(self.runtime.counters)
        # A gauge beside the counters: acknowledged messages and requests not yet
        # answered (each acknowledged one is in the outbox until its ack).
        counters["pending"] = self.runtime.core.pending_count
        return admin_pb2.StatsResponse(counters={k: int(v) for k, v in counters.items()})

    async def SetLink(
        self, request: admin_pb2.SetLinkRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.SetLinkResponse:
        if not request.peer:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name the peer")
        was_up = self.runtime.set_link(request.peer, request.enabled)
        return admin_pb2.SetLinkResponse(was_up=was_up)

    async def Trace(
        self, request: admin_pb2.TraceRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.TraceResponse:
        hops = self.runtime.core.trace_of(request.message_id)
        if hops is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no trace of message {request.message_id.hex()} here: ask its destination, "
                "and send it with trace on",
            )
        return admin_pb2.TraceResponse(hops=hops)


async def create_server(
    runtime: NodeRuntime,
    address: str,
    credentials: grpc.ServerCredentials | None,
    limits: ServerLimits | None = None,
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Build and start the server on ``address`` (port 0 picks a free one).

    Raises:
        ListenError: the address cannot be bound.
    """
    limits = limits or ServerLimits()
    server = grpc.aio.server(options=limits.server_options())
    link_handler = grpc.method_handlers_generic_handler(
        "mesh.v1.PeerService",
        {"Link": grpc.stream_stream_rpc_method_handler(runtime.serve_link)},
    )
    server.add_generic_rpc_handlers((link_handler,))
    guard = _CallGuard(runtime, limits)
    stream_methods = ("Serve", "Subscribe", "Receive", "SendStream", "ReceiveBatches")
    client_service = client_pb2.DESCRIPTOR.services_by_name["ClientService"]
    admin_service = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]
    gates = {
        "Send": guard.sends,
        "Request": guard.sends,
        **{name: guard.streams for name in stream_methods},
    }
    services = [
        (client_service, _raw_handlers(client_service, ClientServicer(runtime), guard, gates)),
        (admin_service, _raw_handlers(admin_service, AdminServicer(runtime), guard)),
    ]
    for descriptor, handlers in services:
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(descriptor.full_name, handlers),)
        )
        server.add_registered_method_handlers(descriptor.full_name, handlers)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            *SERVICE_NAMES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError:
        raise ListenError(
            f"cannot listen on {address}: the port is in use or the address is not local"
        ) from None
    await server.start()
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port, health_servicer


def build_runtime(config: NodeConfig) -> tuple[NodeRuntime, grpc.ServerCredentials | None]:
    """A runtime and server credentials from a validated node config."""
    settings = config.settings
    identity = NodeIdentity.load(config.node_id, config.state_dir / "keys")
    core_config = CoreConfig(
        mesh_id=config.mesh,
        engine=_ENGINES[config.routing],
        heartbeat_interval=settings.heartbeat_ms / 1000,
        dead_interval=settings.dead_ms / 1000,
        dead_stretch=settings.dead_stretch,
        dead_hold=settings.dead_hold_ms / 1000,
        cost_policy=CostPolicy(rtt_derived=settings.cost_mode == "rtt"),
        limits=DEFAULT_LIMITS,
        trace=settings.trace,
        delivery=DeliveryConfig(max_pending=settings.outbox_max),
    )
    options = RuntimeOptions(
        neighbours=tuple(
            NeighbourSpec(node=n.node, address=n.address, cost=n.cost) for n in config.neighbours
        ),
        link=LinkSettings(
            batch_max=settings.batch_max,
            batch_delay=settings.batch_delay_ms / 1000,
            queue_max=settings.queue_max,
        ),
        reconnect_min=settings.reconnect_min_ms / 1000,
        reconnect_max=settings.reconnect_max_ms / 1000,
        services={name: spec.weight for name, spec in config.services.items()},
        handlers={name: spec.handler for name, spec in config.services.items() if spec.handler},
        subjects=tuple(config.subjects),
        inbox_max=settings.inbox_max,
    )
    store = Store(config.state_dir / "store.db", durability="full")
    if config.tls is None:
        log.warning("running WITHOUT TLS (--insecure): any process can link to this node")
        return NodeRuntime(identity, core_config, options, Transport(), store=store), None
    files = pki.node_files(config.tls.ca, config.tls.cert, config.tls.key)
    transport = Transport(
        channel_credentials=pki.channel_credentials(files),
        channel_options=pki.channel_options,
        peer_identity=lambda context: pki.peer_identity(context.auth_context()),
    )
    runtime = NodeRuntime(
        identity,
        core_config,
        options,
        transport,
        certificate=pki.certificate_der(files),
        check_certificate=pki.certificate_check(files.ca_pem),
        store=store,
    )
    return runtime, pki.server_credentials(files)


async def serve(config: NodeConfig, ready_file: Path | None = None) -> int:
    """Run a node until SIGTERM or SIGINT; returns the exit code."""
    runtime, credentials = build_runtime(config)
    server, port, health_servicer = await create_server(
        runtime, config.listen, credentials, ServerLimits.of(config.settings)
    )
    metrics_port = None
    if config.metrics_port is not None:
        metrics_port = start_metrics(runtime, config.metrics_port, config.metrics_host)
    await runtime.start()
    host = config.listen.rsplit(":", 1)[0]
    log.info(
        "node serving",
        extra={"fields": {"address": f"{host}:{port}", "metrics_port": metrics_port}},
    )
    if ready_file is not None:
        ready_file.write_text(f"{host}:{port}\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.stop(grace=2.0)
    await runtime.stop()
    if runtime.store is not None:
        runtime.store.close()
    log.info("stopped")
    return 0


def run_node(
    config_path: Path,
    ready_file: Path | None = None,
    log_level: str = "info",
    metrics_port: int | None = None,
) -> int:
    """Entry point of `mesh node run CONFIG`."""
    config = load_node_config(config_path)
    if metrics_port is not None:
        config = config.model_copy(update={"metrics_port": metrics_port})
    logs.configure(config.node_id, log_level)
    log.info("starting", extra={"fields": {"pid": os.getpid(), "config": str(config_path)}})
    return asyncio.run(serve(config, ready_file))


__all__ = [
    "AdminServicer",
    "Busy",
    "ClientServicer",
    "ServerLimits",
    "build_runtime",
    "create_server",
    "run_node",
    "serve",
]
