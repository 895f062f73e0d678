"""Serve `echo`, or call it 10 times and print which instance answered.

Run against the demo mesh (its nodes c and e already host built-in `echo`s):

    mesh up deploy/topologies/demo.yaml --detach
    python examples/echo_service.py serve --node f     # a third instance; Ctrl-C stops it
    python examples/echo_service.py call --node a      # 10 requests from node a
    mesh down --state .mesh/demo

``--state DIR`` names the state dir (default: the only mesh under .mesh/).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections import Counter
from pathlib import Path

import mesh
from mesh.client import Client, Message


async def serve(client: Client) -> None:
    instance = ""

    async def echo(message: Message) -> dict[str, object]:
        echoed = message.json() if message.content_type is mesh.ContentType.JSON else message.raw
        return {"instance": instance, "echo": echoed}

    async with client.serve("echo", echo) as serving:
        instance = serving.instance
        print(f"serving echo as {instance} on node {client.node}; Ctrl-C to stop")
        await asyncio.Event().wait()


async def call(client: Client, policy: str | None) -> None:
    answered: Counter[str] = Counter()
    for i in range(10):
        reply = await client.request("echo", {"n": i}, timeout=2.0, policy=policy)
        answered[reply.body["instance"]] += 1
        print(f"request {i}: {reply.responder} / {reply.body['instance']} -> {reply.body['echo']}")
    print("answers per instance:", dict(answered))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["serve", "call"])
    parser.add_argument("--node", default="a", help="node to attach to")
    parser.add_argument("--state", type=Path, help="`mesh up` state dir")
    parser.add_argument("--policy", help="round-robin, weighted, least-outstanding or latency")
    args = parser.parse_args()
    async with mesh.connect(node=args.node, state_dir=args.state) as client:
        if args.mode == "serve":
            await serve(client)
        else:
            await call(client, args.policy)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
