"""NodeRuntime: drives one ``NodeCore`` with asyncio and grpc.aio.

Everything here is glue: it turns streams, timers and RPCs into core inputs
and carries out the actions the core returns. The protocol decisions (hello
checks, heartbeats, routing, forwarding) are all the core's, so the simulator
and this runtime behave the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc

from mesh.actions import (
    Acked,
    Action,
    CloseLink,
    Deliver,
    Failed,
    Forget,
    Persist,
    Rejected,
    Remember,
    Replied,
    SendFrame,
    Wake,
)
from mesh.codec import EncodedBody
from mesh.core import CoreConfig, LinkPhase, NodeCore
from mesh.crypto import NodeIdentity
from mesh.directory import CertificateCheck
from mesh.envelope import EnvelopeHeader, parse_envelope
from mesh.errors import MeshError, Status
from mesh.v1 import peer_pb2
from nodes.apps import Instance, LocalApps, echo_handler
from nodes.links import LinkSettings, LinkStuck, PeerLink, is_data, link_method, parse_frame
from nodes.status import grpc_code
from nodes.store import OutboxEntry, Store

log = logging.getLogger("mesh.runtime")

HELLO_TIMEOUT = 5.0
"""Seconds an inbound stream may take to send its hello."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NeighbourSpec:
    """A configured neighbour: who, where, and at what cost."""

    node: str
    address: str | None
    cost: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Transport:
    """How this node reaches and authenticates neighbours (None fields: insecure)."""

    channel_credentials: grpc.ChannelCredentials | None = None
    """Client side of mTLS; None dials in plaintext."""
    channel_options: Callable[[str], list[tuple[str, str]]] | None = None
    """Extra channel options per neighbour id (the TLS target name override)."""
    peer_identity: Callable[[grpc.aio.ServicerContext], str | None] | None = None
    """The verified node id of an inbound stream's certificate; None: no check."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeOptions:
    """What a runtime needs beyond the core's configuration."""

    neighbours: tuple[NeighbourSpec, ...] = ()
    link: LinkSettings = field(default_factory=LinkSettings)
    reconnect_min: float = 0.1
    reconnect_max: float = 5.0
    services: dict[str, int] = field(default_factory=dict)
    """Services this node offers itself (name -> weight), from its config."""
    handlers: dict[str, str] = field(default_factory=dict)
    """Built-in handlers for configured services (service -> "echo")."""
    subjects: tuple[str, ...] = ()
    inbox_max: int = 10_000
    """Deliveries kept for local applications before the oldest are dropped."""


