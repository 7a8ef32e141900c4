"""With the cloud unreachable, a profile breach raises a local alert; metrics and health say so."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import orjson
import pytest

from certs.pki import IssuedIdentity, Pki, Role
from coldtrace.contract import Flag, SourceFormat
from coldtrace.demo.uplink import Uplink
from coldtrace.device_formats import DeviceMessage, DeviceSample, encode
from coldtrace.mqtt import BrokerUrl, MqttClient, TlsFiles
from edge_agent.agent import EdgeAgent
from edge_agent.settings import AgentSettings
from tests.edge_agent.cloud_side import CloudCollector, GatewayTrust
from tests.edge_agent.conftest import GATEWAY, EnrolledGateway, agent_toml
from tests.gateway.test_registry import manifest
from tests.harness.mosquitto import Mosquitto

pytestmark = pytest.mark.services
Identity = Callable[[Role, str], IssuedIdentity]
T0 = 1_795_000_000_000


def _client(broker: Mosquitto, pki: Pki, who: IssuedIdentity) -> MqttClient:
    return MqttClient(
        client_id=who.name, broker=BrokerUrl(host=broker.host, port=broker.port, tls=True),
        tls=TlsFiles(ca_file=pki.ca_bundle_path, cert_file=who.cert_path, key_file=who.key_path),
    )  # fmt: skip


async def _get(url: str) -> bytes:
    # In a thread: the agent serving this request runs on this very event loop.
    def fetch() -> bytes:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - http://127.0.0.1 only
            return bytes(response.read())

    return await asyncio.to_thread(fetch)


async def _in_range_then_breach(device: MqttClient) -> None:
    """reefer-1 (vaccines, 2-8 °C) reports 5.0 °C, then a real breach: 12.5 and 13.0 °C."""
    for seq, temperature in enumerate((5.0, 12.5, 13.0)):
        sample = DeviceSample(seq=seq, t_device_ms=T0 + seq * 10_000, temperature_c=temperature)
        payload = encode(DeviceMessage("reefer-1", "2.4.1", SourceFormat.VENDOR_A_JSON, (sample,)))
        await device.publish("ct/v1/dev/reefer-1/up", payload)


@contextlib.asynccontextmanager
async def _breach_while_offline(
    agent: EdgeAgent, broker: Mosquitto, pki: Pki, identity: Identity, *, within_s: float
) -> AsyncIterator[dict[str, object]]:
    """Run ``agent``; once it ingests (within ``within_s``), reefer-1 reports in range, then breaches;
    yields the local alert it raised, the agent still running."""
    watcher = _client(broker, pki, identity(Role.SERVICE, "svc-ops"))
    await watcher.connect()
    await watcher.subscribe(f"ct/v1/gw/{GATEWAY}/alert", qos=1)
    device = _client(broker, pki, identity(Role.DEVICE, "reefer-1"))
    await device.connect()
    runner = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(within_s):
            await agent._ingest_ready.wait()  # the cloud does not answer, so only ingest gets ready
            await _in_range_then_breach(device)
            alert = orjson.loads((await watcher.messages.get()).payload)
        yield alert
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        await device.disconnect()
        await watcher.disconnect()


def _fallback_settings(
    tmp_path: Path, pki: Pki, identity: Identity, gateway: Mosquitto, cloud: Mosquitto,
    enrolled: EnrolledGateway, *, cloud_url: str,
) -> AgentSettings:  # fmt: skip
    """An agent that falls back at once, its uplink at ``cloud_url``, reefer-1 on SHP-A (vaccines, 2-8 °C)."""
    config = agent_toml(
        tmp_path, pki=pki, identity=identity, local=gateway, cloud=cloud, gateway=enrolled,
        fallback_after_s=0,
    )  # fmt: skip
    loaded = AgentSettings.load(config)
    settings = loaded.model_copy(update={"cloud": loaded.cloud.model_copy(update={"url": cloud_url})})
    settings.state_dir.mkdir(parents=True)
    settings.manifest_path.write_bytes(manifest(4))
    return settings


@pytest.fixture
def offline_settings(
    tmp_path: Path, pki: Pki, identity: Identity, gateway_broker: Mosquitto, cloud_broker: Mosquitto,
    enrolled_gateway: EnrolledGateway,
) -> AgentSettings:  # fmt: skip
    """The fallback agent with an uplink that nothing answers (port 1)."""
    return _fallback_settings(
        tmp_path,
        pki,
        identity,
        gateway_broker,
        cloud_broker,
        enrolled_gateway,
        cloud_url="mqtts://127.0.0.1:1",
    )


def test_breach_while_cloud_is_down_raises_one_local_alert(
    offline_settings: AgentSettings, pki: Pki, identity: Identity, gateway_broker: Mosquitto
) -> None:
    settings = offline_settings
    agent = EdgeAgent(settings)

    async def scenario() -> tuple[dict[str, object], str, dict[str, object]]:
        async with (
            asyncio.timeout(30),
            _breach_while_offline(agent, gateway_broker, pki, identity, within_s=30) as alert,
        ):
            assert agent.metrics_port is not None
            port = await agent.metrics_port
            url = f"http://127.0.0.1:{port}"
            metrics = ""
            # The counter is the only signal another client has that all three are committed.
            while "coldtrace_agent_readings_ingested_total 3.0" not in metrics:
                metrics = (await _get(f"{url}/metrics")).decode()
            health = orjson.loads(await _get(f"{url}/health"))
        return alert, metrics, health

    alert, metrics, health = asyncio.run(scenario())
    assert alert["device_id"] == "reefer-1"
    assert alert["shipment_id"] == "SHP-A"
    assert alert["hold"] is True
    assert alert["temperature_c"] == pytest.approx(12.5)
    assert "coldtrace_agent_local_alerts_total 1.0" in metrics  # one alert per device and shipment
    assert "coldtrace_agent_uplink_connected 0.0" in metrics
    assert health["local_fallback"] is True
    assert health["uplink_connected"] is False
    assert health["manifest_version"] == 4
    assert health["feature_kernel"] == "compiled"
    # Received while the uplink was down, each waits in the outbox flagged as backfill.
    with sqlite3.connect(settings.outbox_path) as db:
        bodies = [orjson.loads(body) for (body,) in db.execute("SELECT body FROM reading ORDER BY seq")]
    assert [b["seq"] for b in bodies] == [0, 1, 2]
    assert all("backfill" in b["flags"] for b in bodies)


def test_a_feature_loop_that_cannot_be_loaded_falls_back_to_numbas_jit_and_says_why(
    offline_settings: AgentSettings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shared = tmp_path / "world-writable"
    shared.mkdir()
    shared.chmod(0o777)
    agent = EdgeAgent(offline_settings.model_copy(update={"kernel_dir": shared}))
    asyncio.run(agent._load_feature_kernel())
    assert agent.health()["feature_kernel"] == "jit"
    assert "not private to this user" in caplog.text
    assert "numba compiles it in-process" in caplog.text
    state = agent.scorer.state
    rows = state.update_and_features(np.array([0, 0]), np.array([0, 60_000]), np.array([4.0, 5.0]))
    assert rows[1, 0] == 1.0  # delta_k: the JIT build runs


def test_readings_held_offline_reach_the_cloud_with_their_local_alert_once_the_link_is_back(
    tmp_path: Path, pki: Pki, identity: Identity, gateway_broker: Mosquitto, cloud_broker: Mosquitto,
    enrolled_gateway: EnrolledGateway,
) -> None:  # fmt: skip
    collector = CloudCollector(
        cloud_broker, pki, identity, GatewayTrust(enrolled_gateway, ca_bundle=pki.ca_bundle_path)
    )

    async def scenario() -> tuple[dict[str, object], dict[str, object]]:
        async with Uplink(name=GATEWAY, target_host=cloud_broker.host, target_port=cloud_broker.port) as link:
            await link.cut()  # the cloud is unreachable from the start
            settings = _fallback_settings(
                tmp_path, pki, identity, gateway_broker, cloud_broker, enrolled_gateway,
                cloud_url=f"mqtts://127.0.0.1:{link.port}",
            )  # fmt: skip
            agent = EdgeAgent(settings)
            await collector.start()
            try:
                async with _breach_while_offline(agent, gateway_broker, pki, identity, within_s=60) as alert:
                    offline = agent.health()  # the alert was raised offline
                    await link.restore()
                    await collector.until(
                        lambda: len(collector.readings) == 3, 60, lambda: repr(agent.health())
                    )
                return alert, offline
            finally:
                await collector.stop()

    alert, offline = asyncio.run(scenario())
    assert alert["hold"] is True
    assert offline["local_fallback"] is True
    flags = {seq: set(r.flags) for (_, seq), r in collector.readings.items()}
    assert all(Flag.BACKFILL in f for f in flags.values())  # held in the outbox through the outage
    assert Flag.LOCAL_ALERT not in flags[0]  # in range
    assert Flag.LOCAL_ALERT in flags[1]  # the breach that raised the local alert, now reported
    collector.check_chain()
