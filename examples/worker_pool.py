"""Three workers with weights 1:2:3 behind `weighted` balancing; prints the share each got.

Run against the demo mesh:

    mesh up deploy/topologies/demo.yaml --detach
    python examples/worker_pool.py --node a --workers b,d,f --requests 60
    mesh down --state .mesh/demo

The workers attach to nodes b, d and f (weights 1, 2, 3), the caller to node a.
Balancing chooses among *nodes*, so each worker has a node of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import mesh
from mesh.client import Message, Unavailable


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node", default="a", help="node the caller attaches to")
    parser.add_argument("--workers", default="b,d,f", help="three nodes, one worker each")
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--state", type=Path, help="`mesh up` state dir")
    args = parser.parse_args()
    nodes = args.workers.split(",")
    clients = [await mesh.connect(node=n, state_dir=args.state) for n in [args.node, *nodes]]
    caller, workers = clients[0], clients[1:]

    def handler_for(name: str) -> Callable[[Message], Awaitable[str]]:
        async def work(message: Message) -> str:
            return name

        return work

    servings = [
        w.serve("work", handler_for(f"worker@{n}"), weight=weight)
        for weight, (n, w) in enumerate(zip(nodes, workers, strict=True), start=1)
    ]
    try:
        for serving in servings:
            await serving.registered()
        # Each worker's advert has to reach the caller's node: warm up until all answer.
        seen: set[str] = set()
        deadline = time.monotonic() + 15
        while len(seen) < len(nodes) and time.monotonic() < deadline:
            try:
                seen.add((await caller.request("work", None, policy="weighted")).body)
            except Unavailable:
                await asyncio.sleep(0.1)
        share: Counter[str] = Counter()
        for _ in range(args.requests):
            share[(await caller.request("work", None, policy="weighted")).body] += 1
        for weight, n in enumerate(nodes, start=1):
            got = share[f"worker@{n}"]
            print(f"worker@{n} (weight {weight}): {got:3d} = {got / args.requests:.0%}")
    finally:
        for client in clients:
            await client.close()


if __name__ == "__main__":
    asyncio.run(main())
