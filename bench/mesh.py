"""Mesh end to end: real node processes, real clients, against the floor and against NATS.

What is measured, in one run, with 1 KiB JSON bodies sealed as in production
(zstd, AES-256-GCM, SHA-256 per hop) and mutual TLS on every link and every
client connection (the nodes are started with :func:`nodes.launcher.launch`,
exactly as ``mesh up`` starts them):

* **async throughput** through paths of 1, 3 and 5 nodes of a 5-node line
  (n1 - n2 - n3 - n4 - n5): a sender process attached to n1 calls
  ``ClientService.Send`` (mode ASYNC) with 256 calls in flight (grpc.aio), a
  receiver process attached to the last node of the path counts what its
  ``Receive`` stream delivers in a fixed window after a warm-up;
* **request/reply round trip** p50/p99 through the same paths: a ``Serve``
  instance attached at the last node answers with the request body, a caller
  at n1 makes sequential ``Request`` calls;
* **acknowledged throughput** (mode ACKNOWLEDGED, no ``wait_for_ack``, so the
  node answers once the message is in its durable outbox) through 3 nodes;
* **request/reply per second** with 64 calls in flight, caller and instance on
  the same node (1 node) and on n1 / n3 (3 nodes);
* **the floor**: a bare grpc.aio bidirectional stream between two processes
  (same mTLS) carrying the same envelope bytes, one frame per write and 64 per
  write (merged at the byte level as links merge them);
* **the peer**: NATS, three ``nats-server`` processes chained by leaf-node
  connections (s1 -> s2 -> s3, not cluster routes), nats-py publisher on s1
  and subscriber on s3 (lossless run checked by count), request/reply round
  trip through the chain, and request/reply per second with 64 in flight
  through one server and through the chain. Skipped with a note when
  ``nats-server`` or nats-py is missing.

Every client is its own process (``subprocess`` with ``sys.executable``; this
file re-runs itself with ``--role``), never a fork of a process that imported
grpc. Workers meet on absolute ``time.monotonic()`` deadlines (CLOCK_MONOTONIC
is system-wide on Linux), so "the window" is the same wall interval for the
sender, the receiver and the CPU sampling of the nodes. Every process started
here is stopped in a ``finally`` (SIGTERM, then SIGKILL); ports come from the
OS, files go to a temporary directory.

``--profile`` also runs ``py-spy record`` against n1, n2 and n3 during the
3-node async window and prints where each spends its samples; every phase
reports the CPU each node process used per message (from /proc).

Run ``python bench/mesh.py [--quick] [--json PATH] [--profile]``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
# `python bench/mesh.py` puts bench/ first on sys.path, where this file would shadow
# the `mesh` package: drop that entry and put the repository root first.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE.parent]
sys.path.insert(0, str(ROOT))

BODY_SIZE = 1024
SEND_CONCURRENCY = 256
SEND_BATCH = 64
"""Sends per SendStream write in the batched rows."""
BATCH_STREAMS = 4
"""SendStream calls in flight in the batched rows."""
REQ_CONCURRENCY = 64
SERVICE = "bench"
PATH_LENGTHS = (1, 3, 5)
WORKER_START = 3.0
"""Seconds between spawning workers and the start of their schedule (imports, connect)."""
STOP_GRACE = 5.0
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# --- bodies --------------------------------------------------------------------------------------


def json_body(size: int = BODY_SIZE, seed: int = 7) -> bytes:
    """``size`` bytes of log-like JSON (an array of records), compressible like real logs."""
    rng = random.Random(seed)
    words = ["request", "served", "cache", "miss", "upstream", "retry", "timeout", "queued"]
    records: list[str] = []
    text = "[]"
    while True:
        record = json.dumps(
            {
                "ts": 1_700_000_000_000 + rng.randrange(10**6),
                "level": rng.choice(("info", "warn", "debug")),
                "svc": rng.choice(("api", "billing", "search")),
                "msg": " ".join(rng.choice(words) for _ in range(rng.randrange(3, 9))),
                "latency_ms": round(rng.lognormvariate(0, 1), 3),
            },
            separators=(",", ":"),
        )
        candidate = "[" + ",".join([*records, record]) + "]"
        if len(candidate) > size:
            break
        records.append(record)
        text = candidate
    return (text + " " * (size - len(text))).encode("ascii")


# --- small helpers -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def write_result(path: str, result: dict[str, Any]) -> None:
    partial = Path(path + ".partial")
    partial.write_text(json.dumps(result))
    partial.replace(path)


def mark_ready(path: str | None) -> None:
    if path:
        Path(path).write_text("ready\n")


async def sleep_until(at: float) -> None:
    delay = at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


class WindowCounter:
    """Counts events, and separately those inside [start, end) of the monotonic clock."""

    def __init__(self, start: float, end: float) -> None:
        self.start = start
        self.end = end
        self.total = 0
        self.in_window = 0

    def hit(self, n: int = 1) -> None:
        self.total += n
        now = time.monotonic()
        if self.start <= now < self.end:
            self.in_window += n

    def rate(self) -> float:
        return self.in_window / (self.end - self.start)


# --- workers (each runs in its own process: `python bench/mesh.py --role ...`) -------------------


def _channel(args: argparse.Namespace) -> Any:
    import grpc

    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ]
    if not args.tls:
        return grpc.aio.insecure_channel(args.target, options=options)
    tls = Path(args.tls)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(tls / "ca.pem").read_bytes(),
        private_key=(tls / args.key_name).read_bytes(),
        certificate_chain=(tls / args.cert_name).read_bytes(),
    )
    options.append(("grpc.ssl_target_name_override", args.server_name))
    return grpc.aio.secure_channel(args.target, credentials, options=options)


def _client_body() -> Any:
    from mesh.v1 import client_pb2, envelope_pb2

    return client_pb2.Body(
        content_type=envelope_pb2.CONTENT_TYPE_JSON, body_type="bench.log", data=json_body()
    )


async def role_receive(args: argparse.Namespace) -> dict[str, Any]:
    """Count deliveries on ClientService.Receive."""
    from mesh.v1 import client_pb2, client_pb2_grpc

    counter = WindowCounter(args.t_from, args.t_to)
    async with _channel(args) as channel:
        stub = client_pb2_grpc.ClientServiceStub(channel)
        if args.batch:
            call = stub.ReceiveBatches(client_pb2.ReceiveRequest())
        else:
            call = stub.Receive(client_pb2.ReceiveRequest())
        await asyncio.wait_for(call.wait_for_connection(), 10)
        mark_ready(args.ready)

        async def consume() -> None:
            async for item in call:
                for _ in range(len(item.deliveries) if args.batch else 1):
                    counter.hit()

        task = asyncio.ensure_future(consume())
        await sleep_until(args.t_end)
        task.cancel()
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    return {"received": counter.total, "in_window": counter.in_window, "rate": counter.rate()}


async def role_send(args: argparse.Namespace) -> dict[str, Any]:
    """ClientService.Send with many calls in flight until t_to."""
    import grpc

    from mesh.v1 import client_pb2, client_pb2_grpc, envelope_pb2

    mode = (
        envelope_pb2.DELIVERY_MODE_ACKNOWLEDGED
        if args.mode == "acked"
        else envelope_pb2.DELIVERY_MODE_ASYNC
    )
    request = client_pb2.SendRequest(
        target=client_pb2.Address(kind=envelope_pb2.DESTINATION_KIND_NODE, name=args.dest),
        body=_client_body(),
        mode=mode,
    )
    accepted = WindowCounter(args.t_from, args.t_to)
    errors: collections.Counter[str] = collections.Counter()
    async with _channel(args) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        stub = client_pb2_grpc.ClientServiceStub(channel)
        mark_ready(args.ready)
        await sleep_until(args.t_start)

        async def worker() -> None:
            while time.monotonic() < args.t_to:
                try:
                    await stub.Send(request, timeout=10)
                except grpc.aio.AioRpcError as exc:
                    errors[exc.code().name] += 1
                    await asyncio.sleep(0.002)
                    continue
                accepted.hit()

        async def batch_worker() -> None:
            # SendStream: `batch` sends per write, one batch in flight per stream.
            batch = client_pb2.SendBatch(requests=[request] * args.batch)
            call = stub.SendStream()
            try:
                while time.monotonic() < args.t_to:
                    await call.write(batch)
                    result = await call.read()
                    for item in result.results:
                        if item.status:
                            errors[str(item.status)] += 1
                            await asyncio.sleep(0.002)
                        else:
                            accepted.hit()
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] += 1
            finally:
                call.cancel()

        if args.batch:
            # A few streams in flight keep the node busy while one batch is answered.
            await asyncio.gather(*(batch_worker() for _ in range(BATCH_STREAMS)))
        else:
            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    return {"sent": accepted.total, "in_window": accepted.in_window, "errors": dict(errors)}


async def role_serve(args: argparse.Namespace) -> dict[str, Any]:
    """A Serve instance of SERVICE that answers each request with its body."""
    from mesh.v1 import client_pb2, client_pb2_grpc

    served = 0
    async with _channel(args) as channel:
        stub = client_pb2_grpc.ClientServiceStub(channel)
        call = stub.Serve()
        await call.write(
            client_pb2.ServeUpstream(
                register=client_pb2.ServiceRegistration(service=SERVICE, weight=1)
            )
        )
        first = await asyncio.wait_for(call.read(), 10)
        if not first.HasField("registered"):
            raise RuntimeError(f"unexpected first Serve message: {first}")
        mark_ready(args.ready)

        async def answer() -> None:
            nonlocal served
            while True:
                down = await call.read()
                if not down.HasField("request"):
                    continue
                delivery = down.request
                await call.write(
                    client_pb2.ServeUpstream(
                        reply=client_pb2.HandlerReply(
                            request_id=delivery.message_id, body=delivery.body
                        )
                    )
                )
                served += 1

        task = asyncio.ensure_future(answer())
        await sleep_until(args.t_end)
        task.cancel()
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    return {"served": served}


async def role_request(args: argparse.Namespace) -> dict[str, Any]:
    """Sequential Request calls (round trip), then REQ_CONCURRENCY in flight (per second)."""
    import grpc

    from mesh.v1 import client_pb2, client_pb2_grpc, envelope_pb2

    request = client_pb2.RequestMessage(
        target=client_pb2.Address(kind=envelope_pb2.DESTINATION_KIND_SERVICE, name=SERVICE),
        body=_client_body(),
        timeout_ms=5000,
    )
    result: dict[str, Any] = {}
    async with _channel(args) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        stub = client_pb2_grpc.ClientServiceStub(channel)
        # Until the service is routed: the instance's advert must reach this node.
        deadline = time.monotonic() + args.route_timeout
        streak = 0
        last_error = ""
        while streak < 20:
            try:
                await stub.Request(request, timeout=2)
                streak += 1
            except grpc.aio.AioRpcError as exc:
                streak = 0
                last_error = f"{exc.code().name}: {exc.details()}"
                if time.monotonic() > deadline:
                    raise RuntimeError(f"service never answered: {last_error}") from None
                await asyncio.sleep(0.05)
        mark_ready(args.ready)
        latencies: list[float] = []
        stop = time.monotonic() + args.rtt_seconds
        for _ in range(args.rtt_count):
            started = time.perf_counter()
            await stub.Request(request, timeout=5)
            latencies.append((time.perf_counter() - started) * 1000)
            if time.monotonic() > stop:
                break
        result["rtt_count"] = len(latencies)
        result["rtt_p50_ms"] = statistics.median(latencies)
        result["rtt_p99_ms"] = percentile(latencies, 0.99)
        if args.window > 0:
            t_from = time.monotonic() + args.warmup
            done = WindowCounter(t_from, t_from + args.window)
            errors: collections.Counter[str] = collections.Counter()

            async def worker() -> None:
                while time.monotonic() < done.end:
                    try:
                        await stub.Request(request, timeout=10)
                    except grpc.aio.AioRpcError as exc:
                        errors[exc.code().name] += 1
                        await asyncio.sleep(0.002)
                        continue
                    done.hit()

            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
            result["req_per_s"] = done.rate()
            result["req_window"] = [done.start, done.end]
            result["req_errors"] = dict(errors)
    return result


def _floor_frame() -> bytes:
    """One Frame carrying one envelope sealed as a node seals it (1 KiB JSON body)."""
    from mesh.codec import CompressionPolicy, Compressor, ContentType, EncodedBody
    from mesh.crypto import KeyRing, NodeIdentity
    from mesh.envelope import Header, Sealer
    from mesh.v1 import envelope_pb2, peer_pb2

    identities = {name: NodeIdentity.generate(name) for name in ("n1", "n3")}
    ring = KeyRing(identities["n1"], random_bytes=os.urandom)
    for identity in identities.values():
        ring.add_peer(identity.public)
    sealer = Sealer(ring, compressor=Compressor(CompressionPolicy()))
    now_ms = int(time.time() * 1000)
    header = Header(
        message_id=os.urandom(16),
        source="n1",
        destination_kind=envelope_pb2.DESTINATION_KIND_NODE,
        destination="n3",
        recipient="n3",
        created_ms=now_ms,
    )
    envelope = sealer.seal(header, EncodedBody(data=json_body(), content_type=ContentType.JSON))
    frame = peer_pb2.Frame(batch=peer_pb2.EnvelopeBatch(envelopes=[envelope]))
    return frame.SerializeToString()


async def role_floor_server(args: argparse.Namespace) -> dict[str, Any]:
    """A bare grpc.aio bidi stream server that counts what it reads (batch frames per read)."""
    import grpc

    counter = WindowCounter(args.t_from, args.t_to)
    batch = args.batch

    async def link(request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        del request_iterator
        while True:
            data = await context.read()
            if data is grpc.aio.EOF:
                return
            counter.hit(batch)

    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ]
    )
    handler = grpc.method_handlers_generic_handler(
        "bench.Floor", {"Link": grpc.stream_stream_rpc_method_handler(link)}
    )
    server.add_generic_rpc_handlers((handler,))
    if args.tls:
        tls = Path(args.tls)
        credentials = grpc.ssl_server_credentials(
            [((tls / "node.key").read_bytes(), (tls / "node.pem").read_bytes())],
            root_certificates=(tls / "ca.pem").read_bytes(),
            require_client_auth=True,
        )
        port = server.add_secure_port("127.0.0.1:0", credentials)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    Path(args.ready).write_text(f"127.0.0.1:{port}\n")
    await sleep_until(args.t_end)
    await server.stop(grace=0.5)
    return {"received": counter.total, "in_window": counter.in_window, "rate": counter.rate()}


async def role_floor_client(args: argparse.Namespace) -> dict[str, Any]:
    """Write the same frame bytes as fast as the stream takes them, ``batch`` per write."""
    frame = _floor_frame()
    chunk = frame * args.batch  # concatenated Frame encodings merge into one batch
    written = 0
    async with _channel(args) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        call = channel.stream_stream(
            "/bench.Floor/Link", request_serializer=None, response_deserializer=None
        )()
        mark_ready(args.ready)
        await sleep_until(args.t_start)
        while time.monotonic() < args.t_to:
            await call.write(chunk)
            written += args.batch
        await call.done_writing()
        call.cancel()
    return {"written": written, "frame_bytes": len(frame)}


async def role_nats_sub(args: argparse.Namespace) -> dict[str, Any]:
    """Subscribe on s3; count messages; rate between the 10% and 90% marks of the expected count."""
    import nats

    nc = await nats.connect(args.target, max_reconnect_attempts=0)
    marks: dict[int, float] = {}
    expected = args.count
    low, high = int(expected * 0.1), int(expected * 0.9)
    received = 0
    finished = asyncio.Event()

    async def on_message(msg: Any) -> None:
        nonlocal received
        received += 1
        if received in (low, high):
            marks[received] = time.monotonic()
        if received >= expected:
            finished.set()

    async def on_probe(msg: Any) -> None:
        await nc.publish(msg.reply, b"ok")

    await nc.subscribe("bench.data", cb=on_message, pending_msgs_limit=-1, pending_bytes_limit=-1)
    await nc.subscribe("bench.probe", cb=on_probe)
    await nc.flush()
    mark_ready(args.ready)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(finished.wait(), max(1.0, args.t_end - time.monotonic()))
    await nc.close()
    rate = (high - low) / (marks[high] - marks[low]) if low in marks and high in marks else 0.0
    return {"received": received, "expected": expected, "rate": rate}


async def role_nats_pub(args: argparse.Namespace) -> dict[str, Any]:
    """Publish ``count`` bodies on s1 once the subscriber's interest reached s1."""
    import nats

    nc = await nats.connect(args.target, max_reconnect_attempts=0)
    deadline = time.monotonic() + args.route_timeout
    while True:
        try:
            await nc.request("bench.probe", b"?", timeout=0.5)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
    mark_ready(args.ready)
    body = json_body()
    started = time.monotonic()
    for i in range(args.count):
        await nc.publish("bench.data", body)
        if i % 1000 == 999:
            await nc.flush(timeout=30)
    await nc.flush(timeout=30)
    elapsed = time.monotonic() - started
    await nc.close()
    return {"published": args.count, "publish_rate": args.count / elapsed}


