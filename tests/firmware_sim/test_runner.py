"""A scenario run over the real mutual-TLS Mosquitto delivers every sample the ground truth says was sent."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from certs.pki import IssuedIdentity, Pki, Role
from coldtrace.contract import ContractError
from coldtrace.device_formats import decode
from coldtrace.mqtt import BrokerUnreachable, BrokerUrl, Message, MqttClient, TlsFiles
from firmware_sim.fleet import Simulation
from firmware_sim.runner import ConnectionMode, RunConfig, RunSummary, run_fleet
from firmware_sim.scenario import builtin_scenarios
from firmware_sim.truth import Fate, PublishKind, SampleTruth, TruthWriter
from tests.harness.mosquitto import Mosquitto

pytestmark = pytest.mark.services
START_MS = 1_795_000_000_000
Identity = Callable[[Role, str], IssuedIdentity]


def _tls(pki: Pki, who: IssuedIdentity) -> TlsFiles:
    return TlsFiles(ca_file=pki.ca_bundle_path, cert_file=who.cert_path, key_file=who.key_path)


def _broker(mosquitto: Mosquitto) -> BrokerUrl:
    return BrokerUrl(host=mosquitto.host, port=mosquitto.port, tls=True)


async def _run_and_collect(
    simulation: Simulation, config: RunConfig, subscriber_tls: TlsFiles, broker: BrokerUrl
) -> tuple[RunSummary, list[Message]]:
    subscriber = MqttClient(client_id="svc-ingest", broker=broker, tls=subscriber_tls)
    await subscriber.connect()
    await subscriber.subscribe("ct/v1/dev/+/up", qos=1)
    try:
        summary = await run_fleet(simulation, config)
        received: list[Message] = []
        try:
            async with asyncio.timeout(30):
                while len(received) < summary.acknowledged:
                    received.append(await subscriber.messages.get())
        except TimeoutError:
            pytest.fail(f"received {len(received)} of {summary.acknowledged} acknowledged ({summary})")
        return summary, received
    finally:
        await subscriber.disconnect()


def _check_against_truth(writer: TruthWriter, summary: RunSummary, received: list[Message]) -> None:
    assert summary.refused == 0
    assert summary.acknowledged == summary.published
    delivered: set[tuple[str, int]] = set()
    malformed = 0
    for message in received:
        device_id = message.topic.split("/")[3]
        try:
            decoded = decode(message.payload)
        except ContractError:
            malformed += 1
            continue
        assert decoded.device_id == device_id
        delivered |= {(device_id, s.seq) for s in decoded.samples}
    samples = [r for r in writer.records if isinstance(r, SampleTruth)]
    sent = {(s.device_id, s.seq) for s in samples if s.fate is Fate.SENT}
    lost = {(s.device_id, s.seq) for s in samples if s.fate is not Fate.SENT}
    assert sent == delivered  # every sample the truth says was sent arrived, nothing else did
    assert not lost & delivered
    assert malformed == summary.kinds[PublishKind.MALFORMED.value]


def test_multiplexed_run_delivers_every_sent_sample(
    mosquitto_tls: Mosquitto, pki: Pki, identity: Identity
) -> None:
    scenario = builtin_scenarios()["mixed-fleet"].model_copy(update={"duration_s": 900.0})
    writer = TruthWriter(keep=True)
    simulation = Simulation(scenario, devices=40, seed=5, start_ms=START_MS, truth=writer)
    config = RunConfig(
        brokers=(_broker(mosquitto_tls),), ca_file=pki.ca_bundle_path, mode=ConnectionMode.MULTIPLEXED,
        loadgen=_tls(pki, identity(Role.SERVICE, "sim-loadgen")), connections=3, speed=0.0,
    )  # fmt: skip
    summary, received = asyncio.run(
        _run_and_collect(
            simulation, config, _tls(pki, identity(Role.SERVICE, "svc-ingest")), _broker(mosquitto_tls)
        )
    )
    assert summary.published > 1000
    _check_against_truth(writer, summary, received)


def test_per_device_run_reports_a_refused_device_by_id(
    mosquitto_tls: Mosquitto, pki: Pki, identity: Identity
) -> None:
    scenario = builtin_scenarios()["gateway-reboot"].model_copy(update={"duration_s": 3000.0})
    writer = TruthWriter(keep=True)
    simulation = Simulation(scenario, devices=12, seed=9, start_ms=START_MS, truth=writer)
    for device in simulation.devices:
        identity(Role.DEVICE, device.device_id)
    revoked = simulation.devices[3].device_id
    pki.revoke(Role.DEVICE, revoked, reason="key_compromise")
    mosquitto_tls.update_crl(pki.crl_path)
    mosquitto_tls.reload()
    config = RunConfig(
        brokers=(_broker(mosquitto_tls),), ca_file=pki.ca_bundle_path, mode=ConnectionMode.PER_DEVICE,
        device_certs=pki.directory / "issued" / "device", speed=0.0,
    )  # fmt: skip
    summary, received = asyncio.run(
        _run_and_collect(
            simulation, config, _tls(pki, identity(Role.SERVICE, "svc-ingest")), _broker(mosquitto_tls)
        )
    )
    assert set(summary.refused_devices) == {revoked}
    assert summary.kinds[PublishKind.BUFFERED.value] > 0  # the reboot's catch-up went over the wire too
    others = {
        (r.device_id, r.seq) for r in writer.records if isinstance(r, SampleTruth) and r.fate is Fate.SENT
    }
    delivered = set()
    for message in received:
        decoded = decode(message.payload)
        delivered |= {(decoded.device_id, s.seq) for s in decoded.samples}
    assert delivered == {key for key in others if key[0] != revoked}


def test_unreachable_broker_fails_with_a_clear_message(pki: Pki, identity: Identity) -> None:
    scenario = builtin_scenarios()["normal-day"].model_copy(update={"duration_s": 60.0})
    simulation = Simulation(scenario, devices=2, seed=1, start_ms=START_MS, truth=TruthWriter())
    config = RunConfig(
        brokers=(BrokerUrl(host="127.0.0.1", port=1, tls=True),), ca_file=pki.ca_bundle_path,
        loadgen=_tls(pki, identity(Role.SERVICE, "sim-loadgen")), speed=0.0, connect_deadline_s=0.5,
        backoff_initial_s=0.05,
    )  # fmt: skip
    with pytest.raises(BrokerUnreachable, match=r"gave up after 0\.5 s\. Is the broker running"):
        asyncio.run(run_fleet(simulation, config))
