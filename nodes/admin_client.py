"""Talking to a running node as an operator: the `mesh` CLI's and the launcher's client.

Two halves:

- **where** a node is: :class:`MeshState` is the ``mesh.json`` the launcher
  writes into a mesh's state dir (addresses, pids, logs, the CLI's client
  certificate); :func:`resolve` turns ``--node NAME`` (through the state dir:
  ``--state DIR``, ``--mesh ID`` or the only mesh under ``.mesh/``) or
  ``--address HOST:PORT`` (with ``--insecure`` or ``--ca/--cert/--key``) into
  a :class:`Target`;
- **what** to ask: :class:`AdminClient` holds one gRPC channel to one node
  and offers small typed helpers over AdminService, ClientService and health
  (``routes()``, ``peers()``, ``topology()``, ``stats()``, ``send()``,
  ``receive()``, ...). Every RPC has a deadline, and every failure is an
  :class:`AdminError` whose message is one line: the node, the status name
  and the details, never a traceback.

Over mTLS the channel presents the CLI's client certificate and expects the
node's certificate to name the node id (``grpc.ssl_target_name_override``),
not the host it listens on (see nodes/pki.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.v1 import admin_pb2, admin_pb2_grpc, client_pb2, client_pb2_grpc, envelope_pb2
from nodes import pki

STATE_ROOT = Path(".mesh")
"""Where ``mesh up`` keeps one state dir per mesh (``.mesh/<mesh id>/``)."""
STATE_FILE = "mesh.json"
RPC_TIMEOUT = 5.0
"""Seconds any one unary RPC may take."""
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

ENGINE_NAMES: Mapping[int, str] = {
    1: "link-state",
    2: "distance-vector",
}
CONTENT_TYPE_NAMES: Mapping[int, str] = {
    envelope_pb2.CONTENT_TYPE_UNSPECIFIED: "unspecified",
    envelope_pb2.CONTENT_TYPE_RAW: "raw",
    envelope_pb2.CONTENT_TYPE_JSON: "json",
    envelope_pb2.CONTENT_TYPE_PROTOBUF: "protobuf",
}


class AdminError(Exception):
    """A node could not be found or reached, or refused a call; the message is one line.

    ``code`` is the gRPC status of a refused call (None when no call was made).
    """

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


# --- the state file --------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class NodeEntry:
    """One node of a launched mesh, as ``mesh.json`` records it."""

    address: str
    """``host:port`` the node serves gRPC on."""
    config: str
    """Path of the node's config file."""
    log: str
    """Path of the node's log (stdout and stderr)."""
    pid: int | None = None
    """Process id while the launcher believes it runs; None once stopped."""


@dataclass(slots=True, kw_only=True)
class ClientTls:
    """The CLI's client certificate (PEM paths)."""

    ca: str
    cert: str
    key: str


@dataclass(slots=True, kw_only=True)
class MeshState:
    """What ``mesh up`` writes to ``<state>/mesh.json`` and every other command reads."""

    mesh: str
    routing: str
    state_dir: str
    insecure: bool
    topology: str
    """The topology file the mesh was launched from."""
    nodes: dict[str, NodeEntry] = field(default_factory=dict)
    cli: ClientTls | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: Path) -> MeshState:
        """Parse ``mesh.json``.

        Raises:
            AdminError: the text is not a state file this version wrote.
        """
        try:
            data = json.loads(text)
            nodes = {name: NodeEntry(**entry) for name, entry in data.pop("nodes").items()}
            cli_data = data.pop("cli", None)
            cli = ClientTls(**cli_data) if cli_data is not None else None
            return cls(nodes=nodes, cli=cli, **data)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise AdminError(f"{source} is not a mesh state file: {exc}") from None

    def save(self, state_dir: Path) -> None:
        """Write ``mesh.json`` atomically (a reader never sees half a file)."""
        path = state_dir / STATE_FILE
        partial = path.with_name(f".{STATE_FILE}.partial")
        partial.write_text(self.to_json(), encoding="utf-8")
        partial.replace(path)


def read_state(state_dir: Path) -> MeshState:
    """The state of the mesh launched into ``state_dir``.

    Raises:
        AdminError: there is no readable ``mesh.json`` there.
    """
    path = state_dir / STATE_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AdminError(f"no mesh in {state_dir}: {path} does not exist (see `mesh up`)") from None
    except OSError as exc:
        raise AdminError(f"cannot read {path}: {exc.strerror}") from None
    return MeshState.from_json(text, path)


