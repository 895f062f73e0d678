"""`mesh lab`: a topology on real network stacks, one Linux network namespace per node.

:func:`up` turns a topology into a lab (needs root, ``ip`` from iproute2):

- **namespaces**: one per node, named ``mw-<lab id>-<node>``; the lab id is a
  short hash of the absolute state dir, so two labs (and every namespace the
  lab did not make) are never touched;
- **links**: a veth pair per topology link, created directly inside the two
  namespaces (``ip link add ... netns A type veth peer ... netns B``, so the
  host's interfaces and routes are never touched), named
  ``mw<lab id><link index>a|b`` (<= 15 characters), with its own /30 subnet
  out of ``10.77.0.0/16`` (link ``i`` gets ``10.77.0.0 + 4 i``: ``.1`` on the
  ``a`` end, ``.2`` on the ``b`` end). No namespace has a default route, so a
  node can only reach its neighbours, and only over their shared link;
- **impairments** (the link's ``delay_ms``, ``loss`` and ``rate_mbit``):
  ``tc netem`` when the kernel has it; otherwise loss with nftables in the
  receiving namespace (``iifname VETH numgen random mod 10000 < N drop``),
  rate with ``tc tbf`` on both ends, and delay with a userspace relay in each
  namespace (:func:`run_relay`) that holds every chunk of a neighbour's TCP
  connection for the link's delay in each direction. :func:`up` probes which
  methods work and records them; ``mesh lab status`` shows them;
- **processes**: per namespace a relay (``ip netns exec NS python -m
  nodes.lab relay RELAY.json``) that bridges a Unix socket in the state dir to
  the node's gRPC port (the admin API, without any route between the host and
  the lab) and runs the delay listeners; and the node itself (``ip netns exec
  NS python -m nodes.cli node run CONFIG``) listening on ``0.0.0.0:7000``
  inside its namespace, dialling its neighbours by their veth addresses.

The state dir holds what :func:`nodes.launcher.prepare` writes (CA,
certificates, node configs, ``mesh.json`` whose node addresses are the Unix
sockets, so ``mesh routes --state DIR --node X`` and friends work on a lab),
plus ``lab.json`` (:class:`LabState`). Every namespace is recorded in
``lab.json`` before it is made, and :func:`down` also removes namespaces with
the lab's prefix that the file does not list, so a lab is removed completely
even after a crash half-way through :func:`up`; :func:`down` is idempotent.

:class:`Lab` drives a lab from Python (tests): cut, heal, partition, impair
(change a link's loss and rate cap at runtime), kill, start, status, the
kernel's per-link counters and bounded waits for convergence against networkx.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx

from nodes.admin_client import (
    STATE_FILE,
    STATE_ROOT,
    AdminClient,
    AdminError,
    MeshState,
    pid_alive,
    read_state,
    target_for,
)
from nodes.config import Neighbour, Topology, load_node_config, load_topology
from nodes.launcher import (
    NODE_COMMAND,
    POLL_INTERVAL,
    STOP_GRACE,
    LaunchError,
    NodeStatus,
    _log_tail,
    expected_routes,
    prepare,
    probe,
    signal_pids,
)

LAB_FILE = "lab.json"
PREFIX = "mw"
"""Every namespace of a lab is ``mw-<lab id>-<node>``; every veth ``mw<lab id>...``."""
NODE_PORT = 7000
"""The node's gRPC port inside its namespace (a topology's fixed port wins)."""
RELAY_PORT = 7001
"""The delay relay's port on each of a node's link addresses."""
SUBNET = ipaddress.IPv4Network("10.77.0.0/16")
"""Link ``i`` is ``SUBNET[4 i] /30``; only ever configured inside the lab's namespaces."""
NFT_TABLE = "mwlab"
UNIX_PATH_MAX = 107
READY_TIMEOUT = 30.0
COMMAND_TIMEOUT = 15.0
APT_HINT = "apt-get install -y iproute2 nftables"


class LabError(Exception):
    """A lab could not be made, changed or removed; the message is one line."""


# --- state ----------------------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class LabLink:
    """One topology link as a veth pair."""

    index: int
    a: str
    b: str
    veth_a: str
    veth_b: str
    ip_a: str
    ip_b: str
    delay_ms: float = 0.0
    loss: float = 0.0
    rate_mbit: float | None = None
    cut: bool = False

    def ends(self) -> tuple[tuple[str, str, str], tuple[str, str, str]]:
        """``(node, veth, ip)`` of both ends."""
        return (self.a, self.veth_a, self.ip_a), (self.b, self.veth_b, self.ip_b)

    def joins(self, x: str, y: str) -> bool:
        return {self.a, self.b} == {x, y}


@dataclass(slots=True, kw_only=True)
class LabNode:
    """One node's namespace and its relay process."""

    namespace: str
    port: int
    admin_socket: str
    relay_config: str
    relay_log: str
    relay_pid: int | None = None


@dataclass(slots=True, kw_only=True)
class LabState:
    """``<state>/lab.json``."""

    lab_id: str
    mesh: str
    state_dir: str
    topology: str
    methods: dict[str, str]
    """Impairment -> method in use: ``delay``: netem | relay; ``loss``: netem | nftables;
    ``rate``: netem | tbf."""
    namespaces: list[str] = field(default_factory=list)
    """Every namespace this lab made (recorded before it is made)."""
    nodes: dict[str, LabNode] = field(default_factory=dict)
    links: list[LabLink] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: Path) -> LabState:
        try:
            data = json.loads(text)
            nodes = {n: LabNode(**e) for n, e in data.pop("nodes").items()}
            links = [LabLink(**e) for e in data.pop("links")]
            return cls(nodes=nodes, links=links, **data)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise LabError(f"{source} is not a lab state file: {exc}") from None

    def save(self) -> None:
        path = Path(self.state_dir) / LAB_FILE
        partial = path.with_name(f".{LAB_FILE}.partial")
        partial.write_text(self.to_json(), encoding="utf-8")
        partial.replace(path)

    def link(self, x: str, y: str) -> LabLink:
        for link in self.links:
            if link.joins(x, y):
                return link
        for name in (x, y):
            if name not in self.nodes:
                raise LabError(f"lab {self.mesh!r} has no node {name!r} (nodes: {_names(self)})")
        raise LabError(f"lab {self.mesh!r} has no link between {x!r} and {y!r}")


