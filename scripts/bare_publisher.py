"""The simulator benchmark's baseline: a bare publisher replaying the simulator's own messages.

``scripts/bench.py sim`` generates each fleet's emissions beforehand, in its own (unmeasured)
process, and writes them to a schedule file: every device with its gateway, then every publication
as (offset from the start, device, gateway, pre-encoded payload). The bare publisher reads that file
and paces the publications onto the broker with the simulator runner's connection setup —
``coldtrace.mqtt.MqttClient`` over mutual TLS, the same identities and client ids (``multiplexed``: a
few load-generator connections; ``per-device``: one per device with its own certificate), persistent
sessions, every connection opened before the clock starts — at QoS 1, and times each publish from
its scheduled moment to the broker's PUBACK, as ``firmware_sim.runner.run_fleet`` does. No physics,
no fleet model, no vendor-format encoding, no reconnect supervision.
"""

from __future__ import annotations

import asyncio
import functools
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from paho.mqtt.reasoncodes import ReasonCode

from coldtrace.contract.topics import device_uplink
from coldtrace.mqtt import MqttClient, TlsFiles
from firmware_sim.device import Emission
from firmware_sim.runner import ConnectionMode, RunConfig, RunSummary, connect_with_retry

#: How long to wait for the last PUBACKs after the last publish; what is still missing then is not acked.
ACK_TIMEOUT_S = 60.0
_COUNT = struct.Struct("<I")
_DEVICE = struct.Struct("<HH")  # gateway, id length
_PUBLICATION = struct.Struct("<dHHI")  # offset s, gateway, id length, payload length


@dataclass(frozen=True, slots=True)
class Scheduled:
    """One publication, ready to send."""

    offset_s: float
    device_id: str
    gateway: int
    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Schedule:
    """A fleet's devices (gateway at the start) and its publications in time order."""

    devices: tuple[tuple[str, int], ...]
    publications: tuple[Scheduled, ...]


def write_schedule(
    path: Path, *, devices: Iterable[tuple[str, int]], emissions: Iterable[Emission], start_ms: int
) -> int:
    """Write a schedule file; returns the number of publications."""
    fleet = [(d.encode(), g) for d, g in devices]
    body = bytearray(_COUNT.pack(len(fleet)))
    for device, gateway in fleet:
        body += _DEVICE.pack(gateway, len(device)) + device
    count = 0
    for e in emissions:
        device = e.device_id.encode()
        offset_s = (e.t_sim_ms - start_ms) / 1000
        body += _PUBLICATION.pack(offset_s, e.gateway, len(device), len(e.payload)) + device + e.payload
        count += 1
    path.write_bytes(bytes(body))
    return count


def read_schedule(path: Path) -> Schedule:
    """Read a schedule file (topics are built here, before any clock runs)."""
    data = path.read_bytes()
    (n,), pos = _COUNT.unpack_from(data), _COUNT.size
    devices = []
    for _ in range(n):
        gateway, size = _DEVICE.unpack_from(data, pos)
        pos += _DEVICE.size
        devices.append((data[pos : pos + size].decode(), gateway))
        pos += size
    publications = []
    while pos < len(data):
        offset_s, gateway, size, length = _PUBLICATION.unpack_from(data, pos)
        pos += _PUBLICATION.size
        device_id = data[pos : pos + size].decode()
        pos += size
        payload = data[pos : pos + length]
        pos += length
        publications.append(Scheduled(offset_s, device_id, gateway, device_uplink(device_id), payload))
    return Schedule(tuple(devices), tuple(publications))


def _link(config: RunConfig, device_id: str, gateway: int) -> tuple[str, int]:
    """(connection name, broker index) — the simulator runner's mapping of devices onto connections."""
    broker = gateway % len(config.brokers)
    if config.mode is ConnectionMode.PER_DEVICE:
        return device_id, broker
    return f"sim-loadgen-{hash(device_id) % config.connections}", broker


def _client(config: RunConfig, name: str, broker: int) -> MqttClient:
    """A connection as the simulator runner opens it."""
    if config.mode is ConnectionMode.MULTIPLEXED:
        if config.loadgen is None:
            raise ValueError("multiplexed mode needs the load generator's certificate (loadgen)")
        tls, client_id = config.loadgen, f"{name}@{broker}"
    else:
        if config.device_certs is None:
            raise ValueError("per-device mode needs the directory of device certificates")
        folder = config.device_certs / name
        tls = TlsFiles(ca_file=config.ca_file, cert_file=folder / "cert.pem", key_file=folder / "key.pem")
        client_id = name
    return MqttClient(
        client_id=client_id, broker=config.brokers[broker], tls=tls, clean_start=False, session_expiry_s=3600
    )


async def publish_schedule(schedule: Schedule, config: RunConfig) -> RunSummary:
    """Open every connection, then publish each item at its time; returns once every PUBACK is in."""
    summary = RunSummary()
    loop = asyncio.get_running_loop()
    clients = {
        key: _client(config, *key) for key in dict.fromkeys(_link(config, *d) for d in schedule.devices)
    }
    route = [clients[_link(config, p.device_id, p.gateway)] for p in schedule.publications]
    gate = asyncio.Semaphore(config.connect_concurrency)

    async def connect(client: MqttClient) -> None:
        async with gate:
            await connect_with_retry(client, config)

    connect_started = loop.time()
    try:
        async with asyncio.TaskGroup() as group:
            for client in clients.values():
                group.create_task(connect(client))
        summary.connect_s = loop.time() - connect_started
        t0 = loop.time()
        cpu0 = time.process_time()

        def acknowledged(future: asyncio.Future[ReasonCode], due: float) -> None:
            if future.cancelled():
                return
            if future.exception() is not None or future.result().is_failure:
                summary.refused += 1
                return
            summary.acknowledged += 1
            summary.lags_s.append(loop.time() - due)

        pending: list[asyncio.Future[ReasonCode]] = []
        for item, client in zip(schedule.publications, route, strict=True):
            due = t0 + item.offset_s / config.speed if config.speed > 0 else loop.time()
            await asyncio.sleep(max(0.0, due - loop.time()))  # always yield: PUBACKs run on this loop
            future = client.publish_nowait(item.topic, item.payload, qos=1)
            future.add_done_callback(functools.partial(acknowledged, due=due))
            pending.append(future)
            summary.published += 1
        if pending:
            await asyncio.wait(pending, timeout=ACK_TIMEOUT_S)
        summary.wall_s = loop.time() - t0
        summary.cpu_s = time.process_time() - cpu0
        summary.sim_s = max((p.offset_s for p in schedule.publications), default=0.0)
    finally:
        for client in clients.values():
            await client.disconnect()
    return summary
