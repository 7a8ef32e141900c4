"""End-to-end benchmark: device reading → hold visible in the API over the real path, beside bare transport.

    python scripts/bench_e2e.py [--rate 500,1000] [--excursions 120] [--per-second 4] [--warmup 5]
                                [--quick] [--out FILE]

Everything runs on this machine, on real servers: a private PostgreSQL 15 (fsync on), VictoriaMetrics,
and per measurement a fresh gateway Mosquitto and cloud Mosquitto (mutual TLS, QoS 1). The processes
under test run on the last core (``taskset``); the servers, the load generator and the probes share
the other core(s).

For each offered load (``--rate`` readings/s), two measurements in the same run:

1. Bare transport (the baseline): simulated devices → gateway broker → ``scripts/relay.py``
   (subscribe QoS 1, republish QoS 1 to the cloud broker, acknowledge after PUBACK) → a plain QoS 1
   subscriber on the cloud broker. Latency: from a device's publish to the subscriber's receipt.
2. coldtrace: simulated devices → gateway broker → ``coldtrace agent run`` → cloud broker →
   ``coldtrace cloud worker`` (PostgreSQL; ``rules.delay_s`` of vaccines 0) and ``coldtrace cloud
   serve`` (``GET /v1/holds``). The manifest is posted to the API, which pushes it to the agent.
   Latency: from a device's publish to the first API answer that lists the hold.

The background load is the fleet simulator's ``normal-day`` fleet (``rate`` x 10 devices, one reading
each every 10 s) on one gateway. After ``--warmup`` s, ``--per-second`` times a second a fresh device
bound to a vaccines shipment of its own publishes one 12 °C reading (``--excursions`` in all); the
same readings at the same moments travel the bare path in the baseline.

Why 500 and 1,000 readings/s by default (not 5,000): on this 2-core machine the agent, the worker and
the API share one core and everything else (two brokers, PostgreSQL, VictoriaMetrics, the load
generator, the API poller) shares the other. The agent alone drains about 3,600 readings/s on a whole
core (the agent section), so 5,000/s cannot be carried at all; in a development probe at 2,000/s the
core under test was saturated and the load generator on the other core fell behind (about 1,300/s
offered), while 1,000/s left headroom on both. The rendered table shows each measurement's offered
rate and how busy the core under test was, and marks a measurement whose offered rate fell short.

Writes the "e2e" section of BENCHMARKS.md (``--quick``: a smoke run of seconds that writes nothing;
``--out``: also the raw results as JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import orjson  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat  # noqa: E402

from certs.pki import Pki, Role  # noqa: E402
from cloud_ingest.db.engine import open_database  # noqa: E402
from cloud_ingest.keys import Role as KeyRole  # noqa: E402
from cloud_ingest.keys import create_key  # noqa: E402
from cloud_ingest.registry import register_gateway  # noqa: E402
from cloud_ingest.settings import RuleSettings  # noqa: E402
from coldtrace.clock import wall_ms  # noqa: E402
from coldtrace.contract.canonical import canonical_bytes  # noqa: E402
from coldtrace.contract.topics import gateway_batches  # noqa: E402
from coldtrace.mqtt import BrokerUrl, MqttClient, TlsFiles  # noqa: E402
from coldtrace.profiles import ProfileName  # noqa: E402
from scripts.bare_writer import core_busy_s  # noqa: E402
from scripts.bench_cloud import (  # noqa: E402
    HOLD_POLL_S,
    HOLD_SLOW_AFTER_S,
    HOLD_SLOW_POLL_S,
    HOLD_TIMEOUT_S,
    MOSQUITTO_BIN,
    PG_BIN,
    SERVICE,
    VM_BIN,
    Stack,
    committed,
    cpu_seconds,
    percentile,
    stop,
    tail,
    versions,
    watch_holds,
)
from scripts.benchdoc import machine_lines, write_section  # noqa: E402
from scripts.e2e_load import (  # noqa: E402
    EXCURSION_C,
    LOADGEN_CONNECTIONS,
    SCENARIO,
    Loadgen,
    Offered,
    Plan,
    background,
    excursion_shipment,
    manifest,
    offer,
    reading_payload,
)
from tests.harness.mosquitto import DEFAULT_SERVICE_ACL, Mosquitto, MosquittoTlsFiles, agent_acl  # noqa: E402
from tests.harness.ports import free_port  # noqa: E402
from tests.harness.postgres import Postgres  # noqa: E402
from tests.harness.victoriametrics import VictoriaMetrics  # noqa: E402

logger = logging.getLogger("bench_e2e")

GATEWAY = "gw-0"  # the gateway scripts/relay.py relays for
AGENT = f"agent-{GATEWAY}"
SITE = "bench"
LOADGEN = "sim-loadgen"
PROBE_DEVICE = "probe-0"
START_TIMEOUT_S = 120.0  # the agent loads its model and compiles its features at start
CATCH_UP_TIMEOUT_S = 60.0
GENERATE_S_PER_EMISSION = 0.0003  # a generous estimate of the simulator's cost per emission
SHORTFALL = 0.95  # an offered rate below this share of the target is marked
ExcursionQueue = asyncio.Queue[tuple[Any, float] | None]


# -- servers and processes ------------------------------------------------------------------------
def brokers(stack: Stack) -> tuple[Mosquitto, Mosquitto]:
    """A fresh gateway broker and cloud broker (no sessions left from another measurement)."""
    acl = {**DEFAULT_SERVICE_ACL, **agent_acl(GATEWAY)}
    pair = (
        Mosquitto(MOSQUITTO_BIN, stack.tls, service_acl=acl, log_every_message=False),
        Mosquitto(MOSQUITTO_BIN, stack.tls, service_acl=acl, log_every_message=False),
    )
    for broker in pair:
        broker.start()
    return pair


def url(broker: Mosquitto) -> str:
    """The broker's mqtts:// URL."""
    return f"mqtts://127.0.0.1:{broker.port}"


