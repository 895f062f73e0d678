"""The application SDK: attach to a node and send, request, serve, publish and subscribe.

This is the one module of ``mesh`` that speaks gRPC: it talks to a node's
ClientService (protos/mesh/v1/client.proto) and nothing else. Two flavours:

- :func:`connect` gives an asyncio :class:`Client`. ``connect(...)`` is both
  awaitable and an async context manager, so either of these works::

      client = await mesh.connect(node="a", state_dir=Path(".mesh/demo"))
      ...
      await client.close()

      async with mesh.connect(node="a", state_dir=Path(".mesh/demo")) as client:
          reply = await client.request("echo", {"hello": "mesh"})

- :func:`connect_sync` gives a blocking :class:`SyncClient` with the same
  methods; it runs one asyncio loop in a daemon thread.

Every unary call carries a deadline, so no call hangs. Failures reported by the
node are :class:`RemoteCallError` (``.status`` is a :class:`mesh.errors.Status`;
DEADLINE_EXCEEDED, UNAVAILABLE and RESOURCE_EXHAUSTED also have their own
subclasses); mistakes caught before anything is sent are the core's
:class:`~mesh.errors.LocalError` classes (``InvalidArgument``, ``EncodeError``).
Long-lived streams (``serve``, ``subscribe``, ``receive``) re-open with
exponential backoff and jitter when they drop; unary calls rely on the gRPC
channel's own reconnects.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import json
import logging
import random
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar, cast

import grpc
from google.protobuf.message import Message as ProtoMessage

from mesh.balance import Policy
from mesh.codec import ContentType, EncodedBody, decode_body, encode_body
from mesh.errors import DecodeError, EncodeError, InvalidArgument, LocalError, MeshError, Status
from mesh.subjects import check_pattern, check_subject, offer
from mesh.v1 import client_pb2, client_pb2_grpc, envelope_pb2

log = logging.getLogger("mesh.client")

T = TypeVar("T")
M = TypeVar("M", bound=ProtoMessage)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Largest gRPC message either way (the node's limit too)."""
TIMEOUT_METADATA = "mesh-timeout-ms"
"""Call metadata with the caller's whole timeout, in ms (see the node's queue-delay limit)."""
RPC_TIMEOUT = 5.0
"""Seconds a call that waits for nothing remote (async send, publish) may take."""
ACK_TIMEOUT = 10.0
"""Default deadline of acknowledged messages (the node's default too)."""
DEADLINE_MARGIN = 1.0
"""Extra seconds the gRPC deadline allows past the mesh deadline, so the node's
own, more precise error arrives first."""
CONNECT_TIMEOUT = 10.0
"""Seconds :func:`connect` waits for the channel to be ready."""
REGISTER_TIMEOUT = 10.0
"""Seconds ``async with client.serve(...)`` waits for the node to register the instance."""
MAX_IN_FLIGHT = 64
"""Handler calls one :class:`Serving` runs at once; more requests wait in the node's queue."""
BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 5.0
STABLE_STREAM = 10.0
"""A stream that lived this long resets the backoff when it drops."""
KEEPALIVE_MS = 300_000
"""HTTP/2 ping interval. A grpc server by default refuses pings more frequent than
every 5 minutes on a stream that carries no data (GOAWAY too_many_pings), and an
idle subscription is exactly that; lower this only with the node allowing it."""

Target = Literal["node", "service", "subject"]
_KINDS: dict[str, envelope_pb2.DestinationKind] = {
    "node": envelope_pb2.DESTINATION_KIND_NODE,
    "service": envelope_pb2.DESTINATION_KIND_SERVICE,
    "subject": envelope_pb2.DESTINATION_KIND_SUBJECT,
}
_KIND_NAMES = {value: name for name, value in _KINDS.items()}
_PERMANENT = frozenset(
    {
        Status.INVALID_ARGUMENT,
        Status.FAILED_PRECONDITION,
        Status.PERMISSION_DENIED,
        Status.UNAUTHENTICATED,
        Status.UNIMPLEMENTED,
    }
)
"""Stream failures that re-opening will not cure."""

Handler = Callable[["Message"], Any]
"""``def handler(message) -> body`` or ``async def``; the body is encoded as for ``send``."""


# --- errors ------------------------------------------------------------------------------------


class RemoteCallError(MeshError):
    """The node refused or failed a call; ``.status`` says how, the message is the node's.

    ``.status`` is per error (the class attribute is only the default): match
    it, or catch the subclasses :class:`DeadlineExceeded`, :class:`Unavailable`
    and :class:`ResourceExhausted`.
    """

    def __init__(self, status: Status, message: str, *, node: str = "") -> None:
        super().__init__(message)
        # MeshError.status is a class constant; a remote call's status is known per call.
        self.status = status  # type: ignore[misc]
        self.node = node
        """The node (id or address) the call went to."""


class DeadlineExceeded(RemoteCallError):
    """No answer (reply or ack) before the deadline."""


class Unavailable(RemoteCallError):
    """No route, no instance of the service, or the node itself cannot be reached."""


class ResourceExhausted(RemoteCallError):
    """The node, a link or an instance is saturated: slow down and retry."""


class BatchSendError(RemoteCallError):
    """Some items of a :meth:`Client.send_batch` were refused."""

    def __init__(self, outcomes: list[bytes | RemoteCallError], first: RemoteCallError) -> None:
        failed = sum(1 for o in outcomes if isinstance(o, RemoteCallError))
        super().__init__(
            first.status,
            f"{failed} of {len(outcomes)} sends refused; first: {first}",
            node=first.node,
        )
        self.outcomes = outcomes
        """Per item, in order: its message id, or why it was refused."""


