"""`mesh simulate SCENARIO.yaml` and `mesh topology generate KIND`.

The scenario file is read and validated here (the core reads no files): a
topology (a path relative to the scenario file, or inline ``nodes``/``links``
as in `mesh up`), traffic and timed events. Every problem is reported as one
``FILE: FIELD: PROBLEM`` line through :class:`nodes.config.ConfigError`.
The simulation itself is :mod:`mesh.sim`.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal, cast, get_type_hints

import networkx as nx
import typer
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from mesh.errors import InvalidArgument, MeshError
from mesh.sim import KINDS, Event, LinkDefaults, Result, Scenario, Traffic, generate, simulate
from mesh.sim import plots as sim_plots
from mesh.sim.scenario import FidelityName
from nodes.config import (
    ConfigError,
    Cost,
    Name,
    NodeSettings,
    Subject,
    Topology,
    TopologyLink,
    TopologyNode,
    _problems,
    _read_mapping,
    load_topology,
)

console = Console()
errors = Console(stderr=True)

NonNegative = Annotated[float, Field(ge=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TrafficSpec(_Model):
    """One traffic generator in a scenario file."""

    kind: Literal["constant", "poisson", "burst"] = "poisson"
    rate_per_s: float = Field(default=100.0, gt=0)
    burst_size: int = Field(default=10, ge=1)
    size: int = Field(default=256, ge=0, le=4_000_000)
    mode: Literal["async", "acknowledged", "request"] = "async"
    sources: list[Name] = Field(default=[], alias="from")
    to: Name | list[Name] = []
    service: Name | None = None
    subject: Subject | None = None
    start_s: NonNegative | None = None
    stop_s: NonNegative | None = None
    deadline_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _one_target(self) -> TrafficSpec:
        chosen = [
            n
            for n, v in (("to", self.to), ("service", self.service), ("subject", self.subject))
            if v
        ]
        if len(chosen) > 1:
            raise ValueError(f"give only one of to, service, subject (got {', '.join(chosen)})")
        if self.mode == "request" and self.subject:
            raise ValueError("mode request needs a node or a service, not a subject")
        return self


class EventSpec(_Model):
    """One timed event: ``at_s`` and exactly one action."""

    at_s: NonNegative
    cut: tuple[Name, Name] | None = None
    heal: tuple[Name, Name] | Literal["all"] | None = None
    crash: Name | None = None
    restart: Name | None = None
    partition: list[list[Name]] | None = None
    cost: tuple[Name, Name, Cost] | None = None

    @model_validator(mode="after")
    def _one_action(self) -> EventSpec:
        actions = [
            n
            for n in ("cut", "heal", "crash", "restart", "partition", "cost")
            if getattr(self, n) is not None
        ]
        if len(actions) != 1:
            raise ValueError(
                "needs exactly one of cut, heal, crash, restart, partition, cost"
                + (f" (got {', '.join(actions)})" if actions else "")
            )
        return self


class LinkDefaultsSpec(_Model):
    """Link properties for links that set none."""

    delay_ms: float = Field(default=1.0, ge=0)
    jitter_ms: float = Field(default=0.0, ge=0)
    bandwidth_mbit: float | None = Field(default=None, gt=0)
    loss: float = Field(default=0.0, ge=0, lt=1)


class GenerateSpec(_Model):
    """A generated topology instead of a file."""

    kind: Literal[
        "line",
        "ring",
        "grid",
        "torus",
        "star",
        "tree",
        "erdos-renyi",
        "barabasi-albert",
        "geometric",
        "fat-tree",
    ]
    nodes: int = Field(ge=2, le=100_000)
    seed: int = Field(default=0, ge=0, lt=2**63)
    cost_min: Cost = 1
    cost_max: Cost = 1


class ScenarioFile(_Model):
    """A scenario file (docs/simulation.md)."""

    topology: str | Topology | GenerateSpec | None = None
    """A topology file (relative to this file), an inline topology, or ``{kind, nodes, seed}``."""
    mesh: Name = "sim"
    nodes: dict[Name, TopologyNode] | None = None
    links: list[TopologyLink] = []
    settings: NodeSettings | None = None
    routing: Literal["link-state", "distance-vector"] | None = None
    duration_s: float = Field(default=10.0, gt=0)
    drain_s: float = Field(default=1.0, ge=0)
    seed: int = Field(default=0, ge=0, lt=2**63)
    traffic: list[TrafficSpec] = []
    events: list[EventSpec] = []
    link_defaults: LinkDefaultsSpec = Field(default_factory=LinkDefaultsSpec)
    trusted: bool = False
    convergence_resolution_ms: float = Field(default=10.0, gt=0)
    fidelity: Literal["full", "fast", "auto"] = "auto"
    """``fast`` computes link-state flooding instead of replaying it (docs/simulation.md);
    ``auto`` uses it for link-state meshes above 400 nodes."""

    @model_validator(mode="after")
    def _one_topology(self) -> ScenarioFile:
        if (self.topology is None) == (self.nodes is None):
            raise ValueError(
                "give either topology (a file, inline or generated) or nodes/links inline"
            )
        return self


def _graph_of(topology: Topology) -> nx.Graph:
    graph = topology.graph()
    for name, node in topology.nodes.items():
        graph.nodes[name]["services"] = {s: spec.weight for s, spec in node.services.items()}
        graph.nodes[name]["subjects"] = list(node.subjects)
    return graph


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario file.

    Raises:
        ConfigError: unreadable or invalid file (one ``FILE: FIELD: PROBLEM`` line each),
            or an invalid topology file it names.
    """
    data = _read_mapping(path)
    try:
        spec = ScenarioFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError.from_problems(path, _problems(exc)) from None
    routing = spec.routing
    if isinstance(spec.topology, str):
        topology_path = Path(spec.topology)
        if not topology_path.is_absolute():
            topology_path = path.parent / topology_path
        topology = load_topology(topology_path)
        graph = _graph_of(topology)
        routing = routing or topology.routing
    elif isinstance(spec.topology, Topology):
        graph = _graph_of(spec.topology)
        routing = routing or spec.topology.routing
    elif isinstance(spec.topology, GenerateSpec):
        g = spec.topology
        if g.cost_max < g.cost_min:
            raise ConfigError.from_problems(path, [("topology.cost_max", "must be >= cost_min")])
        try:
            graph = generate(g.kind, g.nodes, g.seed, costs=(g.cost_min, g.cost_max))
        except MeshError as exc:
            raise ConfigError.from_problems(path, [("topology", str(exc))]) from None
    else:
        try:
            inline = Topology.model_validate(
                {"mesh": spec.mesh, "nodes": data.get("nodes"), "links": data.get("links", [])}
            )
        except ValidationError as exc:
            raise ConfigError.from_problems(path, _problems(exc)) from None
        graph = _graph_of(inline)
    problems = _cross_check(spec, graph)
    if problems:
        raise ConfigError.from_problems(path, problems)
    return Scenario(
        graph=graph,
        name=path.stem,
        routing=routing or "link-state",
        duration_s=spec.duration_s,
        drain_s=spec.drain_s,
        seed=spec.seed,
        traffic=tuple(_traffic(t) for t in spec.traffic),
        events=tuple(_event(e) for e in spec.events),
        links=LinkDefaults(**spec.link_defaults.model_dump()),
        trusted=spec.trusted,
        convergence_resolution_ms=spec.convergence_resolution_ms,
        fidelity=spec.fidelity,
    )