def tls_of(stack: Stack, role: Role, name: str) -> TlsFiles:
    """An identity's TLS files (its chain as the certificate)."""
    who = stack.pki.identity(role, name)
    return TlsFiles(ca_file=stack.pki.ca_bundle_path, cert_file=who.chain_path, key_file=who.key_path)


def pinned(stack: Stack, *argv: str) -> list[str]:
    """A command line run on the core under test."""
    return ["taskset", "-c", str(stack.core), *argv]


async def until(
    check: Callable[[], Awaitable[bool]], *, within_s: float, what: str, logs: list[Path]
) -> None:
    """Poll another process's progress every 100 ms (there is no event to await across processes)."""
    try:
        async with asyncio.timeout(within_s):
            while not await check():  # noqa: ASYNC110 - another process's progress
                await asyncio.sleep(0.1)
    except TimeoutError:
        told = "\n".join(f"--- {log.name}\n{tail(log)}" for log in logs)
        raise SystemExit(f"{what} did not happen within {within_s:.0f} s\n{told}") from None


# -- one measurement -------------------------------------------------------------------------------
async def run_load(
    stack: Stack, plan: Plan, loadgen: Loadgen, *, seed: int,
    on_excursion: Callable[[int, bytes, float], None], watcher: asyncio.Task[list[float | None]],
    queue: ExcursionQueue, delivered: Callable[[], Awaitable[int]],
    expected: Callable[[Offered], int], pids: dict[str, int],
) -> dict[str, Any]:  # fmt: skip
    """Offer the plan's load, time each excursion with ``watcher``, and take the window's figures."""
    estimate_s = plan.rate * plan.duration_s * GENERATE_S_PER_EMISSION
    start_ms = wall_ms() + round((2.0 + estimate_s) * 1000)
    started = time.perf_counter()
    simulation, emissions = background(plan, seed=seed, start_ms=start_ms)
    logger.info("fleet of %d devices, %d emissions built in %.1f s", len(simulation.devices), len(emissions),
                time.perf_counter() - started)  # fmt: skip
    marks: dict[str, tuple[float, int, dict[str, float], float]] = {}

    async def mark(name: str) -> None:
        at, cpu, busy = (
            time.monotonic(),
            {k: cpu_seconds(p) for k, p in pids.items()},
            core_busy_s(stack.core),
        )
        marks[name] = (at, await delivered(), cpu, busy)

    try:
        done = await offer(
            loadgen, plan, emissions, start_ms=start_ms, on_excursion=on_excursion, on_mark=mark
        )
        queue.put_nowait(None)
        latencies = await watcher
    finally:
        watcher.cancel()  # only if the load failed: then nobody awaits it
    offered_until = max(t for t, _ in done.published)
    caught_up: float | None = None
    want = expected(done)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(CATCH_UP_TIMEOUT_S):
            while await delivered() < want:  # noqa: ASYNC110 - another process's progress
                await asyncio.sleep(0.05)
            caught_up = time.monotonic() - offered_until
    (t0, n0, cpu0, busy0), (t1, n1, cpu1, busy1) = marks["start"], marks["end"]
    return {
        "rate": plan.rate,
        "devices": len(simulation.devices),
        "injected": plan.excursions,
        "latencies": [x for x in latencies if x is not None],
        "offered_rate": done.readings_between(t0, t1) / (t1 - t0),
        "delivered_rate": (n1 - n0) / (t1 - t0),
        "window_s": t1 - t0,
        "cpu": {k: (cpu1[k] - cpu0[k]) / (t1 - t0) for k in cpu1},
        "core_busy": (busy1 - busy0) / (t1 - t0),
        "caught_up_s": caught_up,
        "expected": want,
    }


