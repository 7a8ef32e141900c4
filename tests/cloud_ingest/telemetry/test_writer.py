"""TelemetryWriter against real servers (VictoriaMetrics, InfluxDB 1.6, a stopped or silent port) and,
for the answers only InfluxDB 2/3 give (400 with a message, 413, 422, 429, 503), a minimal endpoint
that answers the way InfluxDB 2's API reference documents."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from aiohttp import web

from cloud_ingest.telemetry import (
    TelemetryMisconfigured,
    TelemetryRejected,
    TelemetryUnavailable,
    TelemetryWriter,
    batch_line,
    marker_lines,
    reading_lines,
)
from coldtrace.contract import ClockQuality, Marker, MarkerKind, Reading, SourceFormat
from tests.harness.influxdb1 import InfluxDB1
from tests.harness.ports import LOOPBACK, free_port
from tests.harness.services import require_binary
from tests.harness.victoriametrics import VictoriaMetrics

TOKEN = "test-token"  # noqa: S105 - not a secret: VictoriaMetrics ignores it, the fake endpoint records it


def _writer(url: str, *, timeout_s: float = 5.0) -> TelemetryWriter:
    return TelemetryWriter(url=url, token=TOKEN, org="coldtrace", bucket="telemetry", timeout_s=timeout_s)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _reading(device: str, seq: int, t_ms: int, **overrides: Any) -> Reading:
    values: dict[str, Any] = {
        "bound": True,
        "clock": ClockQuality.OK,
        "device_id": device,
        "humidity_pct": 55.5,
        "lot_ids": ("lot-1", "lot-2"),
        "seq": seq,
        "shipment_id": "shp-1",
        "site_id": "wh-1",
        "source_format": SourceFormat.NATIVE,
        "t_device_ms": t_ms,
        "t_gateway_ms": t_ms + 40,
        "temperature_c": 4.0 + seq / 8,
    }
    return Reading(**{**values, **overrides})


def _unique(prefix: str) -> str:
    # The session servers are shared: a name of its own keeps this test's read-back unambiguous.
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@contextlib.contextmanager
def _private_victoriametrics(
    server_type: type[VictoriaMetrics] = VictoriaMetrics, **kwargs: Any
) -> Iterator[Any]:
    """A VictoriaMetrics of this test's own, for tests that stop it or configure it differently."""
    binary = require_binary("VictoriaMetrics", "victoria-metrics", package="victoria-metrics")
    server = server_type(binary, **kwargs)
    try:
        server.start()
        yield server
    finally:
        server.close()


# -- VictoriaMetrics: the happy path ----------------------------------------------------------------


@pytest.mark.services
def test_readings_markers_and_batch_lines_are_stored_and_read_back(victoriametrics: VictoriaMetrics) -> None:
    device = _unique("dev")
    gateway = _unique("gw")
    t0 = _now_ms() - 60_000
    readings = [_reading(device, seq, t0 + seq * 1000) for seq in range(5)]
    gap = Marker(
        count=3,
        device_id=device,
        kind=MarkerKind.THINNED,
        seq_from=10,
        seq_to=12,
        t_from_ms=t0,
        t_to_ms=t0 + 9,
    )
    text = "\n".join(
        [
            reading_lines(readings, gateway_id=gateway, profile_of=lambda _: "pharma-2-8"),
            marker_lines([gap], gateway_id=gateway, site_id="wh-1"),
            batch_line(
                gateway_id=gateway,
                site_id="wh-1",
                batch_seq=4,
                readings=5,
                markers=1,
                lag_ms=70,
                received_ms=t0,
            ),
        ]
    )

    async def scenario() -> bool:
        async with _writer(victoriametrics.url) as writer:
            await writer.write(text)
            return await writer.ping()

    assert asyncio.run(scenario()) is True

    temperature = victoriametrics.export(f'reading_temperature_c{{device="{device}"}}')
    assert len(temperature) == 1, temperature
    (series,) = temperature
    assert series["metric"] == {
        "__name__": "reading_temperature_c",
        "clock": "ok",
        "device": device,
        "gateway": gateway,
        "lots": "lot-1,lot-2",
        "profile": "pharma-2-8",
        "shipment": "shp-1",
        "site": "wh-1",
    }
    assert series["values"] == [r.temperature_c for r in readings]
    assert series["timestamps"] == [r.t_device_ms for r in readings]
    (seq,) = victoriametrics.export(f'reading_seq{{device="{device}"}}')
    assert seq["values"] == [0, 1, 2, 3, 4]
    (count,) = victoriametrics.export(f'gap_count{{device="{device}"}}')
    assert (count["metric"]["kind"], count["values"], count["timestamps"]) == ("thinned", [3], [t0])
    (lag,) = victoriametrics.export(f'ingest_batch_lag_ms{{gateway="{gateway}"}}')
    assert (lag["metric"]["site"], lag["values"]) == ("wh-1", [70])


