"""`mesh` commands: ops — run a local mesh and talk to its nodes.

``mesh up TOPOLOGY`` / ``down`` / ``status`` drive nodes/launcher.py;
``send``, ``receive``, ``request``, ``routes``, ``peers``, ``topology``,
``stats`` and ``trace`` talk to one node through nodes/admin_client.py. A node
is named with ``--node NAME`` (resolved through the mesh's state dir: the only
mesh under ``.mesh/``, ``--mesh ID`` or ``--state DIR``) or reached directly
with ``--address HOST:PORT`` (plus ``--insecure`` or ``--ca/--cert/--key``).

Read commands print a table, or JSON with ``--json``. Every failure prints one
line ``error: ...`` on stderr and exits 1 (2 for what the node does not serve
yet), never a traceback.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, NoReturn

import networkx as nx
import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from mesh.errors import MeshError
from mesh.v1 import envelope_pb2
from nodes import launcher
from nodes.admin_client import (
    AdminClient,
    AdminError,
    find_state_dir,
    read_state,
    resolve,
)

console = Console()
errors = Console(stderr=True)


# --- shared options -------------------------------------------------------------------------------

NodeOpt = Annotated[str | None, typer.Option("--node", help="node id (resolved via the state dir)")]
AddressOpt = Annotated[
    str | None, typer.Option("--address", help="HOST:PORT of a node, instead of --node")
]
StateOpt = Annotated[
    Path | None, typer.Option("--state", help="state dir of the mesh [default: the only one]")
]
MeshOpt = Annotated[str | None, typer.Option("--mesh", help="mesh id: state dir .mesh/ID")]
InsecureOpt = Annotated[bool, typer.Option("--insecure", help="with --address: dial without TLS")]
CaOpt = Annotated[Path | None, typer.Option("--ca", help="with --address: CA certificate (PEM)")]
CertOpt = Annotated[
    Path | None, typer.Option("--cert", help="with --address: client certificate (PEM)")
]
KeyOpt = Annotated[Path | None, typer.Option("--key", help="with --address: client key (PEM)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


def _fail(message: str, code: int = 1) -> NoReturn:
    errors.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True, markup=True)
    raise typer.Exit(code=code)


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """Every expected failure becomes one ``error:`` line and a non-zero exit."""
    try:
        yield
    except AdminError as exc:
        _fail(str(exc))
    except launcher.LaunchError as exc:
        _fail(str(exc))
    except MeshError as exc:  # ConfigError, PkiError, KeyFileError: one line per problem
        _fail(str(exc).replace("\n", "; "))
    except OSError as exc:
        _fail(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))


def _emit_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True))


# --- the mesh as a whole --------------------------------------------------------------------------


def up(
    topology: Annotated[Path, typer.Argument(help="topology file (YAML)")],
    *,
    state: Annotated[
        Path | None, typer.Option("--state", help="state dir [default: .mesh/<mesh id>]")
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="no CA, no TLS: local experiments only")
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="seconds to wait for every node to converge")
    ] = 60.0,
    detach: Annotated[
        bool, typer.Option("--detach", help="return once converged; stop later with `mesh down`")
    ] = False,
) -> None:
    """Start every node of TOPOLOGY locally and wait until all routes are right.

    In the foreground the status table stays live until Ctrl-C, which stops
    every node (the state dir stays, for its logs). With --detach the nodes
    keep running.
    """
    with _one_line_errors():
        handle = launcher.start(topology, state, insecure=insecure)
    title = f"mesh {handle.state.mesh} ({handle.state.routing}) in {handle.state_dir}"
    started = time.monotonic()
    detached = False
    try:
        with _one_line_errors(), launcher.sigterm_as_interrupt():
            with Live(Table(), console=console, refresh_per_second=4) as live:

                def show(rows: list[launcher.NodeStatus]) -> None:
                    live.update(launcher.status_table(rows, title))

                handle.wait_ready(timeout=timeout)
                handle.wait_converged(
                    timeout=max(0.0, started + timeout - time.monotonic()), on_poll=show
                )
                show(handle.poll())
            if not console.is_terminal:
                console.line()  # a non-terminal Live leaves the cursor after the table
            console.print(
                f"converged in {time.monotonic() - started:.1f} s", highlight=False, end=""
            )
            if detach:
                handle.detach()
                detached = True
                console.print(
                    f"; running detached. Stop with: mesh down --state {handle.state_dir}",
                    highlight=False,
                    soft_wrap=True,
                )
                return
            console.print("; Ctrl-C stops the mesh", highlight=False)
            with Live(launcher.status_table(handle.poll(), title), console=console) as live:
                while True:
                    time.sleep(1.0)
                    live.update(launcher.status_table(handle.poll(), title))
    except KeyboardInterrupt:
        errors.print("stopping the mesh...", highlight=False)
    finally:
        if not detached:
            handle.stop()


def down(
    state: StateOpt = None,
    mesh: MeshOpt = None,
    keep_state: Annotated[
        bool, typer.Option("--keep-state", help="keep the state dir (configs, logs, certificates)")
    ] = False,
) -> None:
    """Stop a detached mesh and delete its state dir."""
    with _one_line_errors():
        state_dir = find_state_dir(state, mesh)
        stopped = launcher.down(state_dir, keep_state=keep_state)
    what = ", ".join(stopped) if stopped else "no node was running"
    console.print(
        f"stopped: {what}" + ("" if keep_state else f"; removed {state_dir}"), highlight=False
    )


def status(state: StateOpt = None, mesh: MeshOpt = None, as_json: JsonOpt = False) -> None:
    """Show every node of a mesh: address, pid, peers up, routes, converged."""
    with _one_line_errors():
        state_dir = find_state_dir(state, mesh)
        rows = launcher.status(state_dir)
        mesh_state = read_state(state_dir)
    if as_json:
        _emit_json(
            {
                "mesh": mesh_state.mesh,
                "routing": mesh_state.routing,
                "state_dir": mesh_state.state_dir,
                "nodes": [asdict(row) for row in rows],
            }
        )
        return
    console.print(
        launcher.status_table(
            rows, f"mesh {mesh_state.mesh} ({mesh_state.routing}) in {mesh_state.state_dir}"
        )
    )


# --- messages -------------------------------------------------------------------------------------


def send(
    destination: Annotated[str, typer.Argument(help="node id (or service name) to send to")],
    body: Annotated[str, typer.Argument(help="the message body; '-' reads stdin")],
    *,
    node: Annotated[
        str | None, typer.Option("--node", help="node to send from [default: the first node]")
    ] = None,
    json_body: Annotated[
        bool, typer.Option("--json-body", help="BODY is JSON (checked, sent as JSON)")
    ] = False,
    raw: Annotated[bool, typer.Option("--raw", help="BODY is opaque bytes (sent as RAW)")] = False,
    service: Annotated[
        bool, typer.Option("--service", help="DESTINATION is a service, not a node")
    ] = False,
    address: AddressOpt = None,
    state: StateOpt = None,
    mesh: MeshOpt = None,
    insecure: InsecureOpt = False,
    ca: CaOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    trace: Annotated[
        bool, typer.Option("--trace", help="record the hops; see them with `mesh trace`")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Send BODY to DESTINATION (at most once, no ack); prints the message id.

    Without --json-body or --raw, a BODY that parses as JSON is sent as JSON
    and anything else as raw bytes.
    """
    if json_body and raw:
        _fail("choose one of --json-body and --raw")
    data = typer.get_binary_stream("stdin").read() if body == "-" else body.encode()
    if raw:
        content_type = envelope_pb2.CONTENT_TYPE_RAW
    else:
        try:
            json.loads(data)
            content_type = envelope_pb2.CONTENT_TYPE_JSON
        except ValueError as exc:
            if json_body:
                _fail(f"BODY is not JSON: {exc}")
            content_type = envelope_pb2.CONTENT_TYPE_RAW
    with _one_line_errors():
        kind = (
            envelope_pb2.DESTINATION_KIND_SERVICE if service else envelope_pb2.DESTINATION_KIND_NODE
        )
        if address is None:
            mesh_state = read_state(find_state_dir(state, mesh))
            if node is None:
                node = next(iter(mesh_state.nodes))
            if not service and destination not in mesh_state.nodes:
                kind = envelope_pb2.DESTINATION_KIND_SERVICE  # not a node: a service name
        target = resolve(
            node=node,
            address=address,
            state=state,
            mesh=mesh,
            insecure=insecure,
            ca=ca,
            cert=cert,
            key=key,
        )
        with AdminClient(target) as client:
            message_id = client.send(
                destination, data, content_type=content_type, kind=kind, trace=trace
            )
    via = target.node_id or target.address
    if as_json:
        _emit_json({"message_id": message_id.hex(), "via": via, "destination": destination})
    else:
        console.print(f"sent {message_id.hex()} to {destination} via {via}", highlight=False)


