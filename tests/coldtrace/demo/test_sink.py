"""The embedded telemetry sink, written to by the cloud's own TelemetryWriter (influxdb-client)."""

from __future__ import annotations

import asyncio

import pytest

from cloud_ingest.telemetry import TelemetryWriter
from cloud_ingest.telemetry.errors import TelemetryMisconfigured, TelemetryRejected
from coldtrace.demo.sink import TelemetrySink

TOKEN = "sink-token"  # noqa: S105 - a test fixture, not a credential
LINES = (
    "reading,device=reefer-00001,gateway=gw-0,site=wh-a temperature_c=4.5,seq=1i,glitch=0i 1795000000000\n"
    "reading,device=reefer-00001,gateway=gw-0,site=wh-a temperature_c=4.7,seq=2i,glitch=0i 1795000010000\n"
    "ingest_batch,gateway=gw-0 batch_seq=1i,readings=2i,markers=0i,lag_ms=12i 1795000011000\n"
)


def _writer(sink: TelemetrySink, token: str = TOKEN) -> TelemetryWriter:
    return TelemetryWriter(url=sink.url, token=token, org="coldtrace", bucket="coldtrace", timeout_s=5.0)


def test_points_written_by_the_cloud_writer_are_kept_once_per_series_and_time() -> None:
    async def scenario() -> None:
        async with TelemetrySink(token=TOKEN, bucket="coldtrace", org="coldtrace") as sink:
            async with _writer(sink) as writer:
                assert await writer.ping()
                await writer.write(LINES)
                await writer.write(LINES)  # a retried chunk overwrites, as in InfluxDB
            assert sink.stats.points == {"reading": 2, "ingest_batch": 1}
            assert sink.stats.lines == 6
            stored = dict(sink.points("reading"))
            key = (
                "reading",
                (("device", "reefer-00001"), ("gateway", "gw-0"), ("site", "wh-a")),
                1795000010000,
            )
            assert stored[key] == {"temperature_c": 4.7, "seq": 2, "glitch": 0}

    asyncio.run(scenario())


def test_a_wrong_token_is_refused_as_influxdb_does() -> None:
    async def scenario() -> None:
        async with TelemetrySink(token=TOKEN, bucket="coldtrace", org="coldtrace") as sink:
            wrong = "not-the-token"
            async with _writer(sink, token=wrong) as writer:
                with pytest.raises(TelemetryMisconfigured, match="401"):
                    await writer.write(LINES)
            assert sink.stats.points == {}
            assert sink.stats.refused == {401: 1}

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("reading,device=d1 temperature_c=1.0 1\nreading,device=d1 temperature_c=oops 2\n", "line 2"),
        ("reading,device=d1 seq=1i 1\nreading,device=d1 seq=1.5 2\n", "field type conflict"),
        ("reading,device=d1 temperature_c=NaN 1\n", "invalid float"),
    ],
)
def test_invalid_line_protocol_is_refused_and_nothing_of_the_request_kept(body: str, reason: str) -> None:
    async def scenario() -> None:
        async with TelemetrySink(token=TOKEN, bucket="coldtrace", org="coldtrace") as sink:
            async with _writer(sink) as writer:
                with pytest.raises(TelemetryRejected, match=reason):
                    await writer.write(body)
            assert sink.stats.points == {}
            assert sink.stats.refused == {400: 1}

    asyncio.run(scenario())
