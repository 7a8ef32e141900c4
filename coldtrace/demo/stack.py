"""The whole demo: PKI, brokers, sink, cloud, gateways, fleet, partition, summary; stopped in order.

Everything runs in this process and on this event loop, each long-lived piece an async context
manager or a task of one :class:`~coldtrace.demo.background.Background` group:

    fleet (firmware_sim.run_fleet) ──mTLS──▶ gateway brokers gw-0, gw-1 ──▶ EdgeAgent x 2
        ──mTLS through each gateway's Uplink (cut for the partition)──▶ cloud broker
        ──▶ cloud Worker (SQLite) ──▶ telemetry sink (InfluxDB v2 write API)
    cloud API (create_app, HTTPS) ──▶ manifests ──▶ cloud broker ──▶ agents

With ``--services`` the brokers are Mosquitto processes of the demo's own, the database a new one on
the operator's PostgreSQL and the sink the operator's VictoriaMetrics or InfluxDB (:mod:`.services`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import SecretStr
from rich.console import Console
from sqlalchemy import Engine, func, select

from cloud_ingest.db.tables import telemetry_spool
from cloud_ingest.metrics import CloudMetrics
from cloud_ingest.publisher import MqttManifestPublisher
from cloud_ingest.settings import CloudSettings, TelemetrySettings
from cloud_ingest.worker import Worker
from coldtrace.clock import wall_ms
from coldtrace.demo.background import Background
from coldtrace.demo.broker import Acl, MqttBroker, cloud_services, gateway_services, server_tls
from coldtrace.demo.clock import SimClock
from coldtrace.demo.cloud import (
    TELEMETRY_BUCKET,
    TELEMETRY_ORG,
    Database,
    api_server,
    close_consumer,
    cloud_settings,
    demo_telemetry,
    prepare_database,
    push_manifests,
    wait_started,
    wait_subscribed,
)
from coldtrace.demo.errors import ServicesNotConfigured, StackFailed
from coldtrace.demo.gateways import agent_settings, wait_for_manifest
from coldtrace.demo.mosquitto import BrokerTls, MosquittoBroker, find_mosquitto
from coldtrace.demo.progress import Display
from coldtrace.demo.scenario import (
    PARTITION_AT_S,
    PARTITION_S,
    PARTITIONED_GATEWAY,
    SITES,
    GroundTruth,
    demo_scenario,
    ground_truth,
    manifests,
)
from coldtrace.demo.services import (
    HttpStore,
    SinkStore,
    TelemetryStore,
    run_database,
    shown_url,
    stored_point_keys,
)
from coldtrace.demo.settings import DemoSettings, ServiceSettings
from coldtrace.demo.sink import TelemetrySink
from coldtrace.demo.summary import (
    ChainLine,
    GatewayFigures,
    Summary,
    counter_by_label,
    counter_total,
    read_cloud,
    render,
    stored_readings,
    verdicts,
)
from coldtrace.demo.uplink import Uplink
from coldtrace.demo.workdir import (
    INGEST_IDENTITY,
    LOADGEN_IDENTITY,
    DemoPki,
    Workdir,
    agent_identity,
    make_pki,
    write_signing_key,
)
from coldtrace.mqtt import BrokerUrl, TlsFiles
from edge_agent.agent import EdgeAgent
from firmware_sim.fleet import Simulation, gateway_id
from firmware_sim.runner import ConnectionMode, RunConfig, RunSummary, run_fleet
from firmware_sim.truth import TruthWriter

logger = logging.getLogger(__name__)

#: Agents load their anomaly model and compile its features on first start (numba caches them).
AGENT_START_S = 120.0
#: Once every reading is stored, the spool's last chunk reaches the telemetry server within this long.
TELEMETRY_SETTLE_S = 30.0
TELEMETRY_POLL_S = 0.5
#: Agents refresh the figures they report once a second.
AGENT_REPORT_S = 5.0
STATUS_EVERY_S = 0.25


@dataclass(slots=True)
class _Status:
    """What the progress bars show, refreshed by the status task."""

    stored: int = 0
    alerts: int = 0
    holds: int = 0
    expected: int | None = None
    complete: asyncio.Event = field(default_factory=asyncio.Event)
    gateways: str = ""


@dataclass(slots=True)
class Lifetime:
    """What happens after the summary: ``hold_open`` keeps the API up until ``stop`` is set."""

    hold_open: bool
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    holding: bool = False
    """True once the summary is out and the stack only serves the API (a signal then stops it calmly)."""


@dataclass(slots=True)
class _Parts:
    """The running stack."""

    display: Display
    telemetry: TelemetryStore
    cloud_broker: Broker
    local_brokers: dict[str, Broker]
    uplinks: dict[str, Uplink]
    cloud: CloudSettings
    database: Database
    bg: Background
    api_url: str
    agents: dict[str, EdgeAgent] = field(default_factory=dict)

    @property
    def brokers(self) -> list[Broker]:
        """Every broker, the cloud's first."""
        return [self.cloud_broker, *self.local_brokers.values()]