async def watch_arrivals(queue: ExcursionQueue) -> list[float | None]:
    """Baseline: time each excursion (oldest first) until the bare subscriber received it."""
    latencies: list[float | None] = []
    while (item := await queue.get()) is not None:
        arrival, at = item
        try:
            async with asyncio.timeout(max(0.0, at + HOLD_TIMEOUT_S - time.monotonic())):
                latencies.append(await arrival - at)
        except TimeoutError:
            latencies.append(None)
    return latencies


class BareSink:
    """The baseline's far end: a plain QoS 1 subscriber on the cloud broker, counting what arrives."""

    def __init__(self, client: MqttClient) -> None:
        self.client = client
        self.count = 0
        self._waiting: dict[bytes, asyncio.Future[float]] = {}

    def expect(self, payload: bytes) -> asyncio.Future[float]:
        """A future resolved with the monotonic time ``payload`` arrives."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiting[payload] = future
        return future

    async def run(self) -> None:
        """Receive until cancelled."""
        while True:
            message = await self.client.messages.get()
            now = time.monotonic()
            self.count += 1
            future = self._waiting.pop(message.payload, None)
            if future is not None and not future.done():
                future.set_result(now)


async def bare(stack: Stack, plan: Plan, seed: int) -> dict[str, Any]:
    """The baseline: the same load through a bare relay to a bare subscriber."""
    gw_broker, cloud_broker = brokers(stack)
    agent_tls, gw_tls = tls_of(stack, Role.SERVICE, AGENT), tls_of(stack, Role.GATEWAY, GATEWAY)
    client = MqttClient(
        client_id="svc-bare-sub", broker=BrokerUrl.parse(url(cloud_broker)), tls=stack.service_tls()
    )
    loadgen = Loadgen(broker=BrokerUrl.parse(url(gw_broker)), tls=tls_of(stack, Role.SERVICE, LOADGEN))
    relay = None
    receiving: list[asyncio.Task[None]] = []
    try:
        await client.connect()
        await client.subscribe(gateway_batches(GATEWAY), qos=1)
        sink = BareSink(client)
        receiving.append(asyncio.create_task(sink.run(), name="bare-sink"))
        relay, log = await stack.spawn(f"relay-{plan.rate}", pinned(
            stack, sys.executable, str(ROOT / "scripts" / "relay.py"), url(gw_broker), url(cloud_broker),
            str(agent_tls.ca_file), str(agent_tls.cert_file), str(agent_tls.key_file), str(gw_tls.cert_file),
            str(gw_tls.key_file),
        ))  # fmt: skip
        await loadgen.connect()
        await loadgen.until_routed(
            PROBE_DEVICE, lambda: reading_payload(PROBE_DEVICE, temperature_c=5.0), within_s=START_TIMEOUT_S
        )

        async def count() -> int:
            return sink.count

        await until(lambda: _ge(count, 1), within_s=30, what="the probe's relay", logs=[log])
        queue: ExcursionQueue = asyncio.Queue()
        result = await run_load(
            stack, plan, loadgen, seed=seed, queue=queue, watcher=asyncio.create_task(watch_arrivals(queue)),
            on_excursion=lambda _i, payload, at: queue.put_nowait((sink.expect(payload), at)),
            delivered=count, expected=lambda done: 1 + len(done.published), pids={"relay": relay.pid},
        )  # fmt: skip
        return {"path": "bare", **result}
    finally:
        for task in receiving:
            task.cancel()
        if relay is not None:
            await stop(relay)
        await loadgen.close()
        await client.disconnect()
        gw_broker.close()
        cloud_broker.close()


async def _ge(value: Callable[[], Awaitable[int]], least: int) -> bool:
    return await value() >= least


def _cloud_toml(stack: Stack, broker: Mosquitto, db_url: str, api_port: int) -> str:
    tls = stack.service_tls()
    delays = {p.value: v for p, v in RuleSettings().delay_s.items()} | {ProfileName.VACCINES.value: 0.0}
    return (
        f'database_url = "{db_url}"\nmetrics_port = 0\n'
        f'[broker]\nurl = "{url(broker)}"\nca_file = "{tls.ca_file}"\ncert_file = "{tls.cert_file}"\n'
        f'key_file = "{tls.key_file}"\nclient_id = "{SERVICE}"\nshare_group = "ingest"\n'
        f'[telemetry]\nurl = "{stack.vm.url}"\n'
        "[rules.delay_s]\n" + "".join(f'"{k}" = {v}\n' for k, v in delays.items()) +
        f'[api]\nhost = "127.0.0.1"\nport = {api_port}\n'
    )  # fmt: skip


def _agent_toml(stack: Stack, gw_broker: Mosquitto, cloud_broker: Mosquitto, home: Path) -> str:
    local, cloud = tls_of(stack, Role.SERVICE, AGENT), tls_of(stack, Role.GATEWAY, GATEWAY)
    return (
        f'gateway_id = "{GATEWAY}"\nsite_id = "{SITE}"\nstate_dir = "{home / "state"}"\n'
        f'signing_key = "{home / "signing.key"}"\nmetrics_port = 0\n'
        f'[local]\nurl = "{url(gw_broker)}"\nca_file = "{local.ca_file}"\ncert_file = "{local.cert_file}"\n'
        f'key_file = "{local.key_file}"\n'
        f'[cloud]\nurl = "{url(cloud_broker)}"\nca_file = "{cloud.ca_file}"\n'
        f'cert_file = "{cloud.cert_file}"\nkey_file = "{cloud.key_file}"\n'
    )  # fmt: skip


async def coldtrace(stack: Stack, plan: Plan, seed: int) -> dict[str, Any]:
    """The real path: agent, worker and API as their CLIs run them, fed by the same kind of load."""
    gw_broker, cloud_broker = brokers(stack)
    db_url = stack.database(f"bench_e2e_{plan.rate}")
    engine = open_database(db_url)
    home = stack.tmp / f"gateway-{plan.rate}"
    home.mkdir()
    signing = Ed25519PrivateKey.generate()
    (home / "signing.key").write_bytes(
        signing.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    )
    (home / "signing.key").chmod(0o600)
    with engine.begin() as conn:
        register_gateway(conn, GATEWAY, signing.public_key(), site_id=SITE, now_ms=wall_ms())
        key = create_key(conn, role=KeyRole.ADMIN, name="bench", now_ms=wall_ms()).key
    api_port = free_port()
    (home / "cloud.toml").write_text(_cloud_toml(stack, cloud_broker, db_url, api_port), encoding="utf-8")
    (home / "agent.toml").write_text(_agent_toml(stack, gw_broker, cloud_broker, home), encoding="utf-8")
    coldtrace_cli = [sys.executable, "-m", "coldtrace"]
    cloud_cfg, agent_cfg = str(home / "cloud.toml"), str(home / "agent.toml")
    loadgen = Loadgen(broker=BrokerUrl.parse(url(gw_broker)), tls=tls_of(stack, Role.SERVICE, LOADGEN))
    children: dict[str, tuple[asyncio.subprocess.Process, Path]] = {}
    try:
        for name, argv in (
            ("worker", [*coldtrace_cli, "cloud", "worker", "--config", cloud_cfg]),
            ("API", [*coldtrace_cli, "cloud", "serve", "--config", cloud_cfg]),
            ("agent", [*coldtrace_cli, "agent", "run", "--config", agent_cfg]),
        ):
            children[name] = await stack.spawn(f"{name.lower()}-{plan.rate}", pinned(stack, *argv))
        logs = [log for _, log in children.values()]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=10) as http:

            async def healthy() -> bool:
                with contextlib.suppress(httpx.TransportError):
                    return (await http.get("/healthz")).status_code == 200
                return False

            async def stored() -> int:
                return await asyncio.to_thread(committed, engine)

            await until(healthy, within_s=60, what="the API's start", logs=logs)
            await loadgen.connect()
            await loadgen.until_routed(
                PROBE_DEVICE,
                lambda: reading_payload(PROBE_DEVICE, temperature_c=5.0),
                within_s=START_TIMEOUT_S,
            )
            await until(
                lambda: _ge(stored, 1), within_s=START_TIMEOUT_S, what="the probe's commit", logs=logs
            )
            # The manifest names the fleet, so build the fleet's bindings now (same seed: same devices).
            fleet_only = Plan(rate=plan.rate, warmup_s=0, excursions=0, per_second=1)
            simulation, _ = background(fleet_only, seed=seed, start_ms=wall_ms())
            body = canonical_bytes(manifest(simulation, plan, gateway_id=GATEWAY, site_id=SITE))
            response = await http.post(
                "/v1/manifests", content=body,
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            )  # fmt: skip
            if response.status_code != 201 or response.json().get("published_ms") is None:
                raise SystemExit(
                    f"the manifest was not stored and pushed: {response.status_code} {response.text}"
                )

            async def applied() -> bool:
                return (home / "state" / "manifest.json").exists()

            await until(applied, within_s=30, what="the agent's manifest", logs=logs)
            queue: ExcursionQueue = asyncio.Queue()
            result = await run_load(
                stack, plan, loadgen, seed=seed, queue=queue,
                watcher=asyncio.create_task(watch_holds(http, key, queue)),
                on_excursion=lambda i, _payload, at: queue.put_nowait((excursion_shipment(i), at)),
                delivered=stored, expected=lambda done: 1 + len(done.keys),
                pids={name: proc.pid for name, (proc, _) in children.items()},
            )  # fmt: skip
        for name, (proc, log) in children.items():
            await stop(proc)
            if proc.returncode not in {0, -15}:
                raise SystemExit(f"the {name} failed with status {proc.returncode}; its log:\n{tail(log)}")
        return {"path": "coldtrace", **result}
    finally:
        for proc, _ in children.values():
            await stop(proc)
        await loadgen.close()
        engine.dispose()
        gw_broker.close()
        cloud_broker.close()


# -- report ---------------------------------------------------------------------------------------------
def command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run."""
    return (
        f"python scripts/bench_e2e.py --rate {args.rate} --excursions {args.excursions} "
        f"--per-second {args.per_second:g} --warmup {args.warmup:g}"
    )