class ConnectError(LocalError):
    """The connection options do not name one reachable node (or its TLS files are bad)."""

    status = Status.FAILED_PRECONDITION


_ERROR_CLASSES: dict[Status, type[RemoteCallError]] = {
    Status.DEADLINE_EXCEEDED: DeadlineExceeded,
    Status.UNAVAILABLE: Unavailable,
    Status.RESOURCE_EXHAUSTED: ResourceExhausted,
}


def _status_of(code: Any) -> Status:
    """The mesh status of a ``grpc.StatusCode`` (whose value is ``(number, name)``)."""
    try:
        return Status.of(code.value[0])
    except (AttributeError, IndexError, TypeError):
        return Status.UNKNOWN


def remote_error(status: Status, message: str, *, node: str = "") -> RemoteCallError:
    """The :class:`RemoteCallError` (subclass) for ``status``."""
    return _ERROR_CLASSES.get(status, RemoteCallError)(status, message, node=node)


def _from_rpc(exc: grpc.aio.AioRpcError, node: str, what: str) -> RemoteCallError:
    status = _status_of(exc.code())
    details = " ".join((exc.details() or "").split())  # transport errors span lines
    return remote_error(status, f"{node}: {what}: {status.name}: {details}", node=node)


# --- messages and replies ----------------------------------------------------------------------


def _encode(body: Any) -> EncodedBody:
    """bytes -> RAW, protobuf message -> PROTOBUF, EncodedBody as is, anything else -> JSON."""
    if isinstance(body, EncodedBody):
        return body
    return encode_body(body)


def _body_pb(body: EncodedBody) -> client_pb2.Body:
    return client_pb2.Body(
        content_type=cast("envelope_pb2.ContentType", int(body.content_type)),
        body_type=body.body_type,
        data=body.data,
    )


def _encoded_of(body: client_pb2.Body) -> EncodedBody:
    try:
        content_type = ContentType(body.content_type or ContentType.RAW)
    except ValueError:
        raise DecodeError(f"unknown content type {body.content_type}") from None
    return EncodedBody(data=body.data, content_type=content_type, body_type=body.body_type)


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """A message delivered to this application (a request, a publication, a direct message).

    The body is decoded only when asked: :meth:`json`, :meth:`decode` or :attr:`body`.
    """

    message_id: bytes
    """Unique id given by the source (the request id for a handler)."""
    source: str
    """Node id the message came from."""
    destination: str
    """The node, service or subject it was addressed to."""
    kind: str
    """``"node"``, ``"service"`` or ``"subject"``: what ``destination`` names."""
    raw: bytes
    """The body as it travelled."""
    content_type: ContentType
    body_type: str = ""
    """Protobuf full name when ``content_type`` is PROTOBUF."""
    created_ms: int = 0
    """Source clock, ms since the epoch."""
    deadline_ms: int = 0
    """When the sender gives up (source clock, ms since the epoch); 0 = none."""
    expects_reply: bool = False
    """True for a request (what a handler receives)."""

    @property
    def encoded(self) -> EncodedBody:
        return EncodedBody(data=self.raw, content_type=self.content_type, body_type=self.body_type)

    @property
    def body(self) -> Any:
        """Decoded by content type: JSON -> object, RAW -> bytes.

        Raises:
            DecodeError: malformed JSON, or a PROTOBUF body (use :meth:`decode`).
        """
        return decode_body(self.encoded)

    def json(self) -> Any:
        """The body parsed as JSON (whatever its declared content type, unless PROTOBUF).

        Raises:
            DecodeError: the body is protobuf or is not JSON.
        """
        if self.content_type is ContentType.PROTOBUF:
            raise DecodeError(f"body is a protobuf {self.body_type!r}; use .decode(cls)")
        try:
            return json.loads(self.raw)
        except (UnicodeDecodeError, ValueError) as exc:
            raise DecodeError(f"body is not JSON: {exc}") from exc
        except RecursionError:  # json recurses per nesting level: 2000 "[" overflow it
            raise DecodeError("body is JSON nested too deeply to decode") from None

    def decode(self, message_class: type[M]) -> M:
        """The body as a ``message_class`` protobuf message.

        Raises:
            DecodeError: the body is not a ``message_class``, or does not parse.
        """
        if self.content_type is not ContentType.PROTOBUF:
            raise DecodeError(f"body is {self.content_type.name}, not a protobuf message")
        return cast("M", decode_body(self.encoded, message_class))


