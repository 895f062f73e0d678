"""Acknowledged traffic through the SDK, recorded in checker ledgers.

The sender is an open-loop generator (messages are due at a steady rate
whether or not earlier ones have been answered, as real clients are), bounded
by ``max_in_flight`` so a stalled mesh cannot make it grow without limit;
the receiver records every id the application gets and the one-way latency.
Both run inside one asyncio loop, beside whatever fault the caller injects.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh.client import Client, RemoteCallError, Subscription, Target
from mesh.errors import MeshError

from .checker import ACCEPTED, ATTEMPT, RECEIVED, REFUSED, Ledger, Verdict, check_ledgers


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))
    return ordered[rank]


@dataclass(slots=True)
class SendStats:
    """What the sending application saw."""

    attempted: int = 0
    accepted: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    """Status name -> count of sends the node refused (or that failed in transport)."""
    accept_ms: list[float] = field(default_factory=list)
    """How long each accepted send took to be accepted (stored durably by the node)."""
    first_refusal: dict[str, str] = field(default_factory=dict)
    """Status name -> the first refusal's message, to tell what each status meant."""
    shed: int = 0
    """Sends :meth:`AckedSender.run` skipped because ``max_in_flight`` were outstanding
    (never attempted, so never in a ledger)."""

    def snapshot(self) -> SendStats:
        """A copy that later sends do not change."""
        return SendStats(
            attempted=self.attempted,
            accepted=self.accepted,
            refused=Counter(self.refused),
            accept_ms=list(self.accept_ms),
            first_refusal=dict(self.first_refusal),
            shed=self.shed,
        )


