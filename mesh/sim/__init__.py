"""Simulation: real ``NodeCore`` instances on a virtual clock."""

from __future__ import annotations

from mesh.sim.network import CoreNetwork, NetworkStats
from mesh.sim.truth import expected_table, expected_tables, forwarding_path

__all__ = ["CoreNetwork", "NetworkStats", "expected_table", "expected_tables", "forwarding_path"]
