"""The MQTT clients against the real broker: what a PUBACK means, and reconnecting after a restart (both
clients: paho's and coldtrace.mqtt_native's)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from certs.pki import IssuedIdentity, Pki, Role
from coldtrace.mqtt import (
    BrokerUrl,
    MqttClient,
    MqttConnection,
    TlsFiles,
    reached_subscribers,
    reconnect_forever,
)
from coldtrace.mqtt_native import NativeMqttClient
from tests.edge_agent.conftest import _broker
from tests.harness.mosquitto import Mosquitto

pytestmark = pytest.mark.services


def _client(
    pki: Pki, who: IssuedIdentity, broker: Mosquitto, client_id: str, kind: type[MqttConnection] = MqttClient
) -> MqttConnection:
    return kind(
        client_id=client_id, broker=BrokerUrl(host=broker.host, port=broker.port, tls=True),
        tls=TlsFiles(ca_file=pki.ca_bundle_path, cert_file=who.cert_path, key_file=who.key_path),
    )  # fmt: skip


def test_a_message_nobody_subscribes_to_is_not_counted_as_delivered(
    pki: Pki, identity: Callable[[Role, str], IssuedIdentity], server_identity: IssuedIdentity
) -> None:
    # A broker of its own: the session-wide one keeps other tests' persistent subscriptions.
    mosquitto_tls = _broker(pki, server_identity)
    mosquitto_tls.start()

    async def scenario() -> tuple[bool, bool]:
        gateway = _client(pki, identity(Role.GATEWAY, "gw-puback"), mosquitto_tls, "gw-puback")
        ops = _client(pki, identity(Role.SERVICE, "svc-ops"), mosquitto_tls, "svc-ops-puback")
        await gateway.connect()
        await ops.connect()
        alone = await gateway.publish_nowait("ct/v1/gw/gw-puback/batch", b"x", qos=1)
        await ops.subscribe("ct/v1/gw/gw-puback/batch", qos=1)
        heard = await gateway.publish_nowait("ct/v1/gw/gw-puback/batch", b"y", qos=1)
        await gateway.disconnect()
        await ops.disconnect()
        return reached_subscribers(alone), reached_subscribers(heard)

    try:
        assert asyncio.run(scenario()) == (False, True)
    finally:
        mosquitto_tls.close()


@pytest.mark.parametrize("kind", [MqttClient, NativeMqttClient], ids=["paho", "native"])
def test_a_client_reconnects_and_resubscribes_after_a_broker_restart(
    pki: Pki, identity: Callable[[Role, str], IssuedIdentity], server_identity: IssuedIdentity,
    kind: type[MqttConnection],
) -> None:  # fmt: skip
    broker = _broker(pki, server_identity)
    broker.start()

    async def scenario() -> bytes:
        listener = _client(pki, identity(Role.SERVICE, "svc-ops"), broker, "svc-ops-restart", kind)
        subscribed = asyncio.Event()

        async def subscribe() -> None:
            await listener.subscribe("ct/v1/gw/gw-r/status", qos=1)
            subscribed.set()

        await listener.connect()
        await subscribe()
        keeper = asyncio.create_task(
            reconnect_forever(listener, initial_s=0.05, max_s=0.5, on_connect=subscribe)
        )
        subscribed.clear()
        await asyncio.to_thread(broker.restart)
        async with asyncio.timeout(30):
            await subscribed.wait()  # back, and subscribed again
        sender = _client(pki, identity(Role.GATEWAY, "gw-r"), broker, "gw-r")
        await sender.connect()
        await sender.publish("ct/v1/gw/gw-r/status", b"up", qos=1)
        async with asyncio.timeout(10):
            message = await listener.messages.get()
        keeper.cancel()
        await sender.disconnect()
        await listener.disconnect()
        return message.payload

    try:
        assert asyncio.run(scenario()) == b"up"
    finally:
        broker.close()
