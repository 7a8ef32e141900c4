"""A worker over the real stack: gateway → Mosquitto (mTLS, shared subscription) → SQL → VictoriaMetrics."""

from __future__ import annotations

import asyncio
import gc

import pytest
from sqlalchemy import Engine, select

from certs.pki import IssuedIdentity, Pki, Role
from cloud_ingest.db.engine import open_database
from cloud_ingest.db.tables import readings, telemetry_spool
from cloud_ingest.ingest import Ingestor
from cloud_ingest.metrics import CloudMetrics
from cloud_ingest.settings import BrokerSettings, CloudSettings, TelemetrySettings
from cloud_ingest.spool import Handoff, SpoolDrainer
from cloud_ingest.telemetry import TelemetryUnavailable, TelemetryWriter
from cloud_ingest.worker import Worker, tune_gc
from coldtrace.contract.topics import gateway_batches, shared_gateway_batches
from coldtrace.mqtt import BrokerUrl, MqttClient, TlsFiles
from tests.cloud_ingest.builders import T0, GatewaySim, count_rows, series
from tests.cloud_ingest.drills_workers import poll
from tests.harness.mosquitto import Mosquitto
from tests.harness.ports import free_port
from tests.harness.victoriametrics import VictoriaMetrics

pytestmark = pytest.mark.services


def _tls(pki: Pki, who: IssuedIdentity) -> TlsFiles:
    return TlsFiles(ca_file=pki.ca_bundle_path, cert_file=who.cert_path, key_file=who.key_path)


def test_batches_published_by_a_gateway_become_rows_and_points(
    tmp_path,
    pki: Pki,
    identity,
    mosquitto_tls: Mosquitto,
    victoriametrics: VictoriaMetrics,  # type: ignore[no-untyped-def]
) -> None:
    asyncio.run(_publish_and_store(tmp_path, pki, identity, mosquitto_tls, victoriametrics))


async def _publish_and_store(tmp_path, pki, identity, mosquitto_tls, victoriametrics) -> None:  # type: ignore[no-untyped-def]
    service = identity(Role.SERVICE, "svc-ingest")
    gateway = identity(Role.GATEWAY, "gw-mq")
    settings = CloudSettings(
        database_url=f"sqlite:///{tmp_path / 'cloud.db'}",
        broker=BrokerSettings(
            url=f"mqtts://localhost:{mosquitto_tls.port}", ca_file=pki.ca_bundle_path,
            cert_file=service.cert_path, key_file=service.key_path, share_group="it",
        ),
        telemetry=TelemetrySettings(url=victoriametrics.url),
        metrics_port=0,
    )  # fmt: skip
    engine = open_database(settings.database_url)
    sim = GatewaySim(gateway_id="gw-mq")
    sim.register(engine)
    worker = Worker(engine, settings, metrics=CloudMetrics())
    publisher = MqttClient(
        client_id="gw-mq", broker=BrokerUrl.parse(settings.broker.url), tls=_tls(pki, gateway)
    )  # type: ignore[union-attr]
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(worker.run())
        await poll(
            lambda: worker.consumer is not None and worker.consumer.subscribed.is_set(),
            within_s=20,
            what="subscribed",
        )
        await publisher.connect()
        temps = [4.0 + i / 10 for i in range(50)]
        frames = [
            sim.frame(list(series("dev-mq", temps[i : i + 10], start_ms=T0 + i * 60_000, first_seq=i + 1)))
            for i in range(0, 50, 10)
        ]
        for frame in frames:
            await publisher.publish(gateway_batches("gw-mq"), frame, qos=1)
        await poll(lambda: count_rows(engine, readings) == 50, within_s=20, what="50 readings stored")
        await poll(lambda: count_rows(engine, telemetry_spool) == 0, within_s=20, what="the spool drained")
        await publisher.disconnect()
        task.cancel()
    exported = victoriametrics.export(
        '{__name__="reading_temperature_c",device="dev-mq"}',
        until=lambda s: sum(len(x["values"]) for x in s) == 50,
    )
    assert sorted(v for s in exported for v in s["values"]) == pytest.approx(temps)
    registry = worker.metrics.registry
    assert registry.get_sample_value("coldtrace_cloud_batches_total", {"outcome": "accepted"}) == 5
    assert registry.get_sample_value("coldtrace_cloud_telemetry_points_written_total") == 50 + 5
    engine.dispose()


