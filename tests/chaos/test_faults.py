"""Faults on `mesh up` processes while acknowledged traffic flows, judged by the checker.

One diamond (s-p-d preferred, s-q-d around) serves every test; each test
restores it (nodes running, links up, converged) whatever happens. s sends,
d receives. Timings are recorded in the battery's report, not asserted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mesh.client import Client
from nodes.chaos.faults import faketime_library, skewed_clock_env
from nodes.chaos.report import record
from nodes.chaos.workload import Flow
from nodes.launcher import MeshHandle

from .conftest import (
    SCALE,
    SETTLE_TIMEOUT,
    client_of,
    linked,
    next_hops,
    restore,
    stats,
    total,
    until,
)

RATE = 150.0
"""Messages per second of every fault test's stream (well under what the diamond carries)."""


async def test_kill_9_of_a_forwarding_node(
    diamond: MeshHandle, clients: Callable[[str], Client], tmp_path: Path
) -> None:
    try:
        async with Flow(clients("s"), clients("d"), "d", run="kill", directory=tmp_path) as flow:
            traffic = asyncio.ensure_future(flow.sender.run(rate_per_s=RATE, duration_s=6 * SCALE))
            await asyncio.sleep(2 * SCALE)
            assert next_hops(diamond, "s", "d") == ["p"]
            diamond.kill("p")
            noticed_s = await until(lambda: "p" not in linked(diamond, "s"), 10)
            rerouted_s = await until(lambda: next_hops(diamond, "s", "d") == ["q"], 10)
            await traffic
            verdict = await flow.settle(SETTLE_TIMEOUT)
        record(
            "kill-forwarder",
            {
                **flow.figures(verdict),
                "noticed_s": round(noticed_s, 3),
                "rerouted_s": round(rerouted_s, 3),
                "targets": "noticed <= 1 s, rerouted <= 3 s",
            },
        )
        assert verdict.ok, verdict.summary()
    finally:
        restore(diamond)


async def test_a_link_cut_and_restored(
    diamond: MeshHandle, clients: Callable[[str], Client], tmp_path: Path
) -> None:
    try:
        async with Flow(clients("s"), clients("d"), "d", run="cut", directory=tmp_path) as flow:
            traffic = asyncio.ensure_future(flow.sender.run(rate_per_s=RATE, duration_s=8 * SCALE))
            await asyncio.sleep(2 * SCALE)
            diamond.set_link("p", "d", up=False)
            rerouted_s = await until(lambda: next_hops(diamond, "s", "d") == ["q"], 10)
            await asyncio.sleep(2 * SCALE)
            diamond.set_link("p", "d", up=True)
            back_s = await until(lambda: next_hops(diamond, "s", "d") == ["p"], 10)
            await traffic
            verdict = await flow.settle(SETTLE_TIMEOUT)
        record(
            "cut-link",
            {
                **flow.figures(verdict),
                "rerouted_s": round(rerouted_s, 3),
                "back_s": round(back_s, 3),
            },
        )
        assert verdict.ok, verdict.summary()
    finally:
        restore(diamond)


async def test_a_node_cut_off_for_30_s_gets_its_messages_after_the_heal(
    diamond: MeshHandle, clients: Callable[[str], Client], tmp_path: Path
) -> None:
    # d, the destination, loses every link: s keeps accepting (the outbox holds
    # what it cannot deliver) and delivers it all once d is back.
    try:
        ttl_drops = total(diamond, "dropped_ttl")
        async with Flow(
            clients("s"), clients("d"), "d", run="isolate", directory=tmp_path, timeout=300
        ) as flow:
            await flow.sender.run(rate_per_s=RATE, duration_s=1)
            diamond.isolate("d")
            await until(lambda: next_hops(diamond, "s", "d") == [], 10)
            await flow.sender.run(rate_per_s=RATE, duration_s=30)
            outboxed = flow.sender.stats.accepted - len(set(flow.receiver.arrived))
            healed_at = time.monotonic()
            diamond.rejoin("d")
            verdict = await flow.settle(SETTLE_TIMEOUT)
            after_heal_s = time.monotonic() - healed_at - 1.0  # settle lingers 1 s
        figures = {
            **flow.figures(verdict),
            "isolated_s": 30,
            "held_in_outbox": outboxed,
            "all_delivered_after_heal_s": round(after_heal_s, 3),
            "ttl_drops": total(diamond, "dropped_ttl") - ttl_drops,
            "target": "delivered <= 10 s after the heal, no loop",
        }
        record("isolate-30s", figures)
        assert verdict.ok, verdict.summary()
        assert outboxed > 0
        assert figures["ttl_drops"] == 0  # a loop would burn ttls
    finally:
        restore(diamond)


