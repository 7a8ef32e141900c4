"""The outbox's SQL, one function per query family; writes run inside the caller's transaction.

sqlite3 errors propagate: the caller translates them once, at its boundary.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path

from coldtrace.contract import MarkerKind, Reading, canonical_bytes, frame_hash
from edge_agent.outbox import batching, codec, thinning
from edge_agent.outbox.batching import Row, Span
from edge_agent.outbox.errors import OutboxCorrupt, corrupt_message
from edge_agent.outbox.models import PendingFrame, Priority
from edge_agent.outbox.seen import SeqRanges, cap, gaps_touching, runs, union
from edge_agent.outbox.thinning import Candidate, MarkerRun

logger = logging.getLogger(__name__)

#: A device's sent/thinned record keeps at most this many intervals (oldest gaps are filled first).
MAX_SEEN_INTERVALS = 64
#: Gaps in that record up to this size are checked against stored readings and closed when every
#: number in them is still waiting (those readings are known too, so the record stays one interval).
BRIDGE_MAX = 100_000

#: (device_id, seq, okey, priority, t_device_ms, crc, body)
ReadingRow = tuple[str, int, int, int, int, int, bytes]
#: Per device: the highest stored seq and its order key.
Heads = dict[str, tuple[int, int]]

INSERT_READING = (
    "INSERT INTO reading (device_id, seq, okey, priority, t_device_ms, crc, body)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_SELECT_ROWS = (
    "SELECT okey, device_id, seq, priority, t_device_ms, crc, body FROM reading"
    " WHERE priority = ? AND okey >= ? AND okey < ? ORDER BY okey, device_id, seq LIMIT ?"
)
#: Statements for the queries of the largest plan, each its own text: a cached statement still in
#: use by one cursor is prepared afresh for the next, and a batch's cursors are all open at once.
_SELECT_ROWS_EACH = [f"{_SELECT_ROWS} -- query {i}" for i in range(2 * len(Priority))]
_DELETE_RANGE = (
    "DELETE FROM reading WHERE priority = ? AND (okey, device_id, seq) BETWEEN (?, ?, ?) AND (?, ?, ?)"
)
_SELECT_MARKERS = "SELECT id, kind, device_id, seq_from, seq_to, count, t_from_ms, t_to_ms FROM marker"
_INSERT_MARKER = (
    "INSERT INTO marker (kind, device_id, seq_from, seq_to, count, t_from_ms, t_to_ms)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


# -- loading ------------------------------------------------------------------------------------
def load_seen(conn: sqlite3.Connection) -> dict[str, SeqRanges]:
    """Every device's record of readings that left the table."""
    intervals: dict[str, list[tuple[int, int]]] = {}
    for device_id, lo, hi in conn.execute("SELECT device_id, seq_from, seq_to FROM seen"):
        intervals.setdefault(device_id, []).append((lo, hi))
    return {device: SeqRanges(iv) for device, iv in intervals.items()}


def load_heads(conn: sqlite3.Connection) -> Heads:
    """Each device's highest stored seq and its order key."""
    # A skip scan over the (device_id, seq) index: one probe per device, not one per reading.
    heads: Heads = {}
    row = conn.execute("SELECT device_id FROM reading ORDER BY device_id LIMIT 1").fetchone()
    while row is not None:
        device = row[0]
        seq, okey = conn.execute(
            "SELECT seq, okey FROM reading WHERE device_id = ? ORDER BY seq DESC LIMIT 1", (device,)
        ).fetchone()
        heads[device] = (seq, okey)
        row = conn.execute(
            "SELECT device_id FROM reading WHERE device_id > ? ORDER BY device_id LIMIT 1", (device,)
        ).fetchone()
    return heads


def load_frames(conn: sqlite3.Connection, path: Path) -> dict[int, tuple[PendingFrame, int | None]]:
    """Pending frames with their oldest order key, each checked against its stored hash."""
    frames: dict[int, tuple[PendingFrame, int | None]] = {}
    for batch_seq, frame, digest, count, oldest in conn.execute(
        "SELECT batch_seq, frame, hash, reading_count, oldest_okey FROM frame ORDER BY batch_seq"
    ):
        if frame_hash(frame) != digest:
            detail = f"the stored frame of batch {batch_seq} no longer matches its hash"
            raise OutboxCorrupt(corrupt_message(path, detail), path=path)
        frames[batch_seq] = (PendingFrame(batch_seq, frame, count), oldest)
    return frames


