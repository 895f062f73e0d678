"""Factories for the integration tests: launched meshes, the real CLI, rogue peers.

Every mesh is started through :func:`nodes.launcher.launch` (real processes,
real mTLS unless a test asks otherwise) and stopped in the fixture's
``finally``, so a failing test never leaves node processes behind. Waits are
bounded: a mesh that does not converge fails the test with the nodes named.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nodes.launcher import NODE_COMMAND, MeshHandle, launch

REPO = Path(__file__).resolve().parents[2]
TOPOLOGIES = REPO / "deploy" / "topologies"
CLI_TIMEOUT = 30.0
CONVERGE_TIMEOUT = 30.0

LINE5 = """\
mesh: line5
routing: link-state
nodes: {n1: {}, n2: {}, n3: {}, n4: {}, n5: {}}
links:
  - {a: n1, b: n2, cost: 1}
  - {a: n2, b: n3, cost: 3}
  - {a: n3, b: n4, cost: 2}
  - {a: n4, b: n5, cost: 4}
"""

RING6 = """\
mesh: ring6
routing: distance-vector
nodes: {r1: {}, r2: {}, r3: {}, r4: {}, r5: {}, r6: {}}
links:
  - {a: r1, b: r2, cost: 1}
  - {a: r2, b: r3, cost: 2}
  - {a: r3, b: r4, cost: 3}
  - {a: r4, b: r5, cost: 4}
  - {a: r5, b: r6, cost: 5}
  - {a: r6, b: r1, cost: 6}
"""

_INLINE = {"line5.yaml": LINE5, "ring6.yaml": RING6}


def topology_path(name: str, directory: Path) -> Path:
    """deploy/topologies/NAME when it exists, else the same topology written into ``directory``."""
    shipped = TOPOLOGIES / name
    if shipped.exists():
        return shipped
    path = directory / name
    path.write_text(_INLINE[name], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def mesh_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., MeshHandle]]:
    """``make(topology, insecure=False) -> MeshHandle``; every mesh is stopped at the end.

    ``topology`` is a file name under deploy/topologies (``"line5.yaml"``) or a Path.
    """
    handles: list[MeshHandle] = []

    def make(topology: str | Path, *, insecure: bool = False) -> MeshHandle:
        if isinstance(topology, Path):
            directory = tmp_path_factory.mktemp(topology.stem)
            path = topology
        else:
            directory = tmp_path_factory.mktemp(topology.removesuffix(".yaml"))
            path = topology_path(topology, directory)
        handle = launch(
            path,
            directory / "state",
            insecure=insecure,
            timeout=CONVERGE_TIMEOUT,
        )
        handles.append(handle)
        return handle

    try:
        yield make
    finally:
        for handle in handles:
            handle.stop()


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = CLI_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run the real `mesh` CLI in a subprocess; returns the CompletedProcess."""
    return subprocess.run(
        [*NODE_COMMAND, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )


def cli_json(*args: str, cwd: Path | None = None) -> Any:
    """Run a `mesh ... --json` command that must succeed; returns the parsed output."""
    result = run_cli(*args, "--json", cwd=cwd)
    assert result.returncode == 0, f"mesh {' '.join(args)} failed: {result.stderr.strip()}"
    return json.loads(result.stdout)
