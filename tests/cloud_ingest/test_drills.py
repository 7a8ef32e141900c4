"""Failure drills over the real stack: gateways → Mosquitto (mTLS) → workers → PostgreSQL → VictoriaMetrics.

Each drill publishes a fleet's signed batch chains (``drills_fleet``) at QoS 1, breaks one part of
the stack while batches flow, and then asserts exact outcomes (``drills_checks``): every batch and
every (device, seq) stored once, no open chain gap, per-gateway and per-device counters exact,
exactly one alert and one rule hold per breaching shipment, the telemetry spool empty and the
time-series server holding exactly one sample per reading.

Every drill gets its own broker (sessions persisted to disk) and its own VictoriaMetrics, run with
``-dedup.minScrapeInterval=1ms``: the production setting for this design, because the spool writes
at least once (a chunk whose writer died before deleting it is written again once its lease
expires) and only with deduplication does VictoriaMetrics keep one copy of a rewritten sample
(``test_a_chunk_written_again_after_its_lease_expired_is_stored_once`` shows both sides).

Drill 1 runs three ``coldtrace cloud worker`` processes (their ``telemetry.lease_s`` is 2 s, so a chunk
orphaned by the SIGKILL is rewritten within the drill);
drills 2-4 run two in-process workers each, whose metrics and consumers the drill reads directly.

Loads, sized for about 50 s for the file on a 2-core machine: drill 1 - 4 gateways x 200 batches x
20 readings (16,000 readings) at 240 batches/s offered; drill 2 - 2 x 60 batches; drills 3 and 4 -
3 x 80 batches at 60 batches/s offered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import Engine

from certs.pki import IssuedIdentity, Pki, Role
from cloud_ingest.db.engine import open_database
from cloud_ingest.db.tables import batches
from cloud_ingest.ingest import Ingestor
from cloud_ingest.metrics import CloudMetrics
from cloud_ingest.settings import CloudSettings, TelemetrySettings
from cloud_ingest.spool import SpoolDrainer
from cloud_ingest.telemetry import TelemetryWriter
from cloud_ingest.worker import Worker
from tests.cloud_ingest.conftest import fresh_postgres_url
from tests.cloud_ingest.drills_checks import (
    assert_stored_exactly_once,
    spool_points,
    spool_rows,
    stored,
    temperature_samples,
)
from tests.cloud_ingest.drills_fleet import Fleet, FleetPlan, Publisher, publish_fleet, publishers
from tests.cloud_ingest.drills_workers import (
    WorkerProcess,
    cloud_settings,
    metric,
    poll,
    running_workers,
    unacknowledged,
    write_config,
)
from tests.harness.mosquitto import DEFAULT_SERVICE_ACL, Mosquitto, MosquittoTlsFiles
from tests.harness.postgres import Postgres
from tests.harness.services import require_binary
from tests.harness.victoriametrics import VictoriaMetrics

pytestmark = pytest.mark.services
logger = logging.getLogger(__name__)
Identity = Callable[[Role, str], IssuedIdentity]


# -- dedicated servers: a drill breaks them, so no other test shares them -------------------------------
@pytest.fixture
def broker(pki: Pki, server_identity: IssuedIdentity) -> Iterator[Mosquitto]:
    """A broker of our own that keeps sessions on disk (a restart loses no queued batch)."""
    binary = require_binary("Mosquitto", "mosquitto", package="mosquitto", extra_dirs=[Path("/usr/sbin")])
    tls = MosquittoTlsFiles(
        cafile=pki.ca_bundle_path, certfile=server_identity.chain_path, keyfile=server_identity.key_path,
        crlfile=pki.crl_path,
    )  # fmt: skip
    server = Mosquitto(binary, tls, service_acl=DEFAULT_SERVICE_ACL, persistence=True)
    server.start()
    yield server
    server.close()


def _victoriametrics(*extra_args: str) -> VictoriaMetrics:
    binary = require_binary("VictoriaMetrics", "victoria-metrics", package="victoria-metrics")
    return VictoriaMetrics(binary, extra_args=extra_args)


@pytest.fixture
def vm() -> Iterator[VictoriaMetrics]:
    """A VictoriaMetrics of our own, deduplicating rewritten samples as production must."""
    server = _victoriametrics("-dedup.minScrapeInterval=1ms")
    server.start()
    yield server
    server.close()


@pytest.fixture
def own_postgres(postgres: Postgres) -> Iterator[Postgres]:
    """A PostgreSQL of our own (the session server's binaries), to kill."""
    server = Postgres(postgres.bindir)
    server.start()
    yield server
    server.close()


@dataclass
class Drill:
    """One drill's fleet, database and worker settings."""

    fleet: Fleet
    engine: Engine
    settings: CloudSettings

    @classmethod
    def prepare(
        cls, tag: str, plan: FleetPlan, *, database_url: str, broker: Mosquitto, pki: Pki, identity: Identity,
        vm: VictoriaMetrics,
    ) -> Drill:  # fmt: skip
        fleet = Fleet(plan)
        engine = open_database(database_url)  # migrated here, before several workers race to do it
        fleet.register(engine)
        settings = cloud_settings(
            database_url=database_url, broker=broker, pki=pki, service=identity(Role.SERVICE, "svc-ingest"),
            client_id=f"{tag}-ingest", share_group=f"{tag}-group", telemetry_url=vm.url,
        )  # fmt: skip
        return cls(fleet, engine, settings)

    def stored_at_least(self, n: int) -> Callable[[], bool]:
        return lambda: stored(self.engine, batches) >= n

    def all_stored(self) -> Callable[[], bool]:
        return lambda: stored(self.engine, batches) == self.fleet.batches

    def drained(self) -> Callable[[], bool]:
        return lambda: spool_rows(self.engine) == 0

    def log(self, what: str) -> None:
        logger.info("%s: %d batches stored, %d chunks spooled", what, stored(self.engine, batches),
                    spool_rows(self.engine))  # fmt: skip


# -- 1: SIGKILL a worker ------------------------------------------------------------------------------
@dataclass
class Cluster:
    """Worker processes sharing one config file (one share group, one client id prefix)."""

    tmp_path: Path
    broker: Mosquitto
    config: Path
    client_id: str
    procs: list[WorkerProcess] = field(default_factory=list)

    async def start(self, n: int) -> None:
        offset = self.broker.log_size()
        for i in range(1, n + 1):
            proc = WorkerProcess(self.config, i, self.tmp_path / f"worker-{i}.log", client_id=self.client_id)
            proc.start()
            self.procs.append(proc)
        for proc in self.procs:
            await proc.wait_ready(self.broker, offset)

    async def restart(self, proc: WorkerProcess) -> int:
        """Start ``proc`` again; returns the broker log offset of the restart."""
        offset = self.broker.log_size()
        proc.start()
        await proc.wait_ready(self.broker, offset)
        return offset

    def stop(self) -> list[int | None]:
        return [proc.stop() for proc in self.procs]

    def log_tail(self) -> str:
        return "\n".join(proc.log_text()[-3000:] for proc in self.procs)


def test_three_workers_one_killed_mid_run_store_every_batch_exactly_once(
    tmp_path: Path, pki: Pki, identity: Identity, postgres: Postgres, broker: Mosquitto, vm: VictoriaMetrics
) -> None:
    d = Drill.prepare("d1", FleetPlan(tag="d1", gateways=4, batches=200),
                      database_url=fresh_postgres_url(postgres), broker=broker, pki=pki, identity=identity,
                      vm=vm)  # fmt: skip
    assert d.settings.broker is not None
    cluster = Cluster(
        tmp_path, broker, write_config(tmp_path / "cloud.toml", d.settings), d.settings.broker.client_id
    )
    redelivered = ""

    async def drill() -> None:
        nonlocal redelivered
        started_at = broker.log_size()
        await cluster.start(3)
        victim = cluster.procs[1]
        async with publishers(broker, pki, identity, d.fleet) as pubs:
            # 240 batches/s in all, more than three workers store on two cores: a backlog
            # builds, so each worker holds batches it has been sent and not yet acknowledged.
            sending = asyncio.create_task(publish_fleet(pubs, d.fleet, per_second=60))
            await poll(
                lambda: sum(p.acknowledged for p in pubs) >= d.fleet.batches // 4
                and unacknowledged(broker, victim.client_id, since=started_at) >= 5,
                within_s=60, what="worker 2 holding 5 unacknowledged batches, a quarter published",
            )  # fmt: skip
            d.log("SIGKILL worker 2")
            victim.kill9()
            assert not sending.done()  # the gateways are still publishing
            # Same instance, same client id: the broker hands it the session it left behind, with the
            # batches it had been sent but not acknowledged, and those that queued while it was away.
            restarted_at = await cluster.restart(victim)
            d.log("worker 2 back")
            await sending
            assert [p.acknowledged for p in pubs] == [d.fleet.plan.batches] * d.fleet.plan.gateways
        await poll(d.all_stored(), within_s=90, what="every batch stored")
        await poll(d.drained(), within_s=30, what="the spool drained")
        redelivered = broker.log_text(restarted_at)

    try:
        asyncio.run(drill())
        assert [p.alive for p in cluster.procs] == [True, True, True]
    finally:
        codes = cluster.stop()
    assert codes == [0, 0, 0], cluster.log_tail()
    victim = cluster.procs[1]
    assert victim.kills == 1
    # The broker resent what the dead worker held unacknowledged (DUP flag set) to its new incarnation.
    assert f"Sending PUBLISH to {victim.client_id} (d1, q1" in redelivered
    assert_stored_exactly_once(d.engine, d.fleet)
    assert temperature_samples(vm, d.fleet) == d.fleet.points
    d.engine.dispose()


# -- 2: the time-series server goes away ----------------------------------------------------------------
def test_every_point_arrives_after_the_time_series_server_was_down(
    pki: Pki, identity: Identity, postgres: Postgres, broker: Mosquitto, vm: VictoriaMetrics
) -> None:
    d = Drill.prepare("d2", FleetPlan(tag="d2", gateways=2, batches=60, breaching=1),
                      database_url=fresh_postgres_url(postgres), broker=broker, pki=pki, identity=identity,
                      vm=vm)  # fmt: skip
    third = d.fleet.plan.batches // 3

    async def send(pubs: list[Publisher], part: int) -> None:
        async with asyncio.TaskGroup() as tg:
            for pub, load in zip(pubs, d.fleet.loads, strict=True):
                tg.create_task(pub.send(load.frames[part * third : (part + 1) * third], per_second=100))

    async def drill() -> None:
        async with (
            running_workers(d.settings, 2) as workers,
            publishers(broker, pki, identity, d.fleet) as pubs,
        ):
            ports = [w.metrics_port.result() for w in workers if w.metrics_port is not None]

            def telemetry_up(value: float) -> Callable[[], bool]:
                return lambda: any(metric(p, "coldtrace_cloud_telemetry_up") == value for p in ports)

            await send(pubs, 0)
            await poll(d.stored_at_least(2 * third), within_s=30, what="the first third stored")
            await poll(d.drained(), within_s=30, what="the first third drained")
            await asyncio.to_thread(vm.stop)
            d.log("VictoriaMetrics stopped")
            await send(pubs, 1)
            await poll(d.stored_at_least(4 * third), within_s=30, what="the second third stored")
            # Ingest goes on; the points wait in the spool: each batch's readings and its batch point.
            await poll(telemetry_up(0), within_s=30, what="coldtrace_cloud_telemetry_up 0")
            assert spool_points(d.engine) == 2 * third * (2 * d.fleet.plan.per_device + 1)
            await asyncio.to_thread(vm.start)
            d.log("VictoriaMetrics back")
            await send(pubs, 2)
            await poll(d.all_stored(), within_s=30, what="every batch stored")
            await poll(d.drained(), within_s=30, what="the spool drained")
            await poll(telemetry_up(1), within_s=10, what="coldtrace_cloud_telemetry_up 1")

    asyncio.run(drill())
    assert_stored_exactly_once(d.engine, d.fleet)
    assert temperature_samples(vm, d.fleet) == d.fleet.points
    d.engine.dispose()


def _store_up(worker: Worker) -> float | None:
    return worker.metrics.registry.get_sample_value("coldtrace_cloud_store_up")


def _acked(worker: Worker) -> int:
    assert worker.consumer is not None
    return worker.consumer.handled


# -- 3: PostgreSQL crashes ---------------------------------------------------------------------------------
def test_a_postgres_crash_loses_no_accepted_batch_and_doubles_none(
    pki: Pki, identity: Identity, own_postgres: Postgres, broker: Mosquitto, vm: VictoriaMetrics
) -> None:
    d = Drill.prepare("d3", FleetPlan(tag="d3", gateways=3, batches=80),
                      database_url=fresh_postgres_url(own_postgres), broker=broker, pki=pki,
                      identity=identity, vm=vm)  # fmt: skip

    async def drill() -> None:
        async with (
            running_workers(d.settings, 2) as workers,
            publishers(broker, pki, identity, d.fleet) as pubs,
        ):
            sending = asyncio.create_task(publish_fleet(pubs, d.fleet, per_second=20))
            await poll(d.stored_at_least(d.fleet.batches // 3), within_s=60, what="a third stored")
            d.log("SIGKILL the postmaster")
            await asyncio.to_thread(own_postgres.kill)
            # Both workers get batches they cannot store: each holds one, unacknowledged, retrying.
            await poll(
                lambda: all(_store_up(w) == 0 for w in workers), within_s=30,
                what="every worker holding a batch it cannot store",
            )  # fmt: skip
            acked = [_acked(w) for w in workers]
            await asyncio.sleep(1.0)  # the outage goes on while the gateways keep publishing
            assert [_acked(w) for w in workers] == acked  # nothing acknowledged that is not committed
            await asyncio.to_thread(own_postgres.restart)
            d.log("PostgreSQL back after crash recovery")
            await sending
            await poll(d.all_stored(), within_s=60, what="every batch stored")
            await poll(d.drained(), within_s=30, what="the spool drained")

    asyncio.run(drill())
    assert_stored_exactly_once(d.engine, d.fleet)
    assert temperature_samples(vm, d.fleet) == d.fleet.points
    d.engine.dispose()


# -- 4: the broker restarts ------------------------------------------------------------------------------
def test_workers_reconnect_after_a_broker_restart_and_store_every_batch_once(
    pki: Pki, identity: Identity, postgres: Postgres, broker: Mosquitto, vm: VictoriaMetrics,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    d = Drill.prepare("d4", FleetPlan(tag="d4", gateways=3, batches=80),
                      database_url=fresh_postgres_url(postgres), broker=broker, pki=pki, identity=identity,
                      vm=vm)  # fmt: skip
    caplog.set_level(logging.WARNING, logger="coldtrace.mqtt")

    async def drill() -> None:
        async with (
            running_workers(d.settings, 2) as workers,
            publishers(broker, pki, identity, d.fleet) as pubs,
        ):
            sending = asyncio.create_task(publish_fleet(pubs, d.fleet, per_second=20))
            await poll(d.stored_at_least(d.fleet.batches // 3), within_s=60, what="a third stored")
            d.log("restarting the broker")
            await asyncio.to_thread(broker.restart)
            await sending
            # Published after the restart, before the workers had subscribed again: dropped, resent.
            logger.info("PUBACKs with no matching subscribers: %s", [p.unrouted for p in pubs])
            assert [p.acknowledged for p in pubs] == [d.fleet.plan.batches] * d.fleet.plan.gateways
            await poll(d.all_stored(), within_s=60, what="every batch stored")
            await poll(d.drained(), within_s=30, what="the spool drained")
            assert all(w.consumer is not None and w.consumer.client.connected.is_set() for w in workers)

    asyncio.run(drill())
    for i in (1, 2):
        assert f"d4-ingest-{i} lost its broker connection; reconnecting" in caplog.text
    assert_stored_exactly_once(d.engine, d.fleet)
    assert temperature_samples(vm, d.fleet) == d.fleet.points
    d.engine.dispose()


# -- why the drills run VictoriaMetrics with deduplication ---------------------------------------------
def test_a_chunk_written_again_after_its_lease_expired_is_stored_once(
    postgres: Postgres, victoriametrics: VictoriaMetrics, vm: VictoriaMetrics
) -> None:
    """A worker dies between writing a chunk and deleting it; another writes it again after the lease.

    The session's VictoriaMetrics (no deduplication) then holds every sample twice; the drills' one
    (``-dedup.minScrapeInterval=1ms``) holds each once.
    """
    fleet = Fleet(FleetPlan(tag="lease", gateways=1, batches=4, breaching=0))

    async def write_twice(server: VictoriaMetrics) -> None:
        engine = open_database(fresh_postgres_url(postgres))
        fleet.register(engine)
        ingestor = Ingestor(engine, CloudSettings(), metrics=CloudMetrics())
        for frame in fleet.loads[0].frames:
            ingestor.ingest(frame, topic_gateway="lease-gw0", identity="lease-gw0", transport="mqtt")
        settings = TelemetrySettings(url=server.url)
        async with TelemetryWriter(url=server.url, token="", org="o", bucket="b") as writer:
            dying = SpoolDrainer(engine, writer, settings, metrics=CloudMetrics(), clock=lambda: 0)
            chunk = await asyncio.to_thread(dying.lease)
            assert chunk is not None
            await writer.write(chunk.lines)  # ... and the worker is gone before it deletes the chunk
            later = SpoolDrainer(
                engine, writer, settings, metrics=CloudMetrics(), clock=lambda: round(settings.lease_s * 1000)
            )
            assert await later.drain_once() == chunk.points
        assert spool_rows(engine) == 0
        engine.dispose()

    asyncio.run(write_twice(victoriametrics))
    asyncio.run(write_twice(vm))
    try:
        twice = victoriametrics.export(
            fleet.device_selector(), until=lambda s: sum(len(x["values"]) for x in s) >= 2 * fleet.points
        )
        assert sum(len(x["values"]) for x in twice) == 2 * fleet.points
    finally:
        victoriametrics.delete_series(fleet.device_selector())  # the session server is shared
    assert temperature_samples(vm, fleet) == fleet.points
