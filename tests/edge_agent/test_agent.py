"""The edge agent end to end over real mutual-TLS brokers: simulator → gateway broker → agent → cloud.

Issue #5's first "done when": 100,000 readings from 200 simulated devices arrive at a cloud-side
subscriber exactly once after de-duplication by (device, seq), in order per device, every batch
verifying against the gateway's certificate (``tests/edge_agent/cloud_side.py`` says what that
takes) and the hash chain unbroken. The agent runs as ``coldtrace agent run`` in its own process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from certs.pki import IssuedIdentity, Pki, Role
from coldtrace.contract import ContractError, Flag
from firmware_sim.runner import run_fleet
from firmware_sim.truth import TruthWriter
from tests.edge_agent.cloud_side import CloudCollector, GatewayTrust, longest_decreasing
from tests.edge_agent.conftest import AgentProcess, EnrolledGateway, agent_toml
from tests.edge_agent.simulated import DEVICES, fleet, loadgen_config, published_out_of_order, sent
from tests.harness.mosquitto import Mosquitto

pytestmark = pytest.mark.services
Identity = Callable[[Role, str], IssuedIdentity]


def test_100k_readings_from_200_devices_arrive_once_in_order_signed_and_chained(
    tmp_path: Path, pki: Pki, identity: Identity, gateway_broker: Mosquitto, cloud_broker: Mosquitto,
    enrolled_gateway: EnrolledGateway,
) -> None:  # fmt: skip
    # No outage here, so every reading counts as live for the whole run: the agent's only order is
    # then the receive order (the live-first reordering after an outage is the drill's subject).
    config = agent_toml(
        tmp_path, pki=pki, identity=identity, local=gateway_broker, cloud=cloud_broker,
        gateway=enrolled_gateway, live_window_ms=3_600_000,
    )  # fmt: skip
    trust = GatewayTrust(enrolled_gateway, ca_bundle=pki.ca_bundle_path)
    agent = AgentProcess(config, tmp_path)
    writer = TruthWriter(keep=True)
    collector = CloudCollector(cloud_broker, pki, identity, trust)

    async def scenario() -> None:
        await collector.start()
        agent.start()
        try:
            await agent.up()
            publish = loadgen_config(gateway_broker, pki, identity, speed=0)
            summary = await run_fleet(fleet(21, writer), publish)
            assert summary.acknowledged == summary.published
            expected = sent(writer).keys()

            def missing() -> str:
                lost = sorted(expected - collector.where.keys())
                return f"{len(lost)} of {len(expected)} readings missing, e.g. {lost[:5]}\n{agent.log_tail()}"

            await collector.until(lambda: expected <= collector.where.keys(), 300, missing)
        finally:
            await collector.stop()

    started = time.monotonic()
    try:
        asyncio.run(scenario())
    finally:
        status = agent.stop()
    took = time.monotonic() - started
    print(f"{len(collector.where)} readings in {len(collector.batches)} batches, {took:.1f} s")
    assert status == 0, agent.log_tail()  # SIGTERM: the agent flushes and exits cleanly

    truth = sent(writer)
    assert len(truth) >= 100_000
    assert len({device for device, _ in truth}) == DEVICES
    assert collector.where.keys() == truth.keys()  # nothing lost, nothing invented
    assert collector.duplicates == []  # no reading in two batches (a resent batch is the same bytes)
    collector.check_chain()

    for key, reading in collector.readings.items():  # kept as the device said it, scored
        assert reading.t_device_ms == truth[key].t_device_ms, key
        assert reading.model is not None, key
        assert reading.anomaly_score is not None, key
        assert Flag.BACKFILL not in reading.flags, key  # the uplink was up throughout: all live

    exempt = published_out_of_order(writer)
    disordered = {
        device: seqs for device, seqs in collector.per_device(skip=exempt).items() if seqs != sorted(seqs)
    }
    assert not disordered, {d: longest_decreasing(s) for d, s in list(disordered.items())[:5]}
    assert all(len(set(seqs)) == len(seqs) for seqs in collector.per_device().values())

    # The check is not vacuous: a changed byte fails the gateway's verification.
    frame = collector.batches[1].frame
    with pytest.raises(ContractError):
        trust.verify(trust.topic, frame[:-1] + bytes([frame[-1] ^ 1]))
