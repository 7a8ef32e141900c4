"""Manifests reach their gateway over the real broker, retained, from the API's worker threads."""

from __future__ import annotations

import asyncio

import pytest

from certs.pki import Pki, Role
from cloud_ingest.api import PublishFailed
from cloud_ingest.publisher import MqttManifestPublisher
from cloud_ingest.settings import BrokerSettings
from coldtrace.contract.topics import GatewayCommand, gateway_command
from coldtrace.mqtt import BrokerUrl, MqttClient, TlsFiles
from tests.harness.mosquitto import Mosquitto

pytestmark = pytest.mark.services


def test_a_manifest_published_from_a_thread_is_retained_for_its_gateway(
    pki: Pki,
    identity,
    mosquitto_tls: Mosquitto,  # type: ignore[no-untyped-def]
) -> None:
    service = identity(Role.SERVICE, "svc-ingest")
    gateway = identity(Role.GATEWAY, "gw-pub")
    settings = BrokerSettings(
        url=f"mqtts://localhost:{mosquitto_tls.port}", ca_file=pki.ca_bundle_path,
        cert_file=service.cert_path, key_file=service.key_path,
    )  # fmt: skip

    async def scenario() -> bytes:
        async with MqttManifestPublisher(settings, client_id="svc-ingest-api-test") as publisher:
            # Routes run in worker threads: publish from one, as the API does.
            await asyncio.to_thread(publisher.publish_manifest, "gw-pub", b'{"version":1}')
        # The gateway connects only afterwards and still gets it (retained).
        client = MqttClient(
            client_id="gw-pub", broker=BrokerUrl.parse(settings.url),
            tls=TlsFiles(ca_file=pki.ca_bundle_path, cert_file=gateway.cert_path, key_file=gateway.key_path),
        )  # fmt: skip
        await client.connect()
        await client.subscribe(gateway_command("gw-pub", GatewayCommand.MANIFEST), qos=1)
        async with asyncio.timeout(10):
            message = await client.messages.get()
        await client.disconnect()
        return message.payload

    assert asyncio.run(scenario()) == b'{"version":1}'


def test_publishing_without_a_connection_says_so(pki: Pki, identity, mosquitto_tls: Mosquitto) -> None:  # type: ignore[no-untyped-def]
    service = identity(Role.SERVICE, "svc-ingest")
    settings = BrokerSettings(
        url=f"mqtts://localhost:{mosquitto_tls.port}", ca_file=pki.ca_bundle_path,
        cert_file=service.cert_path, key_file=service.key_path,
    )  # fmt: skip
    publisher = MqttManifestPublisher(settings, client_id="svc-ingest-api-idle")
    with pytest.raises(PublishFailed, match="not connected"):
        publisher.publish_manifest("gw-pub", b"{}")
