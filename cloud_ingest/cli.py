"""``coldtrace cloud``: migrate the database, run workers and the API, register gateways, manage keys."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import ssl
from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from rich.console import Console
from sqlalchemy import Engine

from cloud_ingest.db.engine import migrate, open_database
from cloud_ingest.errors import CloudError
from cloud_ingest.keys_cli import app as keys_app
from cloud_ingest.keys_cli import load_settings
from cloud_ingest.registry import register_gateway, revoke_gateway
from cloud_ingest.settings import CloudSettings
from cloud_ingest.worker import Worker, run_until_signalled
from coldtrace.clock import wall_ms
from coldtrace.exitcodes import ExitCode

logger = logging.getLogger(__name__)
app = typer.Typer(no_args_is_help=True, help="Cloud ingest: workers, API, gateways, keys.")
app.add_typer(keys_app, name="keys", help="API keys: create (shown once), list, revoke.")
gateways_app = typer.Typer(no_args_is_help=True, help="Register gateways' signing keys; revoke gateways.")
app.add_typer(gateways_app, name="gateways")
_err = Console(stderr=True)
_out = Console()

Config = Annotated[Path | None, typer.Option(help="The cloud's TOML file (COLDTRACE_CLOUD_* overrides it).")]


@app.command("migrate")
def migrate_cmd(config: Config = None) -> None:
    """Create or upgrade the database schema (the worker and API also do this at start)."""
    settings = load_settings(config)
    engine = open_database(settings.database_url, upgrade=False)
    migrate(engine)
    _out.print(f"schema is current on {engine.url.render_as_string(hide_password=True)}")


@app.command()
def worker(
    config: Config = None,
    instance: Annotated[
        int, typer.Option(min=1, help="Worker number: client id suffix, metrics port offset.")
    ] = 1,
) -> None:
    """Consume gateways' batches from the cloud broker until SIGTERM (run several for more throughput)."""
    settings = load_settings(config)
    if settings.broker is None:
        _err.print(
            "[yellow]warning:[/] no [broker] configured: this worker only drains the spool and webhooks"
        )
    if settings.metrics_port:
        settings = settings.model_copy(update={"metrics_port": settings.metrics_port + instance - 1})
    engine = open_database(settings.database_url)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_until_signalled(Worker(engine, settings, instance=instance)))


@app.command()
def serve(config: Config = None) -> None:
    """Serve the HTTPS API, and the gateways' mutual-TLS ingest listener when configured."""
    settings = load_settings(config)
    api = settings.api
    if api.cert_file is None and api.host not in {"127.0.0.1", "localhost", "::1"}:
        _err.print("[red]error:[/] serving beyond loopback needs api.cert_file and api.key_file (HTTPS)")
        raise typer.Exit(ExitCode.USAGE)
    engine = open_database(settings.database_url)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(engine, settings))


async def _serve(engine: Engine, settings: CloudSettings) -> None:
    import uvicorn  # noqa: PLC0415 - only the API process needs it

    from cloud_ingest.api.app import create_app  # noqa: PLC0415
    from cloud_ingest.api.tls import EmbeddedServer, IngestTls, ingest_server, serve_all  # noqa: PLC0415
    from cloud_ingest.ingest import Ingestor  # noqa: PLC0415
    from cloud_ingest.publisher import MqttManifestPublisher  # noqa: PLC0415
    from coldtrace.metrics_server import serve as serve_metrics  # noqa: PLC0415

    api = settings.api
    async with contextlib.AsyncExitStack() as stack:
        publisher = None
        if settings.broker is not None:
            publisher = await stack.enter_async_context(
                MqttManifestPublisher(settings.broker, client_id=f"{settings.broker.client_id}-api")
            )
        extra = []
        if settings.pki_dir is not None:
            from cloud_ingest.api.routes.enrollments import enrollment_router  # noqa: PLC0415

            extra.append(enrollment_router(settings.pki_dir))
        app = create_app(engine=engine, settings=settings, publisher=publisher, extra_routers=extra)
        servers: list[uvicorn.Server] = [
            EmbeddedServer(
                uvicorn.Config(
                    app, host=api.host, port=api.port, log_config=None, ssl_certfile=api.cert_file,
                    ssl_keyfile=api.key_file,
                )
            )
        ]  # fmt: skip
        if api.ingest_port is not None and api.client_ca_file is not None:
            if api.cert_file is None or api.key_file is None:
                _err.print("[red]error:[/] the ingest listener needs api.cert_file and api.key_file")
                raise typer.Exit(ExitCode.USAGE)
            tls = IngestTls(
                cert_file=api.cert_file, key_file=api.key_file, client_ca_file=api.client_ca_file,
                crl_file=api.client_crl_file,
            )  # fmt: skip
            try:
                servers.append(
                    ingest_server(Ingestor(engine, settings), host=api.host, port=api.ingest_port, tls=tls)
                )
            except (OSError, ssl.SSLError) as exc:
                _err.print(f"[red]error:[/] cannot load the ingest listener's TLS files: {exc}")
                raise typer.Exit(ExitCode.USAGE) from exc
        async with asyncio.TaskGroup() as tg:
            metrics = None
            if api.metrics_port is not None:
                ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
                metrics = tg.create_task(
                    serve_metrics(settings.metrics_host, api.metrics_port, app.state.metrics,
                                  lambda: {"api": "up"}, ready=ready),
                    name="api-metrics",
                )  # fmt: skip
            await serve_all(servers)
            if metrics is not None:
                metrics.cancel()  # the HTTPS servers have stopped: so does the metrics endpoint


def _public_key(text: str) -> Ed25519PublicKey:
    data = text.strip().encode()
    if data.startswith(b"-----BEGIN"):
        key = load_pem_public_key(data)
    else:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(data, validate=True))
    if not isinstance(key, Ed25519PublicKey):
        raise TypeError("the key is not an Ed25519 public key")
    return key


@gateways_app.command("register")
def gateways_register(
    gateway_id: str,
    public_key: Annotated[Path, typer.Argument(help="The gateway's Ed25519 public key (PEM or base64 raw).")],
    site: Annotated[str | None, typer.Option(help="Site the gateway serves.")] = None,
    config: Config = None,
) -> None:
    """Register a gateway's batch-signing key so the cloud accepts its batches."""
    settings: CloudSettings = load_settings(config)
    try:
        key = _public_key(public_key.read_text())
    except (OSError, ValueError, TypeError) as exc:
        _err.print(f"[red]error:[/] cannot read a public key from {public_key}: {exc}")
        raise typer.Exit(ExitCode.INVALID_INPUT) from exc
    engine = open_database(settings.database_url)
    try:
        with engine.begin() as conn:
            key_id = register_gateway(conn, gateway_id, key, site_id=site, now_ms=wall_ms())
    except CloudError as exc:
        _err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(ExitCode.USAGE) from exc
    _out.print(f"gateway {gateway_id} registered with key {key_id}")


@gateways_app.command("revoke")
def gateways_revoke(gateway_id: str, config: Config = None) -> None:
    """Refuse every further batch of a gateway (also revoke its certificate: coldtrace certs revoke)."""
    settings = load_settings(config)
    engine = open_database(settings.database_url)
    try:
        with engine.begin() as conn:
            revoke_gateway(conn, gateway_id, now_ms=wall_ms())
    except CloudError as exc:
        _err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(ExitCode.USAGE) from exc
    _out.print(f"gateway {gateway_id} revoked: its batches are refused from now on")