async def role_nats_resp(args: argparse.Namespace) -> dict[str, Any]:
    """A NATS responder: answers each request with its body."""
    import nats

    nc = await nats.connect(args.target, max_reconnect_attempts=0)
    served = 0

    async def on_request(msg: Any) -> None:
        nonlocal served
        served += 1
        await nc.publish(msg.reply, msg.data)

    await nc.subscribe("bench.svc", cb=on_request, pending_msgs_limit=-1, pending_bytes_limit=-1)
    await nc.flush()
    mark_ready(args.ready)
    await sleep_until(args.t_end)
    await nc.close()
    return {"served": served}


async def role_nats_req(args: argparse.Namespace) -> dict[str, Any]:
    """NATS requests: sequential (round trip), then REQ_CONCURRENCY in flight (per second)."""
    import nats

    nc = await nats.connect(args.target, max_reconnect_attempts=0)
    body = json_body()
    deadline = time.monotonic() + args.route_timeout
    streak = 0
    while streak < 20:
        try:
            await nc.request("bench.svc", body, timeout=1)
            streak += 1
        except Exception:
            streak = 0
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
    mark_ready(args.ready)
    result: dict[str, Any] = {}
    if args.rtt_count:
        latencies = []
        stop = time.monotonic() + args.rtt_seconds
        for _ in range(args.rtt_count):
            started = time.perf_counter()
            await nc.request("bench.svc", body, timeout=5)
            latencies.append((time.perf_counter() - started) * 1000)
            if time.monotonic() > stop:
                break
        result.update(
            rtt_count=len(latencies),
            rtt_p50_ms=statistics.median(latencies),
            rtt_p99_ms=percentile(latencies, 0.99),
        )
    if args.window > 0:
        t_from = time.monotonic() + args.warmup
        done = WindowCounter(t_from, t_from + args.window)
        errors = 0

        async def worker() -> None:
            nonlocal errors
            while time.monotonic() < done.end:
                try:
                    await nc.request("bench.svc", body, timeout=10)
                except Exception:
                    errors += 1
                    continue
                done.hit()

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        result["req_per_s"] = done.rate()
        result["req_errors"] = errors
    await nc.close()
    return result


