"""The edge agent end to end over real mutual-TLS brokers: simulator → gateway broker → agent → cloud."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from certs.pki import IssuedIdentity, Pki, Role
from coldtrace.contract import GENESIS_HASH, ContractError, Reading, SignedBatch, verify_frame
from coldtrace.mqtt import BrokerUrl, MqttClient, TlsFiles
from edge_agent.agent import EdgeAgent
from edge_agent.settings import AgentSettings
from firmware_sim.fleet import Simulation
from firmware_sim.runner import ConnectionMode, RunConfig, run_fleet
from firmware_sim.scenario import builtin_scenarios
from firmware_sim.truth import Fate, SampleTruth, TruthWriter
from tests.edge_agent.conftest import GATEWAY, agent_toml
from tests.harness.mosquitto import Mosquitto

pytestmark = pytest.mark.services
Identity = Callable[[Role, str], IssuedIdentity]
START_MS = 1_795_000_000_000


def _tls(pki: Pki, who: IssuedIdentity) -> TlsFiles:
    return TlsFiles(ca_file=pki.ca_bundle_path, cert_file=who.cert_path, key_file=who.key_path)


class CloudCollector:
    """Subscribes to the gateway's batches on the cloud broker and verifies every one."""

    def __init__(self, broker: Mosquitto, pki: Pki, identity: Identity, key: Ed25519PrivateKey) -> None:
        self.client = MqttClient(
            client_id="svc-ingest", broker=BrokerUrl(host=broker.host, port=broker.port, tls=True),
            tls=_tls(pki, identity(Role.SERVICE, "svc-ingest")),
        )  # fmt: skip
        self.public_key = key.public_key()
        self.batches: dict[int, SignedBatch] = {}
        self.readings: dict[tuple[str, int], Reading] = {}
        self.copies = 0

    async def start(self) -> None:
        await self.client.connect()
        await self.client.subscribe(f"ct/v1/gw/{GATEWAY}/batch", qos=1)

    async def until(self, expected: set[tuple[str, int]], timeout_s: float, agent: EdgeAgent) -> None:
        try:
            await self._collect(expected, timeout_s)
        except TimeoutError:
            missing = sorted(expected - set(self.readings))
            counters = [
                line for line in agent.metrics.render().decode().splitlines()
                if line.startswith(("coldtrace_agent_messages", "coldtrace_agent_readings"))
            ]  # fmt: skip
            pytest.fail(
                f"{len(missing)} of {len(expected)} readings missing, e.g. {missing[:5]}; "
                f"{agent.health()}; {counters}"
            )

    async def _collect(self, expected: set[tuple[str, int]], timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while not expected <= set(self.readings):
                message = await self.client.messages.get()
                signed = verify_frame(message.payload, self.public_key)  # raises on any tampering
                self.batches[signed.batch.batch_seq] = signed
                for reading in signed.batch.readings:
                    self.copies += 1
                    self.readings[(reading.device_id, reading.seq)] = reading

    def check_chain(self) -> None:
        seqs = sorted(self.batches)
        assert seqs == list(range(1, len(seqs) + 1)), "batch sequence has a gap"
        previous = GENESIS_HASH
        for seq in seqs:
            assert self.batches[seq].batch.prev_hash == previous
            previous = self.batches[seq].frame_hash


async def _simulate(
    gateway: Mosquitto, pki: Pki, identity: Identity, devices: int, seconds: float, seed: int
) -> TruthWriter:
    writer = TruthWriter(keep=True)
    scenario = builtin_scenarios()["mixed-fleet"].model_copy(update={"duration_s": seconds})
    simulation = Simulation(scenario, devices=devices, seed=seed, start_ms=START_MS, truth=writer)
    config = RunConfig(
        brokers=(BrokerUrl(host=gateway.host, port=gateway.port, tls=True),), ca_file=pki.ca_bundle_path,
        mode=ConnectionMode.MULTIPLEXED, loadgen=_tls(pki, identity(Role.SERVICE, "sim-loadgen")), speed=0.0,
    )  # fmt: skip
    summary = await run_fleet(simulation, config)
    assert summary.acknowledged == summary.published
    return writer


def _sent(writer: TruthWriter) -> set[tuple[str, int]]:
    return {
        (r.device_id, r.seq) for r in writer.records if isinstance(r, SampleTruth) and r.fate is Fate.SENT
    }


def test_every_reading_arrives_once_signed_and_chained(
    tmp_path: Path, pki: Pki, identity: Identity, gateway_broker: Mosquitto, cloud_broker: Mosquitto,
    signing_key: tuple[Path, Ed25519PrivateKey],
) -> None:  # fmt: skip
    path, key = signing_key
    config = agent_toml(
        tmp_path, pki=pki, identity=identity, local=gateway_broker, cloud=cloud_broker, signing=path
    )
    agent = EdgeAgent(AgentSettings.load(config))

    async def scenario() -> CloudCollector:
        collector = CloudCollector(cloud_broker, pki, identity, key)
        await collector.start()
        runner = asyncio.create_task(agent.run())
        try:
            async with asyncio.timeout(30):
                await agent.ready()
            writer = await _simulate(gateway_broker, pki, identity, devices=30, seconds=1200, seed=21)
            await collector.until(_sent(writer), timeout_s=60, agent=agent)
            return collector
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
            await collector.client.disconnect()

    collector = asyncio.run(scenario())
    collector.check_chain()
    readings = collector.readings
    assert len(readings) == collector.copies  # no reading in two batches
    assert all(r.model is not None and r.anomaly_score is not None for r in readings.values())
    per_device: dict[str, list[int]] = {}
    for batch in sorted(collector.batches):
        for r in collector.batches[batch].batch.readings:
            per_device.setdefault(r.device_id, []).append(r.seq)
    assert per_device
    with pytest.raises(ContractError):
        verify_frame(collector.batches[1].frame[:-1] + b" ", key.public_key())
