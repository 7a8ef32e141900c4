"""The demo broker: mutual TLS first, identities from certificates, ACLs, and the MQTT 5 semantics the
agents and workers rely on (PUBACK reason codes, shared subscriptions, persistent sessions, retained)."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from certs.pki import Pki, Role
from coldtrace.demo.broker import Acl, cloud_services
from coldtrace.mqtt import BrokerUrl, ConnectRefused, MqttClient, MqttError, PublishRefused, TlsFiles
from tests.coldtrace.demo.conftest import client, issued, running_broker

TIMEOUT_S = 10.0


def test_a_client_without_a_certificate_is_refused_in_the_handshake(demo_pki: Pki) -> None:
    async def scenario() -> None:
        async with running_broker(demo_pki) as broker:
            # Trusts the broker, presents nothing.
            context = ssl.create_default_context(cafile=str(demo_pki.ca_bundle_path))
            anonymous = MqttClient(
                client_id="anonymous", broker=BrokerUrl(host=broker.host, port=broker.port, tls=True),
                ssl_context=context,
            )  # fmt: skip
            with pytest.raises(ConnectRefused):
                await anonymous.connect(timeout_s=TIMEOUT_S)
            async with asyncio.timeout(TIMEOUT_S):
                await broker.wait_for(lambda s: s.tls_refused == 1)
            assert broker.stats.connections == 0

    asyncio.run(scenario())


def test_certificates_of_another_ca_and_revoked_ones_are_refused(
    demo_pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> None:
    stranger_pki = Pki.init(tmp_path_factory.mktemp("stranger-pki"))
    stranger = stranger_pki.issue(Role.DEVICE, "stranger-0001")
    revoked = issued(demo_pki, Role.DEVICE, "revoked-0001")
    demo_pki.revoke(Role.DEVICE, "revoked-0001", reason="key_compromise")
    valid = issued(demo_pki, Role.DEVICE, "valid-0001")

    async def scenario() -> None:
        async with running_broker(demo_pki) as broker:  # loads the CRL with the revocation
            url = BrokerUrl(host=broker.host, port=broker.port, tls=True)
            foreign = MqttClient(
                client_id="stranger-0001", broker=url,
                tls=TlsFiles(ca_file=demo_pki.ca_bundle_path, cert_file=stranger.chain_path,
                             key_file=stranger.key_path),
            )  # fmt: skip
            with pytest.raises(ConnectRefused):
                await foreign.connect(timeout_s=TIMEOUT_S)
            with pytest.raises(ConnectRefused):
                await client(broker, demo_pki, revoked).connect(timeout_s=TIMEOUT_S)
            async with asyncio.timeout(TIMEOUT_S):
                await broker.wait_for(lambda s: s.tls_refused == 2)
            accepted = client(broker, demo_pki, valid)
            await accepted.connect(timeout_s=TIMEOUT_S)
            assert broker.stats.connections == 1
            await accepted.disconnect()

    asyncio.run(scenario())


def test_the_identity_is_the_certificate_and_the_acl_confines_it(demo_pki: Pki) -> None:
    gateway = issued(demo_pki, Role.GATEWAY, "gw-acl-a")

    async def scenario() -> None:
        async with running_broker(demo_pki, Acl(users=cloud_services("svc-acl"))) as broker:
            # The client id claims another gateway; the certificate decides.
            link = client(broker, demo_pki, gateway, client_id="gw-acl-b")
            await link.connect(timeout_s=TIMEOUT_S)
            with pytest.raises(PublishRefused) as refused:
                await link.publish("ct/v1/gw/gw-acl-b/batch", b"frame")
            assert refused.value.reason.value == 135
            own = await link.publish_nowait("ct/v1/gw/gw-acl-a/batch", b"frame")
            assert own.value == 16  # allowed, but nobody subscribes: "no matching subscribers"
            with pytest.raises(MqttError, match="refused"):
                await link.subscribe("ct/v1/gw/+/batch")
            await link.subscribe("ct/v1/gw/gw-acl-a/cmd/#")  # its own command topics are readable
            assert broker.stats.denied == 2
            await link.disconnect()

    asyncio.run(scenario())


async def _collect(clients: list[MqttClient], count: int) -> list[list[bytes]]:
    """Payloads each client receives until ``count`` arrived in all (acknowledging each)."""
    got: list[list[bytes]] = [[] for _ in clients]
    enough = asyncio.Event()

    async def drain(i: int, c: MqttClient) -> None:
        while True:
            message = await c.messages.get()
            message.ack()
            got[i].append(message.payload)
            if sum(map(len, got)) >= count:
                enough.set()

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(drain(i, c)) for i, c in enumerate(clients)]
        try:
            async with asyncio.timeout(TIMEOUT_S):
                await enough.wait()
        finally:
            for task in tasks:
                task.cancel()
    return got


def test_shared_subscribers_split_the_batches_each_exactly_once(demo_pki: Pki) -> None:
    gateway = issued(demo_pki, Role.GATEWAY, "gw-share")
    worker = issued(demo_pki, Role.SERVICE, "svc-share")

    async def scenario() -> None:
        async with running_broker(demo_pki, Acl(users=cloud_services("svc-share"))) as broker:
            workers = [client(broker, demo_pki, worker, client_id=f"svc-share-{n}") for n in (1, 2)]
            for w in workers:
                await w.connect(timeout_s=TIMEOUT_S)
                await w.subscribe("$share/ingest/ct/v1/gw/+/batch")
            sender = client(broker, demo_pki, gateway)
            await sender.connect(timeout_s=TIMEOUT_S)
            sent = [f"batch {n}".encode() for n in range(10)]
            for payload in sent:
                reason = await sender.publish_nowait("ct/v1/gw/gw-share/batch", payload)
                assert reason.value == 0
            got = await _collect(workers, len(sent))
            assert sorted(got[0] + got[1]) == sorted(sent)
            assert got[0], got  # both members of the group took a share
            assert got[1], got
            assert broker.stats.delivered == len(sent)  # one copy per batch, not one per member
            for c in (*workers, sender):
                await c.disconnect()

    asyncio.run(scenario())


def test_a_persistent_session_keeps_what_arrives_while_its_client_is_away(demo_pki: Pki) -> None:
    gateway = issued(demo_pki, Role.GATEWAY, "gw-away")
    worker = issued(demo_pki, Role.SERVICE, "svc-away")

    async def scenario() -> None:
        async with running_broker(demo_pki, Acl(users=cloud_services("svc-away"))) as broker:
            options = {"clean_start": False, "session_expiry_s": 60, "manual_ack": True}
            first = client(broker, demo_pki, worker, client_id="svc-away-1", **options)
            await first.connect(timeout_s=TIMEOUT_S)
            await first.subscribe("ct/v1/gw/+/batch")
            sender = client(broker, demo_pki, gateway)
            await sender.connect(timeout_s=TIMEOUT_S)
            await sender.publish("ct/v1/gw/gw-away/batch", b"seen, never acknowledged")
            async with asyncio.timeout(TIMEOUT_S):
                unacked = await first.messages.get()
            assert unacked.payload == b"seen, never acknowledged"
            await first.disconnect()  # without acknowledging it
            # Queued for the absent session: PUBACK 0, not 16 ("no matching subscribers").
            reason = await sender.publish_nowait("ct/v1/gw/gw-away/batch", b"sent while away")
            assert reason.value == 0
            again = client(broker, demo_pki, worker, client_id="svc-away-1", **options)
            await again.connect(timeout_s=TIMEOUT_S)  # no new SUBSCRIBE: the session kept it
            got = await _collect([again], 2)
            assert got == [[b"seen, never acknowledged", b"sent while away"]]
            for c in (again, sender):
                await c.disconnect()

    asyncio.run(scenario())


def test_a_retained_manifest_reaches_a_gateway_that_subscribes_later(demo_pki: Pki) -> None:
    api = issued(demo_pki, Role.SERVICE, "svc-retain")
    gateway = issued(demo_pki, Role.GATEWAY, "gw-retain")

    async def scenario() -> None:
        async with running_broker(demo_pki, Acl(users=cloud_services("svc-retain"))) as broker:
            publisher = client(broker, demo_pki, api)
            await publisher.connect(timeout_s=TIMEOUT_S)
            await publisher.publish("ct/v1/gw/gw-retain/cmd/manifest", b"manifest v1", retain=True)
            late = client(broker, demo_pki, gateway)
            await late.connect(timeout_s=TIMEOUT_S)
            await late.subscribe("ct/v1/gw/gw-retain/cmd/#")
            async with asyncio.timeout(TIMEOUT_S):
                message = await late.messages.get()
            assert (message.topic, message.payload) == ("ct/v1/gw/gw-retain/cmd/manifest", b"manifest v1")
            for c in (publisher, late):
                await c.disconnect()

    asyncio.run(scenario())