async def run_demo(
    settings: DemoSettings, *, workdir: Workdir, api_socket: socket.socket, console: Console,
    lifetime: Lifetime, started: float,
) -> Summary:  # fmt: skip
    """Run the demo end to end and return its summary (printed, and written to ``summary.json``)."""
    loop = asyncio.get_running_loop()
    scenario = demo_scenario()
    gateway_ids = [gateway_id(i) for i in range(scenario.gateways)]
    material = await asyncio.to_thread(make_pki, workdir, gateway_ids)
    keys = {g: write_signing_key(workdir.gateway_dir(g) / "signing.key") for g in gateway_ids}
    display = Display(console, sim_total_s=scenario.duration_s)
    display.step(
        f"throwaway PKI: root + issuing CA, {3 + 2 * len(gateway_ids)} identities ({workdir.pki_dir})"
    )
    now = wall_ms()
    start_ms = (now - round(scenario.duration_s * 1000)) // 60_000 * 60_000
    clock = SimClock(start_ms=start_ms, speed=settings.speed)
    truth = TruthWriter(workdir.truth, keep=True)
    simulation = Simulation(
        scenario, devices=settings.devices, seed=settings.seed, start_ms=start_ms, truth=truth
    )
    summary: Summary | None = None

    def keep_database() -> bool:
        # A failed run's database is evidence; a kept work directory refers to it.
        return not workdir.temporary or summary is None or not summary.ok

    async with contextlib.AsyncExitStack() as stack:
        stack.enter_context(display)
        stack.callback(truth.close)
        registered = {g: (keys[g].public_key(), SITES[i]) for i, g in enumerate(gateway_ids)}
        parts = await _start(
            stack, settings=settings, workdir=workdir, material=material, api_socket=api_socket,
            display=display, registered=registered, now_ms=now, keep_database=keep_database,
        )  # fmt: skip
        await _start_agents(parts, settings=settings, workdir=workdir, material=material, clock=clock)
        await push_manifests(
            api_url=parts.api_url, ca_file=str(material.pki.ca_bundle_path),
            admin_key=parts.database.admin_key, manifests=manifests(simulation, issued_ms=now),
        )  # fmt: skip
        await wait_for_manifest(parts.agents.values(), version=1)
        display.step("manifest v1 of each gateway posted to the API, pushed to its agent over MQTT")

        fleet, expected = await _drive(parts, simulation=simulation, clock=clock, settings=settings,
                                       material=material, truth=truth)  # fmt: skip
        summary = await _summarize(
            parts, settings=settings, fleet=fleet, expected=expected, simulation=simulation
        )
        summary.elapsed_s = round(loop.time() - started, 1)
        render(summary, console, extra_rows={
            "brokers": "; ".join(b.describe() for b in parts.brokers),
            "telemetry": parts.telemetry.description,
            "database": shown_url(parts.cloud.database_url),
            "files": f"{workdir.path} (summary.json, truth.jsonl, demo.log)"
            + (", removed at exit: keep them with --workdir" if workdir.temporary else ""),
        })  # fmt: skip
        workdir.summary.write_bytes(summary.to_json())
        if lifetime.hold_open:
            _announce(console, parts, ca_file=str(material.pki.ca_bundle_path))
            lifetime.holding = True
            await lifetime.stop.wait()
            console.print("stopping…")
        return summary


