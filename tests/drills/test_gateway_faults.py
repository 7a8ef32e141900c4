"""Drills: a gateway's disk budget runs out, a device clock jumps, a gateway certificate is revoked.

The cloud may rightly not hold every reading here - the gateway thinned routine ones (and says so
with markers), or the cloud refused a revoked gateway's batches (and dead-lettered them) - so each
drill states which readings the cloud must hold, and :mod:`tests.drills.checks` holds it to exactly
those, with the holds the truth implies for them.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict

import pytest
from sqlalchemy import select

from certs.pki import Role
from cloud_ingest.db.tables import batches, markers
from coldtrace.demo.clock import SimClock
from coldtrace.mqtt import BrokerUrl, ConnectRefused, MqttClient, TlsFiles
from coldtrace.profiles import PROFILES, ProfileName
from tests.cloud_ingest.drills_workers import poll
from tests.drills.checks import assert_all
from tests.drills.runner import Drill
from tests.drills.scenario import FleetPlan, Key, drill_scenario
from tests.drills.stack import Stack, refused_frames, refused_keys

pytestmark = pytest.mark.services

#: The smallest outbox budget the agent accepts.
BUDGET_BYTES = 1024 * 1024


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- outbox disk budget exhausted ------------------------------------------------------------------------
def test_a_full_gateway_outbox_thins_only_routine_readings_and_says_so(drill: Drill, seed: int) -> None:
    # 32 devices: the cut-off gateway's sixteen fill more than its budget while its uplink is down.
    plan = FleetPlan.placed(drill_scenario(), seed=seed, devices=32)
    rng = random.Random(seed)  # noqa: S311 - a test schedule
    gateway = rng.choice(("gw-0", "gw-1"))

    async def faults(stack: Stack, clock: SimClock) -> None:
        uplink, agent = stack.uplinks[gateway], stack.agents[gateway]
        await clock.reached(0.1 * plan.scenario.duration_s)
        await uplink.cut()
        # The agent enforces its budget every ten seconds: keep the link down until it has thinned.
        await poll(lambda: (agent.metric("coldtrace_agent_readings_thinned_total") or 0) > 0, within_s=60,
                   what=f"{gateway} thinning its outbox")  # fmt: skip
        await uplink.restore()

    outcome = drill.run(
        plan, faults, relayed=[gateway], agent_options={gateway: {"outbox_budget_bytes": BUDGET_BYTES}}
    )
    label, truth = drill.label, outcome.truth
    sent = truth.sent()
    stored = outcome.stored()
    thinned = sorted(set(sent) - stored.keys())
    assert thinned, f"{label}: nothing was thinned"
    # Only the cut-off gateway thinned, exactly as many as it counted and declared in markers.
    assert {truth.gateway_of()[d] for d, _ in thinned} == {gateway}, f"{label}: thinned elsewhere"
    assert outcome.snapshot.agent_thinned == {"gw-0": 0, "gw-1": 0} | {gateway: len(thinned)}, (
        f"{label}: agents counted {outcome.snapshot.agent_thinned} thinned, {len(thinned)} are missing"
    )
    with outcome.engine.connect() as conn:
        # ``count`` labelled: a row's ``count`` is also the tuple method.
        declared = conn.execute(
            select(markers.c.kind, markers.c.device_id, markers.c.seq_from, markers.c.seq_to,
                   markers.c.count.label("readings"))
        ).all()  # fmt: skip
    assert {m.kind for m in declared} == {"thinned"}, f"{label}: markers {declared}"
    per_device: dict[str, int] = defaultdict(int)
    for m in declared:
        per_device[m.device_id] += m.readings
    missing_per_device: dict[str, int] = defaultdict(int)
    for device, seq in thinned:
        missing_per_device[device] += 1
        assert any(m.device_id == device and m.seq_from <= seq <= m.seq_to for m in declared), (
            f"{label}: ({device}, {seq}) is missing and no marker covers it"
        )
    assert per_device == missing_per_device, f"{label}: markers declare {dict(per_device)}"
    # Routine readings only: every reading out of its profile's range reached the cloud.
    profile = truth.profile_of()
    for key in thinned:
        reported = sent[key].reported_temperature_c
        in_range = reported is None or PROFILES[ProfileName(profile[key[0]])].temperature_in_range(reported)
        assert in_range, f"{label}: {key} was thinned although it read {reported} °C"
    # The gap reached the time-series server too, one point per marker.
    gaps = outcome.vm.export('{__name__="gap_count",kind="thinned"}', until=lambda s: s != [])
    assert sum(v for s in gaps for v in s["values"]) == len(thinned), f"{label}: gap points {gaps}"
    assert_all(outcome, expected=stored.keys() & sent.keys())


# -- a device clock jumps ------------------------------------------------------------------------------
def test_a_device_clock_jump_is_flagged_and_its_event_time_kept(drill: Drill, seed: int) -> None:
    # Back by an hour, less ten seconds: the jumped readings' device times fall between earlier ones.
    jump_at_s = 0.4 * 3600.0
    jump = {"kind": "clock_jump", "at_s": jump_at_s, "share": 0.5, "kinds": ["pallet"], "jump_s": -3590.0}
    plan = FleetPlan.placed(drill_scenario(events=[jump]), seed=seed)
    outcome = drill.run(plan)
    label, truth = drill.label, outcome.truth
    [event] = truth.events("clock_jump")
    assert event.devices, f"{label}: no clock jumped"
    jumped_at = plan.start_ms + round(jump_at_s * 1000)
    first_after: dict[str, Key] = {}
    for s in sorted(truth.sent().values(), key=lambda s: s.t_sim_ms):
        if s.device_id in event.devices and s.t_sim_ms >= jumped_at:
            first_after.setdefault(s.device_id, (s.device_id, s.seq))
    stored = outcome.stored()
    flagged = {k for k, r in stored.items() if r.clock == "jumped"}
    # The gateway flags the first reading after each jump (the one whose offset changed), nothing else.
    assert flagged == set(first_after.values()), f"{label}: flagged {sorted(flagged)}, jumped {first_after}"
    assert {r.clock for k, r in stored.items() if k not in flagged} == {"ok"}, f"{label}: other clock flags"
    for key in flagged:
        row = stored[key]
        # Kept as the device said, an hour before it was received - not moved to the gateway's time.
        assert row.t_gateway_ms - row.t_device_ms > 3500_000, f"{label}: {key} was re-timed: {row}"
    exported = outcome.vm.export('{__name__="reading_seq",clock="jumped"}')
    in_vm = {(s["metric"]["device"], int(v)) for s in exported for v in s["values"]}
    assert in_vm == flagged, f"{label}: VictoriaMetrics has {sorted(in_vm)} under clock=jumped"
    assert_all(outcome)


# -- a gateway certificate revoked mid-run ----------------------------------------------------------------
def test_a_revoked_gateway_is_refused_on_its_open_connection(drill: Drill, seed: int) -> None:
    plan = FleetPlan.placed(drill_scenario(), seed=seed)
    rng = random.Random(seed)  # noqa: S311 - a test schedule
    gateway = rng.choice(("gw-0", "gw-1"))
    at = rng.uniform(0.35, 0.6) * plan.scenario.duration_s
    seen: dict[str, int] = {}

    async def faults(stack: Stack, clock: SimClock) -> None:
        pki, cloud = stack.servers.pki, stack.servers.cloud_broker
        await clock.reached(at)
        # The operator revokes the certificate (the broker reloads its CRL) and the gateway in the cloud.
        pki.revoke(Role.GATEWAY, gateway, reason="key_compromise")
        cloud.update_crl(pki.crl_path)
        await asyncio.to_thread(cloud.reload)
        reloaded = cloud.log_size()
        body = await asyncio.to_thread(stack.api_post, f"/v1/gateways/{gateway}/revoke")
        seen["revoked_ms"] = _now_ms()
        assert body["status"] == "revoked", body
        # A new connection with that certificate is refused ...
        who = pki.identity(Role.GATEWAY, gateway)
        probe = MqttClient(
            client_id=f"{gateway}-probe", broker=BrokerUrl(host=cloud.host, port=cloud.port, tls=True),
            tls=TlsFiles(ca_file=pki.ca_bundle_path, cert_file=who.chain_path, key_file=who.key_path),
        )  # fmt: skip
        with pytest.raises(ConnectRefused):
            await probe.connect(timeout_s=10)
        # ... while the agent's, already open, stays up and carries batches the cloud refuses.
        await poll(lambda: bool(refused_frames(stack.engine, [gateway])), within_s=30,
                   what=f"a batch of {gateway} refused")  # fmt: skip
        seen["reconnects"] = cloud.log_text(reloaded).count(f" as {gateway} (")

    outcome = drill.run(plan, faults)
    label = drill.label
    refused = refused_frames(outcome.engine, [gateway])
    assert seen["reconnects"] == 0, f"{label}: the agent's connection was dropped: {seen}"
    assert {f.reason for f in refused} == {"revoked"}, f"{label}: {[f.reason for f in refused]}"
    # A clean cut: stored batches were taken before the revocation, refused ones after it began.
    with outcome.engine.connect() as conn:
        taken = (
            conn.execute(select(batches.c.received_ms).where(batches.c.gateway_id == gateway)).scalars().all()
        )
    assert max(taken) <= seen["revoked_ms"], f"{label}: a batch stored after the revocation: {seen}"
    assert outcome.api_gateways[gateway]["status"] == "revoked", f"{label}: {outcome.api_gateways[gateway]}"
    # Every reading sent is stored, or carried by a refused batch - never both, never neither.
    sent, lost_to_revocation = outcome.truth.sent(), refused_keys(outcome.engine, [gateway])
    assert lost_to_revocation <= sent.keys(), f"{label}: refused batches carried unknown readings"
    assert_all(outcome, expected=sent.keys() - lost_to_revocation, provoked={"revoked": len(refused)},
               refused_gateways=[gateway])  # fmt: skip
