"""The durable outbox: readings in, signed hash-chained frames out (see the package docs)."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coldtrace.contract import (
    DEFAULT_LIMITS,
    Limits,
    MarkerKind,
    Reading,
    batch_without_readings,
    frame_hash,
    sign_batch_with_readings,
)
from coldtrace.contract.batch import HEADER_BYTES
from edge_agent.outbox import batching, codec, tables, thinning
from edge_agent.outbox.batching import Row
from edge_agent.outbox.errors import OutboxError, UnknownBatch, translate
from edge_agent.outbox.models import OutboxStats, PendingFrame, Priority
from edge_agent.outbox.schema import Synchronous, open_database, wal_bytes
from edge_agent.outbox.thinning import MarkerRun

logger = logging.getLogger(__name__)


class Outbox:
    """Readings waiting to be sent, formed into signed, hash-chained batches; SQLite in WAL mode.

    Blocking: call it from one worker thread (or ``asyncio.to_thread``); calls are serialised by an
    internal lock, so concurrent callers are safe but never run in parallel.
    """

    def __init__(
        self,
        path: Path,
        *,
        gateway_id: str,
        budget_bytes: int,
        synchronous: Synchronous = "FULL",
        limits: Limits = DEFAULT_LIMITS,
        hard_limit_bytes: int | None = None,
    ) -> None:
        """Open or create the outbox at ``path`` and check its integrity.

        ``budget_bytes`` is what ``enforce_budget`` thins down to. ``hard_limit_bytes`` (optional)
        caps the database file itself: a write that would grow it beyond fails with ``OutboxFull``.
        Raises ``OutboxCorrupt`` for a damaged file, ``OutboxLocked`` if another process owns it,
        ``GatewayMismatch`` if it belongs to another gateway.
        """
        self._path = Path(path)
        self._wal_path = self._path.with_name(self._path.name + "-wal")
        self._gateway_id = gateway_id
        self._synchronous: Synchronous = synchronous
        self._sync_level: Synchronous = synchronous  # what the connection is set to now
        self._budget = budget_bytes
        self._limits = limits
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = open_database(
            self._path, gateway_id=gateway_id, synchronous=synchronous, wal_limit=wal_bytes(budget_bytes)
        )
        try:
            with self._reading("loading the outbox state") as conn:
                self._page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
                if hard_limit_bytes is not None:
                    conn.execute(f"PRAGMA max_page_count = {max(1, hard_limit_bytes // self._page_size)}")
                self._load(conn)
        except BaseException:
            self.close()
            raise
        logger.info(
            "outbox %s open: %d readings waiting, %d frames pending, next batch %d",
            self._path, self._pending, len(self._frames), self._next_seq,
        )  # fmt: skip

    # -- state kept in memory, rebuilt from the database at open ----------------------------------
    def _load(self, conn: sqlite3.Connection) -> None:
        self._next_seq, self._head, self._thinned_total = conn.execute(
            "SELECT next_batch_seq, head_hash, thinned_total FROM meta WHERE id = 1"
        ).fetchone()
        self._pending = int(conn.execute("SELECT COUNT(*) FROM reading").fetchone()[0])
        self._seen = tables.load_seen(conn)
        self._heads = tables.load_heads(conn)
        self._frames = tables.load_frames(conn, self._path)

    # -- plumbing ---------------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise OutboxError(f"outbox {self._path} is closed", path=self._path)
        return self._conn

    @contextlib.contextmanager
    def _reading(self, action: str) -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        try:
            yield conn
        except sqlite3.Error as exc:
            raise translate(exc, path=self._path, action=action) from exc

    @contextlib.contextmanager
    def _writing(self, action: str, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed on success, rolled back on any exception.

        ``durable=False`` commits without waiting for the disk (``synchronous = NORMAL``): in WAL mode
        such a commit is made durable by the next durable one, whose sync covers the log up to it.
        Only for writes whose loss in a power cut is harmless. The level is set before the
        transaction begins, so a failure anywhere leaves the outbox as it was.
        """
        conn = self._connection()
        level = self._synchronous if durable else "NORMAL"
        try:
            if level != self._sync_level:
                conn.execute(f"PRAGMA synchronous = {level}")
                self._sync_level = level
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise translate(exc, path=self._path, action=action) from exc

    # -- ingest -----------------------------------------------------------------------------------
    def append(self, readings: Sequence[tuple[Reading, Priority]]) -> int:
        """Store ``readings`` in one transaction, durable when this returns; the number stored.

        Idempotent per (device_id, seq): a reading already waiting, in a frame, sent or thinned is
        skipped (a re-delivery after a crash, or a device resending). Raises ``OutboxFull`` when the
        disk is full; then nothing of the call was stored.
        """
        if not readings:
            return 0
        encode = codec.encode
        with self._lock:
            heads: tables.Heads = {}  # this call's updates, applied after the commit
            fresh: list[tables.ReadingRow] = []
            late: list[tuple[Reading, Priority]] = []
            seen_of, head_of, crc = self._seen.get, self._heads.get, codec.keyed_crcs()  # hot loop: bind once
            for reading, priority in readings:
                device, seq = reading.device_id, reading.seq
                seen = seen_of(device)
                if seen is not None and seq in seen:
                    continue
                head = heads.get(device) or head_of(device)
                if head is not None and seq <= head[0]:
                    late.append((reading, priority))
                    continue
                # Above everything stored for the device: its order key is its receive time, raised
                # to the device's highest key so keys never decrease along a device's sequence.
                okey = reading.t_gateway_ms if head is None else max(reading.t_gateway_ms, head[1])
                heads[device] = (seq, okey)
                body = encode(reading)
                fresh.append(
                    (device, seq, okey, int(priority), reading.t_device_ms, crc(body, device, seq), body)
                )
            with self._writing("appending readings") as conn:
                conn.executemany(tables.INSERT_READING, fresh)
                stored = len(fresh)
                late.sort(key=lambda item: (item[0].device_id, item[0].seq))
                for reading, priority in late:
                    head = heads.get(reading.device_id) or self._heads[reading.device_id]
                    stored += tables.insert_late(conn, reading, int(priority), head)
            self._heads.update(heads)
            self._pending += stored
            return stored

    # -- uplink -----------------------------------------------------------------------------------
    def form_batch(
        self,
        *,
        signer: Ed25519PrivateKey,
        max_readings: int,
        now_ms: int,
        live_after_ms: int | None = None,
    ) -> PendingFrame | None:
        """Form, sign and store the next batch of the chain; None if nothing is waiting.

        Takes waiting gap markers and up to ``max_readings`` waiting readings (live ones and
        excursions first when ``live_after_ms`` is given, see the package docs), within the frame
        size limit. Frame, chain head and the readings' removal are committed together.
        """
        frames = self.form_batches(
            signer=signer, max_readings=max_readings, now_ms=now_ms, live_after_ms=live_after_ms, count=1
        )
        return frames[0] if frames else None

    def form_batches(
        self,
        *,
        signer: Ed25519PrivateKey,
        max_readings: int,
        now_ms: int,
        live_after_ms: int | None = None,
        count: int,
    ) -> list[PendingFrame]:
        """Up to ``count`` batches, each as :meth:`form_batch` forms it, committed in one transaction.

        The same frames as ``count`` calls of :meth:`form_batch`, byte for byte, for one sync to disk
        instead of ``count``: what a backlog drain is limited by. Stops early when nothing more waits,
        or at a damaged reading (the next call quarantines it first, in a transaction of its own).
        """
        if not 1 <= max_readings <= self._limits.max_readings_per_batch:
            raise ValueError(
                f"max_readings={max_readings} is outside 1..{self._limits.max_readings_per_batch}"
            )
        if count < 1:
            raise ValueError(f"count={count} must be at least 1")
        with self._lock:
            while True:
                markers, rows = self._choose(
                    max_readings, now_ms, live_after_ms, batch_seq=self._next_seq, prev_hash=self._head,
                    waiting=self._pending,
                )  # fmt: skip
                damaged = codec.damaged(rows)
                if not damaged:
                    break
                self._quarantine(damaged)  # then choose again, with their MISSING markers
            if not markers and not rows:
                return []
            formed: list[tuple[PendingFrame, int | None]] = []
            removed: dict[str, list[int]] = {}  # per device, the seqs this call's frames carry
            next_seq, head, taken = self._next_seq, self._head, 0
            with self._writing("forming batches") as conn:
                while True:
                    pending, digest, oldest = self._form_one(
                        conn, signer=signer, markers=markers, rows=rows, now_ms=now_ms, batch_seq=next_seq,
                        prev_hash=head, live_after_ms=live_after_ms, removed=removed,
                    )  # fmt: skip
                    formed.append((pending, oldest))
                    next_seq, head = next_seq + 1, digest
                    taken += len(rows)
                    if len(formed) == count:
                        break
                    markers, rows = self._choose(
                        max_readings, now_ms, live_after_ms, batch_seq=next_seq, prev_hash=head,
                        waiting=self._pending - taken,
                    )  # fmt: skip
                    if (not markers and not rows) or codec.damaged(rows):
                        break
                # Once for all the frames: the chain head, and each device's record of what left.
                conn.execute(
                    "UPDATE meta SET next_batch_seq = ?, head_hash = ? WHERE id = 1", (next_seq, head)
                )
                seen = tables.absorb(conn, self._seen, removed)
            self._seen.update(seen)
            for pending, oldest in formed:
                self._frames[pending.batch_seq] = (pending, oldest)
            self._pending -= taken
            self._next_seq, self._head = next_seq, head
            return [pending for pending, _ in formed]

    def _form_one(
        self, conn: sqlite3.Connection, *, signer: Ed25519PrivateKey, markers: list[tuple[int, MarkerRun]],
        rows: list[Row], now_ms: int, batch_seq: int, prev_hash: str, live_after_ms: int | None,
        removed: dict[str, list[int]],
    ) -> tuple[PendingFrame, str, int | None]:  # fmt: skip
        """Sign the batch of ``markers`` and ``rows`` and write it, inside the caller's transaction.

        Returns the frame, its hash (the next batch's ``prev_hash``) and its oldest order key. The
        rows' seqs are added to ``removed``, per device, for the caller to record in ``seen``; the
        caller also moves the chain head in ``meta``, once for all the frames it forms.
        """
        # The stored bodies are canonical readings, validated when appended and checked by the
        # caller: they go into the signed body as they are, without a decode and re-encode.
        batch = batch_without_readings(
            batch_seq=batch_seq,
            created_ms=now_ms,
            gateway_id=self._gateway_id,
            markers=[m.to_marker() for _, m in markers],
            prev_hash=prev_hash,
        )
        frame = sign_batch_with_readings(batch, [row.body for row in rows], signer, limits=self._limits)
        digest = frame_hash(frame)
        oldest = min((row.okey for row in rows), default=None)
        for row in rows:
            removed.setdefault(row.device_id, []).append(row.seq)
        for span in batching.spans(rows, live_after_ms):
            if (deleted := tables.delete_span(conn, span)) != span.readings:
                # Cannot happen while a batch takes a prefix of each query (batching.select); the
                # transaction is rolled back, so nothing is lost.
                raise OutboxError(
                    f"outbox {self._path}: internal error: batch {batch_seq} would remove {deleted} "
                    f"readings for the {span.readings} it carries; nothing was changed, please report this",
                    path=self._path,
                )
        tables.delete_markers(conn, [marker_id for marker_id, _ in markers])
        conn.execute(
            "INSERT INTO frame (batch_seq, frame, hash, reading_count, oldest_okey) VALUES (?, ?, ?, ?, ?)",
            (batch_seq, frame, digest, len(rows), oldest),
        )
        logger.debug(
            "formed batch %d: %d readings, %d markers, %d bytes",
            batch_seq,
            len(rows),
            len(markers),
            len(frame),
        )
        return PendingFrame(batch_seq, frame, len(rows)), digest, oldest

    def _choose(
        self, max_readings: int, now_ms: int, live_after_ms: int | None, *, batch_seq: int, prev_hash: str,
        waiting: int,
    ) -> tuple[list[tuple[int, MarkerRun]], list[Row]]:  # fmt: skip
        """The waiting markers and readings batch ``batch_seq`` carries (``waiting``: readings left)."""
        overhead = HEADER_BYTES + batching.body_overhead(
            gateway_id=self._gateway_id, batch_seq=batch_seq, created_ms=now_ms, prev_hash=prev_hash
        )
        budget = self._limits.max_batch_bytes - overhead
        with self._reading("choosing the next batch") as conn:
            markers, used = tables.waiting_markers(
                conn, limit=self._limits.max_markers_per_batch, byte_budget=budget
            )
            rows = tables.choose_rows(
                conn, live_after_ms=live_after_ms, max_readings=max_readings, byte_budget=budget - used
            )
        if not rows and not markers and waiting:
            raise OutboxError(
                f"outbox {self._path}: the oldest waiting reading does not fit in a frame of "
                f"{self._limits.max_batch_bytes} bytes; raise max_batch_bytes",
                path=self._path,
            )
        return markers, rows

    def _quarantine(self, damaged: Sequence[tuple[Row, str]]) -> None:
        """Move readings that failed their checks aside, each leaving a MISSING marker behind."""
        for row, reason in damaged:
            logger.error(
                "outbox %s: quarantined device %s seq %d: %s", self._path, row.device_id, row.seq, reason
            )
        removed: dict[str, list[int]] = {}
        for row, _ in damaged:
            removed.setdefault(row.device_id, []).append(row.seq)
        with self._writing("quarantining damaged readings") as conn:
            tables.quarantine(conn, damaged)
            seen = tables.absorb(conn, self._seen, removed)
        self._seen.update(seen)
        self._pending -= len(damaged)

    def pending_frames(self) -> list[PendingFrame]:
        """Formed frames not yet acknowledged, in batch_seq order: resend these byte-identical."""
        with self._lock:
            self._connection()
            return [self._frames[seq][0] for seq in sorted(self._frames)]

    def acknowledge(self, *batch_seqs: int) -> None:
        """The cloud broker PUBACKed ``batch_seqs``: forget their frames (the chain head stays).

        Several at once cost one transaction. Acknowledging a batch twice is harmless; one never
        formed raises ``UnknownBatch`` (and nothing is forgotten).
        """
        with self._lock:
            known = [seq for seq in batch_seqs if seq in self._frames]
            for seq in batch_seqs:
                if seq not in self._frames:
                    self._connection()
                    if not 1 <= seq < self._next_seq:
                        raise UnknownBatch(seq, path=self._path)
                    logger.debug("batch %d acknowledged again", seq)
            if not known:
                return
            # Not waited for: an acknowledgement lost in a power cut only resends the frame, which
            # the cloud recognises as a duplicate; the next batch formed makes it durable.
            with self._writing("acknowledging batches", durable=False) as conn:
                conn.executemany("DELETE FROM frame WHERE batch_seq = ?", [(seq,) for seq in known])
            for seq in known:
                del self._frames[seq]

    # -- disk budget ------------------------------------------------------------------------------
    def enforce_budget(self) -> int:
        """Thin waiting readings until the outbox fits its budget; the number thinned.

        Follows the eviction policy in the package docs. Stops early, over budget, when only
        readings in formed frames are left (those are immutable).
        """
        with self._lock:
            if self._disk_bytes() <= self._budget:
                return 0
            self._reclaim()  # a long write-ahead log or free pages may be all there is to win back
            thinned = 0
            while (size := self._disk_bytes()) > self._budget:
                count = self._thin_round(size - self._budget)
                if count == 0:
                    logger.warning(
                        "outbox %s is %d bytes over budget with nothing left to thin (frames pending: %d)",
                        self._path, size - self._budget, len(self._frames),
                    )  # fmt: skip
                    break
                thinned += count
                self._reclaim()
            if thinned:
                logger.info(
                    "outbox %s: thinned %d readings to fit %d bytes", self._path, thinned, self._budget
                )
            return thinned

    def _thin_round(self, excess: int) -> int:
        """Thin one round of the lowest priority present; the number thinned (0: nothing left)."""
        with self._reading("choosing readings to thin") as conn:
            priority = tables.lowest_priority_waiting(conn)
            if priority is None:
                return 0
            stored = self._pending + sum(f.reading_count for f, _ in self._frames.values())
            target = thinning.round_size(excess, self._disk_bytes() // max(1, stored))
            every_other = priority is not Priority.EXCURSION
            # Halving at most the oldest half of what waits per round: the oldest data is thinned
            # again before newer data is touched, so resolution falls off with age.
            size = min(2 * target, max(2 * thinning.ROUND_MIN, self._pending // 2)) if every_other else target
            window = tables.thinning_window(conn, priority, size)
        victims = thinning.choose_victims(window, target=target, every_other=every_other)
        removed: dict[str, list[int]] = {}
        for v in victims:
            removed.setdefault(v.device_id, []).append(v.seq)
        position = {candidate: i for i, candidate in enumerate(window)}
        with self._writing("thinning readings") as conn:
            tables.delete_readings(conn, [(v.device_id, v.seq) for v in victims])
            for run in thinning.runs_of(victims, MarkerKind.THINNED):
                tables.record_marker(conn, run)
            seen = tables.absorb(conn, self._seen, removed)
            conn.execute("UPDATE meta SET thinned_total = thinned_total + ? WHERE id = 1", (len(victims),))
            tables.pack(conn, priority, window, sorted(position[v] for v in victims), self._path)
        self._seen.update(seen)
        self._pending -= len(victims)
        self._thinned_total += len(victims)
        logger.debug("thinned %d %s readings", len(victims), priority.name)
        return len(victims)

    def _reclaim(self) -> None:
        with self._reading("reclaiming free space") as conn:
            tables.reclaim(conn)

    def _disk_bytes(self) -> int:
        with self._reading("measuring the database") as conn:
            pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        try:
            wal = self._wal_path.stat().st_size
        except FileNotFoundError:
            wal = 0
        return pages * self._page_size + wal

    # -- reporting and lifecycle ------------------------------------------------------------------
    @property
    def waiting(self) -> int:
        """Readings stored and not yet in a formed frame (an in-memory count: free to ask)."""
        return self._pending

    def stats(self) -> OutboxStats:
        """Counts, size on disk and chain head (cheap: index probes and in-memory counters)."""
        with self._lock, self._reading("reading statistics") as conn:
            oldest = [okey for _, okey in self._frames.values() if okey is not None]
            if (waiting := tables.oldest_okey(conn)) is not None:
                oldest.append(waiting)
            return OutboxStats(
                readings=self._pending + sum(f.reading_count for f, _ in self._frames.values()),
                bytes_on_disk=self._disk_bytes(),
                oldest_gateway_ms=min(oldest, default=None),
                frames_pending=len(self._frames),
                thinned_total=self._thinned_total,
                next_batch_seq=self._next_seq,
                head_hash=self._head,
            )

    def close(self) -> None:
        """Close the database (idempotent); SQLite folds the write-ahead log in on close."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error as exc:
                    raise translate(exc, path=self._path, action="closing the database") from exc

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