class NodeRuntime:
    """One node's core plus its links, timers and local deliveries."""

    def __init__(
        self,
        identity: NodeIdentity,
        core_config: CoreConfig,
        options: RuntimeOptions,
        transport: Transport,
        *,
        certificate: bytes = b"",
        check_certificate: CertificateCheck | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        store: Store | None = None,
    ) -> None:
        self.node_id = identity.node_id
        self.options = options
        self.transport = transport
        self.clock = clock
        self.rng = rng or random.SystemRandom()
        self.core = NodeCore(
            identity,
            core_config,
            random_bytes=self.rng.randbytes,
            certificate=certificate,
            check_certificate=check_certificate,
        )
        self.links: dict[str, PeerLink] = {}
        self.addresses: dict[str, str] = {
            n.node: n.address for n in options.neighbours if n.address
        }
        self.costs: dict[str, int] = {n.node: n.cost for n in options.neighbours}
        self.store = store
        self.apps = LocalApps(
            self.node_id, self._reply, inbox_max=options.inbox_max, headroom=core_config.max_batch
        )
        self.counters: dict[str, int] = {}
        self.instance_seq = 0
        self.disabled: set[str] = set()
        """Peers whose link an operator took down (SetLink)."""
        self._outbox_adds: dict[bytes, OutboxEntry] = {}
        self._outbox_removes: list[bytes] = []
        self._remembered: list[tuple[bytes, int]] = []
        self._wake_handle: asyncio.TimerHandle | None = None
        self._wake_at: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stopping = asyncio.Event()
        self._admin_changed = asyncio.Event()

    # --- life cycle -------------------------------------------------------------

    async def start(self) -> None:
        """Resume the outbox, advertise local offers and start dialling neighbours."""
        now = self.clock()
        if self.store is not None:
            horizon = self.core.config.delivery.dedupe_horizon_ms
            self.core.remember_seen(
                self.store.load_dedupe(int(now * 1000) - horizon),
                now,
                floor_ms=self.store.dedupe_floor_ms(),
            )
            entries = []
            for entry in self.store.load_outbox():
                try:
                    envelope = parse_envelope(entry.envelope)
                except MeshError as exc:
                    log.warning("dropping an unreadable outbox entry: %s", exc)
                    self._outbox_removes.append(entry.message_id)
                    continue
                entries.append((entry.message_id, envelope, entry.deadline_ms))
            if entries:
                log.info("resuming outbox", extra={"fields": {"messages": len(entries)}})
            self.apply(self.core.resume(entries, now))
        for service, handler in self.options.handlers.items():
            if handler == "echo":
                name = f"{self.node_id}/{service}/echo"
                self.apps.add_instance(
                    Instance(
                        service=service,
                        name=name,
                        weight=self.options.services.get(service, 1),
                        builtin=echo_handler(name),
                    )
                )
        self.refresh_offers()
        for spec in self.options.neighbours:
            if spec.address:
                self._spawn(self._dial_forever(spec), f"dial-{spec.node}")

    def refresh_offers(self) -> None:
        """Advertise configured and attached services and subscriptions."""
        # A configured service is advertised with its configured weight (its
        # built-in handler, if any, is that weight); streamed instances add theirs.
        services = dict(self.options.services)
        for name, instances in self.apps.instances.items():
            streamed = sum(i.weight for i in instances if i.builtin is None)
            if streamed:
                services[name] = services.get(name, 0) + streamed
        _, subjects = self.apps.offers()
        offered = sorted(set(self.options.subjects) | set(subjects))
        self.apply(self.core.set_offers(services, offered, self.clock()))

    def _reply(self, request: EnvelopeHeader, body: EncodedBody, status: int) -> None:
        self.apply(self.core.reply(request, body, self.clock(), status=Status.of(status)))

    async def stop(self) -> None:
        """Close every link and stop dialling."""
        self._stopping.set()
        for link in list(self.links.values()):
            link.close(Status.UNAVAILABLE, f"node {self.node_id!r} is shutting down")
        if self._wake_handle is not None:
            self._wake_handle.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in self._channels.values():
            await channel.close(grace=0.5)

    def _spawn(self, coroutine: Awaitable[None], name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def set_link(self, peer: str, enabled: bool) -> bool:
        """Take the link to ``peer`` administratively down or up; True if it was up."""
        link = self.links.get(peer)
        was_up = link is not None
        if enabled:
            self.disabled.discard(peer)
            self._admin_changed.set()
        else:
            self.disabled.add(peer)
            if link is not None:
                link.close(Status.UNAVAILABLE, f"link to {peer!r} taken down by an operator")
        log.info(
            "link administratively %s",
            "up" if enabled else "down",
            extra={"fields": {"peer": peer}},
        )
        return was_up

    def has_capacity(self) -> bool:
        """Whether new local messages are welcome: no link queue is full and the
        core's pending table has room. Refusing at the entry node (as
        RESOURCE_EXHAUSTED) keeps overload from becoming silent loss inside."""
        if self.core.pending_count >= self.core.config.delivery.max_pending:
            return False
        # A suspect link is out of routing: nothing new goes to it, so its full
        # queue (it stalled) must not refuse the node's other traffic.
        return all(
            link.has_space()
            for peer, link in self.links.items()
            if self.core.link_phase(peer) is not LinkPhase.SUSPECT
        )

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    # --- actions ----------------------------------------------------------------

    def apply(self, actions: list[Action]) -> list[SendFrame]:
        """Carry out actions; returns data frames that found their queue full."""
        blocked: list[SendFrame] = []
        for action in actions:
            if isinstance(action, SendFrame):
                if not self._send(action):
                    blocked.append(action)
            elif isinstance(action, Wake):
                self._schedule(action.at)
            elif isinstance(action, Deliver):
                self.apps.deliver(action)
            elif isinstance(action, Persist):
                self._outbox_adds[action.message_id] = OutboxEntry(
                    message_id=action.message_id,
                    recipient=action.recipient,
                    envelope=action.envelope.SerializeToString(),
                    created_ms=action.created_ms,
                    deadline_ms=action.deadline_ms,
                    attempts=0,
                )
            elif isinstance(action, Forget):
                if self._outbox_adds.pop(action.message_id, None) is None:
                    self._outbox_removes.append(action.message_id)
            elif isinstance(action, Remember):
                self._remembered.append((action.message_id, action.created_ms))
            elif isinstance(action, Acked | Replied | Failed):
                self.apps.resolve(action)
            elif isinstance(action, Rejected):
                self.count("rejected")
                log.warning(
                    "refused input: %s",
                    action.reason,
                    extra={"fields": {"peer": action.peer, "status": action.status.name}},
                )
            elif isinstance(action, CloseLink):
                link = self.links.get(action.peer)
                log.warning(
                    "closing link: %s",
                    action.reason,
                    extra={"fields": {"peer": action.peer, "status": action.status.name}},
                )
                if link is not None:
                    link.close(action.status, action.reason)
        self._flush_store()
        return blocked

    def _flush_store(self) -> None:
        """One transaction per batch of actions: durable before anything is answered.

        Called at the end of ``apply``, before the caller replies to an
        application or the link writers run, so an accepted message is on disk
        before it counts as accepted, and a delivered id before its ack leaves.
        """
        if self.store is None:
            self._outbox_adds.clear()
            self._outbox_removes.clear()
            self._remembered.clear()
            return
        if self._outbox_adds:
            self.store.add_outbox(list(self._outbox_adds.values()))
            self._outbox_adds.clear()
        if self._outbox_removes:
            self.store.remove_outbox(self._outbox_removes)
            self._outbox_removes = []
        if self._remembered:
            self.store.remember(self._remembered)
            self._remembered = []

    async def apply_with_backpressure(self, peer: str, actions: list[Action]) -> None:
        """Apply, then wait for room for data frames instead of dropping them.

        Used while reading a neighbour's stream: waiting here stops reading that
        stream, and gRPC flow control pushes back on the neighbour.
        """
        blocked = self.apply(actions)
        for action in blocked:
            link = self.links.get(action.peer)
            while (
                link is not None
                and not link.closed.is_set()
                # A stalled (suspect) link may stay full for its whole hold: do not
                # stop reading this neighbour for that long.
                and self.core.link_phase(action.peer) is not LinkPhase.SUSPECT
            ):
                if link.try_send_data(action.frame):
                    break
                self.core.keepalive(peer, self.clock())
                await link.wait_for_space(timeout=0.1)
                link = self.links.get(action.peer)
            else:
                self.count("dropped_link_gone")

    def _send(self, action: SendFrame) -> bool:
        link = self.links.get(action.peer)
        if link is None:
            self.count("dropped_no_link")
            return True
        if is_data(action.frame):
            return link.try_send_data(action.frame)
        try:
            link.send_control(action.frame)
        except LinkStuck as exc:
            link.close(Status.UNAVAILABLE, str(exc))
        return True

    def _schedule(self, at: float) -> None:
        if self._wake_at is not None and self._wake_at <= at and self._wake_handle is not None:
            return
        if self._wake_handle is not None:
            self._wake_handle.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, at - self.clock())
        self._wake_at = at
        self._wake_handle = loop.call_later(delay, self._on_wake)

    def _on_wake(self) -> None:
        self._wake_handle = None
        self._wake_at = None
        blocked = self.apply(self.core.tick(self.clock()))
        if blocked:  # only retransmits can be data here: they are retried later anyway
            self.count("dropped_queue_full", len(blocked))

    # --- links ------------------------------------------------------------------

    async def run_link(
        self,
        peer: str,
        read: Callable[[], Awaitable[bytes | None]],
        write: Callable[[bytes], Awaitable[None]],
        *,
        initiated: bool,
        first: peer_pb2.Frame | None = None,
    ) -> PeerLink:
        """Run one established stream until it ends; returns the link for its close reason."""
        link = PeerLink(peer, self.options.link, initiated)
        self.links[peer] = link
        cost = self.costs.get(peer) or (first.hello.cost if first is not None else 0) or 1
        log.info("link open", extra={"fields": {"peer": peer, "initiated": initiated}})
        self.apply(self.core.link_up(peer, cost, self.clock()))
        writer = asyncio.ensure_future(link.run_writer(write))
        reader = asyncio.ensure_future(self._read_loop(link, read, first))
        closed = asyncio.ensure_future(link.closed.wait())
        try:
            await asyncio.wait({writer, reader, closed}, return_when=asyncio.FIRST_COMPLETED)
            for task in (writer, reader):
                if task.done() and not task.cancelled() and task.exception() is not None:
                    error = task.exception()
                    link.close(Status.UNAVAILABLE, f"stream to {peer!r} failed: {error}")
        finally:
            reader.cancel()
            closed.cancel()
            link.close(link.close_status or Status.UNAVAILABLE, link.close_reason)
            # Forget the link first, synchronously: the awaits below are best
            # effort, and a grpc write on a dead stream may not yield to
            # cancellation for a long time. The core hears of it only if this
            # stream still owns the peer (a newer link may have replaced it).
            if self.links.get(peer) is link:
                del self.links[peer]
                self.apply(self.core.link_down(peer, self.clock()))
            log.info(
                "link closed",
                extra={"fields": {"peer": peer, "reason": link.close_reason or "stream ended"}},
            )
            await self._finish_writer(link, writer, write)
        return link

    @staticmethod
    async def _finish_writer(
        link: PeerLink, writer: asyncio.Task[None], write: Callable[[bytes], Awaitable[None]]
    ) -> None:
        """Let the writer stop and flush a last LinkError, each within 0.5 s, never waiting
        on a cancellation (asyncio.wait, unlike wait_for, does not)."""
        if not writer.done():
            await asyncio.wait({writer}, timeout=0.5)
            if not writer.done():
                writer.cancel()
        flush = asyncio.ensure_future(link.flush_control(write))
        await asyncio.wait({flush}, timeout=0.5)
        if not flush.done():
            flush.cancel()
        for task in (writer, flush):
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: a dead stream's write error is expected here

    async def _read_loop(
        self,
        link: PeerLink,
        read: Callable[[], Awaitable[bytes | None]],
        first: peer_pb2.Frame | None,
    ) -> None:
        peer = link.peer
        if first is not None:
            await self.apply_with_backpressure(
                peer, self.core.frame_received(peer, first, self.clock())
            )
        while not link.closed.is_set():
            data = await read()
            if self.links.get(peer) is not link:
                return  # replaced by a newer stream: what is left here is not the core's
            if data is None:
                link.close(Status.UNAVAILABLE, f"{peer!r} ended the stream")
                return
            try:
                frame = parse_frame(data)
            except MeshError as exc:
                self.count("garbage_frames")
                log.warning("refused input: %s", exc, extra={"fields": {"peer": peer}})
                link.close(exc.status, str(exc))
                return
            self.core.applications_full = self.apps.saturated()
            await self.apply_with_backpressure(
                peer, self.core.frame_received(peer, frame, self.clock())
            )

    async def _dial_forever(self, spec: NeighbourSpec) -> None:
        """Keep a link to ``spec`` up, redialling with exponential backoff and jitter."""
        assert spec.address is not None
        backoff = self.options.reconnect_min
        # The smaller id dials at once; the larger gives it a moment, so two nodes
        # dialling each other at the same instant rarely collide.
        if self.node_id > spec.node:
            await asyncio.sleep(self.options.reconnect_min * (1 + self.rng.random()))
        while not self._stopping.is_set():
            if spec.node in self.disabled:
                self._admin_changed.clear()
                await self._admin_changed.wait()
                continue
            existing = self.links.get(spec.node)
            if existing is not None:
                if await self._stale(spec.node, existing):
                    # Suspect for half its hold: maybe a connection that died without
                    # a reset (lost NAT state). Dial afresh; the peer replaces it too.
                    self.count("links_redialled_suspect")
                    if self.links.get(spec.node) is existing:
                        del self.links[spec.node]
                    existing.close(Status.UNAVAILABLE, "silent too long: dialling again")
                else:
                    await asyncio.sleep(self.options.reconnect_min * self.rng.random())
                    continue
            started = self.clock()
            try:
                await self._dial_once(spec)
            except grpc.aio.AioRpcError as exc:
                self.count("dial_failures")
                log.info(
                    "dial failed: %s",
                    exc.details() or exc.code().name,
                    extra={"fields": {"peer": spec.node, "status": exc.code().name}},
                )
            if self.clock() - started > 5 * self.options.reconnect_max:
                backoff = self.options.reconnect_min  # it was up for a while: start over
            await asyncio.sleep(backoff * (0.5 + self.rng.random()))
            backoff = min(self.options.reconnect_max, backoff * 2)

    async def _stale(self, peer: str, link: PeerLink) -> bool:
        """Wait until ``link`` closes (False) or has been SUSPECT for half the core's
        ``dead_hold`` (True)."""
        half_hold = self.core.config.dead_hold / 2
        suspect_since: float | None = None
        while not link.closed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(link.closed.wait(), 0.25)
            if (
                self.core.link_phase(peer) is not LinkPhase.SUSPECT
                or self.links.get(peer) is not link
            ):
                suspect_since = None
                continue
            now = self.clock()
            suspect_since = now if suspect_since is None else suspect_since
            if half_hold > 0 and now - suspect_since >= half_hold:
                return True
        return False

    async def _dial_once(self, spec: NeighbourSpec) -> None:
        assert spec.address is not None
        channel = self._channels.get(spec.node)
        if channel is None:
            options: list[tuple[str, object]] = [
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ]
            if self.transport.channel_options is not None:
                options += self.transport.channel_options(spec.node)
            if self.transport.channel_credentials is None:
                channel = grpc.aio.insecure_channel(spec.address, options=options)
            else:
                channel = grpc.aio.secure_channel(
                    spec.address, self.transport.channel_credentials, options=options
                )
            self._channels[spec.node] = channel
        call = link_method(channel)()

        async def read() -> bytes | None:
            data = await call.read()
            if data is grpc.aio.EOF:
                return None
            assert isinstance(data, bytes)
            return data

        try:
            # Only a stream that actually opened becomes a link (and a link_up).
            await asyncio.wait_for(call.wait_for_connection(), HELLO_TIMEOUT)
        except TimeoutError:
            call.cancel()
            self.count("dial_timeouts")
            return
        if spec.node in self.links:  # an inbound stream won the race meanwhile
            call.cancel()
            return
        link = await self.run_link(spec.node, read, call.write, initiated=True)
        call.cancel()
        if link.close_status is not None and link.close_status != Status.UNAVAILABLE:
            log.warning(
                "link refused: %s",
                link.close_reason,
                extra={"fields": {"peer": spec.node, "status": link.close_status.name}},
            )

    async def serve_link(self, request_iterator: object, context: grpc.aio.ServicerContext) -> None:
        """PeerService.Link: an inbound stream from a neighbour (raw bytes)."""
        del request_iterator  # the stream is read through the context

        async def read() -> bytes | None:
            data = await context.read()
            if data is grpc.aio.EOF:
                return None
            assert isinstance(data, bytes)
            return data

        try:
            data = await asyncio.wait_for(read(), HELLO_TIMEOUT)
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no hello within 5 s")
            return
        if data is None:
            return
        try:
            first = parse_frame(data)
        except MeshError as exc:
            self.count("garbage_frames")
            log.warning("refused input: %s", exc, extra={"fields": {"peer": context.peer()}})
            await context.abort(grpc_code(exc.status), str(exc))
            return
        if not first.HasField("hello"):
            reason = f"the first frame must be a hello, got {first.WhichOneof('body')}"
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, reason)
            return
        peer = first.hello.node_id
        if self.transport.peer_identity is not None:
            certified = self.transport.peer_identity(context)
            if certified != peer:
                self.count("links_unauthenticated")
                reason = f"certificate is for {certified!r}, the hello claims {peer[:64]!r}"
                log.warning("refused link: %s", reason, extra={"fields": {"peer": peer[:64]}})
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)
                return
        if peer in self.disabled:
            # An operator's "link down" holds whichever end dials.
            reason = f"the link to {peer!r} is administratively down at {self.node_id!r}"
            await context.abort(grpc.StatusCode.UNAVAILABLE, reason)
            return
        if peer in self.links:
            if self.core.link_phase(peer) is not LinkPhase.SUSPECT:
                await context.abort(
                    grpc.StatusCode.ALREADY_EXISTS, f"a link to {peer!r} is already up"
                )
                return
            # The peer dials again while its old stream is silent (it restarted, or
            # its side gave up): the new stream replaces the old one at once.
            stale = self.links.pop(peer)
            stale.close(Status.UNAVAILABLE, f"replaced by a new stream from {peer!r}")
            self.count("links_replaced_suspect")
        link = await self.run_link(peer, read, context.write, initiated=False, first=first)
        if link.close_status is not None and link.close_status != Status.UNAVAILABLE:
            await context.abort(grpc_code(link.close_status), link.close_reason)


__all__ = ["NeighbourSpec", "NodeRuntime", "RuntimeOptions", "Transport"]
