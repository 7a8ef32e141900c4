"""Crash drill: the agent is SIGKILLed at random moments and the cloud broker goes away for a while.

Against the simulator's ground truth: every reading the devices sent reaches the cloud exactly once
after de-duplication by (device, seq), every batch verifies, and the hash chain has no gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from certs.pki import IssuedIdentity, Pki, Role
from coldtrace.contract import GENESIS_HASH, verify_frame
from coldtrace.mqtt import BrokerUrl, MqttClient, TlsFiles, connect_with_backoff
from firmware_sim.fleet import Simulation
from firmware_sim.runner import ConnectionMode, RunConfig, run_fleet
from firmware_sim.scenario import builtin_scenarios
from firmware_sim.truth import Fate, SampleTruth, TruthWriter
from tests.edge_agent.conftest import AGENT_ACL, GATEWAY, agent_toml
from tests.harness.mosquitto import DEFAULT_SERVICE_ACL, Mosquitto, MosquittoTlsFiles
from tests.harness.services import require_binary

pytestmark = pytest.mark.services
Identity = Callable[[Role, str], IssuedIdentity]
START_MS = 1_795_000_000_000


@pytest.fixture
def durable_cloud(pki: Pki, server_identity: IssuedIdentity) -> Iterator[Mosquitto]:
    """A cloud broker that keeps sessions on disk, so a restart loses no queued batch."""
    binary = require_binary("Mosquitto", "mosquitto", package="mosquitto", extra_dirs=[Path("/usr/sbin")])
    tls = MosquittoTlsFiles(
        cafile=pki.ca_bundle_path, certfile=server_identity.chain_path, keyfile=server_identity.key_path,
        crlfile=pki.crl_path,
    )  # fmt: skip
    broker = Mosquitto(
        binary,
        tls,
        service_acl={**DEFAULT_SERVICE_ACL, **AGENT_ACL},
        persistence=True,
        log_every_message=False,
    )
    broker.start()
    yield broker
    broker.close()


def _tls(pki: Pki, who: IssuedIdentity) -> TlsFiles:
    return TlsFiles(ca_file=pki.ca_bundle_path, cert_file=who.cert_path, key_file=who.key_path)


class Agent:
    """``coldtrace agent run`` as a child process that can be killed and started again."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "coldtrace", "agent", "run", "--config", str(self.config)],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def kill9(self) -> None:
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.kills += 1

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        self.proc.terminate()
        return self.proc.wait(timeout=30)


def test_no_reading_lost_or_duplicated_across_kill9_and_cloud_outage(
    tmp_path: Path, pki: Pki, identity: Identity, gateway_broker: Mosquitto, durable_cloud: Mosquitto,
    signing_key: tuple[Path, Ed25519PrivateKey],
) -> None:  # fmt: skip
    key_path, key = signing_key
    config = agent_toml(
        tmp_path, pki=pki, identity=identity, local=gateway_broker, cloud=durable_cloud, signing=key_path
    )
    agent = Agent(config, tmp_path / "agent.log")
    rng = random.Random(7)  # noqa: S311 - test schedule, not security
    frames: dict[int, bytes] = {}
    seen: dict[tuple[str, int], int] = {}
    expected: set[tuple[str, int]] = set()
    complete = asyncio.Event()

    async def collect(stop: asyncio.Event) -> None:
        cloud = BrokerUrl(host=durable_cloud.host, port=durable_cloud.port, tls=True)
        client = MqttClient(
            client_id="svc-ingest", broker=cloud, tls=_tls(pki, identity(Role.SERVICE, "svc-ingest")),
            clean_start=False, session_expiry_s=3600,
        )  # fmt: skip
        await connect_with_backoff(client, initial_s=0.1, max_s=1.0)
        await client.subscribe(f"ct/v1/gw/{GATEWAY}/batch", qos=1)
        while not stop.is_set():
            getter = asyncio.ensure_future(client.messages.get())
            lost = asyncio.ensure_future(client.disconnected.wait())
            await asyncio.wait([getter, lost], return_when=asyncio.FIRST_COMPLETED)
            lost.cancel()
            if not getter.done():
                getter.cancel()
                await connect_with_backoff(client, initial_s=0.1, max_s=1.0)  # the broker came back
                continue
            message = getter.result()
            signed = verify_frame(message.payload, key.public_key())
            seq = signed.batch.batch_seq
            if seq in frames:
                assert frames[seq] == message.payload  # a resend is byte-identical
                continue
            frames[seq] = message.payload
            for reading in signed.batch.readings:
                seen[(reading.device_id, reading.seq)] = seq
            if expected and expected <= seen.keys():
                complete.set()

    async def drill() -> None:
        stop = asyncio.Event()
        collector = asyncio.create_task(collect(stop))
        agent.start()
        writer = TruthWriter(keep=True)
        scenario = builtin_scenarios()["mixed-fleet"].model_copy(update={"duration_s": 1800.0})
        simulation = Simulation(scenario, devices=40, seed=33, start_ms=START_MS, truth=writer)
        sim_config = RunConfig(
            brokers=(BrokerUrl(host=gateway_broker.host, port=gateway_broker.port, tls=True),),
            ca_file=pki.ca_bundle_path, mode=ConnectionMode.MULTIPLEXED,
            loadgen=_tls(pki, identity(Role.SERVICE, "sim-loadgen")), speed=120.0,
        )  # fmt: skip
        # The agent's broker session must exist before devices publish (an installed gateway has one).
        await _wait_for_session(gateway_broker)
        publishing = asyncio.create_task(run_fleet(simulation, sim_config))
        for round_ in range(5):
            await asyncio.sleep(rng.uniform(0.5, 2.5))
            agent.kill9()
            if round_ == 2:  # the cloud goes away for a while, with the agent down too
                durable_cloud.stop()
                agent.start()
                await asyncio.sleep(2.0)
                durable_cloud.start()
            else:
                agent.start()
        summary = await publishing
        assert summary.acknowledged == summary.published
        expected.update(
            (r.device_id, r.seq) for r in writer.records if isinstance(r, SampleTruth) and r.fate is Fate.SENT
        )
        if expected <= seen.keys():
            complete.set()
        try:
            async with asyncio.timeout(90):
                await complete.wait()
        finally:
            stop.set()
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collector

    try:
        asyncio.run(drill())
    finally:
        agent.stop()
    assert agent.kills == 5
    assert set(seen) == expected  # nothing lost, nothing invented
    assert sorted(frames) == list(range(1, len(frames) + 1))  # no gap in the chain across restarts
    previous = GENESIS_HASH
    for seq in sorted(frames):
        signed = verify_frame(frames[seq], key.public_key())
        assert signed.batch.prev_hash == previous
        previous = signed.frame_hash
    counts: dict[tuple[str, int], int] = {}
    for frame in frames.values():
        for reading in verify_frame(frame, key.public_key()).batch.readings:
            counts[(reading.device_id, reading.seq)] = counts.get((reading.device_id, reading.seq), 0) + 1
    assert max(counts.values()) == 1  # no reading in two batches


async def _wait_for_session(broker: Mosquitto) -> None:
    # Another process's readiness can only be polled (with a deadline), like a server's.
    async with asyncio.timeout(30):
        while f"agent-{GATEWAY}" not in broker.log_text():  # noqa: ASYNC110
            await asyncio.sleep(0.1)
