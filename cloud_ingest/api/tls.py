"""The HTTPS ingest listener: uvicorn with mutual TLS and the verified client certificate in the scope.

uvicorn (0.54) can require and verify a client certificate but does not tell the application whose it
was. :class:`ClientCertH11Protocol` adds the ASGI TLS extension (spec 0.2) to every request of a TLS
connection: ``scope["extensions"]["tls"]["client_cert_chain"][0]`` is the peer's certificate, PEM. The
listener's context requires a certificate at the handshake (``CERT_REQUIRED`` against the PKI's CA
bundle, and its CRL when given; OpenSSL also insists on the clientAuth key usage), so a certificate in
the scope has always been verified. Which role it may act as is the route's decision
(:mod:`cloud_ingest.api.routes.ingest`). A changed CRL, CA bundle or server certificate is picked up
by new handshakes without a restart (:class:`IngestServer`).

Ingest has a listener of its own rather than ``CERT_OPTIONAL`` on the API's port: a peer without a
gateway certificate is refused in the handshake, before any HTTP is parsed; the API's bearer-key routes
are not reachable with a certificate, nor ingest with a key; and operators can route the two apart (a
TCP pass-through on 443 for gateways behind MQTT-hostile firewalls, a TLS-terminating proxy for people).

Both servers of ``coldtrace cloud serve`` run in one event loop under :func:`serve_all`, which owns
SIGINT/SIGTERM and shuts every server down gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn._types import ASGI3Application, ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.protocols.http.h11_impl import H11Protocol

from cloud_ingest.api.app import API_PREFIX, ERROR_CODES
from cloud_ingest.api.routes.ingest import ingest_router
from cloud_ingest.ingest import Ingestor
from coldtrace import __version__

logger = logging.getLogger(__name__)

#: ``tls_version`` of the ASGI TLS extension: the protocol's number on the wire.
TLS_VERSIONS: dict[str, int] = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}
_TICKS_PER_S = 10  # uvicorn calls Server.on_tick every 0.1 s


# -- the client certificate in the ASGI scope --------------------------------------------------------
def tls_extension(ssl_object: ssl.SSLObject) -> dict[object, object]:
    """The ASGI TLS extension of one connection.

    ``client_cert_chain`` holds the leaf only: Python before 3.13 cannot read the verified chain back.
    A server-side socket sees a certificate only when it asked for one, and a certificate that fails
    verification aborts the handshake, so ``client_cert_error`` is always None. ``server_cert``,
    ``client_cert_name`` and ``cipher_suite`` are None, as the spec allows (the ssl module does not give
    them; the name is in the certificate).
    """
    der = ssl_object.getpeercert(binary_form=True)
    return {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": None,
    }


class _WithTls:
    """An ASGI app seen through one TLS connection: its extension is added to each request's scope."""

    __slots__ = ("_app", "_tls")

    def __init__(self, app: ASGI3Application, tls: dict[object, object]) -> None:
        self._app = app
        self._tls = tls

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] == "http" or scope["type"] == "websocket":
            extensions = dict(scope.get("extensions") or {})
            extensions.setdefault("tls", self._tls)  # a uvicorn that provides it itself is believed
            scope["extensions"] = extensions
        await self._app(scope, receive, send)


class ClientCertH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, adding the ASGI TLS extension to the scopes of its connection.

    uvicorn makes one protocol object per connection and calls ``connection_made`` once the TLS
    handshake is complete, so the peer certificate is known before the first request is parsed.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Remember the connection and bind its TLS extension to the app."""
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if isinstance(ssl_object, ssl.SSLObject):
            self.app = _WithTls(self.app, tls_extension(ssl_object))


# -- the listener's TLS context ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class IngestTls:
    """What the ingest listener presents and whom it trusts."""

    cert_file: Path
    """The server's certificate chain (PEM)."""
    key_file: Path
    client_ca_file: Path
    """The PKI's CA bundle: gateways' certificates must chain to it."""
    crl_file: Path | None = None
    """The PKI's CRL; when given, a revoked certificate fails the handshake."""

    def context(self) -> ssl.SSLContext:
        """A server context that requires and verifies a client certificate (TLS 1.2 or newer)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        context.load_verify_locations(cafile=self.client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
        if self.crl_file is not None:
            context.load_verify_locations(cafile=self.crl_file)
            context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        context.set_alpn_protocols(["http/1.1"])
        return context


# -- servers -----------------------------------------------------------------------------------------
class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves SIGINT/SIGTERM to its host (:func:`serve_all`).

    uvicorn's own handlers assume one server per process: a second server would replace the first's.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Install nothing: the host stops the server by setting ``should_exit``."""
        yield


