"""`mesh demo`: a live mesh, a steady acknowledged stream, a cut link, a count.

Starts ``deploy/topologies/demo.yaml`` as real node processes over mTLS, sends
acknowledged messages from ``a`` to ``f`` at a steady rate, takes the link
b-c (on the best path) down half way through, shows the route at ``a``
change, and counts what ``f``'s application received: every message must
arrive exactly once. Then it stops every process and removes its state.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
from rich.console import Console
from rich.table import Table

from mesh.v1 import admin_pb2, admin_pb2_grpc, client_pb2, client_pb2_grpc, envelope_pb2
from nodes.admin_client import aio_channel, target_for
from nodes.launcher import MeshHandle, launch

TOPOLOGY = Path(__file__).resolve().parent.parent / "deploy" / "topologies" / "demo.yaml"
RATE_PER_S = 200
DURATION_S = 6.0
CUT_AT_S = 2.5
CUT = ("b", "c")


@dataclass(slots=True)
class Tally:
    """What the demo counts."""

    sent: int = 0
    accepted: int = 0
    acked: int = 0
    refused: int = 0


async def _route(admin: admin_pb2_grpc.AdminServiceStub, destination: str) -> str:
    routes = await admin.Routes(admin_pb2.RoutesRequest(), timeout=5)
    for route in routes.routes:
        if route.destination == destination:
            return f"cost {route.cost} via {', '.join(route.next_hops)}"
    return "unreachable"


async def _receive(
    client: client_pb2_grpc.ClientServiceStub, seen: Counter[int], attached: asyncio.Event
) -> None:
    call = client.Receive(client_pb2.ReceiveRequest())
    await call.initial_metadata()  # the node sends it once the stream is attached
    attached.set()
    async for delivery in call:
        seen[json.loads(delivery.body.data)["seq"]] += 1


async def _send(client: client_pb2_grpc.ClientServiceStub, seq: int, tally: Tally) -> None:
    body = json.dumps({"seq": seq, "note": "hello from a"}).encode()
    request = client_pb2.SendRequest(
        target=client_pb2.Address(kind=envelope_pb2.DESTINATION_KIND_NODE, name="f"),
        body=client_pb2.Body(content_type=envelope_pb2.CONTENT_TYPE_JSON, data=body),
        mode=envelope_pb2.DELIVERY_MODE_ACKNOWLEDGED,
        wait_for_ack=True,
        timeout_ms=20_000,
    )
    try:
        await client.Send(request, timeout=25)
    except grpc.aio.AioRpcError:
        tally.refused += 1
        return
    tally.acked += 1


async def _run(handle: MeshHandle, console: Console) -> bool:
    targets = {node: target_for(handle.state, node) for node in ("a", "f", *CUT)}
    channels = {node: aio_channel(target) for node, target in targets.items()}
    try:
        admin_a = admin_pb2_grpc.AdminServiceStub(channels["a"])
        sender = client_pb2_grpc.ClientServiceStub(channels["a"])
        receiver = client_pb2_grpc.ClientServiceStub(channels["f"])
        before = await _route(admin_a, "f")
        console.print(f"route a -> f: [bold]{before}[/bold]")
        seen: Counter[int] = Counter()
        attached = asyncio.Event()
        receiving = asyncio.ensure_future(_receive(receiver, seen, attached))
        await asyncio.wait_for(attached.wait(), 10)
        tally = Tally()
        sends: list[asyncio.Task[None]] = []
        start = time.monotonic()
        cut_done = False
        after = before
        cut_started = 0.0
        while (elapsed := time.monotonic() - start) < DURATION_S:
            if not cut_done and elapsed >= CUT_AT_S:
                cut_started = time.monotonic()
                for node, peer in (CUT, CUT[::-1]):
                    admin = admin_pb2_grpc.AdminServiceStub(channels[node])
                    await admin.SetLink(admin_pb2.SetLinkRequest(peer=peer, enabled=False))
                cut_done = True
                console.print(f"[yellow]link {CUT[0]}-{CUT[1]} cut[/yellow] at {elapsed:.1f} s")
            if cut_done and after == before:
                after = await _route(admin_a, "f")
                if after != before:
                    took = time.monotonic() - cut_started
                    console.print(f"route a -> f: [bold]{after}[/bold] ({took * 1000:.0f} ms)")
            target = int(elapsed * RATE_PER_S)
            while tally.sent < target:
                sends.append(asyncio.ensure_future(_send(sender, tally.sent, tally)))
                tally.sent += 1
            await asyncio.sleep(0.01)
        await asyncio.wait_for(asyncio.gather(*sends), timeout=30)
        deadline = time.monotonic() + 10
        while sum(seen.values()) < tally.acked and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        receiving.cancel()
        return _summary(console, tally, seen)
    finally:
        for channel in channels.values():
            await channel.close()


def _summary(console: Console, tally: Tally, seen: Counter[int]) -> bool:
    lost = [seq for seq in range(tally.sent) if seq not in seen]
    duplicated = [seq for seq, n in seen.items() if n > 1]
    table = Table(title="summary")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("sent from a (acknowledged)", str(tally.sent))
    table.add_row("acked end to end", str(tally.acked))
    table.add_row("refused at the entry node", str(tally.refused))
    table.add_row("received by f's application", str(sum(seen.values())))
    table.add_row("lost", str(len(lost)))
    table.add_row("duplicated", str(len(duplicated)))
    console.print(table)
    ok = not lost and not duplicated and tally.acked == tally.sent
    verdict = "[green]every message arrived exactly once[/green]" if ok else "[red]FAILED[/red]"
    console.print(verdict)
    return ok


def run_live_demo(console: Console, topology: Path = TOPOLOGY) -> bool:
    """Run the demo; True when every message arrived exactly once."""
    state_dir = Path(tempfile.mkdtemp(prefix="mesh-demo-"))
    try:
        console.print(f"starting {topology.name}: 6 node processes over mTLS ...")
        started = time.monotonic()
        with launch(topology, state_dir / "state", timeout=60) as handle:
            console.print(f"converged in {time.monotonic() - started:.1f} s")
            return asyncio.run(_run(handle, console))
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


__all__ = ["run_live_demo"]
