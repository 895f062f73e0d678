"""Choosing one instance of a service, and keeping retries from multiplying load.

Instances are the nodes that advertise the service (with a weight). Policies:

- ``round-robin``: each eligible node in turn, exactly.
- ``weighted``: smooth weighted round-robin (nginx's): over any window of
  sum(weights) picks, each node gets exactly its share, interleaved.
- ``least-outstanding``: the node with the fewest requests in flight from here.
- ``latency``: power of two choices (as Linkerd's balancer): two random
  eligible nodes, keep the one with the lower score, where the score is the
  moving average of its latency times (outstanding + 1), plus the path cost.

A node that fails or times out is ejected for a while (doubling per
consecutive failure, capped); while every node is ejected, all are eligible
again rather than failing outright. ``RetryBudget`` caps retries at a fraction
of requests, so a sick service does not get its load multiplied.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mesh.errors import InvalidArgument
from mesh.routing.table import ServiceInstance


class Policy(enum.Enum):
    """How a service's instance is chosen."""

    ROUND_ROBIN = "round-robin"
    WEIGHTED = "weighted"
    LEAST_OUTSTANDING = "least-outstanding"
    LATENCY = "latency"


@dataclass(frozen=True, slots=True, kw_only=True)
class BalanceConfig:
    """Ejection and scoring parameters."""

    eject_base_s: float = 1.0
    """First ejection lasts this long; each consecutive failure doubles it."""
    eject_max_s: float = 30.0
    latency_gain: float = 0.3
    """EWMA gain of latency samples."""
    initial_latency_s: float = 0.005
    """Assumed latency of an instance never measured."""
    cost_weight_s: float = 0.0001
    """Seconds of score per unit of path cost (latency policy)."""


@dataclass(slots=True)
class _InstanceState:
    outstanding: int = 0
    latency_s: float | None = None
    failures: int = 0
    ejected_until: float = 0.0
    current_weight: int = 0


@dataclass(slots=True)
class _ServiceState:
    turn: int = 0
    instances: dict[str, _InstanceState] = field(default_factory=dict)


class Balancer:
    """Per-node choice among the instances of each service."""

    def __init__(self, rng: random.Random, config: BalanceConfig | None = None) -> None:
        self.rng = rng
        self.config = config or BalanceConfig()
        self.policies: dict[str, Policy] = {}
        self._services: dict[str, _ServiceState] = {}

    def set_policy(self, service: str, policy: Policy | str) -> None:
        """Choose how ``service`` is balanced (round-robin by default)."""
        try:
            self.policies[service] = Policy(policy)
        except ValueError:
            names = ", ".join(p.value for p in Policy)
            raise InvalidArgument(f"unknown balancing policy {policy!r}; one of {names}") from None

    def _state(self, service: str, node: str) -> _InstanceState:
        svc = self._services.setdefault(service, _ServiceState())
        return svc.instances.setdefault(node, _InstanceState())

    def choose(
        self,
        service: str,
        instances: Sequence[ServiceInstance],
        now: float,
        *,
        costs: Mapping[str, int] | None = None,
        exclude: frozenset[str] = frozenset(),
        policy: Policy | None = None,
    ) -> str | None:
        """The node to send the next request for ``service`` to, or None.

        ``policy`` overrides the service's configured policy for this choice
        (a caller may ask for its own without changing it for others).
        """
        candidates = sorted((i for i in instances if i.node not in exclude), key=lambda i: i.node)
        if not candidates:
            return None
        svc = self._services.setdefault(service, _ServiceState())
        healthy = [i for i in candidates if self._state(service, i.node).ejected_until <= now]
        pool = healthy or candidates
        if policy is None:
            policy = self.policies.get(service, Policy.ROUND_ROBIN)
        if policy is Policy.ROUND_ROBIN:
            chosen = pool[svc.turn % len(pool)]
            svc.turn += 1
            return chosen.node
        if policy is Policy.WEIGHTED:
            total = 0
            best: ServiceInstance | None = None
            best_weight = 0
            for instance in pool:
                state = self._state(service, instance.node)
                weight = max(1, instance.weight)
                state.current_weight += weight
                total += weight
                if best is None or state.current_weight > best_weight:
                    best, best_weight = instance, state.current_weight
            assert best is not None
            self._state(service, best.node).current_weight -= total
            return best.node
        if policy is Policy.LEAST_OUTSTANDING:
            least = min(self._state(service, i.node).outstanding for i in pool)
            tied = [i for i in pool if self._state(service, i.node).outstanding == least]
            chosen = tied[svc.turn % len(tied)]
            svc.turn += 1
            return chosen.node
        # latency: power of two choices
        if len(pool) == 1:
            return pool[0].node
        first, second = self.rng.sample(pool, 2)
        scores = [self._score(service, i.node, costs) for i in (first, second)]
        return first.node if scores[0] <= scores[1] else second.node

    def _score(self, service: str, node: str, costs: Mapping[str, int] | None) -> float:
        state = self._state(service, node)
        latency = state.latency_s if state.latency_s is not None else self.config.initial_latency_s
        cost = (costs or {}).get(node, 0)
        return latency * (state.outstanding + 1) + cost * self.config.cost_weight_s

    def started(self, service: str, node: str) -> None:
        """A request to ``node`` is in flight."""
        self._state(service, node).outstanding += 1

    def finished(self, service: str, node: str, now: float, latency_s: float, ok: bool) -> None:
        """A request to ``node`` ended (reply, error or timeout)."""
        state = self._state(service, node)
        state.outstanding = max(0, state.outstanding - 1)
        if ok:
            gain = self.config.latency_gain
            if state.latency_s is None:
                state.latency_s = latency_s
            else:
                state.latency_s += gain * (latency_s - state.latency_s)
            state.failures = 0
            return
        state.failures += 1
        duration = min(
            self.config.eject_max_s, self.config.eject_base_s * 2 ** (state.failures - 1)
        )
        state.ejected_until = now + duration

    def ejected(self, service: str, now: float) -> list[str]:
        """Nodes of ``service`` currently ejected."""
        svc = self._services.get(service)
        if svc is None:
            return []
        return sorted(n for n, s in svc.instances.items() if s.ejected_until > now)


class RetryBudget:
    """A token bucket that lets retries add at most ``ratio`` of the request load.

    Each first attempt deposits ``ratio`` tokens (up to ``cap``); each retry
    spends one. ``min_tokens`` lets a quiet caller retry at all.
    """

    def __init__(self, ratio: float = 0.2, cap: float = 100.0, min_tokens: float = 10.0) -> None:
        if not 0 <= ratio <= 1 or cap < min_tokens:
            raise InvalidArgument("retry budget: ratio in [0, 1], cap >= min_tokens")
        self.ratio = ratio
        self.cap = cap
        self.tokens = min_tokens

    def deposit(self) -> None:
        self.tokens = min(self.cap, self.tokens + self.ratio)

    def withdraw(self) -> bool:
        """True (and one token spent) when a retry is allowed."""
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


__all__ = ["BalanceConfig", "Balancer", "Policy", "RetryBudget"]
