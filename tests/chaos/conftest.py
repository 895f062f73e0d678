"""The reliability battery on `mesh up` processes: shared meshes, clients and waits.

Every fault test runs acknowledged traffic through :class:`nodes.chaos.workload.Flow`
and passes only on the checker's 0 lost / 0 duplicated / 0 unexpected. Figures
(how fast a failure was noticed, rerouted, recovered) are measured and written
with :func:`nodes.chaos.report.record`, never asserted. ``MESH_CHAOS_LONG=1``
(``make chaos``) stretches every duration.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

import mesh
from mesh.client import Client
from nodes.launcher import MeshHandle
from tests.integration.conftest import mesh_factory  # noqa: F401  (a fixture)

LONG = os.environ.get("MESH_CHAOS_LONG", "") not in ("", "0")
SCALE = 5.0 if LONG else 1.0
"""Duration multiplier: CI runs the short battery, `make chaos` the long one."""
SETTLE_TIMEOUT = 90.0
"""Seconds every accepted message gets to arrive after the traffic stops."""

DIAMOND = """\
mesh: diamond
routing: link-state
nodes: {s: {}, p: {}, q: {}, d: {}}
links:
  - {a: s, b: p, cost: 1}
  - {a: p, b: d, cost: 1}
  - {a: s, b: q, cost: 2}
  - {a: q, b: d, cost: 2}
"""
"""s sends to d over p (cost 2); q is the way around (cost 4)."""


def write_topology(tmp_path_factory: pytest.TempPathFactory, name: str, text: str) -> Path:
    path = tmp_path_factory.mktemp(name) / f"{name}.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def diamond(
    mesh_factory: Callable[..., MeshHandle],  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> MeshHandle:
    return mesh_factory(write_topology(tmp_path_factory, "diamond", DIAMOND))


async def client_of(handle: MeshHandle, node: str) -> Client:
    return await mesh.connect(node=node, state_dir=handle.state_dir)


@pytest.fixture
async def clients(diamond: MeshHandle) -> AsyncIterator[Callable[[str], Client]]:
    """``clients(node)``: an SDK client per node of the diamond, opened up front."""
    opened = {node: await client_of(diamond, node) for node in diamond.nodes}
    try:
        yield opened.__getitem__
    finally:
        for client in opened.values():
            await client.close()


async def until(check: Callable[[], bool], timeout: float, interval: float = 0.02) -> float:
    """Poll ``check`` (run in a thread: admin calls block) until true; seconds waited.

    Raises:
        TimeoutError: still false after ``timeout`` s.
    """
    started = time.monotonic()
    while True:
        if await asyncio.to_thread(check):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"still false after {timeout:.0f} s: {check}")
        await asyncio.sleep(interval)


def next_hops(handle: MeshHandle, node: str, destination: str) -> list[str]:
    with handle.client(node) as admin:
        for route in admin.routes():
            if route.destination == destination:
                return route.next_hops
    return []


def linked(handle: MeshHandle, node: str) -> set[str]:
    with handle.client(node) as admin:
        return {peer.node_id for peer in admin.peers() if peer.state == "up"}


def stats(handle: MeshHandle, node: str) -> dict[str, int]:
    with handle.client(node) as admin:
        return admin.stats()


def total(handle: MeshHandle, counter: str) -> int:
    """``counter`` summed over every running node."""
    return sum(stats(handle, node).get(counter, 0) for node in handle.nodes if handle.running(node))


def restore(handle: MeshHandle) -> None:
    """Every node running, every link up, routes converged: the next test's start."""
    for node in handle.nodes:
        if not handle.running(node):
            handle.restart(node)
    for node in handle.nodes:
        handle.rejoin(node)
    handle.wait_converged(timeout=30)
