"""Fixtures for the demo's tests: a PKI of their own (revocations here must not leak into other tests)."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator

import pytest

from certs.errors import UnknownIdentity
from certs.pki import IssuedIdentity, Pki, Role
from coldtrace.demo.broker import Acl, MqttBroker, server_tls
from coldtrace.mqtt import BrokerUrl, MqttClient, TlsFiles


@pytest.fixture(scope="module")
def demo_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A fresh PKI with the broker's server certificate issued."""
    pki = Pki.init(tmp_path_factory.mktemp("demo-pki"))
    pki.issue(Role.SERVER, "localhost", dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    return pki


def issued(pki: Pki, role: Role, name: str) -> IssuedIdentity:
    """``name``'s current identity, issued on first use."""
    try:
        return pki.identity(role, name)
    except UnknownIdentity:
        return pki.issue(role, name)


def broker_context(pki: Pki) -> ssl.SSLContext:
    """The demo broker's server context over ``pki`` (CRL as it is now)."""
    server = pki.identity(Role.SERVER, "localhost")
    return server_tls(
        ca_file=str(pki.ca_bundle_path), cert_file=str(server.chain_path), key_file=str(server.key_path),
        crl_file=str(pki.crl_path),
    )  # fmt: skip


@contextlib.asynccontextmanager
async def running_broker(pki: Pki, acl: Acl | None = None) -> AsyncIterator[MqttBroker]:
    """A demo broker on a free port."""
    async with MqttBroker(name="test", tls=broker_context(pki), acl=acl or Acl()) as broker:
        yield broker


def client(
    broker: MqttBroker, pki: Pki, who: IssuedIdentity, *, client_id: str | None = None, **options: object
) -> MqttClient:
    """A coldtrace MQTT client presenting ``who``'s certificate chain."""
    return MqttClient(
        client_id=client_id or who.name, broker=BrokerUrl(host=broker.host, port=broker.port, tls=True),
        tls=TlsFiles(ca_file=pki.ca_bundle_path, cert_file=who.chain_path, key_file=who.key_path),
        **options,  # type: ignore[arg-type]
    )  # fmt: skip
