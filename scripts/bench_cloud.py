"""Cloud benchmark: verified readings/s of one worker against a bare writer, and hold latency under load.

    python scripts/bench_cloud.py [--readings 200000] [--gateways 20] [--batch 500] [--rounds 3]
                                  [--rate 10000] [--hold-seconds 40] [--profile DIR] [--quick]

Everything runs on this machine: a private PostgreSQL 15 (fsync on), VictoriaMetrics and one Mosquitto
per part (mutual TLS), all pinned with this script to every core but the last; the consumer under test
runs alone on the last core (``os.sched_setaffinity``).

1. Throughput. Signed, hash-chained frames (``--gateways`` gateways, ``--batch`` readings each, devices
   bound to shipments registered with the vaccines profile, temperatures in range but for rare
   isolated spikes) are queued on the broker for two persistent shared-subscription sessions before
   any consumer runs. Then the bare writer (``scripts/bare_writer.py``: orjson + f-strings to
   ``/api/v2/write``, acknowledge after the write) drains one queue, a bare writer of the measured
   values only another, and one cloud worker
   (``cloud_ingest.worker.Worker``: verify, store exactly once in PostgreSQL, rules, telemetry spool,
   spool drain to VictoriaMetrics, housekeeping) the third. The worker's clock runs from its
   first batch to the commit of the last reading, and separately to the spool's last point confirmed
   by VictoriaMetrics. VictoriaMetrics is warmed up beforehand with a copy of the backlog as each
   consumer writes it, just before the backlog's time (``prime_series``). This runs ``--rounds``
   times (4), each with its own fleet, database and broker, the bare writer first in odd rounds and
   the worker first in even ones: the ratio of each round is reported, and their median.
2. Hold latency. A worker (``rules.delay_s`` of vaccines set to 0) and the API (uvicorn) run while
   gateways publish at ``--rate`` readings/s, a batch every 250 ms each (the edge agent's
   ``batch_max_age_ms``). Once a second one batch also carries an out-of-range reading (no glitch
   score) of a device bound to a shipment that never reported; the clock runs from that batch's
   publish until ``GET /v1/holds?subject_id=<shipment>`` (polled every 20 ms with an API key) shows
   the hold. Baseline, in the same run at each load, on the same broker: the worker and the API
   stopped (and the worker's session ended), the same frames are paced the same way to a bare
   subscriber (``scripts/bare_subscriber.py``) on the worker's core, which acknowledges each message
   as it takes it; the clock runs from a marker batch's publish to its receipt.

Writes the "cloud" section of BENCHMARKS.md (``--quick``: a smoke run of seconds that writes nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import logging
import math
import os
import pstats
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import msgspec  # noqa: E402
import orjson  # noqa: E402
import psycopg  # noqa: E402
import pydantic  # noqa: E402
import sqlalchemy  # noqa: E402
from sqlalchemy import Engine, func, select  # noqa: E402

from certs.pki import Pki, Role  # noqa: E402
from cloud_ingest.db.engine import open_database  # noqa: E402
from cloud_ingest.db.tables import gateways, readings, rejects  # noqa: E402
from cloud_ingest.ingest import Checked, Inbound, Ingestor, IngestResult, Outcome  # noqa: E402
from cloud_ingest.keys import Role as KeyRole  # noqa: E402
from cloud_ingest.keys import create_key  # noqa: E402
from cloud_ingest.metrics import CloudMetrics  # noqa: E402
from cloud_ingest.settings import BrokerSettings, CloudSettings, RuleSettings, TelemetrySettings  # noqa: E402
from cloud_ingest.telemetry.lineproto import reading_lines  # noqa: E402
from cloud_ingest.worker import Worker, run_until_signalled  # noqa: E402
from coldtrace.contract import Reading  # noqa: E402
from coldtrace.contract.batch import HEADER_BYTES, decode_body  # noqa: E402
from coldtrace.contract.reading import ClockQuality, SourceFormat  # noqa: E402
from coldtrace.contract.topics import ALL_GATEWAY_BATCHES, gateway_batches  # noqa: E402
from coldtrace.mqtt import BrokerUrl, MqttClient, TlsFiles  # noqa: E402
from coldtrace.profiles import ProfileName  # noqa: E402
from scripts.bare_writer import core_busy_s, frame_lines  # noqa: E402
from scripts.benchdoc import machine, machine_lines, write_section  # noqa: E402
from tests.cloud_ingest.builders import GatewaySim, add_shipment  # noqa: E402
from tests.harness.mosquitto import DEFAULT_SERVICE_ACL, Mosquitto, MosquittoTlsFiles  # noqa: E402
from tests.harness.ports import free_port  # noqa: E402
from tests.harness.postgres import Postgres  # noqa: E402
from tests.harness.victoriametrics import VictoriaMetrics  # noqa: E402

logger = logging.getLogger("bench_cloud")

PG_BIN = Path("/usr/lib/postgresql/15/bin")
MOSQUITTO_BIN = Path("/usr/sbin/mosquitto")
VM_BIN = Path("/usr/bin/victoria-metrics")
SERVICE = "svc-ingest"  # the certificate (and ACL user) of the worker and of the bare writer
WORKER_CLIENT = f"{SERVICE}-1"  # Worker appends -<instance> to the configured client id
BARE_CLIENT = "svc-bare-1"
#: Part 1's two bare writers by result key: ``bare_writer.py --fields``, client id and share group.
BARE_WRITERS = {
    "bare": ("worker", BARE_CLIENT, "bare"),
    "measured": ("measured", "svc-bare-2", "bare-measured"),
}
BARE_IN_FLIGHT = 2  # part 1: POSTs each bare writer keeps under way (bare_writer.py --in-flight)
RATE_TARGET = 30_000  # part 1: issue #6's floor for the worker's readings/s
RATIO_TARGET = 0.5  # part 1: issue #6's floor for the worker's readings/s over the bare writer's
MODEL_REF = "iforest-v1@0123456789abcdef"
STEP_MS = 10_000  # part 1: one reading per device every 10 s of device time
PRIME_GAP_MS = 60_000  # part 1: the warm-up copy of a round's backlog ends this long before it starts
BATCH_AGE_S = 0.25  # part 2: a gateway sends what it has every 250 ms
HOLD_POLL_S = 0.02  # API poll interval for the first HOLD_SLOW_AFTER_S, then HOLD_SLOW_POLL_S
HOLD_SLOW_AFTER_S = 2.0
HOLD_SLOW_POLL_S = 0.2
HOLD_TIMEOUT_S = 60.0
#: The worker's broker.group_max_frames unless --group-max-frames says otherwise.
DEFAULT_GROUP: int = BrokerSettings.model_fields["group_max_frames"].default


# -- the fleet and its readings ------------------------------------------------------------------
@dataclass(slots=True)
class Device:
    """One logger: its binding, sequence and a temperature random walk inside 3-7 °C."""

    device_id: str
    shipment: str
    lots: tuple[str, ...]
    site: str
    seq: int = 0
    temp: float = 5.0

    def reading(self, t_ms: int, rng: random.Random, *, spike_p: float) -> Reading:
        """The next reading; with probability ``spike_p`` an isolated 8.5-9.5 °C spike (out of range)."""
        self.seq += 1
        self.temp = min(7.0, max(3.0, self.temp + rng.gauss(0.0, 0.08)))
        spike = rng.random() < spike_p
        return Reading(
            anomaly_score=round(rng.uniform(0.01, 0.2), 3), model=MODEL_REF, battery_v=3.6, bound=True,
            clock=ClockQuality.OK, device_id=self.device_id, humidity_pct=round(rng.uniform(40, 60), 1),
            lot_ids=self.lots, seq=self.seq, shipment_id=self.shipment, site_id=self.site,
            source_format=SourceFormat.NATIVE, t_device_ms=t_ms, t_gateway_ms=t_ms + 120,
            temperature_c=round(rng.uniform(8.5, 9.5) if spike else self.temp, 2),
        )  # fmt: skip


def lots_of(shipment: str) -> tuple[str, ...]:
    """The two lots travelling in a shipment."""
    base = shipment.replace("SHP-", "LOT-", 1)
    return (f"{base}-a", f"{base}-b")


@dataclass(frozen=True, slots=True, kw_only=True)
class Fleet:
    """Gateways, each with its devices; ``per_shipment`` neighbouring devices share a shipment."""

    prefix: str
    gateways: int
    devices: int
    per_shipment: int = 10

    def gateway_ids(self) -> list[str]:
        """Gateway ids (also their certificate names)."""
        return [f"gw-{self.prefix}{g:02d}" for g in range(self.gateways)]

    def devices_of(self, g: int) -> list[Device]:
        """Gateway ``g``'s devices."""
        out = []
        for k in range(self.devices):
            shipment = f"SHP-{self.prefix}{(g * self.devices + k) // self.per_shipment:04d}"
            out.append(
                Device(f"dev-{self.prefix}{g:02d}-{k:03d}", shipment, lots_of(shipment), f"site-{g:02d}")
            )
        return out

    def shipments(self) -> list[str]:
        """Every shipment the fleet's devices are bound to."""
        return sorted({d.shipment for g in range(self.gateways) for d in self.devices_of(g)})


