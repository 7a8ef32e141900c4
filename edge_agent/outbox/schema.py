"""Opening the outbox database: connection settings, integrity check and schema migrations."""

from __future__ import annotations

import logging
import sqlite3
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from coldtrace.contract import GENESIS_HASH
from edge_agent.outbox import codec
from edge_agent.outbox.errors import (
    GatewayMismatch,
    OutboxCorrupt,
    OutboxError,
    corrupt_message,
    translate,
)

logger = logging.getLogger(__name__)

Synchronous = Literal["FULL", "NORMAL"]

#: The schema this build writes (``PRAGMA user_version``).
SCHEMA_VERSION = 2
#: How long to wait for a lock held by another process before giving up (seconds).
LOCK_TIMEOUT_S = 2.0
#: The write-ahead log is folded into the database (checkpointed) once it holds an eighth of the
#: disk budget, within these bounds, and cut back to that size afterwards. A drain rewrites the same
#: pages (index pages, the frames of a group) from one transaction to the next, and a longer log
#: copies them to the database once rather than every time: 16 MiB instead of SQLite's 4 MiB drained
#: 7-8 % faster (three paired runs each of ``form_batches`` + ``acknowledge``, 200,000 readings).
WAL_MIN_BYTES = 4 * 1024 * 1024
WAL_MAX_BYTES = 16 * 1024 * 1024
#: Page cache per connection (KiB): index pages of a large backlog stay cached.
CACHE_KIB = 16 * 1024


