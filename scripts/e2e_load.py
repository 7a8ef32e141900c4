"""The end-to-end benchmark's load: simulated devices at a fixed rate, excursions at known moments.

Background readings come from the fleet simulator (``firmware_sim``, scenario ``normal-day`` on one
gateway): its emissions are generated before the clock starts and paced onto the gateway broker at
their scheduled times by the simulator's multiplexed load generator identity, so the load costs only
MQTT publishing while it is measured. Excursions are single 12 °C readings (vendor A JSON, like the
reefers) of fresh devices, each bound by the manifest to a vaccines shipment of its own.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from paho.mqtt.reasoncodes import ReasonCode

from coldtrace.clock import wall_ms
from coldtrace.contract.manifest import Binding, DeviceEntry, Manifest
from coldtrace.contract.reading import SourceFormat
from coldtrace.contract.topics import device_uplink
from coldtrace.device_formats import DeviceMessage, DeviceSample, encode
from coldtrace.mqtt import BrokerUrl, MqttClient, PublishRefused, TlsFiles, reached_subscribers
from coldtrace.profiles import ProfileName
from firmware_sim.device import FIRMWARE_VERSION, Emission
from firmware_sim.fleet import Simulation
from firmware_sim.scenario import builtin_scenarios
from firmware_sim.truth import TruthWriter

SCENARIO = "normal-day"
EXCURSION_C = 12.0
"""Above the vaccines limit (8 °C) by more than any in-range drift; below its critical margin's end."""
LOADGEN_CONNECTIONS = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """When things happen, in seconds after the load begins."""

    rate: int
    """Offered readings/s of the background fleet."""
    warmup_s: float
    excursions: int
    per_second: float
    """Excursions per second."""
    tail_s: float = 1.0

    @property
    def window(self) -> tuple[float, float]:
        """The measured window: the excursions' span."""
        return self.warmup_s, self.warmup_s + self.excursions / self.per_second

    @property
    def duration_s(self) -> float:
        """How long the background load runs."""
        return self.window[1] + self.tail_s

    def excursion_at(self, i: int) -> float:
        """When excursion ``i`` is published."""
        return self.warmup_s + i / self.per_second


def excursion_device(i: int) -> str:
    """Device id of excursion ``i``."""
    return f"exc-{i:04d}"


def excursion_shipment(i: int) -> str:
    """The shipment excursion ``i``'s device is bound to (vaccines, never reported before)."""
    return f"SHP-EXC-{i:04d}"


def reading_payload(device_id: str, *, temperature_c: float, seq: int = 1) -> bytes:
    """One sample of ``device_id`` taken now, in vendor A JSON (the reefers' format)."""
    sample = DeviceSample(
        seq=seq, t_device_ms=wall_ms(), temperature_c=temperature_c, humidity_pct=50.0, battery_v=3.6
    )
    return encode(DeviceMessage(device_id, FIRMWARE_VERSION, SourceFormat.VENDOR_A_JSON, (sample,)))


def background(plan: Plan, *, seed: int, start_ms: int) -> tuple[Simulation, list[Emission]]:
    """The fleet (``rate`` x the sample interval devices on gateway gw-0) and its emissions, in order."""
    scenario = builtin_scenarios()[SCENARIO].model_copy(
        update={"duration_s": float(math.ceil(plan.duration_s)), "gateways": 1}
    )
    devices = max(1, round(plan.rate * scenario.sample_interval_s))
    simulation = Simulation(scenario, devices=devices, seed=seed, start_ms=start_ms, truth=TruthWriter())
    return simulation, list(simulation.emissions())


def _entry(
    device_id: str, *, profile: ProfileName, shipment_id: str | None, lots: tuple[str, ...]
) -> DeviceEntry:
    binding = Binding(lot_ids=tuple(sorted(lots)), profile=profile, shipment_id=shipment_id, valid_from_ms=0)
    return DeviceEntry(device_id=device_id, bindings=(binding,))


def manifest(simulation: Simulation, plan: Plan, *, gateway_id: str, site_id: str) -> Manifest:
    """Version 1: every simulated device with its shipment and lots, and every excursion device."""
    entries = [
        _entry(b.device_id, profile=ProfileName(b.profile), shipment_id=b.shipment_id, lots=b.lot_ids)
        for b in simulation.bindings()
    ]
    entries += [
        _entry(
            excursion_device(i),
            profile=ProfileName.VACCINES,
            shipment_id=excursion_shipment(i),
            lots=(f"LOT-EXC-{i:04d}",),
        )
        for i in range(plan.excursions)
    ]
    return Manifest(
        devices=tuple(entries), gateway_id=gateway_id, issued_ms=wall_ms(), site_id=site_id, version=1
    )