def oldest_okey(conn: sqlite3.Connection) -> int | None:
    """The smallest order key waiting (one index probe per priority)."""
    keys = [
        row[0]
        for p in Priority
        if (row := conn.execute("SELECT MIN(okey) FROM reading WHERE priority = ?", (p,)).fetchone())[0]
        is not None
    ]
    return min(keys, default=None)


# -- readings -----------------------------------------------------------------------------------
def insert_late(conn: sqlite3.Connection, reading: Reading, priority: int, head: tuple[int, int]) -> int:
    """Store a reading at or below its device's highest stored seq; 1 if stored, 0 if already there.

    Its order key is its receive time clamped between the keys of its stored neighbours (``head``
    stands in for a missing upper neighbour), so a device's keys never decrease along its seqs.
    """
    device, seq = reading.device_id, reading.seq
    body = codec.encode(reading)
    below = conn.execute(
        "SELECT seq, okey, body FROM reading WHERE device_id = ? AND seq <= ? ORDER BY seq DESC LIMIT 1",
        (device, seq),
    ).fetchone()
    if below is not None and below[0] == seq:
        # A broker redelivery differs in what the gateway adds (receive time, flags, score); only a
        # difference in what the device said is worth a warning.
        if below[2] != body and _device_said(codec.decode(below[2])) != _device_said(reading):
            logger.warning(
                "device %s seq %d delivered again with different content; kept the first", device, seq
            )
        return 0
    above = conn.execute(
        "SELECT okey FROM reading WHERE device_id = ? AND seq > ? ORDER BY seq LIMIT 1", (device, seq)
    ).fetchone()
    floor = reading.t_gateway_ms if below is None else below[1]
    ceiling = head[1] if above is None else above[0]
    okey = min(max(reading.t_gateway_ms, floor), ceiling)
    crc = codec.stored_crc(body, device, seq)
    conn.execute(INSERT_READING, (device, seq, okey, priority, reading.t_device_ms, crc, body))
    return 1


def choose_rows(
    conn: sqlite3.Connection, *, live_after_ms: int | None, max_readings: int, byte_budget: int
) -> list[Row]:
    """The waiting readings the next batch carries, in send order (see ``batching``)."""
    # Cursors are consumed lazily, so rows past the batch's end are never read.
    sql = iter(_SELECT_ROWS_EACH)
    cursors = [
        [conn.execute(next(sql), (q.priority, q.okey_from, q.okey_below, max_readings)) for q in queries]
        for queries in batching.plan(live_after_ms)
    ]
    try:
        streams = [[map(Row._make, cursor) for cursor in stream] for stream in cursors]
        return batching.select(streams, max_readings=max_readings, byte_budget=byte_budget)
    finally:
        for stream in cursors:
            for cursor in stream:
                cursor.close()


def delete_span(conn: sqlite3.Connection, span: Span) -> int:
    """Remove every waiting reading of ``span`` (one range of the table); the number removed."""
    lo, hi = span.first, span.last
    return conn.execute(
        _DELETE_RANGE, (span.priority, lo.okey, lo.device_id, lo.seq, hi.okey, hi.device_id, hi.seq)
    ).rowcount


def delete_readings(conn: sqlite3.Connection, keys: Sequence[tuple[str, int]]) -> None:
    """Remove readings by (device_id, seq)."""
    conn.executemany("DELETE FROM reading WHERE device_id = ? AND seq = ?", keys)


def quarantine(conn: sqlite3.Connection, damaged: Sequence[tuple[Row, str]]) -> None:
    """Move readings that failed their checks aside, each leaving a MISSING marker behind."""
    conn.executemany(
        "INSERT INTO quarantine (device_id, seq, priority, body, reason) VALUES (?, ?, ?, ?, ?)",
        [(row.device_id, row.seq, row.priority, row.body, reason) for row, reason in damaged],
    )
    delete_readings(conn, [(row.device_id, row.seq) for row, _ in damaged])
    for row, _ in damaged:
        record_marker(
            conn,
            MarkerRun(
                MarkerKind.MISSING, row.device_id, row.seq, row.seq, 1, row.t_device_ms, row.t_device_ms
            ),
        )


