"""Simulator scenarios end to end: devices → gateway broker → edge agent → cloud broker → worker → SQL.

The cloud's manifests go out through the API and the cloud broker to the agent, which binds readings
with them; the simulator's ground truth says which shipments truly left their range.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from certs.pki import IssuedIdentity, Pki, Role
from cloud_ingest.api.app import create_app
from cloud_ingest.db.engine import open_database
from cloud_ingest.db.tables import alerts, holds, readings
from cloud_ingest.keys import Role as ApiRole
from cloud_ingest.keys import create_key
from cloud_ingest.metrics import CloudMetrics
from cloud_ingest.publisher import MqttManifestPublisher
from cloud_ingest.registry import register_gateway
from cloud_ingest.settings import BrokerSettings, CloudSettings
from cloud_ingest.worker import Worker
from coldtrace.contract.canonical import canonical_bytes
from coldtrace.contract.manifest import Manifest
from coldtrace.demo.scenario import manifest_entry
from coldtrace.mqtt import BrokerUrl, TlsFiles
from edge_agent.agent import EdgeAgent
from edge_agent.settings import AgentSettings
from firmware_sim.fleet import Simulation
from firmware_sim.runner import ConnectionMode, RunConfig, run_fleet
from firmware_sim.scenario import builtin_scenarios
from firmware_sim.truth import Fate, SampleTruth, TruthWriter
from tests.cloud_ingest.builders import count_rows
from tests.cloud_ingest.conftest import fresh_postgres_url
from tests.cloud_ingest.drills_workers import poll
from tests.edge_agent.conftest import GATEWAY, _broker, agent_toml
from tests.harness.enrolled import EnrolledGateway
from tests.harness.mosquitto import Mosquitto
from tests.harness.postgres import Postgres

pytestmark = pytest.mark.services
START_MS = 1_796_000_000_000
Identity = Callable[[Role, str], IssuedIdentity]


@pytest.fixture(scope="module")
def gateway_broker(pki: Pki, server_identity: IssuedIdentity) -> Iterator[Mosquitto]:
    broker = _broker(pki, server_identity)
    broker.start()
    yield broker
    broker.close()


def _manifest(simulation: Simulation) -> Manifest:
    entries = [manifest_entry(b) for b in simulation.bindings()]
    return Manifest(
        devices=tuple(entries), gateway_id=GATEWAY, issued_ms=START_MS, site_id="wh-test", version=1
    )


def run_scenario(
    name: str, *, devices: int, duration_s: float, seed: int, tmp_path: Path, pki: Pki, identity: Identity,
    gateway: EnrolledGateway, gateway_broker: Mosquitto, cloud_broker: Mosquitto, postgres: Postgres,
) -> tuple[Engine, Simulation, TruthWriter]:  # fmt: skip
    """Run scenario ``name`` through a real agent and a real worker; returns the cloud DB and truth."""
    agent = EdgeAgent(AgentSettings.load(agent_toml(
        tmp_path, pki=pki, identity=identity, local=gateway_broker, cloud=cloud_broker, gateway=gateway,
    )))  # fmt: skip
    service = identity(Role.SERVICE, "svc-ingest")
    settings = CloudSettings(
        database_url=fresh_postgres_url(postgres),
        broker=BrokerSettings(
            url=f"mqtts://localhost:{cloud_broker.port}", ca_file=pki.ca_bundle_path,
            cert_file=service.cert_path, key_file=service.key_path, share_group=f"sc-{seed}",
        ),
        metrics_port=0,
    )  # fmt: skip
    engine = open_database(settings.database_url)
    with engine.begin() as conn:
        register_gateway(conn, GATEWAY, gateway.signing_public_key, site_id="wh-test", now_ms=START_MS)
        operator = create_key(conn, role=ApiRole.OPERATOR, name="planner", now_ms=START_MS)
    writer = TruthWriter(keep=True)
    scenario = builtin_scenarios()[name].model_copy(update={"duration_s": duration_s})
    simulation = Simulation(scenario, devices=devices, seed=seed, start_ms=START_MS, truth=writer)
    assert settings.broker is not None

    async def scenario_run() -> None:
        worker = Worker(engine, settings, metrics=CloudMetrics())
        async with (
            MqttManifestPublisher(settings.broker, client_id=f"svc-ingest-api-{seed}") as publisher,  # type: ignore[arg-type]
            asyncio.TaskGroup() as tg,
        ):
            running = [tg.create_task(worker.run()), tg.create_task(agent.run())]
            async with asyncio.timeout(30):
                await agent.ready()
            # The cloud pushes the manifest through its API; the agent binds readings with it.
            api = TestClient(create_app(engine=engine, settings=settings, publisher=publisher))
            body = canonical_bytes(_manifest(simulation))
            response = await asyncio.to_thread(
                api.post, "/v1/manifests", content=body,
                headers={"Authorization": f"Bearer {operator.key}", "Content-Type": "application/json"},
            )  # fmt: skip
            assert response.status_code == 201, response.text
            await poll(lambda: agent.registry.version == 1, within_s=20, what="the agent has manifest 1")
            sim_id = identity(Role.SERVICE, "sim-loadgen")
            ca = pki.ca_bundle_path
            loadgen = TlsFiles(ca_file=ca, cert_file=sim_id.cert_path, key_file=sim_id.key_path)
            config = RunConfig(
                brokers=(BrokerUrl(host=gateway_broker.host, port=gateway_broker.port, tls=True),),
                ca_file=pki.ca_bundle_path, mode=ConnectionMode.MULTIPLEXED, speed=0.0,
                loadgen=loadgen,
            )  # fmt: skip
            summary = await run_fleet(simulation, config)
            assert summary.acknowledged == summary.published
            sent = sum(1 for r in writer.records if isinstance(r, SampleTruth) and r.fate is Fate.SENT)
            await poll(
                lambda: count_rows(engine, readings) >= sent, within_s=180, what="every sent reading stored"
            )
            for task in running:
                task.cancel()

    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(scenario_run())
    return engine, simulation, writer


def _excursion_shipments(simulation: Simulation, writer: TruthWriter, delay_ms: int) -> set[str]:
    """Shipments whose TRUE temperature stayed out of range for at least ``delay_ms`` on some device."""
    shipment = {b.device_id: b.shipment_id for b in simulation.bindings()}
    runs: dict[str, int | None] = {}
    out: set[str] = set()
    for r in sorted((r for r in writer.records if isinstance(r, SampleTruth)), key=lambda r: r.t_sim_ms):
        start = runs.get(r.device_id)
        if r.excursion:
            runs[r.device_id] = start = r.t_sim_ms if start is None else start
            if r.t_sim_ms - start >= delay_ms and shipment[r.device_id]:
                out.add(shipment[r.device_id])  # type: ignore[arg-type]
        else:
            runs[r.device_id] = None
    return out


def _held(engine: Engine) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Temperature alerts and holds. Drops in transit also raise shock alerts (real handling events in
    the simulator's physics), which call for inspection and place no hold."""
    temperature = alerts.c.rule_id.in_(("temp_high", "temp_low", "budget", "mkt"))
    with engine.connect() as conn:
        found = [(a.rule_id, a.subject_id) for a in conn.execute(select(alerts).where(temperature))]
        placed = [(h.subject_type, h.subject_id) for h in conn.execute(select(holds))]
    return found, placed