ROLES: dict[str, Callable[[argparse.Namespace], Any]] = {
    "receive": role_receive,
    "send": role_send,
    "serve": role_serve,
    "request": role_request,
    "floor-server": role_floor_server,
    "floor-client": role_floor_client,
    "nats-sub": role_nats_sub,
    "nats-pub": role_nats_pub,
    "nats-resp": role_nats_resp,
    "nats-req": role_nats_req,
}


def run_worker(args: argparse.Namespace) -> int:
    result = asyncio.run(ROLES[args.role](args))
    write_result(args.out, result)
    return 0


# --- processes -----------------------------------------------------------------------------------


@dataclass
class Worker:
    name: str
    process: subprocess.Popen[bytes]
    out: Path
    ready: Path
    log: Path

    def tail(self, lines: int = 8) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


class Processes:
    """Every process this run starts; ``stop_all`` ends them (SIGTERM, then SIGKILL)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[subprocess.Popen[bytes]] = []
        self.seq = 0

    def spawn(self, command: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as handle:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                cwd=ROOT,
            )
        self.started.append(process)
        return process

    def worker(self, role: str, **options: Any) -> Worker:
        self.seq += 1
        name = f"{self.seq:02d}-{role}"
        out = self.workdir / f"{name}.json"
        ready = self.workdir / f"{name}.ready"
        log = self.workdir / f"{name}.log"
        command = [sys.executable, str(HERE), "--role", role, "--out", str(out)]
        command += ["--ready", str(ready)]
        for key, value in options.items():
            if value is None or value is False:
                continue
            command.append("--" + key.replace("_", "-"))
            if value is not True:
                command.append(str(value))
        return Worker(name, self.spawn(command, log), out, ready, log)

    @staticmethod
    def stop(processes: list[subprocess.Popen[bytes]], grace: float = STOP_GRACE) -> None:
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
        deadline = time.monotonic() + grace
        for process in processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=grace)

    def stop_all(self) -> None:
        self.stop(self.started)


class BenchError(Exception):
    pass


def wait_ready(workers: list[Worker], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    waiting = list(workers)
    while waiting:
        for worker in list(waiting):
            if worker.ready.exists():
                waiting.remove(worker)
            elif worker.process.poll() is not None:
                raise BenchError(f"{worker.name} exited early:\n{worker.tail()}")
        if waiting and time.monotonic() > deadline:
            names = ", ".join(w.name for w in waiting)
            raise BenchError(f"not ready after {timeout:.0f} s: {names}\n{waiting[0].tail()}")
        time.sleep(0.02)


def collect(worker: Worker, timeout: float) -> dict[str, Any]:
    try:
        worker.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        Processes.stop([worker.process])
        raise BenchError(f"{worker.name} did not finish within {timeout:.0f} s") from None
    if worker.process.returncode != 0 or not worker.out.exists():
        raise BenchError(
            f"{worker.name} failed (exit {worker.process.returncode}):\n{worker.tail()}"
        )
    result: dict[str, Any] = json.loads(worker.out.read_text())
    return result


class CpuSampler:
    """CPU seconds used by a set of processes over [start, end] of the monotonic clock."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before: dict[str, float | None] = {}
        self.used: dict[str, float] = {}

    def sample_window(self, start: float, end: float) -> None:
        delay = start - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self.before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        delay = end - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        for name, pid in self.pids.items():
            after = cpu_seconds(pid)
            first = self.before.get(name)
            if after is not None and first is not None:
                self.used[name] = after - first


