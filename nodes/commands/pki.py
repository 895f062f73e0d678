"""`mesh` commands: pki — create the mesh CA and issue node and client certificates.

``mesh ca init DIR [--mesh ID] [--force]`` and
``mesh cert issue NODE --ca DIR [--out DIR] [--client]``, thin wrappers around
nodes/pki.py. Failures print one ``error:`` line and exit 1, never a traceback:
an operator needs the file and the fix, not our stack.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from mesh.errors import MeshError
from nodes import pki

console = Console()
errors = Console(stderr=True)

ca_app = typer.Typer(no_args_is_help=True, help="The mesh certificate authority.")
cert_app = typer.Typer(no_args_is_help=True, help="Node and client certificates.")


@contextmanager
def _one_line_errors() -> Iterator[None]:
    try:
        yield
    except MeshError as exc:
        errors.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from None


def _written(paths: list[Path]) -> None:
    for path in paths:
        console.print(f"  wrote {path}", highlight=False, soft_wrap=True)


@ca_app.command("init")
def ca_init(
    directory: Annotated[Path, typer.Argument(help="folder for ca.pem and ca.key")],
    mesh: Annotated[str, typer.Option("--mesh", help="the mesh id certificates will carry")] = (
        "mesh"
    ),
    force: Annotated[
        bool, typer.Option("--force", help="replace an existing CA (orphans its certificates)")
    ] = False,
) -> None:
    """Create the mesh CA (ECDSA P-256, 10 years). Keep ca.key off the nodes."""
    with _one_line_errors():
        files = pki.init_ca(directory, mesh, force=force)
    console.print(f"CA for mesh {files.mesh_id!r} created:", highlight=False)
    _written([files.cert, files.key])


@cert_app.command("issue")
def cert_issue(
    name: Annotated[str, typer.Argument(help="node id (or client name with --client)")],
    ca: Annotated[Path, typer.Option("--ca", help="folder holding ca.pem and ca.key")],
    out: Annotated[
        Path | None, typer.Option("--out", help="where to write the files [default: ./NAME]")
    ] = None,
    client: Annotated[
        bool, typer.Option("--client", help="a client-only certificate for CLI/admin use")
    ] = False,
) -> None:
    """Issue a node certificate (with identity keys) or a client certificate."""
    target = out if out is not None else Path(name)
    with _one_line_errors():
        if client:
            client_files = pki.issue_client_certificate(name, ca, target)
            console.print(
                f"client certificate for {name!r} in mesh {client_files.mesh_id!r}:",
                highlight=False,
            )
            _written([client_files.cert, client_files.key, client_files.ca])
            return
        node_files = pki.issue_node_certificate(name, ca, target)
    console.print(f"node certificate for {name!r} in mesh {node_files.mesh_id!r}:", highlight=False)
    _written(
        [node_files.cert, node_files.key, node_files.signing, node_files.agreement, node_files.ca]
    )


def register(app: typer.Typer) -> None:
    """Add ``mesh ca ...`` and ``mesh cert ...`` to the root app."""
    app.add_typer(ca_app, name="ca")
    app.add_typer(cert_app, name="cert")
