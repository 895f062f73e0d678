"""The node's durable store: outbox and dedupe round trips, bounds, errors, and kill -9."""

from __future__ import annotations

import dataclasses
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mesh.errors import InvalidArgument, Status
from nodes.store import SCHEMA_VERSION, OutboxEntry, Store, StoreError

REPO = Path(__file__).resolve().parents[2]
NOW_MS = 1_800_000_000_000


def entry(n: int, *, created_ms: int | None = None, size: int = 64) -> OutboxEntry:
    """The n-th test message: distinct id, deterministic envelope."""
    return OutboxEntry(
        message_id=n.to_bytes(16, "big"),
        recipient=f"node-{n % 7}",
        envelope=bytes([n % 251]) * size,
        created_ms=NOW_MS + n if created_ms is None else created_ms,
        deadline_ms=NOW_MS + n + 30_000,
        attempts=0,
    )


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


def test_outbox_round_trip(path: Path) -> None:
    entries = [entry(n) for n in range(10)]
    with Store(path) as store:
        store.add_outbox(entries)
        assert store.outbox_size() == 10
        assert store.load_outbox() == entries
        store.remove_outbox([entries[3].message_id, entries[7].message_id])
        assert store.load_outbox() == [e for i, e in enumerate(entries) if i not in (3, 7)]
        assert store.outbox_size() == 8


def test_load_outbox_is_oldest_first(path: Path) -> None:
    entries = [entry(n, created_ms=NOW_MS - n) for n in range(5)]
    with Store(path) as store:
        store.add_outbox(entries)
        assert [e.message_id for e in store.load_outbox()] == [
            e.message_id for e in reversed(entries)
        ]


def test_bump_attempts_counts_each_send(path: Path) -> None:
    with Store(path) as store:
        store.add_outbox([entry(1), entry(2)])
        store.bump_attempts([entry(1).message_id])
        store.bump_attempts([entry(1).message_id, entry(2).message_id, b"unknown"])
        attempts = {e.message_id: e.attempts for e in store.load_outbox()}
    assert attempts == {entry(1).message_id: 2, entry(2).message_id: 1}


def test_remove_unknown_and_empty_batches_are_no_ops(path: Path) -> None:
    with Store(path) as store:
        store.add_outbox([entry(1)])
        store.remove_outbox([b"never-added"])
        store.remove_outbox([entry(1).message_id])
        store.remove_outbox([entry(1).message_id])  # a duplicate ack
        store.add_outbox([])
        store.remove_outbox([])
        store.bump_attempts([])
        store.remember([])
        assert store.outbox_size() == 0


def test_group_commit_is_one_transaction(path: Path) -> None:
    with Store(path) as store:
        store.add_outbox([entry(1)])
        # A batch with one id already present is refused whole: all or nothing.
        with pytest.raises(InvalidArgument, match="nothing was added"):
            store.add_outbox([entry(2), entry(3), entry(1)])
        assert store.load_outbox() == [entry(1)]
        with pytest.raises(InvalidArgument):
            store.add_outbox([entry(4), entry(4)])
        assert store.outbox_size() == 1
        store.add_outbox([entry(n) for n in range(2, 500)])
        assert store.outbox_size() == 499


def test_each_batch_is_one_commit(path: Path) -> None:
    with Store(path, durability="normal") as store:
        conn = store._conn
        assert conn is not None
        statements: list[str] = []
        conn.set_trace_callback(statements.append)
        store.add_outbox([entry(n) for n in range(256)])
        store.bump_attempts([entry(n).message_id for n in range(256)])
        store.remember([(entry(n).message_id, n) for n in range(256)])
        store.remove_outbox([entry(n).message_id for n in range(256)])
        conn.set_trace_callback(None)
    assert [s for s in statements if s in ("BEGIN IMMEDIATE", "COMMIT")] == [
        "BEGIN IMMEDIATE",
        "COMMIT",
    ] * 4


def test_outbox_resumes_after_reopening(path: Path) -> None:
    entries = [entry(n, size=1024) for n in range(300)]
    with Store(path) as store:
        store.add_outbox(entries)
        store.bump_attempts([entries[0].message_id])
        store.remove_outbox([e.message_id for e in entries[100:200]])
    with Store(path) as store:
        resumed = store.load_outbox()
    expected = [dataclasses.replace(entries[0], attempts=1), *entries[1:100], *entries[200:]]
    assert resumed == expected


def test_dedupe_round_trip_and_since(path: Path) -> None:
    ids = [(n.to_bytes(16, "big"), NOW_MS + n) for n in range(10)]
    with Store(path) as store:
        store.remember(ids[5:])
        store.remember(ids[:5])
        assert store.load_dedupe(NOW_MS - 1) == ids
        assert store.load_dedupe(NOW_MS + 4) == ids[5:]  # strictly after since_ms
        # Remembering an id again keeps its first creation time.
        store.remember([(ids[0][0], NOW_MS + 100)])
        assert store.load_dedupe(NOW_MS - 1)[0] == ids[0]
        assert store.dedupe_size() == 10
    with Store(path) as store:
        assert store.load_dedupe(NOW_MS - 1) == ids
        assert store.dedupe_size() == 10


