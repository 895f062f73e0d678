"""`mesh up`: a whole topology as local node processes, and the handle tests drive it with.

:func:`launch` reads a topology, prepares a state dir (by default
``.mesh/<mesh id>/``) and starts one ``mesh node run`` process per node:

- **certificates**: unless insecure, a mesh CA in ``<state>/ca/``, per node a
  certificate and identity keys in ``<state>/<node>/keys/`` and a client
  certificate for the CLI in ``<state>/cli/`` (nodes/pki.py); insecure meshes
  get identity keys only;
- **ports**: a node without a fixed port gets a free one on 127.0.0.1 (bind
  port 0, read it, release it), so neighbours' configs can name it;
- **configs**: ``<state>/<node>/node.yaml`` (:meth:`NodeConfig.dump`), with
  neighbours, costs, services and subjects from the topology;
- **processes**: ``subprocess.Popen`` with ``start_new_session=True`` (never
  fork after importing grpc: grpcio does not survive it), stdout and stderr
  to ``<state>/<node>/node.log``; ``<state>/mesh.json`` (:class:`MeshState`)
  records pids, addresses, logs and configs for the other commands.

It then waits for each node's ready file and for every node's routing table to
equal networkx's ground truth (:func:`mesh.sim.truth.expected_tables`), with a
deadline and an error naming the nodes that did not converge.
:class:`MeshHandle` stops, kills and restarts nodes; `mesh down` stops a
detached mesh from another process (:func:`down`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import networkx as nx
from rich.table import Table

from mesh.crypto import AGREEMENT_KEY_FILE, SIGNING_KEY_FILE, NodeIdentity
from mesh.sim.truth import expected_tables
from nodes import pki
from nodes.admin_client import (
    STATE_FILE,
    STATE_ROOT,
    AdminClient,
    AdminError,
    ClientTls,
    MeshState,
    NodeEntry,
    pid_alive,
    read_state,
    table_of,
    target_for,
)
from nodes.config import Neighbour, NodeConfig, TlsFiles, Topology, load_topology

HOST = "127.0.0.1"
CLI_NAME = "cli"
STOP_GRACE = 5.0
"""Seconds nodes get to stop after SIGTERM before SIGKILL."""
POLL_INTERVAL = 0.1
"""Seconds between two looks at ready files and routing tables."""
PROBE_TIMEOUT = 1.0
"""Deadline of each status RPC while waiting (a node that does not answer is "not yet")."""

NODE_COMMAND = (sys.executable, "-m", "nodes.cli")
"""How a node process is started: the `mesh` CLI of this interpreter.

``python -m nodes.cli`` would read better, but nodes/cli.py has no
``if __name__ == "__main__"`` guard, so it would import and exit doing nothing.
"""


class LaunchError(Exception):
    """A mesh could not be prepared, started, converged or stopped; the message is one line."""


def default_state_dir(mesh_id: str) -> Path:
    """``.mesh/<mesh id>/`` under the working directory."""
    return STATE_ROOT / mesh_id


# --- preparing the state dir -------------------------------------------------------------------


def free_ports(count: int, host: str = HOST) -> list[int]:
    """``count`` distinct ports nobody listens on right now (bind port 0, read, release).

    All sockets stay open until every port is chosen, so no two picks collide.
    Another process could still take one before its node binds it; the node
    then fails to start and says so in its log.
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _running_pids(state: MeshState) -> dict[str, int]:
    return {
        name: entry.pid
        for name, entry in state.nodes.items()
        if entry.pid is not None and pid_alive(entry.pid, entry.config)
    }


