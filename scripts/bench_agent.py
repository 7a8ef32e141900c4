"""Agent benchmark: readings/s the edge agent forwards with every stage on, against a bare relay.

    python scripts/bench_agent.py [--devices 200] [--readings-per-device 500] [--quick]

Both brokers (gateway and cloud) are private Mosquittos over mutual TLS. A backlog of device messages
(one reading each, vendor formats A, B and C) is queued for the agent's persistent session while it is
stopped; the agent is then started and timed until the cloud broker has delivered every reading in
signed batches. The same backlog is then drained by a bare relay (subscribe QoS 1, republish QoS 1,
acknowledge after PUBACK, no processing) in the same run: its rate is the baseline of the ratio.
Writes the "agent" section of BENCHMARKS.md (``--quick``: a smoke run of seconds that writes nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat  # noqa: E402

from certs.pki import Pki, Role  # noqa: E402
from coldtrace.contract.batch import HEADER_BYTES  # noqa: E402
from coldtrace.contract.reading import SourceFormat  # noqa: E402
from coldtrace.device_formats import DeviceMessage, DeviceSample, encode  # noqa: E402
from coldtrace.mqtt import BrokerUrl, MqttClient, TlsFiles  # noqa: E402
from coldtrace.mqtt_native import NativeMqttClient  # noqa: E402
from firmware_sim.fleet import Simulation  # noqa: E402
from firmware_sim.runner import ConnectionMode, RunConfig, run_fleet  # noqa: E402
from firmware_sim.scenario import builtin_scenarios  # noqa: E402
from firmware_sim.truth import Fate, SampleTruth, TruthWriter  # noqa: E402
from scripts.benchdoc import machine, machine_lines, write_section  # noqa: E402
from tests.harness.mosquitto import DEFAULT_SERVICE_ACL, Mosquitto, MosquittoTlsFiles, agent_acl  # noqa: E402

#: Devices publishing live in the latency run, and the share of its readings left out as warm-up.
LIVE_DEVICES = 200
WARMUP = 0.1


def _tls(pki: Pki, role: Role, name: str) -> TlsFiles:
    who = pki.identity(role, name)
    return TlsFiles(ca_file=pki.ca_bundle_path, cert_file=who.chain_path, key_file=who.key_path)


def _cpu_rss(pid: int) -> tuple[float, float]:
    """(CPU seconds, peak RSS MB) of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    hwm = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmHWM"))
    return cpu, int(hwm.split()[1]) / 1024


async def _backlog(pki: Pki, local: Mosquitto, devices: int, per_device: int, seed: int) -> tuple[int, int]:
    """Queue a backlog; returns (messages published, distinct readings sent) per the ground truth."""
    scenario = builtin_scenarios()["normal-day"].model_copy(update={"duration_s": per_device * 10.0})
    truth = TruthWriter(keep=True)
    simulation = Simulation(
        scenario, devices=devices, seed=seed, start_ms=int(time.time() * 1000), truth=truth
    )
    config = RunConfig(
        brokers=(BrokerUrl.parse(f"mqtts://127.0.0.1:{local.port}"),), ca_file=pki.ca_bundle_path,
        mode=ConnectionMode.MULTIPLEXED, loadgen=_tls(pki, Role.SERVICE, "sim-loadgen"), speed=0.0,
    )  # fmt: skip
    summary = await run_fleet(simulation, config)
    sent = {(r.device_id, r.seq) for r in truth.records if isinstance(r, SampleTruth) and r.fate is Fate.SENT}
    return summary.acknowledged, len(sent)


def _spawn(command: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
    """Start a consumer process with its output in a log file."""
    log = Path(tempfile.mkstemp(suffix=".log")[1])
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT), log


def _tail(log: Path) -> str:
    return log.read_text(encoding="utf-8", errors="replace")[-4000:]


