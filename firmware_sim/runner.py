"""Paces a simulation's publications onto real MQTT brokers over mutual TLS.

Two connection modes:

- ``per-device``: every device has its own MQTT connection and certificate, as in the field.
- ``multiplexed``: a few connections under one load-generator identity publish for many devices
  (the broker ACL must let that identity write ``ct/v1/dev/+/up``): for load tests.

Devices report to gateway ``i`` through broker ``i mod len(brokers)``. Publications are QoS 1; the
lag of each is measured from its scheduled wall-clock time to the broker's PUBACK.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import ssl
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from paho.mqtt.reasoncodes import ReasonCode

from coldtrace.contract.topics import device_uplink
from coldtrace.mqtt import (
    BrokerUrl,
    ConnectRefused,
    MqttClient,
    MqttError,
    TlsFiles,
    connect_with_backoff,
    reconnect_forever,
)
from firmware_sim.device import Emission
from firmware_sim.fleet import Simulation
from firmware_sim.truth import PublishKind

logger = logging.getLogger(__name__)


class ConnectionMode(enum.StrEnum):
    """How devices map onto MQTT connections."""

    PER_DEVICE = "per-device"
    MULTIPLEXED = "multiplexed"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunConfig:
    """How to run a simulation against brokers."""

    brokers: tuple[BrokerUrl, ...]
    ca_file: Path
    mode: ConnectionMode = ConnectionMode.MULTIPLEXED
    device_certs: Path | None = None
    """Directory with ``<device_id>/cert.pem`` and ``key.pem`` per device (per-device mode)."""
    loadgen: TlsFiles | None = None
    """The load generator's identity (multiplexed mode)."""
    connections: int = 4
    speed: float = 1.0
    """Simulated seconds per wall-clock second; 0 publishes as fast as the broker acknowledges."""
    max_in_flight: int = 20_000
    connect_timeout_s: float = 10.0
    connect_deadline_s: float = 60.0
    """Keep retrying an unreachable broker this long before giving up."""
    connect_concurrency: int = 32
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0


@dataclass(slots=True)
class RunSummary:
    """What a run did."""

    published: int = 0
    acknowledged: int = 0
    refused: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    refused_devices: dict[str, str] = field(default_factory=dict)
    """Devices whose connection was refused (certificate revoked, unknown CA, …), with the reason."""
    lags_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    sim_s: float = 0.0
    connect_s: float = 0.0
    """Time to open every connection before the run."""
    cpu_s: float = 0.0
    """Process CPU time (all threads) from the start of the clock to the last acknowledgement."""

    def lag_percentile(self, q: float) -> float | None:
        """Publish-to-PUBACK lag percentile ``q`` (0..100), seconds."""
        if not self.lags_s:
            return None
        ordered = sorted(self.lags_s)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


ProgressCallback = Callable[[float, RunSummary], None]


async def connect_with_retry(client: MqttClient, config: RunConfig) -> None:
    """Connect with the run's backoff settings (see :func:`coldtrace.mqtt.connect_with_backoff`)."""
    await connect_with_backoff(
        client, initial_s=config.backoff_initial_s, max_s=config.backoff_max_s,
        deadline_s=config.connect_deadline_s, connect_timeout_s=config.connect_timeout_s,
    )  # fmt: skip


