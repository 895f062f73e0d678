"""The node process: one grpc.aio server serving peers, applications and operators.

``create_server`` binds the services (PeerService over raw bytes, ClientService,
AdminService, gRPC health and reflection) to one port; ``run_node`` loads a
node config, starts the runtime and stops gracefully on SIGTERM/SIGINT: health
goes NOT_SERVING, the server stops accepting and drains in-flight RPCs, links
close, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mesh.actions import Deliver
from mesh.codec import ContentType, EncodedBody
from mesh.core import CoreConfig
from mesh.crypto import NodeIdentity
from mesh.envelope import DEFAULT_LIMITS
from mesh.errors import MeshError, NoRoute
from mesh.linkcost import CostPolicy
from mesh.v1 import admin_pb2, admin_pb2_grpc, client_pb2, client_pb2_grpc, envelope_pb2, peer_pb2
from nodes import logs, pki
from nodes.config import NodeConfig, load_node_config
from nodes.links import LinkSettings
from nodes.metrics import start_metrics
from nodes.runtime import NeighbourSpec, NodeRuntime, RuntimeOptions, Transport
from nodes.status import grpc_code

log = logging.getLogger("mesh.server")

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SERVICE_NAMES = (
    "mesh.v1.PeerService",
    "mesh.v1.ClientService",
    "mesh.v1.AdminService",
)
_ENGINES = {
    "link-state": peer_pb2.ROUTING_ENGINE_LINK_STATE,
    "distance-vector": peer_pb2.ROUTING_ENGINE_DISTANCE_VECTOR,
}


class ClientServicer(client_pb2_grpc.ClientServiceServicer):
    """What applications attached to this node call."""

    def __init__(self, runtime: NodeRuntime) -> None:
        self.runtime = runtime

    async def Send(
        self, request: client_pb2.SendRequest, context: grpc.aio.ServicerContext
    ) -> client_pb2.SendResponse:
        runtime = self.runtime
        if request.mode == envelope_pb2.DELIVERY_MODE_ACKNOWLEDGED:
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED,
                "acknowledged delivery is not served yet; send with mode ASYNC",
            )
        target = request.target
        if target.kind not in (envelope_pb2.DESTINATION_KIND_NODE, 0):
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED, "only node destinations are served yet"
            )
        try:
            content_type = ContentType(request.body.content_type or ContentType.RAW)
        except ValueError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "unknown content type")
        body = EncodedBody(
            data=request.body.data, content_type=content_type, body_type=request.body.body_type
        )
        hop = runtime.core.table.next_hops(target.name)
        if hop and not any(runtime.links[h].has_space() for h in hop if h in runtime.links):
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"links towards {target.name!r} are full; slow down",
            )
        try:
            message_id, actions = runtime.core.submit(
                target.name,
                body,
                runtime.clock(),
                message_id=request.message_id or None,
            )
        except NoRoute as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except MeshError as exc:
            await context.abort(grpc_code(exc.status), str(exc))
        if runtime.apply(actions):
            runtime.count("dropped_queue_full")
        return client_pb2.SendResponse(message_id=message_id)

    async def Receive(
        self, request: client_pb2.ReceiveRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[client_pb2.Delivery]:
        runtime = self.runtime
        queue: asyncio.Queue[Deliver] = asyncio.Queue(maxsize=runtime.options.inbox_max)
        while not runtime.inbox.empty():  # what arrived before anyone listened
            queue.put_nowait(runtime.inbox.get_nowait())
        runtime.receivers.add(queue)
        try:
            while True:
                action = await queue.get()
                message = action.message
                header = message.header
                yield client_pb2.Delivery(
                    message_id=header.message_id,
                    source=header.source,
                    destination=client_pb2.Address(
                        kind=header.destination_kind, name=header.destination
                    ),
                    body=client_pb2.Body(
                        content_type=cast("envelope_pb2.ContentType", message.body.content_type),
                        body_type=message.body.body_type,
                        data=message.body.data,
                    ),
                    created_ms=header.created_ms,
                    deadline_ms=header.deadline_ms,
                )
        finally:
            runtime.receivers.discard(queue)


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
        return admin_pb2.StatsResponse(counters={k: int(v) for k, v in counters.items()})

    async def Trace(
        self, request: admin_pb2.TraceRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.TraceResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "message traces are not kept yet")
        raise AssertionError("unreachable")


async def create_server(
    runtime: NodeRuntime,
    address: str,
    credentials: grpc.ServerCredentials | None,
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Build and start the server on ``address`` (port 0 picks a free one)."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
    )
    link_handler = grpc.method_handlers_generic_handler(
        "mesh.v1.PeerService",
        {"Link": grpc.stream_stream_rpc_method_handler(runtime.serve_link)},
    )
    server.add_generic_rpc_handlers((link_handler,))
    client_pb2_grpc.add_ClientServiceServicer_to_server(ClientServicer(runtime), server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(runtime), server)
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
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
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
        cost_policy=CostPolicy(rtt_derived=settings.cost_mode == "rtt"),
        limits=DEFAULT_LIMITS,
        trace=settings.trace,
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
        subjects=tuple(config.subjects),
    )
    if config.tls is None:
        log.warning("running WITHOUT TLS (--insecure): any process can link to this node")
        return NodeRuntime(identity, core_config, options, Transport()), None
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
    )
    return runtime, pki.server_credentials(files)


async def serve(config: NodeConfig, ready_file: Path | None = None) -> int:
    """Run a node until SIGTERM or SIGINT; returns the exit code."""
    runtime, credentials = build_runtime(config)
    server, port, health_servicer = await create_server(runtime, config.listen, credentials)
    metrics_port = None
    if config.metrics_port is not None:
        metrics_port = start_metrics(runtime, config.metrics_port)
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
    await runtime.stop()
    await server.stop(grace=2.0)
    log.info("stopped")
    return 0


def run_node(config_path: Path, ready_file: Path | None = None, log_level: str = "info") -> int:
    """Entry point of `mesh node run CONFIG`."""
    config = load_node_config(config_path)
    logs.configure(config.node_id, log_level)
    log.info("starting", extra={"fields": {"pid": os.getpid(), "config": str(config_path)}})
    return asyncio.run(serve(config, ready_file))


__all__ = ["AdminServicer", "ClientServicer", "build_runtime", "create_server", "run_node", "serve"]