def _message(delivery: client_pb2.Delivery) -> Message:
    encoded = _encoded_of(delivery.body)
    return Message(
        message_id=delivery.message_id,
        source=delivery.source,
        destination=delivery.destination.name,
        kind=_KIND_NAMES.get(delivery.destination.kind, "node"),
        raw=encoded.data,
        content_type=encoded.content_type,
        body_type=encoded.body_type,
        created_ms=delivery.created_ms,
        deadline_ms=delivery.deadline_ms,
        expects_reply=delivery.expects_reply,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """The answer to :meth:`Client.request`."""

    body: Any
    """Decoded: JSON -> object, RAW -> bytes, PROTOBUF -> a ``reply_type`` instance."""
    raw: EncodedBody
    """The body as it travelled, with its content type."""
    responder: str
    """Node id whose instance answered."""
    message_id: bytes
    """The request's id."""
    instance: str = ""
    """The instance that answered, when the node says (may be empty)."""


# --- connecting ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Dial:
    address: str
    node_id: str | None
    credentials: Any  # grpc.ChannelCredentials, or None for plaintext


def _resolve_dial(
    address: str | None,
    *,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
    node_id: str | None,
    insecure: bool,
    state_dir: Path | None,
    node: str | None,
) -> _Dial:
    # nodes/ adapts the core to the OS; the SDK borrows its PKI and state-file
    # helpers only when asked to, so `import mesh` never pulls them in.
    from nodes import admin_client, pki  # noqa: PLC0415

    files = [p for p in (ca, cert, key) if p is not None]
    if files and len(files) != 3:
        raise ConnectError("give all three of ca, cert and key, or none")
    name = node_id or node
    try:
        if address is None:
            if node is None:
                raise ConnectError("say which node: connect(ADDRESS, ...) or connect(node=NAME)")
            state = admin_client.read_state(admin_client.find_state_dir(state_dir))
            target = admin_client.target_for(state, node)
            address = target.address
            tls: Any = target.tls
        elif insecure:
            tls = None
        elif ca is not None and cert is not None and key is not None:
            tls = admin_client.TlsPaths(ca=ca, cert=cert, key=key)
        elif state_dir is not None:
            state = admin_client.read_state(state_dir)
            if state.insecure:
                tls = None
            else:
                if name is None:
                    raise ConnectError("over mTLS name the node too: node_id=NAME")
                tls = admin_client.target_for(state, name).tls
        else:
            raise ConnectError(
                "give insecure=True, ca/cert/key, or state_dir (a `mesh up` state dir)"
            )
        if insecure or tls is None:
            return _Dial(address=address, node_id=name, credentials=None)
        if name is None:
            raise ConnectError("over mTLS name the node (its certificate's name): node_id=NAME")
        credentials = pki.channel_credentials(pki.node_files(tls.ca, tls.cert, tls.key))
    except admin_client.AdminError as exc:
        raise ConnectError(str(exc)) from None
    except pki.PkiError as exc:
        raise ConnectError(f"client certificate: {exc}") from None
    return _Dial(address=address, node_id=name, credentials=credentials)


def _channel_options(node_id: str | None, tls: bool) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 5_000),
    ]
    if tls and node_id is not None:
        # A node's certificate names its node id, not the host it listens on.
        options.append(("grpc.ssl_target_name_override", node_id))
    return options


async def _open(
    address: str | None,
    *,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
    node_id: str | None,
    insecure: bool,
    state_dir: Path | None,
    node: str | None,
    timeout: float,
) -> Client:
    dial = _resolve_dial(
        address,
        ca=ca,
        cert=cert,
        key=key,
        node_id=node_id,
        insecure=insecure,
        state_dir=state_dir,
        node=node,
    )
    tls = dial.credentials is not None
    options = _channel_options(dial.node_id, tls)
    if tls:
        channel = grpc.aio.secure_channel(dial.address, dial.credentials, options=options)
    else:
        channel = grpc.aio.insecure_channel(dial.address, options=options)
    name = dial.node_id or dial.address
    try:
        await asyncio.wait_for(channel.channel_ready(), timeout)
    except TimeoutError:
        await channel.close()
        raise Unavailable(
            Status.UNAVAILABLE,
            f"{name}: no connection to {dial.address} within {timeout:g} s "
            "(is the node running? over mTLS, is it the node the certificate names?)",
            node=name,
        ) from None
    return Client(channel, node=dial.node_id, address=dial.address)


class Connecting:
    """What :func:`connect` returns: ``await`` it for a :class:`Client`, or ``async with`` it."""

    def __init__(self, opener: Callable[[], Coroutine[Any, Any, Client]]) -> None:
        self._opener = opener
        self._client: Client | None = None

    def __await__(self) -> Generator[Any, None, Client]:
        return self._opener().__await__()

    async def __aenter__(self) -> Client:
        self._client = await self._opener()
        return self._client

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.close()


def connect(
    address: str | None = None,
    *,
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    node_id: str | None = None,
    insecure: bool = False,
    state_dir: Path | None = None,
    node: str | None = None,
    timeout: float = CONNECT_TIMEOUT,
) -> Connecting:
    """Attach to one node; ``await`` the result, or use it as ``async with``.

    Ways to name the node:

    - ``connect(node="a", state_dir=Path(".mesh/demo"))``: through a `mesh up`
      state dir (``mesh.json``): its address and the CLI's client certificate.
      Without ``state_dir`` the only mesh under ``.mesh/`` is used;
    - ``connect("host:port", ca=..., cert=..., key=..., node_id="a")``: mTLS with
      client certificate files; ``node_id`` is the name in the node's certificate;
    - ``connect("host:port", insecure=True)``: plaintext, for an insecure mesh.

    Raises (when awaited):
        ConnectError: the options do not name a node, or TLS files are bad.
        Unavailable: the node did not accept a connection within ``timeout`` s.
    """

    def opener() -> Coroutine[Any, Any, Client]:
        return _open(
            address,
            ca=ca,
            cert=cert,
            key=key,
            node_id=node_id,
            insecure=insecure,
            state_dir=state_dir,
            node=node,
            timeout=timeout,
        )

    return Connecting(opener)


# --- the async client --------------------------------------------------------------------------