class Broker(Protocol):
    """An MQTT broker of the demo: embedded (:class:`MqttBroker`) or Mosquitto (:class:`MosquittoBroker`)."""

    name: str
    host: str
    port: int

    @property
    def url(self) -> str:
        """``mqtts://host:port``."""
        ...

    def describe(self) -> str:
        """One line for the summary."""
        ...


@dataclass(slots=True)
class _Servers:
    """What the cloud and the agents connect to."""

    cloud_broker: Broker
    local_brokers: dict[str, Broker]
    telemetry: TelemetryStore
    telemetry_settings: TelemetrySettings
    database_url: str


async def _embedded_servers(
    stack: contextlib.AsyncExitStack, *, workdir: Workdir, material: DemoPki, gateways: Iterable[str]
) -> _Servers:
    """In-process brokers and telemetry sink; SQLite in the work directory."""
    ca = str(material.pki.ca_bundle_path)
    tls = server_tls(ca_file=ca, cert_file=str(material.server.chain_path),
                     key_file=str(material.server.key_path), crl_file=str(material.pki.crl_path))  # fmt: skip
    sink_token = secrets.token_urlsafe(24)
    sink = await stack.enter_async_context(
        TelemetrySink(token=sink_token, bucket=TELEMETRY_BUCKET, org=TELEMETRY_ORG)
    )
    cloud_broker = await stack.enter_async_context(MqttBroker(name="cloud", tls=tls, acl=_cloud_acl()))
    local_brokers: dict[str, Broker] = {}
    for g in gateways:
        local_brokers[g] = await stack.enter_async_context(MqttBroker(name=g, tls=tls, acl=_gateway_acl(g)))
    workdir.database.parent.mkdir(mode=0o700, exist_ok=True)
    telemetry = demo_telemetry(sink.url, SecretStr(sink_token))
    return _Servers(cloud_broker, local_brokers, SinkStore(sink), telemetry, f"sqlite:///{workdir.database}")


async def _service_servers(
    stack: contextlib.AsyncExitStack, *, services: ServiceSettings, workdir: Workdir, material: DemoPki,
    gateways: Iterable[str], keep_database: Callable[[], bool],
) -> _Servers:  # fmt: skip
    """Mosquitto processes of the demo's own; a new database on the PostgreSQL and the time-series
    server that ``services`` names."""
    if services.database_url is None or services.telemetry_url is None:
        raise ServicesNotConfigured(services.missing())
    store = HttpStore(services)
    stack.push_async_callback(store.aclose)
    await store.check()
    binary = find_mosquitto(services.mosquitto)
    tls = BrokerTls(ca_file=material.pki.ca_bundle_path, cert_file=material.server.chain_path,
                    key_file=material.server.key_path, crl_file=material.pki.crl_path)  # fmt: skip
    brokers_dir = workdir.path / "brokers"

    def mosquitto(name: str, acl: Acl) -> MosquittoBroker:
        return MosquittoBroker(name=name, binary=binary, directory=brokers_dir / name, tls=tls, acl=acl)

    cloud_broker = await stack.enter_async_context(mosquitto("cloud", _cloud_acl()))
    local_brokers: dict[str, Broker] = {}
    for g in gateways:
        local_brokers[g] = await stack.enter_async_context(mosquitto(g, _gateway_acl(g)))
    database_url = await stack.enter_async_context(run_database(services.database_url, keep=keep_database))
    telemetry = demo_telemetry(
        services.telemetry_url, services.telemetry_token, org=services.telemetry_org,
        bucket=services.telemetry_bucket,
    )  # fmt: skip
    return _Servers(cloud_broker, local_brokers, store, telemetry, database_url)


def _cloud_acl() -> Acl:
    return Acl(users=cloud_services(INGEST_IDENTITY))