def receive(
    *,
    node: NodeOpt = None,
    count: Annotated[
        int | None, typer.Option("--count", min=1, help="stop after this many messages")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=0, help="stop after this many seconds")
    ] = None,
    address: AddressOpt = None,
    state: StateOpt = None,
    mesh: MeshOpt = None,
    insecure: InsecureOpt = False,
    ca: CaOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print messages delivered to a node (one JSON object per line with --json).

    Messages that arrived before anyone listened come first. Exits 1 when
    --count messages did not arrive within --timeout.
    """
    received = 0
    with _one_line_errors():
        target = resolve(
            node=node,
            address=address,
            state=state,
            mesh=mesh,
            insecure=insecure,
            ca=ca,
            cert=cert,
            key=key,
        )
        with AdminClient(target) as client:
            for delivery in client.receive(count=count, timeout=timeout):
                received += 1
                if as_json:
                    typer.echo(json.dumps(delivery.to_json(), sort_keys=True))
                else:
                    console.print(
                        f"{delivery.message_id} from {delivery.source} "
                        f"({delivery.content_type}, {len(delivery.data)} bytes): "
                        f"{delivery.body_text()}",
                        highlight=False,
                        soft_wrap=True,
                        markup=False,
                    )
    if count is not None and received < count:
        _fail(f"received {received} of {count} messages within {timeout} s")


# --- what a node knows ----------------------------------------------------------------------------


def routes(
    *,
    node: NodeOpt = None,
    address: AddressOpt = None,
    state: StateOpt = None,
    mesh: MeshOpt = None,
    insecure: InsecureOpt = False,
    ca: CaOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a node's routing table: destination, cost, next hops."""
    with _one_line_errors():
        target = resolve(
            node=node,
            address=address,
            state=state,
            mesh=mesh,
            insecure=insecure,
            ca=ca,
            cert=cert,
            key=key,
        )
        with AdminClient(target) as client:
            table = client.routes()
    if as_json:
        _emit_json([asdict(route) for route in table])
        return
    view = Table(title=f"routes of {target.node_id or target.address}")
    for column in ("destination", "cost", "next hops"):
        view.add_column(column)
    for route in table:
        view.add_row(route.destination, str(route.cost), ", ".join(route.next_hops) or "-")
    console.print(view)


