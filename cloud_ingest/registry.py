"""Gateway registration: the batch-signing keys the cloud verifies with, and revocation."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import Connection, select, update

from cloud_ingest.db.tables import gateway_keys, gateways
from cloud_ingest.db.upsert import insert_ignoring
from cloud_ingest.errors import Conflict, NotFound
from coldtrace.contract.batch import key_id_of


def register_gateway(
    conn: Connection, gateway_id: str, public_key: Ed25519PublicKey, *, site_id: str | None, now_ms: int
) -> str:
    """Register a gateway (if new) and one of its signing keys; returns the key id (hex).

    A revoked gateway stays revoked: re-enrolling it is a new gateway id, so its old batches and chain
    can never be confused with the new one's.
    """
    status = conn.execute(
        select(gateways.c.status).where(gateways.c.gateway_id == gateway_id)
    ).scalar_one_or_none()
    if status == "revoked":
        raise Conflict(f"gateway {gateway_id!r} is revoked; enrol a replacement under a new id")
    if status is None:
        conn.execute(
            insert_ignoring(conn, gateways, keys=("gateway_id",)).values(
                gateway_id=gateway_id, site_id=site_id, status="active", created_ms=now_ms
            )
        )
    key_id = key_id_of(public_key).hex()
    owner = conn.execute(
        select(gateway_keys.c.gateway_id).where(gateway_keys.c.key_id == key_id)
    ).scalar_one_or_none()
    if owner is not None and owner != gateway_id:
        raise Conflict(f"this key is already registered to gateway {owner!r}")
    if owner is None:
        conn.execute(
            gateway_keys.insert().values(
                key_id=key_id, gateway_id=gateway_id, created_ms=now_ms,
                public_key=public_key.public_bytes(Encoding.Raw, PublicFormat.Raw),
            )
        )  # fmt: skip
    return key_id


def revoke_gateway(conn: Connection, gateway_id: str, *, now_ms: int) -> None:
    """Refuse every batch of this gateway from now on, on every worker (checked per transaction)."""
    result = conn.execute(
        update(gateways)
        .where(gateways.c.gateway_id == gateway_id)
        .values(status="revoked", revoked_ms=now_ms)
    )
    if result.rowcount == 0:
        raise NotFound(f"gateway {gateway_id!r} is not registered")
    conn.execute(
        update(gateway_keys)
        .where(gateway_keys.c.gateway_id == gateway_id, gateway_keys.c.revoked_ms.is_(None))
        .values(revoked_ms=now_ms)
    )
