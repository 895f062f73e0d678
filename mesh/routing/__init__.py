"""Routing: one table shape, two engines (link-state and distance-vector)."""

from __future__ import annotations

from mesh.routing.base import Outgoing, RoutingEngine
from mesh.routing.table import Route, RoutingTable, ServiceInstance

__all__ = ["Outgoing", "Route", "RoutingEngine", "RoutingTable", "ServiceInstance"]
