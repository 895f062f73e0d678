"""Outbox throughput of the node store, per durability mode and batch size.

What is measured: the life of an acknowledged message in the source's outbox,
``Store.add_outbox`` when it is accepted and ``Store.remove_outbox`` when its
end-to-end ack arrives, for each durability mode (``full``, ``normal``,
``off``) at batch sizes 1, 16, 64 and 256 (one batch = one transaction, which
is what the runtime does with everything one loop iteration produces). Bodies
are 1 KiB envelopes with random 16-byte message ids, as the core makes them.

Acks lag: each step adds batch ``i`` and removes batch ``i - LAG``, so the
table holds a few batches in flight, like a live outbox, instead of being
empty between calls. Throughput is messages through the outbox (added and
removed) per second of wall time; ``add ms`` is the median time one
``add_outbox`` call blocks the event loop -- what a commit costs, fsync
included under ``full``.

Why: ``full`` pays an fsync per commit; batching is how it pays that once per
batch instead of once per message. The table says what each setting costs at
each batch size on this disk, and so which default is affordable.

Method: the store lives in a fresh temporary directory on the same file system
as the repository (not /tmp, which may be tmpfs and would hide fsync), one
store per (mode, batch). Each cell runs timed rounds of about ``round_s``
seconds after a short warm-up; the median round wins. The machine is noisy
and fsync latency depends on the disk and what else writes to it: read the
figures as +-30%, and compare modes within one run.

Run ``python bench/store.py [--quick] [--json PATH] [--dir DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import _bootstrap  # noqa: F401  (before mesh: see bench/_bootstrap.py)
from rich.console import Console
from rich.table import Table

from nodes.store import Durability, OutboxEntry, Store

REPO = Path(__file__).resolve().parents[1]
MODES: tuple[Durability, ...] = ("full", "normal", "off")
BATCHES = (1, 16, 64, 256)
ENVELOPE_BYTES = 1024
LAG = 4
SEED = 20_240_601


@dataclass
class Cell:
    mode: Durability
    batch: int
    rounds_msgs_per_s: list[float] = field(default_factory=list)
    add_ms: list[float] = field(default_factory=list)
    remove_ms: list[float] = field(default_factory=list)

    @property
    def msgs_per_s(self) -> float:
        return statistics.median(self.rounds_msgs_per_s)

    def row(self) -> dict[str, float | int | str]:
        return {
            "mode": self.mode,
            "batch": self.batch,
            "msgs_per_s": round(self.msgs_per_s),
            "rounds_msgs_per_s": [round(x) for x in self.rounds_msgs_per_s],
            "add_ms_p50": round(statistics.median(self.add_ms), 4),
            "add_ms_p99": round(_quantile(self.add_ms, 0.99), 4),
            "remove_ms_p50": round(statistics.median(self.remove_ms), 4),
            "commits_per_s": round(2 * self.msgs_per_s / self.batch),
        }


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def make_batches(rng: random.Random, batch: int, count: int) -> list[list[OutboxEntry]]:
    """``count`` batches of fresh entries; built before timing so only the store is timed."""
    envelope = rng.randbytes(ENVELOPE_BYTES)
    now_ms = 1_800_000_000_000
    return [
        [
            OutboxEntry(
                message_id=rng.randbytes(16),
                recipient="node-c",
                envelope=envelope,
                created_ms=now_ms + i,
                deadline_ms=now_ms + i + 30_000,
                attempts=0,
            )
            for _ in range(batch)
        ]
        for i in range(count)
    ]


def run_round(store: Store, batches: list[list[OutboxEntry]], cell: Cell | None) -> float:
    """Push ``batches`` through the outbox with acks lagging LAG batches; msgs/s."""
    pc = time.perf_counter
    started = pc()
    for i, batch in enumerate(batches):
        t0 = pc()
        store.add_outbox(batch)
        t1 = pc()
        if i >= LAG:
            store.remove_outbox([e.message_id for e in batches[i - LAG]])
        t2 = pc()
        if cell is not None:
            cell.add_ms.append((t1 - t0) * 1e3)
            if i >= LAG:
                cell.remove_ms.append((t2 - t1) * 1e3)
    store.remove_outbox([e.message_id for b in batches[-LAG:] for e in b])
    elapsed = pc() - started
    return sum(len(b) for b in batches) / elapsed


def measure(directory: Path, mode: Durability, batch: int, *, rounds: int, round_s: float) -> Cell:
    cell = Cell(mode, batch)
    rng = random.Random(f"{SEED}/{mode}/{batch}")
    path = directory / f"{mode}-{batch}.db"
    with Store(path, durability=mode) as store:
        # Calibrate: how many batches fill about round_s, from a warm-up round.
        probe = make_batches(rng, batch, LAG + 8)
        rate = run_round(store, probe, None)
        count = max(LAG + 4, int(rate * round_s / batch))
        for _ in range(rounds):
            batches = make_batches(rng, batch, count)
            cell.rounds_msgs_per_s.append(run_round(store, batches, cell))
        assert store.outbox_size() == 0
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return cell


def print_table(console: Console, cells: list[Cell]) -> None:
    table = Table(
        title=f"outbox add+remove, {ENVELOPE_BYTES} B envelopes, acks lag {LAG} batches "
        "(one transaction per batch)"
    )
    for name in ("mode", "batch", "msgs/s", "commits/s", "add ms p50", "add ms p99", "vs off"):
        table.add_column(name, justify="left" if name == "mode" else "right")
    off = {c.batch: c.msgs_per_s for c in cells if c.mode == "off"}
    for c in cells:
        r = c.row()
        table.add_row(
            c.mode if c.batch == BATCHES[0] else "",
            str(c.batch),
            f"{c.msgs_per_s:,.0f}",
            f"{r['commits_per_s']:,}",
            f"{r['add_ms_p50']:.3f}",
            f"{r['add_ms_p99']:.3f}",
            f"{c.msgs_per_s / off[c.batch]:.2f}x" if c.batch in off else "",
            end_section=c.batch == BATCHES[-1],
        )
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short rounds (< 20 s in all)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    parser.add_argument(
        "--dir",
        type=Path,
        default=REPO,
        help="make the temporary directory here (default: the repository, for its disk)",
    )
    args = parser.parse_args(argv)
    rounds, round_s = (3, 0.25) if args.quick else (7, 1.0)

    console = Console(width=None if sys.stdout.isatty() else 120)
    started = time.perf_counter()
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory(prefix=".bench-store-", dir=args.dir) as tmp:
        directory = Path(tmp)
        same_disk = os.stat(directory).st_dev == os.stat(REPO).st_dev
        # Off first: it is the baseline the other modes are compared with.
        for mode in ("off", "normal", "full"):
            for batch in BATCHES:
                cells.append(measure(directory, mode, batch, rounds=rounds, round_s=round_s))
    cells.sort(key=lambda c: (MODES.index(c.mode), c.batch))
    print_table(console, cells)
    elapsed = time.perf_counter() - started
    console.print(
        f"[dim]temp dir under {args.dir} (same device as the repo: {same_disk}); "
        f"{rounds} rounds of ~{round_s} s per cell, median; measured in {elapsed:.1f} s[/dim]"
    )

    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "benchmark": "store-outbox",
            "envelope_bytes": ENVELOPE_BYTES,
            "ack_lag_batches": LAG,
            "results": [c.row() for c in cells],
            "environment": {
                "python": platform.python_version(),
                "sqlite": sqlite3.sqlite_version,
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "dir": str(args.dir),
                "same_device_as_repo": same_disk,
            },
            "method": {
                "quick": args.quick,
                "rounds": rounds,
                "round_s": round_s,
                "statistic": "median round (msgs/s); add/remove ms over every call",
                "seed": SEED,
            },
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"[dim]wrote {args.json}[/dim]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