def test_reefer_failure_holds_the_affected_shipment_once(
    tmp_path: Path, pki: Pki, identity: Identity, enrolled_gateway: EnrolledGateway,
    gateway_broker: Mosquitto, mosquitto_tls: Mosquitto, postgres: Postgres,
) -> None:  # fmt: skip
    engine, simulation, writer = run_scenario(
        "reefer-failure", devices=24, duration_s=4 * 3600, seed=7, tmp_path=tmp_path, pki=pki,
        identity=identity, gateway=enrolled_gateway, gateway_broker=gateway_broker,
        cloud_broker=mosquitto_tls, postgres=postgres,
    )  # fmt: skip
    affected = _excursion_shipments(simulation, writer, delay_ms=15 * 60_000)
    assert affected, "the scenario should break at least one reefer"
    found, placed = _held(engine)
    assert sorted(found) == sorted(("temp_high", s) for s in affected)
    assert sorted(placed) == sorted(("shipment", s) for s in affected)
    # Quality staff see it in the API: the shipment held, its readings, its MKT.
    with engine.begin() as conn:
        auditor = create_key(conn, role=ApiRole.AUDITOR, name="auditor", now_ms=START_MS)
    api = TestClient(create_app(engine=engine, settings=CloudSettings()))
    shipment = sorted(affected)[0]
    view = api.get(f"/v1/shipments/{shipment}", headers={"Authorization": f"Bearer {auditor.key}"})
    assert view.status_code == 200, view.text
    body = view.json()
    assert body["status"] == "held"
    assert len(body["latest_by_device"]) == 8  # eight sensors to a shipment in the simulator
    assert body["excursions"]["total"] >= 1
    assert 2.0 < body["mkt"]["mkt_c"] < 28.0  # MKT over all eight sensors, one of them warming


def test_a_glitch_storm_holds_nothing(
    tmp_path: Path, pki: Pki, identity: Identity, enrolled_gateway: EnrolledGateway,
    gateway_broker: Mosquitto, mosquitto_tls: Mosquitto, postgres: Postgres,
) -> None:  # fmt: skip
    engine, simulation, writer = run_scenario(
        "glitch-storm", devices=24, duration_s=2 * 3600, seed=11, tmp_path=tmp_path, pki=pki,
        identity=identity, gateway=enrolled_gateway, gateway_broker=gateway_broker,
        cloud_broker=mosquitto_tls, postgres=postgres,
    )  # fmt: skip
    assert not _excursion_shipments(simulation, writer, delay_ms=15 * 60_000)
    assert _held(engine) == ([], [])
