"""Drills: a server on the path goes away while the fleet publishes, and comes back.

Brokers restart (sessions persisted, clients reconnect); a gateway's uplink is cut and the backlog
drains after it heals; the time-series server stops (the spool holds the points); PostgreSQL is
killed (workers hold their batches unacknowledged until they can commit them). What must hold
afterwards is in :mod:`tests.drills.checks`; each drill adds what its fault is about.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from sqlalchemy import select

from cloud_ingest.db.tables import alerts
from cloud_ingest.settings import RuleSettings
from coldtrace.demo.clock import SimClock
from coldtrace.demo.scenario import subjects_of
from tests.cloud_ingest.drills_checks import spool_rows
from tests.cloud_ingest.drills_workers import poll, unacknowledged
from tests.drills.checks import assert_all
from tests.drills.runner import Drill
from tests.drills.scenario import SAMPLE_INTERVAL_S, FleetPlan, Truth, drill_scenario, dry_run
from tests.drills.stack import Stack, paused
from tests.harness.mosquitto import Mosquitto

pytestmark = pytest.mark.services
#: The partition begins this long (simulated) before the excursion and heals this long after its hold.
MARGIN_S = 200.0
#: Messages a hung consumer holds unacknowledged when its broker restarts.
HELD = 3


def _pid(proc: subprocess.Popen[bytes] | None) -> int:
    assert proc is not None, "the process was never started"
    return proc.pid


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- broker restarts -----------------------------------------------------------------------------------
async def _restart_holding(broker: Mosquitto, consumers: dict[str, int], *, since: int) -> int:
    """Restart ``broker`` while each consumer (client id → pid) holds ``HELD`` messages unacknowledged.

    The consumers hang (SIGSTOP) so the broker's messages to them pile up unacknowledged; the broker
    restarts (its sessions, in-flight messages included, saved to disk); then they resume, find
    their connection gone, and reconnect. Returns the broker log offset of the restart.
    """
    with paused(consumers.values()):
        await poll(
            lambda: all(unacknowledged(broker, c, since=since) >= HELD for c in consumers), within_s=30,
            what=f"{', '.join(consumers)} holding {HELD} unacknowledged messages each",
        )  # fmt: skip
        offset = broker.log_size()
        await asyncio.to_thread(broker.restart)
    return offset


def test_brokers_restarted_with_messages_in_flight_lose_and_double_nothing(drill: Drill, seed: int) -> None:
    plan = FleetPlan.placed(drill_scenario(), seed=seed)
    rng = random.Random(seed)  # noqa: S311 - a test schedule
    duration = plan.scenario.duration_s
    cloud_at, gateway_at = rng.uniform(0.15, 0.35) * duration, rng.uniform(0.5, 0.7) * duration
    gateway = rng.choice(("gw-0", "gw-1"))
    resent: dict[str, bool] = {}

    async def faults(stack: Stack, clock: SimClock) -> None:
        cloud, local = stack.servers.cloud_broker, stack.servers.gateway_brokers[gateway]
        since = {"cloud": cloud.log_size(), "local": local.log_size()}
        await clock.reached(cloud_at)
        workers = {w.client_id: _pid(w.proc) for w in stack.workers}
        back = await _restart_holding(cloud, workers, since=since["cloud"])
        # Every worker and agent reconnects with its persistent session; the workers get again what
        # they held (DUP flag set).
        clients = [*workers, *stack.agents]
        await poll(lambda: all(f"as {c} (" in cloud.log_text(back) for c in clients), within_s=30,
                   what="every worker and agent reconnected to the cloud broker")  # fmt: skip
        await poll(lambda: all(f"Sending PUBLISH to {c} (d1, q1" in cloud.log_text(back) for c in workers),
                   within_s=30, what="the workers' unacknowledged batches resent")  # fmt: skip
        resent["cloud"] = True
        await clock.reached(gateway_at)
        agent = f"agent-{gateway}"
        back = await _restart_holding(local, {agent: _pid(stack.agents[gateway].proc)}, since=since["local"])
        await poll(lambda: f"Sending PUBLISH to {agent} (d1, q1" in local.log_text(back), within_s=30,
                   what=f"{agent}'s unacknowledged device messages resent")  # fmt: skip
        resent[gateway] = True

    outcome = drill.run(plan, faults)
    assert resent == {"cloud": True, gateway: True}, f"{drill.label}: {resent}"
    assert_all(outcome)


# -- uplink partition and backfill -----------------------------------------------------------------------
@dataclass
class Partition:
    """One gateway's uplink cut from ``from_s`` to ``to_s`` (simulated), and what was seen meanwhile."""

    gateway: str
    from_s: float
    to_s: float
    restored_ms: int = 0
    """Wall time the link came back."""
    backlog: int = 0
    """The agent's outbox when the link came back."""
    published_while_cut: int = -1
    """Batches the cloud broker received from the gateway while its agent reported the link down."""
    subjects: dict[tuple[str, str], int] = field(default_factory=dict)
    """Subjects whose excursion both began and became a hold during the partition → its true start
    (device time, ms)."""