def _names(state: LabState) -> str:
    return ", ".join(sorted(state.nodes))


def lab_id_for(state_dir: Path) -> str:
    """Six hex digits derived from the absolute state dir: one lab per state dir."""
    return hashlib.sha256(str(state_dir.absolute()).encode()).hexdigest()[:6]


def namespace_prefix(lab_id: str) -> str:
    return f"{PREFIX}-{lab_id}-"


def default_state_dir(mesh: str) -> Path:
    """``.mesh/lab-<mesh id>/`` under the working directory."""
    return STATE_ROOT / f"lab-{mesh}"


def read_lab(state_dir: Path) -> LabState:
    """The lab in ``state_dir``.

    Raises:
        LabError: there is no readable ``lab.json``.
    """
    path = state_dir / LAB_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LabError(
            f"no lab in {state_dir}: {path} does not exist (see `mesh lab up`)"
        ) from None
    except OSError as exc:
        raise LabError(f"cannot read {path}: {exc.strerror}") from None
    return LabState.from_json(text, path)


def find_lab_dir(state: Path | None = None, mesh: str | None = None) -> Path:
    """``--state``, else ``.mesh/lab-<--mesh>``, else the only lab under ``.mesh/``.

    Raises:
        LabError: no lab, or several and none chosen.
    """
    if state is not None:
        return state
    if mesh is not None:
        return default_state_dir(mesh)
    found = sorted(p.parent for p in STATE_ROOT.glob(f"*/{LAB_FILE}"))
    if not found:
        raise LabError(f"no lab under {STATE_ROOT}/: start one with `mesh lab up TOPOLOGY`")
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise LabError(f"several labs under {STATE_ROOT}/ ({names}): choose with --state DIR")
    return found[0]


# --- running commands -----------------------------------------------------------------------------


def _run(args: list[str], *, stdin: str | None = None, check: bool = True) -> str:
    """Run one command; a failure becomes a one-line LabError naming the command."""
    try:
        done = subprocess.run(
            args,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise LabError(f"{args[0]} is not installed ({APT_HINT})") from None
    except subprocess.TimeoutExpired:
        raise LabError(
            f"`{' '.join(args)}` did not finish within {COMMAND_TIMEOUT:.0f} s"
        ) from None
    if check and done.returncode != 0:
        message = " ".join((done.stderr or done.stdout).split()) or f"exit code {done.returncode}"
        raise LabError(f"`{' '.join(args)}` failed: {message}")
    return done.stdout


def check_environment() -> None:
    """Root, and ``ip netns`` works.

    Raises:
        LabError: saying what is missing.
    """
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces): run it with sudo")
    if shutil.which("ip") is None:
        raise LabError(f"`ip` is not installed ({APT_HINT})")
    _run(["ip", "netns", "list"])


