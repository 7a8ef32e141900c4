"""``coldtrace demo --services``: the same run on Mosquitto, PostgreSQL and VictoriaMetrics, its read-back
of telemetry, its database of its own, its Mosquitto and its refusals when a service is missing."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from certs.pki import Pki, Role
from cloud_ingest.db.tables import readings
from cloud_ingest.telemetry.lineproto import reading_lines
from coldtrace.demo.broker import Acl, cloud_services
from coldtrace.demo.errors import StackFailed
from coldtrace.demo.mosquitto import BrokerTls, MosquittoBroker, render_acl
from coldtrace.demo.services import HttpStore, run_database
from coldtrace.demo.settings import ServiceSettings, TelemetryEngine
from coldtrace.exitcodes import ExitCode
from coldtrace.mqtt import PublishRefused
from tests.cloud_ingest.builders import reading
from tests.coldtrace.demo.conftest import client, issued
from tests.harness.influxdb1 import InfluxDB1
from tests.harness.postgres import Postgres
from tests.harness.services import require_binary
from tests.harness.victoriametrics import VictoriaMetrics

TIMEOUT_S = 20.0
ENV_KEYS = ("COLDTRACE_DEMO_SERVICES__DATABASE_URL", "COLDTRACE_DEMO_SERVICES__TELEMETRY_URL",
            "COLDTRACE_DEMO_SERVICES__MOSQUITTO")  # fmt: skip


@pytest.fixture(scope="module")
def mosquitto_binary() -> Path:
    """The installed Mosquitto (fails in CI when missing)."""
    return require_binary("Mosquitto", "mosquitto", package="mosquitto", extra_dirs=[Path("/usr/sbin")])


def _env(**services: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS} | {"COLUMNS": "200"}
    return env | {f"COLDTRACE_DEMO_SERVICES__{k.upper()}": v for k, v in services.items()}


def _demo(
    workdir: Path, env: dict[str, str], *extra: str, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "coldtrace", "demo", "--services", "--exit", "--port", "0",
               "--workdir", str(workdir), *extra]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, env=env)


def _demo_brokers() -> list[str]:
    """Command lines of Mosquitto processes a demo started (their config lives in a demo directory)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        line = b" ".join(argv).decode(errors="replace")
        if "mosquitto" in argv[0].decode(errors="replace") and "demo" in line:
            found.append(line)
    return found


@pytest.fixture
def server_url(postgres: Postgres) -> Iterator[str]:
    """The test PostgreSQL as an operator would name it; demo databases left behind are dropped after."""
    url = make_url(postgres.dsn).set(drivername="postgresql+psycopg", database="postgres")
    yield url.render_as_string(hide_password=False)
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        names = conn.execute(text("SELECT datname FROM pg_database WHERE datname LIKE 'coldtrace_demo_%'"))
        for (name,) in list(names):
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    engine.dispose()


@pytest.mark.timeout(300)
def test_the_demo_runs_the_same_on_mosquitto_postgresql_and_victoriametrics(
    tmp_path: Path, server_url: str, victoriametrics: VictoriaMetrics, mosquitto_binary: Path
) -> None:
    workdir = tmp_path / "demo"
    result = _demo(workdir, _env(database_url=server_url, telemetry_url=victoriametrics.url,
                                 mosquitto=str(mosquitto_binary)))  # fmt: skip
    assert result.returncode == ExitCode.OK, result.stdout[-4000:] + result.stderr
    summary = orjson.loads((workdir / "summary.json").read_bytes())
    assert summary["ok"] is True
    assert [v["ok"] for v in summary["verdicts"]] == [True] * 6
    assert summary["samples_sent"] == summary["readings_stored"] == summary["telemetry_points"] > 20_000
    assert summary["elapsed_s"] < 120
    assert result.stdout.count("Mosquitto 2.") == 3  # the cloud's broker and both gateways'
    assert f"victoriametrics at {victoriametrics.url}" in result.stdout
    assert not _demo_brokers()  # stopped with the demo

    # The run's database is on the server (kept with --workdir): every reading, stored once.
    name = re.search(r"coldtrace_demo_[0-9a-f]{8}", result.stdout)
    assert name is not None, result.stdout
    engine = create_engine(make_url(server_url).set(database=name.group(0)))
    try:
        with engine.connect() as conn:
            keys = {(d, s, t) for d, s, t in conn.execute(select(readings.c.device_id, readings.c.seq,
                                                                 readings.c.t_device_ms))}  # fmt: skip
            assert conn.execute(select(func.count()).select_from(readings)).scalar_one() == len(keys)
    finally:
        engine.dispose()
    assert len(keys) == summary["readings_stored"]
    # ...and every one is a point in VictoriaMetrics, read here without the demo's code.
    devices = "|".join(sorted({k[0] for k in keys}))
    exported = victoriametrics.export(f'{{__name__="reading_seq",device=~"{devices}"}}', timeout=30.0)
    samples = [(x["metric"]["device"], int(v), t) for x in exported
               for v, t in zip(x["values"], x["timestamps"], strict=True)]  # fmt: skip
    assert sum(1 for s in samples if s in keys) == len(keys)
    assert "PRIVATE KEY" not in result.stdout + result.stderr + (workdir / "demo.log").read_text()