# --- phases --------------------------------------------------------------------------------------


@dataclass
class Plan:
    warmup: float
    window: float
    rtt_count: int
    rtt_seconds: float
    nats_count: int


@dataclass
class MeshEnv:
    procs: Processes
    addresses: dict[str, str]
    node_pids: dict[str, int]
    cli_tls: Path | None
    node_tls: Path | None
    plan: Plan
    profile_dir: Path | None = None
    profiles: dict[str, Any] = field(default_factory=dict)

    def client(self, node: str) -> dict[str, Any]:
        options: dict[str, Any] = {"target": self.addresses[node], "server_name": node}
        if self.cli_tls is not None:
            options.update(tls=self.cli_tls, cert_name="client.pem", key_name="client.key")
        return options


def throughput_phase(
    env: MeshEnv,
    dest: str,
    mode: str,
    nodes: list[str],
    profile: bool = False,
    batch: int = 0,
) -> dict[str, Any]:
    plan = env.plan
    now = time.monotonic()
    t_start = now + WORKER_START
    t_from = t_start + plan.warmup
    t_to = t_from + plan.window
    t_end = t_to + 1.0
    receiver = env.procs.worker(
        "receive", t_from=t_from, t_to=t_to, t_end=t_end, batch=batch, **env.client(dest)
    )
    sender = env.procs.worker(
        "send",
        dest=dest,
        mode=mode,
        batch=batch,
        concurrency=SEND_CONCURRENCY,
        t_start=t_start,
        t_from=t_from,
        t_to=t_to,
        **env.client("n1"),
    )
    spies: list[subprocess.Popen[bytes]] = []
    try:
        wait_ready([receiver, sender], WORKER_START + 10)
        pids = {n: env.node_pids[n] for n in nodes}
        pids["sender"] = sender.process.pid
        pids["receiver"] = receiver.process.pid
        if profile and env.profile_dir is not None:
            spies = start_profilers(env, nodes, t_from, plan.window)
        sampler = CpuSampler(pids)
        sampler.sample_window(t_from, t_to)
        received = collect(receiver, t_end - time.monotonic() + 15)
        sent = collect(sender, t_end - time.monotonic() + 15)
        per_message = {
            name: used / received["in_window"] * 1e6 if received["in_window"] else None
            for name, used in sampler.used.items()
        }
        if spies:
            env.profiles.update(finish_profilers(env, spies, nodes, per_message))
    finally:
        Processes.stop([receiver.process, sender.process, *spies])
    rate = received["rate"]
    return {
        "msgs_per_s": rate,
        "sent_in_window": sent["in_window"],
        "received_in_window": received["in_window"],
        "sent_total": sent["sent"],
        "received_total": received["received"],
        "send_errors": sent["errors"],
        "cpu_s": sampler.used,
        "cpu_us_per_msg": per_message,
        "window_s": plan.window,
    }