class _Backoff:
    """Exponential backoff with jitter (each delay uniformly 50-100% of the cap)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.attempt = 0

    def reset(self) -> None:
        self.attempt = 0

    def next_delay(self) -> float:
        cap = min(BACKOFF_MAX, BACKOFF_INITIAL * 2.0 ** min(self.attempt, 20))
        self.attempt += 1
        return cap * (0.5 + 0.5 * self.rng.random())


def _check_timeout(timeout: float | None, what: str) -> None:
    if timeout is not None and not timeout > 0:
        raise InvalidArgument(f"{what} must be > 0 seconds, not {timeout!r}")


def _check_policy(policy: str | None) -> str:
    if policy is None:
        return ""
    try:
        return Policy(policy).value
    except ValueError:
        names = ", ".join(p.value for p in Policy)
        raise InvalidArgument(f"unknown balancing policy {policy!r}; one of {names}") from None


def _kind(to: str) -> envelope_pb2.DestinationKind:
    try:
        return _KINDS[to]
    except KeyError:
        raise InvalidArgument(f"to= must be 'node', 'service' or 'subject', not {to!r}") from None


class Client:
    """One channel to one node, and what an application does through it.

    Create with :func:`connect`. Use ``async with`` or call :meth:`close`.
    """

    def __init__(self, channel: Any, *, node: str | None, address: str) -> None:
        self._channel = channel
        self._stub = client_pb2_grpc.ClientServiceStub(channel)
        self.node = node
        """The node id this client is attached to, when known."""
        self.address = address
        self.name = node or address
        self._rng = random.Random()
        self._streams: set[_Stream] = set()
        self._closed = False
        self._batch_call: Any = None
        self._batch_lock = asyncio.Lock()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop every serving instance and subscription of this client, and close the channel."""
        if self._closed:
            return
        self._closed = True
        for stream in list(self._streams):
            await stream.stop()
        if self._batch_call is not None:
            self._batch_call.cancel()
        await self._channel.close(grace=0.5)

    async def _unary(self, what: str, method: Any, request: Any, timeout: float) -> Any:
        if self._closed:
            raise InvalidArgument("this client is closed")
        # The whole timeout travels beside gRPC's (relative, shrinking) deadline,
        # so the node can tell how long the call queued before it got to it and
        # shed load (RESOURCE_EXHAUSTED) before callers time out.
        metadata = ((TIMEOUT_METADATA, str(int(timeout * 1000))),)
        try:
            return await method(request, timeout=timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            raise _from_rpc(exc, self.name, what) from None

    # --- one-way ---

    async def send(
        self,
        target: str,
        body: Any,
        *,
        to: Target = "node",
        acknowledged: bool = False,
        wait_for_ack: bool = False,
        timeout: float | None = None,
        policy: str | None = None,
        message_id: bytes | None = None,
    ) -> bytes:
        """Send ``body`` to a node, one instance of a service, or a subject; returns the message id.

        - default (async): at most once; returns once the node has sealed and
          queued it;
        - ``acknowledged=True``: returns once the node has stored it durably; it
          is retried until the destination acks or ``timeout`` (default 10 s) passes;
        - ``wait_for_ack=True`` (implies acknowledged): returns only after the
          destination's end-to-end ack.

        ``policy`` picks how a service instance is chosen (``round-robin``,
        ``weighted``, ``least-outstanding``, ``latency``). For a subject the id is
        the first copy's (empty when nobody subscribes). ``message_id`` makes a
        retried acknowledged send idempotent.

        Raises:
            EncodeError, InvalidArgument: before anything is sent.
            Unavailable: no route to the node / no instance of the service.
            DeadlineExceeded: ``wait_for_ack`` and no ack within ``timeout``.
            ResourceExhausted: the node is saturated.
            RemoteCallError: any other refusal, with its ``.status``.
        """
        response = await self._send(
            target,
            body,
            kind=_kind(to),
            acknowledged=acknowledged or wait_for_ack,
            wait_for_ack=wait_for_ack,
            timeout=timeout,
            policy=policy,
            message_id=message_id,
        )
        return bytes(response.message_id)

    async def publish(
        self,
        subject: str,
        body: Any,
        *,
        acknowledged: bool = False,
        wait_for_ack: bool = False,
        timeout: float | None = None,
    ) -> int:
        """Publish to every subscriber of ``subject`` (one member per queue group).

        Returns the number of copies: one per subscribed node, as far as this
        node knows the mesh's subscriptions right now.

        Raises:
            as :meth:`send`.
        """
        check_subject(subject)
        response = await self._send(
            subject,
            body,
            kind=envelope_pb2.DESTINATION_KIND_SUBJECT,
            acknowledged=acknowledged or wait_for_ack,
            wait_for_ack=wait_for_ack,
            timeout=timeout,
            policy=None,
            message_id=None,
        )
        return int(response.copies)

    async def _send(
        self,
        target: str,
        body: Any,
        *,
        kind: envelope_pb2.DestinationKind,
        acknowledged: bool,
        wait_for_ack: bool,
        timeout: float | None,
        policy: str | None,
        message_id: bytes | None,
    ) -> client_pb2.SendResponse:
        _check_timeout(timeout, "timeout")
        encoded = _encode(body)
        mode = (
            envelope_pb2.DELIVERY_MODE_ACKNOWLEDGED
            if acknowledged
            else envelope_pb2.DELIVERY_MODE_ASYNC
        )
        if acknowledged and timeout is None:
            timeout = ACK_TIMEOUT
        request = client_pb2.SendRequest(
            target=client_pb2.Address(kind=kind, name=target),
            body=_body_pb(encoded),
            mode=mode,
            timeout_ms=int(timeout * 1000) if timeout is not None else 0,
            message_id=message_id or b"",
            wait_for_ack=wait_for_ack,
            policy=_check_policy(policy),
        )
        rpc_timeout = (
            timeout + DEADLINE_MARGIN if wait_for_ack and timeout is not None else RPC_TIMEOUT
        )
        response = await self._unary("send", self._stub.Send, request, rpc_timeout)
        return cast("client_pb2.SendResponse", response)

    async def send_batch(
        self,
        items: Sequence[tuple[str, Any]],
        *,
        to: Target = "node",
        acknowledged: bool = False,
        timeout: float | None = None,
    ) -> list[bytes]:
        """Send many (target, body) pairs in one write; returns their message ids, in order.

        The high-throughput form of :meth:`send`: one long-lived stream, one
        pass through the node and one durable commit per batch (acknowledged
        messages are on disk when this returns). No ``wait_for_ack`` here.

        Raises:
            BatchSendError: some items were refused; ``.outcomes`` holds, per
                item, its id or its :class:`RemoteCallError`.
            RemoteCallError: the stream itself failed.
        """
        _check_timeout(timeout, "timeout")
        if acknowledged and timeout is None:
            timeout = ACK_TIMEOUT
        mode = (
            envelope_pb2.DELIVERY_MODE_ACKNOWLEDGED
            if acknowledged
            else envelope_pb2.DELIVERY_MODE_ASYNC
        )
        kind = _kind(to)
        batch = client_pb2.SendBatch(
            requests=[
                client_pb2.SendRequest(
                    target=client_pb2.Address(kind=kind, name=target),
                    body=_body_pb(_encode(body)),
                    mode=mode,
                    timeout_ms=int(timeout * 1000) if timeout is not None else 0,
                )
                for target, body in items
            ]
        )
        async with self._batch_lock:  # one batch in flight: answers come back in order
            try:
                if self._batch_call is None or self._batch_call.done():
                    self._batch_call = self._stub.SendStream()
                await asyncio.wait_for(self._batch_call.write(batch), RPC_TIMEOUT)
                result = await asyncio.wait_for(self._batch_call.read(), RPC_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                self._batch_call = None
                raise _from_rpc(exc, self.name, "send_batch") from None
            except TimeoutError:
                if self._batch_call is not None:
                    self._batch_call.cancel()
                self._batch_call = None
                raise remote_error(
                    Status.DEADLINE_EXCEEDED, f"{self.name}: send_batch: no answer", node=self.name
                ) from None
        if result is grpc.aio.EOF:
            self._batch_call = None
            raise remote_error(Status.UNAVAILABLE, f"{self.name}: send_batch: stream ended")
        outcomes: list[bytes | RemoteCallError] = []
        for item in result.results:
            if item.status:
                outcomes.append(remote_error(Status.of(item.status), item.error, node=self.name))
            else:
                outcomes.append(bytes(item.message_id))
        failed = [o for o in outcomes if isinstance(o, RemoteCallError)]
        if failed:
            raise BatchSendError(outcomes, failed[0])
        return [o for o in outcomes if isinstance(o, bytes)]

    # --- request / reply ---

    async def request(
        self,
        target: str,
        body: Any,
        *,
        timeout: float = 5.0,
        to: Target = "service",
        policy: str | None = None,
        reply_type: type[ProtoMessage] | None = None,
    ) -> Reply:
        """Send a request to a service (or a node's instances) and wait for its reply.

        Raises:
            EncodeError, InvalidArgument: before anything is sent.
            DeadlineExceeded: no reply within ``timeout`` seconds.
            Unavailable: no route, or no instance of the service.
            ResourceExhausted: the node or the instance is saturated.
            RemoteCallError: the handler failed: ``.status`` is its status
                (INTERNAL for an exception) and the message carries its text.
            DecodeError: the reply is protobuf and ``reply_type`` is missing or wrong.
        """
        _check_timeout(timeout, "timeout")
        encoded = _encode(body)
        request = client_pb2.RequestMessage(
            target=client_pb2.Address(kind=_kind(to), name=target),
            body=_body_pb(encoded),
            timeout_ms=max(1, int(timeout * 1000)),
            policy=_check_policy(policy),
        )
        answer = cast(
            "client_pb2.ReplyMessage",
            await self._unary(
                f"request to {target!r}", self._stub.Request, request, timeout + DEADLINE_MARGIN
            ),
        )
        raw = _encoded_of(answer.body)
        return Reply(
            body=decode_body(raw, reply_type),
            raw=raw,
            responder=answer.responder,
            message_id=bytes(answer.message_id),
            instance=answer.instance,
        )

    # --- streams ---

    def serve(
        self,
        service: str,
        handler: Handler,
        *,
        weight: int = 1,
        instance: str | None = None,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> Serving:
        """Attach an instance of ``service`` whose requests ``handler`` answers.

        The handler takes a :class:`Message` and returns a body (encoded as for
        :meth:`send`; None is JSON null). ``async def`` handlers run on the
        loop; plain functions run in worker threads, so they may block. At
        most ``max_in_flight`` run at once. An exception becomes an INTERNAL
        reply carrying its message (a :class:`MeshError` keeps its status).

        Starts at once (needs a running loop). ``async with client.serve(...)``
        waits until the node has registered the instance and stops it on exit;
        :meth:`Serving.stop` stops it too. A dropped stream is re-attached
        with backoff.
        """
        if not 0 < len(service.encode()) <= 255:
            raise InvalidArgument("a service name of 1..255 bytes is required")
        if weight < 1:
            raise InvalidArgument(f"weight must be >= 1, not {weight}")
        if max_in_flight < 1:
            raise InvalidArgument(f"max_in_flight must be >= 1, not {max_in_flight}")
        serving = Serving(
            self,
            service,
            handler,
            weight=weight,
            instance=instance or "",
            max_in_flight=max_in_flight,
        )
        serving.start()
        return serving

    def subscribe(self, subject: str, *, queue: str | None = None) -> Subscription:
        """Messages published on ``subject`` (``*`` matches one token, ``>`` the rest).

        With ``queue``, each message goes to one member of the queue group
        instead of to every subscriber. Returns an async iterator of
        :class:`Message` (also an async context manager); re-subscribes when
        the stream drops (messages published meanwhile are lost: pub/sub is
        at most once).

        Raises:
            InvalidArgument: a bad pattern or queue group name.
        """
        offer(check_pattern(subject), queue)
        request = client_pb2.SubscribeRequest(subject=subject, queue=queue or "")
        subscription = Subscription(
            self, f"subscription {subject!r}", lambda: self._stub.Subscribe(request)
        )
        subscription.start()
        return subscription

    def receive(self) -> Subscription:
        """Messages sent to this node (``to="node"``), as an async iterator of :class:`Message`.

        Messages that arrived while nobody listened are delivered first.
        """
        subscription = Subscription(
            self, "receive", lambda: self._stub.Receive(client_pb2.ReceiveRequest())
        )
        subscription.start()
        return subscription


class _Stream:
    """A long-lived stream to the node, re-opened with backoff until stopped."""

    def __init__(self, client: Client, what: str) -> None:
        self.client = client
        self.what = what
        self._task: asyncio.Task[None] | None = None
        self._call: Any = None
        self._stopping = False
        self._backoff = _Backoff(client._rng)
        self.error: MeshError | None = None
        """Why the stream gave up for good (a permanent refusal), if it did."""

    def start(self) -> None:
        self.client._streams.add(self)
        self._task = asyncio.get_running_loop().create_task(self._run_forever())
        self._task.set_name(f"mesh-{self.what}")

    async def _run_once(self) -> None:
        raise NotImplementedError

    def _finished(self, error: MeshError | None) -> None:
        """Called once when the stream stops for good."""

    async def _run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        error: MeshError | None = None
        try:
            while not self._stopping:
                opened = loop.time()
                try:
                    await self._run_once()
                    problem = "ended"
                except grpc.aio.AioRpcError as exc:
                    if self._stopping:
                        break
                    failure = _from_rpc(exc, self.client.name, self.what)
                    if failure.status in _PERMANENT:
                        error = failure
                        log.error("%s refused: %s", self.what, failure)
                        break
                    problem = str(failure)
                except MeshError as exc:  # e.g. a delivery this SDK cannot represent
                    error = exc
                    log.error("%s failed: %s", self.what, exc)
                    break
                if self._stopping:
                    break
                if loop.time() - opened > STABLE_STREAM:
                    self._backoff.reset()
                delay = self._backoff.next_delay()
                log.warning("%s dropped (%s); re-opening in %.2f s", self.what, problem, delay)
                await asyncio.sleep(delay)
        finally:
            self.error = error
            self._finished(error)

    async def stop(self) -> None:
        """Close the stream and stop re-opening it."""
        self._stopping = True
        self.client._streams.discard(self)
        if self._call is not None:
            self._call.cancel()
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Serving(_Stream):
    """One attached instance of a service (see :meth:`Client.serve`)."""

    def __init__(
        self,
        client: Client,
        service: str,
        handler: Handler,
        *,
        weight: int,
        instance: str,
        max_in_flight: int,
    ) -> None:
        super().__init__(client, f"serve {service!r}")
        self.service = service
        self.weight = weight
        self.instance = instance
        """The instance name (assigned by the node when not given, once registered)."""
        self._handler = handler
        self._is_async = inspect.iscoroutinefunction(handler)
        self._slots = asyncio.Semaphore(max_in_flight)
        self._handling: set[asyncio.Task[None]] = set()
        self._registered = asyncio.Event()
        self._done = asyncio.Event()
        self.handled = 0
        """Requests answered so far (successfully or with an error)."""

    async def __aenter__(self) -> Serving:
        try:
            await self.registered()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def registered(self, timeout: float = REGISTER_TIMEOUT) -> str:
        """Wait until the node has (re-)registered this instance; returns its name.

        Raises:
            RemoteCallError: the node refused the registration for good.
            DeadlineExceeded: not registered within ``timeout`` seconds.
        """
        waiter = asyncio.ensure_future(self._registered.wait())
        finished = asyncio.ensure_future(self._done.wait())
        try:
            await asyncio.wait(
                {waiter, finished}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
            finished.cancel()
        if self._registered.is_set():
            return self.instance
        if self.error is not None:
            raise self.error
        if self._done.is_set():
            raise InvalidArgument(f"{self.what} is stopped")
        raise DeadlineExceeded(
            Status.DEADLINE_EXCEEDED,
            f"{self.client.name}: {self.what}: not registered within {timeout:g} s",
            node=self.client.name,
        )

    def _finished(self, error: MeshError | None) -> None:
        self._registered.clear()
        self._done.set()

    async def _run_once(self) -> None:
        upstream: asyncio.Queue[client_pb2.ServeUpstream | None] = asyncio.Queue()
        upstream.put_nowait(
            client_pb2.ServeUpstream(
                register=client_pb2.ServiceRegistration(
                    service=self.service, weight=self.weight, instance=self.instance
                )
            )
        )

        async def outgoing() -> AsyncIterator[client_pb2.ServeUpstream]:
            while (item := await upstream.get()) is not None:
                yield item

        self._call = call = self.client._stub.Serve(outgoing())
        try:
            async for down in call:
                if down.HasField("registered"):
                    self.instance = down.registered.instance
                    self._registered.set()
                    log.info("%s registered as %s", self.what, self.instance)
                elif down.HasField("request"):
                    await self._slots.acquire()
                    task = asyncio.ensure_future(self._answer(down.request, upstream))
                    self._handling.add(task)
                    task.add_done_callback(self._handled)
        finally:
            self._registered.clear()
            upstream.put_nowait(None)
            self._call = None

    def _handled(self, task: asyncio.Task[None]) -> None:
        self._handling.discard(task)
        self._slots.release()
        self.handled += 1

    async def _answer(
        self,
        delivery: client_pb2.Delivery,
        upstream: asyncio.Queue[client_pb2.ServeUpstream | None],
    ) -> None:
        request_id = delivery.message_id
        try:
            message = _message(delivery)
            if self._is_async:
                result = await self._handler(message)
            else:
                result = await asyncio.to_thread(self._handler, message)
                if inspect.isawaitable(result):
                    result = await result
            reply = client_pb2.HandlerReply(request_id=request_id, body=_body_pb(_encode(result)))
        except EncodeError as exc:  # the handler returned something unencodable: its bug
            reply = _error_reply(request_id, Status.INTERNAL, f"reply body: {exc}")
        except MeshError as exc:
            reply = _error_reply(request_id, exc.status, str(exc))
        except Exception as exc:
            log.exception("%s: handler failed", self.what)
            reply = _error_reply(request_id, Status.INTERNAL, str(exc) or type(exc).__name__)
        # A reply for a stream that has since dropped is lost; the caller's node retries.
        upstream.put_nowait(client_pb2.ServeUpstream(reply=reply))

    async def stop(self) -> None:
        """Detach the instance; requests still being handled are cancelled."""
        await super().stop()
        for task in list(self._handling):
            task.cancel()
        if self._handling:
            await asyncio.gather(*self._handling, return_exceptions=True)


def _error_reply(request_id: bytes, status: Status, text: str) -> client_pb2.HandlerReply:
    if status is Status.OK:
        status = Status.UNKNOWN
    return client_pb2.HandlerReply(request_id=request_id, status=int(status), error=text[:1024])


class _End:
    """Queue marker: the subscription is over (``error`` says why, if not by request)."""

    def __init__(self, error: MeshError | None) -> None:
        self.error = error


SUBSCRIPTION_BUFFER = 1024
"""Messages a subscription holds for a slow reader before it stops reading the stream."""


class Subscription(_Stream):
    """An async iterator of :class:`Message` (see :meth:`Client.subscribe`, :meth:`Client.receive`).

    Iteration ends when the subscription is stopped; it raises the error if
    the node refused the subscription for good.
    """

    def __init__(self, client: Client, what: str, opener: Callable[[], Any]) -> None:
        super().__init__(client, what)
        self._opener = opener
        self._queue: asyncio.Queue[Message | _End] = asyncio.Queue(SUBSCRIPTION_BUFFER)
        self._ended: _End | None = None

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Message:
        if self._ended is not None:
            return self._end(self._ended)
        item = await self._queue.get()
        if isinstance(item, _End):
            self._ended = item
            return self._end(item)
        return item

    @staticmethod
    def _end(end: _End) -> Message:
        if end.error is not None:
            raise end.error
        raise StopAsyncIteration

    async def get(self, timeout: float | None = None) -> Message:
        """The next message, waiting at most ``timeout`` seconds.

        Raises:
            TimeoutError: nothing arrived in time.
            StopAsyncIteration: the subscription was stopped.
        """
        return await asyncio.wait_for(self.__anext__(), timeout)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _run_once(self) -> None:
        self._call = call = self._opener()
        try:
            async for delivery in call:
                try:
                    message = _message(delivery)
                except DecodeError as exc:
                    log.warning("%s: dropped a delivery: %s", self.what, exc)
                    continue
                await self._queue.put(message)
        finally:
            self._call = None

    def _finished(self, error: MeshError | None) -> None:
        # Wake a reader even when the buffer is full: drop the oldest message.
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(_End(error))


# --- the blocking client -----------------------------------------------------------------------


class _LoopThread:
    """One asyncio loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="mesh-client", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no answer within {timeout:g} s") from None
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt in the caller's thread
            raise

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5.0)


_SAFETY = 5.0
"""Extra seconds a blocking call waits for the loop thread beyond the call's own deadline."""


def connect_sync(
    address: str | None = None,
    *,
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    node_id: str | None = None,
    insecure: bool = False,
    state_dir: Path | None = None,
    node: str | None = None,
    timeout: float = CONNECT_TIMEOUT,
) -> SyncClient:
    """The blocking flavour of :func:`connect` (same arguments, same errors)."""
    runner = _LoopThread()
    try:
        client = runner.run(
            _open(
                address,
                ca=ca,
                cert=cert,
                key=key,
                node_id=node_id,
                insecure=insecure,
                state_dir=state_dir,
                node=node,
                timeout=timeout,
            ),
            timeout + _SAFETY,
        )
    except BaseException:
        runner.stop()
        raise
    return SyncClient(client, runner)


class SyncClient:
    """A :class:`Client` for code without asyncio; a context manager.

    Every method blocks until the call's own deadline at most.
    """

    def __init__(self, client: Client, runner: _LoopThread) -> None:
        self._client = client
        self._runner = runner
        self.node = client.node
        self.address = client.address

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving and subscriptions, close the channel and the loop thread."""
        if self._runner.loop.is_running():
            with contextlib.suppress(TimeoutError):
                self._runner.run(self._client.close(), _SAFETY)
        self._runner.stop()

    def send(
        self,
        target: str,
        body: Any,
        *,
        to: Target = "node",
        acknowledged: bool = False,
        wait_for_ack: bool = False,
        timeout: float | None = None,
        policy: str | None = None,
        message_id: bytes | None = None,
    ) -> bytes:
        """As :meth:`Client.send`."""
        coroutine = self._client.send(
            target,
            body,
            to=to,
            acknowledged=acknowledged,
            wait_for_ack=wait_for_ack,
            timeout=timeout,
            policy=policy,
            message_id=message_id,
        )
        return self._runner.run(coroutine, (timeout or ACK_TIMEOUT) + RPC_TIMEOUT + _SAFETY)

    def publish(
        self,
        subject: str,
        body: Any,
        *,
        acknowledged: bool = False,
        wait_for_ack: bool = False,
        timeout: float | None = None,
    ) -> int:
        """As :meth:`Client.publish`."""
        coroutine = self._client.publish(
            subject, body, acknowledged=acknowledged, wait_for_ack=wait_for_ack, timeout=timeout
        )
        return self._runner.run(coroutine, (timeout or ACK_TIMEOUT) + RPC_TIMEOUT + _SAFETY)

    def request(
        self,
        target: str,
        body: Any,
        *,
        timeout: float = 5.0,
        to: Target = "service",
        policy: str | None = None,
        reply_type: type[ProtoMessage] | None = None,
    ) -> Reply:
        """As :meth:`Client.request`."""
        coroutine = self._client.request(
            target, body, timeout=timeout, to=to, policy=policy, reply_type=reply_type
        )
        return self._runner.run(coroutine, timeout + DEADLINE_MARGIN + _SAFETY)

    def serve(
        self,
        service: str,
        handler: Handler,
        *,
        weight: int = 1,
        instance: str | None = None,
        max_in_flight: int = MAX_IN_FLIGHT,
        timeout: float = REGISTER_TIMEOUT,
    ) -> SyncServing:
        """As :meth:`Client.serve`, but returns once the instance is registered.

        Plain-function handlers run in worker threads of the background loop.
        """

        async def attach() -> Serving:
            serving = self._client.serve(
                service, handler, weight=weight, instance=instance, max_in_flight=max_in_flight
            )
            try:
                await serving.registered(timeout)
            except BaseException:
                await serving.stop()
                raise
            return serving

        return SyncServing(self._runner.run(attach(), timeout + _SAFETY), self._runner)

    def subscribe(self, subject: str, *, queue: str | None = None) -> SyncSubscription:
        """As :meth:`Client.subscribe`, as a blocking iterator."""

        async def open_() -> Subscription:
            return self._client.subscribe(subject, queue=queue)

        return SyncSubscription(self._runner.run(open_(), _SAFETY), self._runner)

    def receive(self) -> SyncSubscription:
        """As :meth:`Client.receive`, as a blocking iterator."""

        async def open_() -> Subscription:
            return self._client.receive()

        return SyncSubscription(self._runner.run(open_(), _SAFETY), self._runner)


class SyncServing:
    """A served instance of a :class:`SyncClient`; a context manager."""

    def __init__(self, serving: Serving, runner: _LoopThread) -> None:
        self._serving = serving
        self._runner = runner
        self.service = serving.service
        self.instance = serving.instance

    @property
    def handled(self) -> int:
        return self._serving.handled

    def __enter__(self) -> SyncServing:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._runner.loop.is_running():
            self._runner.run(self._serving.stop(), _SAFETY)


class SyncSubscription:
    """A blocking iterator of :class:`Message`; a context manager."""

    def __init__(self, subscription: Subscription, runner: _LoopThread) -> None:
        self._subscription = subscription
        self._runner = runner

    def __iter__(self) -> Iterator[Message]:
        return self

    def __next__(self) -> Message:
        try:
            return self._runner.run(self._subscription.__anext__(), None)
        except StopAsyncIteration:
            raise StopIteration from None

    def get(self, timeout: float | None = None) -> Message:
        """The next message, waiting at most ``timeout`` seconds.

        Raises:
            TimeoutError: nothing arrived in time.
            StopIteration: the subscription was stopped.
        """
        try:
            return self._runner.run(self._subscription.__anext__(), timeout)
        except StopAsyncIteration:
            raise StopIteration from None

    def __enter__(self) -> SyncSubscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._runner.loop.is_running():
            self._runner.run(self._subscription.stop(), _SAFETY)


__all__ = [
    "ACK_TIMEOUT",
    "BatchSendError",
    "Client",
    "ConnectError",
    "Connecting",
    "DeadlineExceeded",
    "Handler",
    "Message",
    "RemoteCallError",
    "Reply",
    "ResourceExhausted",
    "Serving",
    "Subscription",
    "SyncClient",
    "SyncServing",
    "SyncSubscription",
    "Unavailable",
    "connect",
    "connect_sync",
    "remote_error",
]