def test_services_that_are_not_configured_are_named(tmp_path: Path) -> None:
    result = _demo(tmp_path / "demo", _env(), timeout=120)
    assert result.returncode == ExitCode.USAGE
    assert "COLDTRACE_DEMO_SERVICES__DATABASE_URL and COLDTRACE_DEMO_SERVICES__TELEMETRY_URL" in result.stderr
    assert not (tmp_path / "demo").exists()  # refused before anything was made


def test_a_database_that_is_not_postgresql_is_refused_before_anything_starts(tmp_path: Path) -> None:
    result = _demo(tmp_path / "demo", _env(database_url="sqlite:///x.db", telemetry_url="http://127.0.0.1:9"))
    assert result.returncode == ExitCode.USAGE
    assert "services.database_url (COLDTRACE_DEMO_SERVICES__DATABASE_URL)" in result.stderr
    assert "must be a PostgreSQL URL" in result.stderr
    assert not (tmp_path / "demo").exists()


def test_the_same_settings_come_from_a_toml_file(tmp_path: Path) -> None:
    config = tmp_path / "demo.toml"
    config.write_text('[services]\ndatabase_url = "mysql://x@127.0.0.1/x"\n', encoding="utf-8")
    result = _demo(tmp_path / "demo", _env(), "--config", str(config))
    assert result.returncode == ExitCode.USAGE
    assert "must be a PostgreSQL URL" in result.stderr


def test_a_time_series_server_that_does_not_answer_stops_the_demo_with_what_to_do(
    tmp_path: Path, server_url: str
) -> None:
    result = _demo(tmp_path / "demo", _env(database_url=server_url, telemetry_url="http://127.0.0.1:9"))
    assert result.returncode == ExitCode.FAILURE
    assert "the time-series server at http://127.0.0.1:9 does not answer" in result.stderr
    assert "COLDTRACE_DEMO_SERVICES__TELEMETRY_URL" in result.stderr


def test_a_missing_mosquitto_is_named_with_how_to_install_it(
    tmp_path: Path, server_url: str, victoriametrics: VictoriaMetrics
) -> None:
    missing = str(tmp_path / "no" / "mosquitto")
    env = _env(database_url=server_url, telemetry_url=victoriametrics.url, mosquitto=missing)
    result = _demo(tmp_path / "demo", env)
    assert result.returncode == ExitCode.FAILURE
    assert f"{missing} is not an executable file" in result.stderr


def test_each_run_gets_a_database_of_its_own_dropped_unless_kept(server_url: str) -> None:
    engine = create_engine(server_url)

    def exists(url: str) -> bool:
        with engine.connect() as conn:
            query = text("SELECT count(*) FROM pg_database WHERE datname = :n")
            return bool(conn.execute(query, {"n": make_url(url).database}).scalar_one())

    async def run(keep: bool) -> str:
        async with run_database(server_url, keep=lambda: keep) as url:
            assert url != server_url
            assert exists(url)
            return url

    try:
        first = asyncio.run(run(False))
        kept = asyncio.run(run(True))
        assert make_url(first).database != make_url(kept).database
        assert not exists(first)
        assert exists(kept)
    finally:
        engine.dispose()


def test_a_server_that_refuses_the_database_is_reported(server_url: str) -> None:
    refused = make_url(server_url).set(username="nobody-here").render_as_string(hide_password=False)

    async def run() -> None:
        async with run_database(refused, keep=lambda: False):
            pytest.fail("a database was created for an unknown role")

    with pytest.raises(StackFailed, match="grant its role CREATEDB"):
        asyncio.run(run())


