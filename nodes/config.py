"""Topology and node configuration files, validated with errors an operator can act on.

Two kinds of YAML file drive the runtime:

- a **topology** (:class:`Topology`, ``deploy/topologies/*.yaml``) describes a
  whole mesh: nodes, the services and subjects they offer, and weighted links.
  ``mesh up``, the simulator and the netns testbed all read it;
- a **node config** (:class:`NodeConfig`) is what one node process runs from
  (``mesh node run CONFIG``): its id, where it listens, its TLS files, its
  neighbours' addresses. The launcher writes one per node from a topology with
  :meth:`NodeConfig.dump`.

Every failure to load either file is one :class:`ConfigError` whose message
has one line per problem, each naming the file, the field path
(``links[2].cost``) and what is wrong, so a typo is fixed in one go rather
than one restart at a time. Unknown fields are refused (``extra="forbid"``),
with a suggestion when the name is close to a real one.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import networkx as nx
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from mesh.errors import LocalError, Status

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
"""Node ids, mesh ids and service names: DNS-label-like, so a node id can be a TLS SAN."""

MAX_COST = 2**24
"""Largest link cost; keeps path sums far below the routing engines' infinity."""

MAX_SUBJECT_LENGTH = 255

M = TypeVar("M", bound=BaseModel)
RoutingName = Literal["link-state", "distance-vector"]