def find_state_dir(state: Path | None = None, mesh: str | None = None) -> Path:
    """The state dir a command means: ``--state``, else ``.mesh/<--mesh>``, else the only one.

    Raises:
        AdminError: no mesh, or several under ``.mesh/`` and none chosen.
    """
    if state is not None:
        return state
    if mesh is not None:
        return STATE_ROOT / mesh
    found = sorted(p.parent for p in STATE_ROOT.glob(f"*/{STATE_FILE}"))
    if not found:
        raise AdminError(f"no mesh under {STATE_ROOT}/: start one with `mesh up TOPOLOGY`")
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise AdminError(f"several meshes under {STATE_ROOT}/ ({names}): choose with --mesh ID")
    return found[0]


# --- where a node is -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsPaths:
    """CA, certificate and key (PEM) a client presents over mTLS."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """How to reach one node."""

    address: str
    node_id: str | None = None
    """The node's id: its certificate's name, and how messages name it."""
    tls: TlsPaths | None = None
    """None: plaintext (an insecure mesh)."""


def target_for(state: MeshState, node: str) -> Target:
    """The target of node ``node`` of a launched mesh.

    Raises:
        AdminError: the mesh has no such node.
    """
    entry = state.nodes.get(node)
    if entry is None:
        known = ", ".join(sorted(state.nodes))
        raise AdminError(f"mesh {state.mesh!r} has no node {node!r} (nodes: {known})")
    tls = None
    if not state.insecure:
        if state.cli is None:
            raise AdminError(f"mesh {state.mesh!r} runs mTLS but its state has no CLI certificate")
        tls = TlsPaths(ca=Path(state.cli.ca), cert=Path(state.cli.cert), key=Path(state.cli.key))
    return Target(address=entry.address, node_id=node, tls=tls)


def resolve(
    *,
    node: str | None = None,
    address: str | None = None,
    state: Path | None = None,
    mesh: str | None = None,
    insecure: bool = False,
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
) -> Target:
    """Turn the CLI's node-finding options into a target.

    With ``--address``, ``--node`` (if given) names the node for the TLS check;
    TLS files come from ``--ca/--cert/--key``, or from the state dir when one
    is given, and ``--insecure`` dials in plaintext.

    Raises:
        AdminError: the options do not name exactly one reachable node.
    """
    given_files = [p for p in (ca, cert, key) if p is not None]
    if given_files and len(given_files) != 3:
        raise AdminError("give all three of --ca, --cert and --key, or none")
    if address is None:
        if node is None:
            raise AdminError("say which node: --node NAME (or --address HOST:PORT)")
        mesh_state = read_state(find_state_dir(state, mesh))
        return target_for(mesh_state, node)
    if insecure:
        return Target(address=address, node_id=node)
    if ca is not None and cert is not None and key is not None:
        if node is None:
            raise AdminError("with --address over mTLS, name the node too: --node NAME")
        return Target(address=address, node_id=node, tls=TlsPaths(ca=ca, cert=cert, key=key))
    if state is None and mesh is None:
        raise AdminError("with --address, give --insecure or --ca/--cert/--key (or --state DIR)")
    mesh_state = read_state(find_state_dir(state, mesh))
    if mesh_state.insecure:
        return Target(address=address, node_id=node)
    if node is None:
        raise AdminError("with --address over mTLS, name the node too: --node NAME")
    return Target(address=address, node_id=node, tls=target_for(mesh_state, node).tls)


# --- typed answers ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteInfo:
    """One routing table entry."""

    destination: str
    cost: int
    next_hops: list[str]


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerInfo:
    """One neighbour link as the node sees it."""

    node_id: str
    address: str
    state: str
    cost: int
    rtt_ms: float
    frames_sent: int
    frames_received: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkInfo:
    """One undirected link of the topology a node knows."""

    a: str
    b: str
    cost: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TopologyInfo:
    """The graph as one node knows it (the whole graph with link-state)."""

    nodes: list[str]
    links: list[LinkInfo]


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryInfo:
    """A message delivered to a node's local applications."""

    message_id: str
    """Hex."""
    source: str
    destination: str
    content_type: str
    body_type: str
    data: bytes
    created_ms: int

    def body_text(self) -> str:
        """The body as text: JSON and UTF-8 as they are, other bytes as hex."""
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError:
            return "0x" + self.data.hex()

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "message_id": self.message_id,
            "source": self.source,
            "destination": self.destination,
            "content_type": self.content_type,
            "body_type": self.body_type,
            "created_ms": self.created_ms,
        }
        if self.content_type == "json":
            try:
                data["body"] = json.loads(self.data)
            except ValueError:
                data["body"] = self.body_text()
        else:
            data["body"] = self.body_text()
        return data


