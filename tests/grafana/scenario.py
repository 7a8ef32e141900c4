"""One scenario through the real stack, run once per session, for the dashboards to be queried against.

Devices (the simulator, a shortened reefer failure) publish to a gateway Mosquitto; a real edge agent
forwards signed batches over mutual TLS to the cloud Mosquitto; a real cloud worker verifies and
stores them in PostgreSQL, runs the rules (alerts, holds) and drains its telemetry spool - the cloud's
own line protocol - to InfluxDB 1.6 (through :mod:`tests.grafana.influx_relay`). A second gateway
(:mod:`tests.grafana.yard`) adds a gap marker, a duplicate and a refused batch. Prometheus scrapes the
agent's and the worker's real ``/metrics`` endpoints the whole time, labelled as grafana/README.md
tells operators to label them.

The dashboards' time range is the scenario's: from the first simulated sample to the moment
Prometheus had scraped the final state. The simulation is placed so that it ends "now", which puts
event time (readings), wall time (alerts raised, holds placed, batches received) and the scrapes in
one range, as they are for an operator watching a live fleet.

The cloud broker is the session's, shared with other tests: the worker's MQTT session ends when it
disconnects, the manifest carries a version newer than any another test may have left retained for
the same gateway id, and the retained manifest is cleared at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from certs.pki import IssuedIdentity, Pki, Role
from cloud_ingest.api.app import create_app
from cloud_ingest.db.engine import open_database
from cloud_ingest.db.tables import holds, readings, rejects, telemetry_spool
from cloud_ingest.keys import Role as ApiRole
from cloud_ingest.keys import create_key
from cloud_ingest.metrics import CloudMetrics
from cloud_ingest.publisher import MqttManifestPublisher
from cloud_ingest.registry import register_gateway
from cloud_ingest.settings import BrokerSettings, CloudSettings, TelemetrySettings
from cloud_ingest.worker import Worker
from coldtrace.contract.canonical import canonical_bytes
from coldtrace.contract.manifest import Manifest
from coldtrace.contract.topics import GatewayCommand, gateway_batches, gateway_command
from coldtrace.demo.scenario import manifest_entry
from coldtrace.mqtt import BrokerUrl, MqttClient, TlsFiles
from edge_agent.agent import EdgeAgent
from edge_agent.settings import AgentSettings
from firmware_sim.fleet import Simulation
from firmware_sim.runner import ConnectionMode, RunConfig, run_fleet
from firmware_sim.scenario import FaultRates, Scenario, builtin_scenarios
from firmware_sim.truth import Fate, SampleTruth, TruthWriter
from tests.cloud_ingest.builders import GatewaySim, count_rows
from tests.cloud_ingest.conftest import fresh_postgres_url
from tests.cloud_ingest.drills_workers import poll
from tests.edge_agent.conftest import GATEWAY, agent_toml
from tests.grafana import yard
from tests.grafana.influx_relay import InfluxV2Relay
from tests.harness.enrolled import EnrolledGateway
from tests.harness.influxdb1 import InfluxDB1
from tests.harness.mosquitto import Mosquitto
from tests.harness.ports import LOOPBACK, free_port
from tests.harness.postgres import Postgres
from tests.harness.prometheus import Prometheus, TargetGroup

Identity = Callable[[Role, str], IssuedIdentity]

#: The agent's site (``agent_toml`` writes it).
SITE = "wh-test"
#: InfluxDB database = the worker's bucket (InfluxDB 2.x maps it with a DBRP, 1.x has databases).
INFLUX_DB = "coldtrace"
DEVICES = 16  # two shipments of eight sensors
DURATION_S = 3 * 3600
#: Prometheus job labels, as grafana/README.md tells operators to set them.
AGENT_JOB = "coldtrace-agent"
WORKER_JOB = "coldtrace-worker"
WAIT_S = 90.0
#: The time range ends at least this long after the yard's duplicate and refused batch, so that a
#: rate window ($__rate_interval: 11 s for three hours at 1 s scrapes) holds a scrape on either side.
RATE_WINDOW_S = 15.0


@dataclass(frozen=True, slots=True)
class DashboardScenario:
    """The engines after the run, and the time range the dashboards are looked at with."""

    postgres_dsn: str
    influxdb: InfluxDB1
    influx_db: str
    prometheus: Prometheus
    from_ms: int
    to_ms: int
    held_shipments: frozenset[str]
    """Shipments under an active rule hold (the failed reefers')."""
    stored_readings: int
    """Readings in the cloud's database: the simulator's delivered samples and the yard's."""


@dataclass(frozen=True, slots=True)
class Services:
    """The running servers the scenario needs."""

    pki: Pki
    identity: Identity
    gateway: EnrolledGateway
    gateway_broker: Mosquitto
    cloud_broker: Mosquitto
    postgres: Postgres
    influxdb: InfluxDB1
    prometheus: Prometheus


def reefer_failure() -> Scenario:
    """Reefer failure, shortened: compressors fail one hour in, so two hours of warming follow."""
    base = builtin_scenarios()["reefer-failure"]
    return base.model_copy(
        update={
            "duration_s": float(DURATION_S),
            "sample_interval_s": 20.0,
            "events": tuple(e.model_copy(update={"at_s": 3600.0}) for e in base.events),
            # Refused device messages and redeliveries for the gateway's reject and duplicate panels.
            "faults": FaultRates(malformed=0.01, duplicate=0.01),
        }
    )


def run_dashboard_scenario(services: Services, tmp_path: Path, *, seed: int = 7) -> DashboardScenario:
    """Run the scenario once (see the module docstring); returns what the dashboards are queried on."""
    run = _Run(services, tmp_path, seed=seed)
    # The agent and the worker are cancelled on purpose once Prometheus has the final state.
    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(run.main())
    with run.engine.connect() as conn:
        held = conn.execute(
            select(holds.c.subject_id).where(holds.c.status == "active", holds.c.subject_type == "shipment")
        ).scalars()
        stored = conn.execute(select(func.count()).select_from(readings)).scalar_one()
        result = DashboardScenario(
            postgres_dsn=run.database_url,
            influxdb=services.influxdb,
            influx_db=INFLUX_DB,
            prometheus=services.prometheus,
            from_ms=run.start_ms - 5 * 60_000,
            to_ms=run.end_ms,
            held_shipments=frozenset(held),
            stored_readings=int(stored),
        )
    run.engine.dispose()
    return result


class _Run:
    """The scenario's pieces, set up before the event loop starts; :meth:`main` runs them."""

    def __init__(self, services: Services, tmp_path: Path, *, seed: int) -> None:
        s = self.s = services
        s.influxdb.create_database(INFLUX_DB)
        self.database_url = fresh_postgres_url(s.postgres)
        self.engine = open_database(self.database_url)
        # Metrics ports are chosen now and the targets handed to Prometheus at once: it batches
        # discovery updates every 5 s, which passes while the agent and the worker start.
        agent_port, worker_port = free_port(), free_port()
        self.targets = [f"{LOOPBACK}:{agent_port}", f"{LOOPBACK}:{worker_port}"]
        s.prometheus.set_targets(
            "agents", [TargetGroup((self.targets[0],), {"job": AGENT_JOB, "gateway": GATEWAY, "site": SITE})]
        )
        s.prometheus.set_targets("workers", [TargetGroup((self.targets[1],), {"job": WORKER_JOB})])
        self.discovered_after = time.time()

        # Newer than any manifest another test may have left retained for this gateway id (the agent
        # ignores versions at or below the one in force).
        self.version = time.time_ns() // 1_000_000_000
        self.start_ms = _now_ms() // 60_000 * 60_000 - DURATION_S * 1000
        self.truth = TruthWriter(keep=True)
        self.simulation = Simulation(
            reefer_failure(), devices=DEVICES, seed=seed, start_ms=self.start_ms, truth=self.truth
        )
        tmp_path.mkdir(parents=True, exist_ok=True)
        toml = agent_toml(
            tmp_path,
            pki=s.pki,
            identity=s.identity,
            local=s.gateway_broker,
            cloud=s.cloud_broker,
            gateway=s.gateway,
        )
        self.agent = EdgeAgent(AgentSettings.load(toml).model_copy(update={"metrics_port": agent_port}))
        self.yard = GatewaySim(gateway_id=yard.GATEWAY, site_id=yard.SITE)
        with self.engine.begin() as conn:
            register_gateway(conn, GATEWAY, s.gateway.signing_public_key, site_id=SITE, now_ms=self.start_ms)
            self.operator_key = create_key(
                conn, role=ApiRole.OPERATOR, name="planner", now_ms=self.start_ms
            ).key
        self.yard.register(self.engine)
        service = s.identity(Role.SERVICE, "svc-ingest")
        self.broker = BrokerSettings(
            url=f"mqtts://localhost:{s.cloud_broker.port}",
            ca_file=s.pki.ca_bundle_path,
            cert_file=service.cert_path,
            key_file=service.key_path,
            share_group="grafana",
            # Its own session, ended at disconnect: the cloud broker is shared with other tests.
            client_id="svc-ingest-grafana",
            session_expiry_s=0,
        )
        self.worker_port = worker_port
        self.end_ms = 0

    async def main(self) -> None:
        """Run everything, telemetry going to InfluxDB 1.6; fail if it refused a line of it."""
        async with InfluxV2Relay(self.s.influxdb) as relay:
            try:
                await self._run(relay)
            finally:
                assert not relay.refused, f"InfluxDB 1.6 refused the cloud's line protocol: {relay.refused}"

    async def _run(self, relay: InfluxV2Relay) -> None:
        settings = CloudSettings(
            database_url=self.database_url,
            broker=self.broker,
            metrics_port=self.worker_port,
            telemetry=TelemetrySettings(url=relay.url, bucket=INFLUX_DB, retry_initial_s=0.1),
            housekeeping_interval_s=0.5,
        )
        worker = Worker(self.engine, settings, metrics=CloudMetrics())
        async with (
            MqttManifestPublisher(self.broker, client_id="svc-ingest-grafana-api") as publisher,
            asyncio.TaskGroup() as tg,
        ):
            worker_task = tg.create_task(worker.run(), name="worker")
            agent_task = tg.create_task(self.agent.run(), name="agent")
            async with asyncio.timeout(WAIT_S):
                await self.agent.ready()
            await poll(
                lambda: worker.consumer is not None and worker.consumer.subscribed.is_set(),
                within_s=WAIT_S,
                what="the worker subscribed",
            )
            # Rates need samples from before the traffic: wait for a scrape of the idle pair.
            await asyncio.to_thread(
                self.s.prometheus.wait_scraped, self.targets, after=self.discovered_after, timeout=WAIT_S
            )
            api = TestClient(create_app(engine=self.engine, settings=settings, publisher=publisher))
            await self._push_manifest(api)
            events_done = await self._yard_batches()
            await self._fleet()
            await _final_scrape(self.s.prometheus, self.engine)
            await asyncio.to_thread(
                self.s.prometheus.wait_scraped,
                self.targets,
                after=events_done + RATE_WINDOW_S,
                timeout=WAIT_S,
            )
            # The range ends here: once the agent and the worker stop, the next scrape fails and
            # Prometheus marks their series stale - a dashboard looked at later shows them gone.
            self.end_ms = _now_ms()
            agent_task.cancel()
            await asyncio.wait([agent_task])
            # Leave no retained manifest for this gateway id behind for other tests' agents.
            await publisher.client.publish(
                gateway_command(GATEWAY, GatewayCommand.MANIFEST), b"", qos=1, retain=True
            )
            worker_task.cancel()

    async def _push_manifest(self, api: TestClient) -> None:
        """The cloud pushes the manifest through its API; the agent binds readings with it."""
        entries = [manifest_entry(b) for b in self.simulation.bindings()]
        manifest = Manifest(
            devices=tuple(entries),
            gateway_id=GATEWAY,
            issued_ms=self.start_ms,
            site_id=SITE,
            version=self.version,
        )
        response = await asyncio.to_thread(
            api.post,
            "/v1/manifests",
            content=canonical_bytes(manifest),
            headers={"Authorization": f"Bearer {self.operator_key}", "Content-Type": "application/json"},
        )
        assert response.status_code == 201, response.text
        await poll(
            lambda: self.agent.registry.version == self.version,
            within_s=WAIT_S,
            what=f"the agent has manifest {self.version}",
        )

    async def _yard_batches(self) -> float:
        """Publish the yard gateway's batches; returns when the last had its effect (Unix time)."""
        frames = yard.yard_frames(self.yard, self.start_ms)
        who = self.s.identity(Role.GATEWAY, yard.GATEWAY)
        client = MqttClient(
            client_id=yard.GATEWAY,
            broker=self.broker.broker,
            tls=TlsFiles(ca_file=self.s.pki.ca_bundle_path, cert_file=who.cert_path, key_file=who.key_path),
        )
        topic = gateway_batches(yard.GATEWAY)
        await client.connect()
        for frame in (frames.first, frames.second):
            await client.publish(topic, frame, qos=1)
        # The resend and the tampered frame wait until Prometheus has scraped the duplicate counter at
        # 0 (it appears with the first batch): a counter first seen at its final value never increases,
        # and the rate panels would show nothing.
        await _scraped(
            self.s.prometheus, 'sum(coldtrace_cloud_readings_total{result="duplicate"})', lambda v: v == 0
        )
        for frame in (frames.first, frames.tampered):
            await client.publish(topic, frame, qos=1)
        await client.disconnect()
        await poll(
            lambda: count_rows(self.engine, rejects) == 1, within_s=WAIT_S, what="the tampered batch refused"
        )
        return time.time()

    async def _fleet(self) -> None:
        """Run the simulated fleet through the agent; return once the cloud stored and wrote it all."""
        s = self.s
        loadgen = s.identity(Role.SERVICE, "sim-loadgen")
        config = RunConfig(
            brokers=(BrokerUrl(host=s.gateway_broker.host, port=s.gateway_broker.port, tls=True),),
            ca_file=s.pki.ca_bundle_path,
            mode=ConnectionMode.MULTIPLEXED,
            speed=0.0,
            loadgen=TlsFiles(
                ca_file=s.pki.ca_bundle_path, cert_file=loadgen.cert_path, key_file=loadgen.key_path
            ),
        )
        summary = await run_fleet(self.simulation, config)
        assert summary.acknowledged == summary.published
        sent = sum(1 for r in self.truth.records if isinstance(r, SampleTruth) and r.fate is Fate.SENT)
        expected = sent + yard.READINGS
        await poll(
            lambda: count_rows(self.engine, readings) >= expected,
            within_s=WAIT_S,
            what=f"{expected} readings stored",
        )
        await poll(
            lambda: count_rows(self.engine, telemetry_spool) == 0,
            within_s=WAIT_S,
            what="the telemetry spool drained to InfluxDB",
        )


async def _final_scrape(prometheus: Prometheus, engine: Engine) -> None:
    """Wait until Prometheus holds the final state: what the database says, the scraped metrics say."""
    with engine.connect() as conn:
        active_holds = conn.execute(select(func.count()).select_from(holds).where(holds.c.status == "active"))
        held = int(active_holds.scalar_one())
    stored = count_rows(engine, readings)
    checks: list[tuple[str, Callable[[float], bool]]] = [
        ('sum(coldtrace_cloud_readings_total{result="accepted"})', lambda v: v == stored),
        ('sum(coldtrace_cloud_readings_total{result="duplicate"})', lambda v: v == yard.FIRST_BATCH),
        ("sum(coldtrace_cloud_rejects_total)", lambda v: v == 1),
        ("max(coldtrace_cloud_active_holds)", lambda v: v == held),
        ("max(coldtrace_cloud_spool_rows)", lambda v: v == 0),
        ("sum(coldtrace_agent_outbox_readings)", lambda v: v == 0),
    ]
    for promql, ok in checks:
        await _scraped(prometheus, promql, ok)


async def _scraped(prometheus: Prometheus, promql: str, ok: Callable[[float], bool]) -> None:
    """Wait until the instant query ``promql`` (one value) satisfies ``ok`` in Prometheus."""
    data = await asyncio.to_thread(prometheus.wait_for, promql, lambda d: ok(_value(d)), timeout=WAIT_S)
    if not ok(_value(data)):
        raise TimeoutError(f"Prometheus never showed the expected state: {promql} = {_value(data)}")


def _value(data: dict[str, Any]) -> float:
    """The single value of an instant query (NaN when there is none)."""
    result = data["result"]
    return float(result[0]["value"][1]) if result else float("nan")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