async def test_the_sending_node_killed_after_n_acknowledged_sends(
    diamond: MeshHandle, clients: Callable[[str], Client], tmp_path: Path
) -> None:
    # s is cut off first, so every accepted message is only in s's outbox (on
    # disk, fsynced before Send returned) when s is SIGKILLed.
    count = int(300 * SCALE)
    try:
        diamond.isolate("s")
        sender = await client_of(diamond, "s")
        try:
            async with Flow(
                sender, clients("d"), "d", run="kill-sender", directory=tmp_path, timeout=300
            ) as flow:
                await flow.sender.send_count(count)
                assert flow.sender.stats.accepted == count
                assert not flow.receiver.arrived
                diamond.kill("s")
                diamond.restart("s")
                restarted_at = time.monotonic()
                diamond.rejoin("s")
                verdict = await flow.settle(SETTLE_TIMEOUT)
                after_s = time.monotonic() - restarted_at - 1.0
        finally:
            await sender.close()
        record(
            "kill-sender",
            {**flow.figures(verdict), "accepted_before_kill": count, "delivered_after_s": after_s},
        )
        assert verdict.ok, verdict.summary()
        assert verdict.delivered == count
    finally:
        restore(diamond)


async def test_sigstop_of_a_forwarder_for_10_s(
    diamond: MeshHandle, clients: Callable[[str], Client], tmp_path: Path
) -> None:
    # p stops answering but its sockets stay open: s must notice by silence,
    # callers waiting for an ack see DEADLINE_EXCEEDED, retransmits go via q,
    # and whatever p forwards after SIGCONT reaches d as duplicates, dropped.
    waited: list[str] = []

    async def wait_for_acks(flow: Flow, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            waited.append(await flow.sender.send_one(wait_for_ack=True, timeout=0.5))
            await asyncio.sleep(0.05)

    try:
        duplicates = stats(diamond, "d").get("duplicates", 0)
        async with Flow(clients("s"), clients("d"), "d", run="sigstop", directory=tmp_path) as flow:
            traffic = asyncio.ensure_future(flow.sender.run(rate_per_s=RATE, duration_s=14 * SCALE))
            await asyncio.sleep(2)
            probes = asyncio.ensure_future(wait_for_acks(flow, 4))
            await asyncio.sleep(0.5)
            diamond.pause("p")
            paused_at = time.monotonic()
            noticed_s = await until(lambda: "p" not in linked(diamond, "s"), 10)
            rerouted_s = await until(lambda: next_hops(diamond, "s", "d") == ["q"], 10)
            await probes
            await asyncio.sleep(max(0.0, 10 - (time.monotonic() - paused_at)))
            diamond.resume("p")
            await traffic
            verdict = await flow.settle(SETTLE_TIMEOUT, linger=3.0)
        record(
            "sigstop-10s",
            {
                **flow.figures(verdict),
                "noticed_s": round(noticed_s, 3),
                "rerouted_s": round(rerouted_s, 3),
                "ack_waits": {name: waited.count(name) for name in sorted(set(waited))},
                "late_duplicates_dropped_at_d": stats(diamond, "d").get("duplicates", 0)
                - duplicates,
            },
        )
        assert verdict.ok, verdict.summary()
        assert "DEADLINE_EXCEEDED" in waited  # acks held up behind the frozen hop
        assert "accepted" in waited
    finally:
        if diamond.running("p"):
            diamond.resume("p")
        restore(diamond)


@pytest.mark.skipif(
    faketime_library() is None, reason="libfaketime missing (apt-get install faketime)"
)
async def test_a_node_30_s_off_works_and_300_s_off_is_refused(
    diamond: MeshHandle, clients: Callable[[str], Client], tmp_path: Path
) -> None:
    try:
        # p, the forwarder on the path, and d, the destination, run 30 s ahead of s:
        # traffic flows through p to d.
        diamond.restart("p", env=skewed_clock_env(30))
        diamond.restart("d", env=skewed_clock_env(30))
        diamond.wait_converged(timeout=30)
        # A 10 s deadline on s's clock has "passed" on p's and d's: p must forward
        # anyway and d deliver. (d restarted: its client is a new one.)
        receiver = await client_of(diamond, "d")
        async with Flow(
            clients("s"), receiver, "d", run="skew30", directory=tmp_path, timeout=10
        ) as flow:
            assert next_hops(diamond, "s", "d") == ["p"]
            await flow.sender.run(rate_per_s=RATE, duration_s=3 * SCALE)
            verdict = await flow.settle(SETTLE_TIMEOUT)
        await receiver.close()
        record("clock-30s", {**flow.figures(verdict), "offset_s": 30, "skewed": "p, d"})
        assert verdict.ok, verdict.summary()
        assert flow.sender.stats.refused == {}, flow.sender.stats.first_refusal

        # 300 s behind: every neighbour refuses its hello; the mesh routes around it.
        refused = total(diamond, "links_refused_clock")
        diamond.restart("p", env=skewed_clock_env(-300))
        await until(lambda: total(diamond, "links_refused_clock") > refused, 15)
        await until(lambda: next_hops(diamond, "s", "d") == ["q"], 15)
        assert "p" not in linked(diamond, "s")
        log = Path(diamond.state.nodes["s"].log).read_text()
        assert "clock is" in log and "more than the 60 s allowed" in log
        record("clock-300s", {"offset_s": -300, "refused_links": True})
    finally:
        diamond.restart("p")
        diamond.restart("d")
        restore(diamond)
