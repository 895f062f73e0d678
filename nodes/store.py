"""The durable store of a node: the outbox and the persisted dedupe window.

Acknowledged delivery promises that a message the node accepted survives a
crash of the node. So the source keeps every acknowledged message in an
*outbox* until its end-to-end ack arrives, and resumes retrying from it after a
restart; the destination keeps the ids it has delivered (the dedupe window) so
that a retry which arrives after *its* restart still reaches the application
once. Both live in one SQLite file per node, ``<state_dir>/store.db``, in WAL
mode (stdlib :mod:`sqlite3`; the core never imports it, see ARCHITECTURE.md).

Durability is a setting, because its price is an fsync per commit:

* ``"full"``   -- ``synchronous=FULL``: every commit is fsynced before it
  returns, so an accepted message survives power loss and OS crashes (given a
  disk that honours flushes).
* ``"normal"`` -- ``synchronous=NORMAL``: a commit has reached the OS (the WAL
  file) when it returns, so it survives the process dying, ``kill -9``
  included; fsync happens only at checkpoints, so a power loss or kernel crash
  can lose the most recent commits (never corrupt the file).
* ``"off"``    -- ``synchronous=OFF``: no fsync at all. Still survives a process
  crash (the data is in the OS page cache), but a power loss can lose commits
  and may corrupt the file.

Calls block the caller while SQLite works (microseconds without fsync, one
fsync -- typically 0.1-10 ms -- with ``"full"``). The runtime calls the store
from one thread, the asyncio loop, and batches: everything one loop iteration
wants persisted goes into one ``add_outbox``/``remove_outbox``/``remember`` call,
which is one transaction and so one fsync (group commit). That is why every
write method takes a sequence. The connection keeps sqlite3's default
``check_same_thread=True``, so a call from another thread fails loudly.

One process owns a store: the connection holds an exclusive lock on the file
for as long as it is open (``locking_mode=EXCLUSIVE``), so a second node
configured with the same state directory fails at open instead of sharing an
outbox and a dedupe window behind each other's back. The lock is an OS file
lock, released when the process dies, ``kill -9`` included.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Self

from mesh.errors import InvalidArgument, LocalError, Status

Durability = Literal["full", "normal", "off"]

SCHEMA_VERSION: Final = 1
"""``PRAGMA user_version`` of the schema this module writes."""

APPLICATION_ID: Final = 0x4D534857
"""``PRAGMA application_id`` ("MSHW"): marks an SQLite file as a meshwork store."""

_SYNCHRONOUS: Final[dict[str, str]] = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}

_SCHEMA_V1: Final = (
    # The outbox is an ordinary rowid table with a unique index on the id, not
    # WITHOUT ROWID: its rows carry a whole envelope (~1 KiB), and a B-tree
    # keyed by random ids that holds rows that large splits and moves them on
    # every insert. bench/store.py measured the rowid layout 2-4x faster at
    # batches of 16-256 (and equal at 1); SQLite's own guidance agrees
    # (WITHOUT ROWID suits rows under ~1/20 of a page).
    """
    CREATE TABLE outbox (
        message_id  BLOB NOT NULL UNIQUE,
        recipient   TEXT NOT NULL,
        envelope    BLOB NOT NULL,
        created_ms  INTEGER NOT NULL,
        deadline_ms INTEGER NOT NULL,
        attempts    INTEGER NOT NULL
    )
    """,
    # Dedupe rows are small (id, time): keyed by the id itself (WITHOUT ROWID),
    # no second copy of the key in a separate index.
    """
    CREATE TABLE dedupe (
        message_id BLOB PRIMARY KEY,
        created_ms INTEGER NOT NULL
    ) WITHOUT ROWID
    """,
    # Eviction, pruning and loading all go oldest first by creation time.
    "CREATE INDEX dedupe_by_created ON dedupe (created_ms)",
    # Small facts about the store, e.g. the dedupe floor (see dedupe_floor_ms).
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
)

# What an SQLite error most likely means for an operator, by its error code name.
_HINTS: Final[dict[str, str]] = {
    "SQLITE_NOTADB": "not an SQLite database, or its header is corrupt",
    "SQLITE_CORRUPT": "the database file is corrupt",
    "SQLITE_FULL": "the disk is full",
    "SQLITE_BUSY": "locked by another process (is another node using this state directory?)",
    "SQLITE_LOCKED": "locked by another connection",
    "SQLITE_READONLY": "the file or its directory is read-only",
    "SQLITE_CANTOPEN": "cannot open the file (does its directory exist and is it writable?)",
    "SQLITE_IOERR": "an I/O error from the disk or file system",
    "SQLITE_PERM": "permission denied",
}


class StoreError(LocalError):
    """The node's store failed: disk full, corrupt or foreign file, locked, closed.

    Always names the file. It is a local error with status INTERNAL: the node's
    own storage let it down, not the caller's input nor a peer's.
    """

    status = Status.INTERNAL


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxEntry:
    """One acknowledged message kept at its source until its end-to-end ack."""

    message_id: bytes
    """The envelope's message id; unique within the outbox."""
    recipient: str
    """Node id the message is sealed to, so a resumed retry can be routed."""
    envelope: bytes
    """The sealed envelope as sent: retries resend it unchanged, never re-seal."""
    created_ms: int
    """Creation time (ms since the epoch); the outbox is resumed oldest first."""
    deadline_ms: int
    """When to give up retrying (ms since the epoch)."""
    attempts: int
    """Sends so far; drives the retry backoff after a restart."""