def _excursion_runs(truth: Truth) -> dict[str, list[tuple[int, int, int]]]:
    """Device → its runs of TRUE excursion samples as (first sim ms, last sim ms, first device ms)."""
    runs: dict[str, list[tuple[int, int, int]]] = {}
    open_run: dict[str, list[int]] = {}
    for s in sorted(truth.samples, key=lambda s: s.t_sim_ms):
        run = open_run.get(s.device_id)
        if s.excursion:
            if run is None:
                open_run[s.device_id] = [s.t_sim_ms, s.t_sim_ms, s.t_device_ms]
            else:
                run[1] = s.t_sim_ms
        elif run is not None:
            runs.setdefault(s.device_id, []).append((run[0], run[1], run[2]))
            del open_run[s.device_id]
    for device, run in open_run.items():
        runs.setdefault(device, []).append((run[0], run[1], run[2]))
    return runs


def _aim_partition(truth: Truth, rng: random.Random, *, latest_s: float) -> Partition:
    """Cut the gateway of a device whose excursion starts inside the run, across its start and its hold."""
    delay_ms = {p.value: round(s * 1000) for p, s in RuleSettings().delay_s.items()}
    profile = truth.profile_of()
    holding = [
        (device, first_sim, first_device)
        for device, runs in _excursion_runs(truth).items()
        for first_sim, last_sim, first_device in runs
        if last_sim - first_sim >= delay_ms[profile[device]]
    ]
    # The cut must heal while the fleet still runs (the fault waits for simulated moments).
    fits = [
        (device, first_sim) for device, first_sim, _ in holding
        if (first_sim - truth.start_ms + delay_ms[profile[device]]) / 1000 + MARGIN_S <= latest_s
    ]  # fmt: skip
    assert fits, f"no excursion in the run both begins and becomes a hold before {latest_s:g} s"
    device, first_sim = rng.choice(fits)
    start = (first_sim - truth.start_ms) / 1000
    partition = Partition(
        truth.gateway_of()[device], from_s=max(60.0, start - MARGIN_S),
        to_s=start + delay_ms[profile[device]] / 1000 + MARGIN_S,
    )  # fmt: skip
    # Each subject's first holding excursion (any of its devices, on either gateway) ...
    binding = {b.device_id: b for b in truth.bindings}
    first: dict[tuple[str, str], tuple[int, int, str]] = {}
    for d, first_sim_ms, first_device_ms in holding:
        for subject in subjects_of(binding[d]):
            if subject not in first or first_sim_ms < first[subject][0]:
                first[subject] = (first_sim_ms, first_device_ms, d)
    # ... when it began and became a hold inside the cut, on the cut gateway: the cloud learns of it
    # only from the backlog, and must still date the alert from the excursion's true start.
    for subject, (first_sim_ms, first_device_ms, d) in first.items():
        begun_s = (first_sim_ms - truth.start_ms) / 1000
        held_s = begun_s + delay_ms[profile[d]] / 1000
        if (
            truth.gateway_of()[d] == partition.gateway
            and partition.from_s < begun_s
            and held_s < partition.to_s
        ):
            partition.subjects[subject] = first_device_ms
    return partition


def test_an_uplink_partition_is_backfilled_with_true_alert_times(drill: Drill, seed: int) -> None:
    plan = FleetPlan.placed(drill_scenario(), seed=seed)
    rng = random.Random(seed)  # noqa: S311 - a test schedule
    cut = _aim_partition(dry_run(plan), rng, latest_s=0.9 * plan.scenario.duration_s)
    assert cut.subjects, f"{drill.label}: no excursion to backfill in {cut}"

    async def faults(stack: Stack, clock: SimClock) -> None:
        uplink, agent = stack.uplinks[cut.gateway], stack.agents[cut.gateway]
        cloud = stack.servers.cloud_broker
        await clock.reached(cut.from_s)
        await uplink.cut()
        await poll(lambda: not agent.health()["uplink_connected"], within_s=30, what="the agent saw the cut")
        offset = cloud.log_size()
        await clock.reached(cut.to_s)
        cut.published_while_cut = cloud.log_text(offset).count(f"Received PUBLISH from {cut.gateway} (")
        cut.backlog = int(agent.health()["outbox"]["readings"])
        cut.restored_ms = _now_ms()
        await uplink.restore()

    outcome = drill.run(plan, faults, relayed=[cut.gateway])
    assert cut.published_while_cut == 0, f"{drill.label}: the partition let batches through: {cut}"
    assert cut.backlog > 0, f"{drill.label}: no backlog built up behind the partition: {cut}"
    assert_all(outcome)
    # The alert of an excursion the cloud learnt of from the backlog is raised after the link came
    # back, but starts when the excursion truly began (device time), within a sample or two.
    with outcome.engine.connect() as conn:
        raised = {
            (a.subject_type, a.subject_id): a
            for a in conn.execute(select(alerts).where(alerts.c.rule_id.in_(("temp_high", "temp_low"))))
        }
    slack_ms = 2 * SAMPLE_INTERVAL_S * 1000
    for subject, true_start_ms in cut.subjects.items():
        alert = raised[subject]
        assert alert.raised_ms >= cut.restored_ms, f"{drill.label}: {subject} alerted during the cut: {cut}"
        assert abs(alert.started_ms - true_start_ms) <= slack_ms, (
            f"{drill.label}: {subject}'s alert starts at {alert.started_ms}, the excursion at {true_start_ms}"
        )


