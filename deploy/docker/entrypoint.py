#!/usr/bin/env python3
"""Container entrypoint of a meshwork node (Docker, compose and Kubernetes).

One node per container. The container knows its node id (``MESH_NODE_ID``, or
the pod name, or the host name), how many nodes the mesh has and which
topology policy links them, and renders the node's ``NodeConfig`` from that,
with neighbour addresses as DNS names (``{node}`` in compose,
``{node}.{service}.{namespace}.svc`` for a StatefulSet behind a headless
Service). Nothing is discovered at run time: a neighbour that does not resolve
yet is simply redialled by the node with back-off.

Sub-commands (the first argument; none means ``run``)::

    run        render the config, copy the keys, then exec `mesh node run`
    render     render the config and copy the keys; print the config's path
    init-pki   create the mesh CA and one certificate per node if missing (compose)
    health     one gRPC health check of the local node over mTLS; exit 0 when SERVING
    bridge     plaintext gRPC health + metrics relay for Kubernetes probes (sidecar)
    metrics    print the local node's Prometheus metrics
    <other>    exec'd as given (``mesh routes ...``, ``sh``)

Settings come from a deployment file (``MESH_DEPLOYMENT``, default
``/etc/mesh/config/mesh.yaml`` when it exists; see :class:`Deployment`), then
from environment variables, which win:

    MESH_NODE_ID    this node's id (default: POD_NAME, then the host name)
    MESH_ID         mesh id                      MESH_REPLICAS  number of nodes
    MESH_TOPOLOGY   ring | line | full | links   MESH_ROUTING   link-state | distance-vector
    MESH_PORT       gRPC port (7000)             MESH_PEER_HOST host template of a neighbour
    MESH_SERVICE    headless Service name        POD_NAMESPACE  namespace (for the template)
    MESH_PKI_DIR    node files, <dir>/<node>/node.pem or <dir>/<node>.node.pem
    MESH_STATE_DIR  state (store.db, keys, rendered config)   MESH_LOG_LEVEL  info
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nodes.config import (
    NAME_PATTERN,
    ConfigError,
    Neighbour,
    NodeConfig,
    NodeSettings,
    ServiceSpec,
    TlsFiles,
    Topology,
    TopologyLink,
    TopologyNode,
    load_node_config,
)

DEFAULT_DEPLOYMENT = Path("/etc/mesh/config/mesh.yaml")
DEFAULT_PKI_DIR = Path("/etc/mesh/pki")
DEFAULT_CA_DIR = Path("/etc/mesh/ca")
DEFAULT_STATE_DIR = Path("/var/lib/mesh")
HEALTH_PORT = 7081
"""Where ``bridge`` serves plaintext gRPC health for the kubelet."""
METRICS_RELAY_PORT = 9100
"""Where ``bridge`` re-serves the node's metrics (which bind to 127.0.0.1) on all addresses."""

TLS_FILES = ("ca.pem", "node.pem", "node.key")
KEY_FILES = ("signing.pem", "agreement.pem")

Policy = Literal["ring", "line", "full", "links"]


class EntrypointError(Exception):
    """The container cannot start: one line saying what to fix."""


