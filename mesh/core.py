"""NodeCore: one node's protocol state, driven by calls and answering with actions.

This is the sans-IO heart (docs/design.md). The runtime in ``nodes/`` and the
simulator in ``mesh/sim/`` feed it the same inputs:

- ``link_up(peer, cost, now)`` when a transport to a neighbour is open,
- ``link_down(peer, now)`` when it closed,
- ``frame_received(peer, frame, now)`` for every frame a neighbour sent,
- ``submit(...)`` for a message from a local application,
- ``tick(now)`` when the time of the last ``Wake`` has come,

and carry out the actions each returns (:mod:`mesh.actions`). It never reads a
clock, sleeps, draws from the global random generator or touches a socket.

What it owns: the neighbour links (hello handshake, heartbeats, dead-link
detection, link cost), the identity directory and key ring, the routing engine,
and forwarding (digest check at every hop, ttl, next hop, equal-cost next
hops used in turn).
"""

from __future__ import annotations

import enum
import heapq
import itertools
import math
import random
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

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
from mesh.balance import Balancer, Policy, RetryBudget
from mesh.codec import ContentType, EncodedBody
from mesh.crypto import Cipher, KeyRing, NodeIdentity, RandomBytes
from mesh.dedupe import DedupeWindow
from mesh.directory import CertificateCheck, IdentityDirectory, make_identity_record
from mesh.envelope import (
    DEFAULT_LIMITS,
    Envelope,
    EnvelopeHeader,
    Header,
    Limits,
    OpenedMessage,
    Opener,
    Sealer,
    past_deadline,
    read_header,
    verify,
)
from mesh.errors import (
    ClockSkew,
    InvalidArgument,
    LinkRefused,
    MeshError,
    NoRoute,
    ProtocolViolation,
    Replayed,
    Status,
    TooLarge,
    TooManyPending,
)
from mesh.linkcost import CostPolicy, LinkCost
from mesh.recovery import Recovery, Verdict
from mesh.routing.base import Outgoing, RoutingEngine
from mesh.routing.distance_vector import DistanceVectorConfig, DistanceVectorEngine
from mesh.routing.errors import StaleUpdate
from mesh.routing.link_state import LinkStateConfig, LinkStateEngine, serial_compare
from mesh.routing.table import RoutingTable, ServiceInstance
from mesh.subjects import check_subject, matches, parse_offer
from mesh.v1 import envelope_pb2, peer_pb2

PROTOCOL_VERSION = 2
"""2: acks echo which copy they acknowledge (``acked_attempt``), which loss recovery
relies on; a node of version 1 would look like one whose every copy arrived first."""
_STALL_REDIAL_S = 2.0
"""A link back within this long of being declared dead had stalled, not died."""
_GAP_HALF_LIFE_S = 30.0
"""How fast a link's remembered worst gap between frames fades (see ``dead_stretch``)."""

