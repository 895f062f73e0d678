"""The `mesh` command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from mesh import __version__
from mesh.crypto import NodeIdentity
from mesh.errors import MeshError
from nodes.commands import apps, lab, node, ops, pki, sim
from nodes.demo import run_demo
from nodes.live_demo import run_live_demo

app = typer.Typer(no_args_is_help=True, add_completion=False, help="meshwork: a message mesh.")
console = Console()
pki.register(app)
node.register(app)
ops.register(app)
apps.register(app)
sim.register(app)  # after ops: it turns `mesh topology` into a group
lab.register(app)


@app.command()
def version() -> None:
    """Print the meshwork version."""
    console.print(f"meshwork {__version__}")


@app.command()
def demo(
    envelope: Annotated[
        bool, typer.Option("--envelope", help="only the in-process envelope tour")
    ] = False,
) -> None:
    """A live 6-node mesh: acknowledged traffic, a cut link, every message counted."""
    run_demo(console)
    if envelope:
        return
    if not run_live_demo(console):
        raise typer.Exit(code=1)


@app.command()
def keygen(
    node: Annotated[str, typer.Argument(help="node id the keys belong to")],
    directory: Annotated[Path, typer.Option("--dir", help="where to write the PEM files")],
) -> None:
    """Create a node's Ed25519 and X25519 keys (PEM, mode 0600)."""
    try:
        NodeIdentity.generate(node).save(directory)
    except MeshError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=1) from None
    console.print(f"keys for {node!r} written to {directory}")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