class Deployment(BaseModel):
    """The mesh-wide settings every node of a deployment shares (``mesh.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    mesh: str = "mesh"
    routing: Literal["link-state", "distance-vector"] = "link-state"
    replicas: int = Field(default=1, ge=1, le=10_000)
    """Number of nodes, named ``<prefix>-0`` .. ``<prefix>-<replicas-1>``."""
    topology: Policy = "ring"
    """``ring``/``line``/``full`` link the nodes by ordinal; ``links`` uses ``links``."""
    links: list[TopologyLink] = []
    """Explicit links between node ids, for ``topology: links``."""
    cost: int = Field(default=1, ge=1)
    """Cost of every link made by a ``ring``/``line``/``full`` policy."""
    port: int = Field(default=7000, ge=1, le=65535)
    listen_host: str = "0.0.0.0"
    peer_host: str = "{node}"
    """Host name of a neighbour; ``{node}``, ``{service}`` and ``{namespace}`` are filled in."""
    service: str = "mesh"
    metrics_port: int | None = Field(default=9101, ge=1, le=65535)
    settings: NodeSettings = Field(default_factory=NodeSettings)
    services: dict[str, ServiceSpec] = {}
    subjects: list[str] = []


_ENV_FIELDS = {
    "MESH_ID": "mesh",
    "MESH_ROUTING": "routing",
    "MESH_REPLICAS": "replicas",
    "MESH_TOPOLOGY": "topology",
    "MESH_PORT": "port",
    "MESH_LISTEN_HOST": "listen_host",
    "MESH_PEER_HOST": "peer_host",
    "MESH_SERVICE": "service",
    "MESH_METRICS_PORT": "metrics_port",
}


def load_deployment(env: Mapping[str, str]) -> Deployment:
    """The deployment file (if any) overlaid with ``MESH_*`` environment variables."""
    data: dict[str, Any] = {}
    path = Path(env.get("MESH_DEPLOYMENT", str(DEFAULT_DEPLOYMENT)))
    if path.exists():
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        if loaded is not None and not isinstance(loaded, dict):
            raise EntrypointError(f"{path}: expected a mapping of settings")
        data.update(loaded or {})
    elif "MESH_DEPLOYMENT" in env:
        raise EntrypointError(f"MESH_DEPLOYMENT={path} does not exist")
    for variable, field in _ENV_FIELDS.items():
        value = env.get(variable)
        if value:
            data[field] = None if value == "none" and field == "metrics_port" else value
    try:
        return Deployment.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise EntrypointError(f"deployment settings ({path}): {problems}") from None


def node_id_from_env(env: Mapping[str, str]) -> str:
    """``MESH_NODE_ID``, else the pod name, else the host name."""
    node_id = env.get("MESH_NODE_ID") or env.get("POD_NAME") or socket.gethostname()
    if not NAME_PATTERN.fullmatch(node_id):
        raise EntrypointError(f"node id {node_id!r} is not a valid name")
    return node_id


def split_ordinal(node_id: str) -> tuple[str, int]:
    """``mesh-2`` -> ``("mesh", 2)``: a StatefulSet pod's name is ``<set>-<ordinal>``."""
    prefix, sep, ordinal = node_id.rpartition("-")
    if not sep or not prefix or not ordinal.isdigit():
        raise EntrypointError(
            f"node id {node_id!r} does not end in -<ordinal> (like mesh-0); set MESH_NODE_ID"
        )
    return prefix, int(ordinal)


def topology_of(deployment: Deployment, prefix: str) -> Topology:
    """The whole mesh as a validated topology: node ids and links by the deployment's policy."""
    names = [f"{prefix}-{i}" for i in range(deployment.replicas)]
    n = len(names)
    pairs: list[tuple[int, int]]
    if deployment.topology == "full":
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    elif deployment.topology == "line" or (deployment.topology == "ring" and n < 3):
        pairs = [(i, i + 1) for i in range(n - 1)]
    elif deployment.topology == "ring":
        pairs = [(i, (i + 1) % n) for i in range(n)]
    else:
        pairs = []
    links = [TopologyLink(a=names[i], b=names[j], cost=deployment.cost) for i, j in pairs]
    if deployment.topology == "links":
        links = list(deployment.links)
    try:
        return Topology(
            mesh=deployment.mesh,
            routing=deployment.routing,
            nodes={name: TopologyNode() for name in names},
            links=links,
            settings=deployment.settings,
        )
    except ValidationError as exc:
        raise EntrypointError(f"topology: {exc.errors()[0]['msg']}") from None


def render_config(
    deployment: Deployment,
    node_id: str,
    state_dir: Path,
    *,
    namespace: str = "default",
    insecure: bool = False,
) -> NodeConfig:
    """This node's config: neighbours by the topology policy, addressed by DNS name."""
    prefix, ordinal = split_ordinal(node_id)
    if ordinal >= deployment.replicas:
        raise EntrypointError(
            f"{node_id} is ordinal {ordinal} but the mesh has {deployment.replicas} nodes: "
            "MESH_REPLICAS (replicas in mesh.yaml) must equal the StatefulSet's replicas"
        )
    topology = topology_of(deployment, prefix)
    neighbours = []
    for peer, cost in topology.neighbours(node_id):
        host = deployment.peer_host.format(
            node=peer, service=deployment.service, namespace=namespace
        )
        neighbours.append(Neighbour(node=peer, address=f"{host}:{deployment.port}", cost=cost))
    tls_dir = state_dir / "tls"
    host = deployment.listen_host
    listen = f"[{host}]:{deployment.port}" if ":" in host else f"{host}:{deployment.port}"
    return NodeConfig(
        node_id=node_id,
        mesh=deployment.mesh,
        routing=deployment.routing,
        listen=listen,
        state_dir=state_dir,
        tls=None
        if insecure
        else TlsFiles(ca=tls_dir / "ca.pem", cert=tls_dir / "node.pem", key=tls_dir / "node.key"),
        insecure=insecure,
        metrics_port=deployment.metrics_port,
        neighbours=neighbours,
        services=deployment.services,
        subjects=deployment.subjects,
        settings=deployment.settings,
    )


def node_file(pki_dir: Path, node_id: str, name: str) -> Path:
    """A node's file in the PKI mount: ``<dir>/<node>/<name>`` or ``<dir>/<node>.<name>``.

    The first is what ``mesh cert issue --out <dir>/<node>`` writes (compose);
    the second is a Kubernetes Secret's key (keys cannot hold ``/``).
    """
    nested = pki_dir / node_id / name
    return nested if nested.exists() else pki_dir / f"{node_id}.{name}"


