"""Network faults on the testbed (issue 8, item 2): loss and a rate cap under acknowledged traffic.

A three-node chain ``a - b - c`` with acknowledged 1 KiB messages from ``a``
to ``c`` while the ``b - c`` link has 1 % loss, then 30 % loss (each
direction, nftables or netem), then a rate cap (tbf or netem). A chain and
not a triangle: with a way around, routing could carry the traffic past the
bad link (a flapping link is declared dead and the route moves), and the test
would measure rerouting, which tests/netns/test_lab.py already covers. Here
every message and every ack must cross the impaired link, so what is judged
is the delivery layer: TCP below, the mesh's end-to-end retransmissions and
dedupe above, through a forwarder.

Each case is judged by :mod:`nodes.chaos.checker` (0 lost, 0 duplicated, 0
unexpected). "Retries add at most 20 % load" is measured at the source as
end-to-end retransmissions / first sends (``retransmits`` and
``acknowledged_sent`` from ``a``'s Stats); the link-level cost is the bytes
and packets the kernel counted on ``b - c`` per message, against a clean run
of the same workload. The workload's padding is compressible (the envelope
compresses bodies with zstd), so a message costs a few hundred bytes on the
wire, not 1 KiB: the rate cap is therefore sized from the clean run, so that
the offered load fills a given share of it (75 %: the traffic fits; 150 %:
an overloaded link, where a backlog builds and the retransmissions' share of
the load shows), rather than fixed at a rate this machine could never fill.
Every figure goes to :func:`nodes.chaos.report.record`; the retry ratio is
asserted for both loss rates (see ``CASES``), times never.
``MESH_CHAOS_LONG=1`` makes every run five times longer (except the
overload's, whose backlog grows with it).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import mesh
from nodes import lab
from nodes.chaos import report
from nodes.chaos.checker import Verdict
from nodes.chaos.workload import Flow
from nodes.commands import lab as lab_commands
from tests.netns.conftest import REASON

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(REASON is not None, reason=REASON or ""),
]

LONG = os.environ.get("MESH_CHAOS_LONG", "") not in ("", "0")
SCALE = 5 if LONG else 1
SEND_SECONDS = 8.0 * SCALE
"""How long each case offers traffic."""
RATE = 50.0
"""Messages per second offered; well within what three Python nodes on two cores carry."""
SIZE = 1024
MESSAGE_TIMEOUT = 120.0
"""Each message's delivery deadline: far beyond any case, so a slow path is not a loss."""
ARRIVAL_BUDGET = 60.0 * SCALE
"""Bound on the wait for every accepted message after the last send."""
SETTLE = 1.0
"""Seconds to keep listening after the last arrival: a late duplicate would show now."""
RETRY_TARGET = 0.20
"""The issue's target: end-to-end retransmissions add at most 20 % to the first sends."""

CHAIN = """\
mesh: chaoslab
nodes: {a: {}, b: {}, c: {}}
links:
  - {a: a, b: b}
  - {a: b, b: c}
"""


@dataclass(frozen=True, slots=True)
class Case:
    """One fault on ``b - c``."""

    check: str
    """The figures' name in the report."""
    loss: float = 0.0
    cap_load: float = 0.0
    """Cap b - c so that the clean run's b -> c bytes per second are this share of
    the cap (0: no cap)."""
    seconds: float = SEND_SECONDS
    """How long traffic is offered (an overload's backlog grows with it)."""
    assert_ratio: bool = False
    """Assert the retry target (only where it holds run after run)."""


@dataclass(slots=True)
class Run:
    """What one case measured."""

    verdict: Verdict
    figures: dict[str, Any]


@pytest.fixture(scope="module")
def chain(lab_factory: Callable[[str, str], lab.Lab]) -> Iterator[lab.Lab]:
    handle = lab_factory("chaoslab", CHAIN)
    try:
        yield handle
    finally:
        handle.close()


@pytest.fixture
def clean_link(chain: lab.Lab) -> Iterator[lab.Lab]:
    """The chain with an unimpaired ``b - c``, before and after the test, and converged."""
    chain.impair("b", "c", loss=0, rate_mbit=0)
    try:
        yield chain
    finally:
        chain.impair("b", "c", loss=0, rate_mbit=0)
        chain.wait_converged(timeout=30)


def _stats(handle: lab.Lab, node: str) -> dict[str, int]:
    with handle.client(node) as client:
        return client.stats()


def _delta(after: dict[str, int], before: dict[str, int], key: str) -> int:
    return after.get(key, 0) - before.get(key, 0)