def _cross_check(spec: ScenarioFile, graph: nx.Graph) -> list[tuple[str, str]]:
    """Names used by traffic and events must be nodes (and links) of the topology."""
    problems: list[tuple[str, str]] = []
    nodes = set(graph.nodes)

    def node(where: str, name: str) -> None:
        if name not in nodes:
            problems.append((where, f"{name!r} is not a node of the topology"))

    for i, traffic in enumerate(spec.traffic):
        for name in traffic.sources:
            node(f"traffic[{i}].from", name)
        for name in [traffic.to] if isinstance(traffic.to, str) else traffic.to:
            node(f"traffic[{i}].to", name)
        if traffic.stop_s is not None and traffic.stop_s > spec.duration_s:
            problems.append(
                (f"traffic[{i}].stop_s", f"is after the end of the run ({spec.duration_s} s)")
            )
    for i, event in enumerate(spec.events):
        where = f"events[{i}]"
        if event.at_s > spec.duration_s:
            problems.append(
                (f"{where}.at_s", f"{event.at_s} is after the end of the run ({spec.duration_s} s)")
            )
        for field in ("cut", "cost"):
            value = getattr(event, field)
            if value is not None:
                node(f"{where}.{field}", value[0])
                node(f"{where}.{field}", value[1])
                if (
                    value[0] in nodes
                    and value[1] in nodes
                    and not graph.has_edge(value[0], value[1])
                ):
                    problems.append(
                        (
                            f"{where}.{field}",
                            f"{value[0]} - {value[1]} is not a link of the topology",
                        )
                    )
        if isinstance(event.heal, tuple):
            node(f"{where}.heal", event.heal[0])
            node(f"{where}.heal", event.heal[1])
        for field in ("crash", "restart"):
            value = getattr(event, field)
            if value is not None:
                node(f"{where}.{field}", value)
        for g, group in enumerate(event.partition or []):
            for name in group:
                node(f"{where}.partition[{g}]", name)
    return problems


