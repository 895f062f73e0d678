"""`mesh serve`, `request`, `publish`, `subscribe`: the application side, from a shell.

They attach to a node through the SDK (``mesh.client``), exactly as an
application would, so what works here works in code.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from mesh.client import Client, Message, RemoteCallError, connect
from mesh.errors import MeshError
from nodes.admin_client import AdminError, Target, find_state_dir, read_state, resolve
from nodes.commands.ops import (
    AddressOpt,
    CaOpt,
    CertOpt,
    InsecureOpt,
    JsonOpt,
    KeyOpt,
    MeshOpt,
    NodeOpt,
    StateOpt,
    _emit_json,
    _fail,
)

console = Console()


def _body(text: str) -> Any:
    """A JSON body when the text parses as JSON, else the raw bytes."""
    try:
        return json.loads(text)
    except ValueError:
        return text.encode()


def _resolve(
    *,
    node: str | None,
    address: str | None,
    state: Path | None,
    mesh: str | None,
    insecure: bool,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
) -> Target:
    try:
        if address is None and node is None:
            node = next(iter(read_state(find_state_dir(state, mesh)).nodes))
        return resolve(
            node=node,
            address=address,
            state=state,
            mesh=mesh,
            insecure=insecure,
            ca=ca,
            cert=cert,
            key=key,
        )
    except AdminError as exc:
        _fail(str(exc))


async def _client(target: Target) -> Client:
    tls = target.tls
    if tls is None:
        return await connect(target.address, insecure=True, node_id=target.node_id)
    return await connect(
        target.address, ca=tls.ca, cert=tls.cert, key=tls.key, node_id=target.node_id
    )


def _run(coroutine: Any) -> Any:
    try:
        return asyncio.run(coroutine)
    except MeshError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        raise typer.Exit(code=130) from None


def serve(
    service: Annotated[str, typer.Argument(help="service name to serve")],
    *,
    echo: Annotated[bool, typer.Option("--echo", help="answer with the request body")] = False,
    weight: Annotated[int, typer.Option("--weight", help="share of the load to ask for")] = 1,
    instance: Annotated[
        str | None, typer.Option("--instance", help="name of this instance")
    ] = None,
    count: Annotated[
        int | None, typer.Option("--count", help="exit after this many requests")
    ] = None,
    node: NodeOpt = None,
    address: AddressOpt = None,
    state: StateOpt = None,
    mesh: MeshOpt = None,
    insecure: InsecureOpt = False,
    ca: CaOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
) -> None:
    """Serve SERVICE at a node with the built-in echo handler, until Ctrl-C."""
    if not echo:
        _fail("say what to answer: --echo (the built-in handler); serve code with the SDK")
    target = _resolve(
        node=node,
        address=address,
        state=state,
        mesh=mesh,
        insecure=insecure,
        ca=ca,
        cert=cert,
        key=key,
    )

    async def main() -> None:
        client = await _client(target)
        async with client:
            name = instance or f"cli-{target.node_id or target.address}-{service}"

            def handle(message: Message) -> dict[str, Any]:
                try:
                    body: Any = message.json()
                except MeshError:
                    body = message.raw.decode("utf-8", "replace")
                return {"instance": name, "echo": body}

            async with client.serve(service, handle, weight=weight, instance=name) as serving:
                console.print(f"serving {service!r} as {name!r} (weight {weight}); Ctrl-C stops")
                while count is None or serving.handled < count:
                    await asyncio.sleep(0.05)
                console.print(f"answered {serving.handled} requests")

    _run(main())


def request(
    destination: Annotated[str, typer.Argument(help="service (or node, with --to-node) to ask")],
    body: Annotated[str, typer.Argument(help="request body: JSON, or raw text")],
    *,
    count: Annotated[int, typer.Option("--count", help="send this many requests")] = 1,
    concurrency: Annotated[
        int, typer.Option("--concurrency", help="requests in flight at once")
    ] = 1,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds per request")] = 5.0,
    policy: Annotated[
        str | None,
        typer.Option("--policy", help="round-robin, weighted, least-outstanding or latency"),
    ] = None,
    to_node: Annotated[bool, typer.Option("--to-node", help="DESTINATION is a node")] = False,
    node: NodeOpt = None,
    address: AddressOpt = None,
    state: StateOpt = None,
    mesh: MeshOpt = None,
    insecure: InsecureOpt = False,
    ca: CaOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Ask DESTINATION and print the reply; with --count, a summary of many."""
    if count < 1 or concurrency < 1:
        _fail("--count and --concurrency must be at least 1")
    target = _resolve(
        node=node,
        address=address,
        state=state,
        mesh=mesh,
        insecure=insecure,
        ca=ca,
        cert=cert,
        key=key,
    )
    payload = _body(body)

    async def main() -> dict[str, Any]:
        client = await _client(target)
        async with client:
            if count == 1:
                reply = await client.request(
                    destination,
                    payload,
                    timeout=timeout,
                    policy=policy,
                    to="node" if to_node else "service",
                )
                return {"reply": reply}
            by_instance: Counter[str] = Counter()
            errors: Counter[str] = Counter()
            rtts: list[float] = []
            indices = iter(range(count))

            async def worker() -> None:
                for _ in indices:
                    started = time.perf_counter()
                    try:
                        reply = await client.request(
                            destination,
                            payload,
                            timeout=timeout,
                            policy=policy,
                            to="node" if to_node else "service",
                        )
                    except RemoteCallError as exc:
                        errors[exc.status.name] += 1
                        continue
                    rtts.append((time.perf_counter() - started) * 1000)
                    by_instance[_instance_of(reply.body, reply.responder)] += 1

            await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))
            ordered = sorted(rtts)
            return {
                "sent": count,
                "ok": len(rtts),
                "errors": sum(errors.values()),
                "errors_by_status": dict(errors),
                "by_instance": dict(sorted(by_instance.items())),
                "rtt_ms": {
                    "p50": round(statistics.median(ordered), 3) if ordered else None,
                    "p99": round(ordered[int(0.99 * (len(ordered) - 1))], 3) if ordered else None,
                },
            }

    result = _run(main())
    if "reply" in result:
        reply = result["reply"]
        if as_json:
            _emit_json(
                {
                    "message_id": reply.message_id.hex(),
                    "responder": reply.responder,
                    "body": reply.body
                    if not isinstance(reply.body, bytes)
                    else reply.body.decode("utf-8", "replace"),
                }
            )
        else:
            shown = (
                reply.body
                if not isinstance(reply.body, bytes)
                else reply.body.decode("utf-8", "replace")
            )
            console.print(shown, highlight=False, markup=False)
        return
    if as_json:
        _emit_json(result)
    else:
        console.print(result)
    if result["ok"] == 0:
        raise typer.Exit(code=1)


