"""Gateways for the cloud drills: pre-signed batch chains, their ground truth, and MQTT publishers.

Each gateway serves one shipment carried by two devices that report at the same instants, every
three minutes, ten readings each per batch (twenty per batch). On a *breaching* gateway device A
reads 9 °C seven times in a row across a batch boundary (18 min, above the vaccines limit of 8 °C for
longer than its 15 min delay), while device B reads about 3 °C at the same instants. Pairing the two
keeps the mean kinetic temperature of any subset of batches below 8 °C (about 6.5 °C at worst), and
the breach (21 min, plus at most one inflated 15 min gap when batches arrive out of order) stays
below the 60 min budget, so the only rule that can fire is ``temp_high``: exactly one alert and one
rule hold per breaching shipment, whatever order the workers see the batches in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Engine

from certs.pki import IssuedIdentity, Pki, Role
from coldtrace.contract.topics import gateway_batches
from coldtrace.mqtt import (
    BrokerUrl,
    MqttClient,
    MqttError,
    PublishRefused,
    TlsFiles,
    connect_with_backoff,
    reconnect_forever,
)
from tests.cloud_ingest.builders import MINUTE, T0, GatewaySim, add_shipment, reading
from tests.harness.mosquitto import Mosquitto

logger = logging.getLogger(__name__)

Identity = Callable[[Role, str], IssuedIdentity]
BREACH_C = 9.0
NO_SUBSCRIBERS = 16
"""PUBACK reason code "No matching subscribers" (MQTT 5.0, 3.4.2.1)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetPlan:
    """The shape of one drill's load."""

    tag: str
    """Prefix of every gateway, device and shipment id, so drills sharing a server stay apart."""
    gateways: int = 4
    batches: int = 200
    per_device: int = 10
    """Readings per device per batch (two devices per gateway)."""
    breaching: int = 2
    """The first ``breaching`` gateways' shipments have an excursion."""
    step_ms: int = 3 * MINUTE
    """Between two readings of a device. Out-of-order batches make the rule engine replay 24 h of a
    device's history, so the step sets the cost of that replay (480 rows a device at 3 min)."""
    breach_len: int = 7
    """Device A's 9 °C readings in a row: the last four of the middle batch, the first three of the next."""

    @property
    def breach_from(self) -> int:
        """0-based index of device A's first 9 °C reading."""
        return (self.batches // 2 + 1) * self.per_device - 4


@dataclass(frozen=True, slots=True)
class GatewayLoad:
    """One gateway's signed chain and what it carries."""

    gateway_id: str
    sim: GatewaySim
    frames: tuple[bytes, ...]
    devices: tuple[str, str]
    shipment_id: str
    lot_id: str
    breaching: bool


@dataclass
class Fleet:
    """Every gateway of a drill; frames are signed once, up front, so publishing is only I/O."""

    plan: FleetPlan
    loads: list[GatewayLoad] = field(default_factory=list)

    def __post_init__(self) -> None:
        p = self.plan
        for k in range(p.gateways):
            gateway_id = f"{p.tag}-gw{k}"
            devices = (f"{p.tag}-g{k}-a", f"{p.tag}-g{k}-b")
            shipment, lot = f"{p.tag}-SHP-{k}", f"{p.tag}-LOT-{k}"
            breaching = k < p.breaching
            sim = GatewaySim(gateway_id=gateway_id, site_id=f"{p.tag}-site")
            frames = []
            for i in range(p.batches):
                batch = []
                for j in range(p.per_device):
                    n = i * p.per_device + j
                    seq, t_ms = n + 1, T0 + n * p.step_ms
                    hot = breaching and p.breach_from <= n < p.breach_from + p.breach_len
                    temp_a = BREACH_C if hot else 5.0 + (j % 5) / 10
                    for device, temp in ((devices[0], temp_a), (devices[1], 3.0 + (j % 5) / 10)):
                        batch.append(
                            reading(device, seq, t_ms, temp, shipment_id=shipment, lot_ids=(lot,),
                                    site_id=f"{p.tag}-site")
                        )  # fmt: skip
                frames.append(sim.frame(batch))
            self.loads.append(GatewayLoad(gateway_id, sim, tuple(frames), devices, shipment, lot, breaching))

    # -- ground truth ------------------------------------------------------------------------------
    @property
    def batches(self) -> int:
        """Batches the fleet publishes."""
        return self.plan.gateways * self.plan.batches

    @property
    def readings(self) -> int:
        """Readings the fleet publishes (each (device, seq) once)."""
        return self.batches * 2 * self.plan.per_device

    @property
    def points(self) -> int:
        """``reading_temperature_c`` samples the time-series server must end up with."""
        return self.readings

    def expected_keys(self) -> set[tuple[str, int]]:
        """Every (device, seq) the fleet sends."""
        n = self.plan.batches * self.plan.per_device
        return {(d, s) for load in self.loads for d in load.devices for s in range(1, n + 1)}

    @property
    def breaching_shipments(self) -> set[str]:
        """Shipments that must get exactly one excursion alert and one rule hold."""
        return {load.shipment_id for load in self.loads if load.breaching}

    def device_selector(self) -> str:
        """PromQL/export selector of this fleet's temperature samples."""
        return f'{{__name__="reading_temperature_c",device=~"{self.plan.tag}-g.*"}}'

    def register(self, engine: Engine) -> None:
        """Register every gateway's key and every shipment with its lot, as enrolment and a manifest do."""
        for load in self.loads:
            load.sim.register(engine)
            add_shipment(engine, load.shipment_id, (load.lot_id,))


class Publisher:
    """A gateway's cloud link: persistent session, QoS 1, reconnects on its own (like the edge agent)."""

    def __init__(self, broker: Mosquitto, pki: Pki, who: IssuedIdentity, gateway_id: str) -> None:
        self.gateway_id = gateway_id
        self.client = MqttClient(
            client_id=gateway_id, broker=BrokerUrl(host=broker.host, port=broker.port, tls=True),
            tls=TlsFiles(ca_file=pki.ca_bundle_path, cert_file=who.cert_path, key_file=who.key_path),
            clean_start=False, session_expiry_s=600, keepalive_s=5,
        )  # fmt: skip
        self.acknowledged = 0
        self.unrouted = 0
        """PUBACKs with reason 16 (no matching subscribers): the broker dropped the batch."""

    async def send(self, frames: Sequence[bytes], *, per_second: float, window: int = 32) -> None:
        """Publish ``frames`` in order at about ``per_second``, up to ``window`` unacknowledged.

        paho keeps an unacknowledged QoS 1 publish across a reconnect and sends it again, so every
        future resolves once the broker has the frame, even across a broker restart. A PUBACK with
        reason 16 (no matching subscribers) is a success code, but the broker has dropped the frame:
        Mosquitto 2.0.11 answers so after a restart until the workers subscribe again (their
        persisted sessions do not route shared-subscription messages meanwhile), so a gateway must
        keep such a batch and send it again, as this one does.
        """
        topic = gateway_batches(self.gateway_id)
        slots = asyncio.Semaphore(window)
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def one(frame: bytes) -> None:
            try:
                while (reason := await self.client.publish_nowait(topic, frame, qos=1)) == NO_SUBSCRIBERS:
                    # Accepted and dropped: no session holds it. Keep the batch and send it again.
                    self.unrouted += 1
                    await asyncio.sleep(0.2)
                if reason.is_failure:
                    raise PublishRefused(topic, reason)
                self.acknowledged += 1
            finally:
                slots.release()

        async with asyncio.TaskGroup() as tg:
            for i, frame in enumerate(frames):
                await slots.acquire()
                tg.create_task(one(frame), name=f"{self.gateway_id}-publish-{i + 1}")
                # Load shaping, not synchronisation: a gateway sends at its own pace.
                await asyncio.sleep(max(0.0, start + (i + 1) / per_second - loop.time()))


@contextlib.asynccontextmanager
async def publishers(
    broker: Mosquitto, pki: Pki, identity: Identity, fleet: Fleet
) -> AsyncIterator[list[Publisher]]:
    """Connected publishers, one per gateway, each reconnecting by itself until the block ends."""
    pubs = [
        Publisher(broker, pki, identity(Role.GATEWAY, load.gateway_id), load.gateway_id)
        for load in fleet.loads
    ]
    async with asyncio.TaskGroup() as tg:
        for pub in pubs:
            await connect_with_backoff(pub.client, initial_s=0.1, max_s=1.0)
        tasks = [
            tg.create_task(_stay_connected(pub.client), name=f"{pub.gateway_id}-reconnect") for pub in pubs
        ]
        try:
            yield pubs
        finally:
            for task in tasks:
                task.cancel()
            for pub in pubs:
                await pub.client.disconnect()


async def _stay_connected(client: MqttClient) -> None:
    # A broker going down or coming up may close a connection before CONNACK, which reads as a
    # refusal; an identity accepted before is worth another try.
    while True:
        try:
            await reconnect_forever(client, initial_s=0.1, max_s=1.0)
        except MqttError as exc:
            logger.warning("%s; reconnecting", exc)
            await asyncio.sleep(0.2)


async def publish_fleet(pubs: Sequence[Publisher], fleet: Fleet, *, per_second: float) -> None:
    """Every gateway publishes its whole chain concurrently, each at ``per_second`` batches/s."""
    async with asyncio.TaskGroup() as tg:
        for pub, load in zip(pubs, fleet.loads, strict=True):
            tg.create_task(pub.send(load.frames, per_second=per_second), name=f"{pub.gateway_id}-send")
