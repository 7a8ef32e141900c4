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
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
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


class SpoolDrainer:
    """Moves spooled line protocol to the server; see the module docstring."""

    def __init__(
        self, engine: Engine, writer: TelemetryWriter, settings: TelemetrySettings, *,
        metrics: CloudMetrics, clock: Callable[[], int] = wall_ms,
    ) -> None:  # fmt: skip
        self.engine = engine
        self.writer = writer
        self.settings = settings
        self.metrics = metrics
        self._clock = clock
        self.backoff = Backoff(initial_s=settings.retry_initial_s, max_s=settings.retry_max_s)
        self._lease_ms = round(settings.lease_s * 1000)
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

    def _retry_later(self, chunk: Chunk, error: str, delay_s: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(telemetry_spool)
                .where(telemetry_spool.c.id.in_(chunk.ids))
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

    async def drain_once(self) -> int:
        """Write one chunk; returns its points (0: nothing due). Raises TelemetryUnavailable."""
        chunk = await asyncio.to_thread(self.lease)
        if chunk is None:
            return 0
        started = time.perf_counter()
        try:
            if chunk.lines:
                await self.writer.write(chunk.lines)
        except TelemetryUnavailable as exc:
            self.metrics.telemetry_up.set(0)
            self.retry_in_s = exc.retry_after_s or self.backoff.next_delay()
            await asyncio.to_thread(self._retry_later, chunk, str(exc), self.retry_in_s)
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

    async def run(self, *, idle_s: float = 0.2) -> None:
        """Drain until cancelled: back to back while there is work, ``idle_s`` naps when empty."""
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
            if not written:
                with contextlib.suppress(DBAPIError):
                    rows, points = await asyncio.to_thread(self.depth)
                    self.metrics.spool_rows.set(rows)
                    self.metrics.spool_points.set(points)
                await asyncio.sleep(idle_s)