def _wait_resolved(handle: lab.Lab, before: dict[str, int], timeout: float) -> dict[str, int]:
    """Poll ``a`` until every acknowledged message it sent was acked or failed (bounded).

    The retransmit count is final only then: an unacked message may still be resent.
    """
    deadline = time.monotonic() + timeout
    while True:
        now = _stats(handle, "a")
        sent = _delta(now, before, "acknowledged_sent")
        resolved = _delta(now, before, "acked") + _delta(now, before, "failed_deadline")
        if resolved >= sent or time.monotonic() > deadline:
            return now
        time.sleep(0.2)


async def _traffic(handle: lab.Lab, run: str, seconds: float) -> tuple[Verdict, dict[str, Any]]:
    """Acknowledged 1 KiB messages a -> c for ``seconds``; the checker's verdict."""
    state_dir = Path(handle.state_dir)
    async with (
        mesh.connect(node="a", state_dir=state_dir) as source,
        mesh.connect(node="c", state_dir=state_dir) as sink,
        Flow(source, sink, "c", run=run, size=SIZE, timeout=MESSAGE_TIMEOUT) as flow,
    ):
        started = time.monotonic()
        await flow.sender.run(rate_per_s=RATE, duration_s=seconds)
        sent_for = time.monotonic() - started
        verdict = await flow.settle(ARRIVAL_BUDGET, linger=SETTLE)
    arrived_after = sent_for + flow.settle_s
    return verdict, {
        **flow.figures(verdict),
        "arrived_seconds": round(arrived_after, 2),
        "offered_per_s": RATE,
        "send_seconds": round(sent_for, 2),
        "throughput_per_s": round(verdict.delivered / arrived_after, 1) if arrived_after else 0.0,
        "latency_max_ms": round(max(flow.receiver.latency_ms, default=0.0), 1),
    }


def _measure(handle: lab.Lab, case: Case, rate_mbit: float = 0.0) -> Run:
    """Impair b - c, run the traffic, and gather the counters of a, b, c and the link."""
    handle.impair("b", "c", loss=case.loss, rate_mbit=rate_mbit)
    before = {node: _stats(handle, node) for node in handle.nodes}
    link_before = handle.counters("b", "c")
    verdict, figures = asyncio.run(_traffic(handle, case.check, case.seconds))
    after_a = _wait_resolved(handle, before["a"], timeout=ARRIVAL_BUDGET)
    after = {node: after_a if node == "a" else _stats(handle, node) for node in handle.nodes}
    link = handle.counters("b", "c").since(link_before)
    first = _delta(after["a"], before["a"], "acknowledged_sent")
    retransmits = _delta(after["a"], before["a"], "retransmits")
    messages = max(1, verdict.accepted)
    link_bytes = link.bytes_ab + link.bytes_ba
    figures.update(
        {
            "link": "b-c",
            "loss": case.loss,
            "rate_mbit": rate_mbit or None,
            "first_sends": first,
            "retransmits": retransmits,
            "retry_ratio": round(retransmits / first, 4) if first else 0.0,
            "failed_deadline": _delta(after["a"], before["a"], "failed_deadline"),
            "duplicates_at_c": _delta(after["c"], before["c"], "duplicates"),
            "links_down_b": _delta(after["b"], before["b"], "links_down"),
            # Every counter that moved, per node (the recovery's verdicts at a, drops
            # at b, duplicates at c...).
            "counters": {
                node: {
                    key: _delta(after[node], before[node], key)
                    for key in sorted(after[node])
                    if _delta(after[node], before[node], key)
                }
                for node in handle.nodes
            },
            "link_bytes": link_bytes,
            "link_bytes_b_to_c": link.bytes_ab,
            "link_bytes_c_to_b": link.bytes_ba,
            "link_b_to_c_mbit_s": round(link.bytes_ab * 8 / 1e6 / figures["arrived_seconds"], 3),
            "link_packets": link.packets_ab + link.packets_ba,
            "link_dropped": link.dropped_ab + link.dropped_ba,
            "link_bytes_per_message": round(link_bytes / messages),
            "link_bytes_per_payload_byte": round(link_bytes / (messages * SIZE), 3),
        }
    )
    return Run(verdict=verdict, figures=figures)


@pytest.fixture(scope="module")
def clean_run(chain: lab.Lab) -> dict[str, Any]:
    """The same workload on the clean link: the line the faulty cases are compared with."""
    run = _measure(chain, Case("netns-clean-link"))
    report.record("netns-clean-link", run.figures)
    assert run.verdict.ok, run.verdict.summary()
    return run.figures