def test_the_spool_keeps_points_while_the_time_series_server_is_down(
    engine: Engine, victoriametrics: VictoriaMetrics
) -> None:
    asyncio.run(_spool_through_outage(engine, victoriametrics))


async def _spool_through_outage(engine: Engine, victoriametrics: VictoriaMetrics) -> None:
    device = f"dev-spool-{engine.dialect.name}"  # one VictoriaMetrics serves both database runs
    sim = GatewaySim(gateway_id="gw-spool")
    sim.register(engine)
    ingestor = Ingestor(engine, CloudSettings(), metrics=CloudMetrics())
    for i in range(3):
        ingestor.ingest(
            sim.frame(list(series(device, [3.0, 3.5], start_ms=T0 + i * 120_000, first_seq=2 * i + 1))),
            topic_gateway="gw-spool", identity="gw-spool", transport="mqtt",
        )  # fmt: skip
    settings = TelemetrySettings(retry_initial_s=0.01, retry_max_s=0.02)
    metrics = CloudMetrics()
    async with TelemetryWriter(url=f"http://127.0.0.1:{free_port()}", token="", org="o", bucket="b") as down:
        drainer = SpoolDrainer(engine, down, settings, metrics=metrics, clock=lambda: T0)
        with pytest.raises(TelemetryUnavailable):
            await drainer.drain_once()
    assert count_rows(engine, telemetry_spool) == 3  # leased and put back, nothing lost
    async with TelemetryWriter(url=victoriametrics.url, token="", org="o", bucket="b") as up:
        # A later clock: the failed chunk's retry time has passed.
        drainer = SpoolDrainer(engine, up, settings, metrics=metrics, clock=lambda: T0 + 3_600_000)
        while await drainer.drain_once():
            pass
    assert count_rows(engine, telemetry_spool) == 0
    exported = victoriametrics.export(
        f'{{__name__="reading_temperature_c",device="{device}"}}',
        until=lambda s: sum(len(x["values"]) for x in s) == 6,
    )
    assert sum(len(s["values"]) for s in exported) == 6


# -- the hand-off: a worker's own chunks go to its drainer in memory -----------------------------------
LEASE_MS = 60_000


def _handing_ingestor(engine: Engine, handoff: Handoff, gateway: str, device: str, frames: int) -> Ingestor:
    """An ingestor (clock at T0) that hands its chunks to ``handoff``, after storing ``frames``
    batches of two readings of ``device``."""
    sim = GatewaySim(gateway_id=gateway)
    sim.register(engine)
    ingestor = Ingestor(engine, CloudSettings(), metrics=CloudMetrics(), clock=lambda: T0)
    ingestor.handoff = handoff
    for i in range(frames):
        ingestor.ingest(
            sim.frame(list(series(device, [3.0, 3.5], start_ms=T0 + i * 120_000, first_seq=2 * i + 1))),
            topic_gateway=gateway, identity=gateway, transport="mqtt",
        )  # fmt: skip
    return ingestor