class Store:
    """A node's outbox and dedupe window in one SQLite file (WAL mode).

    Every write method is one transaction, all or nothing. Raises
    :class:`StoreError` for any SQLite failure, naming the file.
    """

    def __init__(
        self,
        path: Path,
        *,
        durability: Durability = "full",
        dedupe_capacity: int = 100_000,
    ) -> None:
        """Open (or create) the store at ``path`` and take its lock.

        Args:
            path: the database file, normally ``<state_dir>/store.db``; its
                directory must exist.
            durability: what an acknowledged commit survives; see the module
                docstring. ``"full"`` is the default because an accepted
                message must not be lost to a power cut.
            dedupe_capacity: most message ids the dedupe table keeps; the
                oldest (by creation time) are dropped beyond it.

        Raises:
            InvalidArgument: an unknown durability or a capacity below 1.
            StoreError: the file cannot be opened, is not an SQLite database or
                not a meshwork store, is corrupt, is locked by another process,
                or was written by a newer schema version.
        """
        if durability not in _SYNCHRONOUS:
            raise InvalidArgument(f"unknown store durability {durability!r}")
        if dedupe_capacity < 1:
            raise InvalidArgument("dedupe capacity must be at least 1")
        self.path = path
        self.durability: Durability = durability
        self.dedupe_capacity = dedupe_capacity
        self._conn: sqlite3.Connection | None = None
        self._dedupe_count = 0
        with self._errors("open"):
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a
            # transaction is exactly one method call. timeout=0: a store held
            # by another process is an error now, not a hang.
            conn = sqlite3.connect(path, isolation_level=None, timeout=0)
        self._conn = conn
        try:
            with self._errors("open"):
                self._configure(conn)
                self._migrate(conn)
                self._dedupe_count = conn.execute("SELECT count(*) FROM dedupe").fetchone()[0]
        except BaseException:
            self._conn = None
            conn.close()
            raise

    # --- outbox -------------------------------------------------------------

    def add_outbox(self, entries: Sequence[OutboxEntry]) -> None:
        """Persist ``entries`` in one transaction (one fsync under ``"full"``).

        Raises:
            InvalidArgument: a message id is already in the outbox or repeated
                in ``entries``; nothing was added.
            StoreError: the write failed; nothing was added.
        """
        if not entries:
            return
        rows = [
            (e.message_id, e.recipient, e.envelope, e.created_ms, e.deadline_ms, e.attempts)
            for e in entries
        ]
        try:
            with self._transaction("add to the outbox") as conn:
                conn.executemany("INSERT INTO outbox VALUES (?, ?, ?, ?, ?, ?)", rows)
        except StoreError as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError):
                raise InvalidArgument(
                    f"{self.path}: a message id in this batch of {len(rows)} is already in "
                    "the outbox or repeated in the batch; nothing was added"
                ) from exc.__cause__
            raise

    def remove_outbox(self, message_ids: Sequence[bytes]) -> None:
        """Drop acknowledged (or abandoned) messages, in one transaction.

        Ids not in the outbox are ignored: an ack may arrive twice.
        """
        if not message_ids:
            return
        with self._transaction("remove from the outbox") as conn:
            conn.executemany("DELETE FROM outbox WHERE message_id = ?", _params(message_ids))

    def bump_attempts(self, message_ids: Sequence[bytes]) -> None:
        """Count one more send of each message, in one transaction; unknown ids are ignored."""
        if not message_ids:
            return
        with self._transaction("count attempts in the outbox") as conn:
            conn.executemany(
                "UPDATE outbox SET attempts = attempts + 1 WHERE message_id = ?",
                _params(message_ids),
            )

    def load_outbox(self) -> list[OutboxEntry]:
        """Every message still awaiting its ack, oldest first: what to resume after a restart."""
        with self._errors("read the outbox"):
            rows = self._open().execute(
                "SELECT message_id, recipient, envelope, created_ms, deadline_ms, attempts"
                " FROM outbox ORDER BY created_ms, message_id"
            )
            return [
                OutboxEntry(
                    message_id=m,
                    recipient=r,
                    envelope=e,
                    created_ms=c,
                    deadline_ms=d,
                    attempts=a,
                )
                for m, r, e, c, d, a in rows
            ]

    def outbox_size(self) -> int:
        """Number of messages in the outbox (a full count: for metrics, not per message)."""
        with self._errors("count the outbox"):
            count: int = self._open().execute("SELECT count(*) FROM outbox").fetchone()[0]
            return count

    # --- dedupe window --------------------------------------------------------

    def remember(self, ids: Sequence[tuple[bytes, int]]) -> None:
        """Persist delivered ``(message_id, created_ms)`` pairs, in one transaction.

        An id already remembered keeps its first creation time. Beyond
        ``dedupe_capacity`` rows the oldest by creation time are dropped in the
        same transaction, and the newest creation time so dropped becomes the
        floor (:meth:`dedupe_floor_ms`), as :class:`mesh.dedupe.DedupeWindow`
        does in memory: an evicted id must never look new again.
        """
        if not ids:
            return
        with self._transaction("remember message ids") as conn:
            added = conn.executemany(
                "INSERT OR IGNORE INTO dedupe VALUES (?, ?)", [(m, c) for m, c in ids]
            ).rowcount
            count = self._dedupe_count + added
            excess = count - self.dedupe_capacity
            if excess > 0:
                # Lowest (created_ms, message_id) first: the same order as
                # load_dedupe, so eviction is deterministic under ties.
                victims = conn.execute(
                    "SELECT message_id, created_ms FROM dedupe"
                    " ORDER BY created_ms, message_id LIMIT ?",
                    (excess,),
                ).fetchall()
                conn.executemany(
                    "DELETE FROM dedupe WHERE message_id = ?", [(m,) for m, _ in victims]
                )
                conn.execute(
                    "INSERT INTO meta VALUES ('dedupe_floor_ms', ?) ON CONFLICT (key)"
                    " DO UPDATE SET value = max(value, excluded.value)",
                    (victims[-1][1],),
                )
                count -= len(victims)
        # Only after the commit: a rolled-back transaction changed nothing.
        self._dedupe_count = count

    def load_dedupe(self, since_ms: int) -> list[tuple[bytes, int]]:
        """Remembered ``(message_id, created_ms)`` created after ``since_ms``, oldest first."""
        with self._errors("read the dedupe window"):
            rows = self._open().execute(
                "SELECT message_id, created_ms FROM dedupe WHERE created_ms > ?"
                " ORDER BY created_ms, message_id",
                (since_ms,),
            )
            return [(m, c) for m, c in rows]

    def prune_dedupe(self, before_ms: int) -> int:
        """Forget ids created before ``before_ms`` (out of the horizon); returns how many.

        This does not raise the floor: messages that old are refused by the
        window's horizon anyway, whatever the store remembers.
        """
        with self._transaction("prune the dedupe window") as conn:
            removed = conn.execute("DELETE FROM dedupe WHERE created_ms < ?", (before_ms,)).rowcount
        self._dedupe_count -= removed
        return removed

    def dedupe_floor_ms(self) -> int:
        """Newest creation time ever evicted by the capacity bound (-1: none).

        A window rebuilt from :meth:`load_dedupe` alone would accept a replay of
        an evicted id as new; the restored window must refuse everything
        created at or before this floor.
        """
        with self._errors("read the dedupe floor"):
            row = (
                self._open()
                .execute("SELECT value FROM meta WHERE key = 'dedupe_floor_ms'")
                .fetchone()
            )
            return -1 if row is None else int(row[0])

    def dedupe_size(self) -> int:
        """Number of ids in the dedupe table (kept in memory; free to call)."""
        return self._dedupe_count

    # --- lifecycle -------------------------------------------------------------

    def close(self) -> None:
        """Checkpoint, release the lock and close; calling it again does nothing."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with self._errors("close"):
                conn.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._conn is None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else self.durability
        return f"<Store {self.path} ({state})>"

    # --- internals ---------------------------------------------------------------

    def _configure(self, conn: sqlite3.Connection) -> None:
        # Exclusive locking must come before WAL: then SQLite keeps the WAL
        # index in process memory (no -shm file) and never drops the lock.
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"{self.path}: cannot switch to WAL mode (got {mode!r})")
        conn.execute(f"PRAGMA synchronous = {_SYNCHRONOUS[self.durability]}")
        # Reading the header and taking the write lock now makes a foreign,
        # corrupt or busy file fail at open, not at the first message.
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("COMMIT")

    def _migrate(self, conn: sqlite3.Connection) -> None:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if app_id not in (0, APPLICATION_ID):
            raise StoreError(
                f"{self.path}: an SQLite database of another application "
                f"(application_id {app_id:#x}), not a meshwork store"
            )
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: store schema version {version} is newer than this meshwork "
                f"supports ({SCHEMA_VERSION}); upgrade meshwork or use another state directory"
            )
        if version == SCHEMA_VERSION:
            return
        tables = conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
        if version != 0 or tables:
            raise StoreError(
                f"{self.path}: an SQLite database that is not a meshwork store "
                f"(schema version {version}, {tables} schema objects)"
            )
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA_V1:
                conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"{self.path}: the store is closed")
        return self._conn

    @contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed on success, rolled back on any error."""
        conn = self._open()
        with self._errors(what):
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                # A failed COMMIT (disk full) may already have rolled back.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn SQLite's errors into :class:`StoreError` naming the file and the cause."""
        try:
            yield
        except sqlite3.Error as exc:
            name: str | None = getattr(exc, "sqlite_errorname", None)
            # Extended codes (SQLITE_IOERR_WRITE) share the hint of their primary code.
            hint = _HINTS.get("_".join(name.split("_")[:2])) if name else None
            detail = f"{exc} ({name})" if name else str(exc)
            if hint:
                detail = f"{hint}: {detail}"
            raise StoreError(f"{self.path}: cannot {what}: {detail}") from exc


def _params(message_ids: Sequence[bytes]) -> list[tuple[bytes]]:
    return [(m,) for m in message_ids]


__all__ = ["SCHEMA_VERSION", "Durability", "OutboxEntry", "Store", "StoreError"]
