"""The demo's cloud: settings for the real worker and API, the database, the HTTPS API server, manifests."""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

import httpx
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import SecretStr
from sqlalchemy import Engine

from cloud_ingest.api.app import create_app
from cloud_ingest.api.tls import EmbeddedServer
from cloud_ingest.db.engine import open_database
from cloud_ingest.keys import Role as ApiRole
from cloud_ingest.keys import create_key
from cloud_ingest.publisher import MqttManifestPublisher
from cloud_ingest.registry import register_gateway
from cloud_ingest.settings import ApiSettings, BrokerSettings, CloudSettings, TelemetrySettings
from cloud_ingest.worker import Worker
from coldtrace.contract.canonical import canonical_bytes
from coldtrace.contract.manifest import Manifest
from coldtrace.demo.errors import PortInUse, StackFailed
from coldtrace.demo.workdir import INGEST_IDENTITY, DemoPki

SHARE_GROUP = "ingest"
TELEMETRY_ORG = "coldtrace"
TELEMETRY_BUCKET = "coldtrace"


def bind_api_socket(host: str, port: int) -> socket.socket:
    """Reserve the API's address now, so a taken port is reported before anything else starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
        raise PortInUse(host, port, reason) from exc
    sock.setblocking(False)
    return sock


def cloud_settings(
    *, database_url: str, pki: DemoPki, broker_url: str, telemetry: TelemetrySettings, host: str, port: int
) -> CloudSettings:
    """The cloud's settings: the demo's database, brokers, telemetry target and PKI."""
    return CloudSettings(
        database_url=database_url,
        broker=BrokerSettings(
            url=broker_url, ca_file=pki.pki.ca_bundle_path, cert_file=pki.ingest.cert_path,
            key_file=pki.ingest.key_path, client_id=INGEST_IDENTITY, share_group=SHARE_GROUP,
        ),
        telemetry=telemetry,
        api=ApiSettings(
            host=host, port=port, cert_file=pki.server.chain_path, key_file=pki.server.key_path,
            ingest_port=None,
        ),
        metrics_port=0,
        housekeeping_interval_s=1.0,
    )  # fmt: skip


def demo_telemetry(
    url: str, token: SecretStr, *, org: str = TELEMETRY_ORG, bucket: str = TELEMETRY_BUCKET
) -> TelemetrySettings:
    """Telemetry to ``url`` (the embedded sink or the operator's server), retried briskly: a demo run
    is short, and waiting 30 s between retries would outlast it."""
    return TelemetrySettings(
        url=url, token=token, org=org, bucket=bucket, retry_initial_s=0.2, retry_max_s=2.0
    )


@dataclass(frozen=True, slots=True)
class Database:
    """The migrated database and the admin key made for the demo (shown once, stored hashed)."""

    engine: Engine
    admin_key: str


def prepare_database(
    settings: CloudSettings, gateways: Mapping[str, tuple[Ed25519PublicKey, str]], *, now_ms: int
) -> Database:
    """Create the schema, register each gateway's signing key with its site, make an admin API key."""
    engine = open_database(settings.database_url)
    with engine.begin() as conn:
        for gateway_id, (public_key, site_id) in gateways.items():
            register_gateway(conn, gateway_id, public_key, site_id=site_id, now_ms=now_ms)
        admin = create_key(conn, role=ApiRole.ADMIN, name="demo-admin", now_ms=now_ms)
    return Database(engine, admin.key)


def api_server(engine: Engine, settings: CloudSettings, publisher: MqttManifestPublisher) -> EmbeddedServer:
    """The cloud API (``create_app``) under uvicorn with HTTPS; serve it with the reserved socket."""
    api = settings.api
    app = create_app(engine=engine, settings=settings, publisher=publisher)
    config = uvicorn.Config(
        app, ssl_certfile=api.cert_file, ssl_keyfile=api.key_file, log_config=None, access_log=False,
        lifespan="off", server_header=False,
    )  # fmt: skip
    return EmbeddedServer(config)


async def wait_started(server: uvicorn.Server, task: asyncio.Task[object], *, within_s: float = 15.0) -> None:
    """Wait for uvicorn's start-up (it exposes a flag, not an event); StackFailed if it ended instead."""
    async with asyncio.timeout(within_s):
        while not server.started:
            if task.done():
                raise StackFailed("the API server stopped during start-up (see demo.log)")
            await asyncio.sleep(0.02)


async def wait_subscribed(worker: Worker, task: asyncio.Task[object], *, within_s: float = 30.0) -> None:
    """Wait until the worker's shared subscription is in place, so no batch published after this is
    dropped for want of a subscriber; StackFailed if the worker ended instead."""
    async with asyncio.timeout(within_s):
        while worker.consumer is None or not worker.consumer.subscribed.is_set():
            if task.done():
                raise StackFailed("the ingest worker stopped during start-up (see demo.log)")
            await asyncio.sleep(0.02)


async def close_consumer(worker: Worker) -> None:
    """After the worker's task ended: close its MQTT session (unacknowledged batches stay on the broker)."""
    if worker.consumer is not None:
        await worker.consumer.close()


async def push_manifests(
    *, api_url: str, ca_file: str, admin_key: str, manifests: Mapping[str, Manifest]
) -> None:
    """``POST /v1/manifests`` for each gateway, as an operator would; the API pushes them to the gateways."""
    trust = ssl.create_default_context(cafile=ca_file)
    async with httpx.AsyncClient(base_url=api_url, verify=trust, timeout=30.0) as client:
        for gateway_id, manifest in manifests.items():
            response = await client.post(
                "/v1/manifests", content=canonical_bytes(manifest),
                headers={"Authorization": f"Bearer {admin_key}", "Content-Type": "application/json"},
            )  # fmt: skip
            if response.status_code != 201:
                detail = f"{response.status_code} {response.text[:300]}"
                raise StackFailed(f"the API refused the manifest of {gateway_id}: {detail}")
            if response.json().get("published_ms") is None:
                raise StackFailed(f"the manifest of {gateway_id} was stored but not pushed to the gateway")
