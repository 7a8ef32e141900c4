"""The mutual-TLS Mosquitto enforces identity: only certificates from our CA and not revoked get in, the
certificate CN is the MQTT username, and each identity publishes only to its own topics."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from certs.pki import IssuedIdentity, Pki, Role
from tests.harness.mosquitto import Mosquitto
from tests.harness.mqtt import NOT_AUTHORIZED, SUCCESS, MqttTestClient, client_tls, connect_outcome

pytestmark = pytest.mark.services

Identity = Callable[[Role, str], IssuedIdentity]


def _client(broker: Mosquitto, pki: Pki, who: IssuedIdentity | None, client_id: str) -> MqttTestClient:
    return MqttTestClient(broker.host, broker.port, client_tls(pki.ca_bundle_path, who), client_id=client_id)


@pytest.fixture
def ingest(mosquitto_tls: Mosquitto, pki: Pki, identity: Identity) -> Iterator[MqttTestClient]:
    """A connected service subscriber (svc-ingest may read every device's uplink)."""
    with _client(mosquitto_tls, pki, identity(Role.SERVICE, "svc-ingest"), "svc-ingest-test") as client:
        result = client.connect()
        assert result.connected, result
        assert client.subscribe("ct/v1/dev/+/up", qos=1) == [1]
        yield client


@pytest.fixture
def device(mosquitto_tls: Mosquitto, pki: Pki, identity: Identity) -> Iterator[MqttTestClient]:
    """A connected device client with the certificate of dev-001."""
    with _client(mosquitto_tls, pki, identity(Role.DEVICE, "dev-001"), "dev-001") as client:
        result = client.connect()
        assert result.connected, result
        yield client


def _assert_refused_by_tls(broker: Mosquitto, pki: Pki, who: IssuedIdentity | None, client_id: str) -> str:
    """Connect as ``who`` and assert the broker refused it in TLS; return the broker log of the attempt."""
    offset = broker.log_size()
    result = connect_outcome(
        broker.host, broker.port, client_tls(pki.ca_bundle_path, who), client_id=client_id
    )
    assert not result.connected, result
    # No CONNACK at all: the refusal happened in the TLS layer, not in MQTT authentication.
    assert result.reason_code is None, result
    return broker.log_text(offset)


def test_device_publishes_to_its_own_topic_and_service_receives_it(
    device: MqttTestClient, ingest: MqttTestClient
) -> None:
    topic = "ct/v1/dev/dev-001/up"

    assert device.publish(topic, b'{"t":4.25}', qos=1) == SUCCESS

    delivered = ingest.messages_until(topic)
    assert [(m.topic, m.payload) for m in delivered] == [(topic, b'{"t":4.25}')]


def test_device_cannot_publish_to_another_devices_topic(
    device: MqttTestClient, ingest: MqttTestClient
) -> None:
    assert device.publish("ct/v1/dev/dev-002/up", b"forged", qos=1) == NOT_AUTHORIZED

    # The broker handles one connection's packets in order: once this marker reaches the subscriber,
    # the forged message would have reached it first had it been forwarded.
    assert device.publish("ct/v1/dev/dev-001/up", b"marker", qos=1) == SUCCESS
    delivered = ingest.messages_until("ct/v1/dev/dev-001/up")
    assert [m.payload for m in delivered] == [b"marker"], delivered


def test_mqtt_username_cannot_override_the_certificate_identity(
    mosquitto_tls: Mosquitto, pki: Pki, identity: Identity, ingest: MqttTestClient
) -> None:
    # dev-001 claims to be the all-powerful svc-ops; use_identity_as_username must ignore that.
    who = identity(Role.DEVICE, "dev-001")
    tls = client_tls(pki.ca_bundle_path, who)
    with MqttTestClient(
        mosquitto_tls.host, mosquitto_tls.port, tls, client_id="dev-001-spoof", username="svc-ops"
    ) as client:
        assert client.connect().connected
        assert client.publish("ct/v1/dev/dev-002/up", b"forged", qos=1) == NOT_AUTHORIZED


def test_client_without_certificate_is_refused(
    mosquitto_tls: Mosquitto, pki: Pki, device: MqttTestClient
) -> None:
    # `device` proves the broker is up and accepting, so the refusal below is about the certificate.
    log = _assert_refused_by_tls(mosquitto_tls, pki, None, "no-cert")
    assert "peer did not return a certificate" in log


def test_certificate_from_another_ca_is_refused(
    mosquitto_tls: Mosquitto, pki: Pki, device: MqttTestClient, tmp_path: Path
) -> None:
    # Same CN as a legitimate device, signed by a CA the broker does not trust.
    rogue = Pki.init(tmp_path / "rogue-pki").issue(Role.DEVICE, "dev-001")

    log = _assert_refused_by_tls(mosquitto_tls, pki, rogue, "dev-001-rogue")
    assert "certificate verify failed" in log


def test_revoked_certificate_is_refused_after_crl_reload(
    mosquitto_tls: Mosquitto, pki: Pki, identity: Identity
) -> None:
    # A device of its own: revoking it must not affect the identities other tests share.
    victim = identity(Role.DEVICE, "dev-revoked-01")
    tls = client_tls(pki.ca_bundle_path, victim)
    before = connect_outcome(mosquitto_tls.host, mosquitto_tls.port, tls, client_id="dev-revoked-01")
    assert before.connected, before  # the certificate itself is fine until it is revoked

    pki.revoke(Role.DEVICE, "dev-revoked-01", reason="key_compromise")
    mosquitto_tls.update_crl(pki.crl_path)
    mosquitto_tls.reload()

    log = _assert_refused_by_tls(mosquitto_tls, pki, victim, "dev-revoked-01")
    assert "certificate verify failed" in log
    # The broker still admits everyone else after the reload.
    other = connect_outcome(
        mosquitto_tls.host,
        mosquitto_tls.port,
        client_tls(pki.ca_bundle_path, identity(Role.DEVICE, "dev-001")),
        client_id="dev-001-after-reload",
    )
    assert other.connected, other