def _gateway_acl(gateway_id: str) -> Acl:
    return Acl(users=gateway_services(gateway_id, agent=agent_identity(gateway_id), loadgen=LOADGEN_IDENTITY))


async def _start(
    stack: contextlib.AsyncExitStack, *, settings: DemoSettings, workdir: Workdir, material: DemoPki,
    api_socket: socket.socket, display: Display, registered: dict[str, tuple[Ed25519PublicKey, str]],
    now_ms: int, keep_database: Callable[[], bool],
) -> _Parts:  # fmt: skip
    """Brokers, telemetry and database (embedded or services), uplinks, then the cloud: worker and API."""
    if settings.use_services:
        servers = await _service_servers(
            stack, services=settings.services, workdir=workdir, material=material, gateways=registered,
            keep_database=keep_database,
        )  # fmt: skip
    else:
        servers = await _embedded_servers(stack, workdir=workdir, material=material, gateways=registered)
    cloud_broker = servers.cloud_broker
    uplinks: dict[str, Uplink] = {}
    for g in registered:
        uplinks[g] = await stack.enter_async_context(
            Uplink(name=g, target_host=cloud_broker.host, target_port=cloud_broker.port)
        )
    kind = "Mosquitto brokers" if settings.use_services else "MQTT 5 brokers"
    display.step(
        f"{kind} that require client certificates: cloud {cloud_broker.url}, "
        + ", ".join(f"{g} {b.url}" for g, b in servers.local_brokers.items())
    )
    display.step(servers.telemetry.description)

    cloud = cloud_settings(
        database_url=servers.database_url, pki=material, broker_url=cloud_broker.url,
        telemetry=servers.telemetry_settings, host=settings.host, port=int(api_socket.getsockname()[1]),
    )  # fmt: skip
    database = await asyncio.to_thread(prepare_database, cloud, registered, now_ms=now_ms)
    stack.callback(database.engine.dispose)
    if cloud.broker is None:
        raise StackFailed("the cloud has no broker configured")
    publisher = await stack.enter_async_context(
        MqttManifestPublisher(cloud.broker, client_id=f"{INGEST_IDENTITY}-api")
    )
    bg = await stack.enter_async_context(Background())
    worker = Worker(database.engine, cloud, metrics=CloudMetrics())
    worker_task = bg.start(worker.run(), "cloud-worker", after=lambda: close_consumer(worker))
    server = api_server(database.engine, cloud, publisher)
    api_task = bg.start(
        server.serve(sockets=[api_socket]), "cloud-api", stop=lambda: setattr(server, "should_exit", True)
    )
    await wait_subscribed(worker, worker_task)
    await wait_started(server, api_task)
    api_url = f"https://127.0.0.1:{cloud.api.port}"
    display.step(f"cloud: ingest worker on {shown_url(servers.database_url)}, API {api_url}")
    return _Parts(display, servers.telemetry, cloud_broker, servers.local_brokers, uplinks, cloud, database,
                  bg, api_url)  # fmt: skip


async def _start_agents(
    parts: _Parts, *, settings: DemoSettings, workdir: Workdir, material: DemoPki, clock: SimClock
) -> None:
    """One real edge agent per gateway, on the simulated clock; wait until each is connected both ways."""
    for i, (g, broker) in enumerate(parts.local_brokers.items()):
        agent = EdgeAgent(
            agent_settings(
                g, site_id=SITES[i], workdir=workdir, pki=material, local_url=broker.url,
                cloud_url=f"mqtts://127.0.0.1:{parts.uplinks[g].port}", speed=settings.speed,
            ),
            now_ms=clock.now_ms,
        )  # fmt: skip
        parts.agents[g] = agent
        parts.bg.start(agent.run(), f"agent-{g}")
    async with asyncio.timeout(AGENT_START_S):
        for agent in parts.agents.values():
            await agent.ready()
    parts.display.step(
        f"edge agents {', '.join(parts.agents)}: ingesting from their brokers, linked to the cloud"
    )