class AckedSender:
    """Acknowledged messages of ``size`` bytes from one SDK client to one target.

    Ids are ``{run}-{seq}``; each is recorded as ``attempt`` before the call and
    ``accepted`` or ``refused`` after it.
    """

    def __init__(
        self,
        client: Client,
        target: str,
        ledger: Ledger,
        *,
        run: str,
        to: Target = "node",
        size: int = 1024,
        timeout: float = 120.0,
        max_in_flight: int = 256,
    ) -> None:
        self.client = client
        self.target = target
        self.ledger = ledger
        self.run_name = run
        self.to: Target = to
        self.timeout = timeout
        self.stats = SendStats()
        self._padding = "x" * max(0, size - 64)
        self._seq = 0
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()

    def _next_id(self) -> str:
        self._seq += 1
        return f"{self.run_name}-{self._seq}"

    async def send_one(self, *, wait_for_ack: bool = False, timeout: float | None = None) -> str:
        """Send one message now; ``"accepted"`` or the status name it was refused with.

        With ``wait_for_ack`` the call returns only after the destination's
        end-to-end ack (or fails DEADLINE_EXCEEDED after ``timeout``); a message
        that timed out that way may still arrive, and counts as indeterminate.
        """
        message_id = self._next_id()
        body = {"id": message_id, "sent": time.time(), "pad": self._padding}
        self.ledger.record(ATTEMPT, message_id)
        self.stats.attempted += 1
        started = time.monotonic()
        try:
            await self.client.send(
                self.target,
                body,
                to=self.to,
                acknowledged=True,
                wait_for_ack=wait_for_ack,
                timeout=self.timeout if timeout is None else timeout,
            )
        except RemoteCallError as exc:
            return self._refused(message_id, exc.status.name, str(exc))
        except MeshError as exc:
            return self._refused(message_id, type(exc).__name__, str(exc))
        self.stats.accepted += 1
        self.stats.accept_ms.append((time.monotonic() - started) * 1000)
        self.ledger.record(ACCEPTED, message_id)
        return ACCEPTED

    def _refused(self, message_id: str, status: str, message: str) -> str:
        self.stats.refused[status] += 1
        self.stats.first_refusal.setdefault(status, message[:300])
        self.ledger.record(REFUSED, message_id, status=status)
        return status

    async def _send_in_slot(self) -> None:
        try:
            await self.send_one()
        finally:
            self._slots.release()

    async def run(self, *, rate_per_s: float, duration_s: float) -> None:
        """Offer ``rate_per_s`` for ``duration_s`` (shedding what finds no free slot), then
        wait for the outstanding calls."""
        if rate_per_s <= 0 or duration_s < 0:
            raise ValueError("rate_per_s must be positive and duration_s not negative")
        loop = asyncio.get_running_loop()
        started = loop.time()
        interval = 1.0 / rate_per_s
        due = started
        while due < started + duration_s:
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            due += interval
            if self._slots.locked():
                # The open loop sheds here rather than waiting: waiting would turn
                # it into a closed loop that offers only what the mesh absorbs.
                self.stats.shed += 1
                continue
            await self._slots.acquire()
            task = asyncio.ensure_future(self._send_in_slot())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await self.drain()

    async def send_count(self, count: int) -> None:
        """Send ``count`` messages as fast as ``max_in_flight`` allows."""
        for _ in range(count):
            await self._slots.acquire()
            task = asyncio.ensure_future(self._send_in_slot())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await self.drain()

    async def drain(self) -> None:
        """Wait for every outstanding send (each is bounded by ``timeout``)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks))

    async def cancel(self) -> None:
        """Cancel the outstanding sends and wait until they are gone."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Receiver:
    """Records every id delivered to this node's application, with its one-way latency."""

    def __init__(self, client: Client, ledger: Ledger, rate_per_s: float | None = None) -> None:
        self.client = client
        self.ledger = ledger
        self.rate_per_s = rate_per_s
        """Take at most this many messages a second (a slow consumer); None: as they come."""
        self.latency_ms: list[float] = []
        self.arrived: Counter[str] = Counter()
        self._subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def start(self) -> None:
        self._subscription = self.client.receive()
        self._task = asyncio.ensure_future(self._consume(self._subscription))

    async def _consume(self, subscription: Subscription) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        async for message in subscription:
            if self.rate_per_s is not None:
                # A slow application: the SDK's buffer, the stream and the node's
                # queue fill behind it, and back-pressure reaches the sources.
                next_at = max(next_at + 1.0 / self.rate_per_s, loop.time())
                await asyncio.sleep(next_at - loop.time())
            try:
                body: Any = message.json()
                message_id = str(body["id"])
                sent = float(body["sent"])
            except (MeshError, KeyError, TypeError, ValueError):
                message_id, sent = f"<not ours:{message.message_id.hex()}>", time.time()
            self.latency_ms.append((time.time() - sent) * 1000)
            self.arrived[message_id] += 1
            self.ledger.record(RECEIVED, message_id)
            self._changed.set()

    async def wait_for(self, ids: set[str], timeout: float) -> set[str]:
        """Wait until every id in ``ids`` arrived or ``timeout`` passed; return the missing ones."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            missing = {message for message in ids if message not in self.arrived}
            remaining = deadline - loop.time()
            if not missing or remaining <= 0:
                return missing
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 1.0))

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, MeshError):
                await self._task


class Flow:
    """One acknowledged stream from a sending application to a receiving one, judged at the end.

    ``async with Flow(sender_client, receiver_client, "d", run="kill") as flow:``
    starts the receiver; drive ``flow.sender`` (``run`` or ``send_count``) while
    injecting faults, then :meth:`settle` waits for every accepted id and
    returns the checker's verdict. Ledgers go to ``directory`` when given.
    """

    def __init__(
        self,
        sender_client: Client,
        receiver_client: Client,
        destination: str,
        *,
        run: str,
        directory: Path | None = None,
        receive_rate_per_s: float | None = None,
        **sender_options: Any,
    ) -> None:
        self.sent = Ledger(directory / f"{run}-sent.jsonl" if directory else None)
        self.received = Ledger(directory / f"{run}-received.jsonl" if directory else None)
        self.sender = AckedSender(sender_client, destination, self.sent, run=run, **sender_options)
        self.receiver = Receiver(receiver_client, self.received, receive_rate_per_s)
        self.settle_s = 0.0
        """Seconds :meth:`settle` waited after the sender drained, for the last arrivals."""

    async def __aenter__(self) -> Flow:
        await self.receiver.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.sender.cancel()
        await self.receiver.stop()
        self.sent.close()
        self.received.close()

    async def settle(self, timeout: float, *, linger: float = 1.0) -> Verdict:
        """Wait for the sender's outstanding calls, then until every accepted id arrived
        (at most ``timeout`` s), then ``linger`` s more for late duplicates; the verdict."""
        await self.sender.drain()
        started = time.monotonic()
        await self.receiver.wait_for(set(self.sent.ids(ACCEPTED)), timeout)
        self.settle_s = time.monotonic() - started
        await asyncio.sleep(linger)
        return check_ledgers([self.sent], [self.received])

    def figures(self, verdict: Verdict) -> dict[str, Any]:
        """The common figures of a run, for :func:`nodes.chaos.report.record`."""
        stats = self.sender.stats
        return {
            "counts": verdict.counts(),
            "refused": dict(stats.refused),
            "shed_by_client": stats.shed,
            "first_refusal": dict(stats.first_refusal),
            "latency_p50_ms": percentile(self.receiver.latency_ms, 50),
            "latency_p99_ms": percentile(self.receiver.latency_ms, 99),
            "accept_p99_ms": percentile(stats.accept_ms, 99),
            "settle_s": round(self.settle_s, 3),
        }