def _copy_private(source: Path, target: Path) -> None:
    """Copy as mode 0600 from the start: Secret and volume mounts have other modes."""
    try:
        data = source.read_bytes()
    except FileNotFoundError:
        raise EntrypointError(
            f"{source} does not exist: is the node's certificate in the PKI mount?"
        ) from None
    partial = target.with_name(f".{target.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(data)
    partial.replace(target)


def install_keys(pki_dir: Path, node_id: str, state_dir: Path) -> None:
    """Copy the node's TLS files to ``<state>/tls`` and identity keys to ``<state>/keys``."""
    for folder, names in (("tls", TLS_FILES), ("keys", KEY_FILES)):
        target = state_dir / folder
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name in names:
            _copy_private(node_file(pki_dir, node_id, name), target / name)


def prepare(env: Mapping[str, str]) -> Path:
    """Render this node's config into its state dir (and copy its keys); returns the path."""
    deployment = load_deployment(env)
    node_id = node_id_from_env(env)
    state_dir = Path(env.get("MESH_STATE_DIR", str(DEFAULT_STATE_DIR)))
    insecure = env.get("MESH_INSECURE", "") in ("1", "true", "yes")
    config = render_config(
        deployment,
        node_id,
        state_dir,
        namespace=env.get("POD_NAMESPACE", "default"),
        insecure=insecure,
    )
    state_dir.mkdir(parents=True, exist_ok=True)
    if not insecure:
        install_keys(Path(env.get("MESH_PKI_DIR", str(DEFAULT_PKI_DIR))), node_id, state_dir)
    path = state_dir / "node.yaml"
    config.dump(path)
    try:
        load_node_config(path)
    except ConfigError as exc:
        raise EntrypointError(f"rendered config does not load: {exc}") from None
    return path


# --- certificates for compose ----------------------------------------------------------------


def init_pki(env: Mapping[str, str]) -> list[str]:
    """Create the CA and a certificate for every node (and the ``ops`` client) if missing.

    Runs ``mesh ca init`` and ``mesh cert issue``; idempotent, so restarting the
    init service keeps every node's identity. ``MESH_PKI_RENEW=1`` re-issues the
    certificates (renewal keeps the identity keys). Returns the node ids.
    """
    deployment = load_deployment(env)
    prefix = env.get("MESH_NAME", deployment.service)
    ca_dir = Path(env.get("MESH_CA_DIR", str(DEFAULT_CA_DIR)))
    pki_dir = Path(env.get("MESH_PKI_DIR", str(DEFAULT_PKI_DIR)))
    renew = env.get("MESH_PKI_RENEW", "") in ("1", "true", "yes")
    mesh = env.get("MESH_CLI", "mesh")
    if not (ca_dir / "ca.pem").exists():
        subprocess.run([mesh, "ca", "init", str(ca_dir), "--mesh", deployment.mesh], check=True)
    nodes = [f"{prefix}-{i}" for i in range(deployment.replicas)]
    commands = [
        [mesh, "cert", "issue", node, "--ca", str(ca_dir), "--out", str(pki_dir / node)]
        for node in nodes
        if renew or not (pki_dir / node / "node.pem").exists()
    ]
    if renew or not (pki_dir / "ops" / "client.pem").exists():
        out = str(pki_dir / "ops")
        commands.append(
            [mesh, "cert", "issue", "ops", "--ca", str(ca_dir), "--out", out, "--client"]
        )
    # One `mesh` process per CPU at a time: each spends most of its second importing.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for done in pool.map(lambda cmd: subprocess.run(cmd, check=False), commands):
            if done.returncode != 0:
                raise subprocess.CalledProcessError(done.returncode, done.args)
    return nodes


# --- health --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Upstream:
    """How to reach the local node: its address, its id, and our mTLS files (PEM)."""

    address: str
    node_id: str
    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Upstream:
        deployment = load_deployment(env)
        node_id = node_id_from_env(env)
        address = env.get("MESH_HEALTH_TARGET", f"127.0.0.1:{deployment.port}")
        if env.get("MESH_INSECURE", "") in ("1", "true", "yes"):
            return cls(address, node_id)
        pki_dir = Path(env.get("MESH_PKI_DIR", str(DEFAULT_PKI_DIR)))
        try:
            ca, cert, key = (node_file(pki_dir, node_id, n).read_bytes() for n in TLS_FILES)
        except FileNotFoundError as exc:
            raise EntrypointError(f"{exc.filename} does not exist") from None
        return cls(address, node_id, ca, cert, key)

    def channel_args(self) -> tuple[Any, list[tuple[str, str]]]:
        """Credentials (None: plaintext) and options; the node's cert names its id."""
        import grpc  # noqa: PLC0415  (keeps `render` free of grpc's start-up cost)

        if self.ca is None:
            return None, []
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )
        return creds, [("grpc.ssl_target_name_override", self.node_id)]