def test_dedupe_capacity_drops_oldest_and_keeps_floor(path: Path) -> None:
    with Store(path, dedupe_capacity=100) as store:
        assert store.dedupe_floor_ms() == -1
        # Newest first, so "oldest" must mean by creation time, not by insertion.
        for start in range(250, 0, -50):
            store.remember([(n.to_bytes(8, "big"), NOW_MS + n) for n in range(start - 50, start)])
            assert store.dedupe_size() <= 100
        kept = store.load_dedupe(0)
        assert kept == [(n.to_bytes(8, "big"), NOW_MS + n) for n in range(150, 250)]
        assert store.dedupe_floor_ms() == NOW_MS + 149
        # One batch larger than the capacity keeps only its newest.
        store.remember([(n.to_bytes(8, "big"), NOW_MS + n) for n in range(1000, 1300)])
        assert [c for _, c in store.load_dedupe(0)] == [NOW_MS + n for n in range(1200, 1300)]
        assert store.dedupe_floor_ms() == NOW_MS + 1199
    # The count and the floor survive a reopen, with a smaller capacity too.
    with Store(path, dedupe_capacity=10) as store:
        assert store.dedupe_size() == 100
        store.remember([(b"new", NOW_MS + 2000)])
        assert store.dedupe_size() == 10
        assert store.dedupe_floor_ms() == NOW_MS + 1290


def test_prune_dedupe(path: Path) -> None:
    with Store(path) as store:
        store.remember([(n.to_bytes(8, "big"), NOW_MS + n) for n in range(100)])
        assert store.prune_dedupe(NOW_MS + 40) == 40  # strictly before
        assert store.prune_dedupe(NOW_MS + 40) == 0
        assert store.dedupe_size() == 60
        assert store.load_dedupe(0)[0] == ((40).to_bytes(8, "big"), NOW_MS + 40)
        assert store.dedupe_floor_ms() == -1  # the horizon, not the floor, covers these


def test_durability_modes_set_synchronous(tmp_path: Path) -> None:
    for durability, level in (("full", 2), ("normal", 1), ("off", 0)):
        with Store(tmp_path / f"{durability}.db", durability=durability) as store:
            conn = store._conn
            assert conn is not None
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == level
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_bad_arguments(path: Path) -> None:
    with pytest.raises(InvalidArgument):
        Store(path, durability="sometimes")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        Store(path, dedupe_capacity=0)


def test_corrupt_file_fails_at_open(path: Path) -> None:
    path.write_bytes(b"this is not a database\n" * 200)
    with pytest.raises(StoreError, match="not an SQLite database") as info:
        Store(path)
    assert str(path) in str(info.value)
    assert info.value.status is Status.INTERNAL


def test_foreign_sqlite_file_fails_at_open(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE accounts (id INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not a meshwork store"):
        Store(path)


def test_newer_schema_version_fails_at_open(path: Path) -> None:
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1} is newer"):
        Store(path)


def test_missing_directory_fails_at_open(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open"):
        Store(tmp_path / "no-such-dir" / "store.db")


def test_second_opener_is_refused_while_locked(path: Path) -> None:
    with Store(path) as store:
        with pytest.raises(StoreError, match="locked by another process"):
            Store(path)
        store.add_outbox([entry(1)])  # the owner is unaffected
    with Store(path) as store:  # released on close
        assert store.outbox_size() == 1


def test_disk_full_rolls_back_and_store_stays_usable(path: Path) -> None:
    with Store(path, durability="normal") as store:
        conn = store._conn
        assert conn is not None
        store.add_outbox([entry(0)])
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + 2}")  # what a full disk looks like
        with pytest.raises(StoreError, match="disk is full") as info:
            store.add_outbox([entry(n, size=4096) for n in range(1, 50)])
        assert str(path) in str(info.value)
        assert store.outbox_size() == 1
        conn.execute("PRAGMA max_page_count = 1000000")
        store.add_outbox([entry(n, size=4096) for n in range(1, 50)])
        assert store.outbox_size() == 50


def test_closed_store_refuses_calls(path: Path) -> None:
    store = Store(path)
    store.close()
    store.close()
    assert store.closed
    with pytest.raises(StoreError, match="closed"):
        store.add_outbox([entry(1)])
    with pytest.raises(StoreError, match="closed"):
        store.load_dedupe(0)


_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from nodes.store import OutboxEntry, Store

    path, durability = Path(sys.argv[1]), sys.argv[2]
    store = Store(path, durability=durability)
    for start in range(0, 2000, 100):
        store.add_outbox([
            OutboxEntry(
                message_id=n.to_bytes(16, "big"), recipient="dst",
                envelope=n.to_bytes(4, "big") * 256, created_ms=n,
                deadline_ms=n + 1, attempts=0,
            )
            for n in range(start, start + 100)
        ])
        print("committed", start + 100, flush=True)
    print("done", flush=True)
    sys.stdin.read()  # stay alive, holding the store open, until killed
    """
)


@pytest.mark.parametrize("durability", ["full", "normal", "off"])
def test_committed_entries_survive_kill_9(path: Path, durability: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), durability],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    reported = 0
    try:
        for line in proc.stdout:
            assert line.startswith("committed"), line
            reported = int(line.split()[1])
            if reported >= 500:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # Reports the test did not read before the kill only mean more commits.
    assert reported >= 500

    with Store(path, durability="full") as store:
        entries = store.load_outbox()
    present = [int.from_bytes(e.message_id, "big") for e in entries]
    # Every reported commit is there, and whole batches only: a prefix of the ids.
    assert present == list(range(len(present)))
    assert len(present) >= reported
    assert len(present) % 100 == 0
    for e in entries:
        n = int.from_bytes(e.message_id, "big")
        assert e.envelope == n.to_bytes(4, "big") * 256
        assert (e.recipient, e.created_ms, e.deadline_ms, e.attempts) == ("dst", n, n + 1, 0)