def _traffic(spec: TrafficSpec) -> Traffic:
    return Traffic(
        kind=spec.kind,
        rate_per_s=spec.rate_per_s,
        burst_size=spec.burst_size,
        size=spec.size,
        mode=spec.mode,
        sources=tuple(spec.sources),
        to=(spec.to,) if isinstance(spec.to, str) else tuple(spec.to),
        service=spec.service,
        subject=spec.subject,
        start_s=spec.start_s,
        stop_s=spec.stop_s,
        deadline_s=spec.deadline_s,
    )


def _event(spec: EventSpec) -> Event:
    return Event(
        at_s=spec.at_s,
        cut=spec.cut,
        heal=spec.heal if isinstance(spec.heal, tuple) else None,
        heal_all=spec.heal == "all",
        crash=spec.crash,
        restart=spec.restart,
        partition=None if spec.partition is None else tuple(tuple(g) for g in spec.partition),
        cost=spec.cost,
    )


def report_json(results: dict[str, Result]) -> str:
    """The JSON report: one engine's report, or ``{engine: report}`` with --compare."""
    if len(results) == 1:
        data: Any = next(iter(results.values())).report
    else:
        data = {name: result.report for name, result in results.items()}
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def topology_yaml(graph: nx.Graph, mesh: str, routing: str = "link-state") -> str:
    """A topology file (the `mesh up` format) for a generated graph."""
    links = []
    for u, v, attrs in graph.edges(data=True):
        link: dict[str, Any] = {"a": u, "b": v, "cost": int(attrs.get("cost", 1))}
        if attrs.get("delay_ms"):
            link["delay_ms"] = float(attrs["delay_ms"])
        links.append(link)
    data = {"mesh": mesh, "routing": routing, "nodes": {n: {} for n in graph.nodes}, "links": links}
    Topology.model_validate(data)  # what we write must load back
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=120)


# --- the commands ----------------------------------------------------------------------


def _fail(message: str) -> typer.Exit:
    errors.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=1)


def _summary(results: dict[str, Result]) -> Table:
    table = Table(title="simulation")
    table.add_column("metric")
    for name in results:
        table.add_column(name, justify="right")

    def row(label: str, get: Any) -> None:
        table.add_row(label, *[str(get(r.report)) for r in results.values()])

    row("nodes / links", lambda r: f"{r['nodes']} / {r['links']}")
    row("sent", lambda r: r["sent"])
    row("delivered", lambda r: r["delivered"])
    row("delivery ratio", lambda r: r["delivery_ratio"])
    for q in ("p50", "p90", "p99"):
        row(f"latency {q} ms", lambda r, q=q: r["latency_ms"][q])
    row("stretch (max)", lambda r: f"{r['stretch']} ({r['stretch_max']})")
    row("control messages", lambda r: r["control_messages"])
    row("control bytes", lambda r: r["control_bytes"])
    row("loops detected", lambda r: r["loops_detected"])
    first = next(iter(results.values())).report["convergence"]
    for i, entry in enumerate(first):
        row(
            f"converged after {entry['event']} @{entry['at_s']}s",
            lambda r, i=i: r["convergence"][i]["converged_after_s"],
        )
    return table