def table_of(routes: list[RouteInfo]) -> dict[str, tuple[int, frozenset[str]]]:
    """Routes as ``destination -> (cost, next hops)``, the shape tests compare."""
    return {r.destination: (r.cost, frozenset(r.next_hops)) for r in routes}


# --- the client --------------------------------------------------------------------------------


def _channel_parts(
    target: Target,
) -> tuple[grpc.ChannelCredentials | None, list[tuple[str, Any]]]:
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        # Operators ask a node once and want the answer or the error now, not after backoff.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
    if target.tls is None:
        return None, options
    try:
        credentials = pki.channel_credentials(target.tls)
    except pki.PkiError as exc:
        raise AdminError(f"client certificate: {exc}") from None
    if target.node_id is not None:
        options += pki.channel_options(target.node_id)
    return credentials, options


def _channel(target: Target) -> grpc.Channel:
    credentials, options = _channel_parts(target)
    if credentials is None:
        return grpc.insecure_channel(target.address, options=options)
    return grpc.secure_channel(target.address, credentials, options=options)


def aio_channel(target: Target) -> grpc.aio.Channel:
    """An asyncio channel to ``target`` (mTLS with the target's client files, or plaintext)."""
    credentials, options = _channel_parts(target)
    if credentials is None:
        return grpc.aio.insecure_channel(target.address, options=options)
    return grpc.aio.secure_channel(target.address, credentials, options=options)


