"""Link costs: static from configuration, or derived from measured round trips.

An RTT-derived cost must not follow every jitter of the network, or routes
flap: the estimator smooths samples (an EWMA, as TCP's SRTT with gain 1/8) and
only moves the advertised cost when the smoothed value has left a band around
it (relative hysteresis) and the last change is old enough (a hold time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mesh.errors import InvalidArgument


@dataclass(frozen=True, slots=True, kw_only=True)
class CostPolicy:
    """How a link's cost is chosen."""

    rtt_derived: bool = False
    """False: the configured cost, always. True: from smoothed round-trip time."""
    unit_us: int = 100
    """RTT-derived cost is ceil(srtt / unit): by default one unit per 0.1 ms."""
    min_cost: int = 1
    max_cost: int = 65_535
    gain: float = 0.125
    """EWMA gain for new samples."""
    hysteresis: float = 0.25
    """Relative change of the smoothed cost needed before the cost moves."""
    hold_s: float = 5.0
    """Minimum time between two cost changes of one link."""

    def __post_init__(self) -> None:
        if not 0 < self.gain <= 1 or self.hysteresis < 0 or self.unit_us < 1:
            raise InvalidArgument("cost policy: gain in (0, 1], hysteresis >= 0, unit >= 1")
        if not 1 <= self.min_cost <= self.max_cost:
            raise InvalidArgument("cost policy: need 1 <= min_cost <= max_cost")


class LinkCost:
    """The cost of one link, fed with RTT samples when the policy derives it."""

    def __init__(self, configured: int, policy: CostPolicy) -> None:
        if configured < 1:
            raise InvalidArgument(f"link cost must be >= 1, got {configured}")
        self.policy = policy
        self.configured = configured
        self.cost = configured
        self.srtt_us: float | None = None
        self._changed_at: float | None = None

    def sample(self, rtt_us: float, now: float) -> bool:
        """Take one RTT sample; True when the advertised cost changed."""
        if rtt_us < 0:
            return False
        policy = self.policy
        if self.srtt_us is None:
            self.srtt_us = rtt_us
        else:
            self.srtt_us += policy.gain * (rtt_us - self.srtt_us)
        if not policy.rtt_derived:
            return False
        target = math.ceil(self.srtt_us / policy.unit_us)
        target = max(policy.min_cost, min(policy.max_cost, target))
        if self._changed_at is None:  # first estimate replaces the configured guess
            self._changed_at = now
            changed = target != self.cost
            self.cost = target
            return changed
        if abs(target - self.cost) <= policy.hysteresis * self.cost:
            return False
        if now - self._changed_at < policy.hold_s:
            return False
        self.cost = target
        self._changed_at = now
        return True


__all__ = ["CostPolicy", "LinkCost"]