def prepare(
    topology: Topology, topology_path: Path, state_dir: Path, *, insecure: bool
) -> MeshState:
    """Write certificates, keys and node configs for ``topology`` into ``state_dir``.

    An existing state dir of a stopped mesh is reused: its CA and the nodes'
    identity keys are kept, certificates are renewed and ports chosen afresh.

    Raises:
        LaunchError: the mesh in ``state_dir`` is still running.
        PkiError, KeyFileError, ConfigError: files cannot be written.
    """
    if (state_dir / STATE_FILE).exists():
        try:
            running = _running_pids(read_state(state_dir))
        except AdminError:
            running = {}
        if running:
            pids = ", ".join(f"{n}={p}" for n, p in sorted(running.items()))
            raise LaunchError(
                f"a mesh is already running from {state_dir} ({pids}); stop it with "
                f"`mesh down --state {state_dir}`"
            )
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    state_dir = state_dir.absolute()
    names = list(topology.nodes)
    unfixed = [n for n in names if topology.nodes[n].port is None]
    picked = dict(zip(unfixed, free_ports(len(unfixed)), strict=True))
    ports = {n: topology.nodes[n].port or picked[n] for n in names}
    addresses = {n: f"{HOST}:{ports[n]}" for n in names}

    tls: dict[str, TlsFiles] = {}
    cli: ClientTls | None = None
    if insecure:
        for name in names:
            keys = state_dir / name / "keys"
            if not (keys / SIGNING_KEY_FILE).exists() or not (keys / AGREEMENT_KEY_FILE).exists():
                NodeIdentity.generate(name).save(keys)
    else:
        ca_dir = state_dir / "ca"
        if not (ca_dir / pki.CA_CERT_FILE).exists():
            pki.init_ca(ca_dir, topology.mesh)
        for name in names:
            files = pki.issue_node_certificate(name, ca_dir, state_dir / name / "keys")
            tls[name] = TlsFiles(ca=files.ca, cert=files.cert, key=files.key)
        client = pki.issue_client_certificate(CLI_NAME, ca_dir, state_dir / CLI_NAME)
        cli = ClientTls(ca=str(client.ca), cert=str(client.cert), key=str(client.key))

    state = MeshState(
        mesh=topology.mesh,
        routing=topology.routing,
        state_dir=str(state_dir),
        insecure=insecure,
        topology=str(topology_path.absolute()),
        cli=cli,
    )
    for name in names:
        node_dir = state_dir / name
        spec = topology.nodes[name]
        config = NodeConfig(
            node_id=name,
            mesh=topology.mesh,
            routing=topology.routing,
            listen=addresses[name],
            state_dir=node_dir,
            tls=tls.get(name),
            insecure=insecure,
            neighbours=[
                Neighbour(node=peer, address=addresses[peer], cost=cost)
                for peer, cost in topology.neighbours(name)
            ],
            services=dict(spec.services),
            subjects=list(spec.subjects),
            settings=topology.settings,
        )
        config_path = node_dir / "node.yaml"
        config.dump(config_path)
        state.nodes[name] = NodeEntry(
            address=addresses[name], config=str(config_path), log=str(node_dir / "node.log")
        )
    state.save(state_dir)
    return state


# --- status ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeStatus:
    """One row of the status table."""

    node: str
    address: str
    pid: int | None
    running: bool
    peers_up: int | None = None
    routes: int | None = None
    converged: bool | None = None
    """None: not asked (the node is down or did not answer)."""
    error: str = ""


def expected_routes(graph: nx.Graph) -> dict[str, dict[str, tuple[int, frozenset[str]]]]:
    """Ground-truth tables as ``node -> destination -> (cost, next hops)``."""
    return {
        node: {d: (r.cost, frozenset(r.next_hops)) for d, r in table.items()}
        for node, table in expected_tables(graph).items()
    }


def status_table(rows: Iterable[NodeStatus], title: str = "") -> Table:
    """The live status table `mesh up` and `mesh status` show."""
    table = Table(title=title or None)
    for column in ("node", "address", "pid", "peers up", "routes", "converged"):
        table.add_column(column)
    for row in rows:
        if not row.running:
            converged = "[red]down[/red]"
        elif row.converged is None:
            converged = f"[yellow]?[/yellow] {row.error}" if row.error else "[yellow]?[/yellow]"
        else:
            converged = "[green]yes[/green]" if row.converged else "[yellow]no[/yellow]"
        table.add_row(
            row.node,
            row.address,
            "-" if row.pid is None else str(row.pid),
            "-" if row.peers_up is None else str(row.peers_up),
            "-" if row.routes is None else str(row.routes),
            converged,
        )
    return table


def probe(
    state: MeshState,
    clients: dict[str, AdminClient],
    expected: dict[str, dict[str, tuple[int, frozenset[str]]]],
    *,
    running: Callable[[str], bool],
    peers: bool = True,
) -> list[NodeStatus]:
    """Ask every node for its routes (and peers) and compare with ``expected``."""
    rows: list[NodeStatus] = []
    for name, entry in state.nodes.items():
        alive = running(name)
        if not alive:
            rows.append(NodeStatus(node=name, address=entry.address, pid=entry.pid, running=False))
            continue
        client = clients.get(name)
        if client is None:
            client = clients[name] = AdminClient(target_for(state, name), timeout=PROBE_TIMEOUT)
        try:
            routes = table_of(client.routes())
            peers_up = sum(p.state == "up" for p in client.peers()) if peers else None
        except AdminError as exc:
            rows.append(
                NodeStatus(
                    node=name,
                    address=entry.address,
                    pid=entry.pid,
                    running=True,
                    error=exc.code.name if exc.code is not None else str(exc),
                )
            )
            continue
        rows.append(
            NodeStatus(
                node=name,
                address=entry.address,
                pid=entry.pid,
                running=True,
                peers_up=peers_up,
                routes=len(routes),
                converged=routes == expected.get(name),
            )
        )
    return rows


