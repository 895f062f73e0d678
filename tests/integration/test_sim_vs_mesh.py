"""The simulator and `mesh up` agree: same topology file, same routes after convergence."""

from __future__ import annotations

from collections.abc import Callable

from mesh.core import CoreConfig
from mesh.sim import CoreNetwork
from mesh.sim.simulation import ENGINES
from nodes.launcher import MeshHandle
from tests.integration.test_mesh_up import cli_routes


def test_simulated_and_real_ring6_routes_are_identical(
    mesh_factory: Callable[..., MeshHandle],
) -> None:
    handle = mesh_factory("ring6.yaml")
    topology = handle.topology
    net = CoreNetwork(
        topology.graph(), CoreConfig(mesh_id=topology.mesh, engine=ENGINES[topology.routing])
    )
    net.run_until_converged(max_time=30)
    simulated = {
        node: {d: (r.cost, frozenset(r.next_hops)) for d, r in table.items()}
        for node, table in net.tables().items()
    }
    assert cli_routes(handle) == simulated
