"""The full stack a drill breaks, wired through the cloud's own code paths.

    simulator (run_fleet, multiplexed) ──mTLS──▶ gateway Mosquitto gw-0 / gw-1
        ──▶ ``coldtrace agent run`` x 2 (child processes) ──mTLS [through an Uplink relay when the
        drill partitions it]──▶ cloud Mosquitto ──$share──▶ ``coldtrace cloud worker --instance 1|2``
        (child processes) ──▶ PostgreSQL ──telemetry spool──▶ VictoriaMetrics
    cloud API (create_app, in process) ──▶ manifests ──▶ cloud Mosquitto ──▶ agents

Gateways are registered, and an admin key made, the way the demo's cloud does it
(:func:`coldtrace.demo.cloud.prepare_database`); manifests are posted to ``/v1/manifests`` and
pushed by the API to each gateway over the cloud broker, which is how the agents learn shipments and
lots. A drill hands :meth:`Stack.run` a coroutine that breaks something at a simulated moment
(:class:`~coldtrace.demo.clock.SimClock`); the stack then waits until every reading the devices sent
is accounted for and takes a :class:`Snapshot` of what the processes report, for the checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Collection, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from certs.pki import Pki, Role
from cloud_ingest.api.app import create_app
from cloud_ingest.db.tables import batches, markers, readings, rejects
from cloud_ingest.publisher import MqttManifestPublisher
from cloud_ingest.settings import CloudSettings
from coldtrace.contract import ContractError
from coldtrace.contract.batch import GENESIS_HASH, Batch, decode_body, open_frame, sign_batch
from coldtrace.contract.canonical import canonical_bytes
from coldtrace.contract.topics import gateway_batches
from coldtrace.demo.clock import SimClock
from coldtrace.demo.cloud import Database, prepare_database
from coldtrace.demo.scenario import SITES, manifests
from coldtrace.demo.uplink import Uplink
from coldtrace.demo.workdir import INGEST_IDENTITY, LOADGEN_IDENTITY, agent_identity
from coldtrace.mqtt import BrokerUrl, MqttClient, TlsFiles
from firmware_sim.fleet import gateway_id
from firmware_sim.runner import ConnectionMode, RunConfig, RunSummary, run_fleet
from firmware_sim.truth import TruthWriter
from tests.cloud_ingest.builders import reading
from tests.cloud_ingest.drills_checks import spool_rows
from tests.cloud_ingest.drills_workers import WorkerProcess, cloud_settings, poll, write_config
from tests.drills.agents import AgentFiles, AgentProcess, counter_by_label, write_agent_config
from tests.drills.scenario import FleetPlan, Key, Truth
from tests.harness.mosquitto import Mosquitto
from tests.harness.postgres import Postgres
from tests.harness.victoriametrics import VictoriaMetrics

logger = logging.getLogger(__name__)

WORKERS = 2
SHARE_GROUP = "drill"
#: A registered gateway identity that only ever sends refusable frames (see :meth:`Stack.send_rogue`).
ROGUE = "gw-rogue"
#: The rejects every drill provokes on purpose once the stack has settled, by reason.
ROGUE_REJECTS = Counter({"bad_signature": 1, "unknown_key": 1})
SETTLE_S = 120.0
#: How often an agent refreshes the outbox figures its /health reports (edge_agent.agent housekeeping).
AGENT_REFRESH_S = 1.0
#: How long a drill's fault may go on after the fleet has finished publishing.
FAULTS_AFTER_FLEET_S = 90.0
START_S = 60.0

Faults = Callable[["Stack", SimClock], Coroutine[Any, Any, None]]


@dataclass(frozen=True, slots=True)
class Servers:
    """One drill's own servers (started by the fixtures): nothing else shares them."""

    pki: Pki
    gateway_brokers: Mapping[str, Mosquitto]
    cloud_broker: Mosquitto
    vm: VictoriaMetrics
    postgres: Postgres
    database_url: str
    workdir: Path