# -- markers ------------------------------------------------------------------------------------
def waiting_markers(
    conn: sqlite3.Connection, *, limit: int, byte_budget: int
) -> tuple[list[tuple[int, MarkerRun]], int]:
    """The oldest waiting markers (with their ids) that fit ``byte_budget`` body bytes; bytes used."""
    markers: list[tuple[int, MarkerRun]] = []
    used = 0
    for marker_id, kind, *fields in conn.execute(_SELECT_MARKERS + " ORDER BY id LIMIT ?", (limit,)):
        run = MarkerRun(MarkerKind(kind), *fields)
        cost = len(canonical_bytes(run.to_marker())) + 1  # its encoding plus a separating comma
        if used + cost > byte_budget:
            break
        markers.append((marker_id, run))
        used += cost
    return markers, used


def delete_markers(conn: sqlite3.Connection, ids: Sequence[int]) -> None:
    """Remove markers by id (they are in a frame now)."""
    conn.executemany("DELETE FROM marker WHERE id = ?", [(i,) for i in ids])


def record_marker(conn: sqlite3.Connection, run: MarkerRun) -> None:
    """Store ``run``, merged with the waiting markers of the same device and kind it touches."""
    merged = run
    for marker_id, kind, *fields in conn.execute(
        _SELECT_MARKERS + " WHERE device_id = ? AND kind = ?", (run.device_id, run.kind.value)
    ).fetchall():
        existing = MarkerRun(MarkerKind(kind), *fields)
        if existing.touches(merged):
            merged = existing.merged(merged)
            conn.execute("DELETE FROM marker WHERE id = ?", (marker_id,))
    conn.execute(
        _INSERT_MARKER,
        (merged.kind.value, merged.device_id, merged.seq_from, merged.seq_to, merged.count,
         merged.t_from_ms, merged.t_to_ms),
    )  # fmt: skip


# -- the record of readings that left -----------------------------------------------------------
def absorb(
    conn: sqlite3.Connection, seen: Mapping[str, SeqRanges], removed: Mapping[str, Sequence[int]]
) -> dict[str, SeqRanges]:
    """Record that ``removed`` readings (distinct seqs per device) left the table; the new records.

    Call inside the transaction, after the rows are deleted; swap the result in once it commits.
    """
    out: dict[str, SeqRanges] = {}
    stale: list[tuple[str, int]] = []  # (device_id, seq_from) rows to delete
    fresh: list[tuple[str, int, int]] = []  # rows to write
    for device, seqs in removed.items():
        old = seen.get(device)
        before = old.intervals() if old is not None else []
        lo, hi = min(seqs), max(seqs)
        # Distinct seqs spanning exactly their count are one run (the usual case) without a sort.
        added = [(lo, hi)] if hi - lo + 1 == len(seqs) else runs(sorted(seqs))
        if len(added) == 1 and (not before or (len(before) == 1 and _touch(before[0], added[0]))):
            # The common case (a device's readings leave in order): the record is and stays one
            # interval, with no gap to bridge and nothing to cap, so what the general path below
            # would do reduces to this.
            lo, hi = added[0]
            if before:
                was = before[0]
                lo, hi = min(lo, was[0]), max(hi, was[1])
                if lo != was[0]:
                    stale.append((device, was[0]))
            if not before or (lo, hi) != before[0]:
                fresh.append((device, lo, hi))
            out[device] = SeqRanges.normalised([(lo, hi)])
            continue
        merged = union(before, added)
        bridges = [
            (lo, hi)
            for lo, hi in gaps_touching(merged, added)
            if hi - lo + 1 <= BRIDGE_MAX and _all_waiting(conn, device, lo, hi)
        ]
        after = cap(union(merged, bridges), MAX_SEEN_INTERVALS)
        if after != before:
            starts = {lo for lo, _ in after}
            kept = set(before)
            stale.extend((device, lo) for lo, _ in before if lo not in starts)
            fresh.extend((device, lo, hi) for lo, hi in after if (lo, hi) not in kept)
        out[device] = SeqRanges.normalised(after)
    # One statement each for all devices: rows are keyed by device, so doing every device's deletes
    # before any device's writes leaves the same table as interleaving them device by device.
    if stale:
        conn.executemany("DELETE FROM seen WHERE device_id = ? AND seq_from = ?", stale)
    if fresh:
        conn.executemany("INSERT OR REPLACE INTO seen (device_id, seq_from, seq_to) VALUES (?, ?, ?)", fresh)
    return out