async def _timed_drain(
    pki: Pki, cloud: Mosquitto, start: list[str], expected: int, *, frames: bool, args_timeout_s: float = 120
) -> dict[str, float]:
    client = await batch_subscriber(pki, cloud)
    proc, log = _spawn(start)
    started = time.perf_counter()
    received = 0
    try:
        try:
            async with asyncio.timeout(args_timeout_s):
                first = 0
                while received < expected:
                    message = await client.messages.get()
                    count = len(orjson.loads(message.payload[HEADER_BYTES:])["readings"]) if frames else 1
                    if received == 0:  # the clock starts at the first delivery: process start-up excluded
                        started, first = time.perf_counter(), count
                    received += count
        except TimeoutError:
            raise SystemExit(f"only {received} of {expected} arrived; consumer log:\n{_tail(log)}") from None
        elapsed = time.perf_counter() - started
        cpu, rss = _cpu_rss(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        await client.disconnect()
    return {
        "readings": received,
        "seconds": elapsed,
        "rate": (received - first) / elapsed,
        "cpu_s": cpu,
        "rss_mb": rss,
    }


async def _prime(start: list[str], broker: Mosquitto, client_id: str) -> None:
    """Run a consumer once so the broker holds its persistent session, then stop it."""
    proc, log = _spawn(start)
    try:
        async with asyncio.timeout(60):
            while f"as {client_id}" not in broker.log_text():  # noqa: ASYNC110 - another process's readiness
                await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # let it subscribe after connecting
    except TimeoutError:
        raise SystemExit(f"{client_id} did not connect; its log:\n{_tail(log)}") from None
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@dataclass(frozen=True, slots=True)
class Rig:
    """Two private Mosquittos over mutual TLS (gateway and cloud), a PKI, and an agent config."""

    pki: Pki
    local: Mosquitto
    cloud: Mosquitto
    config: Path
    agent: list[str]
    """The agent's command line, pinned to core 1."""
    relay: list[str]
    """The bare relay's command line, pinned to core 1."""


@contextlib.contextmanager
def rig(tmp: Path, **agent_settings: int | str) -> Iterator[Rig]:
    """Start both brokers; ``agent_settings`` are extra top-level keys of the agent's TOML config."""
    pki = Pki.init(tmp / "pki")
    server = pki.issue(Role.SERVER, "localhost", dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    for role, name in (
        (Role.SERVICE, "agent-gw-0"),
        (Role.GATEWAY, "gw-0"),
        (Role.SERVICE, "sim-loadgen"),
        (Role.SERVICE, "svc-ingest"),
    ):
        pki.issue(role, name)
    tls = MosquittoTlsFiles(
        cafile=pki.ca_bundle_path, certfile=server.chain_path, keyfile=server.key_path, crlfile=pki.crl_path
    )
    acl = {**DEFAULT_SERVICE_ACL, **agent_acl("gw-0")}
    local = Mosquitto(Path("/usr/sbin/mosquitto"), tls, service_acl=acl, log_every_message=False)
    cloud = Mosquitto(Path("/usr/sbin/mosquitto"), tls, service_acl=acl, log_every_message=False)
    local.start()
    cloud.start()
    try:
        key = tmp / "signing.key"
        key.write_bytes(
            Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        )
        key.chmod(0o600)
        agent_id, gw_id = pki.identity(Role.SERVICE, "agent-gw-0"), pki.identity(Role.GATEWAY, "gw-0")
        extra = "".join(f"{k} = {orjson.dumps(v).decode()}\n" for k, v in agent_settings.items())
        config = tmp / "agent.toml"
        config.write_text(
            f'gateway_id = "gw-0"\nsite_id = "bench"\nstate_dir = "{tmp / "state"}"\nsigning_key = "{key}"\n'
            f"metrics_port = 0\nbackfill_rate_per_s = 10000000\n{extra}"
            f'[local]\nurl = "mqtts://127.0.0.1:{local.port}"\nca_file = "{pki.ca_bundle_path}"\n'
            f'cert_file = "{agent_id.cert_path}"\nkey_file = "{agent_id.key_path}"\n'
            f'[cloud]\nurl = "mqtts://127.0.0.1:{cloud.port}"\nca_file = "{pki.ca_bundle_path}"\n'
            f'cert_file = "{gw_id.chain_path}"\nkey_file = "{gw_id.key_path}"\n',
            encoding="utf-8",
        )
        pinned = ["taskset", "-c", "1", sys.executable]
        agent = [*pinned, "-m", "coldtrace", "agent", "run", "--config", str(config)]
        relay = [
            *pinned, str(ROOT / "scripts" / "relay.py"),
            f"mqtts://127.0.0.1:{local.port}", f"mqtts://127.0.0.1:{cloud.port}", str(pki.ca_bundle_path),
            str(agent_id.cert_path), str(agent_id.key_path), str(gw_id.chain_path), str(gw_id.key_path),
        ]  # fmt: skip
        yield Rig(pki, local, cloud, config, agent, relay)
    finally:
        local.close()
        cloud.close()


async def batch_subscriber(pki: Pki, cloud: Mosquitto) -> MqttClient:
    """The cloud side: a client subscribed to the gateway's batches on the cloud broker."""
    client = MqttClient(
        client_id="svc-ingest", broker=BrokerUrl.parse(f"mqtts://127.0.0.1:{cloud.port}"),
        tls=_tls(pki, Role.SERVICE, "svc-ingest"),
    )  # fmt: skip
    await client.connect()
    await client.subscribe("ct/v1/gw/gw-0/batch", qos=1)
    return client


async def _connected(broker: Mosquitto, client_id: str, since: int, log: Path) -> None:
    """Wait until ``client_id`` has connected to ``broker`` (its log line) since offset ``since``."""
    try:
        async with asyncio.timeout(120):
            while f"as {client_id}" not in broker.log_text(since):  # noqa: ASYNC110 - another process
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise SystemExit(f"{client_id} did not connect; its log:\n{_tail(log)}") from None


async def _latency(r: Rig, rate: float, duration_s: float) -> dict[str, float]:
    """Publish live device messages at ``rate``/s; milliseconds from each publish to its batch's delivery.

    The publisher is a child process pinned to the core the agent does not use, so it offers the rate
    without taking the agent's CPU; it stamps each reading's device time with its publish time, and
    the clock stops when the cloud-side subscriber receives the batch carrying the reading (the broker
    sends the agent its PUBACK for that batch at the same moment). Both read the same wall clock. The
    first ``WARMUP`` share of each device's readings is left out: the agent has just started.
    """
    sub = await batch_subscriber(r.pki, r.cloud)
    since = r.local.log_size()
    proc, log = _spawn(r.agent)
    per_device = max(1, round(rate * duration_s / LIVE_DEVICES))
    total = per_device * LIVE_DEVICES
    latency: list[float] = []
    received: set[tuple[str, int]] = set()
    publisher: subprocess.Popen[bytes] | None = None
    try:
        await _connected(r.local, "agent-gw-0", since, log)
        publisher, publisher_log = _spawn([
            "taskset", "-c", "0", sys.executable, str(SCRIPT), "--live-publish", str(r.local.port),
            str(r.config.parent), f"{rate}", str(per_device),
        ])  # fmt: skip
        async with asyncio.timeout(duration_s + 120):
            while len(received) < total:
                message = await sub.messages.get()
                now_ms = time.time() * 1000
                for x in orjson.loads(message.payload[HEADER_BYTES:])["readings"]:
                    received.add((x["device_id"], x["seq"]))
                    if x["seq"] > WARMUP * per_device:
                        latency.append(now_ms - x["t_device_ms"])
        publisher.wait(timeout=30)
        offered = float(publisher_log.read_text().strip().splitlines()[-1])
    except TimeoutError:
        raise SystemExit(
            f"the live readings did not all arrive ({len(received)} of {total}); agent log:\n{_tail(log)}"
        ) from None
    finally:
        if publisher is not None and publisher.poll() is None:
            publisher.kill()
        proc.terminate()
        proc.wait(timeout=30)
        await sub.disconnect()
    q = statistics.quantiles(latency, n=100, method="inclusive")
    return {"offered": offered, "readings": len(latency), "p50": q[49], "p99": q[98], "max": max(latency)}


async def publish_live(port: int, tmp: Path, rate: float, per_device: int) -> None:
    """Child process of :func:`_latency`: ``per_device`` one-reading messages per device at ``rate``/s.

    Prints the rate it achieved. Each reading's device time is the moment it was published.
    """
    from certs.pki import Pki  # noqa: PLC0415 - only the child needs it

    pki = Pki.open(tmp / "pki")
    client = NativeMqttClient(
        client_id="sim-loadgen", broker=BrokerUrl.parse(f"mqtts://127.0.0.1:{port}"),
        tls=_tls(pki, Role.SERVICE, "sim-loadgen"),
    )  # fmt: skip
    await client.connect()
    acks: list[asyncio.Future[Any]] = []
    total = per_device * LIVE_DEVICES
    began = time.perf_counter()
    for i in range(total):
        delay = began + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        d = i % LIVE_DEVICES
        sample = DeviceSample(
            seq=i // LIVE_DEVICES + 1, t_device_ms=int(time.time() * 1000), temperature_c=4.0
        )
        payload = encode(DeviceMessage(device_id=f"live-{d:04d}", firmware="1.0.0",
                                       format=SourceFormat.VENDOR_A_JSON, samples=(sample,)))  # fmt: skip
        acks.append(client.publish_nowait(f"ct/v1/dev/live-{d:04d}/up", payload))
    offered = total / (time.perf_counter() - began)
    await asyncio.gather(*acks)
    await client.disconnect()
    print(offered)


async def _bench(args: argparse.Namespace, tmp: Path) -> tuple[list[dict[str, float]], dict[str, float]]:
    with rig(tmp) as r:
        results = []
        consumers = (
            ("agent", r.agent, True, 1),
            ("relay (paho)", r.relay, False, 2),
            ("relay (native)", [*r.relay, "--client", "native"], False, 3),
        )
        for name, command, frames, seed in consumers:
            await _prime(command, r.local, "agent-gw-0")
            messages, readings = await _backlog(r.pki, r.local, args.devices, args.readings_per_device, seed)
            print(f"{name}: {messages} messages ({readings} distinct readings) queued", file=sys.stderr)
            # The agent forwards each distinct reading once; the relay forwards every message.
            row = await _timed_drain(r.pki, r.cloud, command, readings if frames else messages, frames=frames)
            row["name"] = name  # type: ignore[assignment]
            print(row, file=sys.stderr)
            results.append(row)
        # Half the agent's sustained rate, as live traffic (one reading per message).
        # (A quick run's backlog is too small to measure a rate: it offers a fixed 500/s.)
        live = await _latency(r, 500.0 if args.quick else results[0]["rate"] / 2, args.live_seconds)
        print(live, file=sys.stderr)
        return results, live


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--readings-per-device", type=int, default=500)
    parser.add_argument("--live-seconds", type=float, default=30.0, help="Length of the latency run.")
    parser.add_argument("--live-publish", nargs=4, help=argparse.SUPPRESS)  # the latency run's publisher
    parser.add_argument(
        "--quick", action="store_true", help="A smoke run of seconds; prints, writes nothing."
    )
    args = parser.parse_args()
    if args.live_publish:
        port, tmp, rate, per_device = args.live_publish
        asyncio.run(publish_live(int(port), Path(tmp), float(rate), int(per_device)))
        return
    if args.quick:
        args.devices, args.readings_per_device, args.live_seconds = 20, 50, 5.0
    with tempfile.TemporaryDirectory() as tmp:
        (agent, paho_relay, native_relay), live = asyncio.run(_bench(args, Path(tmp)))
    lines = [
        "## Edge agent: backlog drain through every stage, against a bare relay",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `python scripts/bench_agent.py --devices "
        f"{args.devices} --readings-per-device {args.readings_per_device}`. The consumer runs pinned to one "
        "core (`taskset -c 1`); brokers, publisher and cloud-side counter share the machine. Agent: decode "
        "(vendor A/B/C), normalise, bind, ONNX score, outbox with `synchronous=FULL`, Ed25519-signed "
        "hash-chained batches of up to 500, QoS 1 uplink; backfill pacing off to measure capacity. The clock "
        "runs from the first delivery to the last (process start-up excluded); CPU and peak RSS are the "
        "consumer process's own, start-up included. The agent reads devices with `coldtrace.mqtt_native` "
        "and sends batches with paho. Relay: subscribe QoS 1 → republish QoS 1, acknowledge after PUBACK, "
        "nothing else; once with paho-mqtt on both sides, once with `coldtrace.mqtt_native` on both.",
        "",
        "| consumer | readings | seconds | readings/s | CPU s | peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    lines.extend(
        f"| {r['name']} | {int(r['readings'])} | {r['seconds']:.2f} | {r['rate']:.0f} | {r['cpu_s']:.1f} "
        f"| {r['rss_mb']:.0f} |"
        for r in (agent, paho_relay, native_relay)
    )
    lines += [
        "",
        f"Agent / relay (readings/s, same run; the relay is the baseline): "
        f"{agent['rate'] / paho_relay['rate']:.2f} against the paho relay, "
        f"{agent['rate'] / native_relay['rate']:.2f} against the relay on the agent's own MQTT client "
        "(coldtrace.mqtt_native on both sides), the fairer baseline now that the agent reads with it.",
        "",
        "### Latency at half the sustained rate",
        "",
        f"The agent restarted (same state) and {LIVE_DEVICES} devices published live messages of "
        f"one reading each at {live['offered']:.0f}/s, half the rate above, for {args.live_seconds:g} s, "
        "from a publisher process pinned to the other core (`taskset -c 0`) that stamps each reading "
        "with its publish time. Latency runs from that publish to the delivery, to a cloud-side "
        "subscriber, of "
        "the signed batch that carries the reading (the broker sends the agent its PUBACK for that "
        "batch at the same moment): local broker, decode, bind, score, durable commit, batching (up "
        f"to 500 readings or 250 ms), signing, uplink. The first {WARMUP:.0%} of each device's readings "
        "(the agent's first seconds) are left out.",
        "",
        "| readings | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|",
        f"| {int(live['readings'])} | {live['p50']:.0f} | {live['p99']:.0f} | {live['max']:.0f} |",
        "",
    ]
    lines += machine_lines(machine())
    if args.quick:
        print("\n".join(lines))
    else:
        write_section("agent", "\n".join(lines))


if __name__ == "__main__":
    main()
