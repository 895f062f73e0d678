"""`mesh` commands: lab — a topology on real network stacks (nodes/lab.py; needs root).

``mesh lab up TOPOLOGY`` makes one network namespace per node, a veth pair
per link with the link's delay, loss and rate, starts every node in its
namespace and returns once the routes are right (the lab keeps running);
``down`` removes everything it made. ``cut``/``heal`` take a link down and up,
``partition A,B C,D`` cuts every link between the groups, ``impair A B
--loss 0.3 --rate-mbit 1`` changes a running link's loss and rate cap,
``kill``/``start`` crash and restart one node, ``status [--json]`` shows
nodes, links and which impairment method is in use.

A lab is named with ``--state DIR`` (default for ``up``: ``.mesh/lab-<mesh
id>``; for the others: the only lab under ``.mesh/``). Every failure prints
one line ``error: ...`` on stderr and exits 1, never a traceback. The other
`mesh` commands work on a lab too: ``mesh routes --state DIR --node X``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from mesh.errors import MeshError
from nodes import lab
from nodes.admin_client import AdminError
from nodes.launcher import LaunchError, NodeStatus, status_table

console = Console()
errors = Console(stderr=True)
lab_app = typer.Typer(
    no_args_is_help=True,
    help="A network-namespace testbed: one namespace per node, real links (needs root).",
)

StateOpt = Annotated[
    Path | None, typer.Option("--state", help="state dir of the lab [default: the only one]")
]


def _fail(message: str) -> NoReturn:
    errors.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True, markup=True)
    raise typer.Exit(code=1)


@contextmanager
def _one_line_errors() -> Iterator[None]:
    try:
        yield
    except (lab.LabError, LaunchError, AdminError) as exc:
        _fail(str(exc))
    except MeshError as exc:
        _fail(str(exc).replace("\n", "; "))
    except OSError as exc:
        _fail(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))


def _open(state: Path | None) -> lab.Lab:
    lab.check_environment()
    return lab.Lab(lab.find_lab_dir(state))


@lab_app.command("up")
def up(
    topology: Annotated[Path, typer.Argument(help="topology file (YAML)")],
    state: Annotated[
        Path | None, typer.Option("--state", help="state dir [default: .mesh/lab-<mesh id>]")
    ] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="no CA, no TLS")] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="seconds to wait for every node to converge")
    ] = 60.0,
) -> None:
    """Make the lab of TOPOLOGY and wait until every routing table is right."""
    with _one_line_errors():
        handle = lab.up(topology, state, insecure=insecure, timeout=timeout)
        methods = ", ".join(f"{k}: {v}" for k, v in sorted(handle.state.methods.items()))
        handle.close()
    console.print(
        f"lab {handle.state.mesh} ({handle.state.lab_id}) converged; impairments: {methods}. "
        f"Remove with: mesh lab down --state {handle.state_dir}",
        highlight=False,
        soft_wrap=True,
    )


@lab_app.command("down")
def down(
    state: StateOpt = None,
    keep_state: Annotated[
        bool, typer.Option("--keep-state", help="keep the state dir (configs, logs)")
    ] = False,
) -> None:
    """Remove every namespace, link and process of the lab (idempotent)."""
    with _one_line_errors():
        lab.check_environment()
        try:
            state_dir = lab.find_lab_dir(state)
        except lab.LabError:
            if state is None:
                raise
            state_dir = state
        removed = lab.down(state_dir, keep_state=keep_state)
    what = ", ".join(removed) if removed else "nothing was left"
    console.print(f"removed: {what}", highlight=False, soft_wrap=True)


def _links_table(links: list[dict[str, Any]]) -> Table:
    table = Table(title="links")
    for column in ("link", "veths", "addresses", "state", "delay", "loss", "rate", "method"):
        table.add_column(column)
    for link in links:
        state = link["state"]
        table.add_row(
            f"{link['a']} - {link['b']}",
            f"{link['veth_a']} / {link['veth_b']}",
            f"{link['address_a']} / {link['address_b']}",
            "[green]up[/green]" if state == "up" else f"[red]{state}[/red]",
            f"{link['delay_ms']:g} ms" if link["delay_ms"] else "-",
            f"{link['loss'] * 100:g} %" if link["loss"] else "-",
            f"{link['rate_mbit']:g} Mbit/s" if link["rate_mbit"] else "-",
            ", ".join(f"{k}: {v}" for k, v in sorted(link["methods"].items())) or "-",
        )
    return table


@lab_app.command("status")
def status(
    state: StateOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
) -> None:
    """Nodes (pid, peers up, routes, converged), links (state, impairments, method)."""
    with _one_line_errors():
        handle = _open(state)
        try:
            data = handle.status()
        finally:
            handle.close()
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    rows = [
        NodeStatus(**{k: v for k, v in row.items() if k != "namespace"}) for row in data["nodes"]
    ]
    title = f"lab {data['mesh']} ({data['lab']}) in {data['state_dir']}"
    console.print(status_table(rows, title))
    console.print(_links_table(data["links"]))
    methods = ", ".join(f"{k}: {v}" for k, v in sorted(data["methods"].items()))
    console.print(f"impairment methods: {methods}; costs: {data['cost_mode']}", highlight=False)


@lab_app.command("cut")
def cut(
    a: Annotated[str, typer.Argument(help="one end")],
    b: Annotated[str, typer.Argument(help="the other end")],
    state: StateOpt = None,
) -> None:
    """Take the link between A and B down (both veth ends)."""
    with _one_line_errors():
        _open(state).cut(a, b)
    console.print(f"cut {a} - {b}", highlight=False)


@lab_app.command("heal")
def heal(
    a: Annotated[str | None, typer.Argument(help="one end")] = None,
    b: Annotated[str | None, typer.Argument(help="the other end")] = None,
    state: StateOpt = None,
    heal_all: Annotated[bool, typer.Option("--all", help="heal every cut link")] = False,
) -> None:
    """Bring the link between A and B back up (or every cut link with --all)."""
    with _one_line_errors():
        handle = _open(state)
        if heal_all:
            healed = handle.heal_all()
            what = ", ".join(f"{x} - {y}" for x, y in healed) or "no link was cut"
        elif a is not None and b is not None:
            handle.heal(a, b)
            what = f"{a} - {b}"
        else:
            raise lab.LabError("name both ends (mesh lab heal A B) or give --all")
    console.print(f"healed: {what}", highlight=False)


@lab_app.command("partition")
def partition(
    groups: Annotated[list[str], typer.Argument(help="two or more groups: a,b c,d")],
    state: StateOpt = None,
) -> None:
    """Cut every link between nodes of different groups (heal with `heal --all`)."""
    with _one_line_errors():
        sets = [[n for n in group.split(",") if n] for group in groups]
        done = _open(state).partition(*sets)
    what = ", ".join(f"{x} - {y}" for x, y in done) or "no link joined the groups"
    console.print(f"cut: {what}", highlight=False)


def _impairments(link: lab.LabLink) -> str:
    parts = [f"loss {link.loss * 100:g} %" if link.loss else "no loss"]
    parts.append(f"rate {link.rate_mbit:g} Mbit/s" if link.rate_mbit else "no rate cap")
    if link.delay_ms:
        parts.append(f"delay {link.delay_ms:g} ms")
    return ", ".join(parts)


@lab_app.command("impair")
def impair(
    a: Annotated[str, typer.Argument(help="one end")],
    b: Annotated[str, typer.Argument(help="the other end")],
    *,
    loss: Annotated[
        float | None,
        typer.Option("--loss", help="packet loss per direction, 0..1 (0: none)", min=0, max=1),
    ] = None,
    rate_mbit: Annotated[
        float | None,
        typer.Option("--rate-mbit", help="rate cap in Mbit/s per direction (0: no cap)", min=0),
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="no loss and no rate cap")] = False,
    state: StateOpt = None,
) -> None:
    """Change the loss and/or rate cap of the running link between A and B (delay is fixed)."""
    with _one_line_errors():
        if clear and (loss is not None or rate_mbit is not None):
            raise lab.LabError("give either --clear or --loss/--rate-mbit, not both")
        if clear:
            loss, rate_mbit = 0.0, 0.0
        if loss is None and rate_mbit is None:
            raise lab.LabError("say what to change: --loss, --rate-mbit or --clear")
        link = _open(state).impair(a, b, loss=loss, rate_mbit=rate_mbit)
    console.print(f"{link.a} - {link.b}: {_impairments(link)}", highlight=False)


@lab_app.command("kill")
def kill(
    node: Annotated[str, typer.Argument(help="node id")],
    state: StateOpt = None,
) -> None:
    """SIGKILL a node's process (its namespace and links stay)."""
    with _one_line_errors():
        _open(state).kill(node)
    console.print(f"killed {node}", highlight=False)


@lab_app.command("start")
def start(
    node: Annotated[str, typer.Argument(help="node id")],
    state: StateOpt = None,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds to wait")] = 30.0,
) -> None:
    """Start a killed node again in its namespace and wait until it serves."""
    with _one_line_errors():
        _open(state).start(node, timeout=timeout)
    console.print(f"started {node}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `mesh lab ...`."""
    app.add_typer(lab_app, name="lab")
