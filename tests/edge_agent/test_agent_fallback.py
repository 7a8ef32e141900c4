"""With the cloud unreachable, a profile breach raises a local alert; metrics and health say so."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from certs.pki import IssuedIdentity, Pki, Role
from coldtrace.contract import SourceFormat
from coldtrace.device_formats import DeviceMessage, DeviceSample, encode
from coldtrace.mqtt import BrokerUrl, MqttClient, TlsFiles
from edge_agent.agent import EdgeAgent
from edge_agent.settings import AgentSettings
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


def test_breach_while_cloud_is_down_raises_one_local_alert(
    tmp_path: Path, pki: Pki, identity: Identity, gateway_broker: Mosquitto, cloud_broker: Mosquitto,
    enrolled_gateway: EnrolledGateway,
) -> None:  # fmt: skip
    config = agent_toml(
        tmp_path, pki=pki, identity=identity, local=gateway_broker, cloud=cloud_broker,
        gateway=enrolled_gateway, fallback_after_s=0,
    )  # fmt: skip
    settings = AgentSettings.load(config).model_copy(
        update={"cloud": AgentSettings.load(config).cloud.model_copy(update={"url": "mqtts://127.0.0.1:1"})}
    )
    settings.state_dir.mkdir(parents=True)
    settings.manifest_path.write_bytes(manifest(4))  # reefer-1 carries vaccines (2-8 °C) on SHP-A
    agent = EdgeAgent(settings)

    async def scenario() -> tuple[dict[str, object], str, dict[str, object]]:
        watcher = _client(gateway_broker, pki, identity(Role.SERVICE, "svc-ops"))
        await watcher.connect()
        await watcher.subscribe(f"ct/v1/gw/{GATEWAY}/alert", qos=1)
        device = _client(gateway_broker, pki, identity(Role.DEVICE, "reefer-1"))
        await device.connect()
        runner = asyncio.create_task(agent.run())
        try:
            async with asyncio.timeout(30):
                await agent._ingest_ready.wait()  # the cloud never answers, so only ingest gets ready
                for seq, temperature in enumerate((5.0, 12.5, 13.0)):  # in range, then a real breach
                    sample = DeviceSample(seq=seq, t_device_ms=T0 + seq * 10_000, temperature_c=temperature)
                    payload = encode(
                        DeviceMessage("reefer-1", "2.4.1", SourceFormat.VENDOR_A_JSON, (sample,))
                    )
                    await device.publish("ct/v1/dev/reefer-1/up", payload)
                alert = orjson.loads((await watcher.messages.get()).payload)
                assert agent.metrics_port is not None
                port = await agent.metrics_port
                url = f"http://127.0.0.1:{port}"
                metrics = ""
                # The counter is the only signal another client has that all three are committed.
                while "coldtrace_agent_readings_ingested_total 3.0" not in metrics:
                    metrics = (await _get(f"{url}/metrics")).decode()
                health = orjson.loads(await _get(f"{url}/health"))
            return alert, metrics, health
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
            await device.disconnect()
            await watcher.disconnect()

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