# -- time-series server down ---------------------------------------------------------------------------
def _any_worker(stack: Stack, name: str, value: float) -> Callable[[], bool]:
    return lambda: any(w.metric(name) == value for w in stack.workers)


def test_the_time_series_server_down_loses_no_point(drill: Drill, seed: int) -> None:
    plan = FleetPlan.placed(drill_scenario(), seed=seed)
    rng = random.Random(seed)  # noqa: S311 - a test schedule
    duration = plan.scenario.duration_s
    down_at, up_at = rng.uniform(0.15, 0.3) * duration, rng.uniform(0.55, 0.7) * duration
    spooled: list[int] = []

    async def faults(stack: Stack, clock: SimClock) -> None:
        vm = stack.servers.vm
        await clock.reached(down_at)
        await asyncio.to_thread(vm.stop)
        # Ingest goes on; the points wait in the spool, and the workers say the server is down.
        await poll(_any_worker(stack, "coldtrace_cloud_telemetry_up", 0), within_s=30,
                   what="coldtrace_cloud_telemetry_up 0")  # fmt: skip
        await poll(lambda: spool_rows(stack.engine) > 0, within_s=30, what="points waiting in the spool")
        await clock.reached(up_at)
        spooled.append(spool_rows(stack.engine))
        await asyncio.to_thread(vm.start)
        await poll(_any_worker(stack, "coldtrace_cloud_telemetry_up", 1), within_s=30,
                   what="coldtrace_cloud_telemetry_up 1")  # fmt: skip

    outcome = drill.run(plan, faults)
    assert spooled, f"{drill.label}: the time-series server was never brought back"
    assert spooled[0] > 0, f"{drill.label}: nothing was spooled while the server was down"
    assert_all(outcome)


# -- PostgreSQL down ----------------------------------------------------------------------------------------
def test_postgres_killed_workers_acknowledge_nothing_uncommitted(
    drill_own_postgres: Drill, seed: int
) -> None:
    drill = drill_own_postgres
    plan = FleetPlan.placed(drill_scenario(), seed=seed)
    rng = random.Random(seed)  # noqa: S311 - a test schedule
    duration = plan.scenario.duration_s
    down_at, up_at = rng.uniform(0.15, 0.3) * duration, rng.uniform(0.55, 0.7) * duration
    seen: dict[str, int] = {}

    async def faults(stack: Stack, clock: SimClock) -> None:
        postgres, cloud = stack.servers.postgres, stack.servers.cloud_broker
        await clock.reached(down_at)
        await asyncio.to_thread(postgres.kill)
        # Each worker gets a batch it cannot commit, holds it and retries: store_up drops to 0.
        await poll(lambda: all(w.metric("coldtrace_cloud_store_up") == 0 for w in stack.workers), within_s=30,
                   what="every worker holding a batch it cannot store")  # fmt: skip

        def published_since(offset: int) -> int:
            log = cloud.log_text(offset)
            return sum(log.count(f"Received PUBLISH from {g} (") for g in stack.agents)

        # Let the broker go round its loop past anything acknowledged before the kill, then watch a
        # window in which the gateways go on publishing: no worker may acknowledge anything in it.
        settled = cloud.log_size()
        await poll(lambda: published_since(settled) >= 4, within_s=30, what="gateways publishing on")
        window = cloud.log_size()
        await clock.reached(up_at)
        await poll(lambda: published_since(window) >= 8, within_s=30, what="gateways publishing on")
        log = cloud.log_text(window)
        seen["acked"] = sum(log.count(f"Received PUBACK from {c} (") for c in stack.worker_client_ids())
        seen["published"] = published_since(window)
        await asyncio.to_thread(postgres.restart)

    outcome = drill.run(plan, faults)
    assert seen["published"] >= 8, f"{drill.label}: {seen}"
    assert seen["acked"] == 0, f"{drill.label}: workers acknowledged batches with the database down: {seen}"
    assert_all(outcome)