class _Links:
    """The connections of one run, created on first use and kept alive."""

    def __init__(self, config: RunConfig, summary: RunSummary) -> None:
        self._config = config
        self._summary = summary
        self._clients: dict[tuple[str, int], MqttClient] = {}
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._supervisors: set[asyncio.Task[None]] = set()

    def _key(self, emission: Emission) -> tuple[str, int]:
        broker = emission.gateway % len(self._config.brokers)
        if self._config.mode is ConnectionMode.PER_DEVICE:
            return emission.device_id, broker
        return f"sim-loadgen-{hash(emission.device_id) % self._config.connections}", broker

    def _tls(self, name: str) -> TlsFiles:
        if self._config.mode is ConnectionMode.MULTIPLEXED:
            if self._config.loadgen is None:
                raise ValueError("multiplexed mode needs the load generator's certificate (loadgen)")
            return self._config.loadgen
        if self._config.device_certs is None:
            raise ValueError("per-device mode needs the directory of device certificates")
        folder = self._config.device_certs / name
        return TlsFiles(
            ca_file=self._config.ca_file, cert_file=folder / "cert.pem", key_file=folder / "key.pem"
        )

    def refused(self, emission: Emission) -> bool:
        """True when this emission's device could not connect (reported once, by id)."""
        return (
            self._config.mode is ConnectionMode.PER_DEVICE
            and emission.device_id in self._summary.refused_devices
        )

    async def client(self, emission: Emission) -> MqttClient | None:
        """The connection that carries ``emission``; None if its device was refused."""
        key = self._key(emission)
        existing = self._clients.get(key)
        if existing is not None:
            return existing
        name, broker_index = key
        broker = self._config.brokers[broker_index]
        tls = self._tls(name)
        client = MqttClient(
            client_id=f"{name}@{broker_index}" if self._config.mode is ConnectionMode.MULTIPLEXED else name,
            broker=broker, tls=tls, clean_start=False, session_expiry_s=3600,
        )  # fmt: skip
        self._clients[key] = client
        try:
            await connect_with_retry(client, self._config)
        except (ConnectRefused, ssl.SSLError, OSError) as exc:
            if self._config.mode is ConnectionMode.MULTIPLEXED:
                raise
            self._summary.refused_devices[emission.device_id] = str(exc)
            # No traceback: the reason is the message, and the device is reported by id.
            logger.error("device %s refused by %s:%s: %s", emission.device_id, broker.host, broker.port, exc)  # noqa: TRY400
            return None
        task = asyncio.create_task(self._supervise(client), name=f"supervise-{client.client_id}")
        self._supervisors.add(task)
        return client

    async def preconnect(self, emissions: list[Emission]) -> None:
        """Open the connections of all these emissions' devices now, a bounded number at a time."""
        gate = asyncio.Semaphore(self._config.connect_concurrency)

        async def one(emission: Emission) -> None:
            async with gate:
                await self.client(emission)

        try:
            async with asyncio.TaskGroup() as group:
                for emission in emissions:
                    group.create_task(one(emission))
        except* MqttError as failures:
            raise failures.exceptions[0] from None  # one clear reason, not a group of the same

    async def _supervise(self, client: MqttClient) -> None:
        try:
            await reconnect_forever(
                client, initial_s=self._config.backoff_initial_s, max_s=self._config.backoff_max_s,
                deadline_s=self._config.connect_deadline_s, connect_timeout_s=self._config.connect_timeout_s,
            )  # fmt: skip
        except MqttError as exc:
            logger.error("%s gave up reconnecting: %s", client.client_id, exc)  # noqa: TRY400

    async def close(self) -> None:
        """Stop supervising and disconnect every link."""
        for task in self._supervisors:
            task.cancel()
        for task in self._supervisors:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for client in self._clients.values():
            await client.disconnect()


async def run_fleet(
    simulation: Simulation, config: RunConfig, *, on_progress: ProgressCallback | None = None
) -> RunSummary:
    """Publish every emission of ``simulation`` at its (scaled) time and wait for all acknowledgements."""
    summary = RunSummary()
    links = _Links(config, summary)
    loop = asyncio.get_running_loop()
    # Connect every device before the clock starts, so connection set-up is not counted as lag and
    # refused devices are known (and reported) up front.
    first = [
        Emission(
            simulation.start_ms, d.device_id, d.gateway_at(simulation.start_ms), b"", PublishKind.NORMAL, ()
        )
        for d in simulation.devices
    ]
    connect_started = loop.time()
    await links.preconnect(first)
    summary.connect_s = loop.time() - connect_started
    t0 = loop.time()
    cpu0 = time.process_time()
    in_flight: deque[asyncio.Future[ReasonCode]] = deque()

    def acknowledged(future: asyncio.Future[ReasonCode], due: float) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if error is not None or future.result().is_failure:
            summary.refused += 1
            logger.warning("publish refused: %s", error or future.result())
            return
        summary.acknowledged += 1
        summary.lags_s.append(loop.time() - due)

    last_progress = 0.0
    try:
        for emission in simulation.emissions():
            sim_elapsed = (emission.t_sim_ms - simulation.start_ms) / 1000.0
            due = t0 + sim_elapsed / config.speed if config.speed > 0 else loop.time()
            # Always yield: acknowledgements, reconnects and progress run on this loop too.
            await asyncio.sleep(max(0.0, due - loop.time()))
            if links.refused(emission):
                continue
            client = await links.client(emission)
            if client is None:
                continue
            future = client.publish_nowait(device_uplink(emission.device_id), emission.payload, qos=1)
            future.add_done_callback(functools.partial(acknowledged, due=due))
            in_flight.append(future)
            summary.published += 1
            summary.kinds[emission.kind.value] += 1
            while len(in_flight) >= config.max_in_flight or (in_flight and in_flight[0].done()):
                await asyncio.wait([in_flight.popleft()])
            if on_progress is not None and loop.time() - last_progress > 0.25:
                last_progress = loop.time()
                on_progress(sim_elapsed, summary)
        if in_flight:
            await asyncio.wait(in_flight)
    finally:
        await links.close()
    summary.wall_s = loop.time() - t0
    summary.cpu_s = time.process_time() - cpu0
    summary.sim_s = (simulation.end_ms - simulation.start_ms) / 1000.0
    if on_progress is not None:
        on_progress(summary.sim_s, summary)
    return summary
