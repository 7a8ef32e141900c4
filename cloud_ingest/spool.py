"""Drains the telemetry spool to the time-series server, oldest first, with backoff while it is down.

The spool is a SQL table filled in the ingest transaction, so it is as durable as the readings and
shared by all workers: a worker that dies for good strands nothing. A chunk is *leased* (its
``next_attempt_ms`` pushed past the lease) in a short transaction, written, then deleted; a worker
that dies mid-write leaves the lease to expire and another worker writes the chunk again - harmless,
because a point with the same series and timestamp overwrites itself in InfluxDB (VictoriaMetrics
keeps one copy only when run with ``-dedup.minScrapeInterval=1ms``; without it a rewrite after an
expired lease stores the sample twice - the readings in SQL stay exact).
A chunk the server refuses as malformed (a bug, not an outage) is dead-lettered to ``rejects`` so it
cannot block the rest; its readings stay in SQL.

A worker's own chunks skip the round trip through the table (:class:`Handoff`): its ingest inserts
the row already leased to itself and, once the transaction commits, hands the line protocol to its
drainer in memory. The drainer writes it at once and deletes the row, without reading it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Engine, Row, delete, func, insert, select, update
from sqlalchemy.exc import DBAPIError

from cloud_ingest.db.tables import rejects, telemetry_spool
from cloud_ingest.metrics import CloudMetrics
from cloud_ingest.settings import TelemetrySettings
from cloud_ingest.telemetry import Backoff, TelemetryRejected, TelemetryUnavailable, TelemetryWriter
from coldtrace.clock import wall_ms

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Chunk:
    """Spool rows leased for one write."""

    ids: tuple[int, ...]
    lines: str
    points: int
    handed_at: float | None = None
    """When the ingest handed it over (``time.monotonic``); None for rows leased from the table."""


def _merged(chunks: Sequence[Chunk]) -> Chunk:
    return Chunk(
        ids=tuple(i for c in chunks for i in c.ids),
        lines="\n".join(c.lines for c in chunks if c.lines),
        points=sum(c.points for c in chunks),
    )


class Handoff:
    """Chunks this worker's ingest just committed, passed to its drainer in memory.

    Without it each chunk went through the table after its commit: the drainer's next poll leased the
    row and read its line protocol back (megabytes a group while a backlog drains), up to a poll
    interval after the commit. Now, while :meth:`has_room`, the ingest transaction inserts the row
    leased to this worker for ``lease_ms``, and :meth:`offer` hands the chunk over after the commit;
    the drainer writes it and deletes the row. Should the worker die first, the lease runs out and
    any drainer writes the row from the table, like any other.

    About ``max_chunks`` wait at most (transactions committing at once may each add one); beyond
    that the ingest inserts rows due at once: the table is the queue. A chunk that waited half its
    lease is left to the table, so a lease never runs out under a chunk still in memory. Ingest
    calls come from executor threads; :meth:`take` and :meth:`wait` from the event loop that built
    this.
    """

    def __init__(self, *, max_chunks: int, lease_ms: int) -> None:
        self.lease_ms = lease_ms
        self._max = max_chunks
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._chunks: deque[Chunk] = deque()
        self._ready = asyncio.Event()

    def has_room(self) -> bool:
        """Whether a chunk being stored may be handed over (else it is left due in the table)."""
        with self._lock:
            return len(self._chunks) < self._max

    def offer(self, chunk: Chunk) -> None:
        """Hand over a committed chunk, whose row was inserted leased to this worker."""
        with self._lock:
            self._chunks.append(replace(chunk, handed_at=time.monotonic()))
        # A loop already closed has no drainer left: the row's lease runs out and the table has it.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._ready.set)

    def take(self, max_points: int) -> Chunk | None:
        """The oldest waiting chunks, merged, up to ``max_points`` (at least one); None if none wait."""
        stale = time.monotonic() - self.lease_ms / 2000
        taken: list[Chunk] = []
        with self._lock:
            points = 0
            while self._chunks and (not taken or points + self._chunks[0].points <= max_points):
                chunk = self._chunks.popleft()
                if chunk.handed_at is not None and chunk.handed_at < stale:
                    continue  # its lease may run out while it is written: the table has it
                taken.append(chunk)
                points += chunk.points
            if not self._chunks:
                self._ready.clear()
        return _merged(taken) if taken else None

    def take_all(self) -> list[int]:
        """The ids of every waiting chunk, which are no longer this drainer's to write."""
        with self._lock:
            ids = [i for c in self._chunks for i in c.ids]
            self._chunks.clear()
            self._ready.clear()
        return ids

    async def wait(self, timeout_s: float) -> None:
        """Until a chunk is handed over, or ``timeout_s``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._ready.wait()


class SpoolDrainer:
    """Moves spooled line protocol to the server; see the module docstring."""

    def __init__(
        self, engine: Engine, writer: TelemetryWriter, settings: TelemetrySettings, *,
        metrics: CloudMetrics, clock: Callable[[], int] = wall_ms, handoff: Handoff | None = None,
    ) -> None:  # fmt: skip
        self.engine = engine
        self.writer = writer
        self.settings = settings
        self.metrics = metrics
        self.handoff = handoff
        self._clock = clock
        self.backoff = Backoff(initial_s=settings.retry_initial_s, max_s=settings.retry_max_s)
        self._lease_ms = round(settings.lease_s * 1000)
        self._poll_table_at = 0.0
        """With a hand-off, the table is asked again once it was found empty only after this
        (``time.monotonic``): rows due there are other workers' strays and retries."""
        self.retry_in_s = settings.retry_initial_s
        """Delay before the next attempt after the last failure (the server's Retry-After wins)."""

    def lease(self) -> Chunk | None:
        """Lease the oldest due rows, up to ``chunk_points`` points."""
        now = self._clock()
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(telemetry_spool.c.id, telemetry_spool.c.lines, telemetry_spool.c.points)
                .where(telemetry_spool.c.next_attempt_ms <= now)
                .order_by(telemetry_spool.c.id)
                .limit(max(1, self.settings.chunk_points // 100))
                .with_for_update(skip_locked=True)
            ).all()
            taken: list[Row[Any, Any, Any]] = []
            points = 0
            for row in rows:
                if taken and points + row.points > self.settings.chunk_points:
                    break
                taken.append(row)
                points += row.points
            if not taken:
                return None
            ids = tuple(r.id for r in taken)
            conn.execute(
                update(telemetry_spool)
                .where(telemetry_spool.c.id.in_(ids))
                .values(next_attempt_ms=now + self._lease_ms, attempts=telemetry_spool.c.attempts + 1)
            )
        return Chunk(ids, "\n".join(r.lines for r in taken if r.lines), points)

    def _done(self, chunk: Chunk) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(telemetry_spool).where(telemetry_spool.c.id.in_(chunk.ids)))

    def _retry_later(self, ids: Sequence[int], error: str, delay_s: float) -> None:
        if not ids:
            return
        with self.engine.begin() as conn:
            conn.execute(
                update(telemetry_spool)
                .where(telemetry_spool.c.id.in_(ids))
                .values(next_attempt_ms=self._clock() + round(delay_s * 1000), last_error=error[:2000])
            )

    def _dead_letter(self, chunk: Chunk, error: str) -> None:
        raw = chunk.lines.encode()
        with self.engine.begin() as conn:
            conn.execute(
                insert(rejects).values(
                    received_ms=self._clock(), reason="telemetry_rejected", detail=error[:2000],
                    identity=None, topic=None, transport="tsdb", frame_sha256=hashlib.sha256(raw).hexdigest(),
                    raw=raw, size=len(raw),
                )
            )  # fmt: skip
            conn.execute(delete(telemetry_spool).where(telemetry_spool.c.id.in_(chunk.ids)))

    def depth(self) -> tuple[int, int]:
        """(rows, points) waiting in the spool."""
        with self.engine.connect() as conn:
            rows, points = conn.execute(
                select(func.count(), func.coalesce(func.sum(telemetry_spool.c.points), 0))
            ).one()
        return int(rows), int(points)

    async def _next_chunk(self) -> Chunk | None:
        """Due rows of the table first (oldest first), then what was handed over."""
        chunk = None
        if self.handoff is None or time.monotonic() >= self._poll_table_at:
            chunk = await asyncio.to_thread(self.lease)
            if chunk is None:
                self._poll_table_at = time.monotonic() + self.settings.poll_s
        if chunk is None and self.handoff is not None:
            chunk = self.handoff.take(self.settings.chunk_points)
        return chunk

    async def drain_once(self) -> int:
        """Write one chunk; returns its points (0: nothing due). Raises TelemetryUnavailable."""
        chunk = await self._next_chunk()
        if chunk is None:
            return 0
        started = time.perf_counter()
        try:
            if chunk.lines:
                await self.writer.write(chunk.lines)
        except TelemetryUnavailable as exc:
            self.metrics.telemetry_up.set(0)
            self.retry_in_s = exc.retry_after_s or self.backoff.next_delay()
            # What was handed over waits in the table with this chunk until the server is back.
            waiting = self.handoff.take_all() if self.handoff is not None else []
            await asyncio.to_thread(self._retry_later, [*chunk.ids, *waiting], str(exc), self.retry_in_s)
            raise
        except TelemetryRejected as exc:
            logger.exception("the time-series server refused %d spooled points as malformed", chunk.points)
            await asyncio.to_thread(self._dead_letter, chunk, str(exc))
            return 0
        self.metrics.telemetry_write_seconds.observe(time.perf_counter() - started)
        self.metrics.telemetry_up.set(1)
        self.metrics.telemetry_points.inc(chunk.points)
        self.backoff.reset()
        await asyncio.to_thread(self._done, chunk)
        return chunk.points

    async def run(self) -> None:
        """Drain until cancelled: back to back while there is work; when there is none, wait for a
        hand-over or ``poll_s``. Chunks still waiting in memory at the end go back to the table."""
        try:
            await self._drain()
        finally:
            if self.handoff is not None and (ids := self.handoff.take_all()):
                with contextlib.suppress(DBAPIError):
                    await asyncio.to_thread(self._retry_later, ids, "the worker stopped", 0.0)

    async def _drain(self) -> None:
        poll_s = self.settings.poll_s
        depth_at = 0.0
        while True:
            try:
                written = await self.drain_once()
            except TelemetryUnavailable as exc:
                delay = self.retry_in_s
                logger.warning("time-series server unavailable (%s); spool keeps the points, retry in %.1f s",
                               exc, delay)  # fmt: skip
                await asyncio.sleep(delay)
                continue
            except DBAPIError as exc:
                logger.warning("spool drain cannot reach the database: %s", exc.orig or exc)
                await asyncio.sleep(self.backoff.next_delay())
                continue
            if written:
                continue
            if time.monotonic() >= depth_at:
                depth_at = time.monotonic() + poll_s
                with contextlib.suppress(DBAPIError):
                    rows, points = await asyncio.to_thread(self.depth)
                    self.metrics.spool_rows.set(rows)
                    self.metrics.spool_points.set(points)
            if self.handoff is not None:
                await self.handoff.wait(poll_s)
            else:
                await asyncio.sleep(poll_s)