ENGINE_NAMES: Mapping[int, str] = {
    peer_pb2.ROUTING_ENGINE_LINK_STATE: "link-state",
    peer_pb2.ROUTING_ENGINE_DISTANCE_VECTOR: "distance-vector",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryConfig:
    """Acknowledged delivery, requests and dedupe."""

    default_timeout_ms: int = 10_000
    """Deadline of acknowledged messages and requests that set none."""
    retry_initial_s: float = 0.2
    """Least retransmission timeout; the RTO follows acked round trips
    (srtt + max(4 rttvar, this)), doubles per probe of a silent path and gets up
    to 25% jitter added (see mesh.recovery)."""
    retry_max_s: float = 5.0
    retransmit_rate: float = 2000.0
    """Retransmits per second per recipient, at most (a token bucket)."""
    retransmit_burst: int = 500
    request_attempt_s: float = 1.0
    """A request instance silent this long is ejected and the request retried elsewhere."""
    retry_budget: float = 0.2
    """Request retries may add at most this fraction of the request load."""
    max_pending: int = 100_000
    """Unacked messages and requests in flight from this node."""
    reply_cache: int = 10_000
    """Replies kept to answer retried requests without re-running the handler."""
    dedupe_capacity: int = 100_000
    dedupe_horizon_ms: int = 600_000
    traces_kept: int = 10_000
    """Hop traces of traced messages kept at their destination."""


@dataclass(slots=True, kw_only=True)
class _Pending:
    """An acknowledged message or request awaiting its ack or reply."""

    message_id: bytes
    request: bool
    destination: str
    destination_kind: envelope_pb2.DestinationKind
    body: EncodedBody | None
    deadline_ms: int
    started_at: float
    recipient: str = ""
    envelope: Envelope | None = None
    attempts: int = 0
    attempt_at: float = 0.0
    """When the latest copy was sent (0: not in this process's life)."""
    first_sent: float | None = None
    """When the first copy was sent, if this process sent it (not for a resumed one)."""
    presumed_lost: bool = False
    """A probe sent after this one was acked by its own copy: this one never arrived."""
    next_at: float = 0.0
    tried: set[str] = field(default_factory=set)
    policy: Policy | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CoreConfig:
    """Everything about a node's protocol behaviour that is not its identity."""

    mesh_id: str
    """Nodes of different meshes refuse to link."""
    engine: peer_pb2.RoutingEngine = peer_pb2.ROUTING_ENGINE_LINK_STATE
    """Routing engine; every node of a mesh runs the same one."""
    heartbeat_interval: float = 0.2
    """Seconds between heartbeats on an idle link."""
    dead_interval: float = 0.8
    """A neighbour silent this long is declared dead (well under 1 s by default)."""
    dead_stretch: float = 4.0
    """At most this multiple of ``dead_interval`` is allowed on a link whose frames
    have lately arrived with long gaps (TCP retransmitting under packet loss):
    1.5 x the longest recent gap, decaying with a 30 s half-life. 1 disables it."""
    dead_hold: float = 10.0
    """Seconds a link declared dead keeps its transport, withdrawn from routing,
    before it is closed. Routing moves at once; but a link that only stalled (TCP
    retransmitting under loss, a peer paused) comes back on its next frame with
    what it was carrying, instead of losing it and redialling through a handshake
    on the same bad path. 0 closes a dead link at once."""
    cost_policy: CostPolicy = field(default_factory=CostPolicy)
    """Static or RTT-derived link costs."""
    limits: Limits = DEFAULT_LIMITS
    """Bounds on envelopes."""
    default_ttl: int = 32
    """Hop budget of envelopes this node seals."""
    cipher: Cipher = Cipher.AES_256_GCM
    """AEAD for envelopes this node seals."""
    trace: bool = False
    """Trace every envelope this node forwards, not only those whose source asked."""
    max_batch: int = 1024
    """Most envelopes accepted in one batch frame."""
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    link_state: LinkStateConfig | None = None
    distance_vector: DistanceVectorConfig | None = None

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_interval < self.dead_interval:
            raise InvalidArgument("need 0 < heartbeat_interval < dead_interval")
        if self.dead_stretch < 1:
            raise InvalidArgument("dead_stretch must be at least 1")
        if self.dead_hold < 0:
            raise InvalidArgument("dead_hold must not be negative")
        if self.engine not in ENGINE_NAMES:
            raise InvalidArgument(f"unknown routing engine {self.engine}")


class LinkPhase(enum.Enum):
    """Where a neighbour link is in its life."""

    AWAITING_HELLO = "awaiting-hello"
    UP = "up"
    SUSPECT = "suspect"
    """Declared dead and withdrawn from routing, the transport kept for ``dead_hold``:
    the next frame from the peer brings it back up."""


class FrameKind(enum.Enum):
    """What arrived, for the link state table."""

    HELLO = "hello"
    ROUTING = "routing"
    IDENTITY = "identity"
    BATCH = "batch"
    HEARTBEAT = "heartbeat"
    ACK = "ack"
    ERROR = "error"


_FRAME_KINDS: Mapping[str, FrameKind] = {
    "hello": FrameKind.HELLO,
    "advert": FrameKind.ROUTING,
    "vector": FrameKind.ROUTING,
    "identity": FrameKind.IDENTITY,
    "batch": FrameKind.BATCH,
    "heartbeat": FrameKind.HEARTBEAT,
    "ack": FrameKind.ACK,
    "error": FrameKind.ERROR,
}

# (phase, frame kind) -> handler name. A pair that is missing is a protocol
# violation and closes the link, as in h2's connection state machine.
_LINK_TABLE: Mapping[tuple[LinkPhase, FrameKind], str] = {
    (LinkPhase.AWAITING_HELLO, FrameKind.HELLO): "_on_hello",
    (LinkPhase.AWAITING_HELLO, FrameKind.HEARTBEAT): "_on_heartbeat",
    (LinkPhase.AWAITING_HELLO, FrameKind.ERROR): "_on_link_error",
    (LinkPhase.UP, FrameKind.ROUTING): "_on_routing",
    (LinkPhase.UP, FrameKind.IDENTITY): "_on_identity",
    (LinkPhase.UP, FrameKind.BATCH): "_on_batch",
    (LinkPhase.UP, FrameKind.HEARTBEAT): "_on_heartbeat",
    (LinkPhase.UP, FrameKind.ACK): "_on_ack",
    (LinkPhase.UP, FrameKind.ERROR): "_on_link_error",
    # A suspect link's first frame brings it back, unless that frame ends it.
    (LinkPhase.SUSPECT, FrameKind.ROUTING): "_on_revival",
    (LinkPhase.SUSPECT, FrameKind.IDENTITY): "_on_revival",
    (LinkPhase.SUSPECT, FrameKind.BATCH): "_on_revival",
    (LinkPhase.SUSPECT, FrameKind.HEARTBEAT): "_on_revival",
    (LinkPhase.SUSPECT, FrameKind.ACK): "_on_revival",
    (LinkPhase.SUSPECT, FrameKind.ERROR): "_on_link_error",
}

_SENT_HEARTBEATS_KEPT = 16
_MAX_ATTEMPT = 2**32 - 1  # Envelope.attempt is a uint32
_MAX_TRACE = 64  # hops recorded at most (a trace is peer-controlled input)
_EMPTY_BODY = EncodedBody(data=b"", content_type=ContentType.RAW)
# Reply statuses that say the instance (not the request) is in trouble.
_INSTANCE_FAILURES = frozenset(
    {Status.UNAVAILABLE, Status.INTERNAL, Status.UNKNOWN, Status.RESOURCE_EXHAUSTED}
)


@dataclass(slots=True)
class _Neighbour:
    """Mutable state of one link."""

    peer: str
    phase: LinkPhase
    cost: LinkCost
    opened_at: float
    last_heard: float
    next_heartbeat: float
    silence_allowed: float
    """Seconds without a frame before the link is declared dead (see ``dead_stretch``)."""
    longest_gap: float = 0.0
    """The longest recent gap between frames, decayed (30 s half-life)."""
    heartbeat_seq: int = 0
    sent_heartbeats: dict[int, float] = field(default_factory=dict)
    last_peer_seq: int = 0
    last_peer_seq_at: float = 0.0
    frames_sent: int = 0
    frames_received: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerInfo:
    """A neighbour as the admin API shows it."""

    peer: str
    phase: str
    cost: int
    rtt_ms: float | None
    frames_sent: int
    frames_received: int


class NodeCore:
    """The protocol state of one node (see the module docstring)."""

    def __init__(
        self,
        identity: NodeIdentity,
        config: CoreConfig,
        *,
        random_bytes: RandomBytes,
        certificate: bytes = b"",
        check_certificate: CertificateCheck | None = None,
    ) -> None:
        self.node_id = identity.node_id
        self.config = config
        self._random_bytes = random_bytes
        self.keyring = KeyRing(identity, random_bytes=random_bytes)
        self.sealer = Sealer(self.keyring, cipher=config.cipher, limits=config.limits)
        self.opener = Opener(self.keyring, limits=config.limits)
        self._identity = identity
        self._certificate = certificate
        self.directory = IdentityDirectory(
            make_identity_record(identity, 1, certificate), check_certificate=check_certificate
        )
        self.engine: RoutingEngine = self._make_engine()
        self.dedupe = DedupeWindow(
            capacity=config.delivery.dedupe_capacity, horizon_ms=config.delivery.dedupe_horizon_ms
        )
        self._rng = random.Random(int.from_bytes(random_bytes(8), "big"))
        self.balancer = Balancer(self._rng)
        self._budget = RetryBudget(ratio=config.delivery.retry_budget)
        self._pending: dict[bytes, _Pending] = {}
        self._timers: list[tuple[float, int, bytes]] = []
        self._timer_seq = itertools.count()
        self._replies: OrderedDict[bytes, Envelope] = OrderedDict()
        self.recovery = Recovery(config.delivery.retry_initial_s, config.delivery.retry_max_s)
        """Round-trip estimates, backoff and loss evidence per recipient."""
        self.applications_full = False
        """Set by the driver while this node's applications cannot take more messages
        (their queues are full): acknowledged messages to them are then refused, not
        acked, so their sources retry later instead of the node dropping them."""
        self._gaps: dict[str, tuple[float, float, float]] = {}
        """Peer -> (longest recent gap between its frames, the silence that last
        declared the link dead (0: none), when), kept across incarnations."""
        self._traces: OrderedDict[bytes, list[str]] = OrderedDict()
        self._retransmit_bucket: dict[str, tuple[float, float]] = {}
        self.stats: Counter[str] = Counter()
        self._neighbours: dict[str, _Neighbour] = {}
        self._ecmp_turn: dict[str, int] = {}
        self._held: set[bytes] = set()
        """Acknowledged messages held for want of a route: no copy has left yet."""
        self._held_table: RoutingTable | None = None
        """The routing table the held messages were last checked against."""

    def _make_engine(self) -> RoutingEngine:
        if self.config.engine == peer_pb2.ROUTING_ENGINE_LINK_STATE:
            return LinkStateEngine(
                self.node_id,
                self.config.link_state,
                sign=self._identity.sign,
                verify=self._verify_origin,
            )
        return DistanceVectorEngine(self.node_id, self.config.distance_vector)

    def _verify_origin(self, origin: str, data: bytes, signature: bytes) -> bool:
        peer = self.keyring.peer(origin)
        if peer is None:
            return False
        try:
            peer.verify(data, signature)
        except MeshError:
            return False
        return True

    # --- what the driver reads -------------------------------------------------

    @property
    def table(self) -> RoutingTable:
        """The current routing table."""
        return self.engine.table

    def services(self) -> Mapping[str, tuple[ServiceInstance, ...]]:
        """Service name -> reachable instances, as learned through routing."""
        return self.engine.services()

    def subjects(self) -> Mapping[str, frozenset[str]]:
        """Subject -> reachable subscribed nodes."""
        return self.engine.subjects()

    def peers(self) -> list[PeerInfo]:
        """The neighbour links and their state."""
        return [
            PeerInfo(
                peer=n.peer,
                phase=n.phase.value,
                cost=n.cost.cost,
                rtt_ms=None if n.cost.srtt_us is None else n.cost.srtt_us / 1000,
                frames_sent=n.frames_sent,
                frames_received=n.frames_received,
            )
            for n in sorted(self._neighbours.values(), key=lambda n: n.peer)
        ]

    def hello(self, now: float, cost: int = 0) -> peer_pb2.Frame:
        """The first frame this node sends on a new link."""
        return peer_pb2.Frame(
            hello=peer_pb2.Hello(
                node_id=self.node_id,
                mesh_id=self.config.mesh_id,
                engine=self.config.engine,
                protocol_version=PROTOCOL_VERSION,
                cost=cost,
                sent_ms=int(now * 1000),
            )
        )

    # --- inputs ------------------------------------------------------------------

    def link_up(self, peer: str, cost: int, now: float) -> list[Action]:
        """A transport to neighbour ``peer`` is open: say hello, await theirs.

        A new transport replaces a SUSPECT link's (the peer restarted, or dialled
        again). Calling it for a link that is up only changes its configured cost
        (as :meth:`set_cost`).
        """
        if peer == self.node_id:
            raise InvalidArgument("a node cannot link to itself")
        existing = self._neighbours.get(peer)
        if existing is not None and existing.phase is LinkPhase.SUSPECT:
            del self._neighbours[peer]  # its silent transport is gone
            existing = None
        if existing is not None:
            return self.set_cost(peer, cost, now)
        actions: list[Action] = []
        # A new incarnation of a link starts from what the last one learnt, or it
        # would die of the next stall the same way. The silence that killed it
        # counts only if the link is back at once (it stalled, the peer lived);
        # a peer that was frozen or crashed for longer must not teach the link
        # to notice its next death more slowly.
        longest_gap, death_silence, at = self._gaps.get(peer, (0.0, 0.0, now))
        if now - at <= _STALL_REDIAL_S:
            longest_gap = max(longest_gap, death_silence)
        longest_gap = _faded(longest_gap, now - at)
        self._neighbours[peer] = _Neighbour(
            peer=peer,
            phase=LinkPhase.AWAITING_HELLO,
            cost=LinkCost(cost, self.config.cost_policy),
            opened_at=now,
            last_heard=now,
            next_heartbeat=now + self.config.heartbeat_interval,
            silence_allowed=self._silence_allowed(longest_gap),
            longest_gap=longest_gap,
        )
        actions.append(self._send(peer, self.hello(now, cost)))
        return self._finish(actions, now)

    def set_cost(self, peer: str, cost: int, now: float) -> list[Action]:
        """Change the configured cost of the link to ``peer`` (whatever its phase)."""
        existing = self._neighbours.get(peer)
        actions: list[Action] = []
        if existing is not None:
            existing.cost.configured = cost
            if not self.config.cost_policy.rtt_derived:
                existing.cost.cost = cost
                if existing.phase is LinkPhase.UP:
                    actions += self._routing_out(self.engine.link_up(peer, cost, now))
        return self._finish(actions, now)

    def link_down(self, peer: str, now: float) -> list[Action]:
        """The transport to ``peer`` closed (or the driver gave up on it)."""
        neighbour = self._neighbours.pop(peer, None)
        actions: list[Action] = []
        if neighbour is not None and neighbour.phase is LinkPhase.UP:
            self.stats["links_down"] += 1
            actions += self._routing_out(self.engine.link_down(peer, now))
        return self._finish(actions, now)

    def keepalive(self, peer: str, now: float) -> None:
        """The driver knows ``peer`` is alive though no frame was read.

        A runtime that stops reading a link to push back on a busy neighbour
        calls this, so its own back-pressure is not mistaken for a dead peer.
        """
        neighbour = self._neighbours.get(peer)
        if neighbour is not None:
            neighbour.last_heard = max(neighbour.last_heard, now)

    def _heard(self, neighbour: _Neighbour, now: float) -> None:
        """A frame arrived: learn how bursty this link is, as a phi-accrual detector
        would. On a clean link frames come every heartbeat or sooner and the bound
        stays ``dead_interval``; on a lossy one TCP delivers in stalls, and a link
        declared dead on every stall loses whatever was in flight on it."""
        gap = now - neighbour.last_heard
        neighbour.last_heard = now
        if gap <= 0:
            return
        neighbour.longest_gap = max(gap, _faded(neighbour.longest_gap, gap))
        neighbour.silence_allowed = self._silence_allowed(neighbour.longest_gap)
        self._gaps[neighbour.peer] = (neighbour.longest_gap, 0.0, now)

    def _silence_allowed(self, longest_gap: float) -> float:
        config = self.config
        return min(
            max(config.dead_interval, 1.5 * longest_gap),
            config.dead_interval * config.dead_stretch,
        )

    def frame_received(self, peer: str, frame: peer_pb2.Frame, now: float) -> list[Action]:
        """Take one frame from neighbour ``peer``.

        Bad input never raises: it is answered with ``Rejected`` (and, when the
        link cannot go on, ``CloseLink``) and counted in ``stats``.
        """
        neighbour = self._neighbours.get(peer)
        if neighbour is None:
            self.stats["frames_without_link"] += 1
            return self._finish([], now)
        self._heard(neighbour, now)
        neighbour.frames_received += 1
        which = frame.WhichOneof("body")
        kind = _FRAME_KINDS.get(which or "")
        handler = None if kind is None else _LINK_TABLE.get((neighbour.phase, kind))
        if handler is None:
            error = ProtocolViolation(
                f"{which or 'empty'} frame from {peer!r} while the link is {neighbour.phase.value}"
            )
            return self._finish(self._close(peer, error, now), now)
        actions: list[Action] = getattr(self, handler)(neighbour, frame, now)
        return self._finish(actions, now)

    def submit(
        self,
        destination: str,
        body: EncodedBody,
        now: float,
        *,
        mode: envelope_pb2.DeliveryMode = envelope_pb2.DELIVERY_MODE_ASYNC,
        deadline_ms: int = 0,
        destination_kind: envelope_pb2.DestinationKind = envelope_pb2.DESTINATION_KIND_NODE,
        recipient: str | None = None,
        message_id: bytes | None = None,
        policy: Policy | str | None = None,
        trace: bool = False,
    ) -> tuple[bytes, list[Action]]:
        """Seal a message from a local application and send it on its way.

        With ``trace``, every hop appends ``node@unix_ms`` to the envelope's
        (unauthenticated, informational) trace and the destination keeps it
        for :meth:`trace_of`.

        Returns the message id and the actions. A SERVICE destination goes to
        one instance, chosen by the service's balancing policy, unless
        ``recipient`` names the node. ACKNOWLEDGED messages are persisted
        (``Persist``), retried with backoff until acked (``Acked``) or past
        their deadline (``Failed``); a missing route then only delays them.

        Raises:
            NoRoute: (async) the recipient is not reachable; (any) no instance
                of the service is known.
            UnknownRecipient: the recipient's identity is not known yet.
            InvalidArgument, BodyTooLarge: as :meth:`Sealer.seal`.
        """
        acknowledged = mode == envelope_pb2.DELIVERY_MODE_ACKNOWLEDGED
        target = recipient or self._resolve(
            destination, destination_kind, now, policy=_policy(policy)
        )
        if not acknowledged and target != self.node_id and not self.table.next_hops(target):
            self.stats["dropped_no_route"] += 1
            raise NoRoute(f"no route from {self.node_id!r} to {target!r}")
        message_id = message_id if message_id is not None else self._random_bytes(16)
        if acknowledged and not deadline_ms:
            deadline_ms = int(now * 1000) + self.config.delivery.default_timeout_ms
        pending = None
        if acknowledged:
            if len(self._pending) >= self.config.delivery.max_pending:
                raise TooManyPending(
                    f"{len(self._pending)} acknowledged messages await their ack; slow down"
                )
            pending = _Pending(
                message_id=message_id,
                request=False,
                destination=destination,
                destination_kind=destination_kind,
                body=body,
                deadline_ms=deadline_ms,
                started_at=now,
            )
        envelope = self._seal(
            message_id,
            destination,
            destination_kind,
            target,
            body=body,
            now=now,
            mode=mode,
            deadline_ms=deadline_ms,
        )
        if trace:
            envelope.trace.append(f"{self.node_id}@{int(now * 1000)}")
        actions: list[Action] = []
        if pending is not None:
            pending.recipient = target
            pending.envelope = envelope
            actions.append(self._persist(pending, now))
            if not self._hold_or_send(pending, now):
                return message_id, self._finish(actions, now)
        actions += self._send_envelope(envelope, target, now)
        return message_id, self._finish(actions, now)

    def _hold_or_send(self, pending: _Pending, now: float) -> bool:
        """Register a new acknowledged message; False when it is held for want of a
        route (no copy leaves, so its first transmission, once there is a route,
        is not counted as a retransmission)."""
        self._pending[pending.message_id] = pending
        # First sends, the denominator of "retries add at most x% load" (retransmits).
        self.stats["acknowledged_sent"] += 1
        self._arm(pending, now + self._backoff(0, pending.recipient))
        if not self._reachable(pending.recipient):
            self._held.add(pending.message_id)
            self._held_table = self.engine.table
            self.stats["held_no_route"] += 1
            return False
        pending.attempt_at = pending.first_sent = now
        return True

    def _route_held(self, now: float) -> None:
        """The routing table changed (tables are immutable, so identity says so):
        held messages whose recipient is reachable now go at once, not at their
        next backed-off timer."""
        self._held_table = self.engine.table
        for message_id in list(self._held):
            pending = self._pending.get(message_id)
            if pending is None:
                self._held.discard(message_id)
            elif self._reachable(pending.recipient):
                self._arm(pending, now)  # held until that timer sends it

    def _reachable(self, recipient: str) -> bool:
        return recipient == self.node_id or bool(self.table.next_hops(recipient))

    def request(
        self,
        destination: str,
        body: EncodedBody,
        now: float,
        *,
        timeout_ms: int | None = None,
        destination_kind: envelope_pb2.DestinationKind = envelope_pb2.DESTINATION_KIND_SERVICE,
        policy: Policy | str | None = None,
    ) -> tuple[bytes, list[Action]]:
        """Send a request; its answer comes back as ``Replied`` (or ``Failed``).

        ``policy`` balances this request (and its retries) without changing
        the service's policy for other callers.

        A request whose instance does not answer within the attempt timeout is
        retried on another instance while the retry budget allows, until its
        deadline. Requests are not persisted: their caller is waiting.

        Raises:
            NoRoute: no instance of the service (or no route to the node).
        """
        timeout = self.config.delivery.default_timeout_ms if timeout_ms is None else timeout_ms
        deadline_ms = int(now * 1000) + timeout
        chosen_policy = _policy(policy)
        target = self._resolve(destination, destination_kind, now, policy=chosen_policy)
        if target != self.node_id and not self.table.next_hops(target):
            raise NoRoute(f"no route from {self.node_id!r} to {target!r}")
        if len(self._pending) >= self.config.delivery.max_pending:
            raise TooManyPending(f"{len(self._pending)} requests are in flight; slow down")
        message_id = self._random_bytes(16)
        pending = _Pending(
            message_id=message_id,
            request=True,
            destination=destination,
            destination_kind=destination_kind,
            body=body,
            deadline_ms=deadline_ms,
            started_at=now,
            policy=chosen_policy,
        )
        self._budget.deposit()
        actions = self._attempt(pending, target, now)
        self._pending[message_id] = pending
        return message_id, self._finish(actions, now)

    def reply(
        self,
        request: EnvelopeHeader,
        body: EncodedBody,
        now: float,
        *,
        status: Status = Status.OK,
    ) -> list[Action]:
        """Answer a delivered request (its header) with ``body`` and ``status``.

        A non-OK reply carries the error text as its body.
        """
        to = request.reply_to or request.source
        try:
            envelope = self._seal_answer(
                request, envelope_pb2.ENVELOPE_KIND_REPLY, body, now, status=status
            )
        except MeshError as exc:
            return self._finish([self._reject("", exc, "reply")], now)
        self._replies[request.message_id] = envelope
        while len(self._replies) > self.config.delivery.reply_cache:
            self._replies.popitem(last=False)
        return self._finish(self._send_envelope(envelope, to, now), now)

    def publish(
        self,
        subject: str,
        body: EncodedBody,
        now: float,
        *,
        mode: envelope_pb2.DeliveryMode = envelope_pb2.DELIVERY_MODE_ASYNC,
        deadline_ms: int = 0,
    ) -> tuple[list[bytes], list[Action]]:
        """Send ``body`` to every subscriber of ``subject`` (one member per queue group).

        One copy per subscribed node, each sealed to that node; returns the
        copies' message ids (empty when nobody subscribes).
        """
        check_subject(subject)
        targets = self._subscribers(subject)
        ids: list[bytes] = []
        actions: list[Action] = []
        for node, groups in sorted(targets.items()):
            copy_id = self._random_bytes(16)
            ids.append(copy_id)
            try:
                _, out = self._submit_copy(
                    copy_id,
                    subject,
                    node,
                    groups=groups,
                    body=body,
                    now=now,
                    mode=mode,
                    deadline_ms=deadline_ms,
                )
            except NoRoute:
                self.stats["dropped_no_route"] += 1
                continue
            actions += out
        self.stats["published"] += 1
        return ids, self._finish(actions, now)

    def resume(self, entries: Iterable[tuple[bytes, Envelope, int]], now: float) -> list[Action]:
        """Take back the outbox after a restart: (message id, envelope, deadline_ms).

        Each is resent as sealed (same id, so the destination's dedupe window
        drops any copy it already delivered).
        """
        actions: list[Action] = []
        for message_id, envelope, deadline_ms in entries:
            try:
                header = read_header(envelope, self.config.limits)
            except MeshError as exc:
                actions.append(self._reject("", exc, "outbox"))
                actions.append(Forget(message_id=message_id))
                continue
            pending = _Pending(
                message_id=message_id,
                request=False,
                destination=header.destination,
                destination_kind=header.destination_kind,
                body=None,
                deadline_ms=deadline_ms,
                started_at=now,
            )
            pending.recipient = header.recipient
            pending.envelope = envelope
            self._pending[message_id] = pending
            self._arm(pending, now)
        self.stats["resumed"] += len(self._pending)
        return self._finish(actions, now)

    def remember_seen(
        self, seen: Iterable[tuple[bytes, int]], now: float, floor_ms: int = -1
    ) -> None:
        """Load the persisted dedupe window after a restart: (message id, created_ms)
        pairs, oldest first, and the floor the store kept (see DedupeWindow)."""
        self.dedupe.restore(list(seen), floor_ms)
        self.dedupe.expire(int(now * 1000))

    def set_policy(self, service: str, policy: Policy | str) -> None:
        """How requests and messages to ``service`` choose an instance."""
        self.balancer.set_policy(service, policy)

    def trace_of(self, message_id: bytes) -> list[str] | None:
        """The hops (``node@unix_ms``) of a traced message delivered here, if kept."""
        hops = self._traces.get(message_id)
        return None if hops is None else list(hops)

    @property
    def pending_count(self) -> int:
        """Acknowledged messages and requests awaiting their ack or reply."""
        return len(self._pending)

    def set_offers(
        self, services: Mapping[str, int], subjects: Iterable[str], now: float
    ) -> list[Action]:
        """Replace the services (name -> weight) and subjects this node advertises."""
        return self._finish(
            self._routing_out(self.engine.set_local_offers(services, subjects, now)), now
        )

    def tick(self, now: float) -> list[Action]:
        """Run what is due: heartbeats, dead-link detection, routing timers."""
        actions: list[Action] = []
        for neighbour in list(self._neighbours.values()):
            # Compare with the same sum next_wake() reports, or float rounding spins.
            if now >= self._dead_at(neighbour):
                if neighbour.phase is LinkPhase.SUSPECT:
                    actions += self._close_silent(neighbour, now)  # its hold is over
                    continue
                actions += self._declare_dead(neighbour, now)
                if neighbour.peer not in self._neighbours:
                    continue
            if now >= neighbour.next_heartbeat:
                actions.append(self._heartbeat(neighbour, now))
        actions += self._routing_out(self.engine.tick(now))
        actions += self._run_delivery_timers(now)
        self.dedupe.expire(int(now * 1000))
        return self._finish(actions, now)

    def _dead_at(self, neighbour: _Neighbour) -> float:
        """When the silence of ``neighbour`` makes it dead (withdrawn from routing), or,
        once it is, when its transport is closed."""
        dead_at = neighbour.last_heard + neighbour.silence_allowed
        return dead_at + self.config.dead_hold if neighbour.phase is LinkPhase.SUSPECT else dead_at

    def _declare_dead(self, neighbour: _Neighbour, now: float) -> list[Action]:
        """Silence past the allowance: route around the link at once; keep its transport
        ``dead_hold`` longer (SUSPECT), or close it if there is nothing to keep."""
        self.stats["links_dead"] += 1
        # The stall that killed it was never measured as a gap: remember it,
        # so a link that only stalled comes back tolerating one that long.
        silence = now - neighbour.last_heard
        self._gaps[neighbour.peer] = (neighbour.longest_gap, silence, now)
        if neighbour.phase is LinkPhase.UP and self.config.dead_hold > 0:
            neighbour.phase = LinkPhase.SUSPECT
            self.stats["links_down"] += 1
            return self._routing_out(self.engine.link_down(neighbour.peer, now))
        return self._close_silent(neighbour, now)

    def _close_silent(self, neighbour: _Neighbour, now: float) -> list[Action]:
        silence = now - neighbour.last_heard
        error = LinkRefused(f"no frame from {neighbour.peer!r} for {silence:.3f} s; declared dead")
        return self._close(neighbour.peer, error, now, status=Status.UNAVAILABLE)

    def link_phase(self, peer: str) -> LinkPhase | None:
        """Where the link to ``peer`` is in its life (None: no link)."""
        neighbour = self._neighbours.get(peer)
        return None if neighbour is None else neighbour.phase

    def next_wake(self) -> float | None:
        """The earliest time ``tick`` has work to do."""
        neighbours = self._neighbours.values()
        times = [n.next_heartbeat for n in neighbours]
        # _dead_at inlined (this runs after every frame, over every neighbour); the
        # same float sums, so tick() sees the very times reported here.
        hold, suspect = self.config.dead_hold, LinkPhase.SUSPECT
        times += [
            n.last_heard + n.silence_allowed + hold
            if n.phase is suspect
            else n.last_heard + n.silence_allowed
            for n in neighbours
        ]
        engine_wake = self.engine.next_wake()
        if engine_wake is not None:
            times.append(engine_wake)
        while self._timers and self._timers[0][2] not in self._pending:
            heapq.heappop(self._timers)  # answered since it was armed
        if self._timers:
            times.append(self._timers[0][0])
        return min(times) if times else None

    # --- link handlers -----------------------------------------------------------

    def _on_hello(self, neighbour: _Neighbour, frame: peer_pb2.Frame, now: float) -> list[Action]:
        hello = frame.hello
        peer = neighbour.peer
        problem = None
        if hello.node_id != peer:
            problem = f"expected node {peer!r}, the peer says it is {hello.node_id[:64]!r}"
        elif hello.mesh_id != self.config.mesh_id:
            problem = (
                f"node {peer!r} is in mesh {hello.mesh_id[:64]!r}, this node is in "
                f"{self.config.mesh_id!r}"
            )
        elif hello.engine != self.config.engine:
            theirs = ENGINE_NAMES.get(hello.engine, f"engine {hello.engine}")
            problem = (
                f"node {peer!r} runs {theirs} routing, this mesh runs "
                f"{ENGINE_NAMES[self.config.engine]}"
            )
        elif hello.protocol_version != PROTOCOL_VERSION:
            problem = (
                f"node {peer!r} speaks protocol {hello.protocol_version}, this node speaks "
                f"{PROTOCOL_VERSION}"
            )
        if problem is not None:
            self.stats["links_refused"] += 1
            return self._close(peer, LinkRefused(f"link refused: {problem}"), now)
        skew = _clock_offset_ms(hello.sent_ms, now)
        if abs(skew) > self.config.limits.max_clock_skew_ms:
            # Creation times, deadlines and the dedupe horizon all compare clocks
            # across nodes; past the bound they would silently expire or replay
            # messages, so the link is refused loudly instead (fix NTP, then redial).
            self.stats["links_refused_clock"] += 1
            return self._close(
                peer,
                ClockSkew(
                    f"link refused: node {peer!r}'s clock is {skew / 1000:+.1f} s from this "
                    f"node's, more than the {self.config.limits.max_clock_skew_ms / 1000:.0f} s "
                    "allowed; fix time synchronisation (NTP) on one of them"
                ),
                now,
            )
        self.stats["links_up"] += 1
        return self._bring_up(neighbour, now)

    def _bring_up(self, neighbour: _Neighbour, now: float) -> list[Action]:
        """Into routing: after the hello, or when a SUSPECT link is heard again (it
        missed the identities flooded meanwhile, so they all go again)."""
        neighbour.phase = LinkPhase.UP
        peer = neighbour.peer
        # Identities before adverts: a signed advert is checked against its origin's key.
        actions: list[Action] = [
            self._send(peer, peer_pb2.Frame(identity=record)) for record in self.directory
        ]
        actions += self._routing_out(self.engine.link_up(peer, neighbour.cost.cost, now))
        return actions

    def _on_revival(self, neighbour: _Neighbour, frame: peer_pb2.Frame, now: float) -> list[Action]:
        """A SUSPECT link is heard again: it only stalled. Back into routing, on the
        transport it never lost, then the frame is handled as on any link that is up."""
        self.stats["links_revived"] += 1
        self.stats["links_up"] += 1
        actions = self._bring_up(neighbour, now)
        kind = _FRAME_KINDS[frame.WhichOneof("body") or ""]
        handled: list[Action] = getattr(self, _LINK_TABLE[(LinkPhase.UP, kind)])(
            neighbour, frame, now
        )
        return actions + handled

    def _on_link_error(
        self, neighbour: _Neighbour, frame: peer_pb2.Frame, now: float
    ) -> list[Action]:
        self._neighbours.pop(neighbour.peer, None)
        actions: list[Action] = []
        if neighbour.phase is LinkPhase.UP:
            actions += self._routing_out(self.engine.link_down(neighbour.peer, now))
        status = Status.of(frame.error.status)
        actions.append(
            CloseLink(
                peer=neighbour.peer,
                status=status,
                reason=f"{neighbour.peer!r} closed the link: {frame.error.reason[:512]}",
            )
        )
        return actions

    def _on_heartbeat(
        self, neighbour: _Neighbour, frame: peer_pb2.Frame, now: float
    ) -> list[Action]:
        heartbeat = frame.heartbeat
        neighbour.last_peer_seq = heartbeat.sequence
        neighbour.last_peer_seq_at = now
        sent_at = neighbour.sent_heartbeats.pop(heartbeat.echo_sequence, None)
        actions: list[Action] = []
        if sent_at is not None:
            rtt_us = (now - sent_at) * 1e6 - heartbeat.echo_delay_us
            changed = neighbour.cost.sample(rtt_us, now)
            if changed and neighbour.phase is LinkPhase.UP:
                self.stats["cost_changes"] += 1
                actions += self._routing_out(
                    self.engine.link_up(neighbour.peer, neighbour.cost.cost, now)
                )
        return actions

    def _on_routing(self, neighbour: _Neighbour, frame: peer_pb2.Frame, now: float) -> list[Action]:
        try:
            out = self.engine.receive(neighbour.peer, frame, now)
        except StaleUpdate:
            # Normal when databases are exchanged after a link comes up: counted, not logged.
            self.stats["stale_routing_updates"] += 1
            return []
        except MeshError as exc:
            return [self._reject(neighbour.peer, exc, "routing")]
        return self._routing_out(out)

    def _on_identity(
        self, neighbour: _Neighbour, frame: peer_pb2.Frame, now: float
    ) -> list[Action]:
        record = frame.identity
        if record.node_id == self.node_id:
            return self._own_identity_seen(record, now)
        try:
            public = self.directory.offer(record)
        except StaleUpdate:
            self.stats["stale_identity_records"] += 1
            return []
        except MeshError as exc:
            return [self._reject(neighbour.peer, exc, "identity")]
        if public is None:
            return []
        self.keyring.add_peer(public)
        self.stats["identities_learned"] += 1
        return [
            self._send(other.peer, frame)
            for other in self._neighbours.values()
            if other.phase is LinkPhase.UP and other.peer != neighbour.peer
        ]

    def _own_identity_seen(self, record: peer_pb2.IdentityRecord, now: float) -> list[Action]:
        own = self.directory.get(self.node_id)
        assert own is not None
        if serial_compare(record.sequence, own.sequence) <= 0:
            return []
        # The mesh remembers a previous life of ours: jump past it and re-flood.
        # Sequences are uint32 serials (RFC 1982), so the successor of 2**32 - 1 is 0.
        successor = (record.sequence + 1) % 2**32
        fresh = make_identity_record(self._identity, successor, self._certificate)
        self.directory.replace_own(fresh)
        frame = peer_pb2.Frame(identity=fresh)
        return [
            self._send(n.peer, frame) for n in self._neighbours.values() if n.phase is LinkPhase.UP
        ]

    def _on_ack(self, neighbour: _Neighbour, frame: peer_pb2.Frame, now: float) -> list[Action]:
        ack = frame.ack
        if ack.status != Status.OK:
            self.stats["nacks_received"] += 1
            return [
                Rejected(
                    peer=neighbour.peer,
                    status=Status.of(ack.status),
                    reason=f"{neighbour.peer!r} refused envelopes we sent: {ack.detail[:512]}",
                )
            ]
        return []

    def _on_batch(self, neighbour: _Neighbour, frame: peer_pb2.Frame, now: float) -> list[Action]:
        envelopes = frame.batch.envelopes
        peer = neighbour.peer
        if len(envelopes) > self.config.max_batch:
            error = TooLarge(
                f"batch of {len(envelopes)} envelopes from {peer!r} is over the "
                f"{self.config.max_batch} limit"
            )
            return [self._reject(peer, error, "batch"), self._nack(peer, error)]
        actions: list[Action] = []
        outgoing: dict[str, list[Envelope]] = {}
        now_ms = int(now * 1000)
        for envelope in envelopes:
            try:
                verify(envelope, self.config.limits)
                header = read_header(envelope, self.config.limits)
            except MeshError as exc:
                actions += [self._reject(peer, exc, "envelope"), self._nack(peer, exc)]
                continue
            if header.recipient == self.node_id:
                actions += self._deliver_local(peer, envelope, now)
                continue
            if past_deadline(header, now_ms, self.config.limits):
                self.stats["dropped_expired"] += 1
                continue
            if envelope.ttl <= 1:
                self.stats["dropped_ttl"] += 1
                continue
            hop = self._next_hop(header.recipient, avoid=peer)
            if hop is None:
                self.stats["dropped_no_route"] += 1
                continue
            if hop == peer:
                # The only way on is back where it came from: a routing loop (a
                # transient one while tables converge, or one a peer forces).
                # Bouncing it would only burn ttl and link capacity; the source
                # of an acknowledged message retransmits it anyway.
                self.stats["dropped_loop"] += 1
                continue
            envelope.ttl -= 1
            if (self.config.trace or envelope.trace) and len(envelope.trace) <= _MAX_TRACE:
                envelope.trace.append(f"{self.node_id}@{now_ms}")
            self.stats["forwarded"] += 1
            outgoing.setdefault(hop, []).append(envelope)
        actions += [self._batch(hop, batch) for hop, batch in outgoing.items()]
        return actions

    # --- helpers -------------------------------------------------------------------

    def _deliver_local(self, peer: str, envelope: Envelope, now: float) -> list[Action]:
        now_ms = int(now * 1000)
        try:
            opened = self.opener.open(envelope, now_ms=now_ms)
        except MeshError as exc:
            return self._refuse_delivery(peer, exc)
        header = opened.header
        kind = header.kind
        if envelope.trace:
            hops = [*envelope.trace[:_MAX_TRACE], f"{self.node_id}@{now_ms}"]
            self._traces[header.message_id] = hops
            while len(self._traces) > self.config.delivery.traces_kept:
                self._traces.popitem(last=False)
        if kind == envelope_pb2.ENVELOPE_KIND_ACK:
            return self._on_end_to_end_ack(header, now)
        if kind == envelope_pb2.ENVELOPE_KIND_REPLY:
            return self._on_reply(opened, now)
        acknowledged = header.mode == envelope_pb2.DELIVERY_MODE_ACKNOWLEDGED
        if (
            self.applications_full
            and acknowledged
            and kind == envelope_pb2.ENVELOPE_KIND_DATA
            and header.message_id not in self.dedupe  # a duplicate is only acked again
        ):
            # Acking it would promise what a full queue cannot keep. Not acked (and
            # counted, neither logged nor nacked: it is back-pressure, not an
            # error), the source retries after its backed-off RTO, by when the
            # applications have caught up.
            self.stats["deliveries_refused_busy"] += 1
            return []
        needs_dedupe = acknowledged or kind == envelope_pb2.ENVELOPE_KIND_REQUEST
        actions: list[Action] = []
        if needs_dedupe:
            try:
                self.dedupe.accept(header.message_id, header.created_ms, now_ms)
            except Replayed:
                self.stats["duplicates"] += 1
                if kind == envelope_pb2.ENVELOPE_KIND_REQUEST:
                    cached = self._replies.get(header.message_id)
                    if cached is not None:
                        return self._send_envelope(cached, header.reply_to or header.source, now)
                    return []
                return self._ack(header, envelope.attempt, now)  # the first ack may be lost
            except MeshError as exc:
                return self._refuse_delivery(peer, exc)
            actions.append(Remember(message_id=header.message_id, created_ms=header.created_ms))
        self.stats["delivered"] += 1
        actions.append(Deliver(message=opened))
        if (
            header.mode == envelope_pb2.DELIVERY_MODE_ACKNOWLEDGED
            and kind == envelope_pb2.ENVELOPE_KIND_DATA
        ):
            actions += self._ack(header, envelope.attempt, now)
        return actions

    def _refuse_delivery(self, peer: str, error: MeshError) -> list[Action]:
        """Refuse an envelope sealed to this node (tampered, spoofed, expired, replayed
        too late). The neighbour that handed it over hears why in a LinkAck, as for
        an envelope a hop refuses; a local one (``peer`` empty) only counts."""
        actions: list[Action] = [self._reject(peer, error, "delivery")]
        if peer:
            actions.append(self._nack(peer, error))
        return actions

    def _ack(self, header: EnvelopeHeader, attempt: int, now: float) -> list[Action]:
        """Ack ``header``'s message, echoing which copy (``attempt``) arrived."""
        try:
            envelope = self._seal_answer(
                header, envelope_pb2.ENVELOPE_KIND_ACK, _EMPTY_BODY, now, acked_attempt=attempt
            )
        except MeshError as exc:
            return [self._reject("", exc, "ack")]
        self.stats["acks_sent"] += 1
        return self._send_envelope(envelope, header.reply_to or header.source, now)

    def _seal_answer(
        self,
        question: EnvelopeHeader,
        kind: envelope_pb2.EnvelopeKind,
        body: EncodedBody,
        now: float,
        *,
        status: Status = Status.OK,
        acked_attempt: int = 0,
    ) -> Envelope:
        """An ACK or REPLY to ``question``, sealed to whoever asked (reply_to or source)."""
        to = question.reply_to or question.source
        header = Header(
            message_id=self._random_bytes(16),
            source=self.node_id,
            destination_kind=envelope_pb2.DESTINATION_KIND_NODE,
            destination=to,
            recipient=to,
            mode=envelope_pb2.DELIVERY_MODE_ASYNC,
            kind=kind,
            created_ms=int(now * 1000),
            deadline_ms=question.deadline_ms if kind == envelope_pb2.ENVELOPE_KIND_REPLY else 0,
            correlation_id=question.message_id,
            status=int(status),
            acked_attempt=acked_attempt,
        )
        return self.sealer.seal(header, body, ttl=self.config.default_ttl)

    def _on_end_to_end_ack(self, header: EnvelopeHeader, now: float) -> list[Action]:
        pending = self._pending.get(header.correlation_id)
        if pending is None or pending.request or pending.recipient != header.source:
            self.stats["acks_unmatched"] += 1
            return []
        del self._pending[header.correlation_id]
        self.stats["acked"] += 1
        # The ack says which copy arrived: the latest, the first, or (unknown) another.
        copy = header.acked_attempt
        sent_at: float | None = None
        if copy == pending.attempts and pending.attempt_at:
            sent_at = pending.attempt_at
        elif copy == 0 and pending.first_sent is not None:
            sent_at = pending.first_sent
        if pending.attempts and copy < pending.attempts:
            self.stats["retransmits_spurious"] += 1  # an earlier copy made it after all
        actions: list[Action] = [
            Forget(message_id=pending.message_id),
            Acked(message_id=pending.message_id, latency_s=now - pending.started_at),
        ]
        if pending.destination_kind == envelope_pb2.DESTINATION_KIND_SERVICE:
            self.balancer.finished(
                pending.destination, header.source, now, now - pending.attempt_at, ok=True
            )
        probe_sent_at = self.recovery.acked(
            header.source,
            pending.message_id,
            sent_at,
            now,
            retransmission=copy > 0 and copy == pending.attempts,
        )
        if probe_sent_at is not None:
            self._release(header.source, probe_sent_at, now)
        return actions

    def _release(self, recipient: str, before: float, now: float) -> None:
        """The probe of a silent path to ``recipient`` arrived as a retransmission, so
        the path delivers again and what was sent to it before the probe was lost:
        resend all of it now (paced), instead of one probe per RTO."""
        released = 0
        for pending in self._pending.values():
            if (
                not pending.request
                and pending.message_id not in self._held
                and pending.recipient == recipient
                and pending.attempt_at < before
                and not pending.presumed_lost
            ):
                pending.presumed_lost = True
                self._arm(pending, now)
                released += 1
        self.stats["retransmits_released"] += released

    def _on_reply(self, opened: OpenedMessage, now: float) -> list[Action]:
        header = opened.header
        pending = self._pending.get(header.correlation_id)
        if pending is None or not pending.request:
            self.stats["replies_unmatched"] += 1
            return []
        del self._pending[header.correlation_id]
        self.stats["replied"] += 1
        if pending.destination_kind == envelope_pb2.DESTINATION_KIND_SERVICE:
            healthy = Status.of(header.status) not in _INSTANCE_FAILURES
            self.balancer.finished(
                pending.destination, header.source, now, now - pending.attempt_at, ok=healthy
            )
        return [
            Replied(message_id=pending.message_id, reply=opened, latency_s=now - pending.started_at)
        ]

    def _resolve(
        self,
        destination: str,
        kind: envelope_pb2.DestinationKind,
        now: float,
        exclude: frozenset[str] = frozenset(),
        policy: Policy | None = None,
    ) -> str:
        """The node a message for ``destination`` is sealed to."""
        if kind != envelope_pb2.DESTINATION_KIND_SERVICE:
            return destination
        instances = [
            i
            for i in self.services().get(destination, ())
            if i.node == self.node_id or self.table.next_hops(i.node)
        ]
        costs = {i.node: self.table.cost(i.node) or 0 for i in instances}
        node = self.balancer.choose(
            destination, instances, now, costs=costs, exclude=exclude, policy=policy
        )
        if node is None:
            if exclude and instances:  # every instance was tried: try them again
                node = self.balancer.choose(destination, instances, now, costs=costs, policy=policy)
            if node is None:
                raise NoRoute(f"no reachable instance of service {destination!r}")
        return node

    def _subscribers(self, subject: str) -> dict[str, list[str]]:
        """Node -> queue groups it is chosen for, for one message on ``subject``."""
        targets: dict[str, list[str]] = {}
        groups: dict[str, set[str]] = {}
        for advertised, nodes in self.subjects().items():
            pattern, queue = parse_offer(advertised)
            if not matches(pattern, subject):
                continue
            if queue is None:
                for node in nodes:
                    targets.setdefault(node, [])
            else:
                groups.setdefault(advertised, set()).update(nodes)
        for advertised, group in sorted(groups.items()):
            members = [ServiceInstance(node=n, weight=1) for n in group]
            chosen = self.balancer.choose(f"queue:{advertised}", members, 0.0)
            if chosen is not None:
                targets.setdefault(chosen, []).append(advertised)
        return targets

    def _submit_copy(
        self,
        message_id: bytes,
        subject: str,
        node: str,
        *,
        groups: list[str],
        body: EncodedBody,
        now: float,
        mode: envelope_pb2.DeliveryMode,
        deadline_ms: int,
    ) -> tuple[bytes, list[Action]]:
        acknowledged = mode == envelope_pb2.DELIVERY_MODE_ACKNOWLEDGED
        if not acknowledged and node != self.node_id and not self.table.next_hops(node):
            raise NoRoute(f"no route to subscriber {node!r}")
        if acknowledged and not deadline_ms:
            deadline_ms = int(now * 1000) + self.config.delivery.default_timeout_ms
        envelope = self._seal(
            message_id,
            subject,
            envelope_pb2.DESTINATION_KIND_SUBJECT,
            node,
            body=body,
            now=now,
            mode=mode,
            deadline_ms=deadline_ms,
            queue_groups=tuple(groups),
        )
        actions: list[Action] = []
        if acknowledged:
            pending = _Pending(
                message_id=message_id,
                request=False,
                destination=subject,
                destination_kind=envelope_pb2.DESTINATION_KIND_SUBJECT,
                body=None,  # a copy is resent as sealed, never re-targeted
                deadline_ms=deadline_ms,
                started_at=now,
            )
            pending.recipient = node
            pending.envelope = envelope
            actions.append(self._persist(pending, now))
            if not self._hold_or_send(pending, now):
                return message_id, actions
        return message_id, actions + self._send_envelope(envelope, node, now)

    def _seal(
        self,
        message_id: bytes,
        destination: str,
        destination_kind: envelope_pb2.DestinationKind,
        recipient: str,
        *,
        body: EncodedBody,
        now: float,
        mode: envelope_pb2.DeliveryMode,
        deadline_ms: int,
        kind: envelope_pb2.EnvelopeKind = envelope_pb2.ENVELOPE_KIND_DATA,
        queue_groups: tuple[str, ...] = (),
    ) -> Envelope:
        header = Header(
            message_id=message_id,
            source=self.node_id,
            destination_kind=destination_kind,
            destination=destination,
            recipient=recipient,
            mode=mode,
            kind=kind,
            created_ms=int(now * 1000),
            deadline_ms=deadline_ms,
            queue_groups=queue_groups,
        )
        envelope = self.sealer.seal(header, body, ttl=self.config.default_ttl)
        self.stats["sealed"] += 1
        return envelope

    def _send_envelope(self, envelope: Envelope, recipient: str, now: float) -> list[Action]:
        """Deliver locally or hand to the next hop; no route drops (and counts)."""
        if recipient == self.node_id:
            return self._deliver_local("", envelope, now)
        hop = self._next_hop(recipient)
        if hop is None:
            self.stats["dropped_no_route"] += 1
            return []
        return [self._batch(hop, [envelope])]

    def _attempt(self, pending: _Pending, target: str, now: float) -> list[Action]:
        """Seal and send one attempt of a request to ``target``."""
        assert pending.body is not None
        envelope = self._seal(
            pending.message_id,
            pending.destination,
            pending.destination_kind,
            target,
            body=pending.body,
            now=now,
            mode=envelope_pb2.DELIVERY_MODE_ACKNOWLEDGED,
            deadline_ms=pending.deadline_ms,
            kind=envelope_pb2.ENVELOPE_KIND_REQUEST,
        )
        pending.recipient = target
        pending.envelope = envelope
        pending.attempts += 1
        pending.attempt_at = now
        pending.tried.add(target)
        if pending.destination_kind == envelope_pb2.DESTINATION_KIND_SERVICE:
            self.balancer.started(pending.destination, target)
        attempt_end = now + self.config.delivery.request_attempt_s
        self._arm(pending, min(attempt_end, pending.deadline_ms / 1000))
        return self._send_envelope(envelope, target, now)

    def _persist(self, pending: _Pending, now: float) -> Persist:
        assert pending.envelope is not None
        return Persist(
            message_id=pending.message_id,
            recipient=pending.recipient,
            envelope=pending.envelope,
            created_ms=int(pending.started_at * 1000),
            deadline_ms=pending.deadline_ms,
        )

    def _backoff(self, attempt: int, recipient: str = "") -> float:
        """Retry delay after ``attempt`` tries: the recipient's measured RTO doubled
        per attempt of this message, or its backed-off RTO if that is longer (the
        two count the same timeouts: taking their product would quadruple), capped,
        plus up to 25% jitter (never less: firing early is a spurious retransmit)."""
        delivery = self.config.delivery
        own = self.recovery.measured_rto(recipient) * 2.0 ** min(attempt, 30)
        base = min(delivery.retry_max_s, max(own, self.recovery.rto(recipient)))
        return base * (1.0 + 0.25 * self._rng.random())

    def _retransmit_token(self, recipient: str, now: float) -> bool:
        rate = self.config.delivery.retransmit_rate
        burst = self.config.delivery.retransmit_burst
        tokens, last = self._retransmit_bucket.get(recipient, (float(burst), now))
        tokens = min(float(burst), tokens + (now - last) * rate)
        if tokens < 1:
            self._retransmit_bucket[recipient] = (tokens, now)
            return False
        self._retransmit_bucket[recipient] = (tokens - 1, now)
        return True

    def _pace_delay(self) -> float:
        rate = self.config.delivery.retransmit_rate
        return (self.config.delivery.retransmit_burst / rate) * (0.5 + self._rng.random())

    def _arm(self, pending: _Pending, at: float) -> None:
        # Never later than the deadline, so Failed is reported on time.
        at = min(at, pending.deadline_ms / 1000)
        pending.next_at = at
        heapq.heappush(self._timers, (at, next(self._timer_seq), pending.message_id))

    def _run_delivery_timers(self, now: float) -> list[Action]:
        actions: list[Action] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            at, _, message_id = heapq.heappop(timers)
            pending = self._pending.get(message_id)
            if pending is None or pending.next_at != at:
                continue  # answered, or re-armed since
            # The same float expression _arm uses: a timer armed at the deadline fails.
            if now >= pending.deadline_ms / 1000:
                actions += self._give_up(pending, now, Status.DEADLINE_EXCEEDED)
            elif pending.request:
                actions += self._retry_request(pending, now)
            else:
                actions += self._retry_send(pending, now)
        return actions

    def _give_up(self, pending: _Pending, now: float, status: Status) -> list[Action]:
        del self._pending[pending.message_id]
        self._held.discard(pending.message_id)
        self.recovery.forget(pending.recipient, pending.message_id)
        self.stats["failed_deadline" if status == Status.DEADLINE_EXCEEDED else "failed"] += 1
        if pending.request and pending.destination_kind == envelope_pb2.DESTINATION_KIND_SERVICE:
            self.balancer.finished(
                pending.destination, pending.recipient, now, now - pending.attempt_at, ok=False
            )
        what = "reply" if pending.request else "ack"
        reason = (
            f"no {what} from {pending.recipient!r} for message {pending.message_id.hex()} "
            f"to {pending.destination!r} before its deadline ({pending.attempts} attempts)"
        )
        actions: list[Action] = [
            Failed(message_id=pending.message_id, status=status, reason=reason)
        ]
        if not pending.request:
            actions.append(Forget(message_id=pending.message_id))
        return actions

    def _retry_request(self, pending: _Pending, now: float) -> list[Action]:
        """The attempt timed out: eject that instance, retry elsewhere within budget."""
        if pending.destination_kind == envelope_pb2.DESTINATION_KIND_SERVICE:
            self.balancer.finished(
                pending.destination, pending.recipient, now, now - pending.attempt_at, ok=False
            )
        if not self._budget.withdraw():
            self.stats["retries_over_budget"] += 1
            self._arm(pending, pending.deadline_ms / 1000)
            return []
        try:
            target = self._resolve(
                pending.destination,
                pending.destination_kind,
                now,
                frozenset(pending.tried),
                policy=pending.policy,
            )
        except NoRoute:
            self._arm(pending, pending.deadline_ms / 1000)
            return []
        self.stats["retries"] += 1
        return self._attempt(pending, target, now)

    def _retry_send(self, pending: _Pending, now: float) -> list[Action]:
        """No ack yet: resend if the copy was lost (see :mod:`mesh.recovery`), re-target
        a service message whose instance is gone, or wait.

        A message with no route waits one RTO without counting an attempt. Resends
        are paced per recipient (a token bucket), so a backlog released at once,
        after a partition heals, cannot flood the path with copies faster than
        acks can come back.
        """
        recipient = pending.recipient
        reachable = self._reachable(recipient)
        held = pending.message_id in self._held
        retarget = (
            not reachable
            and pending.destination_kind == envelope_pb2.DESTINATION_KIND_SERVICE
            and pending.body is not None
        )
        if not reachable and not retarget:
            self._arm(pending, now + self._backoff(0, recipient))
            return []
        verdict = Verdict.RESEND
        if reachable and not held and not pending.presumed_lost:
            verdict = self.recovery.judge(recipient, pending.message_id, pending.attempt_at, now)
        if verdict in (Verdict.WAIT, Verdict.DEFER):
            self.stats[f"retransmits_{'waited' if verdict == Verdict.WAIT else 'deferred'}"] += 1
            self._arm(pending, now + self.recovery.rto(recipient))
            return []
        if reachable and not self._retransmit_token(recipient, now):  # a held backlog too
            self.stats["retransmits_paced"] += 1
            self._arm(pending, now + self._pace_delay())
            return []
        if held and reachable:  # a route at last: its first copy, not a retransmission
            self._held.discard(pending.message_id)
            pending.first_sent = now
            self.stats["sent_after_hold"] += 1
            return self._transmit(pending, recipient, now)
        actions: list[Action] = []
        if verdict == Verdict.PROBE:
            self.recovery.probing(recipient, pending.message_id, now)
        elif retarget:
            self.recovery.timed_out(recipient, now)
            try:
                recipient = self._resolve(pending.destination, pending.destination_kind, now)
            except NoRoute:
                self._arm(pending, now + self._backoff(0, pending.recipient))
                return []
            assert pending.body is not None
            pending.recipient = recipient
            pending.envelope = self._seal(
                pending.message_id,
                pending.destination,
                pending.destination_kind,
                recipient,
                body=pending.body,
                now=now,
                mode=envelope_pb2.DELIVERY_MODE_ACKNOWLEDGED,
                deadline_ms=pending.deadline_ms,
            )
            actions.append(self._persist(pending, now))
            self._held.discard(pending.message_id)
        pending.attempts += 1
        self.stats["retransmits"] += 1
        return actions + self._transmit(pending, recipient, now)

    def _transmit(self, pending: _Pending, recipient: str, now: float) -> list[Action]:
        """Send a copy of ``pending``'s sealed envelope numbered with its attempt (so the
        ack says which copy arrived), and arm its next timer."""
        pending.attempt_at = now
        pending.presumed_lost = False
        self._arm(pending, now + self._backoff(pending.attempts, recipient))
        assert pending.envelope is not None
        copy = Envelope()
        copy.CopyFrom(pending.envelope)  # forwarders decrement ttl on their copy
        copy.attempt = min(pending.attempts, _MAX_ATTEMPT)
        return self._send_envelope(copy, recipient, now)

    def _next_hop(self, destination: str, avoid: str | None = None) -> str | None:
        """A next hop to ``destination``; equal-cost next hops are used in turn.

        ``avoid`` (the neighbour an envelope came from) is chosen only when it is
        the sole next hop, so the caller can tell a loop from a detour.
        """
        hops = self.table.next_hops(destination)
        if not hops:
            return None
        if avoid is not None and avoid in hops and len(hops) > 1:
            hops = frozenset(hops) - {avoid}
        if len(hops) == 1:
            return next(iter(hops))
        turn = self._ecmp_turn.get(destination, 0)
        self._ecmp_turn[destination] = turn + 1
        return sorted(hops)[turn % len(hops)]

    def _heartbeat(self, neighbour: _Neighbour, now: float) -> SendFrame:
        neighbour.heartbeat_seq += 1
        seq = neighbour.heartbeat_seq
        neighbour.sent_heartbeats[seq] = now
        if len(neighbour.sent_heartbeats) > _SENT_HEARTBEATS_KEPT:
            del neighbour.sent_heartbeats[min(neighbour.sent_heartbeats)]
        neighbour.next_heartbeat = now + self.config.heartbeat_interval
        delay_us = 0
        if neighbour.last_peer_seq:
            delay_us = max(0, min(2**32 - 1, int((now - neighbour.last_peer_seq_at) * 1e6)))
        return self._send(
            neighbour.peer,
            peer_pb2.Frame(
                heartbeat=peer_pb2.Heartbeat(
                    sequence=seq,
                    sent_ms=int(now * 1000),
                    echo_sequence=neighbour.last_peer_seq,
                    echo_delay_us=delay_us,
                )
            ),
        )

    def _send(self, peer: str, frame: peer_pb2.Frame) -> SendFrame:
        neighbour = self._neighbours.get(peer)
        if neighbour is not None:
            neighbour.frames_sent += 1
        return SendFrame(peer=peer, frame=frame)

    def _batch(self, peer: str, envelopes: list[Envelope]) -> SendFrame:
        return self._send(peer, peer_pb2.Frame(batch=peer_pb2.EnvelopeBatch(envelopes=envelopes)))

    def _routing_out(self, out: list[Outgoing]) -> list[Action]:
        actions: list[Action] = []
        for item in out:
            neighbour = self._neighbours.get(item.peer)
            if neighbour is None or neighbour.phase is not LinkPhase.UP:
                continue
            self.stats["control_frames_sent"] += 1
            actions.append(self._send(item.peer, item.frame))
        return actions

    def _reject(self, peer: str, error: MeshError, what: str) -> Rejected:
        self.stats[f"rejected_{what}_{error.status.name.lower()}"] += 1
        return Rejected(peer=peer, status=error.status, reason=str(error))

    def _nack(self, peer: str, error: MeshError) -> SendFrame:
        return self._send(
            peer,
            peer_pb2.Frame(ack=peer_pb2.LinkAck(status=error.status, detail=str(error)[:512])),
        )

    def _close(
        self, peer: str, error: MeshError, now: float, *, status: Status | None = None
    ) -> list[Action]:
        neighbour = self._neighbours.pop(peer, None)
        code = error.status if status is None else status
        actions: list[Action] = [
            SendFrame(
                peer=peer,
                frame=peer_pb2.Frame(error=peer_pb2.LinkError(status=code, reason=str(error))),
            ),
            CloseLink(peer=peer, status=code, reason=str(error)),
        ]
        if neighbour is not None and neighbour.phase is LinkPhase.UP:
            self.stats["links_down"] += 1
            actions += self._routing_out(self.engine.link_down(peer, now))
        return actions

    def _finish(self, actions: list[Action], now: float) -> list[Action]:
        if self._held and self.engine.table is not self._held_table:
            self._route_held(now)
        wake = self.next_wake()
        if wake is not None:
            actions.append(Wake(at=max(wake, now)))
        return actions


def _faded(gap: float, elapsed: float) -> float:
    """A remembered gap after ``elapsed`` seconds of its 30 s half-life."""
    return gap * math.pow(0.5, max(0.0, elapsed) / _GAP_HALF_LIFE_S)


def _clock_offset_ms(sent_ms: int, now: float) -> int:
    """How far a peer's clock is ahead of ours (negative: behind); 0 when it sent no time.

    Network delay makes this an overestimate by at most one one-way trip, far
    below any skew bound worth setting.
    """
    return sent_ms - int(now * 1000) if sent_ms else 0


def _policy(policy: Policy | str | None) -> Policy | None:
    """A policy from its name; InvalidArgument for an unknown one."""
    if policy is None or isinstance(policy, Policy):
        return policy
    try:
        return Policy(policy)
    except ValueError:
        names = ", ".join(p.value for p in Policy)
        raise InvalidArgument(f"unknown balancing policy {policy!r}; one of {names}") from None


__all__ = [
    "ENGINE_NAMES",
    "PROTOCOL_VERSION",
    "CoreConfig",
    "DeliveryConfig",
    "LinkPhase",
    "NodeCore",
    "PeerInfo",
]