# --- processes -----------------------------------------------------------------------------------


def _log_tail(path: Path, limit: int = 300) -> str:
    """The last thing a node said: its last JSON log message, or the exception it died of."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    # A crash ends in a (rich) traceback box followed by the exception, maybe over lines.
    start = max(
        (i for i, line in enumerate(lines) if line.startswith(("{", "╰", "Traceback"))),
        default=len(lines) - 1,
    )
    if lines[start].startswith("{") and start == len(lines) - 1:
        try:
            entry = json.loads(lines[start])
        except ValueError:
            entry = {}
        message = f"{entry.get('level', '')}: {entry.get('msg', lines[start])}"
    else:
        message = " ".join(lines[start + 1 :] or lines[-1:])
    return message[:limit]


def _wait_gone(pids: dict[str, int], configs: dict[str, str], timeout: float) -> set[str]:
    """Wait until the processes exit; returns the names still alive at the deadline."""
    deadline = time.monotonic() + timeout
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {n for n in alive if pid_alive(pids[n], configs[n])}
        if alive:
            time.sleep(0.05)
    return alive


def signal_pids(pids: dict[str, int], configs: dict[str, str], grace: float = STOP_GRACE) -> None:
    """SIGTERM each node process, wait up to ``grace`` s, then SIGKILL what is left.

    Processes that are already gone (or whose pid now belongs to another
    program) are skipped silently.
    """
    live = {n: p for n, p in pids.items() if pid_alive(p, configs[n])}
    for pid in live.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for name in _wait_gone(live, configs, grace):
        with contextlib.suppress(ProcessLookupError):
            os.kill(live[name], signal.SIGKILL)
    _wait_gone(live, configs, grace)


class MeshHandle:
    """A running mesh started by this process (see :func:`launch`); a context manager."""

    def __init__(self, topology: Topology, state: MeshState, state_dir: Path) -> None:
        self.topology = topology
        self.state = state
        self.state_dir = state_dir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._clients: dict[str, AdminClient] = {}

    def __enter__(self) -> MeshHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def addresses(self) -> dict[str, str]:
        """Node id -> ``host:port``."""
        return {name: entry.address for name, entry in self.state.nodes.items()}

    @property
    def nodes(self) -> list[str]:
        return list(self.state.nodes)

    def client(self, node: str, timeout: float = PROBE_TIMEOUT) -> AdminClient:
        """A new admin client for ``node`` (the caller closes it)."""
        return AdminClient(target_for(self.state, node), timeout=timeout)

    def running(self, node: str) -> bool:
        process = self.processes.get(node)
        return process is not None and process.poll() is None

    # --- life cycle ---

    def start_node(self, node: str, env: Mapping[str, str] | None = None) -> None:
        """Start ``node``'s process (it must not be running).

        ``env`` adds to the inherited environment; the reliability battery uses it
        to start a node under libfaketime (a clock that is off).
        """
        entry = self.state.nodes[node]
        if self.running(node):
            raise LaunchError(f"node {node!r} is already running (pid {entry.pid})")
        ready = self._ready_file(node)
        ready.unlink(missing_ok=True)
        command = [*NODE_COMMAND, "node", "run", entry.config, "--ready-file", str(ready)]
        with open(entry.log, "ab") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal reaches the launcher only
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )
        self.processes[node] = process
        entry.pid = process.pid
        self._forget_client(node)
        self.state.save(self.state_dir)

    def _ready_file(self, node: str) -> Path:
        return Path(self.state.nodes[node].config).parent / "ready"

    def wait_ready(self, nodes: Iterable[str] | None = None, timeout: float = 30.0) -> None:
        """Wait until each node wrote its ready file (it serves gRPC).

        Raises:
            LaunchError: a node exited, or did not get ready in time (naming which).
        """
        waiting = set(self.nodes if nodes is None else nodes)
        deadline = time.monotonic() + timeout
        while waiting:
            for node in sorted(waiting):
                process = self.processes.get(node)
                if process is None:
                    raise LaunchError(f"node {node!r} was not started")
                ready = self._ready_file(node)
                if ready.exists() and ready.read_text().endswith("\n"):
                    waiting.discard(node)
                    continue
                code = process.poll()
                if code is not None:
                    log = Path(self.state.nodes[node].log)
                    raise LaunchError(
                        f"node {node!r} exited with code {code} before serving; see {log}: "
                        f"{_log_tail(log)}"
                    )
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise LaunchError(
                    f"nodes not serving after {timeout:.0f} s: {', '.join(sorted(waiting))}"
                )
            time.sleep(POLL_INTERVAL)

    def poll(self, graph: nx.Graph | None = None, *, peers: bool = True) -> list[NodeStatus]:
        """One status row per node; ``converged`` compares with ``graph``'s ground truth."""
        expected = expected_routes(self.topology.graph() if graph is None else graph)
        return probe(self.state, self._clients, expected, running=self.running, peers=peers)

    def wait_converged(
        self,
        graph: nx.Graph | None = None,
        timeout: float = 60.0,
        *,
        on_poll: Callable[[list[NodeStatus]], None] | None = None,
    ) -> float:
        """Wait until every node of ``graph`` (default: the topology) has the ground-truth table.

        Nodes not in ``graph`` (killed ones) are not asked. Returns the seconds waited.

        Raises:
            LaunchError: not converged within ``timeout``, naming the nodes that are not.
        """
        graph = self.topology.graph() if graph is None else graph
        expected = expected_routes(graph)
        started = time.monotonic()
        deadline = started + timeout
        while True:
            rows = [
                row
                for row in probe(
                    self.state,
                    self._clients,
                    expected,
                    running=self.running,
                    peers=on_poll is not None,
                )
                if row.node in expected
            ]
            if on_poll is not None:
                on_poll(rows)
            behind = [row for row in rows if not row.converged]
            if not behind:
                return time.monotonic() - started
            if time.monotonic() > deadline:
                details = ", ".join(
                    f"{row.node} ({'down' if not row.running else row.error or 'routes differ'})"
                    for row in behind
                )
                raise LaunchError(
                    f"mesh {self.state.mesh!r} did not converge within {timeout:.0f} s; "
                    f"not converged: {details}"
                )
            time.sleep(POLL_INTERVAL)

    def kill(self, node: str) -> None:
        """SIGKILL ``node`` (a crash, as far as its neighbours can tell) and reap it."""
        process = self.processes.get(node)
        if process is None:
            raise LaunchError(f"node {node!r} is not running")
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait(timeout=STOP_GRACE)
        self.state.nodes[node].pid = None
        self._forget_client(node)
        self.state.save(self.state_dir)

    def restart(
        self, node: str, timeout: float = 30.0, env: Mapping[str, str] | None = None
    ) -> None:
        """Stop ``node`` if it runs, start it again on the same address, wait until it serves."""
        if self.running(node):
            self._stop_processes([node])
        self.start_node(node, env)
        self.wait_ready([node], timeout)

    def set_link(self, a: str, b: str, *, up: bool) -> None:
        """Take the link a-b administratively down (or up) at both ends, so neither
        end dials nor accepts it: a cable pulled, as far as the mesh can tell."""
        for here, there in ((a, b), (b, a)):
            if self.running(here):
                with self.client(here) as admin:
                    admin.set_link(there, up)

    def neighbours(self, node: str) -> list[str]:
        return sorted(self.topology.graph().neighbors(node))

    def isolate(self, node: str) -> None:
        """Cut every link of ``node`` (it keeps running, alone)."""
        for peer in self.neighbours(node):
            self.set_link(node, peer, up=False)

    def rejoin(self, node: str) -> None:
        """Restore every link :meth:`isolate` cut."""
        for peer in self.neighbours(node):
            self.set_link(node, peer, up=True)

    def pause(self, node: str) -> None:
        """SIGSTOP ``node``: alive to the kernel (its sockets stay open) but silent,
        like a process stuck in a long GC pause or a hung disk."""
        self._signal(node, signal.SIGSTOP)

    def resume(self, node: str) -> None:
        """SIGCONT a paused ``node``; it carries on with whatever it had queued."""
        self._signal(node, signal.SIGCONT)

    def _signal(self, node: str, signum: signal.Signals) -> None:
        process = self.processes.get(node)
        if process is None or process.poll() is not None:
            raise LaunchError(f"node {node!r} is not running")
        process.send_signal(signum)

    def _stop_processes(self, nodes: list[str]) -> None:
        live = {n: self.processes[n] for n in nodes if n in self.processes}
        for process in live.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
                    process.send_signal(signal.SIGCONT)  # a paused node must run to exit
        deadline = time.monotonic() + STOP_GRACE
        for process in live.values():
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait(timeout=STOP_GRACE)
        for node in live:
            self.state.nodes[node].pid = None
            self._forget_client(node)
            del self.processes[node]

    def stop(self) -> None:
        """Stop every node (SIGTERM, up to 5 s, then SIGKILL); keep the state dir.

        Only the pids are cleared from ``mesh.json``; configs, logs and
        certificates stay for inspection. Safe to call twice.
        """
        self._stop_processes(list(self.processes))
        for node in list(self._clients):
            self._forget_client(node)
        if (self.state_dir / STATE_FILE).exists():
            self.state.save(self.state_dir)

    def detach(self) -> None:
        """Leave the processes running after this handle is gone (`mesh up --detach`)."""
        for node in list(self._clients):
            self._forget_client(node)
        self.processes.clear()

    def _forget_client(self, node: str) -> None:
        client = self._clients.pop(node, None)
        if client is not None:
            client.close()