# -- unavailable: nothing listening, a stopped server, a silent one ---------------------------------


def test_a_closed_port_is_unavailable() -> None:
    url = f"http://{LOOPBACK}:{free_port()}"

    async def scenario() -> tuple[TelemetryUnavailable, bool]:
        async with _writer(url) as writer:
            with pytest.raises(TelemetryUnavailable) as caught:
                await writer.write("m v=1 1")
            return caught.value, await writer.ping()

    error, pinged = asyncio.run(scenario())

    assert not isinstance(error, TelemetryMisconfigured)
    assert error.url == url
    assert error.status is None
    assert "cannot write to" in str(error)
    assert pinged is False


@pytest.mark.services
def test_a_stopped_server_is_unavailable_and_the_same_writer_recovers_when_it_returns() -> None:
    device = _unique("dev")
    t0 = _now_ms() - 10_000
    with _private_victoriametrics() as server:

        async def scenario() -> TelemetryUnavailable:
            async with _writer(server.url) as writer:
                await writer.write(reading_lines([_reading(device, 1, t0)], gateway_id="gw-1"))
                await asyncio.to_thread(server.stop)
                with pytest.raises(TelemetryUnavailable) as caught:
                    await writer.write(reading_lines([_reading(device, 2, t0 + 1)], gateway_id="gw-1"))
                await asyncio.to_thread(server.restart)
                await writer.write(reading_lines([_reading(device, 3, t0 + 2)], gateway_id="gw-1"))
                return caught.value

        error = asyncio.run(scenario())

        assert "cannot write to" in str(error)
        (seq,) = server.export(f'reading_seq{{device="{device}"}}', until=lambda s: len(s[0]["values"]) == 2)
        assert seq["values"] == [1, 3]


def test_a_server_that_never_answers_times_out_as_unavailable() -> None:
    # A listening socket nobody accepts from: the kernel completes the TCP handshake, then silence.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind((LOOPBACK, 0))
        silent.listen(8)
        url = f"http://{LOOPBACK}:{silent.getsockname()[1]}"

        async def scenario() -> TelemetryUnavailable:
            async with _writer(url, timeout_s=0.3) as writer:
                with pytest.raises(TelemetryUnavailable) as caught:
                    await writer.write("m v=1 1")
                return caught.value

        started = time.monotonic()
        error = asyncio.run(scenario())

    assert time.monotonic() - started < 5.0
    assert "did not answer a write within 0.3 s" in str(error)


# -- misconfigured: the wrong server, a refused token -----------------------------------------------


@pytest.mark.services
def test_influxdb_1_6_has_no_v2_write_api_which_is_a_misconfiguration(influxdb1: InfluxDB1) -> None:
    async def scenario() -> tuple[TelemetryMisconfigured, bool]:
        async with _writer(influxdb1.url) as writer:
            with pytest.raises(TelemetryMisconfigured) as caught:
                await writer.write("m v=1 1")
            return caught.value, await writer.ping()

    error, pinged = asyncio.run(scenario())

    # Kept and retried by a drain that only knows "unavailable" vs "rejected": the data is fine.
    assert isinstance(error, TelemetryUnavailable)
    assert error.status == 404
    assert "this is InfluxDB 1.6" in str(error)
    assert "1.8" in str(error)
    assert pinged is True  # /ping exists on 1.x: a successful ping does not prove writes will work


class _VictoriaMetricsWithBasicAuth(VictoriaMetrics):
    """VictoriaMetrics that requires HTTP basic auth, so a token is refused with 401."""

    def __init__(self, binary: Any) -> None:
        super().__init__(binary, extra_args=["-httpAuth.username=ops", "-httpAuth.password=s3cret"])

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", auth=("ops", "s3cret"), timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False


@pytest.mark.services
def test_a_refused_token_is_a_misconfiguration() -> None:
    with _private_victoriametrics(_VictoriaMetricsWithBasicAuth) as server:

        async def scenario() -> TelemetryMisconfigured:
            async with _writer(server.url) as writer:
                with pytest.raises(TelemetryMisconfigured) as caught:
                    await writer.write("m v=1 1")
                return caught.value

        error = asyncio.run(scenario())

    assert error.status == 401
    assert "check the token" in str(error)


# -- answers only InfluxDB 2/3 give: a minimal endpoint -----------------------------------------------


@dataclass(frozen=True)
class Received:
    """One request the endpoint saw."""

    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes


