"""``POST /v1/ingest/batches`` over real mutual TLS: uvicorn on a loopback port, certificates from the
session PKI, batches signed the way a gateway signs them.

The listener runs in a thread with its own event loop, on a socket bound and listening before the
first request (connections wait in the backlog: no start-up race); each test stops it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import Engine, func, select

from certs.pki import IssuedIdentity, Pki, Role
from cloud_ingest.api.routes.ingest import REJECT_STATUS
from cloud_ingest.api.tls import (
    TLS_VERSIONS,
    ClientCertH11Protocol,
    EmbeddedServer,
    IngestServer,
    IngestTls,
    ingest_server,
    serve_all,
)
from cloud_ingest.consumer import BatchConsumer
from cloud_ingest.db.engine import create_db_engine, open_database
from cloud_ingest.db.tables import batches, readings, rejects
from cloud_ingest.ingest import Ingestor
from cloud_ingest.metrics import CloudMetrics
from cloud_ingest.settings import BrokerSettings, CloudSettings
from cloud_ingest.verify import IngestReject
from coldtrace.contract.topics import gateway_batches
from coldtrace.mqtt import BrokerUrl, MqttClient, TlsFiles
from tests.cloud_ingest.builders import GatewaySim, series
from tests.harness.mosquitto import Mosquitto
from tests.harness.ports import LOOPBACK

Identity = Callable[[Role, str], IssuedIdentity]

PATH = "/v1/ingest/batches"
LIMIT = 16 * 1024  # the frame limit of these tests' cloud; a batch of a few readings is far below it


@dataclass
class Listener:
    """A running ingest listener and how to reach it."""

    server: IngestServer
    ingestor: Ingestor
    pki: Pki
    port: int

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}{PATH}"

    def client(self, who: IssuedIdentity | None) -> httpx.Client:
        """A client that trusts the PKI and presents ``who``'s certificate (None: no certificate)."""
        return httpx.Client(verify=client_context(self.pki, who), timeout=30)

    def post(self, who: IssuedIdentity | None, frame: bytes) -> httpx.Response:
        with self.client(who) as client:
            return client.post(self.url, content=frame)


def client_context(pki: Pki, who: IssuedIdentity | None) -> ssl.SSLContext:
    """Trust the PKI; present ``who``'s certificate (None: none)."""
    if who is None:
        return ssl.create_default_context(cafile=pki.ca_bundle_path)
    return TlsFiles(ca_file=pki.ca_bundle_path, cert_file=who.cert_path, key_file=who.key_path).context()