class ConfigError(LocalError):
    """A configuration file (or value) is missing, malformed or inconsistent.

    ``problems`` holds one ``(field path, problem)`` pair per problem; the
    message is one line per problem, each prefixed with the file when known.
    """

    status = Status.INVALID_ARGUMENT

    def __init__(
        self,
        message: str,
        *,
        path: Path | None = None,
        problems: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.path = path
        self.problems = list(problems)

    @classmethod
    def from_problems(cls, path: Path, problems: Sequence[tuple[str, str]]) -> ConfigError:
        """One line per problem: ``FILE: FIELD: PROBLEM``."""
        lines = [f"{path}: {field}: {problem}" for field, problem in problems]
        return cls("\n".join(lines), path=path, problems=problems)


class _Problems(ValueError):
    """Raised by validators to report problems at field paths below the model.

    pydantic keeps the raised exception in the error's context, so the loader
    can put each problem at its own path (``links[2].b``) instead of at the model.
    """

    def __init__(self, problems: Sequence[tuple[tuple[str | int, ...], str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{_field_path(loc)}: {msg}" for loc, msg in self.problems))


# --- small value types ------------------------------------------------------------


def _check_name(value: str) -> str:
    if not NAME_PATTERN.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid name: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def _check_subject(value: str) -> str:
    if not value or len(value) > MAX_SUBJECT_LENGTH or any(ch.isspace() for ch in value):
        raise ValueError(
            f"{value[:64]!r} is not a valid subject: 1-{MAX_SUBJECT_LENGTH} characters, "
            "no whitespace"
        )
    return value


def address(host_port: str) -> tuple[str, int]:
    """Split ``"host:port"`` (or ``"[v6]:port"``) into host and port.

    Port 0 is accepted (it means "pick a free port" when listening).

    Raises:
        ConfigError: no port, an empty host, or a port outside 0..65535.
    """
    try:
        return _split_address(host_port)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _split_address(host_port: str) -> tuple[str, int]:
    host, sep, port_text = host_port.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{host_port!r} is not an address: expected host:port")
    if host.startswith("["):
        if not host.endswith("]") or len(host) == 2:
            raise ValueError(f"{host_port!r} is not an address: bad [IPv6] host")
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{host_port!r} is not an address: write IPv6 hosts as [addr]:port")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{host_port!r} is not an address: port must be 0..65535")
    return host, int(port_text)


def _check_address(value: str) -> str:
    _split_address(value)
    return value


def _check_dial_address(value: str) -> str:
    if _split_address(value)[1] == 0:
        raise ValueError(f"{value!r}: a neighbour's port cannot be 0")
    return value


Name = Annotated[str, AfterValidator(_check_name)]
Subject = Annotated[str, AfterValidator(_check_subject)]
Address = Annotated[str, AfterValidator(_check_address)]
DialAddress = Annotated[str, AfterValidator(_check_dial_address)]
Port = Annotated[int, Field(ge=1, le=65535)]
Cost = Annotated[int, Field(ge=1, le=MAX_COST)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# --- shared parts ---------------------------------------------------------------------


class ServiceSpec(_Model):
    """One service a node offers."""

    weight: int = Field(default=1, ge=1, le=1_000_000)
    """Share of traffic for weighted balancing, relative to other instances."""
    handler: Literal["echo"] | None = None
    """A built-in handler the node runs itself (``echo`` answers with the request body)."""


class NodeSettings(_Model):
    """Runtime knobs of one node; a topology's ``settings`` apply to all of its nodes."""

    heartbeat_ms: int = Field(default=200, ge=1)
    """Interval between heartbeats on each link."""
    dead_ms: int = Field(default=800, ge=1)
    """A link with no frame for this long is down; must exceed ``heartbeat_ms``."""
    dead_stretch: float = Field(default=4.0, ge=1)
    """A link whose frames lately came in stalls (TCP retransmitting under loss) gets
    up to this multiple of ``dead_ms`` (1.5 x its longest recent gap); 1 disables."""
    dead_hold_ms: int = Field(default=10_000, ge=0)
    """A dead link is routed around at once, but its stream is kept this long before
    it is closed: a link that only stalled comes back on its next frame, with what
    it carried, without a redial. 0 closes it at once."""
    batch_max: int = Field(default=64, ge=1, le=65_536)
    """Most envelopes in one link write."""
    batch_delay_ms: float = Field(default=0.0, ge=0)
    """How long a partial batch may wait for company before it is written. 0 by default:
    frames queued while a write is in flight are merged into the next one anyway,
    so waiting only adds latency (~1 ms per hop at 1 ms)."""
    queue_max: int = Field(default=10_000, ge=1)
    """Bound of each link's send queue; a full queue pushes back on the sender."""
    reconnect_min_ms: int = Field(default=100, ge=1)
    """First reconnect delay; doubles (with jitter) up to ``reconnect_max_ms``."""
    reconnect_max_ms: int = Field(default=5_000, ge=1)
    cost_mode: Literal["static", "rtt"] = "static"
    """``static`` uses configured costs; ``rtt`` derives them from measured round trips."""
    trace: bool = False
    """Record the hop trace in envelopes (debugging; costs bytes per hop)."""
    max_inflight_sends: int = Field(default=1024, ge=1)
    """Client Send/Request calls a node works on at once; one more is refused at once
    with RESOURCE_EXHAUSTED instead of queueing until its deadline (entry admission)."""
    max_client_streams: int = Field(default=1024, ge=1)
    """Long-lived client streams (Receive, Subscribe, Serve, SendStream...) open at once
    on a node; one more is refused with RESOURCE_EXHAUSTED."""
    max_concurrent_streams: int = Field(default=4096, ge=1)
    """HTTP/2 streams one connection may have open (SETTINGS_MAX_CONCURRENT_STREAMS).
    Above the two limits above, so those answer RESOURCE_EXHAUSTED before a client
    has to queue calls locally."""
    keepalive_min_interval_ms: int = Field(default=10_000, ge=1_000)
    """Shortest interval between HTTP/2 pings a client may keep up (also on idle
    connections); the SDK pings every 300 s. Faster pings earn strikes."""
    keepalive_max_ping_strikes: int = Field(default=2, ge=1)
    """Pings too early tolerated before the node ends the connection with GOAWAY
    (ENHANCE_YOUR_CALM, ``too_many_pings``); at least 1, as 0 would mean unlimited."""
    outbox_max: int = Field(default=100_000, ge=1)
    """Acknowledged messages and requests this node may have awaiting their ack or
    reply; one more is refused with RESOURCE_EXHAUSTED (``TooManyPending``). The
    bound on the outbox, and so on the backlog a slow destination can build up here."""
    inbox_max: int = Field(default=10_000, ge=2048)
    """Messages held for this node's applications (the inbox and each Receive or
    Subscribe queue). Within one batch (1,024) of it, acknowledged messages are left
    unacked for their sources to retry, and async ones beyond it are dropped and
    counted; so at least 2,048, or nothing would ever be taken."""
    max_queue_delay_ms: int = Field(default=1000, ge=1)
    """A client send that waited longer than this (in gRPC's queue, in front of a
    saturated node) is refused with RESOURCE_EXHAUSTED when the node gets to it.
    Measured from the caller's whole timeout, so a caller that itself stalled
    before sending counts too: keep it well above such stalls."""

    @model_validator(mode="after")
    def _timers_are_consistent(self) -> NodeSettings:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        if self.dead_ms <= self.heartbeat_ms:
            problems.append(
                (
                    ("dead_ms",),
                    f"must be greater than heartbeat_ms ({self.heartbeat_ms}), got {self.dead_ms}",
                )
            )
        if self.reconnect_max_ms < self.reconnect_min_ms:
            problems.append(
                (
                    ("reconnect_max_ms",),
                    f"must be at least reconnect_min_ms ({self.reconnect_min_ms}), "
                    f"got {self.reconnect_max_ms}",
                )
            )
        if problems:
            raise _Problems(problems)
        return self


# --- topology ------------------------------------------------------------------------------


class TopologyNode(_Model):
    """One node of a topology."""

    port: Port | None = None
    """Fixed gRPC port; None lets the launcher pick a free one."""
    services: dict[Name, ServiceSpec] = {}
    subjects: list[Subject] = []


class TopologyLink(_Model):
    """An undirected link between two declared nodes."""

    a: Name
    b: Name
    cost: Cost = 1
    delay_ms: float = Field(default=0, ge=0)
    """One-way delay the simulator and the netns testbed add."""
    loss: float = Field(default=0, ge=0, le=1)
    """Packet loss probability the simulator and the netns testbed apply."""
    rate_mbit: float | None = Field(default=None, gt=0)
    """Bandwidth limit for the netns testbed; None is unlimited."""


class Topology(_Model):
    """A whole mesh: what ``mesh up``, the simulator and the testbed read."""

    mesh: Name
    routing: RoutingName = "link-state"
    nodes: dict[Name, TopologyNode] = Field(min_length=1)
    links: list[TopologyLink] = []
    settings: NodeSettings = Field(default_factory=NodeSettings)
    """Applied to every node of the topology."""

    @model_validator(mode="after")
    def _links_and_ports_are_consistent(self) -> Topology:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        seen: dict[frozenset[str], int] = {}
        for index, link in enumerate(self.links):
            for end in ("a", "b"):
                name = getattr(link, end)
                if name not in self.nodes:
                    problems.append(
                        (("links", index, end), f"{name!r} is not a node declared under nodes")
                    )
            if link.a == link.b:
                problems.append((("links", index), f"links {link.a!r} to itself"))
                continue
            pair = frozenset((link.a, link.b))
            if pair in seen:
                problems.append(
                    (
                        ("links", index),
                        f"duplicate of links[{seen[pair]}] ({link.a!r} - {link.b!r}; "
                        "links are undirected)",
                    )
                )
            else:
                seen[pair] = index
        ports: dict[int, str] = {}
        for name, node in self.nodes.items():
            if node.port is None:
                continue
            if node.port in ports:
                problems.append(
                    (
                        ("nodes", name, "port"),
                        f"port {node.port} is already used by node {ports[node.port]!r}",
                    )
                )
            else:
                ports[node.port] = name
        if problems:
            raise _Problems(problems)
        return self

    def graph(self) -> nx.Graph:
        """The topology as an undirected networkx graph.

        Every declared node is present (isolated ones too); each edge carries
        ``cost``, ``delay_ms``, ``loss`` and ``rate_mbit`` (None = unlimited).
        """
        graph = nx.Graph(mesh=self.mesh, routing=self.routing)
        graph.add_nodes_from(self.nodes)
        for link in self.links:
            graph.add_edge(
                link.a,
                link.b,
                cost=link.cost,
                delay_ms=link.delay_ms,
                loss=link.loss,
                rate_mbit=link.rate_mbit,
            )
        return graph

    def neighbours(self, node_id: str) -> list[tuple[str, int]]:
        """``(neighbour, cost)`` for each link of ``node_id``, in file order."""
        found: list[tuple[str, int]] = []
        for link in self.links:
            if link.a == node_id:
                found.append((link.b, link.cost))
            elif link.b == node_id:
                found.append((link.a, link.cost))
        return found


# --- one node ----------------------------------------------------------------------------


class TlsFiles(_Model):
    """The node's mTLS material (see nodes/pki.py); relative paths resolve against the file."""

    ca: Path
    """The mesh CA certificate (PEM), the only root peers are checked against."""
    cert: Path
    """This node's certificate (PEM)."""
    key: Path
    """This node's TLS private key (PEM, mode 0600)."""


class Neighbour(_Model):
    """A node this node keeps a link to."""

    node: Name
    address: DialAddress
    """``host:port`` of the neighbour's gRPC server."""
    cost: Cost = 1


def _resolve(value: Path, info: ValidationInfo) -> Path:
    """Relative paths are relative to the config file's folder, not to the working directory.

    The loader passes that folder as ``base_dir`` in the validation context; a
    config built in code (no context) keeps its paths as given.
    """
    base = info.context.get("base_dir") if isinstance(info.context, Mapping) else None
    if value.is_absolute() or not isinstance(base, Path):
        return value
    return Path(os.path.normpath(base / value))


class NodeConfig(_Model):
    """Everything one node process needs (``mesh node run CONFIG``)."""

    node_id: Name
    mesh: Name
    routing: RoutingName = "link-state"
    listen: Address = "127.0.0.1:0"
    """``host:port`` to serve gRPC on; port 0 picks a free port."""
    state_dir: Path
    """Keys, the outbox store and logs; relative to the config file's folder."""
    tls: TlsFiles | None = None
    insecure: bool = False
    """Run without TLS (tests and local demos only); exclusive with ``tls``."""
    metrics_port: Port | None = None
    """Prometheus metrics port; None serves no metrics endpoint."""
    metrics_host: str = "127.0.0.1"
    """Address the metrics endpoint binds; 0.0.0.0 (or ::) in a container or pod."""
    neighbours: list[Neighbour] = []
    services: dict[Name, ServiceSpec] = {}
    subjects: list[Subject] = []
    settings: NodeSettings = Field(default_factory=NodeSettings)

    @field_validator("state_dir", mode="after")
    @classmethod
    def _resolve_state_dir(cls, value: Path, info: ValidationInfo) -> Path:
        return _resolve(value, info)

    @field_validator("tls", mode="after")
    @classmethod
    def _resolve_tls(cls, value: TlsFiles | None, info: ValidationInfo) -> TlsFiles | None:
        if value is None:
            return None
        return TlsFiles(
            ca=_resolve(value.ca, info),
            cert=_resolve(value.cert, info),
            key=_resolve(value.key, info),
        )

    @model_validator(mode="after")
    def _node_is_consistent(self) -> NodeConfig:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        if self.tls is None and not self.insecure:
            problems.append(
                (("tls",), "required: give tls (ca, cert, key), or set insecure: true for tests")
            )
        elif self.tls is not None and self.insecure:
            problems.append((("insecure",), "cannot be true when tls is given; choose one"))
        seen: dict[str, int] = {}
        for index, neighbour in enumerate(self.neighbours):
            if neighbour.node == self.node_id:
                problems.append((("neighbours", index, "node"), "a node cannot neighbour itself"))
            elif neighbour.node in seen:
                problems.append(
                    (
                        ("neighbours", index, "node"),
                        f"{neighbour.node!r} is already neighbours[{seen[neighbour.node]}]",
                    )
                )
            else:
                seen[neighbour.node] = index
        if problems:
            raise _Problems(problems)
        return self

    def dump(self, path: Path) -> None:
        """Write this config as YAML that :func:`load_node_config` reads back equal.

        Paths under the file's folder are written relative to it (so a run
        folder can be inspected as a unit); others stay absolute. Paths that
        are relative in memory are written as they are, and so are read back
        relative to ``path``'s folder. The file is replaced atomically.

        Raises:
            ConfigError: the file cannot be written.
        """
        base = path.parent.absolute()
        data = self.model_dump(mode="json", exclude_none=True)
        data["state_dir"] = _relative_to(self.state_dir, base)
        if self.tls is not None:
            data["tls"] = {
                "ca": _relative_to(self.tls.ca, base),
                "cert": _relative_to(self.tls.cert, base),
                "key": _relative_to(self.tls.key, base),
            }
        text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
        partial = path.with_name(f".{path.name}.partial")
        try:
            partial.write_text(text, encoding="utf-8")
            partial.replace(path)
        except OSError as exc:
            raise ConfigError(
                f"{path}: cannot write: {exc.strerror}", path=path, problems=[("", str(exc))]
            ) from exc


def _relative_to(value: Path, base: Path) -> str:
    # Only a normalised absolute path round-trips through normpath(base / relative).
    if value.is_absolute() and os.path.normpath(value) == str(value):
        try:
            return str(value.relative_to(base))
        except ValueError:
            pass
    return str(value)


# --- loading --------------------------------------------------------------------------------


MAX_FILE_BYTES = 16 * 1024 * 1024
"""Largest configuration file read; anything bigger is not a hand-written config."""

MAX_YAML_DEPTH = 64
"""Deepest nesting of YAML collections accepted (PyYAML composes recursively)."""

MAX_YAML_NODES = 1_000_000
"""Most values a document may hold once its aliases are expanded (a "billion laughs"
document is a few lines that expand to more than memory holds)."""


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate mapping keys and hostile documents.

    Plain ``safe_load`` keeps the last of two equal keys, so a node declared
    twice under ``nodes`` would silently lose its first definition. It also
    lets a deeply nested document overflow the stack, an alias bomb exhaust
    memory, and a bad scalar (``2001-13-45``, ``!!int x``) raise a bare
    ValueError; here each is a YAML error with its position.
    """

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"collections nested more than {MAX_YAML_DEPTH} deep",
                    self.get_mark(),
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> yaml.Node | None:
        node = super().compose_document()
        if node is not None:
            _expanded_size(node, {}, set())
        return node

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return super().construct_object(node, deep)
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError, LookupError, AttributeError, TypeError) as exc:
            # PyYAML's scalar constructors fail with bare exceptions on hostile text:
            # ValueError for `2001-13-45`, `!!int x` or an int of 5000 digits,
            # KeyError for `!!bool x`, IndexError for `!!int ''`, AttributeError
            # for `!!timestamp x`.
            text = str(node.value)
            shown = repr(text if len(text) <= 40 else f"{text[:37]}...")
            detail = f" ({exc})" if isinstance(exc, ValueError) else ""
            raise yaml.constructor.ConstructorError(
                None, None, f"{shown} is not a valid {_tag_name(node)}{detail}", node.start_mark
            ) from None


def _tag_name(node: yaml.Node) -> str:
    return node.tag.rpartition(":")[2] or "value"


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """How many values ``node`` stands for once aliases are expanded; refuses cycles and bombs.

    An alias is the same node object as its anchor, so memoising by identity
    counts the expansion without performing it.
    """
    key = id(node)
    known = sizes.get(key)
    if known is not None:
        return known
    if key in open_nodes:
        raise yaml.composer.ComposerError(
            None, None, "an alias refers to a collection that contains it", node.start_mark
        )
    open_nodes.add(key)
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, sizes, open_nodes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            size += _expanded_size(key_node, sizes, open_nodes)
            size += _expanded_size(value_node, sizes, open_nodes)
    open_nodes.discard(key)
    if size > MAX_YAML_NODES:
        raise yaml.composer.ComposerError(
            None,
            None,
            f"aliases expand to more than {MAX_YAML_NODES} values",
            node.start_mark,
        )
    sizes[key] = size
    return size


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    # Duplicates are looked for among the keys written in this mapping, before
    # `<<: *defaults` merges are flattened in: overriding a merged key is what
    # merging is for, and the keys written here win, as YAML specifies.
    if not isinstance(node, yaml.MappingNode):  # `!!map [1]`
        raise yaml.constructor.ConstructorError(
            None, None, f"expected a mapping, found a {node.id}", node.start_mark
        )
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        if key_node.tag == _MERGE_TAG:
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found a {type(key).__name__} as a key; keys must be plain values",
                key_node.start_mark,
            ) from None
        if key in seen:
            first = seen[key].start_mark.line + 1
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {_shown(key)} (first at line {first})",
                key_node.start_mark,
            )
        seen[key] = key_node
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError.from_problems(path, [("(file)", "does not exist")]) from None
    except IsADirectoryError:
        raise ConfigError.from_problems(path, [("(file)", "is a directory, not a file")]) from None
    except OSError as exc:
        raise ConfigError.from_problems(path, [("(file)", f"cannot read: {exc.strerror}")]) from exc
    except ValueError:  # a NUL in the path (a scenario names its topology file)
        raise ConfigError.from_problems(
            path, [("(file)", "the path contains a NUL byte")]
        ) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError.from_problems(
            path, [("(file)", f"is over {MAX_FILE_BYTES // (1024 * 1024)} MiB")]
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError.from_problems(path, [("(file)", "is not UTF-8 text")]) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: plain data only
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(yaml)"
        # The problem says what is wrong at the mark; the context only says what was being read.
        problem = exc.problem or exc.context or "cannot parse"
        raise ConfigError.from_problems(path, [(where, f"YAML syntax error: {problem}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError.from_problems(path, [("(yaml)", f"YAML error: {exc}")]) from None
    if data is None:
        raise ConfigError.from_problems(path, [("(top level)", "the file is empty")])
    if not isinstance(data, dict):
        raise ConfigError.from_problems(
            path, [("(top level)", f"expected a mapping of fields, got a {type(data).__name__}")]
        )
    return data


def _shown(value: object, limit: int = 80) -> str:
    """``repr(value)`` for an error message: bounded, and safe for integers too long to print."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except ValueError:  # such an integer inside a list or mapping
        return f"a {type(value).__name__} holding a huge integer"
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _field_path(loc: Iterable[str | int]) -> str:
    """``('links', 2, 'cost')`` -> ``links[2].cost``; odd keys are quoted."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{_shown(part)}]"
        elif part == "[key]":
            continue  # pydantic's marker for a bad mapping key; the message says so
        elif NAME_PATTERN.fullmatch(part):
            text += f".{part}" if text else part
        else:
            text += f"[{part!r}]"
    return text or "(top level)"


@functools.cache
def _known_fields() -> list[str]:
    """Every field name of every config model, for "did you mean" suggestions."""
    models: tuple[type[BaseModel], ...] = (
        ServiceSpec,
        NodeSettings,
        TopologyNode,
        TopologyLink,
        Topology,
        TlsFiles,
        Neighbour,
        NodeConfig,
    )
    return sorted({name for model in models for name in model.model_fields})


def _problems(error: ValidationError) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        cause = (item.get("ctx") or {}).get("error")
        if isinstance(cause, _Problems):
            problems.extend((_field_path(loc + sub), msg) for sub, msg in cause.problems)
            continue
        if isinstance(cause, ValueError):
            message = str(cause)
        elif item["type"] == "extra_forbidden":
            name = str(loc[-1]) if loc else ""
            close = difflib.get_close_matches(name, _known_fields(), n=1)
            message = "unknown field" + (f" (did you mean {close[0]!r}?)" if close else "")
        elif item["type"] == "missing":
            message = "required field is missing"
        else:
            message = item["msg"]
            if item["type"] not in ("model_type", "dict_type", "list_type"):
                message += f" (got {_shown(item['input'])})"
        problems.append((_field_path(loc), message))
    return problems


def _load(model: type[M], path: Path, context: dict[str, Any]) -> M:
    data = _read_mapping(path)
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise ConfigError.from_problems(path, _problems(exc)) from None


def load_topology(path: Path) -> Topology:
    """Read and validate a topology file.

    Raises:
        ConfigError: unreadable file, bad YAML, or any invalid field (one line each).
    """
    return _load(Topology, path, {})


def load_node_config(path: Path) -> NodeConfig:
    """Read and validate a node config; relative paths resolve against its folder.

    Raises:
        ConfigError: unreadable file, bad YAML, or any invalid field (one line each).
    """
    return _load(NodeConfig, path, {"base_dir": path.parent.absolute()})


__all__ = [
    "MAX_COST",
    "NAME_PATTERN",
    "ConfigError",
    "Neighbour",
    "NodeConfig",
    "NodeSettings",
    "ServiceSpec",
    "TlsFiles",
    "Topology",
    "TopologyLink",
    "TopologyNode",
    "address",
    "load_node_config",
    "load_topology",
]