def register(engine: Engine, fleet: Fleet, extra_shipments: Sequence[str] = ()) -> list[GatewaySim]:
    """Register the fleet's gateways (fresh signing keys) and shipments with their lots."""
    sims = [GatewaySim(gateway_id=gw, site_id=f"site-{g:02d}") for g, gw in enumerate(fleet.gateway_ids())]
    for sim in sims:
        sim.register(engine)
    for shipment in [*fleet.shipments(), *extra_shipments]:
        add_shipment(engine, shipment, lots_of(shipment), profile=ProfileName.VACCINES.value)
    return sims


def backlog_frames(
    fleet: Fleet, sims: list[GatewaySim], *, per_gateway: int, batch: int, rng: random.Random
) -> dict[str, list[bytes]]:
    """Part 1: each gateway's frames; devices report in turn, ``STEP_MS`` apart each, ending now."""
    start_ms = time.time_ns() // 1_000_000 - (per_gateway // fleet.devices + 1) * STEP_MS
    frames: dict[str, list[bytes]] = {}
    for g, sim in enumerate(sims):
        devices = fleet.devices_of(g)
        pending: list[Reading] = []
        frames[sim.gateway_id] = []
        for i in range(per_gateway):
            k = i % len(devices)
            t_ms = start_ms + (i // len(devices)) * STEP_MS + k * (STEP_MS // len(devices))
            pending.append(devices[k].reading(t_ms, rng, spike_p=0.002))
            if len(pending) == batch or i == per_gateway - 1:
                frames[sim.gateway_id].append(sim.frame(pending, created_ms=t_ms + 200))
                pending = []
    return frames


@dataclass(frozen=True, slots=True)
class Injection:
    """An out-of-range reading of a fresh device and shipment, riding in one gateway batch."""

    index: int
    gateway: int
    batch: int
    shipment: str


def paced_frames(
    fleet: Fleet, sims: list[GatewaySim], *, per_batch: int, batches: int, injections: list[Injection],
    rng: random.Random,
) -> dict[str, list[bytes]]:  # fmt: skip
    """Part 2: ``batches`` frames per gateway of ``per_batch`` in-range readings (+ any injection)."""
    base_ms = time.time_ns() // 1_000_000
    at = {(j.gateway, j.batch): j for j in injections}
    frames: dict[str, list[bytes]] = {}
    for g, sim in enumerate(sims):
        devices = fleet.devices_of(g)
        frames[sim.gateway_id] = []
        i = 0
        for b in range(batches):
            end_ms = base_ms + round((b + 1) * BATCH_AGE_S * 1000)
            batch = []
            for n in range(per_batch):
                t_ms = end_ms - round(BATCH_AGE_S * 1000) + n * round(BATCH_AGE_S * 1000) // per_batch
                batch.append(devices[i % len(devices)].reading(t_ms, rng, spike_p=0.0))
                i += 1
            if (j := at.get((g, b))) is not None:
                device = Device(f"dev-inj-{j.index:03d}", j.shipment, lots_of(j.shipment), f"site-{g:02d}")
                hot = device.reading(end_ms, rng, spike_p=0.0).model_copy(
                    update={"temperature_c": 12.0, "anomaly_score": None, "model": None}
                )
                batch.append(hot)
            frames[sim.gateway_id].append(sim.frame(batch, created_ms=end_ms))
    return frames


# -- the worker under test (child process) ---------------------------------------------------------
class TimedIngestor(Ingestor):
    """The worker's ingestor, timing each batch and noting when the expected readings are committed.

    The consumer stores several batches at once, each in an executor thread: counters take a lock,
    and with ``profile`` each thread records into its own profiler (merged by :meth:`profile`).
    """

    def __init__(
        self, engine: Engine, settings: CloudSettings, *, metrics: CloudMetrics, expected: int | None,
        on_done: Callable[[], object], profile: bool, core: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(engine, settings, metrics=metrics)
        self.expected = expected
        self._on_done = on_done
        self._profile = profile
        self._profilers: dict[int, cProfile.Profile] = {}
        self._lock = threading.Lock()
        self.seconds: list[float] = []
        self.group_sizes: list[int] = []
        self.readings_new = self.rejected = 0
        self.cpu_check = self.cpu_store = 0.0
        """CPU seconds of the threads verifying and storing (the rest of the drain's: the event loop)."""
        self.core = core
        self.first = self.cpu_first = self.done = self.cpu_done = self.busy_first = self.busy_done = 0.0

    def check(self, frames: Sequence[Inbound]) -> Checked:
        """Verify a group as the worker would (under the thread's profiler)."""
        with self._lock:
            if not self.first:
                self.first, self.cpu_first = time.monotonic(), time.process_time()
                self.busy_first = core_busy_s(self.core)
        started = time.thread_time()
        with self._profiled():
            checked = super().check(frames)
        with self._lock:
            self.cpu_check += time.thread_time() - started
        return checked

    def store(self, checked: Checked, *, transport: str) -> list[IngestResult]:
        """Store a group as the worker would; times it from the start of its check."""
        started = time.thread_time()
        with self._profiled():
            results = super().store(checked, transport=transport)
        with self._lock:
            self.cpu_store += time.thread_time() - started
            self.seconds.append(time.perf_counter() - checked.started)
            self.group_sizes.append(len(checked.frames))
            self.readings_new += sum(r.readings_new for r in results)
            self.rejected += sum(r.outcome is Outcome.REJECTED for r in results)
            if self.expected is not None and not self.done and self.readings_new >= self.expected:
                self.done, self.cpu_done = time.monotonic(), time.process_time()
                self.busy_done = core_busy_s(self.core)
                self._on_done()
        return results

    @contextlib.contextmanager
    def _profiled(self) -> Iterator[None]:
        if not self._profile:
            yield
            return
        profiler = self._profilers.setdefault(threading.get_ident(), cProfile.Profile())
        profiler.enable()
        try:
            yield
        finally:
            profiler.disable()

    def profile(self, main: cProfile.Profile, path: str) -> None:
        """Write the event loop's profile merged with every ingest thread's to ``path``."""
        stats = pstats.Stats(main)
        for profiler in self._profilers.values():
            stats.add(profiler)
        stats.dump_stats(path)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0-100) of a non-empty sequence."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


async def worker_child(cfg: dict[str, Any]) -> None:
    """Run one worker; with ``expected`` set, stop once that many readings are committed and spooled out."""
    settings = CloudSettings(
        database_url=cfg["db_url"], broker=BrokerSettings(**cfg["broker"]), metrics_port=0,
        telemetry=TelemetrySettings(url=cfg["vm_url"]), rules=RuleSettings(delay_s=cfg["delay_s"]),
    )  # fmt: skip
    engine = open_database(settings.database_url)
    worker = Worker(engine, settings)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    expected: int | None = cfg.get("expected")
    ingestor = TimedIngestor(
        engine, settings, metrics=worker.metrics, expected=expected, profile=bool(cfg.get("profile")),
        core=cfg["core"],
        on_done=lambda: loop.call_soon_threadsafe(done.set),
    )  # fmt: skip
    worker.ingestor = ingestor
    main_profiler = cProfile.Profile() if cfg.get("profile") else None
    if main_profiler is not None:
        main_profiler.enable()
    runner = asyncio.create_task(run_until_signalled(worker), name="worker")
    if expected is None:
        await runner
        return
    waiter = asyncio.create_task(done.wait())
    await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if runner.done():
        raise SystemExit(f"the worker stopped early: {runner.exception()!r}")
    points = "coldtrace_cloud_telemetry_points_written_total"
    while (worker.metrics.registry.get_sample_value(points) or 0) < cfg["expected_points"]:  # noqa: ASYNC110
        await asyncio.sleep(0.01)  # the drainer counts confirmed points; nothing to await
    spooled = time.monotonic()
    cpu_spooled = time.process_time()
    if main_profiler is not None:
        main_profiler.disable()
        ingestor.profile(main_profiler, cfg["profile"])
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner
    seconds = ingestor.seconds
    result = {
        "readings": ingestor.readings_new,
        "rejected": ingestor.rejected,
        "groups": len(seconds),
        "group_p50": percentile(ingestor.group_sizes, 50),
        "group_max": max(ingestor.group_sizes),
        "seconds": ingestor.done - ingestor.first,
        "rate": ingestor.readings_new / (ingestor.done - ingestor.first),
        "spool_seconds": spooled - ingestor.first,
        "cpu_drain_s": ingestor.cpu_done - ingestor.cpu_first,
        "others_on_core_s": max(
            0.0, ingestor.busy_done - ingestor.busy_first - (ingestor.cpu_done - ingestor.cpu_first)
        ),
        "cpu_spool_s": cpu_spooled - ingestor.cpu_first,
        "cpu_check_s": ingestor.cpu_check,
        "cpu_store_s": ingestor.cpu_store,
        "cpu_total_s": time.process_time(),
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "store_p50_ms": percentile(seconds, 50) * 1000,
        "store_p99_ms": percentile(seconds, 99) * 1000,
        "store_max_ms": max(seconds) * 1000,
    }
    await asyncio.to_thread(Path(cfg["out"]).write_bytes, orjson.dumps(result))
    engine.dispose()


def api_child(cfg: dict[str, Any]) -> None:
    """Serve the cloud API over the benchmark's database."""
    import uvicorn  # noqa: PLC0415 - only the API child needs it

    from cloud_ingest.api.app import create_app  # noqa: PLC0415

    settings = CloudSettings(database_url=cfg["db_url"])
    engine = open_database(settings.database_url, upgrade=False)
    app = create_app(engine=engine, settings=settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=cfg["port"], log_level="warning", access_log=False)
    uvicorn.Server(config).run()


# -- processes and servers (parent) -------------------------------------------------------------------
@dataclass
class Stack:
    """The servers both parts share, the PKI and where temporary files go."""

    tmp: Path
    pki: Pki
    tls: MosquittoTlsFiles
    postgres: Postgres
    vm: VictoriaMetrics
    core: int
    args: argparse.Namespace
    children: list[asyncio.subprocess.Process] = field(default_factory=list)

    def service_tls(self) -> TlsFiles:
        """The worker's (and the bare writer's) certificate."""
        who = self.pki.identity(Role.SERVICE, SERVICE)
        return TlsFiles(ca_file=self.pki.ca_bundle_path, cert_file=who.chain_path, key_file=who.key_path)

    def database(self, name: str) -> str:
        """A fresh database on the shared server; its URL."""
        with psycopg.connect(self.postgres.dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        pg = self.postgres
        return f"postgresql://{pg.user}@{pg.host}:{pg.port}/{name}"

    def broker(self) -> Mosquitto:
        """A fresh broker (no sessions left from another part)."""
        broker = Mosquitto(MOSQUITTO_BIN, self.tls, service_acl=DEFAULT_SERVICE_ACL, log_every_message=False)
        broker.start()
        return broker

    async def spawn(self, name: str, argv: list[str]) -> tuple[asyncio.subprocess.Process, Path]:
        """Start a child with its output in ``<tmp>/<name>.log``."""
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(*argv, stdout=out, stderr=subprocess.STDOUT)
        self.children.append(proc)
        return proc, log

    async def child(
        self, name: str, mode: str, cfg: dict[str, Any]
    ) -> tuple[asyncio.subprocess.Process, Path]:
        """Start this script in a child ``mode`` with ``cfg``."""
        path = self.tmp / f"{name}.json"
        path.write_bytes(orjson.dumps(cfg))
        return await self.spawn(
            name, [sys.executable, __file__, "--child", mode, "--child-config", str(path)]
        )


def tail(log: Path) -> str:
    """The end of a child's log, for error messages."""
    return log.read_text(encoding="utf-8", errors="replace")[-4000:]


async def finish(proc: asyncio.subprocess.Process, log: Path, timeout_s: float) -> None:
    """Wait for a child that stops by itself; fail with its log if it does not, or fails."""
    try:
        async with asyncio.timeout(timeout_s):
            code = await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise SystemExit(f"child did not finish within {timeout_s:.0f} s; its log:\n{tail(log)}") from None
    if code != 0:
        raise SystemExit(f"child failed with status {code}; its log:\n{tail(log)}")


async def stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM a child and wait for it (SIGKILL after 30 s)."""
    if proc.returncode is None:
        proc.terminate()
        try:
            async with asyncio.timeout(30):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


def cpu_seconds(pid: int) -> float:
    """CPU seconds of a live process (its waited-for children included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """CPU seconds of a server and its live children (PostgreSQL backends lead their own process groups).

    Children that exited are in the server's own count of waited-for children.
    """
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid or stat.parent.name == str(pid):
                total += sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total


def server_cpu(stack: Stack, broker: Mosquitto) -> dict[str, float]:
    """CPU seconds so far of PostgreSQL, Mosquitto and VictoriaMetrics."""
    return {
        "postgres": tree_cpu(stack.postgres.process.pid),
        "mosquitto": tree_cpu(broker.process.pid),
        "victoriametrics": tree_cpu(stack.vm.process.pid),
    }


async def prime(stack: Stack, broker: Mosquitto, client_id: str, group: str) -> None:
    """Create a persistent session subscribed to every gateway's batches, then leave it queueing."""
    client = MqttClient(
        client_id=client_id, broker=BrokerUrl.parse(f"mqtts://127.0.0.1:{broker.port}"),
        tls=stack.service_tls(), clean_start=False, session_expiry_s=3600, manual_ack=True,
    )  # fmt: skip
    await client.connect()
    await client.subscribe(f"$share/{group}/{ALL_GATEWAY_BATCHES}", qos=1)
    await client.disconnect()


async def connect_gateways(stack: Stack, broker: Mosquitto, names: list[str]) -> dict[str, MqttClient]:
    """One MQTT connection per gateway, with the gateway's own certificate."""
    clients = {}
    for name in names:
        who = stack.pki.identity(Role.GATEWAY, name)
        clients[name] = MqttClient(
            client_id=name, broker=BrokerUrl.parse(f"mqtts://127.0.0.1:{broker.port}"),
            tls=TlsFiles(ca_file=stack.pki.ca_bundle_path, cert_file=who.chain_path, key_file=who.key_path),
        )  # fmt: skip
        await clients[name].connect()
    return clients


def worker_cfg(stack: Stack, broker: Mosquitto, db_url: str, **extra: Any) -> dict[str, Any]:
    """The worker child's configuration."""
    tls = stack.service_tls()
    delay_s = {str(k): v for k, v in RuleSettings().delay_s.items()}
    delay_s.update(extra.pop("delay_s", {}))
    return {
        "core": stack.core, "db_url": db_url, "vm_url": stack.vm.url, "delay_s": delay_s,
        "broker": {
            "url": f"mqtts://127.0.0.1:{broker.port}", "ca_file": str(tls.ca_file),
            "cert_file": str(tls.cert_file), "key_file": str(tls.key_file), "client_id": SERVICE,
            "share_group": "ingest", "group_max_frames": stack.args.group_max_frames,
        },
        **extra,
    }  # fmt: skip


def count(engine: Engine, what: Any) -> int:
    """A scalar count or sum from the database."""
    with engine.connect() as conn:
        return int(conn.execute(what).scalar_one() or 0)


def committed(engine: Engine) -> int:
    """Readings committed so far (the gateways' counters: cheaper than counting rows)."""
    return count(engine, select(func.sum(gateways.c.readings_accepted)))


def vm_samples(vm: VictoriaMetrics, metric: str, expected: int, *, gateway: str) -> int:
    """Samples of ``metric`` (of gateways matching ``gateway``) VictoriaMetrics holds, once it shows
    ``expected`` (or after 10 s).

    Polls: a series first written moments ago can be missing from the index even after a flush.
    """

    def held(series: list[dict[str, Any]]) -> int:
        return sum(len(s["values"]) for s in series)

    selector = f'{{__name__="{metric}",gateway=~"{gateway}"}}'
    return held(vm.export(selector, until=lambda series: held(series) >= expected))


# -- part 1: throughput --------------------------------------------------------------------------------
def prime_series(vm: VictoriaMetrics, frames: dict[str, list[bytes]]) -> int:
    """Warm VictoriaMetrics up for every consumer before the drains; the points written per consumer.

    Two effects made whoever drained first in a round slower, so each is taken out before any drain:

    - A consumer that writes a device's labels first pays VictoriaMetrics' index work for them.
      Without priming, a bare writer that drained first ran at 70k-76k readings/s and one that
      drained after the worker at 100k.
    - With only the series made (each gateway's first frame), the first drain of a round still cost
      VictoriaMetrics about 0.2 CPU s more for the same 200,000 points (measured with the bare writer
      making one POST at a time, before ``BARE_IN_FLIGHT`` was passed): the bare writer's server CPU
      was 0.91-0.96 s drained first against 0.74-0.77 s second, and it ran at 119k-121k readings/s
      against 125k-142k.

    So the whole backlog is written, as each consumer will write it, earlier by its span plus
    ``PRIME_GAP_MS``: close before it, so normally on the same day (VictoriaMetrics indexes series
    per day). The drains then meet a server in the state continuous ingest keeps it in (bare writer
    131k-141k first, 133k-134k second; server CPU 0.69-0.78 s either way).
    """

    def vaccines(_: Reading) -> str:
        return ProfileName.VACCINES.value  # every shipment's profile, see register()

    batches = {gw: [decode_body(f[HEADER_BYTES:]) for f in fs] for gw, fs in frames.items()}
    times = [r.t_device_ms for bs in batches.values() for b in bs for r in b.readings]
    shift_ms = max(times) - min(times) + PRIME_GAP_MS
    written = 0
    for gateway_id, gateway_frames in frames.items():
        lines: list[str] = []
        for frame, batch in zip(gateway_frames, batches[gateway_id], strict=True):
            written += len(batch.readings)
            lines += reading_lines(batch.readings, gateway_id=gateway_id, profile_of=vaccines).splitlines()
            for fields, _, _ in BARE_WRITERS.values():
                lines += frame_lines(frame, gateway_id, fields=fields)
        earlier = [
            f"{point} {int(t_ms) - shift_ms}" for point, _, t_ms in (line.rpartition(" ") for line in lines)
        ]
        vm.write_lines("\n".join(earlier), precision="ms").raise_for_status()
    return written


def round_prefix(r: int) -> str:
    """Part 1's fleet prefix in round ``r``: each round has its own gateways, devices and series."""
    return f"t{chr(ord('a') + r)}"


async def throughput(stack: Stack) -> dict[str, Any]:
    """Part 1, ``--rounds`` times: the bare writer and the worker drain the same backlog, in turn.

    The machine's speed drifts by a third within a day; alternating which consumer goes first and
    keeping every round's figures shows that drift instead of hiding it in one pair.
    """
    rounds = [await throughput_round(stack, r, bare_first=r % 2 == 0) for r in range(stack.args.rounds)]
    same = {k: rounds[0][k] for k in ("readings", "batches", "fleet")}  # every round's
    return {**same, "rounds": rounds}


async def throughput_round(stack: Stack, r: int, *, bare_first: bool) -> dict[str, Any]:
    """Queue a backlog for both consumers, then let each drain it alone on the consumer's core."""
    args = stack.args
    fleet = Fleet(prefix=round_prefix(r), gateways=args.gateways, devices=args.devices)
    per_gateway = args.readings // args.gateways
    total = per_gateway * args.gateways
    db_url = stack.database(f"bench_throughput_{r + 1}")
    engine = open_database(db_url)
    sims = register(engine, fleet)
    started = time.perf_counter()
    frames = backlog_frames(fleet, sims, per_gateway=per_gateway, batch=args.batch, rng=random.Random(r + 1))  # noqa: S311
    batches = sum(len(f) for f in frames.values())
    logger.info("round %d: built %d frames (%d readings) in %.1f s", r + 1, batches, total,
                time.perf_counter() - started)  # fmt: skip
    broker = stack.broker()
    result: dict[str, Any] = {"round": r + 1, "readings": total, "batches": batches, "fleet": fleet}
    try:
        await prime(stack, broker, WORKER_CLIENT, "ingest")
        for _, client_id, group in BARE_WRITERS.values():
            await prime(stack, broker, client_id, group)
        clients = await connect_gateways(stack, broker, fleet.gateway_ids())
        futures = [
            clients[gw].publish_nowait(gateway_batches(gw), f, qos=1) for gw, fs in frames.items() for f in fs
        ]
        if any(reason.is_failure for reason in await asyncio.gather(*futures)):
            raise SystemExit("the broker refused some batches")
        for client in clients.values():
            await client.disconnect()
        logger.info("round %d: queued %d frames for each consumer", r + 1, batches)
        primed = prime_series(stack.vm, frames)
        for name in ("bare", "worker", "measured") if bare_first else ("worker", "bare", "measured"):
            before = server_cpu(stack, broker)
            if name in BARE_WRITERS:
                drained = await drain_bare(stack, broker, total, r, name)
            else:
                profile = str(Path(args.profile) / "worker.prof") if args.profile and r == 0 else None
                drained = await drain_worker(
                    stack, broker, db_url=db_url, total=total, points=total + batches, r=r, profile=profile
                )
            after = server_cpu(stack, broker)
            drained["servers"] = {k: after[k] - before[k] for k in after}
            logger.info("round %d: %s: %s", r + 1, name, drained)
            result[name] = drained
    finally:
        broker.close()
    stored = count(engine, select(func.count()).select_from(readings))
    refused = count(engine, select(func.count()).select_from(rejects))
    engine.dispose()
    gateway = f"gw-{fleet.prefix}.*"
    metrics = ("reading_temperature_c", "bare_reading_temperature_c", "bare_measured_reading_temperature_c")
    points = {m: vm_samples(stack.vm, m, total + primed, gateway=gateway) - primed for m in metrics}
    if stored != total or refused or result["worker"]["rejected"] or any(v != total for v in points.values()):
        raise SystemExit(f"lost or refused data: {total} sent, {stored} rows, {refused} rejects, {points}")
    return result


async def drain_bare(stack: Stack, broker: Mosquitto, total: int, r: int, name: str) -> dict[str, Any]:
    """Bare writer ``name``'s drain of its queue (see ``BARE_WRITERS``); its figures."""
    tls = stack.service_tls()
    fields, client_id, group = BARE_WRITERS[name]
    out = stack.tmp / f"{name}-result-{r + 1}.json"
    proc, log = await stack.spawn(f"{name}-{r + 1}", [
        sys.executable, str(ROOT / "scripts" / "bare_writer.py"), "--core", str(stack.core),
        "--broker", f"mqtts://127.0.0.1:{broker.port}", "--ca", str(tls.ca_file), "--cert",
        str(tls.cert_file), "--key", str(tls.key_file), "--client-id", client_id, "--share-group",
        group, "--vm", stack.vm.url, "--expected", str(total), "--out", str(out), "--fields", fields,
        "--in-flight", str(BARE_IN_FLIGHT),
    ])  # fmt: skip
    await finish(proc, log, stack.args.timeout)
    drained: dict[str, Any] = orjson.loads(out.read_bytes())
    return drained


async def drain_worker(
    stack: Stack, broker: Mosquitto, *, db_url: str, total: int, points: int, r: int, profile: str | None
) -> dict[str, Any]:
    """The worker's drain of its queue, to the last reading committed and the last point spooled."""
    out = stack.tmp / f"worker-result-{r + 1}.json"
    cfg = worker_cfg(stack, broker, db_url, expected=total, expected_points=points, out=str(out),
                     profile=profile)  # fmt: skip
    proc, log = await stack.child(f"worker-throughput-{r + 1}", "worker", cfg)
    await finish(proc, log, stack.args.timeout)
    drained: dict[str, Any] = orjson.loads(out.read_bytes())
    return drained


# -- part 2: hold latency under load -----------------------------------------------------------------
async def watch_holds(
    http: httpx.AsyncClient, key: str, published: asyncio.Queue[tuple[str, float] | None]
) -> list[float | None]:
    """Time each published excursion (oldest first) until the API lists its hold; None: not within the limit.

    One request at a time: rules place the holds in publish order (batches are handled in arrival
    order), so waiting on the oldest costs no accuracy and keeps the poll load at one request per
    interval however far the worker falls behind.
    """
    headers = {"Authorization": f"Bearer {key}"}
    latencies: list[float | None] = []
    while (item := await published.get()) is not None:
        shipment, at = item
        while True:
            response = await http.get("/v1/holds", params={"subject_id": shipment}, headers=headers)
            seen = time.monotonic()
            response.raise_for_status()
            if response.json()["items"]:
                latencies.append(seen - at)
                break
            if seen - at > HOLD_TIMEOUT_S:
                latencies.append(None)
                break
            await asyncio.sleep(HOLD_POLL_S if seen - at < HOLD_SLOW_AFTER_S else HOLD_SLOW_POLL_S)
    return latencies


async def hold_latency(stack: Stack, rate: int) -> dict[str, Any]:
    """Offer ``--rate`` readings/s to a worker and time each injected excursion to its hold in the API."""
    args = stack.args
    fleet = Fleet(prefix="h", gateways=args.hold_gateways, devices=args.devices)
    per_batch = round(rate * BATCH_AGE_S / fleet.gateways)
    batches = math.ceil((args.warmup + args.hold_seconds + 2) / BATCH_AGE_S)
    injections = [
        Injection(i, i % fleet.gateways, round((args.warmup + i) / BATCH_AGE_S) - 1, f"SHP-inj{i:04d}")
        for i in range(args.hold_seconds)
    ]
    db_url = stack.database(f"bench_hold_{rate}")
    engine = open_database(db_url)
    sims = register(engine, fleet, [j.shipment for j in injections])
    with engine.begin() as conn:
        key = create_key(conn, role=KeyRole.OPERATOR, name="bench", now_ms=time.time_ns() // 1_000_000).key
    started = time.perf_counter()
    frames = paced_frames(
        fleet,
        sims,
        per_batch=per_batch,
        batches=batches,
        injections=injections,
        rng=random.Random(2),  # noqa: S311
    )
    logger.info("built %d frames in %.1f s", batches * fleet.gateways, time.perf_counter() - started)
    broker = stack.broker()
    api_port = free_port()
    try:
        await prime(stack, broker, WORKER_CLIENT, "ingest")
        api, api_log = await stack.child("api", "api", {"db_url": db_url, "port": api_port})
        offset = broker.log_size()
        cfg = worker_cfg(stack, broker, db_url, delay_s={ProfileName.VACCINES.value: 0.0})
        worker, worker_log = await stack.child("worker-hold", "worker", cfg)
        async with asyncio.timeout(60):
            while f"as {WORKER_CLIENT}" not in broker.log_text(offset):  # noqa: ASYNC110 - another process
                await asyncio.sleep(0.1)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=10) as http:
            try:
                async with asyncio.timeout(60):
                    while True:
                        with contextlib.suppress(httpx.TransportError):
                            if (await http.get("/healthz")).status_code == 200:
                                break
                        await asyncio.sleep(0.1)
            except TimeoutError:
                raise SystemExit(f"the API did not come up; its log:\n{tail(api_log)}") from None
            await asyncio.sleep(1.0)  # the worker subscribes after connecting
            clients = await connect_gateways(stack, broker, fleet.gateway_ids())
            result = await _offer_load(
                stack=stack, broker=broker, engine=engine, http=http, key=key, clients=clients,
                frames=frames, injections=injections, worker_pid=worker.pid, api_pid=api.pid,
                per_batch=per_batch,
            )  # fmt: skip
        await stop(worker)
        await stop(api)
        if worker.returncode != 0:
            raise SystemExit(f"the worker failed; its log:\n{tail(worker_log)}")
        await forget(stack, broker, WORKER_CLIENT)  # nothing queues for the stopped worker meanwhile
        transport = await _offer_transport(
            stack=stack, broker=broker, clients=clients, frames=frames, injections=injections,
            per_batch=per_batch, rate=rate,
        )  # fmt: skip
        for client in clients.values():
            await client.disconnect()
    finally:
        broker.close()
    engine.dispose()
    return {"rate": rate, "fleet": fleet, "per_batch": per_batch, **result, "transport": transport}


@dataclass(frozen=True, slots=True)
class Sent:
    """One paced batch as it went out."""

    gateway: int
    batch: int
    at: float
    """``time.monotonic()`` just before the publish."""
    readings: int


async def pace_load(
    *, args: argparse.Namespace, clients: dict[str, MqttClient], frames: dict[str, list[bytes]],
    injections: list[Injection], per_batch: int, on_marker: Callable[[Injection, float], object],
    mark: Callable[[str], Awaitable[None]],
) -> list[Sent]:  # fmt: skip
    """Part 2's load: each gateway publishes its next frame every ``BATCH_AGE_S`` (gateways staggered).

    ``on_marker(injection, at)`` runs as a batch carrying an injection goes out; ``mark("start")`` and
    ``mark("end")`` bracket the measured window (``--warmup`` s after the start, ``--hold-seconds``
    long). Returns once the broker acknowledged every publish; a refusal is fatal.
    """
    by_batch = {(j.gateway, j.batch): j for j in injections}
    sent: list[Sent] = []
    begin = time.monotonic() + 0.5
    names = list(frames)

    async def pace(g: int) -> list[asyncio.Future[Any]]:
        client, topic = clients[names[g]], gateway_batches(names[g])
        futures = []
        for b, frame in enumerate(frames[names[g]]):
            delay = begin + (b + 1 + g / len(names)) * BATCH_AGE_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.monotonic()
            j = by_batch.get((g, b))
            if j is not None:
                on_marker(j, now)
            futures.append(client.publish_nowait(topic, frame, qos=1))
            sent.append(Sent(g, b, now, per_batch + (j is not None)))
        return futures

    async def marker() -> None:
        await asyncio.sleep(begin + args.warmup - time.monotonic())
        await mark("start")
        await asyncio.sleep(args.hold_seconds)
        await mark("end")

    marking = asyncio.create_task(marker())
    pacers = [asyncio.create_task(pace(g)) for g in range(len(names))]
    acks = [f for futures in await asyncio.gather(*pacers) for f in futures]
    await marking
    if any(reason.is_failure for reason in await asyncio.gather(*acks)):
        raise SystemExit("the broker refused some batches")
    return sent


def offered(sent: Sequence[Sent], t0: float, t1: float) -> float:
    """Readings/s published in [t0, t1)."""
    return sum(s.readings for s in sent if t0 <= s.at < t1) / (t1 - t0)


async def _offer_load(
    *,
    stack: Stack, broker: Mosquitto, engine: Engine, http: httpx.AsyncClient, key: str,
    clients: dict[str, MqttClient], frames: dict[str, list[bytes]], injections: list[Injection],
    worker_pid: int, api_pid: int, per_batch: int,
) -> dict[str, Any]:  # fmt: skip
    args = stack.args
    excursions: asyncio.Queue[tuple[str, float] | None] = asyncio.Queue()
    watcher = asyncio.create_task(watch_holds(http, key, excursions))
    marks: dict[str, tuple[float, int, float, dict[str, float], list[float]]] = {}
    cores = sorted(os.sched_getaffinity(0) | {stack.core})

    async def mark(name: str) -> None:
        at, cpu, busy = time.monotonic(), cpu_seconds(worker_pid), [core_busy_s(c) for c in cores]
        others = {
            **server_cpu(stack, broker),
            "API": cpu_seconds(api_pid),
            "this script": time.process_time(),
        }
        marks[name] = (at, await asyncio.to_thread(committed, engine), cpu, others, busy)

    sent = await pace_load(
        args=args, clients=clients, frames=frames, injections=injections, per_batch=per_batch,
        on_marker=lambda j, at: excursions.put_nowait((j.shipment, at)), mark=mark,
    )  # fmt: skip
    offered_until = max(s.at for s in sent)
    excursions.put_nowait(None)
    latencies = await watcher
    total = sum(s.readings for s in sent)
    async with asyncio.timeout(args.timeout):
        while await asyncio.to_thread(committed, engine) < total:  # noqa: ASYNC110 - the worker's commits
            await asyncio.sleep(0.05)
    caught_up = time.monotonic() - offered_until
    (t0, n0, cpu0, srv0, busy0), (t1, n1, cpu1, srv1, busy1) = marks["start"], marks["end"]
    return {
        "injected": len(injections),
        "latencies": [x for x in latencies if x is not None],
        "offered_rate": offered(sent, t0, t1),
        "committed_rate": (n1 - n0) / (t1 - t0),
        "window_s": t1 - t0,
        "worker_busy": (cpu1 - cpu0) / (t1 - t0),
        "servers_busy": {k: (srv1[k] - srv0[k]) / (t1 - t0) for k in srv1},
        "cores_busy": {c: (b1 - b0) / (t1 - t0) for c, b0, b1 in zip(cores, busy0, busy1, strict=True)},
        "caught_up_s": caught_up,
        "core": stack.core,
        "readings": total,
    }


async def forget(stack: Stack, broker: Mosquitto, client_id: str) -> None:
    """End a persistent session (clean start, no expiry), so the broker stops queueing for it."""
    client = MqttClient(
        client_id=client_id, broker=BrokerUrl.parse(f"mqtts://127.0.0.1:{broker.port}"),
        tls=stack.service_tls(), clean_start=True, session_expiry_s=0,
    )  # fmt: skip
    await client.connect()
    await client.disconnect()


async def _offer_transport(
    *, stack: Stack, broker: Mosquitto, clients: dict[str, MqttClient], frames: dict[str, list[bytes]],
    injections: list[Injection], per_batch: int, rate: int,
) -> dict[str, Any]:  # fmt: skip
    """The baseline: the same paced frames to a bare subscriber on the worker's core; publish → receipt."""
    args = stack.args
    tls = stack.service_tls()
    out, ready = stack.tmp / f"bare-sub-{rate}.json", stack.tmp / f"bare-sub-{rate}.ready"
    expected = sum(len(f) for f in frames.values())
    receive_maximum = min(65535, 2 * args.group_max_frames)
    proc, log = await stack.spawn(f"bare-sub-{rate}", [
        sys.executable, str(ROOT / "scripts" / "bare_subscriber.py"), "--core", str(stack.core),
        "--broker", f"mqtts://127.0.0.1:{broker.port}", "--ca", str(tls.ca_file), "--cert",
        str(tls.cert_file), "--key", str(tls.key_file), "--client-id", BARE_CLIENT, "--share-group", "bare",
        "--receive-maximum", str(receive_maximum), "--expected", str(expected), "--ready", str(ready),
        "--out", str(out),
    ])  # fmt: skip
    try:
        async with asyncio.timeout(60):
            while not ready.exists():  # the subscriber touches it once subscribed
                if proc.returncode is not None:
                    raise SystemExit(f"the bare subscriber stopped early; its log:\n{tail(log)}")
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise SystemExit(f"the bare subscriber did not subscribe; its log:\n{tail(log)}") from None
    marks: dict[str, tuple[float, float, dict[str, float], list[float]]] = {}
    cores = sorted(os.sched_getaffinity(0) | {stack.core})

    async def mark(name: str) -> None:
        at, cpu, busy = time.monotonic(), cpu_seconds(proc.pid), [core_busy_s(c) for c in cores]
        marks[name] = (at, cpu, {**server_cpu(stack, broker), "this script": time.process_time()}, busy)

    sent = await pace_load(
        args=args, clients=clients, frames=frames, injections=injections, per_batch=per_batch,
        on_marker=lambda _j, _at: None, mark=mark,
    )  # fmt: skip
    await finish(proc, log, args.timeout)
    names = list(frames)
    arrivals: dict[str, list[float]] = {gateway_batches(name): [] for name in names}
    for topic, at in orjson.loads(out.read_bytes())["arrivals"]:
        arrivals[topic].append(at)
    # One publisher per topic, QoS 1, one subscriber: each topic's batches arrive in publish order.
    for name in names:
        if len(arrivals[gateway_batches(name)]) != len(frames[name]):
            raise SystemExit(
                f"the bare subscriber got {len(arrivals[gateway_batches(name)])} of "
                f"{len(frames[name])} batches of {name}"
            )
    received = {
        (g, b): at for g, name in enumerate(names) for b, at in enumerate(arrivals[gateway_batches(name)])
    }
    at_sent = {(s.gateway, s.batch): s.at for s in sent}
    readings_of = {(s.gateway, s.batch): s.readings for s in sent}
    (t0, cpu0, srv0, busy0), (t1, cpu1, srv1, busy1) = marks["start"], marks["end"]
    return {
        "injected": len(injections),
        "latencies": [received[j.gateway, j.batch] - at_sent[j.gateway, j.batch] for j in injections],
        "offered_rate": offered(sent, t0, t1),
        "delivered_rate": sum(readings_of[k] for k, at in received.items() if t0 <= at < t1) / (t1 - t0),
        "window_s": t1 - t0,
        "consumer_busy": (cpu1 - cpu0) / (t1 - t0),
        "servers_busy": {k: (srv1[k] - srv0[k]) / (t1 - t0) for k in srv1},
        "cores_busy": {c: (b1 - b0) / (t1 - t0) for c, b0, b1 in zip(cores, busy0, busy1, strict=True)},
        "caught_up_s": max(received.values()) - max(s.at for s in sent),
    }


# -- report ----------------------------------------------------------------------------------------------
def versions(stack: Stack) -> dict[str, str]:
    """Machine and versions: the common ones plus the cloud stack's."""
    common = machine()
    with psycopg.connect(stack.postgres.dsn) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    vm = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "victoria-metrics"],
        capture_output=True,
        text=True,
        check=False,
    )
    return {
        **common,
        "SQLAlchemy": sqlalchemy.__version__,
        "psycopg": psycopg.__version__,
        "pydantic": pydantic.__version__,
        "msgspec": msgspec.__version__,
        "PostgreSQL": str(row[0]) if row else "unknown",
        "VictoriaMetrics": vm.stdout.strip() or "unknown",
    }


def command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run."""
    return (
        f"python scripts/bench_cloud.py --readings {args.readings} --gateways {args.gateways} "
        f"--batch {args.batch} --devices {args.devices} --rounds {args.rounds} --rate {args.rate} "
        f"--hold-gateways {args.hold_gateways} --hold-seconds {args.hold_seconds}"
        + ("" if args.group_max_frames == DEFAULT_GROUP else f" --group-max-frames {args.group_max_frames}")
    )


#: Part 1's consumers: result key, label.
CONSUMERS = (("worker", "worker"), ("bare", "bare writer"), ("measured", "bare writer of measured values"))


def _verdict(values: Sequence[float], floor: float, name: str) -> str:
    """``(name: met; met in k of n rounds)``: whether the median of the rounds' ``values`` reaches
    ``floor`` (``not met`` otherwise), and in how many rounds it did."""
    verdict = "met" if statistics.median(values) >= floor else "not met"
    return f"({name}: {verdict}; met in {sum(x >= floor for x in values)} of {len(values)} rounds)"


def _ratios(rounds: Sequence[dict[str, Any]], baseline: str, label: str, name: str) -> str:
    """The worker's rate over ``baseline``'s, round by round, their median, and its verdict."""
    ratios = [t["worker"]["rate"] / t[baseline]["rate"] for t in rounds]
    return (
        f"{label}: "
        + ", ".join(f"{x:.2f}" for x in ratios)
        + f" in rounds 1-{len(rounds)}, median {statistics.median(ratios):.2f} "
        + _verdict(ratios, RATIO_TARGET, name)
    )


def _servers(s: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in s.items())


def _times(latencies: Sequence[float]) -> str:
    """p50 | p99 | max in ms of sorted latencies (seconds), or dashes.

    One decimal: the bare subscriber's latencies are under a millisecond on a fast machine, and a
    whole-ms rounding printed them as 0.
    """
    if not latencies:
        return "- | - | -"
    return (
        f"{percentile(latencies, 50) * 1000:.1f} | {percentile(latencies, 99) * 1000:.1f} "
        f"| {latencies[-1] * 1000:.1f}"
    )


def render(
    args: argparse.Namespace, tput: dict[str, Any], hold: list[dict[str, Any]], machine: dict[str, str]
) -> str:
    """The BENCHMARKS.md section."""
    fleet: Fleet = tput["fleet"]
    rounds: list[dict[str, Any]] = tput["rounds"]
    first = hold[0]
    rates = [t["worker"]["rate"] for t in rounds]
    met = {True: "met", False: "not met"}
    lines = [
        "## Cloud ingest: one worker on one core, against a bare MQTT → VictoriaMetrics writer",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `{command(args)}`. The consumer under test "
        "runs alone on the last core (`os.sched_setaffinity`); PostgreSQL 15 (fsync on), Mosquitto (mutual "
        "TLS, QoS 1) and VictoriaMetrics share the other core(s) with the script.",
        "",
        "### Throughput: draining a backlog",
        "",
        f"{len(rounds)} rounds. In each, {tput['readings']} readings in {tput['batches']} signed, chained "
        f"batches of {args.batch} from "
        f"{fleet.gateways} gateways ({fleet.devices} devices each, one reading per device every "
        f"{STEP_MS // 1000} s of device time, {fleet.per_shipment} devices per vaccines shipment, 0.2 % "
        "isolated spikes out of range; each round its own fleet, database and broker) are queued on the "
        "broker for three persistent shared-subscription sessions before any consumer starts, and each "
        "consumer's series are warmed up in VictoriaMetrics (a copy of the whole backlog written as that "
        "consumer writes it, ending a minute before the backlog starts), as in a deployment that has run "
        "for a while; "
        "then each consumer drains its queue alone: the bare writer first in odd rounds and the worker "
        "first in even ones, the bare writer of measured values only last. Worker: "
        "`cloud_ingest.worker.Worker` as deployed (verify "
        "Ed25519 and the canonical schema, chain check, readings stored exactly once, device rows, rules "
        "with alerts and holds, telemetry spool, in one PostgreSQL transaction per group of the batches "
        f"that arrived while it stored the previous group (up to {args.group_max_frames}"
        f"{', its default' if args.group_max_frames == DEFAULT_GROUP else ''}), acknowledged after "
        "commit; the spool drains to VictoriaMetrics in the same process). Its clock runs from the "
        "start of its first batch to the commit of the last reading; `spooled`: to the last point "
        "VictoriaMetrics confirmed. Bare writer (`scripts/bare_writer.py`): same client library, session "
        "type and acknowledgement after the write; orjson + f-strings, up to 20,000 readings per POST to "
        f"`/api/v2/write` and {BARE_IN_FLIGHT} POSTs under way at once, no verification, no SQL. "
        "It writes the fields of the worker's `reading` lines (the five measured values, `seq`, "
        "`skew_ms`, `glitch`, `backfill`: 9 samples a reading) and its tags but `profile`, which needs "
        "SQL state. The bare writer of measured values only (`--fields measured`) leaves out "
        "`skew_ms`, `glitch` and `backfill` (6 samples a reading), as the baseline did until 2026-11-25 "
        "(which also made one POST at a time); it is kept for comparison. After each round every "
        "reading was found once in PostgreSQL and once per consumer in VictoriaMetrics.",
        "",
        "| round | consumer | seconds | readings/s | CPU s | others on its core, CPU s | peak RSS MB "
        "| transactions | batches per transaction p50 / max | store p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in rounds:
        w, b, m = t["worker"], t["bare"], t["measured"]
        n = t["round"]
        lines += [
            f"| {n} | worker, committed | {w['seconds']:.2f} | {w['rate']:.0f} "
            f"| {w['cpu_drain_s']:.1f} | {w['others_on_core_s']:.1f} | {w['rss_mb']:.0f} "
            f"| {w['groups']} | {w['group_p50']:.0f} / {w['group_max']} "
            f"| {w['store_p50_ms']:.1f} | {w['store_p99_ms']:.1f} |",
            f"| {n} | worker, spooled to VictoriaMetrics | {w['spool_seconds']:.2f} "
            f"| {w['readings'] / w['spool_seconds']:.0f} | {w['cpu_spool_s']:.1f} | | | | | | |",
            f"| {n} | bare writer | {b['seconds']:.2f} | {b['rate']:.0f} | {b['cpu_drain_s']:.1f} "
            f"| {b['others_on_core_s']:.1f} | {b['rss_mb']:.0f} | | | | |",
            f"| {n} | bare writer, measured values only | {m['seconds']:.2f} | {m['rate']:.0f} "
            f"| {m['cpu_drain_s']:.1f} | {m['others_on_core_s']:.1f} | {m['rss_mb']:.0f} | | | | |",
        ]
    lines += [
        "",
        _ratios(
            rounds,
            "bare",
            "Worker / bare writer (readings/s, same round; the bare writer is the baseline)",
            f"target ≥ {RATIO_TARGET}",
        )
        + ". "
        + _ratios(rounds, "measured", "Worker / bare writer of measured values only", f"≥ {RATIO_TARGET}")
        + f". Worker: median {statistics.median(rates):.0f} readings/s, lowest {min(rates):.0f} "
        + _verdict(rates, RATE_TARGET, f"target ≥ {RATE_TARGET:,}")
        + ". Readings per CPU second of the consumer, round by round: "
        + "; ".join(
            f"{label} " + ", ".join(f"{t[key]['readings'] / t[key]['cpu_drain_s']:.0f}" for t in rounds)
            for key, label in CONSUMERS
        )
        + ". CPU s: the consumer's own during its drain; others on its core: CPU time other processes "
        "(this machine is shared) took on the consumer's core meanwhile; peak RSS includes start-up. "
        "Server CPU s during each consumer's drain: "
        + "; ".join(
            f"round {t['round']}: "
            + ", ".join(f"{label} ({_servers(t[key]['servers'])})" for key, label in CONSUMERS)
            for t in rounds
        )
        + ".",
        "",
        "### Hold latency under load",
        "",
        f"{first['fleet'].gateways} gateways ({first['fleet'].devices} devices each) publish a batch of "
        f"in-range readings every {BATCH_AGE_S * 1000:.0f} ms each (the edge agent's `batch_max_age_ms`) "
        "to a worker on one core with `rules.delay_s` of vaccines 0, and the API (uvicorn, "
        f"`GET /v1/holds`) runs on the other core. After {args.warmup} s of warm-up, once a second for "
        f"{args.hold_seconds} s one batch also carries a 12 °C reading (no anomaly score) of a device "
        "bound to a shipment that never reported before; latency runs from that batch's publish to the "
        "first API answer listing the hold. One poller asks for the oldest outstanding excursion every "
        f"{HOLD_POLL_S * 1000:.0f} ms (so up to that much is polling; every {HOLD_SLOW_POLL_S * 1000:.0f} ms "
        f"once {HOLD_SLOW_AFTER_S:g} s have passed; given up after {HOLD_TIMEOUT_S:g} s). Delivered: "
        "readings/s the worker committed (or the bare subscriber received) over the window; caught up: "
        "seconds after the last publish until every reading was committed (received).",
        "",
        "Baseline, bare transport, measured in the same run right after the worker's run at each load, on "
        "the same broker (the worker's session ended first, so nothing queues for it) with the same "
        "gateway connections: the same frames paced the same way (same gateways, batch sizes, rate and "
        "marker batches), consumed on the worker's core by a bare subscriber (`scripts/bare_subscriber.py`: "
        "shared subscription, persistent session, QoS 1, the worker's Receive Maximum, each message "
        "acknowledged as soon as it is taken, nothing parsed or stored); its latency runs from a marker "
        "batch's publish to its receipt.",
        "",
        "| offered readings/s | batch | path | delivered readings/s | consumer's core busy | caught up s "
        "| markers | seen | p50 ms | p99 ms | max ms | p99 < 1 s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ratios = []
    for h in hold:
        lat = sorted(h["latencies"])
        ok = h["ok"] = bool(lat) and len(lat) == h["injected"] and percentile(lat, 99) < 1.0
        lines.append(
            f"| {h['offered_rate']:.0f} | {h['per_batch']} | worker → hold in API "
            f"| {h['committed_rate']:.0f} | {h['worker_busy'] * 100:.0f} % | {h['caught_up_s']:.1f} "
            f"| {h['injected']} | {len(lat)} | {_times(lat)} | {'yes' if ok else 'no'} |"
        )
        t = h["transport"]
        bare = sorted(t["latencies"])
        lines.append(
            f"| {t['offered_rate']:.0f} | {h['per_batch']} | bare subscriber → received "
            f"| {t['delivered_rate']:.0f} | {t['consumer_busy'] * 100:.0f} % | {t['caught_up_s']:.1f} "
            f"| {t['injected']} | {len(bare)} | {_times(bare)} | |"
        )
        if lat and bare:
            ratios.append(
                f"at {h['rate']}/s p50 {percentile(lat, 50) / percentile(bare, 50):.1f}, "
                f"p99 {percentile(lat, 99) / percentile(bare, 99):.1f}"
            )
    target = [h for h in hold if h["rate"] == 10_000]
    lines += [
        "",
        "Hold latency / transport latency (same run; bare transport is the baseline): "
        + ("; ".join(ratios) or "not measured (no latencies on one of the paths)")
        + ".",
        "",
        "Target p99 < 1 s at 10,000 readings/s offered: "
        + (met[target[0]["ok"]] if target else "not measured in this run")
        + ". p99 is nearest-rank over the excursions seen. Meanwhile, in % of one core, at "
        + "; ".join(
            f"{h['rate']}/s: "
            + ", ".join(f"{k} {v * 100:.0f}" for k, v in h["servers_busy"].items())
            + "; cores busy in all (every process, this benchmark's or not) "
            + ", ".join(f"{c}: {v * 100:.0f}" for c, v in h["cores_busy"].items())
            for h in hold
        )
        + f" (the worker's is core {first['core']}).",
        "",
    ]
    lines += machine_lines(machine)
    return "\n".join(lines)


async def bench(args: argparse.Namespace, tmp: Path, core: int) -> str:
    """Both parts; returns the BENCHMARKS.md section."""
    pki = Pki.init(tmp / "pki")
    server = pki.issue(Role.SERVER, "localhost", dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    pki.issue(Role.SERVICE, SERVICE)
    fleets = [(round_prefix(r), args.gateways) for r in range(args.rounds)] + [("h", args.hold_gateways)]
    for prefix, n in fleets:
        for name in Fleet(prefix=prefix, gateways=n, devices=1).gateway_ids():
            pki.issue(Role.GATEWAY, name)
    tls = MosquittoTlsFiles(
        cafile=pki.ca_bundle_path, certfile=server.chain_path, keyfile=server.key_path, crlfile=pki.crl_path
    )
    postgres = Postgres(PG_BIN, durable=True)
    vm = VictoriaMetrics(VM_BIN)
    stack = Stack(tmp, pki, tls, postgres, vm, core, args)
    try:
        postgres.start()
        vm.start()
        parts = set(args.parts.split(","))
        tput = await throughput(stack) if "throughput" in parts else None
        hold = [await hold_latency(stack, int(r)) for r in args.rate.split(",")] if "hold" in parts else None
        if tput is None or hold is None:
            return f"partial run, nothing to write: throughput {tput}, hold latency {hold}"
        return render(args, tput, hold, versions(stack))
    finally:
        for proc in stack.children:
            await stop(proc)
        vm.close()
        postgres.close()


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readings", type=int, default=200_000, help="Part 1 backlog size.")
    parser.add_argument("--gateways", type=int, default=20, help="Part 1 gateways.")
    parser.add_argument(
        "--rounds", type=int, default=4, help="Part 1 rounds (fresh backlog each; the order alternates)."
    )
    parser.add_argument("--batch", type=int, default=500, help="Part 1 readings per batch.")
    parser.add_argument("--devices", type=int, default=100, help="Devices per gateway.")
    parser.add_argument(
        "--group-max-frames", type=int, default=DEFAULT_GROUP,
        help=f"The worker's broker.group_max_frames (default {DEFAULT_GROUP}, the setting's own).",
    )  # fmt: skip
    parser.add_argument("--rate", default="10000,5000", help="Part 2 offered readings/s, one run each.")
    parser.add_argument("--hold-gateways", type=int, default=20, help="Part 2 gateways.")
    parser.add_argument("--hold-seconds", type=int, default=40, help="Part 2: excursions, one a second.")
    parser.add_argument("--warmup", type=int, default=5, help="Part 2: seconds of load before the first.")
    parser.add_argument("--timeout", type=float, default=900.0, help="Give up on a drain after this long.")
    parser.add_argument("--profile", help="Directory for a cProfile of the part 1 worker (worker.prof).")
    parser.add_argument("--quick", action="store_true", help="A smoke run of seconds; writes nothing.")
    parser.add_argument(
        "--parts", default="throughput,hold", help="Run only some parts (throughput, hold); writes nothing."
    )
    parser.add_argument("--child", choices=["worker", "api"], help=argparse.SUPPRESS)
    parser.add_argument("--child-config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.child is None else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")  # fmt: skip
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.child is not None:
        cfg = orjson.loads(Path(args.child_config).read_bytes())
        if args.child == "worker":
            os.sched_setaffinity(0, {cfg["core"]})
            asyncio.run(worker_child(cfg))
        else:
            api_child(cfg)
        return
    if args.quick:
        args.readings, args.gateways, args.rate, args.hold_gateways = 20_000, 4, "2000", 4
        args.hold_seconds, args.warmup, args.devices, args.rounds = 5, 2, 20, 2
    cores = sorted(os.sched_getaffinity(0))
    core = cores[-1]
    os.sched_setaffinity(0, set(cores[:-1]) or {core})  # servers and children inherit this
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        section = asyncio.run(bench(args, Path(tmp), core))
    print(section)
    if args.profile:
        stats = pstats.Stats(str(Path(args.profile) / "worker.prof"))
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(40)
    if not args.quick and args.parts == "throughput,hold":
        write_section("cloud", section)


if __name__ == "__main__":
    main()