def _instance_of(body: Any, responder: str) -> str:
    if isinstance(body, dict) and isinstance(body.get("instance"), str):
        return str(body["instance"])
    return responder


def publish(
    subject: Annotated[str, typer.Argument(help="subject, e.g. orders.eu.created")],
    body: Annotated[str, typer.Argument(help="message body: JSON, or raw text")],
    *,
    acknowledged: Annotated[
        bool, typer.Option("--acknowledged", help="each subscriber's node acks its copy")
    ] = False,
    node: NodeOpt = None,
    address: AddressOpt = None,
    state: StateOpt = None,
    mesh: MeshOpt = None,
    insecure: InsecureOpt = False,
    ca: CaOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Publish BODY on SUBJECT; prints how many subscriber nodes it went to."""
    target = _resolve(
        node=node,
        address=address,
        state=state,
        mesh=mesh,
        insecure=insecure,
        ca=ca,
        cert=cert,
        key=key,
    )

    async def main() -> int:
        client = await _client(target)
        async with client:
            copies: int = await client.publish(subject, _body(body), acknowledged=acknowledged)
            return copies

    copies = _run(main())
    if as_json:
        _emit_json({"subject": subject, "copies": copies})
    else:
        console.print(f"published to {copies} subscriber node(s)")


def subscribe(
    subject: Annotated[str, typer.Argument(help="pattern: `*` one token, `>` the rest")],
    *,
    queue: Annotated[str | None, typer.Option("--queue", help="queue group")] = None,
    count: Annotated[
        int | None, typer.Option("--count", help="exit after this many messages")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="exit after this many seconds")
    ] = None,
    node: NodeOpt = None,
    address: AddressOpt = None,
    state: StateOpt = None,
    mesh: MeshOpt = None,
    insecure: InsecureOpt = False,
    ca: CaOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print messages published on SUBJECT (one line each) until Ctrl-C."""
    target = _resolve(
        node=node,
        address=address,
        state=state,
        mesh=mesh,
        insecure=insecure,
        ca=ca,
        cert=cert,
        key=key,
    )

    async def main() -> int:
        client = await _client(target)
        received = 0
        deadline = None if timeout is None else time.monotonic() + timeout
        async with client, client.subscribe(subject, queue=queue) as subscription:
            while count is None or received < count:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                try:
                    message = await subscription.get(timeout=left)
                except (TimeoutError, StopAsyncIteration):
                    break
                received += 1
                line = {
                    "subject": message.destination,
                    "source": message.source,
                    "message_id": message.message_id.hex(),
                    "body": message.raw.decode("utf-8", "replace"),
                }
                if as_json:
                    _emit_json(line)
                else:
                    console.print(
                        f"{line['subject']} from {line['source']}: {line['body']}",
                        highlight=False,
                        markup=False,
                    )
        return received

    received = _run(main())
    if count is not None and received < count:
        _fail(f"received {received} of {count} messages")


def register(app: typer.Typer) -> None:
    """Add the application-side commands."""
    app.command()(serve)
    app.command()(request)
    app.command()(publish)
    app.command()(subscribe)