def simulate_command(
    scenario: Annotated[Path, typer.Argument(help="scenario file (YAML)")],
    *,
    engine: Annotated[
        str | None,
        typer.Option("--engine", help="link-state or distance-vector (overrides the file)"),
    ] = None,
    compare: Annotated[
        bool, typer.Option("--compare", help="run under both engines, side by side")
    ] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="write the report here")] = None,
    plots: Annotated[
        Path | None, typer.Option("--plots", help="write PNG charts into this folder")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="override the scenario's seed")] = None,
    fidelity: Annotated[
        str | None,
        typer.Option("--fidelity", help="full, fast or auto (overrides the file)"),
    ] = None,
) -> None:
    """Run a scenario through real node cores on a virtual clock."""
    if engine is not None and engine not in ("link-state", "distance-vector"):
        raise _fail(f"--engine must be link-state or distance-vector, not {engine!r}")
    if fidelity is not None and fidelity not in ("full", "fast", "auto"):
        raise _fail(f"--fidelity must be full, fast or auto, not {fidelity!r}")
    try:
        loaded = load_scenario(scenario)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    if seed is not None:
        loaded = replace(loaded, seed=seed)
    if fidelity is not None:
        loaded = replace(loaded, fidelity=cast("FidelityName", fidelity))
    engines = ["link-state", "distance-vector"] if compare else [engine or loaded.routing]
    results: dict[str, Result] = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.1f}/{task.total:.1f} s"),
        TimeRemainingColumn(),
        console=errors,
        transient=True,
    ) as bar:
        for name in engines:
            task = bar.add_task(name, total=loaded.duration_s)

            def advance(done: float, total: float, task: TaskID = task) -> None:
                bar.update(task, completed=min(done, total))

            try:
                results[name] = simulate(loaded, engine=name, progress=advance)
            except InvalidArgument as exc:  # e.g. fast fidelity with distance-vector
                raise _fail(str(exc)) from None
    console.print(_summary(results))
    if json_path is not None:
        json_path.write_text(report_json(results), encoding="utf-8")
        console.print(f"report written to {json_path}")
    if plots is not None:
        if not sim_plots.available():
            errors.print("plots skipped: matplotlib is not installed (pip install matplotlib)")
        else:
            plots.mkdir(parents=True, exist_ok=True)
            for name, png in sim_plots.charts(results).items():
                (plots / name).write_bytes(png)
            console.print(f"plots written to {plots}")


topology_app = typer.Typer(
    no_args_is_help=True,
    help="Show a node's view of the topology (no sub-command), or generate topology files.",
)


@topology_app.command("generate")
def generate_command(
    kind: Annotated[str, typer.Argument(help=f"one of {', '.join(KINDS)}")],
    *,
    nodes: Annotated[int, typer.Option("--nodes", help="number of nodes")],
    output: Annotated[Path, typer.Option("-o", "--output", help="topology file to write")],
    seed: Annotated[int, typer.Option("--seed", help="random seed")] = 0,
    mesh: Annotated[str | None, typer.Option("--mesh", help="mesh id [default: KIND-N]")] = None,
    routing: Annotated[
        str, typer.Option("--routing", help="link-state or distance-vector")
    ] = "link-state",
    cost_max: Annotated[
        int, typer.Option("--cost-max", help="draw costs in 1..N (1: all equal)")
    ] = 1,
) -> None:
    """Write a generated topology in the `mesh up` format."""
    try:
        graph = generate(kind, nodes, seed, costs=(1, cost_max) if cost_max > 1 else None)
        text = topology_yaml(graph, mesh or f"{kind}-{graph.number_of_nodes()}", routing)
    except (MeshError, ValidationError) as exc:
        raise _fail(str(exc)) from None
    header = f"# generated: mesh topology generate {kind} --nodes {nodes} --seed {seed}\n"
    output.write_text(header + text, encoding="utf-8")
    console.print(
        f"{graph.number_of_nodes()} nodes, {graph.number_of_edges()} links written to {output}"
    )


def _keep_existing_topology_command(app: typer.Typer) -> None:
    """`mesh topology` (show a node's view, from ops) stays what it was without a sub-command.

    It becomes the group's callback, with its own options, so
    `mesh topology --node a` and `mesh topology generate ring ...` both work.
    """
    existing = next(
        (
            c
            for c in app.registered_commands
            if c.callback is not None and (c.name or c.callback.__name__) == "topology"
        ),
        None,
    )
    if existing is None or existing.callback is None:
        return
    app.registered_commands.remove(existing)
    show = existing.callback
    hints = get_type_hints(show, include_extras=True)
    context = inspect.Parameter(
        "ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context
    )
    parameters = [context] + [
        p.replace(annotation=hints.get(p.name, p.annotation))
        for p in inspect.signature(show).parameters.values()
    ]

    def callback(ctx: typer.Context, **options: Any) -> None:
        if ctx.invoked_subcommand is None:
            show(**options)

    callback.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    callback.__annotations__ = {
        "ctx": typer.Context,
        **{k: v for k, v in hints.items() if k != "return"},
    }
    callback.__doc__ = show.__doc__
    topology_app.callback(invoke_without_command=True)(callback)
    topology_app.info.no_args_is_help = False


def register(app: typer.Typer) -> None:
    """Add `mesh simulate` and `mesh topology generate` (keeping `mesh topology` itself)."""
    app.command("simulate")(simulate_command)
    _keep_existing_topology_command(app)
    app.add_typer(topology_app, name="topology")


__all__ = ["ScenarioFile", "load_scenario", "register", "report_json", "topology_yaml"]
