"""The cloud's HTTP API: one FastAPI app over the shared database engine.

Routes are plain (sync) functions: FastAPI runs them in its thread pool, where the synchronous
SQLAlchemy engine belongs, each request in its own ``engine.begin()`` transaction. The cloud's own
errors become JSON answers ``{"error": code, "detail": message}`` here, in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from cloud_ingest.api.auth import ApiKeyVerifier, TokenVerifier
from cloud_ingest.api.metrics import ApiMetrics
from cloud_ingest.api.models import ErrorOut, Health
from cloud_ingest.api.routes import (
    alerts,
    devices,
    gateways,
    holds,
    lots,
    manifests,
    rejects,
    shipments,
    webhooks,
)
from cloud_ingest.api.routes.manifests import ManifestPublisher, contract_schemas
from cloud_ingest.errors import CloudError, Conflict, Forbidden, NotFound
from cloud_ingest.settings import CloudSettings
from coldtrace import __version__
from coldtrace.clock import wall_ms

logger = logging.getLogger(__name__)

API_PREFIX = "/v1"
ROUTERS: tuple[APIRouter, ...] = (
    alerts.router,
    holds.router,
    shipments.router,
    lots.router,
    gateways.router,
    rejects.router,
    devices.router,
    manifests.router,
    webhooks.router,
)
_STATUS_OF: tuple[tuple[type[CloudError], HTTPStatus], ...] = (
    (NotFound, HTTPStatus.NOT_FOUND),
    (Conflict, HTTPStatus.CONFLICT),
    (Forbidden, HTTPStatus.FORBIDDEN),
)


#: The ``error`` word of each status, fixed here: HTTPStatus phrases change between Python versions.
ERROR_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    422: "invalid",
    500: "internal",
    503: "unavailable",
}


def _error(status: HTTPStatus | int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    code = ERROR_CODES.get(int(status), f"http_{int(status)}")
    return JSONResponse({"error": code, "detail": detail}, status_code=int(status), headers=headers)


def _cloud_error(_request: Request, exc: Exception) -> JSONResponse:
    for kind, status in _STATUS_OF:
        if isinstance(exc, kind):
            return _error(status, str(exc))
    # Not one of the mapped kinds: a CloudError the API has no answer for is the server's fault.
    logger.error("unmapped cloud error: %s", exc, exc_info=exc)
    return _error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")


def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    # Registered for StarletteHTTPException (FastAPI's HTTPException included) only.
    status = int(getattr(exc, "status_code", HTTPStatus.INTERNAL_SERVER_ERROR))
    headers = getattr(exc, "headers", None)
    return _error(status, str(getattr(exc, "detail", "")), dict(headers) if headers else None)


def _integrity_error(_request: Request, exc: Exception) -> JSONResponse:
    # Two requests raced to create the same row (a lot, a manifest version); the loser retries.
    logger.warning("integrity conflict: %s", exc)
    return _error(HTTPStatus.CONFLICT, "a concurrent change conflicted with this one; retry")


def _route_name(route: APIRoute) -> str:
    return route.name


class CloudApi(FastAPI):
    """FastAPI plus the contract's schemas in the OpenAPI document (see ``contract_schemas``)."""

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI document, with the Manifest schema that ``POST /v1/manifests`` refers to."""
        schema = super().openapi()
        # FastAPI regenerates the document when routes change, so check the result, not a flag.
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        if "Manifest" not in schemas:
            schemas.update(contract_schemas())
        return schema


def create_app(
    *,
    engine: Engine,
    settings: CloudSettings,
    publisher: ManifestPublisher | None = None,
    extra_routers: Sequence[APIRouter] = (),
    now_ms: Callable[[], int] = wall_ms,
) -> FastAPI:
    """The API over ``engine``. ``extra_routers`` are mounted under ``/v1`` as they are (their auth is
    their own); ``publisher`` pushes manifests to gateways (None: stored only); ``now_ms`` is the clock.
    """
    app = CloudApi(
        title="coldtrace cloud API",
        version=__version__,
        description="Alerts, holds, shipments, lots, gateways, devices, manifests and webhooks.",
        # operationId = route name ("alerts.list"): the key of the permission table, stable for clients.
        generate_unique_id_function=_route_name,
    )
    app.state.engine = engine
    app.state.settings = settings
    app.state.publisher = publisher
    app.state.now_ms = now_ms
    verifiers: tuple[TokenVerifier, ...] = (ApiKeyVerifier(engine, now_ms),)
    if settings.oauth is not None:
        from cloud_ingest.api.oauth import OAuthVerifier  # noqa: PLC0415 - PyJWT only when configured

        verifiers = (OAuthVerifier(settings.oauth), *verifiers)
    app.state.token_verifiers = verifiers
    app.state.metrics = metrics = ApiMetrics()
    app.middleware("http")(metrics.middleware)
    app.add_exception_handler(CloudError, _cloud_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(IntegrityError, _integrity_error)

    @app.get(
        "/healthz",
        tags=["health"],
        name="healthz",
        responses={200: {"model": Health}, 503: {"model": ErrorOut}},
    )
    def healthz() -> JSONResponse:
        """Liveness: the process answers and the database takes a query. No authentication."""
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except OperationalError as exc:
            logger.warning("health check: database unreachable: %s", exc)
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, "database unreachable")
        return JSONResponse(Health(status="ok").model_dump())

    for router in (*ROUTERS, *extra_routers):
        app.include_router(router, prefix=API_PREFIX)
    return app