def peers(
    *,
    node: NodeOpt = None,
    address: AddressOpt = None,
    state: StateOpt = None,
    mesh: MeshOpt = None,
    insecure: InsecureOpt = False,
    ca: CaOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a node's neighbour links: state, cost, round trip, frames."""
    with _one_line_errors():
        target = resolve(
            node=node,
            address=address,
            state=state,
            mesh=mesh,
            insecure=insecure,
            ca=ca,
            cert=cert,
            key=key,
        )
        with AdminClient(target) as client:
            found = client.peers()
    if as_json:
        _emit_json([asdict(peer) for peer in found])
        return
    view = Table(title=f"peers of {target.node_id or target.address}")
    for column in ("peer", "address", "state", "cost", "rtt ms", "frames sent", "frames received"):
        view.add_column(column)
    for peer in found:
        view.add_row(
            peer.node_id,
            peer.address or "(inbound)",
            peer.state,
            str(peer.cost),
            f"{peer.rtt_ms:.2f}",
            str(peer.frames_sent),
            str(peer.frames_received),
        )
    console.print(view)


def topology(
    *,
    node: NodeOpt = None,
    png: Annotated[
        Path | None, typer.Option("--png", help="also draw the graph into this PNG file")
    ] = None,
    address: AddressOpt = None,
    state: StateOpt = None,
    mesh: MeshOpt = None,
    insecure: InsecureOpt = False,
    ca: CaOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the topology as a node knows it (all of it with link-state routing)."""
    with _one_line_errors():
        target = resolve(
            node=node,
            address=address,
            state=state,
            mesh=mesh,
            insecure=insecure,
            ca=ca,
            cert=cert,
            key=key,
        )
        with AdminClient(target) as client:
            graph = client.topology()
    if png is not None:
        _draw(graph.nodes, [(link.a, link.b, link.cost) for link in graph.links], png)
    if as_json:
        _emit_json(asdict(graph))
        return
    console.print(f"nodes: {', '.join(graph.nodes)}", highlight=False, soft_wrap=True)
    for link in graph.links:
        console.print(f"  {link.a} -- {link.b}  cost {link.cost}", highlight=False)
    if png is not None:
        console.print(f"drawn into {png}", highlight=False)


def _draw(nodes: list[str], links: list[tuple[str, str, int]], path: Path) -> None:
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        _fail("--png needs matplotlib: pip install matplotlib")
    matplotlib.use("Agg")  # files only: no display needed
    plt = importlib.import_module("matplotlib.pyplot")
    graph = nx.Graph()
    graph.add_nodes_from(nodes)
    for a, b, cost in links:
        graph.add_edge(a, b, cost=cost)
    figure = plt.figure(figsize=(8, 6))
    layout = nx.spring_layout(graph, seed=1, weight=None)
    nx.draw_networkx(graph, layout, node_color="#9ecae1", font_size=9)
    nx.draw_networkx_edge_labels(graph, layout, edge_labels=nx.get_edge_attributes(graph, "cost"))
    plt.axis("off")
    try:
        figure.savefig(path, dpi=120, bbox_inches="tight")
    except OSError as exc:
        _fail(f"cannot write {path}: {exc.strerror}")
    finally:
        plt.close(figure)


def stats(
    *,
    node: NodeOpt = None,
    address: AddressOpt = None,
    state: StateOpt = None,
    mesh: MeshOpt = None,
    insecure: InsecureOpt = False,
    ca: CaOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a node's counters (refused input, links, forwarded, delivered...)."""
    with _one_line_errors():
        target = resolve(
            node=node,
            address=address,
            state=state,
            mesh=mesh,
            insecure=insecure,
            ca=ca,
            cert=cert,
            key=key,
        )
        with AdminClient(target) as client:
            counters = client.stats()
    if as_json:
        _emit_json(counters)
        return
    view = Table(title=f"counters of {target.node_id or target.address}")
    view.add_column("counter")
    view.add_column("value", justify="right")
    for name, value in counters.items():
        view.add_row(name, str(value))
    console.print(view)


def trace(
    message_id: Annotated[str, typer.Argument(help="message id (hex)")],
    *,
    node: NodeOpt = None,
    address: AddressOpt = None,
    state: StateOpt = None,
    mesh: MeshOpt = None,
    insecure: InsecureOpt = False,
    ca: CaOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the hops a traced message took, with per-hop latency (ask its destination)."""
    try:
        wanted = bytes.fromhex(message_id)
    except ValueError:
        _fail(f"{message_id!r} is not a hex message id")
    with _one_line_errors():
        target = resolve(
            node=node,
            address=address,
            state=state,
            mesh=mesh,
            insecure=insecure,
            ca=ca,
            cert=cert,
            key=key,
        )
        with AdminClient(target) as client:
            hops = client.trace(wanted)
    steps = _hops(hops)
    if as_json:
        _emit_json({"message_id": message_id, "hops": steps})
        return
    table = Table(title=f"path of {message_id[:16]}...")
    table.add_column("hop", justify="right")
    table.add_column("node")
    table.add_column("at (unix ms)", justify="right")
    table.add_column("since previous", justify="right")
    for index, step in enumerate(steps):
        delta = step["ms_since_previous"]
        table.add_row(
            str(index), step["node"], str(step["at_ms"]), "-" if delta is None else f"{delta} ms"
        )
    console.print(table)


def _hops(hops: list[str]) -> list[dict[str, Any]]:
    """``node@unix_ms`` entries with the latency of each hop."""
    steps: list[dict[str, Any]] = []
    previous: int | None = None
    for hop in hops:
        node, _, at = hop.rpartition("@")
        at_ms = int(at) if at.isdigit() else None
        delta = None if at_ms is None or previous is None else at_ms - previous
        steps.append({"node": node or hop, "at_ms": at_ms, "ms_since_previous": delta})
        previous = at_ms
    return steps


def register(app: typer.Typer) -> None:
    """Add `mesh up/down/status/send/receive/routes/peers/topology/stats/trace`."""
    for command in (
        up,
        down,
        status,
        send,
        receive,
        routes,
        peers,
        topology,
        stats,
        trace,
    ):
        app.command(command.__name__)(command)