@contextlib.contextmanager
def running(server: uvicorn.Server) -> Iterator[int]:
    """Run ``server`` in a thread on a fresh loopback socket; yields the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOOPBACK, 0))
    sock.listen()
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="test-https")
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
    assert not thread.is_alive()


def tls_files(pki: Pki, server_identity: IssuedIdentity) -> IngestTls:
    return IngestTls(
        cert_file=server_identity.chain_path, key_file=server_identity.key_path,
        client_ca_file=pki.ca_bundle_path, crl_file=pki.crl_path,
    )  # fmt: skip


@contextlib.contextmanager
def listening(ingestor: Ingestor, pki: Pki, server_identity: IssuedIdentity) -> Iterator[Listener]:
    """An ingest listener over ``ingestor``, trusting ``pki``."""
    server = ingest_server(ingestor, host=LOOPBACK, port=0, tls=tls_files(pki, server_identity))
    with running(server) as port:
        yield Listener(server, ingestor, pki, port)


@pytest.fixture
def listener(engine: Engine, pki: Pki, server_identity: IssuedIdentity) -> Iterator[Listener]:
    """An ingest listener over the test database (SQLite and PostgreSQL)."""
    ingestor = Ingestor(engine, CloudSettings(max_batch_bytes=LIMIT), metrics=CloudMetrics())
    with listening(ingestor, pki, server_identity) as running_listener:
        yield running_listener


def count(engine: Engine, table: Any, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def reject_rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(rejects.c.reason, rejects.c.identity, rejects.c.transport)).all())


def registered(engine: Engine, gateway_id: str) -> GatewaySim:
    sim = GatewaySim(gateway_id=gateway_id)
    sim.register(engine)
    return sim


# -- accepted, duplicate -------------------------------------------------------------------------------
def test_a_batch_is_stored_once_and_its_resend_answered_as_a_duplicate(
    listener: Listener, identity: Identity, engine: Engine
) -> None:
    sim = registered(engine, "gw-http-a")
    frame = sim.frame(list(series("dev-http-1", [4.0, 4.5, 5.0])))
    gateway = identity(Role.GATEWAY, "gw-http-a")

    first = listener.post(gateway, frame)
    assert first.status_code == 200
    assert first.json() == {
        "outcome": "accepted", "gateway_id": "gw-http-a", "batch_seq": 1, "readings_new": 3,
        "readings_duplicate": 0,
    }  # fmt: skip
    again = listener.post(gateway, frame)
    assert again.status_code == 200
    assert again.json()["outcome"] == "duplicate"
    assert (again.json()["readings_new"], again.json()["readings_duplicate"]) == (0, 3)

    assert count(engine, readings) == 3
    assert count(engine, batches, batches.c.transport == "http") == 1
    metrics = listener.ingestor.metrics.registry
    assert metrics.get_sample_value("coldtrace_cloud_batches_total", {"outcome": "duplicate"}) == 1


# -- who may submit ------------------------------------------------------------------------------------
@pytest.mark.parametrize("who", ["none", "server"])
def test_a_peer_without_a_client_certificate_is_refused_in_the_handshake(
    listener: Listener, who: str, server_identity: IssuedIdentity, engine: Engine
) -> None:
    # A server certificate lacks the clientAuth key usage: OpenSSL refuses it like a missing one.
    sim = registered(engine, "gw-http-a")
    frame = sim.frame(list(series("dev-http-1", [4.0])))
    with pytest.raises(httpx.TransportError):
        listener.post(None if who == "none" else server_identity, frame)
    assert count(engine, batches) == 0


@pytest.mark.parametrize(("role", "name"), [(Role.DEVICE, "dev-http-cert"), (Role.SERVICE, "svc-http-cert")])
def test_a_device_or_service_certificate_may_not_submit_batches(
    listener: Listener, identity: Identity, engine: Engine, role: Role, name: str
) -> None:
    sim = registered(engine, "gw-http-a")
    answer = listener.post(identity(role, name), sim.frame(list(series("dev-http-1", [4.0]))))
    assert answer.status_code == 403
    assert answer.json()["error"] == "forbidden"
    assert name in answer.json()["detail"]
    assert count(engine, batches) == 0
    assert reject_rows(engine) == []  # refused before the body was read


def test_a_gateway_cannot_submit_another_gateways_batch(
    listener: Listener, identity: Identity, engine: Engine
) -> None:
    registered(engine, "gw-http-a")
    other = registered(engine, "gw-http-b")
    answer = listener.post(identity(Role.GATEWAY, "gw-http-a"), other.frame(list(series("dev-b", [4.0]))))
    assert answer.status_code == 403
    assert answer.json()["error"] == "identity_mismatch"
    assert count(engine, batches) == 0
    assert reject_rows(engine) == [("identity_mismatch", "gw-http-a", "http")]


def test_an_unregistered_gateway_is_forbidden(listener: Listener, identity: Identity, engine: Engine) -> None:
    sim = GatewaySim(gateway_id="gw-http-unreg")  # has a certificate, was never enrolled
    answer = listener.post(identity(Role.GATEWAY, "gw-http-unreg"), sim.frame(list(series("dev-u", [4.0]))))
    assert answer.status_code == 403
    assert answer.json()["error"] == "unknown_gateway"


def test_a_revoked_certificate_is_refused_once_the_listener_reloads_the_crl(
    tmp_path: Path, pki: Pki, identity: Identity, server_identity: IssuedIdentity
) -> None:
    # Its own database: the certificate is revoked for the whole session, so this runs once.
    engine = open_database(f"sqlite:///{tmp_path / 'cloud.db'}")
    sim = registered(engine, "gw-http-revoked")
    gateway = identity(Role.GATEWAY, "gw-http-revoked")
    with listening(Ingestor(engine, CloudSettings()), pki, server_identity) as listener:
        assert listener.post(gateway, sim.frame(list(series("dev-r", [4.0])))).status_code == 200
        pki.revoke(Role.GATEWAY, "gw-http-revoked", reason="key_compromise")
        assert listener.server.reload_tls()
        assert not listener.server.reload_tls()  # nothing changed since
        with pytest.raises(httpx.TransportError):
            listener.post(gateway, sim.frame(list(series("dev-r", [4.5], first_seq=2))))
    assert count(engine, batches) == 1
    engine.dispose()


# -- what is refused, and how ---------------------------------------------------------------------------
def test_a_tampered_frame_is_refused_as_a_bad_signature(
    listener: Listener, identity: Identity, engine: Engine
) -> None:
    sim = registered(engine, "gw-http-a")
    frame = sim.frame(list(series("dev-http-1", [4.0, 4.5])))
    tampered = frame[:-3] + bytes([frame[-3] ^ 0x01]) + frame[-2:]
    answer = listener.post(identity(Role.GATEWAY, "gw-http-a"), tampered)
    assert answer.status_code == 422
    assert answer.json()["error"] == "bad_signature"
    assert count(engine, readings) == 0
    assert reject_rows(engine) == [("bad_signature", "gw-http-a", "http")]


def test_a_different_batch_under_a_stored_sequence_is_a_conflict(
    listener: Listener, identity: Identity, engine: Engine
) -> None:
    sim = registered(engine, "gw-http-a")
    fork = GatewaySim(gateway_id="gw-http-a", key=sim.key)  # same key, second chain: a forked history
    gateway = identity(Role.GATEWAY, "gw-http-a")
    assert listener.post(gateway, sim.frame(list(series("dev-http-1", [4.0])))).status_code == 200
    answer = listener.post(gateway, fork.frame(list(series("dev-http-1", [9.0]))))
    assert answer.status_code == 409
    assert answer.json()["error"] == "replayed_sequence"


def test_an_oversized_body_is_refused_without_being_buffered(
    listener: Listener, identity: Identity, engine: Engine
) -> None:
    sim = registered(engine, "gw-http-a")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted while reading
        for _ in range(16):
            yield b"\x00" * 4096

    with listener.client(identity(Role.GATEWAY, "gw-http-a")) as client:
        declared = client.post(listener.url, content=b"\x00" * (LIMIT + 1))
        streamed = client.post(listener.url, content=chunks())
        # The connection is still good: uvicorn discards the unread rest of a refused body.
        after = client.post(listener.url, content=sim.frame(list(series("dev-http-1", [4.0]))))
    for answer in (declared, streamed):
        assert answer.status_code == 413
        assert answer.json()["error"] == "oversized"
    assert "Content-Length" not in streamed.request.headers
    assert after.status_code == 200
    metrics = listener.ingestor.metrics.registry
    assert metrics.get_sample_value("coldtrace_cloud_rejects_total", {"reason": "oversized"}) == 2


def test_an_unreachable_database_is_503_with_retry_after(
    tmp_path: Path, pki: Pki, identity: Identity, server_identity: IssuedIdentity
) -> None:
    down = create_db_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'cloud.db'}")  # cannot be opened
    ingestor = Ingestor(down, CloudSettings(), metrics=CloudMetrics())
    sim = GatewaySim(gateway_id="gw-http-a")
    with listening(ingestor, pki, server_identity) as listener:
        answer = listener.post(identity(Role.GATEWAY, "gw-http-a"), sim.frame(list(series("d", [4.0]))))
    assert answer.status_code == 503
    assert answer.json()["error"] == "unavailable"
    assert answer.headers["Retry-After"] == "5"


def test_every_reject_reason_has_a_status() -> None:
    assert set(REJECT_STATUS) == set(IngestReject)
    assert {status.value for status in REJECT_STATUS.values()} == {403, 409, 413, 422}


# -- the TLS extension, and serving ------------------------------------------------------------------
def test_the_scope_carries_the_verified_client_certificate(
    pki: Pki, identity: Identity, server_identity: IssuedIdentity
) -> None:
    seen: list[dict[Any, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["extensions"]["tls"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    context = tls_files(pki, server_identity).context()
    server = uvicorn.Server(
        uvicorn.Config(
            app, http=ClientCertH11Protocol, ssl_context_factory=lambda _c, _d: context, lifespan="off",
            log_config=None,
        )
    )  # fmt: skip
    gateway = identity(Role.GATEWAY, "gw-http-a")
    with running(server) as port, httpx.Client(verify=client_context(pki, gateway)) as client:
        assert client.get(f"https://{LOOPBACK}:{port}/").status_code == 204
    (tls,) = seen
    (pem,) = tls["client_cert_chain"]
    assert ssl.PEM_cert_to_DER_cert(pem) == ssl.PEM_cert_to_DER_cert(gateway.cert_path.read_text())
    assert tls["tls_version"] == TLS_VERSIONS["TLSv1.3"]
    assert tls["client_cert_error"] is None


def test_serve_all_stops_every_server_on_sigterm(
    engine: Engine, pki: Pki, identity: Identity, server_identity: IssuedIdentity
) -> None:
    asyncio.run(_serve_until_sigterm(engine, pki, identity, server_identity))


async def _serve_until_sigterm(
    engine: Engine, pki: Pki, identity: Identity, server_identity: IssuedIdentity
) -> None:
    async def plain(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"api"})

    ingest = ingest_server(
        Ingestor(engine, CloudSettings()), host=LOOPBACK, port=0, tls=tls_files(pki, server_identity)
    )
    api = EmbeddedServer(uvicorn.Config(plain, host=LOOPBACK, port=0, lifespan="off", log_config=None))
    sim = registered(engine, "gw-http-a")
    gateway = identity(Role.GATEWAY, "gw-http-a")
    task = asyncio.create_task(serve_all([ingest, api]))
    await _until(lambda: ingest.started and api.started)
    ingest_port, api_port = (server.servers[0].sockets[0].getsockname()[1] for server in (ingest, api))
    async with httpx.AsyncClient(verify=client_context(pki, gateway), timeout=30) as client:
        stored = await client.post(
            f"https://{LOOPBACK}:{ingest_port}{PATH}", content=sim.frame(list(series("dev-http-1", [4.0])))
        )
    async with httpx.AsyncClient(timeout=30) as client:
        api_answer = await client.get(f"http://{LOOPBACK}:{api_port}/")
    assert (stored.status_code, api_answer.text) == (200, "api")
    signal.raise_signal(signal.SIGTERM)  # handled by serve_all: the test process lives on
    async with asyncio.timeout(30):
        await task
    assert ingest.should_exit
    assert api.should_exit
    assert count(engine, batches) == 1


# -- one store behind both transports -------------------------------------------------------------------
@pytest.mark.services
def test_the_same_frame_over_mqtt_and_https_is_stored_once(
    engine: Engine, pki: Pki, identity: Identity, server_identity: IssuedIdentity, mosquitto_tls: Mosquitto
) -> None:
    asyncio.run(_both_transports(engine, pki, identity, server_identity, mosquitto_tls))


async def _both_transports(
    engine: Engine, pki: Pki, identity: Identity, server_identity: IssuedIdentity, broker: Mosquitto
) -> None:
    tag = engine.dialect.name  # the session broker outlives each database run: names of its own
    gateway_id = f"gw-http-mq-{tag}"
    gateway = identity(Role.GATEWAY, gateway_id)
    service = identity(Role.SERVICE, "svc-ingest")
    sim = registered(engine, gateway_id)
    frames = [sim.frame(list(series("dev-mq", [4.0 + i], first_seq=i + 1))) for i in range(2)]
    broker_settings = BrokerSettings(
        url=f"mqtts://localhost:{broker.port}", ca_file=pki.ca_bundle_path, cert_file=service.cert_path,
        key_file=service.key_path, share_group=f"http-{tag}",
    )  # fmt: skip
    consumer = BatchConsumer(
        Ingestor(engine, CloudSettings(), metrics=CloudMetrics()), broker_settings,
        client_id=f"svc-ingest-http-{tag}",
    )  # fmt: skip
    publisher = MqttClient(
        client_id=gateway_id, broker=BrokerUrl.parse(broker_settings.url),
        tls=TlsFiles(ca_file=pki.ca_bundle_path, cert_file=gateway.cert_path, key_file=gateway.key_path),
    )  # fmt: skip
    http_ingestor = Ingestor(engine, CloudSettings(), metrics=CloudMetrics())
    with listening(http_ingestor, pki, server_identity) as listener:
        async with asyncio.TaskGroup() as group:
            consuming = group.create_task(consumer.run(), name="consumer")
            async with asyncio.timeout(20):
                await consumer.subscribed.wait()
            await publisher.connect()
            # Batch 1 arrives over MQTT first, then over HTTPS; batch 2 the other way round.
            await publisher.publish(gateway_batches(gateway_id), frames[0], qos=1)
            await _until(lambda: consumer.handled == 1)
            first = await asyncio.to_thread(listener.post, gateway, frames[0])
            second = await asyncio.to_thread(listener.post, gateway, frames[1])
            await publisher.publish(gateway_batches(gateway_id), frames[1], qos=1)
            await _until(lambda: consumer.handled == 2)
            await publisher.disconnect()
            await consumer.close()
            consuming.cancel()
    assert (first.json()["outcome"], second.json()["outcome"]) == ("duplicate", "accepted")
    assert count(engine, readings) == 2
    with engine.connect() as conn:
        stored = dict(conn.execute(select(batches.c.batch_seq, batches.c.transport)).all())
    assert stored == {1: "mqtt", 2: "http"}
    mqtt_metrics = consumer.ingestor.metrics.registry
    assert mqtt_metrics.get_sample_value("coldtrace_cloud_batches_total", {"outcome": "duplicate"}) == 1


async def _until(predicate: Callable[[], bool], *, within_s: float = 20.0) -> None:
    async with asyncio.timeout(within_s):
        while not predicate():  # noqa: ASYNC110 - the consumer counts; nothing to await across tasks
            await asyncio.sleep(0.02)
