"""What a simulation runs: a topology graph, traffic and timed events, as plain data.

The YAML form (validated, with errors naming file, field and reason) is read
by ``nodes/commands/sim.py``; code and tests build these directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import networkx as nx

TrafficKind = Literal["constant", "poisson", "burst"]
Mode = Literal["async", "acknowledged", "request"]
EngineName = Literal["link-state", "distance-vector"]
FidelityName = Literal["full", "fast", "auto"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Traffic:
    """One traffic generator."""

    kind: TrafficKind = "poisson"
    rate_per_s: float = 100.0
    """Messages per second (constant, poisson); bursts per second for ``burst``."""
    burst_size: int = 10
    """Messages sent back to back in each burst (``burst`` only)."""
    size: int = 256
    """Body bytes (random, so incompressible)."""
    mode: Mode = "async"
    sources: tuple[str, ...] = ()
    """Nodes that send; empty means every node."""
    to: tuple[str, ...] = ()
    """Destination nodes; empty means every node but the source."""
    service: str | None = None
    """Send to a service (one instance chosen by the source) instead of nodes."""
    subject: str | None = None
    """Publish on a subject (every subscriber) instead of sending to nodes."""
    start_s: float | None = None
    """Start time; None starts once the initial convergence is complete."""
    stop_s: float | None = None
    """Stop time; None runs to the end of the scenario."""
    deadline_s: float = 30.0
    """Deadline of acknowledged messages and requests."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One timed change. Exactly one of the action fields is set."""

    at_s: float
    cut: tuple[str, str] | None = None
    heal: tuple[str, str] | None = None
    heal_all: bool = False
    """Restore every link of the original topology between running nodes."""
    crash: str | None = None
    restart: str | None = None
    partition: tuple[tuple[str, ...], ...] | None = None
    """Groups of nodes; links between groups are cut (unlisted nodes form one more group)."""
    cost: tuple[str, str, int] | None = None

    def describe(self) -> str:
        """A short label for reports and plots: ``cut n3-n7``."""
        if self.cut:
            return f"cut {self.cut[0]}-{self.cut[1]}"
        if self.heal:
            return f"heal {self.heal[0]}-{self.heal[1]}"
        if self.heal_all:
            return "heal all"
        if self.crash:
            return f"crash {self.crash}"
        if self.restart:
            return f"restart {self.restart}"
        if self.partition is not None:
            return "partition " + " | ".join(",".join(g) for g in self.partition)
        if self.cost:
            return f"cost {self.cost[0]}-{self.cost[1]}={self.cost[2]}"
        return "nothing"


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkDefaults:
    """Link properties for links that do not set their own."""

    delay_ms: float = 1.0
    jitter_ms: float = 0.0
    bandwidth_mbit: float | None = None
    loss: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """A whole simulation run."""

    graph: nx.Graph
    """Nodes with optional ``services`` (name -> weight) and ``subjects``; edges with
    ``cost`` and optionally ``delay_ms``, ``loss``, ``rate_mbit``."""
    name: str = "scenario"
    routing: EngineName = "link-state"
    duration_s: float = 10.0
    seed: int = 0
    traffic: tuple[Traffic, ...] = ()
    events: tuple[Event, ...] = ()
    links: LinkDefaults = field(default_factory=LinkDefaults)
    trusted: bool = False
    """Pre-share identities and skip advert signatures (large meshes)."""
    drain_s: float = 1.0
    """After ``duration_s`` no traffic starts; the run goes on this long so messages land."""
    convergence_resolution_ms: float = 10.0
    """How often tables are compared with the ground truth while they differ."""
    fidelity: FidelityName = "auto"
    """``full``: every advert is a real frame through every core. ``fast``: flooding is
    computed (link-state only; see docs/simulation.md). ``auto``: fast above 400 nodes."""


__all__ = [
    "EngineName",
    "Event",
    "FidelityName",
    "LinkDefaults",
    "Mode",
    "Scenario",
    "Traffic",
    "TrafficKind",
]