def _points(device: str, n: int, t0: int) -> tuple[str, set[tuple[str, int, int]]]:
    rows = [reading(device, seq, t0 + seq * 60_000, 4.0) for seq in range(1, n + 1)]
    return reading_lines(rows, gateway_id="gw-rb"), {(device, r.seq, r.t_device_ms) for r in rows}


def test_telemetry_is_read_back_point_by_point_from_victoriametrics(victoriametrics: VictoriaMetrics) -> None:
    device = f"dev-rb.{uuid.uuid4().hex[:8]}"  # a dot, to exercise the regex quoting
    lines, keys = _points(device, 50, 1_790_000_000_000)
    earlier, _ = _points(device, 50, 1_789_000_000_000)  # an earlier run: same devices and sequences
    victoriametrics.write_lines(lines + "\n" + earlier, precision="ms").raise_for_status()
    store = HttpStore(ServiceSettings(telemetry_url=victoriametrics.url))

    async def read() -> tuple[int, int]:
        try:
            return await store.points(keys), await store.points(set(list(keys)[:10]))
        finally:
            await store.aclose()

    assert asyncio.run(read()) == (50, 10)


def test_telemetry_is_read_back_with_influxql(influxdb1: InfluxDB1) -> None:
    db = f"rb_{uuid.uuid4().hex[:8]}"
    influxdb1.create_database(db)
    device = f"dev-rb.{uuid.uuid4().hex[:8]}"
    lines, keys = _points(device, 30, 1_790_000_000_000)
    earlier, _ = _points(device, 30, 1_789_000_000_000)
    influxdb1.write(db, lines + "\n" + earlier, precision="ms").raise_for_status()
    store = HttpStore(ServiceSettings(telemetry_url=influxdb1.url, telemetry_engine=TelemetryEngine.INFLUXDB,
                                      telemetry_bucket=db))  # fmt: skip

    async def read() -> int:
        try:
            await store.check()
            return await store.points(keys | {(device, 999, 1)})
        finally:
            await store.aclose()

    assert asyncio.run(read()) == 30


def test_the_acl_rendered_for_mosquitto_confines_identities_as_the_embedded_brokers_does(
    demo_pki: Pki, mosquitto_binary: Path, tmp_path: Path
) -> None:
    acl = Acl(users=cloud_services("svc-mq"))
    rendered = render_acl(acl)
    assert "pattern write ct/v1/gw/%u/batch" in rendered
    assert "user svc-mq\ntopic read ct/v1/gw/+/batch" in rendered
    server = demo_pki.identity(Role.SERVER, "localhost")
    tls = BrokerTls(ca_file=demo_pki.ca_bundle_path, cert_file=server.chain_path, key_file=server.key_path,
                    crl_file=demo_pki.crl_path)  # fmt: skip
    mine, other = issued(demo_pki, Role.GATEWAY, "gw-mq-a"), issued(demo_pki, Role.GATEWAY, "gw-mq-c")
    service = issued(demo_pki, Role.SERVICE, "svc-mq")

    async def scenario() -> None:
        async with MosquittoBroker(name="test", binary=mosquitto_binary, directory=tmp_path / "mq", tls=tls,
                                   acl=acl) as broker:  # fmt: skip
            links = [client(broker, demo_pki, who) for who in (mine, other, service)]  # type: ignore[arg-type]
            for link in links:
                await link.connect(timeout_s=TIMEOUT_S)
            gateway, neighbour, ingest = links
            # Mosquitto accepts a subscription wider than the ACL but delivers only what it may read.
            await gateway.subscribe("ct/v1/gw/+/batch")
            await gateway.subscribe("ct/v1/gw/gw-mq-a/cmd/#")
            await ingest.subscribe("ct/v1/gw/+/batch")
            await neighbour.publish("ct/v1/gw/gw-mq-c/batch", b"frame")
            with pytest.raises(PublishRefused) as refused:  # only below its own name
                await gateway.publish("ct/v1/gw/gw-mq-c/batch", b"forged")
            assert refused.value.reason.value == 135
            async with asyncio.timeout(TIMEOUT_S):
                got = await ingest.messages.get()
                assert (got.topic, got.payload) == ("ct/v1/gw/gw-mq-c/batch", b"frame")
                await ingest.publish("ct/v1/gw/gw-mq-a/cmd/manifest", b"m")
                # Queued after the batch had been delivered: had the batch been readable, it came first.
                first = await gateway.messages.get()
            assert first.topic == "ct/v1/gw/gw-mq-a/cmd/manifest"
            for link in links:
                await link.disconnect()
        assert not _demo_brokers()

    asyncio.run(scenario())
