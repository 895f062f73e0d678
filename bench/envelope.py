"""Envelope throughput, measured against the bare primitives it is built from.

What is measured, per body size (256 B, 1 KiB and 64 KiB of compressible,
log-like JSON, plus 1 KiB of incompressible random bytes):

* ``seal``   -- :meth:`mesh.envelope.Sealer.seal`: checks, zstd, header
  serialization, AEAD encrypt, SHA-256 digest, ``Envelope`` construction.
* ``verify`` -- :func:`mesh.envelope.verify`: what a forwarding hop does (size
  checks and the digest; no keys, no decryption).
* ``open``   -- :meth:`mesh.envelope.Opener.open`: verify, parse the header,
  decrypt, decompress, build the ``OpenedMessage``.

and, in the same run and over the same bytes, the primitives those are made of:

* ``sha256``       -- one ``hashlib.sha256(data).digest()`` over exactly the bytes
  the digest covers (``version || len(header) || header || payload``), already
  concatenated: the floor a hop cannot go below.
* ``aead-encrypt`` / ``aead-decrypt`` -- the same cipher on a cached AEAD object,
  over the same (compressed) plaintext with the same header bytes as associated
  data.
* ``zstd-compress`` / ``zstd-decompress`` -- a reused ``ZstdCompressor`` at the
  default policy's level (1) and a reused ``ZstdDecompressor``.

Why: the envelope's cost should be its primitives plus a thin layer of Python
glue. Absolute numbers depend on the machine; the ratios do not (much), so they
are what the targets are set on (at 1 KiB, the typical message):

* ``verify_over_sha256``   = verify / sha256                  (target <= 1.5)
* ``seal_over_primitives`` = seal / (zstd-compress + aead-encrypt + sha256)
* ``open_over_primitives`` = open / (sha256 + aead-decrypt + zstd-decompress)

The primitives' sum only counts what seal/open actually did: below the policy's
``min_size`` zstd is not tried; when it is tried and does not shrink the body
(random bytes), seal still paid for the attempt, so zstd-compress stays in seal's
sum, but open has nothing to decompress, so zstd-decompress leaves open's sum.

Method: one Sealer and one Opener per run (session keys derived once and cached,
as on a live node; each seal consumes a nonce, which is fine). Each operation is
a zero-argument callable run in batches timed with ``time.perf_counter_ns``,
after a warm-up, with the garbage collector disabled; the operations of one body
variant are interleaved round-robin across repeats so drift hits all of them
alike, and the median batch wins. The per-call cost of the benchmark loop itself
(a no-op callable, measured the same way) is subtracted from every figure.
MB/s is 10^6 bytes per second of the bytes each operation consumes: the body
for seal, open and zstd-compress, the decompressed body for zstd-decompress, the
digest input for verify and sha256, the (compressed) plaintext for aead-encrypt
and the ciphertext for aead-decrypt.

Run ``python bench/envelope.py [--quick] [--cipher aes|chacha] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _bootstrap  # noqa: F401  (before mesh: see bench/_bootstrap.py)
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from rich.console import Console
from rich.table import Table

from mesh.codec import Compression, CompressionPolicy, Compressor, ContentType, EncodedBody
from mesh.crypto import Cipher, KeyRing, NodeIdentity
from mesh.envelope import (
    VERSION,
    Header,
    Opener,
    Sealer,
    digest_input_prefix,
    read_header,
    verify,
)
from mesh.v1 import envelope_pb2

SEED = 20260509
TARGET_RATIO = 1.5
RATIO_SIZE = 1024
SIZES = (256, 1024, 64 * 1024)
ENVELOPE_OPS = ("seal", "verify", "open")
PRIMITIVE_OPS = ("sha256", "aead-encrypt", "aead-decrypt", "zstd-compress", "zstd-decompress")
CIPHERS = {"aes": Cipher.AES_256_GCM, "chacha": Cipher.CHACHA20_POLY1305}
CIPHER_NAMES = {Cipher.AES_256_GCM: "AES-256-GCM", Cipher.CHACHA20_POLY1305: "ChaCha20-Poly1305"}

Op = Callable[[], object]


# --- bodies ----------------------------------------------------------------------

_SERVICES = ("router", "gateway", "billing", "inventory", "auth", "search", "notifier")
_LEVELS = ("DEBUG", "INFO", "INFO", "INFO", "WARN", "ERROR")
_WORDS = (
    "forwarded envelope to next hop after route lookup",
    "request completed with status ok",
    "retrying delivery because the link was congested",
    "cache miss for session key, derived a new one",
    "deadline exceeded while waiting for acknowledgement",
    "health check passed for all upstream peers",
    "subject subscription refreshed from advert",
    "dropped duplicate message inside the dedupe window",
)


def _log_record(rng: random.Random, seq: int) -> dict[str, Any]:
    return {
        "ts": f"2026-05-09T07:{rng.randrange(60):02d}:{rng.randrange(60):02d}."
        f"{rng.randrange(1000):03d}Z",
        "seq": seq,
        "level": rng.choice(_LEVELS),
        "svc": rng.choice(_SERVICES),
        "node": f"node-{rng.randrange(64)}",
        "trace": rng.randbytes(8).hex(),
        "msg": rng.choice(_WORDS),
        "latency_ms": round(rng.lognormvariate(0.0, 1.0), 3),
        "bytes": rng.randrange(64, 65536),
    }


def json_log_body(size: int, rng: random.Random) -> bytes:
    """A JSON array of varied log records, exactly ``size`` bytes (ASCII)."""
    records: list[str] = []
    length = 2  # "[" and "]"
    while True:
        record = json.dumps(_log_record(rng, len(records)), separators=(",", ":"))
        extra = len(record) + (1 if records else 0)
        if length + extra > size:
            break
        records.append(record)
        length += extra
    # Fill the gap with a last record whose message is cut to fit exactly.
    room = size - length - (1 if records else 0)
    last = _log_record(rng, len(records))
    last["msg"] = ""
    stub = json.dumps(last, separators=(",", ":"))
    if len(stub) <= room:
        words = " ".join(rng.choice(_WORDS) for _ in range(room // 8 + 1))
        last["msg"] = words[: room - len(stub)]
        records.append(json.dumps(last, separators=(",", ":")))
        text = "[" + ",".join(records) + "]"
    else:  # not enough room for another record: JSON allows trailing whitespace
        text = "[" + ",".join(records) + "]"
        text += " " * (size - len(text))
    data = text.encode("ascii")
    assert len(data) == size, (len(data), size)
    return data


# --- timing ----------------------------------------------------------------------


def _run_batch(fn: Op, n: int) -> int:
    start = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return time.perf_counter_ns() - start


def _calibrate(fn: Op, batch_ns: int) -> int:
    """How many calls of ``fn`` fill one batch of about ``batch_ns`` (also warms up)."""
    n = 1
    while True:
        elapsed = _run_batch(fn, n)
        if elapsed >= batch_ns // 8 or n >= 1 << 24:
            return max(1, int(n * batch_ns / max(elapsed, 1)))
        n *= 4


def time_ops(ops: dict[str, Op], *, repeats: int, batch_ns: int) -> dict[str, float]:
    """Median nanoseconds per call of each op, the ops interleaved across repeats."""
    counts = {name: _calibrate(fn, batch_ns) for name, fn in ops.items()}
    samples: dict[str, list[float]] = {name: [] for name in ops}
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            for name, fn in ops.items():
                samples[name].append(_run_batch(fn, counts[name]) / counts[name])
    finally:
        gc.enable()
    return {name: statistics.median(values) for name, values in samples.items()}


def _noop() -> None:
    return None


# --- the run ---------------------------------------------------------------------


@dataclass(slots=True)
class Variant:
    """One body: its bytes, what the envelope did with it, and the timings."""

    key: str
    label: str
    kind: str
    body: bytes
    header_bytes: int = 0
    payload_bytes: int = 0
    compression: str = ""
    zstd_tried: bool = False
    ns: dict[str, float] = field(default_factory=dict)
    nbytes: dict[str, int] = field(default_factory=dict)

    @property
    def seal_primitives(self) -> tuple[str, ...]:
        used = ("zstd-compress",) if self.zstd_tried else ()
        return (*used, "aead-encrypt", "sha256")

    @property
    def open_primitives(self) -> tuple[str, ...]:
        used = ("zstd-decompress",) if self.compression == "zstd" else ()
        return ("sha256", "aead-decrypt", *used)

    def ratio(self, name: str) -> float:
        if name == "verify_over_sha256":
            return self.ns["verify"] / self.ns["sha256"]
        if name == "seal_over_primitives":
            return self.ns["seal"] / sum(self.ns[p] for p in self.seal_primitives)
        return self.ns["open"] / sum(self.ns[p] for p in self.open_primitives)

    def row(self, op: str) -> dict[str, float | int]:
        ns = self.ns[op]
        return {
            "bytes": self.nbytes[op],
            "us_per_msg": round(ns / 1e3, 4),
            "msgs_per_s": round(1e9 / ns, 1),
            "mb_per_s": round(self.nbytes[op] * 1e3 / ns, 2),
        }


RATIOS = ("verify_over_sha256", "seal_over_primitives", "open_over_primitives")


def _aead(cipher: Cipher, key: bytes) -> AESGCM | ChaCha20Poly1305:
    return AESGCM(key) if cipher is Cipher.AES_256_GCM else ChaCha20Poly1305(key)


def measure(
    variant: Variant, sealer: Sealer, opener: Opener, header: Header, cipher: Cipher, **timing: int
) -> None:
    """Fill in ``variant`` with the envelope's and the primitives' timings."""
    policy = sealer.compressor.policy
    body = EncodedBody(
        data=variant.body,
        content_type=ContentType.JSON if variant.kind == "json-log" else ContentType.RAW,
    )
    envelope = sealer.seal(header, body)
    parsed = read_header(envelope)
    variant.header_bytes = len(envelope.header)
    variant.payload_bytes = len(envelope.payload)
    variant.compression = Compression(parsed.compression).name.lower()
    variant.zstd_tried = policy.preferred is Compression.ZSTD and len(body.data) >= policy.min_size
    assert opener.open(envelope).body.data == variant.body

    # The primitives, over the same bytes the envelope handled.
    header_bytes = bytes(envelope.header)
    plaintext = bytes(body.data)
    zc = zstandard.ZstdCompressor(level=policy.zstd_level)
    zd = zstandard.ZstdDecompressor()
    compressed = zc.compress(plaintext)
    if variant.compression == "zstd":
        plaintext = compressed  # what seal encrypted
    aead = _aead(cipher, os.urandom(32))
    nonce = bytes(12)  # a throwaway key: reusing the nonce here is harmless
    ciphertext = aead.encrypt(nonce, plaintext, header_bytes)
    digest_input = (
        digest_input_prefix(VERSION, header_bytes) + header_bytes + bytes(envelope.payload)
    )
    assert hashlib.sha256(digest_input).digest() == envelope.digest
    sha256 = hashlib.sha256
    raw_body = variant.body

    ops: dict[str, Op] = {
        "noop": _noop,
        "seal": lambda: sealer.seal(header, body),
        "verify": lambda: verify(envelope),
        "open": lambda: opener.open(envelope),
        "sha256": lambda: sha256(digest_input).digest(),
        "aead-encrypt": lambda: aead.encrypt(nonce, plaintext, header_bytes),
        "aead-decrypt": lambda: aead.decrypt(nonce, ciphertext, header_bytes),
        "zstd-compress": lambda: zc.compress(raw_body),
        "zstd-decompress": lambda: zd.decompress(compressed),
    }
    raw = time_ops(ops, **timing)
    overhead = raw.pop("noop")
    variant.ns = {name: max(ns - overhead, 1.0) for name, ns in raw.items()}
    variant.ns["loop_overhead"] = overhead
    size = len(variant.body)
    variant.nbytes = {
        "seal": size,
        "verify": len(digest_input),
        "open": size,
        "sha256": len(digest_input),
        "aead-encrypt": len(plaintext),
        "aead-decrypt": len(ciphertext),
        "zstd-compress": size,
        "zstd-decompress": size,
    }


def _size_label(size: int) -> str:
    return f"{size} B" if size < 1024 else f"{size // 1024} KiB"


def make_variants() -> list[Variant]:
    rng = random.Random(SEED)
    variants = [
        Variant(f"json_{size}", _size_label(size), "json-log", json_log_body(size, rng))
        for size in SIZES
    ]
    variants.append(
        Variant(
            f"random_{RATIO_SIZE}",
            f"{_size_label(RATIO_SIZE)} random",
            "random-bytes",
            rng.randbytes(RATIO_SIZE),
        )
    )
    return variants


def machine_info() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "zstandard": zstandard.__version__,
        "openssl": _openssl_version(),
    }


def _openssl_version() -> str:
    from cryptography.hazmat.backends.openssl.backend import backend

    return str(backend.openssl_version_text())


def to_json(
    variants: list[Variant], cipher: Cipher, *, quick: bool, timing: dict[str, int]
) -> dict[str, Any]:
    main = next(v for v in variants if v.key == f"json_{RATIO_SIZE}")
    incompressible = next(v for v in variants if v.kind == "random-bytes")
    results: dict[str, Any] = {}
    for v in variants:
        results[v.key] = {
            "label": v.label,
            "body_kind": v.kind,
            "body_bytes": len(v.body),
            "header_bytes": v.header_bytes,
            "payload_bytes": v.payload_bytes,
            "compression": v.compression,
            "zstd_tried": v.zstd_tried,
            "seal_primitives": list(v.seal_primitives),
            "open_primitives": list(v.open_primitives),
            "loop_overhead_ns": round(v.ns["loop_overhead"], 1),
            "ops": {op: v.row(op) for op in (*ENVELOPE_OPS, *PRIMITIVE_OPS)},
            **{name: round(v.ratio(name), 3) for name in RATIOS},
        }
    out: dict[str, Any] = {
        "benchmark": "envelope",
        "cipher": CIPHER_NAMES[cipher],
        "body_kind": "json-log",
        "body_kinds": {
            "json-log": "JSON array of varied log-like records from a seeded random.Random",
            "random-bytes": "incompressible random bytes (zstd tried, output discarded)",
        },
        "ratio_size_bytes": RATIO_SIZE,
        **{name: round(main.ratio(name), 3) for name in RATIOS},
        **{f"{name}_incompressible": round(incompressible.ratio(name), 3) for name in RATIOS},
        "targets": {
            name: {
                "max": TARGET_RATIO,
                "value": round(main.ratio(name), 3),
                "met": main.ratio(name) <= TARGET_RATIO,
            }
            for name in RATIOS
        },
        "results": results,
        "machine": machine_info(),
        "method": {
            "quick": quick,
            "repeats": timing["repeats"],
            "batch_ms": timing["batch_ns"] / 1e6,
            "statistic": "median of batch means, loop overhead subtracted",
            "timer": "time.perf_counter_ns",
            "gc": "disabled while timing",
            "seed": SEED,
            "mb": "10^6 bytes of each operation's own input",
        },
    }
    return out


_SHORT = {
    "sha256": "sha",
    "aead-encrypt": "enc",
    "aead-decrypt": "dec",
    "zstd-compress": "zstd-c",
    "zstd-decompress": "zstd-d",
}


def print_tables(console: Console, variants: list[Variant], cipher: Cipher) -> None:
    table = Table(title=f"envelope vs primitives ({CIPHER_NAMES[cipher]}, zstd level 1)")
    for name, justify in (
        ("body", "left"),
        ("op", "left"),
        ("bytes", "right"),
        ("us/msg", "right"),
        ("msgs/s", "right"),
        ("MB/s", "right"),
        ("note", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for v in variants:
        notes = {
            "seal": f"header {v.header_bytes} B, payload {v.payload_bytes} B, {v.compression}",
            "zstd-compress": "" if v.zstd_tried else "not counted: below min_size",
            "zstd-decompress": ""
            if v.compression == "zstd"
            else "not counted: open has nothing to decompress",
        }
        if v.zstd_tried and v.compression != "zstd":
            notes["zstd-compress"] = "counted: seal tried it, output discarded"
        for op in (*ENVELOPE_OPS, *PRIMITIVE_OPS):
            row = v.row(op)
            table.add_row(
                v.label if op == "seal" else "",
                op,
                str(row["bytes"]),
                f"{row['us_per_msg']:.2f}",
                f"{row['msgs_per_s']:,.0f}",
                f"{row['mb_per_s']:,.1f}",
                notes.get(op, ""),
                style="bold" if op in ENVELOPE_OPS else None,
                end_section=op == PRIMITIVE_OPS[-1],
            )
    console.print(table)

    ratios = Table(title="overhead ratios (envelope time / primitives' time; target <= 1.5)")
    for name in ("body", "verify/sha256", "seal/prims", "open/prims", "seal sum", "open sum"):
        ratios.add_column(
            name, justify="left" if name in ("body", "seal sum", "open sum") else "right"
        )
    for v in variants:
        cells = []
        for name in RATIOS:
            value = v.ratio(name)
            ok = value <= TARGET_RATIO
            mark = "" if v.key != f"json_{RATIO_SIZE}" else (" met" if ok else " NOT met")
            color = "green" if ok else "red"
            cells.append(f"[{color}]{value:.2f}x{mark}[/{color}]")
        ratios.add_row(
            v.label,
            *cells,
            " + ".join(_SHORT[p] for p in v.seal_primitives),
            " + ".join(_SHORT[p] for p in v.open_primitives),
        )
    console.print(ratios)
    console.print(
        f"[dim]targets are judged at {_size_label(RATIO_SIZE)} JSON; loop overhead "
        f"(~{variants[0].ns['loop_overhead']:.0f} ns/call) subtracted from every figure[/dim]"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short batches (< 20 s in all)")
    parser.add_argument("--cipher", choices=sorted(CIPHERS), default="aes")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    parser.add_argument(
        "--repeats", type=int, help="timed batches per op, median taken (default 41, quick 21)"
    )
    args = parser.parse_args(argv)
    cipher = CIPHERS[args.cipher]
    # Many short batches rather than a few long ones: on a shared machine a batch
    # that gets preempted is an outlier the median drops, not a skewed average.
    repeats = args.repeats or (21 if args.quick else 41)
    batch_ns = 5_000_000 if args.quick else 15_000_000
    timing = {"repeats": max(1, repeats), "batch_ns": batch_ns}

    identities = {name: NodeIdentity.generate(name) for name in ("node-a", "node-c")}
    rings = {name: KeyRing(ident, random_bytes=os.urandom) for name, ident in identities.items()}
    for ring in rings.values():
        for ident in identities.values():
            ring.add_peer(ident.public)
    policy = CompressionPolicy()
    sealer = Sealer(rings["node-a"], compressor=Compressor(policy), cipher=cipher)
    opener = Opener(rings["node-c"], compressor=Compressor(policy))
    now_ms = int(time.time() * 1000)
    header = Header(
        message_id=random.Random(SEED).randbytes(16),
        source="node-a",
        destination_kind=envelope_pb2.DESTINATION_KIND_NODE,
        destination="node-c",
        recipient="node-c",
        mode=envelope_pb2.DELIVERY_MODE_ACKNOWLEDGED,
        created_ms=now_ms,
        deadline_ms=now_ms + 5_000,
    )

    console = Console(width=None if sys.stdout.isatty() else 140)
    variants = make_variants()
    started = time.perf_counter()
    for variant in variants:
        measure(variant, sealer, opener, header, cipher, **timing)
    print_tables(console, variants, cipher)
    console.print(f"[dim]measured in {time.perf_counter() - started:.1f} s[/dim]")

    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = to_json(variants, cipher, quick=args.quick, timing=timing)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"[dim]wrote {args.json}[/dim]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