def _touch(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether two intervals overlap or are adjacent (their union is one interval)."""
    return a[0] <= b[1] + 1 and b[0] <= a[1] + 1


def _all_waiting(conn: sqlite3.Connection, device: str, lo: int, hi: int) -> bool:
    """Whether every seq in lo..hi of ``device`` is a stored reading."""
    count = conn.execute(
        "SELECT COUNT(*) FROM reading WHERE device_id = ? AND seq BETWEEN ? AND ?", (device, lo, hi)
    ).fetchone()[0]
    return bool(count == hi - lo + 1)


# -- disk space ---------------------------------------------------------------------------------
def lowest_priority_waiting(conn: sqlite3.Connection) -> Priority | None:
    """The lowest priority that has a waiting reading."""
    for p in Priority:
        if conn.execute("SELECT 1 FROM reading WHERE priority = ? LIMIT 1", (p,)).fetchone():
            return p
    return None


def thinning_window(conn: sqlite3.Connection, priority: Priority, size: int) -> list[Candidate]:
    """The ``size`` oldest waiting readings of ``priority``, in send order."""
    return [
        Candidate._make(row)
        for row in conn.execute(
            "SELECT okey, device_id, seq, t_device_ms FROM reading"
            " WHERE priority = ? ORDER BY okey, device_id, seq LIMIT ?",
            (priority, size),
        )
    ]


def pack(
    conn: sqlite3.Connection, priority: Priority, window: Sequence[Candidate], victims: Sequence[int],
    path: Path,
) -> None:  # fmt: skip
    """Rewrite the thinned regions of ``window`` densely, so whole pages free up.

    ``victims`` are the ascending positions in ``window`` (a range of the table, in send order) of
    the readings just deleted. Thinning every other reading leaves pages half full, which SQLite
    does not give back; deleting a region's survivors and inserting them again (same rows, same
    place in the order) fills fewer pages. Best effort: if the disk is too full for the rewrite,
    the thinning itself still commits.
    """
    conn.execute("SAVEPOINT pack")
    try:
        for first, last, thinned in thinning.regions(victims):
            if thinned < thinning.REGION_MIN_DENSITY * (last - first + 1):
                continue
            lo, hi = window[first], window[last]
            bounds = (priority, lo.okey, lo.device_id, lo.seq, hi.okey, hi.device_id, hi.seq)
            survivors = conn.execute(
                "SELECT device_id, seq, okey, priority, t_device_ms, crc, body FROM reading"
                " WHERE priority = ? AND (okey, device_id, seq) BETWEEN (?, ?, ?) AND (?, ?, ?)",
                bounds,
            ).fetchall()
            conn.execute(_DELETE_RANGE, bounds)
            conn.executemany(INSERT_READING, survivors)
        conn.execute("RELEASE pack")
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF != sqlite3.SQLITE_FULL:
            raise
        logger.warning("outbox %s: no room to pack thinned pages (%s); they are reused later", path, exc)
        conn.execute("ROLLBACK TO pack")
        conn.execute("RELEASE pack")


def reclaim(conn: sqlite3.Connection) -> None:
    """Give free pages back to the file system and fold the write-ahead log into the database."""
    # executescript steps the pragma to completion; execute() would free a single page.
    conn.executescript("PRAGMA incremental_vacuum;")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def _device_said(reading: Reading) -> tuple[object, ...]:
    """The part of a reading that comes from the device itself."""
    return (
        reading.t_device_ms, reading.temperature_c, reading.humidity_pct, reading.shock_g, reading.battery_v,
        reading.lat, reading.lon,
    )  # fmt: skip