def request_phase(
    env: MeshEnv, caller: str, instance: str, *, per_second: bool, nodes: list[str]
) -> dict[str, Any]:
    plan = env.plan
    budget = plan.rtt_seconds + (plan.warmup + plan.window if per_second else 0) + 60
    t_end = time.monotonic() + budget
    server = env.procs.worker("serve", t_end=t_end, **env.client(instance))
    requester = None
    try:
        wait_ready([server], 15)
        requester = env.procs.worker(
            "request",
            route_timeout=20,
            rtt_count=plan.rtt_count,
            rtt_seconds=plan.rtt_seconds,
            window=plan.window if per_second else 0,
            warmup=plan.warmup,
            concurrency=REQ_CONCURRENCY,
            **env.client(caller),
        )
        wait_ready([requester], 30)
        result = collect(requester, budget)
        result.pop("req_window", None)
        result["nodes"] = nodes
        return result
    finally:
        Processes.stop([server.process, *([requester.process] if requester else [])])


def floor_phase(env: MeshEnv, batch: int) -> dict[str, Any]:
    plan = env.plan
    now = time.monotonic()
    t_start = now + WORKER_START
    t_from = t_start + plan.warmup
    t_to = t_from + plan.window
    t_end = t_to + 1.0
    tls: dict[str, Any] = {}
    if env.node_tls is not None:
        tls = {"tls": env.node_tls}
    server = env.procs.worker(
        "floor-server", batch=batch, t_from=t_from, t_to=t_to, t_end=t_end, **tls
    )
    client = None
    try:
        wait_ready([server], WORKER_START + 10)
        address = server.ready.read_text().strip()
        client_options: dict[str, Any] = {"target": address, "server_name": "n1"}
        if env.cli_tls is not None:
            client_options.update(tls=env.cli_tls, cert_name="client.pem", key_name="client.key")
        client = env.procs.worker(
            "floor-client", batch=batch, t_start=t_start, t_to=t_to, **client_options
        )
        wait_ready([client], max(1.0, t_start - time.monotonic()) + 5)
        sampler = CpuSampler({"server": server.process.pid, "client": client.process.pid})
        sampler.sample_window(t_from, t_to)
        received = collect(server, t_end - time.monotonic() + 15)
        written = collect(client, 15)
    finally:
        Processes.stop([server.process, *([client.process] if client else [])])
    return {
        "msgs_per_s": received["rate"],
        "frame_bytes": written["frame_bytes"],
        "cpu_us_per_msg": {
            n: u / received["in_window"] * 1e6 if received["in_window"] else None
            for n, u in sampler.used.items()
        },
    }


# --- profiling -----------------------------------------------------------------------------------


def start_profilers(
    env: MeshEnv, nodes: list[str], t_from: float, window: float
) -> list[subprocess.Popen[bytes]]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    assert env.profile_dir is not None
    spies = []
    # py-spy starts sampling when launched: start it at the window, for the window.
    delay = t_from - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    for node in nodes:
        out = env.profile_dir / f"{node}.txt"
        command = [
            spy, "record", "--pid", str(env.node_pids[node]), "--duration",
            str(max(1, int(window))), "--rate", "250", "--format", "raw",
            "--nonblocking", "--output", str(out),
        ]  # fmt: skip
        spies.append(env.procs.spawn(command, env.profile_dir / f"{node}.log"))
    return spies


CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("sqlite store", ("nodes/store.py",)),
    ("envelope seal/open/verify", ("mesh/envelope.py", "mesh/crypto.py", "mesh/codec.py")),
    ("core (routing, delivery)", ("mesh/core.py", "mesh/delivery", "mesh/routing")),
    ("link writer/reader (await grpc)", ("nodes/links.py",)),
    ("client RPC handlers", ("nodes/server.py", "nodes/apps.py")),
    ("runtime glue", ("nodes/runtime.py",)),
    ("grpc aio Python layer", ("grpc/aio/", "grpc/_")),
]
LEAF_CATEGORIES: list[tuple[str, str]] = [
    ("select (selectors.py", "idle (main thread in epoll)"),
    # grpc.aio's poller thread runs C-core (TLS, HTTP/2 framing, socket I/O)
    # from a Cython target: py-spy sees only its Python entry frame.
    ("Thread.run (threading.py", "grpc C-core poller thread (TLS, HTTP/2, sockets)"),
    # Event-loop callbacks that are Cython coroutines of grpc.aio (RPC ops completing,
    # unary handlers being driven): their time shows as self time of Handle._run.
    ("Handle._run (asyncio/events.py", "grpc aio Cython callbacks (main thread)"),
]
IDLE = LEAF_CATEGORIES[0][1]


def categorize(frames: list[str]) -> str:
    """What a sample was spent on: known leaves first, else the deepest project frame."""
    if not frames:
        return "other"
    for marker, name in LEAF_CATEGORIES:
        if marker in frames[-1]:
            return name
    for frame in reversed(frames):
        for name, keys in CATEGORIES:
            if any(key in frame for key in keys):
                return name
    return "other (stdlib, asyncio)"


def summarize_profile(path: Path, cpu_us_per_msg: float | None, top: int = 12) -> dict[str, Any]:
    """Sample shares from py-spy's raw (collapsed) output, and CPU us per message per category.

    The per-message figures spread the node's measured CPU per message (from
    /proc, same window) over the non-idle samples.
    """
    self_counts: collections.Counter[str] = collections.Counter()
    category_counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        total += count
        if frames:
            self_counts[_short(frames[-1])] += count
        category_counts[categorize(frames)] += count
    busy = total - category_counts.get(IDLE, 0)

    def share(n: int) -> float:
        return round(100.0 * n / total, 1) if total else 0.0

    per_message = {}
    if cpu_us_per_msg is not None and busy:
        per_message = {
            name: round(cpu_us_per_msg * n / busy, 1)
            for name, n in category_counts.most_common()
            if name != IDLE
        }
    return {
        "samples": total,
        "cpu_us_per_msg": cpu_us_per_msg,
        "categories_pct": {k: share(v) for k, v in category_counts.most_common()},
        "categories_us_per_msg": per_message,
        "top_self_pct": {k: share(v) for k, v in self_counts.most_common(top)},
    }


def _short(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)" keeping the last two path parts
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file_part = where.rsplit(":", 1)[0]
    parts = file_part.split("/")
    return f"{name} ({'/'.join(parts[-2:])})" if file_part else name


def finish_profilers(
    env: MeshEnv,
    spies: list[subprocess.Popen[bytes]],
    nodes: list[str],
    cpu_us_per_msg: dict[str, float | None],
) -> dict[str, Any]:
    assert env.profile_dir is not None
    results: dict[str, Any] = {}
    for spy, node in zip(spies, nodes, strict=True):
        try:
            spy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            Processes.stop([spy])
        out = env.profile_dir / f"{node}.txt"
        if out.exists():
            results[node] = summarize_profile(out, cpu_us_per_msg.get(node))
        else:
            log = (env.profile_dir / f"{node}.log").read_text(errors="replace")[-400:]
            results[node] = {"error": log}
    return results


