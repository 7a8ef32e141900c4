"""The asyncio-streams MQTT 5 client against a real Mosquitto over mutual TLS: sessions, manual
acknowledgement, bounded receipt, refusals. Reconnecting after a broker restart is tested for both clients
in tests/coldtrace/test_mqtt.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from certs.pki import IssuedIdentity, Pki, Role
from coldtrace.mqtt import (
    BrokerUnreachable,
    BrokerUrl,
    ConnectRefused,
    MqttClient,
    PublishRefused,
    TlsFiles,
)
from coldtrace.mqtt_native import NativeMqttClient
from tests.edge_agent.conftest import GATEWAY, _broker
from tests.harness.mosquitto import Mosquitto

pytestmark = pytest.mark.services
Identity = Callable[[Role, str], IssuedIdentity]
TIMEOUT_S = 20.0
AGENT = f"agent-{GATEWAY}"  # the identity the test brokers' ACL lets read every device


@pytest.fixture
def broker(pki: Pki, server_identity: IssuedIdentity) -> Iterator[Mosquitto]:
    """A broker of the test's own: persistent sessions of other tests stay out of it."""
    mosquitto = _broker(pki, server_identity)
    mosquitto.start()
    yield mosquitto
    mosquitto.close()


def _tls(pki: Pki, who: IssuedIdentity) -> TlsFiles:
    return TlsFiles(ca_file=pki.ca_bundle_path, cert_file=who.cert_path, key_file=who.key_path)


def _url(broker: Mosquitto) -> BrokerUrl:
    return BrokerUrl(host=broker.host, port=broker.port, tls=True)


def _agent(pki: Pki, identity: Identity, broker: Mosquitto, **options: int) -> NativeMqttClient:
    return NativeMqttClient(
        client_id=AGENT, broker=_url(broker), tls=_tls(pki, identity(Role.SERVICE, AGENT)),
        clean_start=False, session_expiry_s=3600, manual_ack=True, **options,
    )  # fmt: skip


def _loadgen(pki: Pki, identity: Identity, broker: Mosquitto) -> MqttClient:
    who = identity(Role.SERVICE, "sim-loadgen")
    return MqttClient(client_id="sim-loadgen-n", broker=_url(broker), tls=_tls(pki, who))


def test_unacknowledged_messages_come_back_after_a_reconnect_and_acknowledged_ones_do_not(
    pki: Pki, identity: Identity, broker: Mosquitto
) -> None:
    async def scenario() -> tuple[list[bytes], list[bytes]]:
        agent = _agent(pki, identity, broker)
        await agent.connect()
        await agent.subscribe("ct/v1/dev/+/up", qos=1)
        sender = _loadgen(pki, identity, broker)
        await sender.connect()
        for i in range(6):
            await sender.publish(f"ct/v1/dev/d{i}/up", f"m{i}".encode(), qos=1)
        async with asyncio.timeout(TIMEOUT_S):
            first = [await agent.messages.get() for _ in range(6)]
        for message in first[:3]:
            message.ack()
        await agent.disconnect()  # three acknowledged, three not
        for message in first[3:]:
            message.ack()  # too late: the connection is gone, the broker keeps them
        agent = _agent(pki, identity, broker)
        await agent.connect()
        async with asyncio.timeout(TIMEOUT_S):
            again = [await agent.messages.get() for _ in range(3)]
        for message in again:
            message.ack()
        await sender.disconnect()
        await agent.disconnect()
        return [m.payload for m in first], [m.payload for m in again]

    first, again = asyncio.run(scenario())
    assert first == [f"m{i}".encode() for i in range(6)]
    assert again == [b"m3", b"m4", b"m5"]


def test_a_backlog_larger_than_the_receive_maximum_is_held_back_until_acknowledged(
    pki: Pki, identity: Identity, broker: Mosquitto
) -> None:
    async def scenario() -> tuple[list[int], int]:
        agent = _agent(pki, identity, broker, receive_maximum=50)
        await agent.connect()
        await agent.subscribe("ct/v1/dev/+/up", qos=1)
        await agent.disconnect()
        sender = _loadgen(pki, identity, broker)
        await sender.connect()
        for i in range(999):
            sender.publish_nowait(f"ct/v1/dev/d{i % 20}/up", i.to_bytes(2, "big"))
        await sender.publish("ct/v1/dev/d0/up", (999).to_bytes(2, "big"))
        agent = _agent(pki, identity, broker, receive_maximum=50)
        await agent.connect()
        seen: list[int] = []
        most = 0
        async with asyncio.timeout(60):
            while len(seen) < 1000:
                message = await agent.messages.get()
                most = max(most, agent.messages.qsize() + 1)
                seen.append(int.from_bytes(message.payload, "big"))
                message.ack()
        await sender.disconnect()
        await agent.disconnect()
        return seen, most

    seen, most = asyncio.run(scenario())
    assert sorted(seen) == list(range(1000))  # every message, once
    assert most <= 50  # never more than the receive maximum waiting in memory


def test_refusals_are_reported_as_such(
    pki: Pki, identity: Identity, broker: Mosquitto, tmp_path: Path
) -> None:
    async def scenario() -> None:
        device = NativeMqttClient(
            client_id="dev-n", broker=_url(broker), tls=_tls(pki, identity(Role.DEVICE, "dev-n"))
        )
        await device.connect()
        with pytest.raises(PublishRefused) as refused:  # only below its own name
            await device.publish("ct/v1/dev/dev-other/up", b"x")
        assert refused.value.reason.value == 135
        await device.publish("ct/v1/dev/dev-n/up", b"x")
        await device.disconnect()
        stranger = Pki.init(tmp_path / "stranger-pki")
        outsider = stranger.issue(Role.DEVICE, "dev-n")
        with pytest.raises(ConnectRefused):
            await NativeMqttClient(
                client_id="dev-n", broker=_url(broker), tls=_tls(stranger, outsider)
            ).connect()
        nowhere = BrokerUrl(host="127.0.0.1", port=1, tls=True)
        with pytest.raises(BrokerUnreachable):
            await NativeMqttClient(
                client_id="dev-n", broker=nowhere, tls=_tls(pki, identity(Role.DEVICE, "dev-n"))
            ).connect()

    asyncio.run(scenario())