class Loadgen:
    """The simulator's multiplexed mode: a few connections under the load-generator identity."""

    def __init__(self, *, broker: BrokerUrl, tls: TlsFiles, connections: int = LOADGEN_CONNECTIONS) -> None:
        self.clients = [
            MqttClient(client_id=f"sim-loadgen-{k}", broker=broker, tls=tls, max_inflight=20_000)
            for k in range(connections)
        ]

    async def connect(self) -> None:
        """Open every connection."""
        for client in self.clients:
            await client.connect()

    async def close(self) -> None:
        """Close every connection."""
        for client in self.clients:
            await client.disconnect()

    def publish(self, device_id: str, payload: bytes) -> asyncio.Future[ReasonCode]:
        """QoS 1 on the device's uplink topic; the future resolves with the PUBACK's reason."""
        client = self.clients[hash(device_id) % len(self.clients)]
        return client.publish_nowait(device_uplink(device_id), payload, qos=1)

    async def until_routed(self, device_id: str, payload: Callable[[], bytes], *, within_s: float) -> None:
        """Publish a probe until the broker has a subscriber for it (the consumer under test is subscribed).

        The consumer is another process that subscribes when it is ready; the broker answers "no
        matching subscribers" until then, so this asks again every 100 ms.
        """
        async with asyncio.timeout(within_s):
            while True:
                reason = await self.publish(device_id, payload())
                if reason.is_failure:
                    raise PublishRefused(device_uplink(device_id), reason)
                if reached_subscribers(reason):
                    return
                await asyncio.sleep(0.1)


@dataclass(slots=True)
class Offered:
    """What was published: (monotonic time, readings) per message, and every (device, seq) sent."""

    published: list[tuple[float, int]] = field(default_factory=list)
    keys: set[tuple[str, int]] = field(default_factory=set)
    acks: list[asyncio.Future[ReasonCode]] = field(default_factory=list)

    def readings_between(self, t0: float, t1: float) -> int:
        """Readings published in [t0, t1)."""
        return sum(n for t, n in self.published if t0 <= t < t1)


async def offer(
    loadgen: Loadgen, plan: Plan, emissions: Sequence[Emission], *, start_ms: int,
    on_excursion: Callable[[int, bytes, float], None], on_mark: Callable[[str], Awaitable[None]],
) -> Offered:  # fmt: skip
    """Pace the fleet's emissions and the excursions onto the broker; returns once every PUBACK is in.

    Emissions go out at their scheduled time (their payloads carry the device clock of that moment);
    ``on_excursion(i, payload, published_at)`` runs as excursion ``i`` is published, ``on_mark`` at the
    window's start and end. A broker refusal is fatal.
    """
    loop = asyncio.get_running_loop()
    late_ms = max(0, wall_ms() - start_ms)  # generating the fleet may have taken longer than planned
    begin = loop.time() + max(0.0, (start_ms - wall_ms()) / 1000)
    done = Offered()

    def publish(device_id: str, payload: bytes, seqs: Sequence[int]) -> float:
        now = time.monotonic()
        done.acks.append(loadgen.publish(device_id, payload))
        done.published.append((now, len(seqs)))
        done.keys.update((device_id, s) for s in seqs)
        return now

    async def fleet() -> None:
        for e in emissions:
            due = begin + (e.t_sim_ms - start_ms) / 1000
            await asyncio.sleep(max(0.0, due - loop.time()))  # always yield: acks run on this loop
            publish(e.device_id, e.payload, e.seqs)

    async def excursions() -> None:
        t0, t1 = plan.window
        await asyncio.sleep(max(0.0, begin + t0 - loop.time()))
        await on_mark("start")
        for i in range(plan.excursions):
            await asyncio.sleep(max(0.0, begin + plan.excursion_at(i) - loop.time()))
            payload = reading_payload(excursion_device(i), temperature_c=EXCURSION_C)
            on_excursion(i, payload, publish(excursion_device(i), payload, (1,)))
        await asyncio.sleep(max(0.0, begin + t1 - loop.time()))
        await on_mark("end")

    if late_ms > 2000:
        raise SystemExit(f"the fleet was ready {late_ms} ms after its start time; plan a later start")
    async with asyncio.TaskGroup() as tg:
        tg.create_task(fleet(), name="fleet")
        tg.create_task(excursions(), name="excursions")
    reasons = await asyncio.gather(*done.acks)
    refused = [r for r in reasons if r.is_failure]
    if refused:
        raise SystemExit(f"the gateway broker refused {len(refused)} publishes: {refused[0]}")
    return done