class IngestServer(EmbeddedServer):
    """The ingest listener; new handshakes pick up changed TLS files (checked every ``tls_refresh_s``).

    The listening socket keeps the context it was created with; its SNI callback, which OpenSSL calls
    for every handshake (with or without a server name), moves the handshake to the newest context.
    So a new CRL or a renewed server certificate takes effect without a restart; connections already
    open keep the context they were verified with until they close.
    """

    def __init__(
        self, config: uvicorn.Config, *, tls: IngestTls, context: ssl.SSLContext, tls_refresh_s: float = 60.0
    ) -> None:
        super().__init__(config)
        self.tls = tls
        self.context = context
        self._refresh_every = max(1, round(tls_refresh_s * _TICKS_PER_S))
        self._files_seen = self._files_signature()
        context.sni_callback = self._select_context

    def _select_context(
        self, ssl_object: ssl.SSLObject, _server_name: str | None, base: ssl.SSLContext
    ) -> None:
        if self.context is not base:
            ssl_object.context = self.context

    def _files_signature(self) -> tuple[tuple[int, int, int] | None, ...]:
        files = (self.tls.cert_file, self.tls.key_file, self.tls.client_ca_file, self.tls.crl_file)
        return tuple(_file_signature(path) for path in files)

    def reload_tls(self) -> bool:
        """Build a new context if a TLS file changed since the last load; True when one was built.

        Files that cannot be loaded leave the previous context in force.
        """
        seen = self._files_signature()
        if seen == self._files_seen:
            return False
        try:
            context = self.tls.context()
        except (OSError, ssl.SSLError) as exc:
            logger.warning(
                "ingest listener: cannot reload its TLS files (the old ones stay in force): %s", exc
            )
            return False
        self.context, self._files_seen = context, seen
        logger.info("ingest listener: reloaded its TLS files (certificate, CA bundle, CRL)")
        return True

    async def on_tick(self, counter: int) -> bool:
        """uvicorn's 0.1 s housekeeping, plus the check for changed TLS files."""
        if counter % self._refresh_every == 0:
            self.reload_tls()
        return await super().on_tick(counter)


def _file_signature(path: Path | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def create_ingest_app(ingestor: Ingestor, *, retry_after_s: int = 5) -> FastAPI:
    """The ingest listener's app: ``POST /v1/ingest/batches`` and nothing else; errors as the API's."""
    app = FastAPI(
        title="coldtrace gateway ingest", version=__version__, docs_url=None, redoc_url=None,
        openapi_url=None,
    )  # fmt: skip
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.include_router(ingest_router(ingestor, retry_after_s=retry_after_s), prefix=API_PREFIX)
    return app


def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    status = int(getattr(exc, "status_code", 500))
    headers = getattr(exc, "headers", None)
    return JSONResponse(
        {"error": ERROR_CODES.get(status, f"http_{status}"), "detail": str(getattr(exc, "detail", ""))},
        status_code=status,
        headers=dict(headers) if headers else None,
    )


def ingest_server(
    ingestor: Ingestor, *, host: str, port: int, tls: IngestTls, tls_refresh_s: float = 60.0,
    retry_after_s: int = 5,
) -> IngestServer:  # fmt: skip
    """The HTTPS ingest listener on ``host:port``; the TLS files are read now, so errors show at start."""
    context = tls.context()
    server_config = uvicorn.Config(
        create_ingest_app(ingestor, retry_after_s=retry_after_s), host=host, port=port,
        http=ClientCertH11Protocol, ssl_context_factory=lambda _config, _default: context,
        lifespan="off", log_config=None, proxy_headers=False, server_header=False,
    )  # fmt: skip
    return IngestServer(server_config, tls=tls, context=context, tls_refresh_s=tls_refresh_s)


async def serve_all(servers: Sequence[uvicorn.Server]) -> None:
    """Run ``servers`` (each an :class:`EmbeddedServer`) until SIGINT/SIGTERM or until one stops.

    Then every server stops accepting, finishes the requests in flight and returns.
    """
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for server in servers:
            server.should_exit = True

    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop)
    try:
        async with asyncio.TaskGroup() as group:
            for number, server in enumerate(servers, start=1):
                task = group.create_task(server.serve(), name=f"https-server-{number}")
                task.add_done_callback(lambda _task: stop())
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
