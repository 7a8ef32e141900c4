"""What ``coldtrace demo --services`` needs besides Mosquitto: a database of its own on the operator's
PostgreSQL, and a read-back of telemetry from the operator's time-series server.

Telemetry is checked point by point, not by a count: the demo's readings are matched by (device,
sequence, timestamp) against what the cloud stored, so an earlier demo run's points in the same server
are not counted, and a point written twice is (and fails the verdict).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import httpx
import orjson
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError

from cloud_ingest.db.tables import readings
from coldtrace.demo.errors import StackFailed
from coldtrace.demo.settings import ServiceSettings, TelemetryEngine
from coldtrace.demo.sink import TelemetrySink

logger = logging.getLogger(__name__)

#: (device, sequence, timestamp in ms as written to the time-series server).
PointKey = tuple[str, int, int]
QUERY_TIMEOUT_S = 30.0


def stored_point_keys(engine: Engine) -> set[PointKey]:
    """The key of every reading the cloud stored, with the timestamp its telemetry point carries.

    The point's time is the device's, or the gateway's when the device clock was unset
    (:func:`cloud_ingest.telemetry.lineproto.reading_lines`).
    """
    r = readings.c
    query = select(r.device_id, r.seq, r.t_device_ms, r.t_gateway_ms, r.clock)
    with engine.connect() as conn:
        return {
            (device, seq, t_gateway if clock == "unset" else t_device)
            for device, seq, t_device, t_gateway, clock in conn.execute(query)
        }


def matching(samples: Iterable[PointKey], keys: set[PointKey]) -> int:
    """How many of ``samples`` are points of ``keys`` (a point written twice counts twice)."""
    return sum(n for key, n in Counter(samples).items() if key in keys)


class TelemetryStore(Protocol):
    """Where the cloud's telemetry went, read back for the summary."""

    @property
    def description(self) -> str:
        """One line for the start-up steps and the summary."""
        ...

    @property
    def refused(self) -> int:
        """Writes the server refused (only the embedded sink can tell)."""
        ...

    async def points(self, keys: set[PointKey]) -> int:
        """The ``reading`` points the server holds of ``keys``."""
        ...


@dataclass(frozen=True, slots=True)
class SinkStore:
    """The embedded sink: it counts what it accepted (the demo is its only writer)."""

    sink: TelemetrySink

    @property
    def description(self) -> str:
        """The sink's write endpoint."""
        return f"telemetry sink (InfluxDB v2 write API): {self.sink.url}/api/v2/write"

    @property
    def refused(self) -> int:
        """Writes refused by the sink's strict line-protocol check."""
        return sum(self.sink.stats.refused.values())

    async def points(self, keys: set[PointKey]) -> int:  # noqa: ARG002 - the sink holds only this run
        """Every ``reading`` point the sink accepted."""
        return self.sink.stats.points["reading"]