async def _drive(
    parts: _Parts, *, simulation: Simulation, clock: SimClock, settings: DemoSettings, material: DemoPki,
    truth: TruthWriter,
) -> tuple[RunSummary, GroundTruth]:  # fmt: skip
    """Run the fleet with the partition, then wait until the cloud and the sink hold every reading."""
    loop = asyncio.get_running_loop()
    scenario = simulation.scenario
    status = _Status()
    estimate = round(settings.devices * scenario.duration_s / scenario.sample_interval_s)
    parts.display.start_bars(expected_readings=estimate)
    parts.bg.start(_watch(parts, status, estimate), "progress")
    cut = list(parts.uplinks.values())[PARTITIONED_GATEWAY]
    parts.bg.start(_partition(clock, cut), "uplink-partition")

    def progress(sim_s: float, run: RunSummary) -> None:
        clock.advance(sim_s)
        parts.display.fleet(sim_s, published=run.published, note=status.gateways)

    ca = material.pki.ca_bundle_path
    config = RunConfig(
        brokers=tuple(BrokerUrl(host=b.host, port=b.port, tls=True) for b in parts.local_brokers.values()),
        ca_file=ca, mode=ConnectionMode.MULTIPLEXED, speed=settings.speed, connections=2,
        loadgen=TlsFiles(
            ca_file=ca, cert_file=material.loadgen.cert_path, key_file=material.loadgen.key_path
        ),
    )  # fmt: skip
    began = loop.time()
    fleet = await run_fleet(simulation, config, on_progress=progress)
    clock.run_free()
    for uplink in parts.uplinks.values():
        await uplink.restore()  # in case the fleet ended inside the partition
    expected = ground_truth(truth.records, simulation.bindings(), parts.cloud.rules.delay_s)
    status.expected = expected.samples_sent
    logger.info("fleet done in %.1f s: %d messages, %d samples sent", loop.time() - began, fleet.published,
                expected.samples_sent)  # fmt: skip
    # A shortfall is not an error here: the summary's verdict reports it with the figures.
    try:
        async with asyncio.timeout(settings.settle_timeout_s):
            await status.complete.wait()
    except TimeoutError:
        logger.warning("the cloud stored %d of %d readings within %g s", status.stored,
                       expected.samples_sent, settings.settle_timeout_s)  # fmt: skip
    else:
        try:
            async with asyncio.timeout(TELEMETRY_SETTLE_S):
                keys = await asyncio.to_thread(stored_point_keys, parts.database.engine)
                # Polled: the server has no notification to await.
                while True:
                    if await parts.telemetry.points(keys) >= len(keys):
                        break
                    await asyncio.sleep(TELEMETRY_POLL_S)
            await _agents_caught_up(parts)
        except TimeoutError:
            logger.warning("the telemetry server or the agents' reports did not catch up with the cloud; %s",
                           await asyncio.to_thread(_spool_state, parts.database.engine))  # fmt: skip
    parts.display.stop_bars()
    return fleet, expected


def _spool_state(engine: Engine) -> str:
    """What the cloud's telemetry spool still holds, for the log when telemetry did not settle."""
    t = telemetry_spool.c
    with engine.connect() as conn:
        rows, points, attempts, due_ms = conn.execute(
            select(func.count(), func.sum(t.points), func.max(t.attempts), func.min(t.next_attempt_ms))
        ).one()
        error = conn.execute(select(t.last_error).where(t.last_error.is_not(None)).limit(1)).scalar()
    if not rows:
        return "the spool is empty"
    return (f"the spool holds {points} points in {rows} rows (most attempts {attempts}, next due in "
            f"{(due_ms - wall_ms()) / 1000:.1f} s, last error: {error or 'none'})")  # fmt: skip


async def _agents_caught_up(parts: _Parts) -> None:
    """Wait until each agent's outbox is empty and its reported chain head is the cloud's.

    The agents refresh the figures ``health()`` reports once a second, so this looks every 100 ms.
    """
    async with asyncio.timeout(AGENT_REPORT_S):
        while True:
            heads = {c[0]: c[2] for c in (await asyncio.to_thread(read_cloud, parts.database.engine)).chains}
            stats = {g: a.health()["outbox"] for g, a in parts.agents.items()}
            if all(
                s.get("readings") == 0
                and s.get("frames_pending") == 0
                and s.get("next_batch_seq") == heads[g] + 1
                for g, s in stats.items()
            ):
                return
            await asyncio.sleep(0.1)


