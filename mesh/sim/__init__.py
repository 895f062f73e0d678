"""Simulation: real ``NodeCore`` instances on a virtual clock (see docs/simulation.md)."""

from __future__ import annotations

from mesh.sim.fast import FastCoreNetwork, resolve_fidelity
from mesh.sim.network import CoreNetwork, NetworkStats, TrustedNodeCore
from mesh.sim.scenario import Event, LinkDefaults, Scenario, Traffic
from mesh.sim.simulation import Result, Simulation, simulate
from mesh.sim.topologies import KINDS, generate
from mesh.sim.truth import GroundTruth, expected_table, expected_tables, forwarding_path

__all__ = [
    "KINDS",
    "CoreNetwork",
    "Event",
    "FastCoreNetwork",
    "GroundTruth",
    "LinkDefaults",
    "NetworkStats",
    "Result",
    "Scenario",
    "Simulation",
    "Traffic",
    "TrustedNodeCore",
    "expected_table",
    "expected_tables",
    "forwarding_path",
    "generate",
    "resolve_fidelity",
    "simulate",
]