# --- the mesh ------------------------------------------------------------------------------------


def line_topology(path: Path, count: int, settings: dict[str, Any] | None = None) -> None:
    nodes = "\n".join(f"  n{i}: {{}}" for i in range(1, count + 1))
    links = "\n".join(f"  - {{a: n{i}, b: n{i + 1}, cost: 1}}" for i in range(1, count))
    extra = ""
    if settings:
        extra = "settings:\n" + "".join(f"  {k}: {v}\n" for k, v in settings.items())
    path.write_text(
        f"mesh: bench\nrouting: link-state\nnodes:\n{nodes}\nlinks:\n{links}\n{extra}",
        encoding="utf-8",
    )


def run_mesh(
    workdir: Path, plan: Plan, *, insecure: bool, profile: bool, settings: dict[str, Any]
) -> dict[str, Any]:
    from nodes.launcher import launch

    topology = workdir / "line5.yaml"
    line_topology(topology, 5, settings)
    procs = Processes(workdir)
    handle = launch(topology, workdir / "mesh", insecure=insecure, timeout=60)
    results: dict[str, Any] = {}
    try:
        state_dir = Path(handle.state.state_dir)
        env = MeshEnv(
            procs=procs,
            addresses=handle.addresses,
            node_pids={n: p.pid for n, p in handle.processes.items()},
            cli_tls=None if insecure else state_dir / "cli",
            node_tls=None if insecure else state_dir / "n1" / "keys",
            plan=plan,
            profile_dir=(workdir / "profile") if profile else None,
        )
        if env.profile_dir is not None:
            env.profile_dir.mkdir()
        for hops in PATH_LENGTHS:
            dest = f"n{hops}"
            path_nodes = [f"n{i}" for i in range(1, hops + 1)]
            step(f"async through {hops} node(s)")
            results[f"hops{hops}_async"] = throughput_phase(
                env, dest, "async", path_nodes, profile=profile and hops == 3
            )
            step(f"request/reply through {hops} node(s)")
            results[f"hops{hops}_request"] = request_phase(
                env, "n1", dest, per_second=hops in (1, 3), nodes=path_nodes
            )
            if hops == 3:
                step("acknowledged through 3 nodes")
                results["hops3_acked"] = throughput_phase(env, dest, "acked", path_nodes)
                step(f"async through 3 nodes, batched API ({SEND_BATCH} per write)")
                results["hops3_async_batched"] = throughput_phase(
                    env, dest, "async", path_nodes, batch=SEND_BATCH
                )
                step(f"acknowledged through 3 nodes, batched API ({SEND_BATCH} per write)")
                results["hops3_acked_batched"] = throughput_phase(
                    env, dest, "acked", path_nodes, batch=SEND_BATCH
                )
        for batch in (1, 64):
            step(f"floor: bare grpc.aio stream, {batch} per write")
            results[f"floor_{batch}"] = floor_phase(env, batch)
        if env.profiles:
            results["profile"] = env.profiles
        stats = {}
        for node in handle.nodes:
            with contextlib.suppress(Exception):
                client = handle.client(node, timeout=5)
                try:
                    counters = client.stats()
                finally:
                    client.close()
                stats[node] = {k: v for k, v in counters.items() if v}
        if stats:
            results["node_counters"] = stats
    finally:
        procs.stop_all()
        handle.stop()
    return results


# --- NATS ----------------------------------------------------------------------------------------


def nats_available() -> str | None:
    """None when usable, else why not."""
    if shutil.which("nats-server") is None:
        return "nats-server not found on PATH (apt-get install -y nats-server)"
    try:
        import nats  # noqa: F401
    except ImportError:
        return "nats-py is not installed (pip install nats-py)"
    return None


def nats_config(client_port: int, leaf_listen: int | None, leaf_remote: int | None) -> str:
    lines = [
        "host: 127.0.0.1",
        f"port: {client_port}",
        'write_deadline: "60s"',
        "max_pending: 1073741824",
        "max_payload: 1048576",
    ]
    leaf: list[str] = []
    if leaf_listen is not None:
        leaf.append(f"  listen: 127.0.0.1:{leaf_listen}")
    if leaf_remote is not None:
        leaf.append(f'  remotes: [ {{ url: "nats-leaf://127.0.0.1:{leaf_remote}" }} ]')
    if leaf:
        lines += ["leafnodes {", *leaf, "}"]
    return "\n".join(lines) + "\n"


def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"nats-server on port {port} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise BenchError(f"nats-server on port {port} not listening after {timeout:.0f} s")


def run_nats(workdir: Path, plan: Plan) -> dict[str, Any]:
    procs = Processes(workdir)
    ndir = workdir / "nats"
    ndir.mkdir()
    client_ports = [free_port() for _ in range(3)]
    leaf_ports = [free_port() for _ in range(3)]
    configs = [
        nats_config(client_ports[0], None, leaf_ports[1]),  # s1 -> s2
        nats_config(client_ports[1], leaf_ports[1], leaf_ports[2]),  # s2 -> s3
        nats_config(client_ports[2], leaf_ports[2], None),
    ]
    results: dict[str, Any] = {}
    try:
        # Start s3 first so the remotes find their hubs at once (they retry anyway).
        servers = {}
        for index in (2, 1, 0):
            config = ndir / f"s{index + 1}.conf"
            config.write_text(configs[index])
            servers[index] = procs.spawn(
                ["nats-server", "-c", str(config)], ndir / f"s{index + 1}.log"
            )
            wait_port(client_ports[index], servers[index], 10)
        url = [f"nats://127.0.0.1:{p}" for p in client_ports]

        step("NATS: pub/sub through 3 leaf-chained servers")
        budget = plan.nats_count / 5000 + 30  # worst case 5k msgs/s
        t_end = time.monotonic() + budget
        sub = procs.worker("nats-sub", target=url[2], count=plan.nats_count, t_end=t_end)
        wait_ready([sub], 15)
        pub = procs.worker("nats-pub", target=url[0], count=plan.nats_count, route_timeout=20)
        wait_ready([pub], 30)
        pid_map = {f"s{i + 1}": servers[i].pid for i in range(3)}
        pid_map.update(pub=pub.process.pid, sub=sub.process.pid)
        published = collect(pub, budget)
        received = collect(sub, budget)
        results["chain_pubsub"] = {
            "msgs_per_s": received["rate"],
            "published": published["published"],
            "received": received["received"],
            "lossless": received["received"] == published["published"],
            "publish_rate": published["publish_rate"],
        }

        for name, req_at, resp_at, rtt in (
            ("chain_request", 0, 2, True),
            ("single_request", 0, 0, False),
        ):
            step(f"NATS: request/reply, {name.replace('_', ' ')}")
            budget = plan.rtt_seconds + plan.warmup + plan.window + 60
            resp = procs.worker("nats-resp", target=url[resp_at], t_end=time.monotonic() + budget)
            try:
                wait_ready([resp], 15)
                req = procs.worker(
                    "nats-req",
                    target=url[req_at],
                    route_timeout=20,
                    rtt_count=plan.rtt_count if rtt else 0,
                    rtt_seconds=plan.rtt_seconds,
                    window=plan.window,
                    warmup=plan.warmup,
                    concurrency=REQ_CONCURRENCY,
                )
                results[name] = collect(req, budget)
            finally:
                Processes.stop([resp.process])
    finally:
        procs.stop_all()
    return results