def check_health(upstream: Upstream, timeout: float = 3.0) -> str:
    """The node's overall health status name (``SERVING``, ...), or ``UNREACHABLE``."""
    import grpc  # noqa: PLC0415
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

    creds, options = upstream.channel_args()
    channel = (
        grpc.insecure_channel(upstream.address)
        if creds is None
        else grpc.secure_channel(upstream.address, creds, options=options)
    )
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.RpcError:
            return "UNREACHABLE"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


async def serve_bridge(
    upstream: Upstream,
    health_address: str,
    metrics_listen: tuple[str, int] | None,
    metrics_target: tuple[str, int] | None,
    *,
    timeout: float = 2.0,
) -> tuple[Any, int, asyncio.AbstractServer | None]:
    """Start the bridge; returns (grpc server, health port, metrics relay server).

    The kubelet's gRPC probe speaks plaintext only, while the node's one port
    requires mTLS. The bridge serves ``grpc.health.v1.Health/Check`` in
    plaintext and answers with what the node says over mTLS (NOT_SERVING when
    the node does not answer), so probes see the node's own health. It also
    relays TCP from ``metrics_listen`` to the node's metrics port, which binds
    to 127.0.0.1 only (the bridge shares the pod's network namespace).
    """
    import grpc  # noqa: PLC0415
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

    creds, options = upstream.channel_args()
    channel = (
        grpc.aio.insecure_channel(upstream.address)
        if creds is None
        else grpc.aio.secure_channel(upstream.address, creds, options=options)
    )
    stub = health_pb2_grpc.HealthStub(channel)
    not_serving = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.NOT_SERVING)

    class Bridge(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
        async def Check(
            self, request: health_pb2.HealthCheckRequest, context: Any
        ) -> health_pb2.HealthCheckResponse:
            try:
                reply: health_pb2.HealthCheckResponse = await stub.Check(
                    health_pb2.HealthCheckRequest(service=request.service), timeout=timeout
                )
            except grpc.RpcError:
                return not_serving
            return reply

    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(Bridge(), server)
    port = server.add_insecure_port(health_address)
    await server.start()
    relay = None
    if metrics_listen is not None and metrics_target is not None:
        relay = await _start_relay(metrics_listen, metrics_target)
    return server, port, relay


async def _start_relay(listen: tuple[str, int], target: tuple[str, int]) -> asyncio.AbstractServer:
    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    return await asyncio.start_server(handle, *listen)


async def _run_bridge(env: Mapping[str, str]) -> int:
    import signal  # noqa: PLC0415

    upstream = Upstream.from_env(env)
    deployment = load_deployment(env)
    health_port = int(env.get("MESH_HEALTH_PORT", str(HEALTH_PORT)))
    relay_port = int(env.get("MESH_METRICS_RELAY_PORT", str(METRICS_RELAY_PORT)))
    target = ("127.0.0.1", deployment.metrics_port) if deployment.metrics_port else None
    server, _port, relay = await serve_bridge(
        upstream, f"[::]:{health_port}", ("0.0.0.0", relay_port), target
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"health bridge on :{health_port} for {upstream.node_id} at {upstream.address}")
    await stop.wait()
    if relay is not None:
        relay.close()
    await server.stop(grace=1.0)
    return 0


# --- main -----------------------------------------------------------------------------------


def main(argv: Sequence[str], env: Mapping[str, str]) -> int:
    command, *rest = list(argv) or ["run"]
    try:
        if command == "render":
            print(prepare(env))
            return 0
        if command == "run":
            path = prepare(env)
            level = env.get("MESH_LOG_LEVEL", "info")
            mesh = shutil.which(env.get("MESH_CLI", "mesh")) or "mesh"
            os.execv(mesh, [mesh, "node", "run", str(path), "--log-level", level, *rest])
        if command == "init-pki":
            nodes = init_pki(env)
            print(f"certificates ready for {', '.join(nodes)}")
            return 0
        if command == "health":
            status = check_health(Upstream.from_env(env))
            print(status)
            return 0 if status == "SERVING" else 1
        if command == "bridge":
            return asyncio.run(_run_bridge(env))
        if command == "metrics":
            port = load_deployment(env).metrics_port
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as reply:
                sys.stdout.write(reply.read().decode())
            return 0
    except EntrypointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        print(f"error: {' '.join(exc.cmd)} exited with {exc.returncode}", file=sys.stderr)
        return 1
    with contextlib.suppress(FileNotFoundError):
        os.execvp(command, [command, *rest])
    print(f"error: unknown command {command!r}", file=sys.stderr)
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], os.environ))