def _due_at(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        query = select(telemetry_spool.c.next_attempt_ms).order_by(telemetry_spool.c.id)
        return list(conn.execute(query).scalars())


def test_committed_chunks_are_handed_to_the_drainer_and_never_read_back(
    engine: Engine, victoriametrics: VictoriaMetrics
) -> None:
    asyncio.run(_handed_over(engine, victoriametrics))


async def _handed_over(engine: Engine, victoriametrics: VictoriaMetrics) -> None:
    device = f"dev-hand-{engine.dialect.name}"
    handoff = Handoff(max_chunks=4, lease_ms=LEASE_MS)
    _handing_ingestor(engine, handoff, "gw-hand", device, frames=2)
    assert _due_at(engine) == [T0 + LEASE_MS] * 2  # leased to this worker
    settings = TelemetrySettings(url=victoriametrics.url)
    async with TelemetryWriter(url=victoriametrics.url, token="", org="o", bucket="b") as writer:
        # Another worker's drainer, up to the end of the lease, finds nothing due in the table.
        other = SpoolDrainer(
            engine, writer, settings, metrics=CloudMetrics(), clock=lambda: T0 + LEASE_MS - 1
        )
        assert await other.drain_once() == 0
        drainer = SpoolDrainer(engine, writer, settings, metrics=CloudMetrics(), clock=lambda: T0,
                               handoff=handoff)  # fmt: skip
        assert await drainer.drain_once() == 2 * (2 + 1)  # both chunks in one write: readings + batch points
        assert await drainer.drain_once() == 0
    assert count_rows(engine, telemetry_spool) == 0
    exported = victoriametrics.export(
        f'{{__name__="reading_temperature_c",device="{device}"}}',
        until=lambda s: sum(len(x["values"]) for x in s) == 4,
    )
    assert sum(len(s["values"]) for s in exported) == 4


def test_handed_chunks_go_back_to_the_table_while_the_time_series_server_is_down(engine: Engine) -> None:
    asyncio.run(_handed_back(engine))


async def _handed_back(engine: Engine) -> None:
    handoff = Handoff(max_chunks=4, lease_ms=LEASE_MS)
    _handing_ingestor(engine, handoff, "gw-back", "dev-back", frames=3)
    settings = TelemetrySettings(retry_initial_s=0.5, retry_max_s=0.5)
    async with TelemetryWriter(url=f"http://127.0.0.1:{free_port()}", token="", org="o", bucket="b") as down:
        drainer = SpoolDrainer(engine, down, settings, metrics=CloudMetrics(), clock=lambda: T0,
                               handoff=handoff)  # fmt: skip
        with pytest.raises(TelemetryUnavailable):
            await drainer.drain_once()
    # All three, the one tried and the two still in memory, are due in the table after the (jittered)
    # retry delay.
    due = _due_at(engine)
    assert len(due) == 3
    assert len(set(due)) == 1
    assert T0 < due[0] <= T0 + 500
    assert handoff.take(1_000_000) is None


def test_a_full_hand_off_leaves_further_chunks_due_in_the_table(engine: Engine) -> None:
    asyncio.run(_full_handoff(engine))


async def _full_handoff(engine: Engine) -> None:
    handoff = Handoff(max_chunks=1, lease_ms=LEASE_MS)
    _handing_ingestor(engine, handoff, "gw-full", "dev-full", frames=2)
    assert _due_at(engine) == [T0 + LEASE_MS, 0]
    taken = handoff.take(1_000_000)
    assert taken is not None
    assert (len(taken.ids), taken.points) == (1, 3)


def test_a_chunk_waiting_half_its_lease_is_left_to_the_table(engine: Engine) -> None:
    asyncio.run(_stale_handoff(engine))


async def _stale_handoff(engine: Engine) -> None:
    handoff = Handoff(max_chunks=4, lease_ms=0)  # half of no lease: every chunk handed over is stale
    _handing_ingestor(engine, handoff, "gw-stale", "dev-stale", frames=1)
    assert handoff.take(1_000_000) is None
    assert count_rows(engine, telemetry_spool) == 1  # still there, for any drainer to lease


def test_a_stopping_drainer_returns_the_chunks_waiting_in_memory_to_the_table(engine: Engine) -> None:
    asyncio.run(_stopping_drainer(engine))


async def _stopping_drainer(engine: Engine) -> None:
    # A server that accepts the write but never answers: the drainer is stuck in its first write.
    accepted = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await reader.read()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    handoff = Handoff(max_chunks=4, lease_ms=LEASE_MS)
    _handing_ingestor(engine, handoff, "gw-stop", "dev-stop", frames=1)
    settings = TelemetrySettings(chunk_points=3)  # one chunk a write: the second waits in memory
    async with server, TelemetryWriter(url=f"http://127.0.0.1:{port}", token="", org="o", bucket="b") as w:
        drainer = SpoolDrainer(engine, w, settings, metrics=CloudMetrics(), clock=lambda: T0, handoff=handoff)
        task = asyncio.create_task(drainer.run())
        await accepted.wait()
        _handing_ingestor(engine, handoff, "gw-stop2", "dev-stop2", frames=1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # The chunk being written stays leased (its lease decides); the waiting one is due now.
    assert _due_at(engine) == [T0 + LEASE_MS, T0]


def test_a_backlog_is_stored_many_batches_per_transaction_and_each_acknowledged(
    tmp_path,
    pki: Pki,
    identity,
    mosquitto_tls: Mosquitto,  # type: ignore[no-untyped-def]
) -> None:
    asyncio.run(_drain_backlog(tmp_path, pki, identity, mosquitto_tls))


async def _drain_backlog(tmp_path, pki, identity, mosquitto_tls) -> None:  # type: ignore[no-untyped-def]
    service = identity(Role.SERVICE, "svc-ingest")  # its ACL grants; its own session below
    gateway = identity(Role.GATEWAY, "gw-backlog")
    broker = BrokerSettings(
        url=f"mqtts://localhost:{mosquitto_tls.port}", ca_file=pki.ca_bundle_path,
        cert_file=service.cert_path, key_file=service.key_path, share_group="backlog",
        client_id="svc-backlog", group_max_frames=16,
    )  # fmt: skip
    settings = CloudSettings(database_url=f"sqlite:///{tmp_path / 'cloud.db'}", broker=broker, metrics_port=0)
    engine = open_database(settings.database_url)
    sim = GatewaySim(gateway_id="gw-backlog")
    sim.register(engine)
    # The worker's persistent session exists (subscribed) but the worker is away while 40 batches queue.
    session = MqttClient(
        client_id="svc-backlog-1", broker=BrokerUrl.parse(broker.url), tls=_tls(pki, service),
        clean_start=False, session_expiry_s=600, manual_ack=True,
    )  # fmt: skip
    await session.connect()
    await session.subscribe(shared_gateway_batches("backlog"), qos=1)
    await session.disconnect()
    publisher = MqttClient(client_id="gw-backlog", broker=BrokerUrl.parse(broker.url), tls=_tls(pki, gateway))
    await publisher.connect()
    for i in range(40):
        frame = sim.frame(list(series("dev-b", [4.0, 4.1], start_ms=T0 + i * 60_000, first_seq=2 * i + 1)))
        await publisher.publish(gateway_batches("gw-backlog"), frame, qos=1)
    await publisher.disconnect()

    worker = Worker(engine, settings, metrics=CloudMetrics())
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(worker.run())
        await poll(lambda: worker.consumer is not None and worker.consumer.handled == 40,
                   within_s=30, what="40 batches acknowledged")  # fmt: skip
        task.cancel()
    registry = worker.metrics.registry
    assert registry.get_sample_value("coldtrace_cloud_batches_total", {"outcome": "accepted"}) == 40
    transactions = registry.get_sample_value("coldtrace_cloud_store_seconds_count")
    assert transactions is not None
    assert 40 / 16 <= transactions < 40  # grouped, never above the group limit
    assert count_rows(engine, readings) == 80
    engine.dispose()


def test_tune_gc_sets_the_young_threshold_and_freezes_what_exists() -> None:
    before = gc.get_threshold()
    try:
        tune_gc(123_456)
        assert gc.get_threshold() == (123_456, *before[1:])
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
