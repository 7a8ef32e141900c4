"""``/v1/manifests``: versioned device bindings per gateway, stored and then pushed to the gateway.

A new version is stored in one transaction with its bindings and with any shipments and lots it names
that the cloud did not know (quantity 0 until the ERP's ``PUT /v1/lots/{id}``). Only after that commits
is it handed to the :class:`ManifestPublisher`, so a gateway never receives a manifest the cloud could
still roll back; a failed hand-over leaves ``published_ms`` empty and ``POST …/publish`` retries it.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Annotated, Any, Protocol

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from pydantic_core import ErrorDetails
from sqlalchemy import Connection, Engine, func, insert, select, update

from cloud_ingest.api.auth import Authorized, authorize
from cloud_ingest.api.models import ManifestDetail, ManifestOut, Page
from cloud_ingest.api.routes import Cursor, Db, Limit, NowMs, keyset, page_rows
from cloud_ingest.db.tables import bindings, gateways, lots, manifests, shipments
from cloud_ingest.errors import CloudError, Conflict, NotFound
from coldtrace.contract.canonical import canonical_bytes
from coldtrace.contract.manifest import Manifest

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/manifests", tags=["manifests"], dependencies=[Depends(authorize)])

#: 50,000 devices with a few bindings each stay well below this.
MAX_MANIFEST_BYTES = 32 * 1024 * 1024


class PublishFailed(CloudError):
    """The broker did not take the manifest; it stays stored and unpublished."""


class ManifestPublisher(Protocol):
    """Delivers a stored manifest to its gateway (``ct/v1/gw/<id>/cmd/manifest``).

    Called after the manifest committed, from a worker thread. Raise :class:`PublishFailed` when the
    broker does not accept it; the API then reports it unpublished instead of failing the request.
    """

    def publish_manifest(self, gateway_id: str, body: bytes) -> None:
        """Send ``body`` (canonical JSON) to ``gateway_id``."""
        ...


def contract_schemas() -> dict[str, Any]:
    """JSON Schemas of the contract's Manifest and its parts, for the OpenAPI components.

    ``POST /v1/manifests`` reads its body itself (see :func:`_decode`), so FastAPI does not see the
    model; the app adds these schemas to ``components.schemas`` under their own names.
    """
    schema = Manifest.model_json_schema(ref_template="#/components/schemas/{model}")
    parts: dict[str, Any] = schema.pop("$defs", {})
    return {**parts, "Manifest": schema}


def _publisher(request: Request) -> ManifestPublisher | None:
    publisher: ManifestPublisher | None = request.app.state.publisher
    return publisher


Publisher = Annotated[ManifestPublisher | None, Depends(_publisher)]


async def _raw_body(request: Request) -> bytes:
    size = 0
    chunks = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_MANIFEST_BYTES:
            raise HTTPException(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"a manifest may have {MAX_MANIFEST_BYTES} bytes"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(raw: bytes) -> Manifest:
    # The contract models are strict (no "1" for 1, arrays for tuples only in JSON mode): validating
    # the JSON text directly is what accepts exactly what a gateway would accept.
    try:
        return Manifest.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError([_body_error(e) for e in exc.errors(include_url=False)]) from exc


def _body_error(error: ErrorDetails) -> dict[str, Any]:
    """A validation error as FastAPI reports body errors (without ``ctx``, which may hold exceptions)."""
    loc: tuple[int | str, ...] = ("body", *error["loc"])
    msg = error["msg"]
    ctx = error.get("ctx") or {}
    if error["type"] == "cross_field":
        # The contract's model validators name the offending field in ctx (see contract.reading).
        loc, msg = (*loc, str(ctx["field"])), str(ctx["reason"])
    return {"type": error["type"], "loc": loc, "msg": msg}


def _summary(row: Any) -> ManifestOut:
    return ManifestOut(
        gateway_id=row.gateway_id, version=row.version, site_id=row.site_id, issued_ms=row.issued_ms,
        created_by=row.created_by, published_ms=row.published_ms,
    )  # fmt: skip


def _store(conn: Connection, manifest: Manifest, body: bytes, *, actor: str, now_ms: int) -> None:
    gateway = conn.execute(
        select(gateways.c.status, gateways.c.site_id)
        .where(gateways.c.gateway_id == manifest.gateway_id)
        .with_for_update()  # serialises concurrent versions of one gateway
    ).one_or_none()
    if gateway is None:
        raise NotFound(f"gateway {manifest.gateway_id} is not registered")
    if gateway.status != "active":
        raise Conflict(f"gateway {manifest.gateway_id} is {gateway.status}")
    if gateway.site_id is not None and gateway.site_id != manifest.site_id:
        raise Conflict(f"gateway {manifest.gateway_id} is at site {gateway.site_id}, not {manifest.site_id}")
    current = conn.execute(
        select(func.max(manifests.c.version)).where(manifests.c.gateway_id == manifest.gateway_id)
    ).scalar_one_or_none()
    if current is not None and manifest.version <= current:
        raise Conflict(f"gateway {manifest.gateway_id} is at manifest version {current}; send a higher one")
    conn.execute(
        insert(manifests).values(
            gateway_id=manifest.gateway_id, version=manifest.version, site_id=manifest.site_id,
            issued_ms=manifest.issued_ms, body=body, created_by=actor,
        )
    )  # fmt: skip
    rows = [
        {
            "gateway_id": manifest.gateway_id,
            "manifest_version": manifest.version,
            "device_id": device.device_id,
            "shipment_id": b.shipment_id,
            "lot_ids": ",".join(b.lot_ids),
            "profile": b.profile,
            "valid_from_ms": b.valid_from_ms,
            "valid_to_ms": b.valid_to_ms,
        }
        for device in manifest.devices
        for b in device.bindings
    ]
    if rows:
        conn.execute(insert(bindings), rows)
    _create_subjects(conn, manifest, now_ms=now_ms)


def _create_subjects(conn: Connection, manifest: Manifest, *, now_ms: int) -> None:
    """Shipments and lots the manifest names that the cloud does not know yet (first binding wins)."""
    new_shipments: dict[str, str] = {}
    new_lots: dict[str, tuple[str | None, str]] = {}
    for device in manifest.devices:
        for b in device.bindings:
            if b.shipment_id is not None:
                new_shipments.setdefault(b.shipment_id, b.profile)
            for lot_id in b.lot_ids:
                new_lots.setdefault(lot_id, (b.shipment_id, b.profile))
    known_shipments = set(
        conn.execute(
            select(shipments.c.shipment_id).where(shipments.c.shipment_id.in_(list(new_shipments)))
        ).scalars()
    )
    known_lots = set(conn.execute(select(lots.c.lot_id).where(lots.c.lot_id.in_(list(new_lots)))).scalars())
    shipment_rows = [
        {"shipment_id": s, "profile": p, "created_ms": now_ms}
        for s, p in new_shipments.items()
        if s not in known_shipments
    ]
    lot_rows = [
        {"lot_id": lot, "shipment_id": s, "profile": p, "quantity": 0.0, "created_ms": now_ms}
        for lot, (s, p) in new_lots.items()
        if lot not in known_lots
    ]
    if shipment_rows:
        conn.execute(insert(shipments), shipment_rows)
    if lot_rows:
        conn.execute(insert(lots), lot_rows)


def _publish(
    engine: Engine,
    *,
    publisher: ManifestPublisher | None,
    gateway_id: str,
    version: int,
    body: bytes,
    now_ms: int,
) -> int | None:
    """Hand a committed manifest to the publisher; returns ``published_ms`` (None if not published)."""
    if publisher is None:
        return None
    try:
        publisher.publish_manifest(gateway_id, body)
    except PublishFailed as exc:
        logger.warning("manifest %s v%s stored but not published: %s", gateway_id, version, exc)
        return None
    with engine.begin() as conn:
        conn.execute(
            update(manifests)
            .where(manifests.c.gateway_id == gateway_id, manifests.c.version == version)
            .values(published_ms=now_ms)
        )
    return now_ms


@router.get("", name="manifests.list")
def list_manifests(
    *,
    engine: Db,
    limit: Limit = 100,
    cursor: Cursor = None,
    gateway_id: Annotated[str | None, Query(max_length=64)] = None,
) -> Page[ManifestOut]:
    """Manifest versions by gateway and version, optionally of one gateway."""
    stmt = select(*(c for c in manifests.c if c.name != "body"))
    if gateway_id is not None:
        stmt = stmt.where(manifests.c.gateway_id == gateway_id)
    key = [manifests.c.gateway_id, manifests.c.version]
    with engine.begin() as conn:
        rows = conn.execute(keyset(stmt, key, cursor=cursor, limit=limit)).all()
    page, next_cursor = page_rows(rows, limit, lambda r: [r.gateway_id, r.version])
    return Page[ManifestOut](items=[_summary(r) for r in page], next_cursor=next_cursor)


@router.get("/{gateway_id}/{version}", name="manifests.get")
def get_manifest(*, engine: Db, gateway_id: str, version: int) -> ManifestDetail:
    """One manifest version and its document as pushed."""
    with engine.begin() as conn:
        row = conn.execute(
            select(manifests).where(manifests.c.gateway_id == gateway_id, manifests.c.version == version)
        ).one_or_none()
    if row is None:
        raise NotFound(f"gateway {gateway_id} has no manifest version {version}")
    return ManifestDetail(**_summary(row).model_dump(), manifest=orjson.loads(row.body))


@router.post(
    "",
    name="manifests.create",
    status_code=HTTPStatus.CREATED,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Manifest"}}},
        }
    },
)
def create_manifest(
    *,
    principal: Authorized,
    engine: Db,
    now_ms: NowMs,
    publisher: Publisher,
    raw: Annotated[bytes, Depends(_raw_body)],
) -> ManifestOut:
    """Store a new manifest version (a contract ``Manifest``) and push it to its gateway.

    404 for an unregistered gateway; 409 unless the version is above the gateway's newest, or when
    the gateway is revoked or at another site.
    """
    manifest = _decode(raw)
    body = canonical_bytes(manifest)
    with engine.begin() as conn:
        _store(conn, manifest, body, actor=principal.name, now_ms=now_ms)
    published_ms = _publish(
        engine,
        publisher=publisher,
        gateway_id=manifest.gateway_id,
        version=manifest.version,
        body=body,
        now_ms=now_ms,
    )
    return ManifestOut(
        gateway_id=manifest.gateway_id, version=manifest.version, site_id=manifest.site_id,
        issued_ms=manifest.issued_ms, created_by=principal.name, published_ms=published_ms,
    )  # fmt: skip


@router.post("/{gateway_id}/{version}/publish", name="manifests.publish")
def publish_manifest(
    *, engine: Db, now_ms: NowMs, publisher: Publisher, gateway_id: str, version: int
) -> ManifestOut:
    """Push a stored manifest to its gateway again; only the gateway's newest version (else 409).

    503 when no broker is configured or the broker does not take it.
    """
    with engine.begin() as conn:
        row = conn.execute(
            select(manifests).where(manifests.c.gateway_id == gateway_id, manifests.c.version == version)
        ).one_or_none()
        if row is None:
            raise NotFound(f"gateway {gateway_id} has no manifest version {version}")
        newest = conn.execute(
            select(func.max(manifests.c.version)).where(manifests.c.gateway_id == gateway_id)
        ).scalar_one()
    if newest != version:
        raise Conflict(f"gateway {gateway_id} has a newer manifest (version {newest})")
    if publisher is None:
        raise HTTPException(HTTPStatus.SERVICE_UNAVAILABLE, "this API has no broker to publish to")
    published_ms = _publish(
        engine, publisher=publisher, gateway_id=gateway_id, version=version, body=row.body, now_ms=now_ms
    )
    if published_ms is None:
        raise HTTPException(HTTPStatus.SERVICE_UNAVAILABLE, "the broker did not take the manifest")
    return _summary(row).model_copy(update={"published_ms": published_ms})