def wal_bytes(budget_bytes: int) -> int:
    """How long the write-ahead log may grow for an outbox of ``budget_bytes`` on disk."""
    return min(WAL_MAX_BYTES, max(WAL_MIN_BYTES, budget_bytes // 8))


_V1 = (
    # One row: the chain head and lifetime counters.
    """CREATE TABLE meta (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        gateway_id TEXT NOT NULL,
        next_batch_seq INTEGER NOT NULL,
        head_hash TEXT NOT NULL,
        thinned_total INTEGER NOT NULL
    )""",
    # Readings not yet in a frame (version 2 reorganises this table, see _V2). ``id`` is physical
    # placement only; ``okey`` is the order key (see the package docs); ``body`` is the canonical
    # contract encoding and ``crc`` its CRC-32, checked before the reading is sent.
    """CREATE TABLE reading (
        id INTEGER PRIMARY KEY,
        device_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        okey INTEGER NOT NULL,
        priority INTEGER NOT NULL,
        t_device_ms INTEGER NOT NULL,
        crc INTEGER NOT NULL,
        body BLOB NOT NULL
    )""",
    "CREATE UNIQUE INDEX reading_key ON reading (device_id, seq)",
    "CREATE INDEX reading_order ON reading (priority, okey)",
    # Formed frames awaiting the cloud broker's PUBACK, exactly as signed.
    """CREATE TABLE frame (
        batch_seq INTEGER PRIMARY KEY,
        frame BLOB NOT NULL,
        hash TEXT NOT NULL,
        reading_count INTEGER NOT NULL,
        oldest_okey INTEGER
    )""",
    # Gap markers waiting for the next frame.
    """CREATE TABLE marker (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        device_id TEXT NOT NULL,
        seq_from INTEGER NOT NULL,
        seq_to INTEGER NOT NULL,
        count INTEGER NOT NULL,
        t_from_ms INTEGER NOT NULL,
        t_to_ms INTEGER NOT NULL
    )""",
    # Per device, the sequence numbers that have left the reading table (see seen.py).
    """CREATE TABLE seen (
        device_id TEXT NOT NULL,
        seq_from INTEGER NOT NULL,
        seq_to INTEGER NOT NULL,
        PRIMARY KEY (device_id, seq_from)
    ) WITHOUT ROWID""",
    # Stored readings that failed their integrity check, kept for inspection.
    """CREATE TABLE quarantine (
        id INTEGER PRIMARY KEY,
        device_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        priority INTEGER NOT NULL,
        body BLOB NOT NULL,
        reason TEXT NOT NULL
    )""",
)


_V2 = (
    # Readings clustered in send order: a batch is a range scan of this table and leaves it as
    # one range delete, with no second index to read through or keep up to date. (Version 1 kept
    # them by rowid with a separate (priority, okey) index; a backlog drain ran about 45 % faster
    # in SQLite with this layout.) Columns as in version 1, without ``id``; ``crc`` is seeded with
    # the reading's key (codec.stored_crc), which version 1 checked separately.
    """CREATE TABLE reading_v2 (
        priority INTEGER NOT NULL,
        okey INTEGER NOT NULL,
        device_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        t_device_ms INTEGER NOT NULL,
        crc INTEGER NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (priority, okey, device_id, seq)
    ) WITHOUT ROWID""",
    """INSERT INTO reading_v2 (priority, okey, device_id, seq, t_device_ms, crc, body)
        SELECT priority, okey, device_id, seq, t_device_ms, coldtrace_v2_crc(crc, body, device_id, seq), body
        FROM reading ORDER BY priority, okey, device_id, seq""",
    "DROP TABLE reading",
    "ALTER TABLE reading_v2 RENAME TO reading",
    "CREATE UNIQUE INDEX reading_key ON reading (device_id, seq)",
)


def _migrate_to_1(conn: sqlite3.Connection, gateway_id: str) -> None:
    for statement in _V1:
        conn.execute(statement)
    conn.execute(
        "INSERT INTO meta (id, gateway_id, next_batch_seq, head_hash, thinned_total) VALUES (1, ?, 1, ?, 0)",
        (gateway_id, GENESIS_HASH),
    )


def _migrate_to_2(conn: sqlite3.Connection, gateway_id: str) -> None:
    del gateway_id  # every migration gets it; this one does not need it
    conn.create_function("coldtrace_v2_crc", 4, _v2_crc, deterministic=True)
    for statement in _V2:
        conn.execute(statement)


def _v2_crc(crc: int, body: bytes, device_id: str, seq: int) -> int:
    """A version-1 reading's CRC as version 2 stores it; a reading that failed the version-1 checks
    (plain CRC-32, key carried in the body) gets one that fails too, so it is still quarantined."""
    keyed = codec.stored_crc(body, device_id, seq)
    intact = crc == zlib.crc32(body) and codec.carries_key(body, device_id, seq)
    return keyed if intact else keyed ^ 1


#: MIGRATIONS[n] brings a database at user_version n to n + 1.
MIGRATIONS: tuple[Callable[[sqlite3.Connection, str], None], ...] = (_migrate_to_1, _migrate_to_2)


def open_database(
    path: Path, *, gateway_id: str, synchronous: Synchronous, wal_limit: int = WAL_MIN_BYTES
) -> sqlite3.Connection:
    """Open or create the outbox at ``path``, check its integrity and migrate its schema.

    The write-ahead log is checkpointed when it reaches ``wal_limit`` bytes (see :func:`wal_bytes`).

    The connection holds an exclusive lock until it is closed: a second agent on the same outbox
    would fork its hash chain, so it is refused (``OutboxLocked``) instead.
    """
    if synchronous not in ("FULL", "NORMAL"):
        raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', not {synchronous!r}")
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=LOCK_TIMEOUT_S)
    except sqlite3.Error as exc:
        raise translate(exc, path=path, action="opening the database") from exc
    try:
        _configure(conn, path, synchronous, wal_limit)
        _migrate(conn, path, gateway_id)
    except BaseException:
        conn.close()
        raise
    return conn


def _configure(conn: sqlite3.Connection, path: Path, synchronous: Synchronous, wal_limit: int) -> None:
    try:
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise OutboxCorrupt(corrupt_message(path, "; ".join(problems)), path=path)
        if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
            # Only possible before the first table exists: lets thinning give pages back to the disk.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise OutboxError(f"outbox {path}: cannot switch to WAL journaling (got {mode})", path=path)
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute(f"PRAGMA journal_size_limit = {wal_limit}")
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        conn.execute(f"PRAGMA wal_autocheckpoint = {max(1, wal_limit // page_size)}")
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        # Debian builds SQLite with secure_delete on: every sent reading and acknowledged frame was
        # overwritten with zeros and the freed pages written out again (a drain ran 13 % slower).
        # FAST still zeroes deleted content on pages that are written anyway.
        conn.execute("PRAGMA secure_delete = FAST")
    except sqlite3.Error as exc:
        raise translate(exc, path=path, action="opening the database") from exc


def _migrate(conn: sqlite3.Connection, path: Path, gateway_id: str) -> None:
    try:
        # BEGIN IMMEDIATE takes the write lock now, so a second owner is refused at open.
        conn.execute("BEGIN IMMEDIATE")
        try:
            migrated = _upgrade(conn, path, gateway_id)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if migrated:
            # Pages a migration freed back to the file system (executescript steps the pragma to
            # completion; one step frees one page).
            conn.executescript("PRAGMA incremental_vacuum;")
    except sqlite3.Error as exc:
        raise translate(exc, path=path, action="migrating the schema") from exc


def _upgrade(conn: sqlite3.Connection, path: Path, gateway_id: str) -> bool:
    """Bring the schema to ``SCHEMA_VERSION``; whether an existing database was migrated."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise OutboxError(
            f"outbox {path} has schema version {version}, newer than this agent's "
            f"{SCHEMA_VERSION}: upgrade the agent (downgrading would lose data)",
            path=path,
        )
    for step in range(version, SCHEMA_VERSION):
        logger.info("outbox %s: migrating schema %d -> %d", path, step, step + 1)
        MIGRATIONS[step](conn, gateway_id)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    owner = str(conn.execute("SELECT gateway_id FROM meta WHERE id = 1").fetchone()[0])
    if owner != gateway_id:
        raise GatewayMismatch(
            f"outbox {path} belongs to gateway {owner!r}, not {gateway_id!r}: "
            "point this gateway at its own outbox file",
            path=path,
        )
    return 0 < version < SCHEMA_VERSION