@contextlib.asynccontextmanager
async def influxdb2_like(
    status: int, *, body: str | None = None, headers: Mapping[str, str] | None = None
) -> AsyncIterator[tuple[str, list[Received]]]:
    """An HTTP endpoint at ``/api/v2/write`` that records requests and answers ``status``.

    InfluxDB 2's API reference: 204 on success; 400 ``{"code": "invalid", "message": ...}`` naming the
    bad line; 401; 404 for an unknown bucket; 413; 422 outside retention; 429/503 with Retry-After.
    """
    received: list[Received] = []

    async def handle(request: web.Request) -> web.Response:
        received.append(
            Received(request.path, dict(request.query), dict(request.headers), await request.read())
        )
        return web.Response(status=status, text=body, headers=headers, content_type="application/json")

    app = web.Application()
    app.router.add_post("/api/v2/write", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, LOOPBACK, 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://{LOOPBACK}:{port}", received
    finally:
        await runner.cleanup()


async def _write_to(
    status: int, *, body: str | None = None, headers: Mapping[str, str] | None = None, lines: str = "m v=1 1"
) -> tuple[Exception | None, list[Received]]:
    async with influxdb2_like(status, body=body, headers=headers) as (url, received), _writer(url) as writer:
        try:
            await writer.write(lines)
        except (TelemetryUnavailable, TelemetryRejected) as exc:
            return exc, received
        return None, received


def test_the_request_is_an_influxdb_v2_write_with_millisecond_precision() -> None:
    lines = reading_lines([_reading("dev-1", 1, 1_795_000_000_000)], gateway_id="gw-1")

    error, received = asyncio.run(_write_to(204, lines=lines))

    assert error is None
    (request,) = received
    assert request.path == "/api/v2/write"
    assert request.query == {"org": "coldtrace", "bucket": "telemetry", "precision": "ms"}
    assert request.headers["Authorization"] == f"Token {TOKEN}"
    assert request.headers["Content-Type"].startswith("text/plain")
    assert request.body == lines.encode()


def test_bad_line_protocol_is_rejected_with_the_servers_message() -> None:
    message = "unable to parse 'reading,device=d temperature_c=': missing field value"
    body = f'{{"code": "invalid", "message": "{message}"}}'

    error, _ = asyncio.run(_write_to(400, body=body))

    assert isinstance(error, TelemetryRejected)
    assert error.status == 400
    assert error.server_message == message
    assert message in str(error)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (413, '{"code": "request too large", "message": "unable to read data: points batch is too large"}'),
        (422, '{"code": "unprocessable entity", "message": "failure writing points to database: dropped=1"}'),
    ],
)
def test_other_client_errors_are_rejections(status: int, body: str) -> None:
    error, _ = asyncio.run(_write_to(status, body=body))

    assert isinstance(error, TelemetryRejected)
    assert error.status == status
    assert error.server_message.startswith(("unable to read data", "failure writing points"))


@pytest.mark.parametrize(
    ("status", "body", "server_says"),
    [
        (
            404,
            '{"code": "not found", "message": "bucket \\"telemetry\\" not found"}',
            'bucket "telemetry" not found',
        ),
        (
            403,
            '{"code": "forbidden", "message": "insufficient permissions for write"}',
            "insufficient permissions",
        ),
    ],
)
def test_unknown_bucket_and_forbidden_token_are_misconfigurations(
    status: int, body: str, server_says: str
) -> None:
    error, _ = asyncio.run(_write_to(status, body=body))

    assert isinstance(error, TelemetryMisconfigured)
    assert error.status == status
    assert server_says in str(error)


@pytest.mark.parametrize(
    ("status", "headers", "retry_after_s"),
    [
        (429, {"Retry-After": "7"}, 7.0),
        (503, {"Retry-After": "2"}, 2.0),
        (500, None, None),
        (408, None, None),
    ],
)
def test_overload_and_server_errors_are_unavailable(
    status: int, headers: dict[str, str] | None, retry_after_s: float | None
) -> None:
    error, _ = asyncio.run(_write_to(status, body='{"code": "x", "message": "busy"}', headers=headers))

    assert isinstance(error, TelemetryUnavailable)
    assert not isinstance(error, TelemetryMisconfigured)
    assert (error.status, error.retry_after_s) == (status, retry_after_s)
    assert "busy" in str(error)


def test_retry_after_may_be_an_http_date() -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)

    error, _ = asyncio.run(_write_to(503, headers={"Retry-After": format_datetime(when, usegmt=True)}))

    assert isinstance(error, TelemetryUnavailable)
    assert error.retry_after_s is not None
    assert 25.0 <= error.retry_after_s <= 31.0


# -- lifecycle ----------------------------------------------------------------------------------------


def test_empty_text_sends_nothing() -> None:
    _, received = asyncio.run(_write_to(204, lines="\n"))

    assert received == []


def test_a_closed_writer_refuses_to_write() -> None:
    async def scenario() -> None:
        writer = _writer(f"http://{LOOPBACK}:{free_port()}")
        async with writer:
            pass
        await writer.close()  # a second close is harmless
        with pytest.raises(RuntimeError, match="closed"):
            await writer.write("m v=1 1")

    asyncio.run(scenario())


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        TelemetryWriter(url="http://x", token=TOKEN, org="o", bucket="b", timeout_s=0)
