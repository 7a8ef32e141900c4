"""An embedded telemetry sink: a real HTTP server speaking the InfluxDB v2 write API the cloud writes to.

The cloud's :class:`~cloud_ingest.telemetry.writer.TelemetryWriter` (influxdb-client over aiohttp)
talks to it exactly as to InfluxDB or VictoriaMetrics: ``POST /api/v2/write?org=…&bucket=…&precision=…``
with ``Authorization: Token …``, and ``GET /ping``. The sink checks what InfluxDB checks and answers
the way InfluxDB does: 401 for a wrong token, 400 naming the first line that is not valid line
protocol or a field whose type conflicts with earlier points, 204 once stored. Points are kept in
memory as InfluxDB keeps them: one per series and timestamp, a second write of the same point
overwriting the first (so a retried chunk does not count twice).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from aiohttp import web

from coldtrace.demo.lineproto import FieldValue, LineError, Point, parse_lines

logger = logging.getLogger(__name__)

_PRECISIONS = frozenset({"ns", "us", "ms", "s"})
SeriesKey = tuple[str, tuple[tuple[str, str], ...], int | None]


@dataclass(slots=True)
class SinkStats:
    """What the sink was sent and kept."""

    requests: int = 0
    refused: Counter[int] = field(default_factory=Counter)
    """Refused requests by HTTP status."""
    lines: int = 0
    """Valid lines received, repeats of a point included."""
    points: Counter[str] = field(default_factory=Counter)
    """Distinct points stored, by measurement."""


class TelemetrySink:
    """``async with TelemetrySink(token=…) as sink:`` serves ``sink.url`` until exit."""

    def __init__(self, *, token: str, bucket: str, org: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.bucket = bucket
        self.org = org
        self.stats = SinkStats()
        self._token = token
        self._store: dict[SeriesKey, dict[str, FieldValue]] = {}
        self._types: dict[tuple[str, str], str] = {}
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The base URL the cloud's telemetry writer is given."""
        return f"http://{self.host}:{self.port}"

    def points(self, measurement: str) -> list[tuple[SeriesKey, dict[str, FieldValue]]]:
        """The stored points of one measurement."""
        return [(key, fields) for key, fields in self._store.items() if key[0] == measurement]

    async def wait_for(self, predicate: Callable[[SinkStats], bool]) -> None:
        """Wait until ``predicate(stats)`` holds; re-checked after every write."""
        while not predicate(self.stats):
            self._changed.clear()
            await self._changed.wait()

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post("/api/v2/write", self._write)
        app.router.add_get("/ping", self._ping)
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            raise
        self.port = int(self._runner.addresses[0][1])
        logger.info("telemetry sink listening on %s", self.url)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- handlers ------------------------------------------------------------------------------------
    def _refuse(self, status: int, code: str, message: str) -> web.Response:
        self.stats.refused[status] += 1
        self._changed.set()
        logger.warning("telemetry sink refused a write (%d): %s", status, message)
        return web.json_response({"code": code, "message": message}, status=status)

    async def _write(self, request: web.Request) -> web.Response:
        self.stats.requests += 1
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Token" or not hmac.compare_digest(token.encode(), self._token.encode()):
            return self._refuse(401, "unauthorized", "unauthorized access")
        bucket, org = request.query.get("bucket"), request.query.get("org")
        if bucket != self.bucket or org != self.org:
            return self._refuse(404, "not found", f'bucket "{bucket}" not found in organization "{org}"')
        precision = request.query.get("precision", "ns")
        if precision not in _PRECISIONS:
            return self._refuse(400, "invalid", f"invalid precision {precision!r}")
        try:
            text = (await request.read()).decode("utf-8")
        except UnicodeDecodeError:
            return self._refuse(400, "invalid", "the body is not UTF-8")
        try:
            points = parse_lines(text)
            self._check_types(points)
        except LineError as exc:
            return self._refuse(400, "invalid", str(exc))
        for point in points:
            key: SeriesKey = (*point.series, point.time)
            self._store.setdefault(key, {}).update(point.fields)
            if len(self._store) > sum(self.stats.points.values()):
                self.stats.points[point.measurement] += 1
        self.stats.lines += len(points)
        self._changed.set()
        return web.Response(status=204)

    def _check_types(self, points: list[Point]) -> None:
        """Refuse a field whose type differs from what earlier points stored (InfluxDB does)."""
        pending: dict[tuple[str, str], str] = {}
        for point in points:
            for name, _ in point.fields:
                key = (point.measurement, name)
                kind = point.field_type(name)
                known = self._types.get(key) or pending.get(key)
                if known is not None and known != kind:
                    raise LineError(
                        f"field type conflict: {point.measurement}.{name} is {known}, this point has {kind}"
                    )
                pending[key] = kind
        self._types.update(pending)

    async def _ping(self, _request: web.Request) -> web.Response:
        return web.Response(status=204, headers={"X-Influxdb-Version": "coldtrace-demo-sink"})

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "pass", "points": sum(self.stats.points.values())})
