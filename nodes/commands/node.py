"""`mesh node run CONFIG`: run one node in the foreground."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from mesh.errors import MeshError
from nodes.server import run_node

console = Console(stderr=True)
node_app = typer.Typer(no_args_is_help=True, help="Run a node.")


@node_app.command("run")
def run(
    config: Annotated[Path, typer.Argument(help="node config file (YAML)")],
    ready_file: Annotated[
        Path | None, typer.Option(help="write HOST:PORT here once serving (for launchers)")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
    metrics_port: Annotated[
        int | None, typer.Option(help="serve Prometheus metrics on 127.0.0.1:PORT (0: any)")
    ] = None,
) -> None:
    """Run the node described by CONFIG until SIGTERM or Ctrl-C."""
    try:
        code = run_node(config, ready_file, log_level, metrics_port)
    except MeshError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=1) from None
    raise typer.Exit(code=code)


def register(app: typer.Typer) -> None:
    """Add `mesh node ...`."""
    app.add_typer(node_app, name="node")