class AdminClient:
    """One channel to one node; every method makes one RPC with a deadline.

    Raises (every method): AdminError with the status name and details.
    """

    def __init__(self, target: Target, *, timeout: float = RPC_TIMEOUT) -> None:
        self.target = target
        self.timeout = timeout
        self.name = target.node_id or target.address
        self._channel = _channel(target)
        self._admin = admin_pb2_grpc.AdminServiceStub(self._channel)
        self._client = client_pb2_grpc.ClientServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _error(self, exc: grpc.RpcError, what: str) -> AdminError:
        code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        # grpc's details can span lines (connection errors); an operator needs one.
        details = " ".join((details or "").split())
        return AdminError(f"{self.name}: {what}: {code.name}: {details}", code)

    def _call(self, what: str, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as exc:
            raise self._error(exc, what) from None

    # --- AdminService ---

    def routes(self) -> list[RouteInfo]:
        response = self._call("Routes", self._admin.Routes, admin_pb2.RoutesRequest())
        return [
            RouteInfo(destination=r.destination, cost=int(r.cost), next_hops=sorted(r.next_hops))
            for r in response.routes
        ]

    def engine(self) -> str:
        response = self._call("Routes", self._admin.Routes, admin_pb2.RoutesRequest())
        return ENGINE_NAMES.get(int(response.engine), str(response.engine))

    def peers(self) -> list[PeerInfo]:
        response = self._call("Peers", self._admin.Peers, admin_pb2.PeersRequest())
        return [
            PeerInfo(
                node_id=p.node_id,
                address=p.address,
                state=p.state,
                cost=int(p.cost),
                rtt_ms=float(p.rtt_ms),
                frames_sent=int(p.frames_sent),
                frames_received=int(p.frames_received),
            )
            for p in response.peers
        ]

    def topology(self) -> TopologyInfo:
        response = self._call("Topology", self._admin.Topology, admin_pb2.TopologyRequest())
        return TopologyInfo(
            nodes=list(response.nodes),
            links=[LinkInfo(a=link.a, b=link.b, cost=int(link.cost)) for link in response.links],
        )

    def set_link(self, peer: str, enabled: bool) -> bool:
        """Take the link to ``peer`` administratively down or up; True if it was up."""
        response = self._call(
            "SetLink", self._admin.SetLink, admin_pb2.SetLinkRequest(peer=peer, enabled=enabled)
        )
        return bool(response.was_up)

    def stats(self) -> dict[str, int]:
        response = self._call("Stats", self._admin.Stats, admin_pb2.StatsRequest())
        return {key: int(value) for key, value in sorted(response.counters.items())}

    def trace(self, message_id: bytes) -> list[str]:
        response = self._call(
            "Trace", self._admin.Trace, admin_pb2.TraceRequest(message_id=message_id)
        )
        return list(response.hops)

    def health(self, service: str = "") -> str:
        """The gRPC health status name (``SERVING``, ``NOT_SERVING``, ...)."""
        response = self._call(
            "Health.Check", self._health.Check, health_pb2.HealthCheckRequest(service=service)
        )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    # --- ClientService ---

    def send(
        self,
        destination: str,
        data: bytes,
        *,
        content_type: envelope_pb2.ContentType = envelope_pb2.CONTENT_TYPE_RAW,
        kind: envelope_pb2.DestinationKind = envelope_pb2.DESTINATION_KIND_NODE,
        body_type: str = "",
        trace: bool = False,
    ) -> bytes:
        """Send one message (ASYNC: at most once); returns its message id."""
        request = client_pb2.SendRequest(
            target=client_pb2.Address(kind=kind, name=destination),
            body=client_pb2.Body(content_type=content_type, body_type=body_type, data=data),
            mode=envelope_pb2.DELIVERY_MODE_ASYNC,
            trace=trace,
        )
        response = self._call("Send", self._client.Send, request)
        return bytes(response.message_id)

    def request(
        self,
        destination: str,
        data: bytes,
        *,
        content_type: envelope_pb2.ContentType = envelope_pb2.CONTENT_TYPE_RAW,
        kind: envelope_pb2.DestinationKind = envelope_pb2.DESTINATION_KIND_SERVICE,
        timeout: float = RPC_TIMEOUT,
    ) -> client_pb2.ReplyMessage:
        """Request/reply: send and wait for the answer."""
        request = client_pb2.RequestMessage(
            target=client_pb2.Address(kind=kind, name=destination),
            body=client_pb2.Body(content_type=content_type, data=data),
            timeout_ms=int(timeout * 1000),
        )
        reply: client_pb2.ReplyMessage = self._call(
            "Request", self._client.Request, request, timeout=timeout + 1.0
        )
        return reply

    def receive(
        self, *, count: int | None = None, timeout: float | None = None
    ) -> Iterator[DeliveryInfo]:
        """Deliveries to this node's applications, until ``count`` of them or ``timeout`` s.

        Messages that arrived before anyone listened come first. Running out of
        time ends the iteration quietly; any other failure raises AdminError.
        """
        if count is not None and count <= 0:
            return
        stream = self._client.Receive(client_pb2.ReceiveRequest(), timeout=timeout)
        seen = 0
        try:
            for delivery in stream:
                yield DeliveryInfo(
                    message_id=delivery.message_id.hex(),
                    source=delivery.source,
                    destination=delivery.destination.name,
                    content_type=CONTENT_TYPE_NAMES.get(
                        int(delivery.body.content_type), str(delivery.body.content_type)
                    ),
                    body_type=delivery.body.body_type,
                    data=bytes(delivery.body.data),
                    created_ms=int(delivery.created_ms),
                )
                seen += 1
                if count is not None and seen >= count:
                    return
        except grpc.RpcError as exc:
            if isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return
            raise self._error(exc, "Receive") from None
        finally:
            stream.cancel()


def connect(target: Target, *, timeout: float = RPC_TIMEOUT) -> AdminClient:
    """An :class:`AdminClient` for ``target`` (no RPC is made yet)."""
    return AdminClient(target, timeout=timeout)


def pid_alive(pid: int, config: str | None = None) -> bool:
    """Whether ``pid`` runs, and (where /proc tells) still runs the node with ``config``.

    The second check keeps `mesh down` from signalling an unrelated process
    that reused the pid of a node that died long ago.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return config is None
    if config is None:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    try:
        args = cmdline.read_bytes().split(b"\0")
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no /proc on this OS: trust the pid
    except OSError:
        return True
    if Path(f"/proc/{pid}/stat").exists():
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            state = ""
        if state == "Z":
            return False  # a zombie: dead, waiting for its parent
    return config.encode() in args


__all__ = [
    "aio_channel",
    "RPC_TIMEOUT",
    "STATE_FILE",
    "STATE_ROOT",
    "AdminClient",
    "AdminError",
    "ClientTls",
    "DeliveryInfo",
    "LinkInfo",
    "MeshState",
    "NodeEntry",
    "PeerInfo",
    "RouteInfo",
    "Target",
    "TlsPaths",
    "TopologyInfo",
    "connect",
    "find_state_dir",
    "pid_alive",
    "read_state",
    "resolve",
    "table_of",
    "target_for",
]
