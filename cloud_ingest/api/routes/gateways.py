"""``/v1/gateways``: gateways, their batch-signing keys, chain health, and revocation."""

from __future__ import annotations

import base64
import logging
from collections import defaultdict
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import APIRouter, Depends
from sqlalchemy import Connection, Row, select

from cloud_ingest import registry
from cloud_ingest.api.auth import Authorized, authorize
from cloud_ingest.api.models import ChainGapOut, GatewayIn, GatewayKeyOut, GatewayOut, Page
from cloud_ingest.api.routes import Cursor, Db, Limit, NowMs, keyset, page_rows
from cloud_ingest.db.tables import chain_gaps, gateway_keys, gateways
from cloud_ingest.errors import Conflict, NotFound

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/gateways", tags=["gateways"], dependencies=[Depends(authorize)])


def _views(conn: Connection, rows: Sequence[Row[Any]]) -> list[GatewayOut]:
    ids = [r.gateway_id for r in rows]
    gaps: dict[str, list[ChainGapOut]] = defaultdict(list)
    for gap in conn.execute(
        select(chain_gaps)
        .where(chain_gaps.c.gateway_id.in_(ids), chain_gaps.c.filled_ms.is_(None))
        .order_by(chain_gaps.c.gateway_id, chain_gaps.c.seq_from)
    ):
        gaps[gap.gateway_id].append(
            ChainGapOut(
                seq_from=gap.seq_from, seq_to=gap.seq_to, detected_ms=gap.detected_ms, alert_id=gap.alert_id
            )
        )
    keys: dict[str, list[GatewayKeyOut]] = defaultdict(list)
    for key in conn.execute(
        select(gateway_keys)
        .where(gateway_keys.c.gateway_id.in_(ids))
        .order_by(gateway_keys.c.gateway_id, gateway_keys.c.created_ms, gateway_keys.c.key_id)
    ):
        keys[key.gateway_id].append(
            GatewayKeyOut(key_id=key.key_id, created_ms=key.created_ms, revoked_ms=key.revoked_ms)
        )
    return [
        GatewayOut(
            gateway_id=r.gateway_id,
            site_id=r.site_id,
            status=r.status,
            created_ms=r.created_ms,
            revoked_ms=r.revoked_ms,
            last_seen_ms=r.last_seen_ms,
            head_seq=r.head_seq,
            batches_accepted=r.batches_accepted,
            readings_accepted=r.readings_accepted,
            open_gaps=gaps[r.gateway_id],
            keys=keys[r.gateway_id],
        )
        for r in rows
    ]


def _view(conn: Connection, gateway_id: str) -> GatewayOut:
    row = conn.execute(select(gateways).where(gateways.c.gateway_id == gateway_id)).one_or_none()
    if row is None:
        raise NotFound(f"gateway {gateway_id} is not registered")
    return _views(conn, [row])[0]


@router.get("", name="gateways.list")
def list_gateways(*, engine: Db, limit: Limit = 100, cursor: Cursor = None) -> Page[GatewayOut]:
    """Gateways in id order."""
    with engine.begin() as conn:
        rows = conn.execute(
            keyset(select(gateways), [gateways.c.gateway_id], cursor=cursor, limit=limit)
        ).all()
        page, next_cursor = page_rows(rows, limit, lambda r: [r.gateway_id])
        return Page[GatewayOut](items=_views(conn, page), next_cursor=next_cursor)


@router.get("/{gateway_id}", name="gateways.get")
def get_gateway(*, engine: Db, gateway_id: str) -> GatewayOut:
    """A gateway: status, chain head, counters, open chain gaps and signing keys."""
    with engine.begin() as conn:
        return _view(conn, gateway_id)


@router.post("", name="gateways.register", status_code=HTTPStatus.CREATED)
def register_gateway(*, principal: Authorized, engine: Db, now_ms: NowMs, body: GatewayIn) -> GatewayOut:
    """Register a gateway's batch-signing key, as ``coldtrace cloud gateways register`` does.

    A registered gateway gets the key added (rotation); the same key again changes nothing, and the
    site of a known gateway stays as it was. 409 when the gateway is revoked or the key belongs to
    another gateway.
    """
    # The model normalised the key to base64 of its raw bytes, whichever form was sent.
    public_key = Ed25519PublicKey.from_public_bytes(base64.b64decode(body.public_key))
    with engine.begin() as conn:
        key_id = registry.register_gateway(
            conn, body.gateway_id, public_key, site_id=body.site_id, now_ms=now_ms
        )
        logger.info("gateway %s: signing key %s registered by %s", body.gateway_id, key_id, principal.name)
        return _view(conn, body.gateway_id)


@router.post("/{gateway_id}/revoke", name="gateways.revoke")
def revoke_gateway(*, principal: Authorized, engine: Db, now_ms: NowMs, gateway_id: str) -> GatewayOut:
    """Revoke a gateway and its keys: ingest refuses its batches from now on. 409 if already revoked."""
    with engine.begin() as conn:
        status = conn.execute(
            select(gateways.c.status).where(gateways.c.gateway_id == gateway_id).with_for_update()
        ).scalar_one_or_none()
        if status is None:
            raise NotFound(f"gateway {gateway_id} is not registered")
        if status == "revoked":
            # Revoking again would move revoked_ms, the time audits date the cut-off by.
            raise Conflict(f"gateway {gateway_id} is already revoked")
        registry.revoke_gateway(conn, gateway_id, now_ms=now_ms)
        logger.warning("gateway %s revoked by %s", gateway_id, principal.name)
        return _view(conn, gateway_id)