def _times(lat: list[float]) -> str:
    if not lat:
        return "- | - | -"
    return f"{percentile(lat, 50) * 1000:.0f} | {percentile(lat, 99) * 1000:.0f} | {max(lat) * 1000:.0f}"


def _ratio(a: list[float], b: list[float], p: float) -> str:
    if not a or not b:
        return "-"
    ratio = percentile(a, p) / percentile(b, p)
    return f"{ratio:.1f}" if ratio < 10 else f"{ratio:.0f}"


def render(args: argparse.Namespace, results: list[dict[str, Any]], versions_: dict[str, str]) -> str:
    """The BENCHMARKS.md section."""
    first = results[0]
    label = {"bare": "bare transport (relay)", "coldtrace": "coldtrace (agent, worker, API)"}
    lines = [
        "## End to end: device reading → hold visible in the API, against bare transport",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `{command(args)}`. Real servers on this "
        "machine: PostgreSQL 15 (fsync on), VictoriaMetrics, and per measurement a fresh gateway Mosquitto "
        "and cloud Mosquitto (mutual TLS, QoS 1). The processes under test run on the last core "
        f"(`taskset -c {first['core']}`); the servers, the load generator and the probes share the other "
        "core(s).",
        "",
        f"Load: the fleet simulator's `{SCENARIO}` fleet on one gateway (rate x 10 devices, one reading "
        "each every 10 s; reefers in vendor A JSON, cold rooms vendor B binary, pallets vendor C text), "
        "generated before the clock starts and published at its scheduled times over "
        f"{LOADGEN_CONNECTIONS} multiplexed connections of the simulator's load-generator identity. "
        f"After {args.warmup:g} s, {args.per_second:g} times a second for "
        f"{args.excursions / args.per_second:g} s a fresh device bound to a vaccines shipment of its own "
        f"publishes one {EXCURSION_C:g} °C reading ({args.excursions} excursions per measurement). "
        "Offered and delivered readings/s and CPU are taken over those seconds. The loads stay below what "
        "this machine carries with every process of the path on it: the agent, the worker and the API "
        "share the core under test (the agent section gives the agent's drain rate on a whole core).",
        "",
        "coldtrace: `coldtrace agent run` (decode, normalise, bind, ONNX score, outbox with "
        "`synchronous=FULL`, signed hash-chained batches, `batch_max_age_ms` 250) → cloud broker → "
        "`coldtrace cloud worker` (verify, store, rules with `rules.delay_s` of vaccines 0, holds, "
        "telemetry to VictoriaMetrics) and `coldtrace cloud serve`, each with its shipped defaults "
        "otherwise; the manifest is posted to the API, which pushes it to the agent. Latency: from the "
        "device's publish to the first `GET /v1/holds?subject_id=<shipment>` answer listing the hold; "
        f"one poller asks for the oldest outstanding excursion every {HOLD_POLL_S * 1000:.0f} ms (so up "
        f"to that much is polling; every {HOLD_SLOW_POLL_S * 1000:.0f} ms once {HOLD_SLOW_AFTER_S:g} s "
        f"have passed; given up after {HOLD_TIMEOUT_S:g} s). Delivered: readings the worker committed.",
        "",
        "Bare transport (the baseline, same run, same load and excursions): `scripts/relay.py` (subscribe "
        "QoS 1 → republish QoS 1 to the cloud broker, acknowledge after PUBACK, nothing else) on the same "
        "core, and a plain QoS 1 subscriber on the cloud broker. Latency: from the device's publish to "
        "the subscriber's receipt (no polling). Delivered: messages the subscriber received.",
        "",
        "| target readings/s | path | offered readings/s | devices | delivered readings/s | caught up s "
        "| excursions | seen | p50 ms | p99 ms | max ms | core under test busy | CPU, % of one core |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    short = []
    for r in results:
        lat = sorted(r["latencies"])
        caught = "-" if r["caught_up_s"] is None else f"{r['caught_up_s']:.1f}"
        cpu = ", ".join(f"{k} {v * 100:.0f}" for k, v in r["cpu"].items())
        offered = f"{r['offered_rate']:.0f}"
        if r["offered_rate"] < SHORTFALL * r["rate"]:
            offered += " (short)"
            short.append(f"{label[r['path']]} at {r['rate']}/s")
        lines.append(
            f"| {r['rate']} | {label[r['path']]} | {offered} | {r['devices']} | {r['delivered_rate']:.0f} "
            f"| {caught} | {r['injected']} | {len(lat)} | {_times(lat)} | {r['core_busy'] * 100:.0f} % "
            f"| {cpu} |"
        )
    pairs = []
    for rate in dict.fromkeys(r["rate"] for r in results):
        by = {r["path"]: sorted(r["latencies"]) for r in results if r["rate"] == rate}
        ct, base = by.get("coldtrace", []), by.get("bare", [])
        pairs.append(f"at {rate}/s p50 {_ratio(ct, base, 50)}, p99 {_ratio(ct, base, 99)}")
    lines += [
        "",
        "Latency ratio, coldtrace / bare transport (same run): " + "; ".join(pairs) + ". p99 is "
        "nearest-rank over the excursions seen. Offered: readings the load generator published over the "
        f"excursions' seconds; `(short)`: below {SHORTFALL:.0%} of the target, the load generator fell "
        "behind and that row's figures are not at the target load"
        + (f" ({', '.join(short)})" if short else " (none in this run)")
        + ". Caught up: seconds after the last publish until everything published was delivered (`-`: "
        f"not within {CATCH_UP_TIMEOUT_S:g} s). Core under test busy: every process on that core, this "
        "benchmark's or not (the machine is shared); CPU: each process under test's own.",
        "",
    ]
    lines += machine_lines(versions_)
    return "\n".join(lines)


# -- entry point ------------------------------------------------------------------------------------------
async def bench(args: argparse.Namespace, tmp: Path, core: int) -> list[dict[str, Any]]:
    """Every load, baseline first; returns the measurements (and the versions, as the last item)."""
    pki = Pki.init(tmp / "pki")
    server = pki.issue(Role.SERVER, "localhost", dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    for role, name in ((Role.SERVICE, SERVICE), (Role.SERVICE, AGENT), (Role.SERVICE, LOADGEN),
                       (Role.GATEWAY, GATEWAY)):  # fmt: skip
        pki.issue(role, name)
    tls = MosquittoTlsFiles(
        cafile=pki.ca_bundle_path, certfile=server.chain_path, keyfile=server.key_path, crlfile=pki.crl_path
    )
    postgres, vm = Postgres(PG_BIN, durable=True), VictoriaMetrics(VM_BIN)
    stack = Stack(tmp, pki, tls, postgres, vm, core, args)
    results: list[dict[str, Any]] = []
    try:
        postgres.start()
        vm.start()
        for rate in (int(r) for r in args.rate.split(",")):
            plan = Plan(
                rate=rate, warmup_s=args.warmup, excursions=args.excursions, per_second=args.per_second
            )
            for measure in (bare, coldtrace):
                result = await measure(stack, plan, 1)
                result["core"] = core
                logger.info("%s at %d/s: %s", result["path"], rate,
                            {k: v for k, v in result.items() if k != "latencies"})  # fmt: skip
                results.append(result)
        agent_libraries = {name: metadata.version(name) for name in ("onnxruntime", "numba")}
        results.append({"versions": {**versions(stack), **agent_libraries}})
        return results
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
    parser.add_argument("--rate", default="500,1000", help="Offered readings/s, one pair of runs each.")
    parser.add_argument("--excursions", type=int, default=120, help="Excursions per measurement.")
    parser.add_argument("--per-second", type=float, default=4.0, help="Excursions per second.")
    parser.add_argument("--warmup", type=float, default=5.0, help="Seconds of load before the first.")
    parser.add_argument(
        "--quick", action="store_true", help="A smoke run of seconds (200/s, 8 excursions); writes nothing."
    )
    parser.add_argument("--out", type=Path, help="Also write the raw results here (JSON).")
    if "--quick" in sys.argv[1:]:  # smaller defaults; options given explicitly still win
        parser.set_defaults(rate="200", excursions=8, per_second=4.0, warmup=1.0)
    args = parser.parse_args()
    rates = args.rate.split(",")
    if len(set(rates)) != len(rates) or not all(r.isdigit() and int(r) > 0 for r in rates):
        parser.error("--rate takes distinct positive integers, e.g. 500,1000")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    cores = sorted(os.sched_getaffinity(0))
    core = cores[-1]
    os.sched_setaffinity(0, set(cores[:-1]) or {core})  # servers and the load generator inherit this
    with tempfile.TemporaryDirectory() as tmp:
        *results, extra = asyncio.run(bench(args, Path(tmp), core))
    section = render(args, results, extra["versions"])
    print(section)
    if args.out is not None:
        args.out.write_bytes(
            orjson.dumps({"results": results, "section": section}, option=orjson.OPT_INDENT_2)
        )
    if not args.quick:
        write_section("e2e", section)


if __name__ == "__main__":
    main()