@dataclass(slots=True)
class Snapshot:
    """What the running processes reported once the stack had settled."""

    settled: bool
    worker_rejects: Counter[str]
    """Cloud refusals by reason, summed over the workers' /metrics."""
    agent_rejects: dict[str, Counter[str]]
    """Per gateway: device-message refusals by reason from the agent's /metrics."""
    dead_letters: dict[str, list[tuple[str, str, bytes]]]
    """Per gateway: (reason, topic, payload) of each refused device message, from the agent's file."""
    agent_heads: dict[str, tuple[int, str]]
    """Per gateway: (last batch sequence formed, its hash) as the agent reports them."""
    agent_thinned: dict[str, int]
    """Per gateway: readings thinned under the disk budget, from the agent's /metrics."""
    fleet: RunSummary


class Stack:
    """Agents, workers, API and fleet over one drill's servers; ``async with`` starts them."""

    def __init__(
        self, servers: Servers, plan: FleetPlan, *, relayed: Collection[str] = (),
        agent_options: Mapping[str, Mapping[str, int | float | str]] | None = None,
    ) -> None:  # fmt: skip
        self.servers = servers
        self.plan = plan
        self.relayed = set(relayed)
        self.agent_options = dict(agent_options or {})
        self.gateways = [gateway_id(i) for i in range(plan.scenario.gateways)]
        pki = servers.pki
        self.ingest_identity = pki.issue(Role.SERVICE, INGEST_IDENTITY)
        self.loadgen_identity = pki.issue(Role.SERVICE, LOADGEN_IDENTITY)
        self.settings: CloudSettings = cloud_settings(
            database_url=servers.database_url, broker=servers.cloud_broker, pki=pki,
            service=self.ingest_identity, client_id=INGEST_IDENTITY, share_group=SHARE_GROUP,
            telemetry_url=servers.vm.url,
        )  # fmt: skip
        assert self.settings.broker is not None
        config = write_config(servers.workdir / "cloud.toml", self.settings)
        self.workers = [
            WorkerProcess(config, i, servers.workdir / f"worker-{i}.log", client_id=INGEST_IDENTITY)
            for i in range(1, WORKERS + 1)
        ]
        self.agents: dict[str, AgentProcess] = {}
        self.keys: dict[str, Ed25519PrivateKey] = {}
        self.uplinks: dict[str, Uplink] = {}
        self.rogue_key = Ed25519PrivateKey.generate()
        pki.issue(Role.GATEWAY, ROGUE)
        self.database: Database | None = None
        self.api: TestClient | None = None
        self.clock = SimClock(start_ms=plan.start_ms, speed=plan.speed)
        self._exit = contextlib.AsyncExitStack()

    # -- accessors ---------------------------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        """The cloud database (migrated, gateways registered)."""
        assert self.database is not None, "the stack is not started"
        return self.database.engine

    def api_get(self, path: str, **params: Any) -> Any:
        """``GET /v1/…`` as the admin, through the cloud's API; the JSON body (asserts 200)."""
        assert self.api is not None, "the stack is not started"
        response = self.api.get(path, params=params, headers=self._auth())
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text}"
        return response.json()

    def api_post(self, path: str, body: bytes = b"") -> Any:
        """``POST /v1/…`` as the admin; the JSON body (asserts 2xx)."""
        assert self.api is not None, "the stack is not started"
        headers = {**self._auth(), "Content-Type": "application/json"}
        response = self.api.post(path, content=body, headers=headers)
        assert response.status_code in (200, 201), f"POST {path}: {response.status_code} {response.text}"
        return response.json()

    def _auth(self) -> dict[str, str]:
        assert self.database is not None
        return {"Authorization": f"Bearer {self.database.admin_key}"}

    def worker_client_ids(self) -> list[str]:
        """The MQTT client ids the workers use on the cloud broker."""
        return [w.client_id for w in self.workers]

    # -- lifecycle ---------------------------------------------------------------------------------
    async def __aenter__(self) -> Stack:
        try:
            await self._start()
        except BaseException:
            await self._exit.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._exit.aclose()

    async def _start(self) -> None:
        s, pki = self.servers, self.servers.pki
        cloud = s.cloud_broker
        for g in self.relayed:
            self.uplinks[g] = await self._exit.enter_async_context(
                Uplink(name=g, target_host=cloud.host, target_port=cloud.port)
            )
        for i, g in enumerate(self.gateways):
            files = AgentFiles(s.workdir / g)
            cloud_port = self.uplinks[g].port if g in self.uplinks else cloud.port
            local = s.gateway_brokers[g]
            self.keys[g] = write_agent_config(
                files, gateway_id=g, site_id=SITES[i], pki=pki,
                local=pki.issue(Role.SERVICE, agent_identity(g)), cloud=pki.issue(Role.GATEWAY, g),
                local_url=f"mqtts://{local.host}:{local.port}", cloud_url=f"mqtts://127.0.0.1:{cloud_port}",
                extra=dict(self.agent_options.get(g, {})),
            )  # fmt: skip
            self.agents[g] = AgentProcess(g, files, local_broker=local)
        registered = {g: (self.keys[g].public_key(), SITES[i]) for i, g in enumerate(self.gateways)}
        registered[ROGUE] = (self.rogue_key.public_key(), "wh-rogue")
        self.database = await asyncio.to_thread(prepare_database, self.settings, registered, now_ms=_now_ms())
        self._exit.callback(self.database.engine.dispose)

        cloud_offset = cloud.log_size()
        for worker in self.workers:
            worker.start()
        offsets = {g: agent.start() for g, agent in self.agents.items()}
        async with asyncio.TaskGroup() as tg:
            for worker in self.workers:
                tg.create_task(worker.wait_ready(cloud, cloud_offset, within_s=START_S))
            for g, agent in self.agents.items():
                tg.create_task(agent.wait_ready(offsets[g], within_s=START_S))

        assert self.settings.broker is not None
        publisher = await self._exit.enter_async_context(
            MqttManifestPublisher(self.settings.broker, client_id=f"{INGEST_IDENTITY}-api")
        )
        self.api = TestClient(create_app(engine=self.engine, settings=self.settings, publisher=publisher))
        self._exit.callback(self.api.close)
        # Manifests need the simulation's bindings, which do not depend on the run: any instance will do.
        simulation = self.plan.simulation(TruthWriter())
        for g, manifest in manifests(simulation, issued_ms=_now_ms()).items():
            body = await asyncio.to_thread(self.api_post, "/v1/manifests", canonical_bytes(manifest))
            assert body["published_ms"] is not None, f"manifest of {g} stored but not pushed: {body}"
        await poll(
            lambda: all(a.health()["manifest_version"] == 1 for a in self.agents.values()),
            within_s=START_S, what="every agent holding manifest 1",
        )  # fmt: skip

    def stop(self) -> dict[str, int | None]:
        """SIGTERM every agent and worker; their exit statuses by name."""
        codes: dict[str, int | None] = {f"agent {g}": a.stop() for g, a in self.agents.items()}
        codes.update({f"worker {w.instance}": w.stop() for w in self.workers})
        return codes

    def logs(self) -> str:
        """The tails of every process log, for failure messages."""
        parts = [f"--- agent {g} ---\n{a.log_text()[-2500:]}" for g, a in self.agents.items() if a.proc]
        parts += [f"--- worker {w.instance} ---\n{w.log_text()[-2500:]}" for w in self.workers if w.proc]
        return "\n".join(parts)

    # -- the run -----------------------------------------------------------------------------------
    async def run(self, faults: Faults | None = None) -> tuple[Truth, Snapshot]:
        """Publish the fleet while ``faults`` runs; settle; provoke the control rejects; snapshot."""
        writer = TruthWriter(keep=True)
        simulation = self.plan.simulation(writer)
        s = self.servers
        loadgen = TlsFiles(ca_file=s.pki.ca_bundle_path, cert_file=self.loadgen_identity.cert_path,
                           key_file=self.loadgen_identity.key_path)  # fmt: skip
        config = RunConfig(
            brokers=tuple(BrokerUrl(host=b.host, port=b.port, tls=True) for b in s.gateway_brokers.values()),
            ca_file=s.pki.ca_bundle_path, mode=ConnectionMode.MULTIPLEXED, speed=self.plan.speed,
            connections=2, loadgen=loadgen,
        )  # fmt: skip
        async with asyncio.TaskGroup() as tg:
            faulting = None if faults is None else tg.create_task(faults(self, self.clock), name="faults")
            fleet = await run_fleet(
                simulation, config, on_progress=lambda sim_s, _: self.clock.advance(sim_s)
            )
            self.clock.run_free()
            if faulting is not None:
                try:
                    await asyncio.wait_for(faulting, FAULTS_AFTER_FLEET_S)
                except TimeoutError as exc:
                    # Simulated time stops with the fleet: a fault waiting for a later moment never runs.
                    raise TimeoutError(
                        f"the drill's fault still ran {FAULTS_AFTER_FLEET_S:g} s after the fleet ended"
                    ) from exc
        assert fleet.acknowledged == fleet.published, f"the gateway brokers refused device messages: {fleet}"
        truth = Truth.of(writer, simulation)
        settled = await self.settle(truth)
        await self.send_rogue()
        return truth, await asyncio.to_thread(self._snapshot, settled, fleet)

    async def settle(self, truth: Truth) -> bool:
        """Wait until every sent reading is accounted for, the outboxes and the spool are empty.

        A reading is accounted for once stored, thinned at its gateway (a marker says so) or carried
        by a batch the cloud refused and dead-lettered. Returns False on timeout: the checks then say
        exactly what is missing.
        """
        sent = len(truth.sent())
        steady: dict[str, Any] = {}

        def done() -> bool:
            procs: list[AgentProcess | WorkerProcess] = [*self.agents.values(), *self.workers]
            for proc in procs:
                if not proc.alive:
                    raise RuntimeError(f"a process died before the stack settled:\n{self.logs()}")
            if not (
                all(a.drained() for a in self.agents.values())
                and accounted(self.engine, self.gateways) >= sent
                and spool_rows(self.engine) == 0
            ):
                steady.clear()
                return False
            # The agents refresh what /health reports once a second, so a drained outbox there may
            # predate the last batch: only a state that held for longer than that is current.
            heads = {g: a.health()["outbox"].get("head_hash") for g, a in self.agents.items()}
            now = time.monotonic()
            if steady.get("heads") != heads:
                steady.update(heads=heads, since=now)
                return False
            return bool(now - steady["since"] > AGENT_REFRESH_S + 0.5)

        try:
            await poll(done, within_s=SETTLE_S, what=f"{sent} readings accounted for")
        except TimeoutError as exc:
            logger.warning("%s (stored %d)", exc, count(self.engine, readings))
            return False
        return True

    async def send_rogue(self) -> None:
        """Provoke one reject of each reason in ``ROGUE_REJECTS`` and wait until both are dead-lettered.

        A registered gateway sends a frame with one byte of its body changed (``bad_signature``) and
        one signed with a key the cloud does not know (``unknown_key``): every drill then has refusals
        whose reasons the workers' metrics and the ``rejects`` table must agree on.
        """
        s = self.servers
        who = s.pki.identity(Role.GATEWAY, ROGUE)
        before = count(self.engine, rejects)
        good = sign_batch(_rogue_batch(ROGUE), self.rogue_key)
        tampered = good[:-2] + bytes([good[-2] ^ 0x01]) + good[-1:]
        unknown = sign_batch(_rogue_batch(ROGUE), Ed25519PrivateKey.generate())
        client = MqttClient(
            client_id=ROGUE, broker=BrokerUrl(host=s.cloud_broker.host, port=s.cloud_broker.port, tls=True),
            tls=TlsFiles(ca_file=s.pki.ca_bundle_path, cert_file=who.cert_path, key_file=who.key_path),
        )  # fmt: skip
        await client.connect()
        try:
            for frame in (tampered, unknown):
                await client.publish(gateway_batches(ROGUE), frame, qos=1)
        finally:
            await client.disconnect()
        expected = before + sum(ROGUE_REJECTS.values())
        await poll(
            lambda: count(self.engine, rejects) >= expected, within_s=30, what="the rogue frames refused"
        )

    def _snapshot(self, settled: bool, fleet: RunSummary) -> Snapshot:
        worker_rejects: Counter[str] = Counter()
        for w in self.workers:
            assert w.port is not None
            worker_rejects.update(counter_by_label(w.port, "coldtrace_cloud_rejects_total", "reason"))
        heads: dict[str, tuple[int, str]] = {}
        for g, a in self.agents.items():
            outbox = a.health()["outbox"]
            heads[g] = (int(outbox["next_batch_seq"]) - 1, str(outbox["head_hash"]))
        return Snapshot(
            settled=settled, worker_rejects=worker_rejects,
            agent_rejects={g: a.rejects_by_reason() for g, a in self.agents.items()},
            dead_letters={g: a.dead_letters() for g, a in self.agents.items()},
            agent_heads=heads,
            agent_thinned={g: int(a.metric("coldtrace_agent_readings_thinned_total") or 0)
                           for g, a in self.agents.items()},
            fleet=fleet,
        )  # fmt: skip