CASES = [
    Case("netns-loss-1pct", loss=0.01, assert_ratio=True),
    # 0.01-0.0125 run after run since the source tells a slow path from a lossy one
    # (mesh/recovery.py) and a stalled link is revived instead of closed (dead_hold).
    Case("netns-loss-30pct", loss=0.30, assert_ratio=True),
    # Recorded, not asserted: the issue asks for loss, not for caps.
    Case("netns-rate-cap", cap_load=0.75),
    # Unscaled by MESH_CHAOS_LONG: five times the backlog would outlast the budget.
    Case("netns-rate-cap-overload", cap_load=1.5, seconds=8.0),
]


@pytest.mark.parametrize("case", CASES, ids=[case.check for case in CASES])
def test_acknowledged_traffic_survives_a_faulty_link(
    clean_link: lab.Lab, clean_run: dict[str, Any], case: Case
) -> None:
    rate_mbit = 0.0
    if case.cap_load:
        rate_mbit = round(clean_run["link_b_to_c_mbit_s"] / case.cap_load, 3)
    run = _measure(clean_link, case, rate_mbit)
    figures = run.figures
    figures["link_load_vs_clean"] = round(
        figures["link_bytes_per_message"] / clean_run["link_bytes_per_message"] - 1, 3
    )
    if rate_mbit:
        figures["cap_load_offered"] = case.cap_load
        figures["cap_utilisation"] = round(figures["link_b_to_c_mbit_s"] / rate_mbit, 3)
    figures["retry_target_met"] = figures["retry_ratio"] <= RETRY_TARGET
    report.record(case.check, figures)
    verdict = run.verdict
    assert verdict.accepted > 0, figures
    assert (len(verdict.lost), len(verdict.duplicated), len(verdict.unexpected)) == (0, 0, 0), (
        verdict.summary()
    )
    assert verdict.delivered == verdict.accepted
    assert figures["first_sends"] == verdict.accepted  # the ratio's denominator is right
    if case.loss:
        assert figures["link_dropped"] > 0  # the fault was real
    if case.assert_ratio:
        assert figures["retry_ratio"] <= RETRY_TARGET, figures


def test_impair_changes_a_running_link_and_the_cli_shows_it(clean_link: lab.Lab) -> None:
    handle = clean_link
    link = handle.impair("b", "c", loss=0.25, rate_mbit=2)
    assert (link.loss, link.rate_mbit) == (0.25, 2.0)
    assert lab.read_lab(handle.state_dir).link("c", "b").loss == 0.25  # saved
    row = next(r for r in handle.link_status() if {r.a, r.b} == {"b", "c"})
    assert set(row.methods) == {"loss", "rate"}
    # None leaves an impairment alone; 0 removes it.
    assert handle.impair("b", "c", rate_mbit=0).loss == 0.25
    assert handle.impair("b", "c", loss=0).rate_mbit is None
    with pytest.raises(lab.LabError, match="between 0 and 1"):
        handle.impair("b", "c", loss=1.5)
    with pytest.raises(lab.LabError, match="no link between"):
        handle.impair("a", "c", loss=0.1)

    app = typer.Typer()
    lab_commands.register(app)
    app.command("noop")(lambda: None)  # a group needs a sibling to stay a group
    runner = CliRunner()
    state = ["--state", str(handle.state_dir)]
    result = runner.invoke(app, ["lab", "impair", "b", "c", "--loss", "0.5", *state])
    assert result.exit_code == 0, result.output
    assert "loss 50 %" in result.output
    # The kernel drops now: half the heartbeats on b - c vanish, and the rule counts them.
    before = handle.counters("b", "c")
    deadline = time.monotonic() + 10
    while True:
        seen = handle.counters("b", "c").since(before)
        dropped, passed = seen.dropped_ab + seen.dropped_ba, seen.packets_ab + seen.packets_ba
        # Wait for both: the first drop can be counted before any packet has passed.
        if (dropped > 0 and passed > 0) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert seen.dropped_ab + seen.dropped_ba > 0
    assert seen.packets_ab + seen.packets_ba > 0
    result = runner.invoke(app, ["lab", "impair", "b", "c", "--clear", "--rate-mbit", "3", *state])
    assert result.exit_code == 1
    assert "either --clear or" in result.output
    result = runner.invoke(app, ["lab", "impair", "b", "c", "--clear", *state])
    assert result.exit_code == 0, result.output
    link = lab.read_lab(handle.state_dir).link("b", "c")
    assert (link.loss, link.rate_mbit) == (0.0, None)
    result = runner.invoke(app, ["lab", "impair", "b", "x", "--loss", "0.1", *state])
    assert result.exit_code == 1
    assert "no node 'x'" in result.output
