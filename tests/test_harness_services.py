"""The harness's real servers behave as the project relies on: VictoriaMetrics ingests the influxdb-client's
line protocol, InfluxDB 1.6 is a strict line-protocol oracle, PostgreSQL 15 is usable, and a missing
server skips locally but fails in CI."""

from __future__ import annotations

import time
import uuid

import psycopg
import pytest
from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS

from tests.harness.influxdb1 import InfluxDB1
from tests.harness.postgres import Postgres
from tests.harness.services import require_binary, service_unavailable
from tests.harness.victoriametrics import VictoriaMetrics

TEMPERATURE_C = 4.25
HUMIDITY_PCT = 61.5


def _reading(device: str, ts_ms: int) -> Point:
    return (
        Point("cold_reading")
        .tag("device", device)
        .tag("site", "wh-1")
        .field("temperature_c", TEMPERATURE_C)
        .field("humidity_pct", HUMIDITY_PCT)
        .time(ts_ms, WritePrecision.MS)
    )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.mark.services
def test_influxdb_client_point_is_stored_by_victoriametrics(victoriametrics: VictoriaMetrics) -> None:
    # A device name unique to this run: the session server is shared, and an old sample must not
    # satisfy the read-back.
    device = f"dev-001-{uuid.uuid4().hex[:8]}"
    ts_ms = _now_ms()
    # VictoriaMetrics ignores token and org; the client insists on having them.
    with InfluxDBClient(url=victoriametrics.url, token="x", org="x") as client:  # noqa: S106
        client.write_api(write_options=SYNCHRONOUS).write(
            bucket="coldtrace", record=_reading(device, ts_ms), write_precision=WritePrecision.MS
        )

    # VictoriaMetrics names a series <measurement>_<field> and turns tags into labels.
    series = victoriametrics.export(
        f'{{__name__=~"cold_reading_.*",device="{device}"}}', until=lambda s: len(s) == 2
    )

    by_name = {s["metric"]["__name__"]: s for s in series}
    assert set(by_name) == {"cold_reading_temperature_c", "cold_reading_humidity_pct"}, series
    for name, value in (
        ("cold_reading_temperature_c", TEMPERATURE_C),
        ("cold_reading_humidity_pct", HUMIDITY_PCT),
    ):
        assert by_name[name]["metric"]["device"] == device
        assert by_name[name]["metric"]["site"] == "wh-1"
        assert by_name[name]["values"] == [value]
        assert by_name[name]["timestamps"] == [ts_ms]


@pytest.mark.services
def test_same_line_protocol_is_accepted_and_read_back_by_influxdb1(influxdb1: InfluxDB1) -> None:
    device = "dev-001"
    ts_ms = 1_795_000_000_123  # fixed and millisecond-precise: the read-back must not round it
    line = _reading(device, ts_ms).to_line_protocol()
    database = "coldtrace_lp"
    influxdb1.create_database(database)

    response = influxdb1.write(database, line, precision="ms")

    assert response.status_code == 204, response.text
    body = influxdb1.query(
        database,
        f"SELECT temperature_c, humidity_pct FROM cold_reading WHERE device='{device}'",  # noqa: S608 - constant
    )
    series = body["results"][0]["series"]
    assert series == [
        {
            "name": "cold_reading",
            "columns": ["time", "temperature_c", "humidity_pct"],
            "values": [[ts_ms * 1_000_000, TEMPERATURE_C, HUMIDITY_PCT]],  # epoch=ns
        }
    ]


@pytest.mark.services
def test_influxdb1_rejects_a_malformed_line_that_victoriametrics_accepts(
    influxdb1: InfluxDB1, victoriametrics: VictoriaMetrics
) -> None:
    # An encoder that emits an empty field value: a realistic bug in hand-written line protocol.
    line = "cold_reading,device=dev-001,site=wh-1 temperature_c=4.25,humidity_pct= 1795000000123"
    influxdb1.create_database("coldtrace_strict")

    strict = influxdb1.write("coldtrace_strict", line, precision="ms")
    lenient = victoriametrics.write_lines(line, precision="ms")

    assert strict.status_code == 400
    assert "unable to parse" in strict.json()["error"]
    assert "missing field value" in strict.json()["error"]
    # The pitfall: VictoriaMetrics answers 2xx for the same line, so a green write to it proves nothing
    # about the line; only InfluxDB 1.6 tells us the encoder is broken.
    assert lenient.is_success, lenient.text


@pytest.mark.services
def test_postgres_roundtrip_on_version_15(postgres: Postgres) -> None:
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        assert conn.info.server_version // 10_000 == 15
        assert conn.info.dbname == "coldtrace_test"
        table = f"harness_probe_{uuid.uuid4().hex[:8]}"
        conn.execute(f"CREATE TABLE {table} (device text PRIMARY KEY, temperature_c double precision)")
        conn.execute(f"INSERT INTO {table} VALUES (%s, %s)", ("dev-001", TEMPERATURE_C))  # noqa: S608
        rows = conn.execute(f"SELECT device, temperature_c FROM {table}").fetchall()  # noqa: S608
        conn.execute(f"DROP TABLE {table}")
    assert rows == [("dev-001", TEMPERATURE_C)]


# -- the unavailable-service policy (no server needed) --------------------------------------------


def test_unavailable_service_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"apt-get install thing"):
        service_unavailable("Thing", "not installed", "apt-get install thing")


@pytest.mark.parametrize("value", ["true", "TRUE", "True"])
def test_unavailable_service_fails_in_ci(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match=r"Thing is unavailable.*apt-get install thing"):
        service_unavailable("Thing", "not installed", "apt-get install thing")


def test_missing_binary_is_reported_before_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "false")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(pytest.skip.Exception, match=r"victoria-metrics.*install-test-services\.sh"):
        require_binary("VictoriaMetrics", "victoria-metrics", package="victoria-metrics")