@contextlib.contextmanager
def paused(pids: Iterable[int]) -> Iterator[None]:
    """SIGSTOP the processes for the block (a hang: sockets stay open, nothing is read), then SIGCONT."""
    frozen = list(pids)
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)


# -- what the cloud holds --------------------------------------------------------------------------------
def count(engine: Engine, table: Any) -> int:
    """Rows in ``table``."""
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def stored_batches(engine: Engine, gateway: str) -> int:
    """Batches of ``gateway`` stored."""
    with engine.connect() as conn:
        query = select(func.count()).select_from(batches).where(batches.c.gateway_id == gateway)
        return int(conn.execute(query).scalar_one())


def thinned_count(engine: Engine) -> int:
    """Readings the gateways' markers say were thinned."""
    with engine.connect() as conn:
        query = select(func.coalesce(func.sum(markers.c.count), 0)).where(markers.c.kind == "thinned")
        return int(conn.execute(query).scalar_one())


@dataclass(frozen=True, slots=True)
class RefusedFrame:
    """A batch of one of the drill's gateways that the cloud refused and dead-lettered."""

    reason: str
    received_ms: int
    batch: Batch


def refused_frames(engine: Engine, gateways: Collection[str]) -> list[RefusedFrame]:
    """Every dead-lettered frame sent for one of ``gateways``, decoded (signatures are not re-checked)."""
    out: list[RefusedFrame] = []
    with engine.connect() as conn:
        rows = conn.execute(
            select(rejects.c.reason, rejects.c.received_ms, rejects.c.raw, rejects.c.topic)
            .where(rejects.c.topic.in_(sorted(gateways)))
            .order_by(rejects.c.id)
        ).all()
    for row in rows:
        assert row.raw is not None, f"a refused frame of {row.topic} was not kept whole ({row.reason})"
        try:
            batch = decode_body(open_frame(bytes(row.raw)).body)
        except ContractError as exc:
            raise AssertionError(f"a refused frame of {row.topic} does not decode: {exc}") from exc
        out.append(RefusedFrame(row.reason, row.received_ms, batch))
    return out


def refused_keys(engine: Engine, gateways: Collection[str]) -> set[Key]:
    """Readings carried by refused frames of ``gateways``."""
    return {(r.device_id, r.seq) for f in refused_frames(engine, gateways) for r in f.batch.readings}


def accounted(engine: Engine, gateways: Collection[str]) -> int:
    """Readings stored, thinned at a gateway, or carried by a refused batch."""
    return count(engine, readings) + thinned_count(engine) + len(refused_keys(engine, gateways))


def _rogue_batch(gateway: str) -> Batch:
    now = _now_ms()
    one = reading(f"{gateway}-dev", 1, now, 5.0, shipment_id=None, lot_ids=(), site_id="wh-rogue")
    return Batch(batch_seq=1, created_ms=now, gateway_id=gateway, prev_hash=GENESIS_HASH, readings=(one,),
                 schema_version=1)  # fmt: skip


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