def start(
    topology_path: Path, state_dir: Path | None = None, *, insecure: bool = False
) -> MeshHandle:
    """Prepare the state dir and start every node; does not wait for anything.

    Raises:
        ConfigError: the topology is invalid.
        LaunchError: a mesh is already running from the state dir.
        PkiError, KeyFileError: certificates or keys cannot be written.
    """
    topology = load_topology(topology_path)
    state_dir = default_state_dir(topology.mesh) if state_dir is None else state_dir
    state = prepare(topology, topology_path, state_dir, insecure=insecure)
    handle = MeshHandle(topology, state, Path(state.state_dir))
    try:
        for node in state.nodes:
            handle.start_node(node)
    except BaseException:
        handle.stop()
        raise
    return handle


def launch(
    topology_path: Path,
    state_dir: Path | None = None,
    *,
    insecure: bool = False,
    timeout: float = 60.0,
) -> MeshHandle:
    """Start the mesh of ``topology_path`` and return once every routing table is right.

    The processes are stopped again if anything fails on the way.

    Raises:
        ConfigError, PkiError, KeyFileError: as :func:`start`.
        LaunchError: a node exited or the mesh did not converge within ``timeout`` s.
    """
    handle = start(topology_path, state_dir, insecure=insecure)
    try:
        deadline = time.monotonic() + timeout
        handle.wait_ready(timeout=timeout)
        handle.wait_converged(timeout=max(0.0, deadline - time.monotonic()))
    except BaseException:
        handle.stop()
        raise
    return handle


