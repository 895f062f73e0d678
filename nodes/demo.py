"""The envelope tour that opens `mesh demo`: real keys, real envelopes, no network.

It shows the path a message takes through a three-node line a - b - c:
sealed at a, verified (not opened) at b, opened at c, and what each hop does
with tampered and replayed input. The live mesh follows (nodes/live_demo.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from mesh.codec import Compression, decode_body, encode_body
from mesh.crypto import KeyRing, NodeIdentity
from mesh.dedupe import DedupeWindow
from mesh.envelope import Envelope, Header, Opener, Sealer, read_header, verify
from mesh.errors import MeshError
from mesh.v1 import envelope_pb2


def run_demo(console: Console) -> None:
    """Seal, forward and open one message, then show tampering and replay refused."""
    identities = {name: NodeIdentity.generate(name) for name in ("a", "b", "c")}
    rings = {name: KeyRing(ident, random_bytes=os.urandom) for name, ident in identities.items()}
    for ring in rings.values():
        for ident in identities.values():
            ring.add_peer(ident.public)
    now_ms = int(time.time() * 1000)
    header = Header(
        message_id=os.urandom(16),
        source="a",
        destination_kind=envelope_pb2.DESTINATION_KIND_NODE,
        destination="c",
        recipient="c",
        mode=envelope_pb2.DELIVERY_MODE_ACKNOWLEDGED,
        created_ms=now_ms,
        deadline_ms=now_ms + 5_000,
    )
    body = {"order": 42, "items": ["widget"] * 40, "note": "hello from a"}
    envelope = Sealer(rings["a"]).seal(header, encode_body(body), sign=True)

    steps = Table(title="one message, a -> b -> c", show_lines=False)
    steps.add_column("hop")
    steps.add_column("what it does")
    steps.add_column("result")
    wire = envelope.SerializeToString()
    parsed = read_header(envelope)
    steps.add_row(
        "a",
        "encode JSON, compress, AES-256-GCM to c, SHA-256, sign",
        f"{len(wire)} bytes on the wire, {Compression(parsed.compression).name} compression, "
        f"digest {envelope.digest[:6].hex()}...",
    )
    verify(envelope)
    envelope.ttl -= 1
    steps.add_row("b", "verify digest, decrement ttl (no keys, never decrypts)", "ok, forwarded")
    opener = Opener(rings["c"])
    opened = opener.open(envelope, now_ms=now_ms)
    window = DedupeWindow()
    window.accept(opened.header.message_id, opened.header.created_ms, now_ms)
    steps.add_row(
        "c",
        "verify, check signature, decrypt, decompress, decode",
        f"{decode_body(opened.body)!r:.60}",
    )
    console.print(steps)

    refused = Table(title="hostile input is refused with a status")
    refused.add_column("input")
    refused.add_column("where")
    refused.add_column("error")
    refused.add_column("gRPC status")
    tampered = Envelope()
    tampered.CopyFrom(envelope)
    tampered.payload = bytes([tampered.payload[0] ^ 1]) + tampered.payload[1:]
    cases: list[tuple[str, str, Callable[[], object]]] = [
        ("payload bit flipped", "b (forwarder)", lambda: verify(tampered)),
        ("opened by the wrong node", "b", lambda: Opener(rings["b"]).open(envelope)),
        (
            "same message again",
            "c",
            lambda: window.accept(opened.header.message_id, opened.header.created_ms, now_ms),
        ),
        ("past its deadline", "c", lambda: opener.open(envelope, now_ms=now_ms + 60_000)),
    ]
    for label, where, attempt in cases:
        try:
            attempt()
        except MeshError as exc:
            refused.add_row(label, where, f"{type(exc).__name__}: {exc}", exc.status.name)
        else:
            refused.add_row(label, where, "accepted (a bug!)", "-")
    console.print(refused)
