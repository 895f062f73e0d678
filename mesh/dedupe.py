"""The replay and duplicate filter a destination keeps, by message id.

Bounded in both directions: entries older than ``horizon_ms`` are forgotten,
and at most ``capacity`` ids are held. Forgetting must never let a replay in,
so the window remembers the newest creation time it has evicted (its floor)
and refuses anything created at or before it as too old to judge: a message
is accepted at most once, and the cost of a full window is refusing stale
messages early, never delivering twice. The store persists the window across
restarts (issue: delivery); this class is the pure logic.
"""

from __future__ import annotations

from collections import OrderedDict

from mesh.errors import Expired, InvalidArgument, Replayed


class DedupeWindow:
    """Message ids accepted recently, with their creation times."""

    def __init__(self, *, capacity: int = 100_000, horizon_ms: int = 600_000) -> None:
        if capacity < 1 or horizon_ms < 1:
            raise InvalidArgument("dedupe capacity and horizon must be positive")
        self.capacity = capacity
        self.horizon_ms = horizon_ms
        self._seen: OrderedDict[bytes, int] = OrderedDict()
        self._floor_ms = -1

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._seen

    @property
    def floor_ms(self) -> int:
        """Creation time at or before which every message is refused (-1: none yet)."""
        return self._floor_ms

    def accept(self, message_id: bytes, created_ms: int, now_ms: int) -> None:
        """Record ``message_id`` as delivered, or refuse it.

        Raises:
            Replayed: the id was already accepted within the window.
            Expired: the message is older than the window can vouch for.
        """
        self.expire(now_ms)
        if message_id in self._seen:
            raise Replayed(f"message {message_id.hex()} was already accepted")
        oldest = max(self._floor_ms, now_ms - self.horizon_ms)
        if created_ms <= oldest:
            raise Expired(
                f"message {message_id.hex()} was created {now_ms - created_ms} ms ago, "
                "older than the dedupe window"
            )
        self._seen[message_id] = created_ms
        while len(self._seen) > self.capacity:
            _, evicted_created = self._seen.popitem(last=False)
            self._floor_ms = max(self._floor_ms, evicted_created)

    def restore(self, seen: list[tuple[bytes, int]], floor_ms: int) -> None:
        """Reload a persisted window: its ids (oldest first) and the floor it had.

        The floor matters as much as the ids: ids evicted for capacity before a
        restart are not in the store, and without the floor their replays
        would look new.
        """
        for message_id, created_ms in seen:
            self._seen[message_id] = created_ms
        while len(self._seen) > self.capacity:
            _, evicted_created = self._seen.popitem(last=False)
            floor_ms = max(floor_ms, evicted_created)
        self._floor_ms = max(self._floor_ms, floor_ms)

    def expire(self, now_ms: int) -> None:
        """Forget ids whose creation time has fallen out of the horizon."""
        cutoff = now_ms - self.horizon_ms
        seen = self._seen
        while seen:
            message_id, created = next(iter(seen.items()))
            if created > cutoff:
                break
            del seen[message_id]
