"""Crash drill at the issue's scale: SIGKILL at five random moments, and the cloud broker stopped a while.

100,000 readings from 200 simulated devices are published (paced, so the faults land while data
flows) while ``coldtrace agent run`` is SIGKILLed five times at random moments and, independently,
the uplink broker is stopped for a few seconds and started again. Checked against the simulator's
ground truth: every reading the devices sent reaches the cloud-side subscriber exactly once (none
lost, none invented, none in two batches), every batch verifies against the gateway's certificate,
the hash chain has no gap across restarts, and a batch seen twice is byte-identical.

Order per device: after the outage the agent sends live readings (received within
``live_window_ms``) before the backlog, so a device's fresh readings may overtake its own older
ones. The outbox contract (``edge_agent.outbox``) keeps each device's sequence order *within* the
live stream and within the backfill stream; a device's readings in chain order must therefore be
the merge of two ascending sequences, i.e. hold no strictly decreasing run of three. The schedule
is seeded and printed, with the moment of every fault.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from certs.pki import IssuedIdentity, Pki, Role
from firmware_sim.runner import run_fleet
from firmware_sim.truth import TruthWriter
from tests.edge_agent.cloud_side import CloudCollector, GatewayTrust, longest_decreasing
from tests.edge_agent.conftest import AgentProcess, EnrolledGateway, agent_toml
from tests.edge_agent.simulated import fleet, loadgen_config, published_out_of_order, sent
from tests.harness.mosquitto import Mosquitto

pytestmark = pytest.mark.services
Identity = Callable[[Role, str], IssuedIdentity]
#: Seeds the fault schedule (and the fleet); printed with the schedule so a failure can be replayed.
SEED = 7
#: Simulated seconds per wall-clock second: the fleet's 5,010 s take ~33 s to publish.
SPEED = 150.0
KILLS = 5


def test_no_reading_lost_or_duplicated_across_five_kill9_and_a_cloud_outage(
    tmp_path: Path, pki: Pki, identity: Identity, gateway_broker: Mosquitto, durable_cloud: Mosquitto,
    enrolled_gateway: EnrolledGateway,
) -> None:  # fmt: skip
    config = agent_toml(
        tmp_path, pki=pki, identity=identity, local=gateway_broker, cloud=durable_cloud,
        gateway=enrolled_gateway, live_window_ms=1000, reconnect_initial_s=0.1, reconnect_max_s=1.0,
    )  # fmt: skip
    trust = GatewayTrust(enrolled_gateway, ca_bundle=pki.ca_bundle_path)
    agent = AgentProcess(config, tmp_path)
    writer = TruthWriter(keep=True)
    collector = CloudCollector(durable_cloud, pki, identity, trust)
    rng = random.Random(SEED)  # noqa: S311 - a test schedule, not security
    kill_after = [rng.uniform(1.0, 6.0) for _ in range(KILLS)]  # seconds after the agent came back
    outage_at, outage_for = rng.uniform(5.0, 15.0), rng.uniform(3.0, 6.0)
    report = [f"seed {SEED}: kills {[round(k, 2) for k in kill_after]} s after each start, "
              f"cloud broker down at {outage_at:.2f} s for {outage_for:.2f} s"]  # fmt: skip
    t0 = time.monotonic()

    def note(event: str) -> None:
        at_cloud = len(collector.where)
        report.append(f"{time.monotonic() - t0:6.2f} s  {event} ({at_cloud} readings at the cloud)")

    async def kills() -> None:
        for delay in kill_after:
            await asyncio.sleep(delay)  # the schedule itself, not a wait for something to happen
            agent.kill9()
            note(f"SIGKILL {agent.kills}")
            agent.start()
            note(f"agent up again after {await agent.up():.2f} s")

    async def outage() -> None:
        await asyncio.sleep(outage_at)
        await asyncio.to_thread(durable_cloud.stop)
        note("cloud broker stopped")
        await asyncio.sleep(outage_for)
        await asyncio.to_thread(durable_cloud.start)
        note("cloud broker started")

    async def drill() -> None:
        await collector.start()
        agent.start()
        try:
            # The agent's gateway-broker session must exist before devices publish (an installed
            # gateway has one); from then on the broker keeps what arrives while the agent is down.
            await agent.up()
            note("agent up, fleet starts publishing")
            publishing = asyncio.create_task(
                run_fleet(fleet(SEED, writer), loadgen_config(gateway_broker, pki, identity, speed=SPEED))
            )
            await asyncio.gather(kills(), outage())
            summary = await publishing
            note("fleet done")
            assert summary.acknowledged == summary.published
            expected = sent(writer).keys()

            def missing() -> str:
                lost = sorted(expected - collector.where.keys())
                return "\n".join(
                    [f"{len(lost)} of {len(expected)} missing, e.g. {lost[:5]}", *report, agent.log_tail()]
                )

            await collector.until(lambda: expected <= collector.where.keys(), 300, missing)
            note("every reading at the cloud")
        finally:
            await collector.stop()

    try:
        asyncio.run(drill())
    finally:
        status = agent.stop()
    print("\n".join(report))
    assert status == 0, agent.log_tail()
    assert agent.kills == KILLS

    truth = sent(writer)
    assert len(truth) >= 100_000
    assert collector.where.keys() == truth.keys()  # zero lost, nothing invented
    assert collector.duplicates == []  # and none sent twice in different batches
    collector.check_chain()  # no gap, no fork across five restarts

    exempt = published_out_of_order(writer)
    order = collector.per_device(skip=exempt)
    runs = {device: longest_decreasing(seqs) for device, seqs in order.items()}
    assert max(runs.values()) <= 2, {d: n for d, n in runs.items() if n > 2}
    overtaken = sum(1 for n in runs.values() if n == 2)
    print(f"{overtaken} of {len(runs)} devices had live readings sent before their backlog; "
          f"{collector.resends} batches received twice (byte-identical)")  # fmt: skip
    assert overtaken > 0  # the outage left a backlog and live readings went first
