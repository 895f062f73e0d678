"""Two subscribers and a queue group of two; 20 publications; prints who got what.

Run against the demo mesh:

    mesh up deploy/topologies/demo.yaml --detach
    python examples/pubsub_fanout.py --node a
    mesh down --state .mesh/demo

`fanout.*` listens on b and `fanout.>` on d; the queue group `workers` (pattern
`fanout.>`) has a member on e and one on f. Node a publishes 20 messages,
alternating `fanout.news` and `fanout.eu.news`: `*` matches one token, `>` the
rest, and each message goes to one member of the group.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import mesh
from mesh.client import Message, Subscription

PROBE = "fanout.probe"
LISTENERS: list[tuple[str, str, str | None]] = [
    ("b", "fanout.*", None),
    ("d", "fanout.>", None),
    ("e", "fanout.>", "workers"),
    ("f", "fanout.>", "workers"),
]


async def collect(subscription: Subscription, into: list[Message]) -> None:
    async for message in subscription:
        into.append(message)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node", default="a", help="node the publisher attaches to")
    parser.add_argument("--state", type=Path, help="`mesh up` state dir")
    args = parser.parse_args()
    publisher = await mesh.connect(node=args.node, state_dir=args.state)
    clients = [await mesh.connect(node=n, state_dir=args.state) for n, _, _ in LISTENERS]
    got: list[list[Message]] = [[] for _ in LISTENERS]
    subs = [c.subscribe(p, queue=q) for c, (_, p, q) in zip(clients, LISTENERS, strict=True)]
    readers = [asyncio.create_task(collect(s, g)) for s, g in zip(subs, got, strict=True)]
    try:
        # Subscriptions travel through the mesh as adverts: probe until every listener hears.
        deadline = time.monotonic() + 15
        while not all(got) and time.monotonic() < deadline:
            await publisher.publish(PROBE, "probe")
            await asyncio.sleep(0.1)
        for i in range(20):
            subject = "fanout.news" if i % 2 == 0 else "fanout.eu.news"
            await publisher.publish(subject, {"n": i})
        await asyncio.sleep(1.0)  # pub/sub has no acks to wait for: give the copies a moment
        for (node, pattern, queue), messages in zip(LISTENERS, got, strict=True):
            real = [m.json()["n"] for m in messages if m.destination != PROBE]
            who = f"{node} {pattern}" + (f" (queue {queue})" if queue else "")
            print(f"{who:28} got {len(real):2d}: {real}")
    finally:
        for reader in readers:
            reader.cancel()
        for client in [publisher, *clients]:
            await client.close()


if __name__ == "__main__":
    asyncio.run(main())
