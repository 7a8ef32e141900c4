"""A filled disk budget during a cloud outage, end to end: only routine readings go, and it is said so.

Devices bound to vaccine shipments (2-8 °C) report while the cloud broker is down; some readings are
real excursions (12.5 °C). The agent's outbox, given a 1 MiB budget, fills and thins. Once the cloud
is back, the cloud-side subscriber receives signed, chained batches in which every excursion reading
arrives, every reading that did not arrive was a routine (in-range) one, and THINNED markers account
for exactly those readings, device by device.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

from certs.pki import IssuedIdentity, Pki, Role
from coldtrace.contract import (
    Binding,
    DeviceEntry,
    Manifest,
    Marker,
    MarkerKind,
    SourceFormat,
    canonical_bytes,
)
from coldtrace.device_formats import DeviceMessage, DeviceSample, encode
from coldtrace.mqtt import BrokerUrl, MqttClient, TlsFiles
from coldtrace.profiles import ProfileName
from edge_agent.agent import EdgeAgent
from edge_agent.settings import AgentSettings
from tests.edge_agent.cloud_side import CloudCollector, GatewayTrust
from tests.edge_agent.conftest import GATEWAY, EnrolledGateway, agent_toml
from tests.harness.mosquitto import Mosquitto

pytestmark = pytest.mark.services
Identity = Callable[[Role, str], IssuedIdentity]
Key = tuple[str, int]
T0 = 1_795_000_000_000
DEVICES = 20
PER_DEVICE = 200
SAMPLES_PER_MESSAGE = 10
BUDGET = 1024 * 1024  # the smallest budget the settings allow; the readings need several times that
ROUTINE_C, EXCURSION_C = 5.0, 12.5


def _excursion(seq: int) -> bool:
    return seq % 25 in (10, 11, 12)  # three readings in 25: a door open, then the reefer recovers


def _manifest() -> bytes:
    entries = tuple(
        DeviceEntry(
            device_id=f"reefer-{d}",
            bindings=(
                Binding(
                    profile=ProfileName.VACCINES,
                    shipment_id=f"SHP-{d // 4}",
                    lot_ids=(f"LOT-{d // 4}",),
                    valid_from_ms=T0 - 3_600_000,
                ),
            ),
        )
        for d in range(DEVICES)
    )
    return canonical_bytes(
        Manifest(devices=entries, gateway_id=GATEWAY, issued_ms=T0, site_id="wh-test", version=1)
    )


def _messages() -> tuple[list[tuple[str, bytes]], set[Key], set[Key]]:
    """(topic, payload) of every device message, and the (device, seq) of all and of excursion readings."""
    messages, everything, excursions = [], set(), set()
    for first in range(0, PER_DEVICE, SAMPLES_PER_MESSAGE):
        for d in range(DEVICES):
            device = f"reefer-{d}"
            samples = []
            for seq in range(first, first + SAMPLES_PER_MESSAGE):
                hot = _excursion(seq)
                samples.append(
                    DeviceSample(
                        seq=seq, t_device_ms=T0 + seq * 10_000,
                        temperature_c=EXCURSION_C if hot else ROUTINE_C + (seq % 7) / 10,
                    )
                )  # fmt: skip
                everything.add((device, seq))
                if hot:
                    excursions.add((device, seq))
            payload = encode(DeviceMessage(device, "2.4.1", SourceFormat.VENDOR_A_JSON, tuple(samples)))
            messages.append((f"ct/v1/dev/{device}/up", payload))
    return messages, everything, excursions


def _accounting(markers: list[Marker], missing: set[Key]) -> dict[str, str]:
    """Per device, what is wrong with how the markers account for the readings that did not arrive."""
    problems: dict[str, str] = {}
    covered: dict[str, set[int]] = defaultdict(set)
    for m in markers:
        inside = {seq for device, seq in missing if device == m.device_id and m.seq_from <= seq <= m.seq_to}
        if m.kind is not MarkerKind.THINNED:
            problems[m.device_id] = f"{m.kind} marker"
        elif m.count != len(inside):
            problems[m.device_id] = f"marker {m.seq_from}..{m.seq_to} counts {m.count}, {len(inside)} missing"
        elif inside & covered[m.device_id]:
            problems[m.device_id] = "two markers claim the same reading"
        covered[m.device_id] |= inside
    for device, seq in missing:
        if seq not in covered[device]:
            problems.setdefault(device, f"seq {seq} missing without a marker")
    return problems


async def _eventually(check: Callable[[], bool], timeout_s: float, what: Callable[[], str]) -> None:
    # The agent exposes its progress as metrics and stats, not as events: look again every 50 ms.
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what()}")
        await asyncio.sleep(0.05)


def test_a_full_budget_thins_only_routine_readings_and_the_markers_reach_the_cloud(
    tmp_path: Path, pki: Pki, identity: Identity, gateway_broker: Mosquitto, durable_cloud: Mosquitto,
    enrolled_gateway: EnrolledGateway,
) -> None:  # fmt: skip
    config = agent_toml(
        tmp_path, pki=pki, identity=identity, local=gateway_broker, cloud=durable_cloud,
        gateway=enrolled_gateway, outbox_budget_bytes=BUDGET, reconnect_initial_s=0.1, reconnect_max_s=0.5,
    )  # fmt: skip
    settings = AgentSettings.load(config)
    settings.state_dir.mkdir(parents=True, mode=0o700)
    settings.manifest_path.write_bytes(_manifest())
    agent = EdgeAgent(settings)
    collector = CloudCollector(
        durable_cloud, pki, identity, GatewayTrust(enrolled_gateway, ca_bundle=pki.ca_bundle_path)
    )
    messages, everything, excursions = _messages()
    loadgen = identity(Role.SERVICE, "sim-loadgen")
    devices = MqttClient(
        client_id="sim-loadgen-thinning",
        broker=BrokerUrl(host=gateway_broker.host, port=gateway_broker.port, tls=True),
        tls=TlsFiles(ca_file=pki.ca_bundle_path, cert_file=loadgen.cert_path, key_file=loadgen.key_path),
    )
    during_outage: dict[str, int] = {}

    def counter(name: str) -> float:
        value = agent.metrics.registry.get_sample_value(name)
        return 0.0 if value is None else value

    async def scenario() -> None:
        await collector.start()
        await devices.connect()
        runner = asyncio.create_task(agent.run())
        try:
            async with asyncio.timeout(60):
                await agent.ready()
            assert agent.cloud is not None
            await asyncio.to_thread(durable_cloud.stop)  # the cloud goes away ...
            async with asyncio.timeout(30):
                await agent.cloud.disconnected.wait()
            await asyncio.gather(*(devices.publish(topic, payload) for topic, payload in messages))

            def thinned_to_budget() -> bool:
                return (
                    counter("coldtrace_agent_readings_ingested_total") >= len(everything)
                    and counter("coldtrace_agent_readings_thinned_total") > 0
                    and counter("coldtrace_agent_outbox_bytes") <= BUDGET
                )

            await _eventually(thinned_to_budget, 120, lambda: f"{agent.health()}")
            during_outage.update(
                thinned=int(counter("coldtrace_agent_readings_thinned_total")),
                frames=agent.health()["outbox"]["frames_pending"], sent=len(collector.where),
            )  # fmt: skip
            await asyncio.to_thread(durable_cloud.start)  # ... and comes back

            def drained() -> bool:  # the outbox is empty and every batch it formed has arrived
                outbox = agent.health()["outbox"]
                return (
                    outbox.get("readings") == 0
                    and outbox.get("frames_pending") == 0
                    and len(collector.batches) == outbox.get("next_batch_seq", 0) - 1
                )

            await _eventually(drained, 120, lambda: f"{len(collector.where)} arrived; {agent.health()}")
            during_outage["thinned_in_all"] = int(counter("coldtrace_agent_readings_thinned_total"))
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
            await devices.disconnect()
            await collector.stop()

    asyncio.run(scenario())

    # While the cloud was down the outbox was cut to its budget, with nothing formed or sent.
    assert during_outage["frames"] == 0
    assert during_outage["sent"] == 0
    assert 0 < during_outage["thinned"] < len(everything) - len(excursions)

    arrived = set(collector.where)
    missing = everything - arrived
    assert arrived <= everything
    assert collector.duplicates == []
    collector.check_chain()  # markers and readings came in signed batches of one unbroken chain
    assert len(missing) == during_outage["thinned_in_all"]  # what was thinned, and nothing else, is missing
    assert excursions <= arrived  # no excursion reading was thinned ...
    assert not missing & excursions  # ... only routine (in-range) ones were
    markers = collector.markers()
    print(
        f"thinned {len(missing)} of {len(everything) - len(excursions)} routine readings, kept all "
        f"{len(excursions)} excursion readings; {len(markers)} markers in {len(collector.batches)} batches"
    )
    assert markers
    assert _accounting(markers, missing) == {}  # every gap is marked, device by device, exactly
    assert {m.device_id for m in markers} == {d for d, _ in missing}
    for device in {d for d, _ in missing}:  # oldest first: what a device lost is older than what it kept
        lost = [seq for d, seq in missing if d == device]
        kept = [seq for d, seq in arrived - excursions if d == device]
        assert sum(lost) / len(lost) < sum(kept) / len(kept), device
