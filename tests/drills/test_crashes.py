"""Drills: an edge agent or a cloud worker is SIGKILLed while the fleet publishes.

Both are child processes (``coldtrace agent run``, ``coldtrace cloud worker --instance N``), so the
kill is real: no cleanup, no MQTT DISCONNECT, SQLite and PostgreSQL transactions cut wherever they
were. What must hold afterwards is in :mod:`tests.drills.checks`.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal

import pytest

from coldtrace.demo.clock import SimClock
from tests.cloud_ingest.drills_workers import poll, unacknowledged
from tests.drills.checks import assert_all
from tests.drills.runner import Drill
from tests.drills.scenario import FleetPlan, drill_scenario
from tests.drills.stack import Stack

pytestmark = pytest.mark.services

KILLS = 3
#: Batches the hung worker holds unacknowledged when it is killed.
HELD = 3


def test_agents_killed_at_random_points_lose_and_double_nothing(drill: Drill, seed: int) -> None:
    plan = FleetPlan.placed(drill_scenario(), seed=seed)
    rng = random.Random(seed)  # noqa: S311 - a test schedule
    duration = plan.scenario.duration_s
    moments = sorted(rng.uniform(0.1, 0.85) * duration for _ in range(KILLS))
    victims = [rng.choice(("gw-0", "gw-1")) for _ in range(KILLS)]
    done: list[tuple[float, str]] = []

    async def faults(stack: Stack, clock: SimClock) -> None:
        for at, g in zip(moments, victims, strict=True):
            await clock.reached(at)
            agent = stack.agents[g]
            await asyncio.to_thread(agent.kill9)
            done.append((clock.sim_s, g))
            await agent.wait_ready(agent.start())

    outcome = drill.run(plan, faults, restarted_agents=set(victims))
    assert [g for _, g in done] == victims, f"{drill.label}: kills {done}"
    assert drill.stack is not None
    assert sum(a.kills for a in drill.stack.agents.values()) == KILLS
    assert_all(outcome)


def test_a_worker_killed_holding_batches_loses_and_doubles_nothing(drill: Drill, seed: int) -> None:
    plan = FleetPlan.placed(drill_scenario(), seed=seed)
    rng = random.Random(seed)  # noqa: S311 - a test schedule
    at = rng.uniform(0.2, 0.6) * plan.scenario.duration_s
    redelivered: list[str] = []

    async def faults(stack: Stack, clock: SimClock) -> None:
        broker = stack.servers.cloud_broker
        victim = stack.workers[rng.randrange(len(stack.workers))]
        started_at = broker.log_size()
        await clock.reached(at)
        # It hangs wherever it is (mid-transaction, perhaps holding a gateway's row lock), the broker
        # goes on sending it batches it cannot acknowledge, and then it dies.
        assert victim.proc is not None
        os.kill(victim.proc.pid, signal.SIGSTOP)
        await poll(lambda: unacknowledged(broker, victim.client_id, since=started_at) >= HELD, within_s=30,
                   what=f"{victim.client_id} holding {HELD} unacknowledged batches")  # fmt: skip
        await asyncio.to_thread(victim.kill9)
        restarted_at = broker.log_size()
        victim.start()
        await victim.wait_ready(broker, restarted_at)
        # Same client id: the broker hands the new process the session the dead one left behind,
        # and resends (DUP flag) what it had sent and not had acknowledged.
        await poll(lambda: f"Sending PUBLISH to {victim.client_id} (d1, q1" in broker.log_text(restarted_at),
                   within_s=30, what="the unacknowledged batches resent")  # fmt: skip
        redelivered.append(victim.client_id)

    outcome = drill.run(plan, faults)
    assert redelivered, f"{drill.label}: no worker was killed"
    assert_all(outcome)