async def _summarize(
    parts: _Parts, *, settings: DemoSettings, fleet: RunSummary, expected: GroundTruth, simulation: Simulation
) -> Summary:
    """Read the outcome back from the cloud's database, the agents and the telemetry; add the verdicts."""
    cloud = await asyncio.to_thread(read_cloud, parts.database.engine)
    keys = await asyncio.to_thread(stored_point_keys, parts.database.engine)
    heads = {g: a.health()["outbox"].get("head_hash") for g, a in parts.agents.items()}
    summary = Summary(
        elapsed_s=0.0, devices=settings.devices, speed=settings.speed, sim_s=simulation.scenario.duration_s,
        messages_published=fleet.published, messages_acknowledged=fleet.acknowledged,
        samples_sent=expected.samples_sent, readings_stored=cloud.readings,
        telemetry_points=await parts.telemetry.points(keys), telemetry_refused=parts.telemetry.refused,
        gateways=[
            GatewayFigures(
                gateway_id=g, messages=counter_total(a.metrics.messages),
                duplicates=counter_total(a.metrics.duplicates),
                rejects=counter_by_label(a.metrics.rejected, "reason"),
                local_alerts=counter_total(a.metrics.local_alerts), head_hash=heads[g],
                uplink_cuts=parts.uplinks[g].cuts,
            )
            for g, a in parts.agents.items()
        ],
        cloud_rejects=cloud.rejects, alerts=cloud.alerts, holds=cloud.holds,
        chains=[ChainLine(g, site, seq, head, heads.get(g), n_batches, n_readings, gaps)
                for g, site, seq, head, n_batches, n_readings, gaps in cloud.chains],
    )  # fmt: skip
    summary.verdicts = verdicts(summary, expected, simulation.bindings())
    return summary


def _announce(console: Console, parts: _Parts, *, ca_file: str) -> None:
    api_url, key = parts.api_url, parts.database.admin_key
    lines = [
        "",
        f"[bold]The cloud API is up:[/] {api_url}  (OpenAPI: {api_url}/openapi.json)",
        f"[bold]Admin API key (shown once):[/] {key}",
        f"Try:  curl --cacert {ca_file} -H 'Authorization: Bearer {key}' {api_url}/v1/holds",
        f"More keys:  COLDTRACE_CLOUD_DATABASE_URL={shown_url(parts.cloud.database_url)} "
        "coldtrace cloud keys create --role quality --name you",
        "Press Ctrl-C to stop.",
    ]
    for line in lines:
        console.print(line, soft_wrap=True)  # never wrapped inside a key or a URL


async def _partition(clock: SimClock, uplink: Uplink) -> None:
    """Cut the gateway's uplink for the scenario's partition, in simulated time."""
    await clock.reached(PARTITION_AT_S)
    await uplink.cut()
    await clock.reached(PARTITION_AT_S + PARTITION_S)
    await uplink.restore()


async def _watch(parts: _Parts, status: _Status, estimate: int) -> None:
    """Refresh the bars from the cloud's database and the agents; flag when every reading is stored."""
    while True:
        status.stored, status.alerts, status.holds = await asyncio.to_thread(
            stored_readings, parts.database.engine
        )
        notes = []
        for g, agent in parts.agents.items():
            backlog = int(agent.health()["outbox"].get("readings", 0) or 0)
            link = "uplink CUT" if not parts.uplinks[g].is_up else "up"
            notes.append(f"{g} {link}, outbox {backlog:,}")
        status.gateways = " · ".join(notes)
        exact = status.expected is not None
        parts.display.cloud(
            status.stored, expected=status.expected if status.expected is not None else estimate, exact=exact,
            note=f"readings stored · alerts {status.alerts} · holds {status.holds}",
        )  # fmt: skip
        if status.expected is not None and status.stored >= status.expected:
            status.complete.set()
        await asyncio.sleep(STATUS_EVERY_S)