# --- report --------------------------------------------------------------------------------------


def step(text: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def summarize(mesh: dict[str, Any], nats_results: dict[str, Any] | None) -> dict[str, Any]:
    keys: dict[str, Any] = {}
    for hops in PATH_LENGTHS:
        keys[f"hops{hops}_async_msgs_per_s"] = mesh[f"hops{hops}_async"]["msgs_per_s"]
        keys[f"hops{hops}_rtt_p50_ms"] = mesh[f"hops{hops}_request"]["rtt_p50_ms"]
        keys[f"hops{hops}_rtt_p99_ms"] = mesh[f"hops{hops}_request"]["rtt_p99_ms"]
    keys["acked_hops3_msgs_per_s"] = mesh["hops3_acked"]["msgs_per_s"]
    # The batched client API (SendStream / ReceiveBatches), same path and bodies.
    keys["hops3_async_batched_msgs_per_s"] = mesh["hops3_async_batched"]["msgs_per_s"]
    keys["acked_hops3_batched_msgs_per_s"] = mesh["hops3_acked_batched"]["msgs_per_s"]
    keys["mesh_1hop_req_per_s"] = mesh["hops1_request"]["req_per_s"]
    keys["mesh_3hop_req_per_s"] = mesh["hops3_request"]["req_per_s"]
    keys["floor_msgs_per_s"] = mesh["floor_64"]["msgs_per_s"]
    keys["floor_unbatched_msgs_per_s"] = mesh["floor_1"]["msgs_per_s"]
    if nats_results:
        keys["nats_chain_msgs_per_s"] = nats_results["chain_pubsub"]["msgs_per_s"]
        keys["nats_chain_lossless"] = nats_results["chain_pubsub"]["lossless"]
        keys["nats_chain_rtt_p50_ms"] = nats_results["chain_request"]["rtt_p50_ms"]
        keys["nats_chain_rtt_p99_ms"] = nats_results["chain_request"]["rtt_p99_ms"]
        keys["nats_req_per_s"] = nats_results["single_request"]["req_per_s"]
        keys["nats_chain_req_per_s"] = nats_results["chain_request"]["req_per_s"]
    return keys


def targets(keys: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []

    def add(name: str, ratio: float | None, goal: str, met: bool | None) -> None:
        rows.append({"target": name, "ratio": ratio, "goal": goal, "met": met})

    nats_msgs = keys.get("nats_chain_msgs_per_s")
    ratio = keys["hops3_async_msgs_per_s"] / nats_msgs if nats_msgs else None
    add(
        "3-node async msgs/s vs NATS chain",
        ratio,
        ">= 1.0x",
        None if ratio is None else ratio >= 1.0,
    )
    nats_rtt = keys.get("nats_chain_rtt_p50_ms")
    ratio = keys["hops3_rtt_p50_ms"] / nats_rtt if nats_rtt else None
    add(
        "3-node req/reply p50 vs NATS chain",
        ratio,
        "<= 2.0x",
        None if ratio is None else ratio <= 2.0,
    )
    nats_req = keys.get("nats_req_per_s")
    ratio = keys["mesh_1hop_req_per_s"] / nats_req if nats_req else None
    add(
        "1-node req/s vs NATS single server",
        ratio,
        ">= 1.0x",
        None if ratio is None else ratio >= 1.0,
    )
    ratio = keys["acked_hops3_msgs_per_s"] / keys["hops3_async_msgs_per_s"]
    add("acknowledged vs async (3 nodes)", ratio, ">= 0.5x", ratio >= 0.5)
    batched = keys.get("hops3_async_batched_msgs_per_s")
    ratio = batched / nats_msgs if batched and nats_msgs else None
    add(
        "3-node async msgs/s, batched API, vs NATS chain",
        ratio,
        ">= 1.0x",
        None if ratio is None else ratio >= 1.0,
    )
    acked_batched = keys.get("acked_hops3_batched_msgs_per_s")
    ratio = acked_batched / batched if acked_batched and batched else None
    add(
        "acknowledged vs async, batched API (3 nodes)",
        ratio,
        ">= 0.5x",
        None if ratio is None else ratio >= 0.5,
    )
    return rows


def print_report(
    keys: dict[str, Any],
    mesh: dict[str, Any],
    nats_note: str | None,
    target_rows: list[dict[str, Any]],
    security: str,
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 150)

    def fmt_rate(v: float | None) -> str:
        return "-" if v is None else f"{v:,.0f}"

    def fmt_ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    table = Table(title=f"meshwork end to end ({security}, 1 KiB JSON bodies)")
    for column in ("path", "async msgs/s", "rtt p50 ms", "rtt p99 ms", "req/s (64 in flight)"):
        table.add_column(column, justify="right" if column != "path" else "left")
    for hops in PATH_LENGTHS:
        table.add_row(
            f"mesh, {hops} node{'s' if hops > 1 else ''}",
            fmt_rate(keys[f"hops{hops}_async_msgs_per_s"]),
            fmt_ms(keys[f"hops{hops}_rtt_p50_ms"]),
            fmt_ms(keys[f"hops{hops}_rtt_p99_ms"]),
            fmt_rate(mesh[f"hops{hops}_request"].get("req_per_s")),
        )
    table.add_row(
        "mesh, 3 nodes, acknowledged", fmt_rate(keys["acked_hops3_msgs_per_s"]), "", "", ""
    )
    table.add_row(
        f"mesh, 3 nodes, batched API ({SEND_BATCH}/write)",
        fmt_rate(keys["hops3_async_batched_msgs_per_s"]),
        "",
        "",
        "",
    )
    table.add_row(
        "mesh, 3 nodes, batched API, acknowledged",
        fmt_rate(keys["acked_hops3_batched_msgs_per_s"]),
        "",
        "",
        "",
    )
    table.add_row(
        "floor: grpc.aio stream, 1 per write",
        fmt_rate(keys["floor_unbatched_msgs_per_s"]),
        "",
        "",
        "",
    )
    table.add_row(
        "floor: grpc.aio stream, 64 per write", fmt_rate(keys["floor_msgs_per_s"]), "", "", ""
    )
    if "nats_chain_msgs_per_s" in keys:
        lossless = "lossless" if keys["nats_chain_lossless"] else "LOST MESSAGES"
        table.add_row(
            f"NATS, 3 leaf-chained servers ({lossless})",
            fmt_rate(keys["nats_chain_msgs_per_s"]),
            fmt_ms(keys["nats_chain_rtt_p50_ms"]),
            fmt_ms(keys["nats_chain_rtt_p99_ms"]),
            fmt_rate(keys["nats_chain_req_per_s"]),
        )
        table.add_row("NATS, 1 server", "", "", "", fmt_rate(keys["nats_req_per_s"]))
    console.print(table)
    if nats_note:
        console.print(f"[yellow]NATS rows skipped:[/yellow] {nats_note}")

    cpu = Table(title="CPU per delivered message in the async window (us; 2 cores shared)")
    names = ["sender", "n1", "n2", "n3", "n4", "n5", "receiver"]
    cpu.add_column("phase")
    for name in names:
        cpu.add_column(name, justify="right")
    for key in (
        "hops1_async",
        "hops3_async",
        "hops5_async",
        "hops3_acked",
        "hops3_async_batched",
        "hops3_acked_batched",
    ):
        per = mesh[key]["cpu_us_per_msg"]
        cpu.add_row(key, *(f"{per[n]:.0f}" if per.get(n) is not None else "" for n in names))
    console.print(cpu)

    goals = Table(title="targets")
    for column in ("target", "measured", "goal", "status"):
        goals.add_column(column)
    for row in target_rows:
        status = (
            "[dim]n/a (no NATS)[/dim]"
            if row["met"] is None
            else ("[green]met[/green]" if row["met"] else "[red]not met[/red]")
        )
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        goals.add_row(row["target"], ratio, row["goal"], status)
    console.print(goals)

    for node, summary in mesh.get("profile", {}).items():
        if "error" in summary:
            console.print(f"[yellow]profile of {node} failed:[/yellow] {summary['error']}")
            continue
        cpu_note = summary["cpu_us_per_msg"]
        title = f"py-spy, {node} in the 3-node async window ({summary['samples']} samples"
        title += f", {cpu_note:.0f} us CPU per message)" if cpu_note else ")"
        prof = Table(title=title)
        prof.add_column("where")
        prof.add_column("% samples", justify="right")
        prof.add_column("us per msg", justify="right")
        for name, pct in summary["categories_pct"].items():
            us = summary["categories_us_per_msg"].get(name)
            prof.add_row(name, f"{pct:.1f}", "" if us is None else f"{us:.0f}")
        console.print(prof)
        top = Table(title=f"{node}: top self time (% samples)")
        top.add_column("function")
        top.add_column("%", justify="right")
        for name, pct in list(summary["top_self_pct"].items())[:8]:
            top.add_row(name, f"{pct:.1f}")
        console.print(top)


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short windows (under 90 s)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy n1..n3 during the 3-node async window"
    )
    parser.add_argument(
        "--insecure", action="store_true", help="run the mesh without TLS (not production)"
    )
    parser.add_argument(
        "--batch-delay-ms",
        type=float,
        help="experiment: override the nodes' batch_delay_ms (default: the product default)",
    )
    parser.add_argument("--batch-max", type=int, help="experiment: override the nodes' batch_max")
    parser.add_argument("--no-nats", action="store_true", help="skip the NATS rows")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    # Worker options (the bench re-runs itself with --role).
    parser.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)
    worker = parser.add_argument_group("worker (internal)")
    for name in ("out", "ready", "target", "server-name", "tls", "dest", "mode"):
        worker.add_argument(f"--{name}", help=argparse.SUPPRESS)
    worker.add_argument("--cert-name", default="client.pem", help=argparse.SUPPRESS)
    worker.add_argument("--key-name", default="client.key", help=argparse.SUPPRESS)
    for name in ("t-start", "t-from", "t-to", "t-end", "rtt-seconds", "warmup", "window"):
        worker.add_argument(f"--{name}", type=float, default=0.0, help=argparse.SUPPRESS)
    for name in ("concurrency", "rtt-count", "count", "batch", "route-timeout"):
        worker.add_argument(f"--{name}", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def workspace(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="meshbench-"))
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role:
        return run_worker(args)
    plan = (
        Plan(warmup=1.0, window=2.0, rtt_count=300, rtt_seconds=1.5, nats_count=60_000)
        if args.quick
        else Plan(warmup=3.0, window=10.0, rtt_count=2000, rtt_seconds=8.0, nats_count=300_000)
    )
    security = "insecure (plaintext)" if args.insecure else "mTLS"
    settings = {
        key: value
        for key, value in (("batch_delay_ms", args.batch_delay_ms), ("batch_max", args.batch_max))
        if value is not None
    }
    if settings:
        security += ", settings " + ", ".join(f"{k}={v}" for k, v in settings.items())
    nats_note = "--no-nats given" if args.no_nats else nats_available()
    started = time.monotonic()
    # SIGTERM to the bench unwinds through the finally blocks that stop the processes.
    signal.signal(signal.SIGTERM, _interrupt)
    with workspace(args.keep) as workdir:
        print(f"meshwork end-to-end bench ({security}); work dir {workdir}", file=sys.stderr)
        mesh = run_mesh(
            workdir, plan, insecure=args.insecure, profile=args.profile, settings=settings
        )
        nats_results = None
        if nats_note is None:
            nats_results = run_nats(workdir, plan)
    keys = summarize(mesh, nats_results)
    target_rows = targets(keys)
    print_report(keys, mesh, nats_note, target_rows, security)
    elapsed = time.monotonic() - started
    print(f"finished in {elapsed:.0f} s", file=sys.stderr)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {
            **keys,
            "targets": target_rows,
            "security": security,
            "nats_skipped": nats_note,
            "quick": args.quick,
            "plan": plan.__dict__,
            "node_settings": settings or "product defaults",
            "body_bytes": BODY_SIZE,
            "send_concurrency": SEND_CONCURRENCY,
            "request_concurrency": REQ_CONCURRENCY,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "elapsed_s": elapsed,
            "mesh": mesh,
            "nats": nats_results,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