def list_namespaces() -> list[str]:
    """Names of every network namespace ``ip netns`` knows."""
    out = _run(["ip", "netns", "list"])
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _ns(namespace: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", namespace, *args]


def probe_methods(namespace: str) -> dict[str, str]:
    """Which impairment methods work, tried on ``lo`` of one of the lab's own namespaces."""
    with contextlib.suppress(LabError):
        if shutil.which("modprobe"):
            _run(["modprobe", "sch_netem"], check=False)
    netem = True
    try:
        _run(["tc", "-n", namespace, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"])
        _run(["tc", "-n", namespace, "qdisc", "del", "dev", "lo", "root"], check=False)
    except LabError:
        netem = False
    if netem:
        return {"delay": "netem", "loss": "netem", "rate": "netem"}
    loss = "nftables" if shutil.which("nft") else "unavailable (nft missing: " + APT_HINT + ")"
    return {"delay": "relay", "loss": loss, "rate": "tbf"}


# --- making a lab ---------------------------------------------------------------------------------


def _link_addresses(index: int) -> tuple[str, str]:
    base = int(SUBNET.network_address) + 4 * index
    if base + 3 > int(SUBNET.broadcast_address):
        raise LabError(f"too many links: at most {SUBNET.num_addresses // 4}")
    return str(ipaddress.IPv4Address(base + 1)), str(ipaddress.IPv4Address(base + 2))


def plan(topology: Topology, topology_path: Path, state_dir: Path) -> LabState:
    """Names, addresses and files of a lab, without making anything."""
    state_dir = state_dir.absolute()
    lab_id = lab_id_for(state_dir)
    prefix = namespace_prefix(lab_id)
    state = LabState(
        lab_id=lab_id,
        mesh=topology.mesh,
        state_dir=str(state_dir),
        topology=str(topology_path.absolute()),
        methods={},
    )
    for name, spec in topology.nodes.items():
        node_dir = state_dir / name
        socket_path = node_dir / "admin.sock"
        if len(str(socket_path)) > UNIX_PATH_MAX:
            raise LabError(
                f"state dir {state_dir} is too long for a Unix socket path "
                f"({len(str(socket_path))} > {UNIX_PATH_MAX} characters): choose a shorter --state"
            )
        state.nodes[name] = LabNode(
            namespace=prefix + name,
            port=spec.port or NODE_PORT,
            admin_socket=str(socket_path),
            relay_config=str(node_dir / "relay.json"),
            relay_log=str(node_dir / "relay.log"),
        )
    for index, link in enumerate(topology.links):
        ip_a, ip_b = _link_addresses(index)
        tag = f"{PREFIX}{lab_id}{index:04x}"
        if len(tag) + 1 > 15:
            raise LabError(f"too many links for veth names: at most {16**4}")
        state.links.append(
            LabLink(
                index=index,
                a=link.a,
                b=link.b,
                veth_a=tag + "a",
                veth_b=tag + "b",
                ip_a=ip_a,
                ip_b=ip_b,
                delay_ms=link.delay_ms,
                loss=link.loss,
                rate_mbit=link.rate_mbit,
            )
        )
    return state


def _make_namespaces(state: LabState) -> None:
    for node in state.nodes.values():
        state.namespaces.append(node.namespace)
        state.save()  # recorded before it exists: `down` finds it after any crash
        _run(["ip", "netns", "add", node.namespace])
        _run(["ip", "-n", node.namespace, "link", "set", "lo", "up"])


def _make_links(state: LabState) -> None:
    for link in state.links:
        ns_a = state.nodes[link.a].namespace
        ns_b = state.nodes[link.b].namespace
        # Both ends are born inside the lab's namespaces: the host never sees them.
        _run(
            [
                "ip",
                "link",
                "add",
                link.veth_a,
                "netns",
                ns_a,
                "type",
                "veth",
                "peer",
                "name",
                link.veth_b,
                "netns",
                ns_b,
            ]
        )
        for namespace, veth, ip in ((ns_a, link.veth_a, link.ip_a), (ns_b, link.veth_b, link.ip_b)):
            _run(["ip", "-n", namespace, "addr", "add", f"{ip}/30", "dev", veth])
            _run(["ip", "-n", namespace, "link", "set", veth, "up"])


def _percent_of_10000(loss: float) -> int:
    return max(0, min(10_000, round(loss * 10_000)))


def _qdisc_args(state: LabState, link: LabLink) -> list[str]:
    """The root qdisc both veth ends of ``link`` need for its impairments (``[]``: none).

    With netem one qdisc carries delay, loss and rate; without it only the rate
    is a qdisc (tbf), loss is an nftables rule and delay the relay.
    """
    if state.methods["delay"] == "netem":
        args = []
        if link.delay_ms:
            args += ["delay", f"{link.delay_ms}ms"]
        if link.loss:
            args += ["loss", f"{link.loss * 100:.3f}%"]
        if link.rate_mbit:
            args += ["rate", f"{link.rate_mbit}mbit"]
        return ["netem", *args] if args else []
    if not link.rate_mbit:
        return []
    rate_bytes = link.rate_mbit * 1_000_000 / 8
    burst = max(16_000, int(rate_bytes / 50))
    return [
        "tbf",
        "rate",
        f"{link.rate_mbit}mbit",
        "burst",
        str(burst),
        "latency",
        "200ms",
    ]


def _set_qdiscs(state: LabState, link: LabLink, *, fresh: bool) -> None:
    """Give both ends of ``link`` the qdisc its impairments need (``replace``: also at runtime).

    A fresh veth has no qdisc to remove; otherwise an unneeded one is deleted,
    and "nothing to delete" is not an error.
    """
    args = _qdisc_args(state, link)
    for node, veth, _ip in link.ends():
        namespace = state.nodes[node].namespace
        if args:
            _run(["tc", "-n", namespace, "qdisc", "replace", "dev", veth, "root", *args])
        elif not fresh:
            _run(["tc", "-n", namespace, "qdisc", "del", "dev", veth, "root"], check=False)


def _drop_counter(veth: str) -> str:
    return f"drop_{veth}"


def _loss_script(state: LabState, namespace: str) -> str:
    """An nft script that atomically replaces the lab's table in ``namespace``.

    One rule per lossy link end in the namespace, dropping at the receiving
    end (so the sender sees an ordinary lost packet), each with a named
    counter so :meth:`Lab.counters` can tell what the rule dropped. The
    ``table {}; delete table`` prefix makes the replacement one transaction
    whether or not the table exists: there is no moment without the rules.
    """
    counters: list[str] = []
    rules: list[str] = []
    for link in state.links:
        if not link.loss:
            continue
        for node, veth, _ip in link.ends():
            if state.nodes[node].namespace != namespace:
                continue
            if state.methods["loss"] != "nftables":
                raise LabError(f"link {link.a}-{link.b} has loss but {state.methods['loss']}")
            name = _drop_counter(veth)
            counters.append(f"  counter {name} {{}}")
            rules.append(
                f'    iifname "{veth}" numgen random mod 10000 < '
                f'{_percent_of_10000(link.loss)} counter name "{name}" drop'
            )
    script = f"table inet {NFT_TABLE} {{}}\ndelete table inet {NFT_TABLE}\n"
    if rules:
        script += (
            f"table inet {NFT_TABLE} {{\n" + "\n".join(counters) + "\n  chain input {\n"
            "    type filter hook input priority 0; policy accept;\n"
            + "\n".join(rules)
            + "\n  }\n}\n"
        )
    return script


def _set_loss(state: LabState, namespaces: Iterable[str], *, fresh: bool) -> None:
    """(Re)write the loss rules of ``namespaces`` (nftables method only; netem has its qdisc).

    A fresh namespace with no lossy link gets no table at all.
    """
    if state.methods["loss"] == "netem":
        return
    for namespace in namespaces:
        lossy = any(
            link.loss and namespace in {state.nodes[end].namespace for end in (link.a, link.b)}
            for link in state.links
        )
        if not lossy and (fresh or state.methods["loss"] != "nftables"):
            continue  # nothing to drop, and no table to clear (or no nft to clear it with)
        _run(_ns(namespace, "nft", "-f", "-"), stdin=_loss_script(state, namespace))


def _apply_impairments(state: LabState) -> None:
    for link in state.links:
        _set_qdiscs(state, link, fresh=True)
    _set_loss(state, [node.namespace for node in state.nodes.values()], fresh=True)


def _relay_spec(state: LabState, name: str) -> dict[str, Any]:
    node = state.nodes[name]
    delays = []
    if state.methods.get("delay") == "relay":
        for link in state.links:
            for end, _veth, ip in link.ends():
                if end == name and link.delay_ms > 0:
                    delays.append(
                        {
                            "listen": f"{ip}:{RELAY_PORT}",
                            "target": f"127.0.0.1:{node.port}",
                            "delay_ms": link.delay_ms,
                        }
                    )
    return {
        "admin": {"unix": node.admin_socket, "target": f"127.0.0.1:{node.port}"},
        "delays": delays,
        "ready": str(Path(node.relay_config).with_name("relay.ready")),
    }


def _dial_address(state: LabState, link: LabLink, peer: str) -> str:
    """How a node reaches ``peer`` over ``link``: the peer's veth address (its delay relay)."""
    ip = link.ip_a if link.a == peer else link.ip_b
    port = state.nodes[peer].port
    if state.methods.get("delay") == "relay" and link.delay_ms > 0:
        port = RELAY_PORT
    return f"{ip}:{port}"


def _write_configs(state: LabState, mesh_state: MeshState) -> None:
    """Rewrite the launcher's node configs for the lab's addresses (listen, neighbours)."""
    for name, entry in mesh_state.nodes.items():
        path = Path(entry.config)
        config = load_node_config(path)
        neighbours = []
        for neighbour in config.neighbours:
            link = state.link(name, neighbour.node)
            neighbours.append(
                Neighbour(
                    node=neighbour.node,
                    address=_dial_address(state, link, neighbour.node),
                    cost=neighbour.cost,
                )
            )
        config = config.model_copy(
            update={"listen": f"0.0.0.0:{state.nodes[name].port}", "neighbours": neighbours}
        )
        config.dump(path)
        entry.address = "unix:" + state.nodes[name].admin_socket
        relay = Path(state.nodes[name].relay_config)
        relay.write_text(json.dumps(_relay_spec(state, name), indent=2) + "\n", encoding="utf-8")
    mesh_state.save(Path(state.state_dir))


def up(
    topology_path: Path,
    state_dir: Path | None = None,
    *,
    insecure: bool = False,
    timeout: float = 60.0,
    wait: bool = True,
) -> Lab:
    """Make the lab of ``topology_path`` and (with ``wait``) return once routes are right.

    Anything made is removed again if a step fails.

    Raises:
        LabError: not root, no iproute2, a lab already in ``state_dir``, or a step failed.
        LaunchError: a node did not start or the mesh did not converge in time.
        ConfigError, PkiError, KeyFileError: as :func:`nodes.launcher.prepare`.
    """
    check_environment()
    topology = load_topology(topology_path)
    state_dir = (default_state_dir(topology.mesh) if state_dir is None else state_dir).absolute()
    state = plan(topology, topology_path, state_dir)
    leftovers = [n for n in list_namespaces() if n.startswith(namespace_prefix(state.lab_id))]
    if leftovers or (state_dir / LAB_FILE).exists():
        raise LabError(
            f"a lab already exists in {state_dir}"
            + (f" (namespaces: {', '.join(leftovers)})" if leftovers else "")
            + f": remove it with `mesh lab down --state {state_dir}`"
        )
    mesh_state = prepare(topology, topology_path, state_dir, insecure=insecure)
    lab = Lab(state_dir, state=state, topology=topology)
    try:
        state.save()
        _make_namespaces(state)
        state.methods = probe_methods(next(iter(state.nodes.values())).namespace)
        state.save()
        _make_links(state)
        _apply_impairments(state)
        _write_configs(state, mesh_state)
        lab.mesh_state = mesh_state
        for name in state.nodes:
            lab.start_relay(name)
        lab.wait_relays(timeout=READY_TIMEOUT)
        for name in state.nodes:
            lab.start(name, wait=False)
        if wait:
            deadline = time.monotonic() + timeout
            lab.wait_ready(timeout=timeout)
            lab.wait_converged(timeout=max(1.0, deadline - time.monotonic()))
    except BaseException:
        with contextlib.suppress(Exception):
            down(state_dir, keep_state=True)
        raise
    return lab


# --- removing a lab -------------------------------------------------------------------------------


def _kill_namespace_processes(namespace: str) -> list[int]:
    """SIGKILL every process in ``namespace`` (only the lab's own namespaces are passed)."""
    out = _run(["ip", "netns", "pids", namespace], check=False)
    pids = [int(p) for p in out.split() if p.isdigit()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def down(state_dir: Path, *, keep_state: bool = False, grace: float = STOP_GRACE) -> list[str]:
    """Remove every process, namespace and veth of the lab in ``state_dir``; idempotent.

    Nodes get SIGTERM (then SIGKILL after ``grace`` s); anything still running
    in one of the lab's namespaces is killed; each namespace is deleted (its
    veth ends go with it). Namespaces with the lab's prefix are removed even
    when ``lab.json`` is gone. Returns the namespaces removed. The state dir is
    deleted unless ``keep_state``.
    """
    state_dir = state_dir.absolute()
    lab_id = lab_id_for(state_dir)
    state: LabState | None = None
    with contextlib.suppress(LabError):
        state = read_lab(state_dir)
    if state is not None:
        lab_id = state.lab_id
    prefix = namespace_prefix(lab_id)
    with contextlib.suppress(AdminError):
        mesh_state = read_state(state_dir)
        pids = {n: e.pid for n, e in mesh_state.nodes.items() if e.pid is not None}
        configs = {n: e.config for n, e in mesh_state.nodes.items()}
        signal_pids(pids, configs, grace)
        for entry in mesh_state.nodes.values():
            entry.pid = None
        if (state_dir / STATE_FILE).exists():
            mesh_state.save(state_dir)
    if state is not None:
        for node in state.nodes.values():
            if node.relay_pid is not None and pid_alive(node.relay_pid, node.relay_config):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.relay_pid, signal.SIGKILL)
            node.relay_pid = None
    existing = set(list_namespaces()) if shutil.which("ip") else set()
    recorded = set(state.namespaces) if state is not None else set()
    ours = sorted(n for n in existing if n.startswith(prefix) or n in recorded)
    removed = []
    for namespace in ours:
        deadline = time.monotonic() + grace
        while _kill_namespace_processes(namespace) and time.monotonic() < deadline:
            time.sleep(0.05)
        _run(["ip", "netns", "del", namespace], check=False)
        removed.append(namespace)
    left = [n for n in list_namespaces() if n in ours] if shutil.which("ip") else []
    if left:
        raise LabError(f"could not delete namespaces: {', '.join(left)}")
    if state is not None:
        for node in state.nodes.values():
            Path(node.admin_socket).unlink(missing_ok=True)
    if keep_state:
        if state is not None and (state_dir / LAB_FILE).exists():
            state.namespaces = []
            state.save()
            (state_dir / LAB_FILE).rename(state_dir / f"{LAB_FILE}.down")
    elif state is not None and state_dir.exists():
        shutil.rmtree(state_dir, ignore_errors=True)
    return removed


def leftovers(state_dir: Path) -> dict[str, list[str]]:
    """What of the lab of ``state_dir`` still exists (empty lists after :func:`down`).

    ``namespaces`` with the lab's prefix, ``veths`` with its prefix in the
    host namespace (there should never be any), ``processes`` whose command
    line names the state dir (nodes and relays), as ``pid: command``.
    """
    state_dir = state_dir.absolute()
    lab_id = lab_id_for(state_dir)
    prefix = namespace_prefix(lab_id)
    namespaces = [n for n in list_namespaces() if n.startswith(prefix)]
    veths = []
    for line in _run(["ip", "-o", "link", "show"], check=False).splitlines():
        parts = line.split(":")
        if len(parts) >= 3:
            name = parts[1].strip().split("@")[0]
            if name.startswith(f"{PREFIX}{lab_id}"):
                veths.append(name)
    processes = []
    needle = str(state_dir).encode()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes()
            status = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if needle in args and status != "Z" and int(proc.name) != os.getpid():
            command = args.replace(b"\0", b" ").decode(errors="replace").strip()
            processes.append(f"{proc.name}: {command}")
    return {"namespaces": namespaces, "veths": veths, "processes": processes}


# --- a running lab --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkStatus:
    """One link row of ``mesh lab status``."""

    a: str
    b: str
    veth_a: str
    veth_b: str
    address_a: str
    address_b: str
    state: str
    """``up``, ``cut`` or what the kernel reports when it disagrees with the lab (``missing``)."""
    delay_ms: float
    loss: float
    rate_mbit: float | None
    methods: dict[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkCounters:
    """Traffic on one link as the kernel counted it (:meth:`Lab.counters`)."""

    a: str
    b: str
    bytes_ab: int
    """Bytes ``a``'s veth end sent towards ``b``."""
    packets_ab: int
    dropped_ab: int
    """Packets from ``a`` to ``b`` the impairments dropped."""
    bytes_ba: int
    packets_ba: int
    dropped_ba: int

    def since(self, earlier: LinkCounters) -> LinkCounters:
        """The traffic between ``earlier`` and this reading (a dropped count that went
        down, because the loss rule was replaced, counts from zero)."""
        return LinkCounters(
            a=self.a,
            b=self.b,
            bytes_ab=self.bytes_ab - earlier.bytes_ab,
            packets_ab=self.packets_ab - earlier.packets_ab,
            dropped_ab=_delta(self.dropped_ab, earlier.dropped_ab),
            bytes_ba=self.bytes_ba - earlier.bytes_ba,
            packets_ba=self.packets_ba - earlier.packets_ba,
            dropped_ba=_delta(self.dropped_ba, earlier.dropped_ba),
        )


def _delta(now: int, earlier: int) -> int:
    return now - earlier if now >= earlier else now


class Lab:
    """A lab on disk (``lab.json`` + ``mesh.json``), driven from this process.

    Every method works from the state files and pids, so a lab made by one
    process (``mesh lab up``) is driven by another (``mesh lab cut``).
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        state: LabState | None = None,
        topology: Topology | None = None,
    ) -> None:
        self.state_dir = state_dir.absolute()
        self.state = read_lab(self.state_dir) if state is None else state
        self.topology = load_topology(Path(self.state.topology)) if topology is None else topology
        self.mesh_state: MeshState | None = None
        with contextlib.suppress(AdminError):
            self.mesh_state = read_state(self.state_dir)
        self._processes: dict[int, subprocess.Popen[bytes]] = {}
        self._clients: dict[str, AdminClient] = {}

    # --- bookkeeping ---

    @property
    def mesh(self) -> MeshState:
        if self.mesh_state is None:
            self.mesh_state = read_state(self.state_dir)
        return self.mesh_state

    @property
    def nodes(self) -> list[str]:
        return list(self.state.nodes)

    def _node(self, name: str) -> LabNode:
        node = self.state.nodes.get(name)
        if node is None:
            raise LabError(
                f"lab {self.state.mesh!r} has no node {name!r} (nodes: {_names(self.state)})"
            )
        return node

    def _save(self) -> None:
        self.state.save()
        self.mesh.save(self.state_dir)

    def _forget_client(self, name: str) -> None:
        client = self._clients.pop(name, None)
        if client is not None:
            client.close()

    def close(self) -> None:
        """Close admin channels and reap children (the lab keeps running)."""
        for name in list(self._clients):
            self._forget_client(name)
        for process in self._processes.values():
            process.poll()

    def pid(self, name: str) -> int | None:
        return self.mesh.nodes[name].pid

    def running(self, name: str) -> bool:
        entry = self.mesh.nodes[name]
        if entry.pid is None:
            return False
        process = self._processes.get(entry.pid)
        if process is not None:
            # Our own child: authoritative, and safe while `ip netns exec` is still
            # exec'ing python (its /proc cmdline can read empty for a moment).
            return process.poll() is None
        return pid_alive(entry.pid, entry.config)

    def client(self, name: str, timeout: float = 5.0) -> AdminClient:
        """A new admin client for ``name`` over its Unix socket (the caller closes it)."""
        self._node(name)
        return AdminClient(target_for(self.mesh, name), timeout=timeout)

    def _alive(self, pid: int, config: str) -> bool:
        """Whether a process runs; a child of ours is asked directly.

        /proc/PID/cmdline is briefly empty while `ip netns exec` execs the
        command, so the cmdline check of ``pid_alive`` can say "gone" for a
        process that is starting; our own children's ``poll`` cannot.
        """
        process = self._processes.get(pid)
        if process is not None:
            return process.poll() is None
        return pid_alive(pid, config)

    def _spawn(self, namespace: str, command: list[str], log: str) -> int:
        with open(log, "ab") as out:
            process = subprocess.Popen(
                _ns(namespace, *command),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self._processes[process.pid] = process
        return process.pid

    # --- processes ---

    def start_relay(self, name: str) -> None:
        node = self._node(name)
        ready = Path(node.relay_config).with_name("relay.ready")
        ready.unlink(missing_ok=True)
        node.relay_pid = self._spawn(
            node.namespace,
            [sys.executable, "-m", "nodes.lab", "relay", node.relay_config],
            node.relay_log,
        )
        self.state.save()

    def wait_relays(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        waiting = set(self.state.nodes)
        while waiting:
            for name in sorted(waiting):
                node = self.state.nodes[name]
                if Path(node.relay_config).with_name("relay.ready").exists():
                    waiting.discard(name)
                elif node.relay_pid is None or not self._alive(node.relay_pid, node.relay_config):
                    raise LabError(
                        f"relay of {name!r} exited; see {node.relay_log}: "
                        f"{_log_tail(Path(node.relay_log))}"
                    )
            if waiting and time.monotonic() > deadline:
                raise LabError(
                    f"relays not ready after {timeout:.0f} s: {', '.join(sorted(waiting))}"
                )
            if waiting:
                time.sleep(POLL_INTERVAL)

    def start(self, name: str, *, wait: bool = True, timeout: float = READY_TIMEOUT) -> None:
        """Start ``name``'s node process in its namespace (it must not be running)."""
        node = self._node(name)
        entry = self.mesh.nodes[name]
        if self.running(name):
            raise LabError(f"node {name!r} is already running (pid {entry.pid})")
        ready = Path(entry.config).parent / "ready"
        ready.unlink(missing_ok=True)
        entry.pid = self._spawn(
            node.namespace,
            [*NODE_COMMAND, "node", "run", entry.config, "--ready-file", str(ready)],
            entry.log,
        )
        self._forget_client(name)
        self._save()
        if wait:
            self.wait_ready([name], timeout=timeout)

    def wait_ready(
        self, nodes: Iterable[str] | None = None, timeout: float = READY_TIMEOUT
    ) -> None:
        """Wait until each node wrote its ready file.

        Raises:
            LaunchError: a node exited or was not ready in time (naming which).
        """
        waiting = set(self.nodes if nodes is None else nodes)
        deadline = time.monotonic() + timeout
        while waiting:
            for name in sorted(waiting):
                entry = self.mesh.nodes[name]
                ready = Path(entry.config).parent / "ready"
                if ready.exists() and ready.read_text().endswith("\n"):
                    waiting.discard(name)
                elif not self.running(name):
                    raise LaunchError(
                        f"node {name!r} exited before serving; see {entry.log}: "
                        f"{_log_tail(Path(entry.log))}"
                    )
            if waiting and time.monotonic() > deadline:
                raise LaunchError(
                    f"nodes not serving after {timeout:.0f} s: {', '.join(sorted(waiting))}"
                )
            if waiting:
                time.sleep(POLL_INTERVAL)

    def kill(self, name: str) -> None:
        """SIGKILL ``name``'s node process (a crash, as its neighbours see it)."""
        self._node(name)
        entry = self.mesh.nodes[name]
        if entry.pid is None or not self.running(name):
            raise LabError(f"node {name!r} is not running")
        with contextlib.suppress(ProcessLookupError):
            os.kill(entry.pid, signal.SIGKILL)
        process = self._processes.pop(entry.pid, None)
        if process is not None:
            process.wait(timeout=STOP_GRACE)
        else:
            deadline = time.monotonic() + STOP_GRACE
            while pid_alive(entry.pid, entry.config) and time.monotonic() < deadline:
                time.sleep(0.02)
        entry.pid = None
        self._forget_client(name)
        self._save()

    # --- links ---

    def _set_link(self, link: LabLink, up: bool) -> None:
        for node, veth, _ip in link.ends():
            _run(
                [
                    "ip",
                    "-n",
                    self.state.nodes[node].namespace,
                    "link",
                    "set",
                    veth,
                    "up" if up else "down",
                ]
            )
        link.cut = not up

    def cut(self, a: str, b: str) -> None:
        """Take the veth pair between ``a`` and ``b`` down (both ends)."""
        self._set_link(self.state.link(a, b), up=False)
        self.state.save()

    def heal(self, a: str, b: str) -> None:
        """Bring the veth pair between ``a`` and ``b`` back up."""
        self._set_link(self.state.link(a, b), up=True)
        self.state.save()

    def heal_all(self) -> list[tuple[str, str]]:
        healed = []
        for link in self.state.links:
            if link.cut:
                self._set_link(link, up=True)
                healed.append((link.a, link.b))
        self.state.save()
        return healed

    def partition(self, *groups: Iterable[str]) -> list[tuple[str, str]]:
        """Cut every link between two different groups; returns the links cut."""
        sets = [set(g) for g in groups]
        if len(sets) < 2:
            raise LabError("a partition needs at least two groups, e.g. `a,b c,d`")
        for group in sets:
            for name in group:
                self._node(name)
        seen: set[str] = set()
        for group in sets:
            if group & seen:
                raise LabError(f"nodes in two groups: {', '.join(sorted(group & seen))}")
            seen |= group
        side = {name: i for i, group in enumerate(sets) for name in group}
        cut = []
        for link in self.state.links:
            if link.a in side and link.b in side and side[link.a] != side[link.b]:
                self._set_link(link, up=False)
                cut.append((link.a, link.b))
        self.state.save()
        return cut

    def impair(
        self, a: str, b: str, *, loss: float | None = None, rate_mbit: float | None = None
    ) -> LabLink:
        """Change the loss and/or rate cap of the link between ``a`` and ``b`` while it runs.

        ``None`` leaves an impairment as it is; ``loss=0`` stops the loss and
        ``rate_mbit=0`` lifts the cap. Both ends change (loss applies to each
        direction, as at ``up``), with the method ``up`` chose: netem, or an
        nftables rule (replaced atomically) and a tbf qdisc. The delay is fixed
        at ``up``: with the relay method it decides which port neighbours dial.
        Returns the link as it is now (also in ``lab.json``).

        Raises:
            LabError: no such link, a value out of range, or a command failed.
        """
        link = self.state.link(a, b)
        if loss is not None and not 0 <= loss <= 1:
            raise LabError(f"loss is a fraction between 0 and 1, got {loss:g}")
        if rate_mbit is not None and rate_mbit < 0:
            raise LabError(f"rate_mbit must be positive (0 lifts the cap), got {rate_mbit:g}")
        before = (link.loss, link.rate_mbit)
        if loss is not None:
            link.loss = float(loss)
        if rate_mbit is not None:
            link.rate_mbit = float(rate_mbit) or None
        try:
            # Applied even when nothing seems to change: another process (`mesh lab
            # impair`) may have changed the kernel behind this object's back.
            _set_qdiscs(self.state, link, fresh=False)
            ends = (self.state.nodes[link.a].namespace, self.state.nodes[link.b].namespace)
            _set_loss(self.state, ends, fresh=False)
        except LabError:
            link.loss, link.rate_mbit = before  # lab.json keeps saying what the kernel does
            raise
        self.state.save()
        return link

    def counters(self, a: str, b: str) -> LinkCounters:
        """What the kernel counted on the link between ``a`` and ``b``, per direction.

        Bytes and packets are the sending veth end's transmit counters since
        ``up`` (every IP packet on the link, TCP retransmissions included;
        with GSO a packet may be up to 64 KiB). ``dropped`` is what the
        impairments dropped: the sender's qdisc drops (netem loss, a full tbf
        queue) plus the receiving end's nftables loss rule, which counts from
        the last time the loss was set.
        """
        link = self.state.link(a, b)
        sent: dict[str, tuple[int, int]] = {}
        qdisc_drops: dict[str, int] = {}
        rule_drops: dict[str, int] = {}
        for node, veth, _ip in link.ends():
            namespace = self.state.nodes[node].namespace
            out = _run(["ip", "-n", namespace, "-j", "-s", "link", "show", "dev", veth])
            try:
                tx = json.loads(out)[0]["stats64"]["tx"]
                sent[node] = (int(tx["bytes"]), int(tx["packets"]))
            except (ValueError, LookupError, TypeError) as exc:
                raise LabError(f"unreadable counters of {veth} in {namespace}: {exc}") from None
            out = _run(["tc", "-n", namespace, "-s", "-j", "qdisc", "show", "dev", veth])
            with contextlib.suppress(ValueError, TypeError):
                qdisc_drops[node] = sum(
                    int(q.get("drops", 0)) for q in json.loads(out or "[]") if q.get("root")
                )
            rule_drops[node] = 0
            # Asked even when this object thinks there is no loss: `mesh lab impair`
            # in another process may have set some; no rule reads as nothing dropped.
            if self.state.methods.get("loss") == "nftables":
                counter = _drop_counter(veth)
                out = _run(
                    _ns(namespace, "nft", "-j", "list", "counter", "inet", NFT_TABLE, counter),
                    check=False,
                )
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    for item in json.loads(out or "{}").get("nftables", []):
                        if "counter" in item:
                            rule_drops[node] = int(item["counter"]["packets"])
        return LinkCounters(
            a=link.a,
            b=link.b,
            bytes_ab=sent[link.a][0],
            packets_ab=sent[link.a][1],
            dropped_ab=qdisc_drops.get(link.a, 0) + rule_drops[link.b],
            bytes_ba=sent[link.b][0],
            packets_ba=sent[link.b][1],
            dropped_ba=qdisc_drops.get(link.b, 0) + rule_drops[link.a],
        )

    # --- what the mesh should look like ---

    def graph(self) -> nx.Graph:
        """The topology as it is now: cut links and stopped nodes removed."""
        graph = self.topology.graph()
        for link in self.state.links:
            if link.cut and graph.has_edge(link.a, link.b):
                graph.remove_edge(link.a, link.b)
        return graph.subgraph([n for n in graph.nodes if self.running(str(n))]).copy()

    def rtt_mode(self) -> bool:
        return self.topology.settings.cost_mode == "rtt"

    def poll(self, graph: nx.Graph | None = None) -> list[NodeStatus]:
        """One row per node; ``converged`` compares with ``graph`` (default: :meth:`graph`).

        With RTT-derived costs the costs cannot be predicted, so ``converged``
        compares the reachable destinations only.
        """
        graph = self.graph() if graph is None else graph
        expected = expected_routes(graph)
        rows = probe(self.mesh, self._clients, expected, running=self.running)
        if not self.rtt_mode():
            return rows
        fixed = []
        for row in rows:
            if row.converged is None:
                fixed.append(row)
                continue
            try:
                routes = {r.destination for r in self._clients[row.node].routes()}
            except AdminError:
                fixed.append(row)
                continue
            fixed.append(
                NodeStatus(
                    node=row.node,
                    address=row.address,
                    pid=row.pid,
                    running=row.running,
                    peers_up=row.peers_up,
                    routes=row.routes,
                    converged=routes == set(expected.get(row.node, {})),
                )
            )
        return fixed

    def wait_until(
        self,
        check: Callable[[list[NodeStatus]], bool],
        timeout: float,
        what: str,
        graph: nx.Graph | None = None,
    ) -> float:
        """Poll until ``check(rows)``; returns the seconds waited.

        Raises:
            LaunchError: not within ``timeout``, with the last rows summarised.
        """
        started = time.monotonic()
        while True:
            rows = [r for r in self.poll(graph) if graph is None or r.node in graph]
            if check(rows):
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                details = ", ".join(
                    f"{r.node} ({'down' if not r.running else r.error or 'routes differ'})"
                    for r in rows
                    if not r.converged
                )
                raise LaunchError(f"{what} not within {timeout:.0f} s; {details}")
            time.sleep(POLL_INTERVAL)

    def wait_converged(self, graph: nx.Graph | None = None, timeout: float = 60.0) -> float:
        """Wait until every running node's table equals the ground truth of :meth:`graph`."""
        graph = self.graph() if graph is None else graph
        return self.wait_until(
            lambda rows: all(r.converged for r in rows if r.running),
            timeout,
            f"lab {self.state.mesh!r} converged",
            graph,
        )

    # --- status ---

    def link_status(self) -> list[LinkStatus]:
        kernel: dict[tuple[str, str], str] = {}
        for name, node in self.state.nodes.items():
            out = _run(["ip", "-n", node.namespace, "-j", "link", "show"], check=False)
            try:
                for item in json.loads(out or "[]"):
                    flags = item.get("flags", [])
                    kernel[(name, item.get("ifname", ""))] = "up" if "UP" in flags else "down"
            except ValueError:
                continue
        rows = []
        for link in self.state.links:
            seen = {kernel.get((n, v), "missing") for n, v, _ in link.ends()}
            if seen == {"up"}:
                state = "up"
            elif seen == {"down"}:
                state = "cut"
            else:
                state = "/".join(sorted(seen))
            methods = {}
            if link.delay_ms:
                methods["delay"] = self.state.methods.get("delay", "?")
            if link.loss:
                methods["loss"] = self.state.methods.get("loss", "?")
            if link.rate_mbit:
                methods["rate"] = self.state.methods.get("rate", "?")
            rows.append(
                LinkStatus(
                    a=link.a,
                    b=link.b,
                    veth_a=link.veth_a,
                    veth_b=link.veth_b,
                    address_a=link.ip_a,
                    address_b=link.ip_b,
                    state=state,
                    delay_ms=link.delay_ms,
                    loss=link.loss,
                    rate_mbit=link.rate_mbit,
                    methods=methods,
                )
            )
        return rows

    def status(self) -> dict[str, Any]:
        """Everything ``mesh lab status --json`` prints."""
        rows = self.poll()
        return {
            "lab": self.state.lab_id,
            "mesh": self.state.mesh,
            "state_dir": self.state.state_dir,
            "topology": self.state.topology,
            "cost_mode": self.topology.settings.cost_mode,
            "methods": dict(self.state.methods),
            "nodes": [
                {**asdict(row), "namespace": self.state.nodes[row.node].namespace} for row in rows
            ],
            "links": [asdict(link) for link in self.link_status()],
        }


# --- the relay (runs inside a node's namespace) ---------------------------------------------------


CHUNK = 65_536
QUEUE_CHUNKS = 256


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy ``reader`` to ``writer``, holding each chunk ``delay`` seconds (order is kept)."""
    loop = asyncio.get_running_loop()
    if delay <= 0:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        return
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)

    async def send() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                return
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    sender = asyncio.ensure_future(send())
    try:
        while data := await reader.read(CHUNK):
            await queue.put((loop.time() + delay, data))
        await queue.put((loop.time() + delay, b""))
        await sender
    finally:
        sender.cancel()


async def _bridge(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: str, delay: float
) -> None:
    host, _, port = target.rpartition(":")
    try:
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
    except OSError:
        writer.close()
        return
    tasks = [
        asyncio.ensure_future(_pump(reader, up_writer, delay)),
        asyncio.ensure_future(_pump(up_reader, writer, delay)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for w in (writer, up_writer):
            with contextlib.suppress(Exception):
                w.close()


async def _relay_main(spec: dict[str, Any]) -> None:
    servers: list[asyncio.AbstractServer] = []
    admin = spec["admin"]
    path = Path(admin["unix"])
    path.unlink(missing_ok=True)

    async def admin_client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _bridge(r, w, admin["target"], 0.0)

    servers.append(await asyncio.start_unix_server(admin_client, path=str(path)))
    for entry in spec["delays"]:
        host, _, port = entry["listen"].rpartition(":")
        delay = float(entry["delay_ms"]) / 1000

        def handler(
            target: str, delay: float
        ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]:
            async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                await _bridge(r, w, target, delay)

            return handle

        servers.append(
            await asyncio.start_server(
                handler(entry["target"], delay), host, int(port), reuse_address=True
            )
        )
    Path(spec["ready"]).write_text("ready\n", encoding="utf-8")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()
    path.unlink(missing_ok=True)


def run_relay(config: Path) -> int:
    """``python -m nodes.lab relay RELAY.json``: the admin bridge and the delay relays."""
    spec = json.loads(config.read_text(encoding="utf-8"))
    asyncio.run(_relay_main(spec))
    return 0


__all__ = [
    "LAB_FILE",
    "Lab",
    "LabError",
    "LabLink",
    "LabNode",
    "LabState",
    "LinkCounters",
    "LinkStatus",
    "check_environment",
    "default_state_dir",
    "down",
    "find_lab_dir",
    "lab_id_for",
    "leftovers",
    "list_namespaces",
    "namespace_prefix",
    "plan",
    "read_lab",
    "run_relay",
    "up",
]


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "relay":
        sys.exit(run_relay(Path(sys.argv[2])))
    sys.stderr.write("usage: python -m nodes.lab relay RELAY.json\n")
    sys.exit(2)