class HttpStore:
    """A time-series server read back over HTTP: VictoriaMetrics' export API or InfluxQL."""

    def __init__(self, settings: ServiceSettings) -> None:
        """``settings.telemetry_url`` must be set."""
        if settings.telemetry_url is None:
            raise ValueError("no telemetry_url")
        self.engine = settings.telemetry_engine
        self.url = settings.telemetry_url.rstrip("/")
        self.bucket = settings.telemetry_bucket
        token = settings.telemetry_token.get_secret_value()
        headers = {"Authorization": f"Token {token}"} if token else {}
        self._http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=QUERY_TIMEOUT_S)

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._http.aclose()

    @property
    def description(self) -> str:
        """The server and how it is read back."""
        return f"{self.engine.value} at {self.url} (InfluxDB v2 write API, bucket {self.bucket})"

    @property
    def refused(self) -> int:
        """Unknown here: the cloud's spool retries refused writes and its metrics count them."""
        return 0

    async def check(self) -> None:
        """StackFailed, saying what to do, when the server does not answer its health check."""
        path = "/health" if self.engine is TelemetryEngine.VICTORIAMETRICS else "/ping"
        try:
            response = await self._http.get(path)
        except httpx.HTTPError as exc:
            raise StackFailed(
                f"the time-series server at {self.url} does not answer ({exc}): start it, or fix "
                "COLDTRACE_DEMO_SERVICES__TELEMETRY_URL"
            ) from exc
        if response.status_code >= 300:
            raise StackFailed(f"{self.url}{path} answered {response.status_code}: is it {self.engine.value}?")

    async def points(self, keys: set[PointKey]) -> int:
        """The ``reading`` points of ``keys`` the server returns (0 when there are no keys)."""
        if not keys:
            return 0
        devices = sorted({k[0] for k in keys})
        first = min(k[2] for k in keys)
        last = max(k[2] for k in keys)
        if self.engine is TelemetryEngine.VICTORIAMETRICS:
            samples = await self._export(devices, first, last)
        else:
            samples = await self._influxql(devices, first, last)
        return matching(samples, keys)

    async def _export(self, devices: list[str], first_ms: int, last_ms: int) -> list[PointKey]:
        # Series reading_seq: the sample value is the device's sequence number.
        # A PromQL string literal doubles each regex backslash.
        regex = "|".join(_regex_quote(d) for d in devices).replace("\\", "\\\\")
        selector = f'{{__name__="reading_seq",device=~"{regex}"}}'
        params = {"match[]": selector, "start": f"{first_ms / 1000:.3f}", "end": f"{last_ms / 1000 + 1:.3f}"}
        with contextlib.suppress(httpx.HTTPError):  # a flush only makes fresh samples visible sooner
            await self._http.get("/internal/force_flush")
        response = await self._http.get("/api/v1/export", params=params)
        response.raise_for_status()
        out: list[PointKey] = []
        for line in response.content.splitlines():
            if not line.strip():
                continue
            series = orjson.loads(line)
            device = series["metric"]["device"]
            pairs = zip(series["values"], series["timestamps"], strict=True)
            out += [(device, int(v), int(t)) for v, t in pairs]
        return out

    async def _influxql(self, devices: list[str], first_ms: int, last_ms: int) -> list[PointKey]:
        # Numbers and quoted ids only (InfluxQL over /query takes no bind parameters for a regex).
        regex = "|".join(_regex_quote(d) for d in devices)
        query = (
            f'SELECT "seq" FROM "reading" WHERE time >= {first_ms}ms AND time <= {last_ms}ms '  # noqa: S608
            f'AND "device" =~ /^({regex})$/ GROUP BY "device"'
        )
        params = {"db": self.bucket, "q": query, "epoch": "ms", "chunked": "true", "chunk_size": "10000"}
        response = await self._http.get("/query", params=params)
        response.raise_for_status()
        out: list[PointKey] = []
        for chunk in response.content.splitlines():  # chunked answers are one JSON object per line
            if not chunk.strip():
                continue
            for result in orjson.loads(chunk).get("results", []):
                if "error" in result:
                    raise StackFailed(f"InfluxDB refused the read-back query: {result['error']}")
                for series in result.get("series", []):
                    device = series["tags"]["device"]
                    out += [(device, int(seq), int(t)) for t, seq in series["values"] if seq is not None]
        return out


def _regex_quote(value: str) -> str:
    """``value`` as a literal inside a regular expression (contract ids are letters, digits, ``._-``)."""
    return "".join(f"\\{c}" if not (c.isalnum() or c in "-_:") else c for c in value)


@contextlib.asynccontextmanager
async def run_database(server_url: str, *, keep: Callable[[], bool]) -> AsyncIterator[str]:
    """A new database ``coldtrace_demo_<hex>`` on the PostgreSQL of ``server_url``; yields its URL.

    Dropped at exit unless ``keep()`` says otherwise (a failed run or a kept work directory).
    """
    server = make_url(server_url)
    name = f"coldtrace_demo_{secrets.token_hex(4)}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    try:
        await asyncio.to_thread(_execute, admin, f'CREATE DATABASE "{name}"')
    except SQLAlchemyError as exc:
        admin.dispose()
        raise StackFailed(
            f"cannot create a database on {_shown(server)} ({_first_line(exc)}): start PostgreSQL, fix "
            "COLDTRACE_DEMO_SERVICES__DATABASE_URL, or grant its role CREATEDB"
        ) from exc
    logger.info("created database %s on %s", name, _shown(server))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        try:
            if keep():
                logger.info("kept database %s on %s", name, _shown(server))
            else:
                await asyncio.to_thread(_execute, admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            admin.dispose()


def shown_url(url: str) -> str:
    """A database URL fit for logs and the console: the password masked."""
    return _shown(make_url(url))


def _shown(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def _execute(engine: Engine, statement: str) -> None:
    with engine.connect() as conn:
        conn.execute(text(statement))


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