# --- a mesh this process did not start ------------------------------------------------------------


def down(state_dir: Path, *, keep_state: bool = False, grace: float = STOP_GRACE) -> list[str]:
    """Stop the mesh launched into ``state_dir``; returns the nodes that were running.

    Dead pids (and pids now used by other programs) are tolerated. The state
    dir is deleted unless ``keep_state``.

    Raises:
        AdminError: there is no mesh state in ``state_dir``.
    """
    state = read_state(state_dir)
    pids = {n: e.pid for n, e in state.nodes.items() if e.pid is not None}
    configs = {n: e.config for n, e in state.nodes.items()}
    running = sorted(n for n, p in pids.items() if pid_alive(p, configs[n]))
    signal_pids(pids, configs, grace)
    if keep_state:
        for entry in state.nodes.values():
            entry.pid = None
        state.save(state_dir)
    else:
        shutil.rmtree(state_dir)
    return running


def status(state_dir: Path) -> list[NodeStatus]:
    """The status of the mesh in ``state_dir``, as seen from outside.

    ``converged`` compares with the ground truth of the topology restricted to
    the nodes whose processes run, so a mesh that routed around a dead node
    counts as converged.

    Raises:
        AdminError, ConfigError: no state, or its topology file is gone or invalid.
    """
    state = read_state(state_dir)

    def running(node: str) -> bool:
        entry = state.nodes[node]
        return entry.pid is not None and pid_alive(entry.pid, entry.config)

    graph = load_topology(Path(state.topology)).graph()
    graph = graph.subgraph([n for n in graph.nodes if running(str(n))]).copy()
    clients: dict[str, AdminClient] = {}
    try:
        return probe(state, clients, expected_routes(graph), running=running)
    finally:
        for client in clients.values():
            client.close()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C while a foreground `mesh up` runs, so nodes are stopped."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


__all__ = [
    "NODE_COMMAND",
    "LaunchError",
    "MeshHandle",
    "NodeStatus",
    "default_state_dir",
    "down",
    "expected_routes",
    "free_ports",
    "launch",
    "prepare",
    "probe",
    "signal_pids",
    "start",
    "status",
    "status_table",
    "sigterm_as_interrupt",
]
