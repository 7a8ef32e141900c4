"""``/v1/webhooks``: subscriptions of external URLs to outbox events (admin only).

Each delivery is signed with the subscription's secret (HMAC, see :mod:`cloud_ingest.webhooks`), so
the secret must be stored as is, not hashed; it is generated here and shown once, in the answer to
``POST``. Deleting a subscription deactivates it, which the dispatcher treats as paused: nothing more
is sent, and the row stays because its deliveries refer to it. The dispatcher also deactivates a
webhook whose receiver answers ``410 Gone``; listings show both with ``active: false``.
"""

from __future__ import annotations

import logging
import secrets
from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, Depends, Response
from sqlalchemy import Row, insert, select, update

from cloud_ingest.api.auth import Authorized, authorize
from cloud_ingest.api.models import Page, WebhookCreated, WebhookIn, WebhookOut
from cloud_ingest.api.routes import Cursor, Db, Limit, NowMs, keyset, page_rows, split_list
from cloud_ingest.db.tables import webhooks
from cloud_ingest.errors import NotFound

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/webhooks", tags=["webhooks"], dependencies=[Depends(authorize)])

SECRET_BYTES = 32


def _webhook_out(row: Row[Any]) -> WebhookOut:
    return WebhookOut(
        id=row.id, url=row.url, topics=split_list(row.topics), active=row.active, created_ms=row.created_ms
    )


@router.get("", name="webhooks.list")
def list_webhooks(
    *, engine: Db, limit: Limit = 100, cursor: Cursor = None, active: bool | None = None
) -> Page[WebhookOut]:
    """Subscriptions, oldest first, optionally only active (or inactive) ones."""
    stmt = select(webhooks)
    if active is not None:
        stmt = stmt.where(webhooks.c.active == active)
    with engine.begin() as conn:
        rows = conn.execute(keyset(stmt, [webhooks.c.id], cursor=cursor, limit=limit)).all()
    page, next_cursor = page_rows(rows, limit, lambda r: [r.id])
    return Page[WebhookOut](items=[_webhook_out(r) for r in page], next_cursor=next_cursor)


@router.post("", name="webhooks.create", status_code=HTTPStatus.CREATED)
def create_webhook(*, principal: Authorized, engine: Db, now_ms: NowMs, body: WebhookIn) -> WebhookCreated:
    """Subscribe ``url`` to ``topics``; the answer holds the signing secret, shown only this once."""
    secret = secrets.token_urlsafe(SECRET_BYTES)
    with engine.begin() as conn:
        webhook_id = conn.execute(
            insert(webhooks)
            .values(url=body.url, secret=secret, topics=",".join(body.topics), active=True, created_ms=now_ms)
            .returning(webhooks.c.id)
        ).scalar_one()
        row = conn.execute(select(webhooks).where(webhooks.c.id == webhook_id)).one()
    logger.info("webhook %s to %s created by %s", webhook_id, body.url, principal.name)
    return WebhookCreated(**_webhook_out(row).model_dump(), secret=secret)


@router.delete("/{webhook_id}", name="webhooks.delete", status_code=HTTPStatus.NO_CONTENT)
def delete_webhook(*, principal: Authorized, engine: Db, webhook_id: int) -> Response:
    """Stop deliveries to a subscription (idempotent); 404 when there is no webhook with this id."""
    with engine.begin() as conn:
        found = conn.execute(
            update(webhooks).where(webhooks.c.id == webhook_id).values(active=False)
        ).rowcount
    if not found:
        raise NotFound(f"webhook {webhook_id} does not exist")
    logger.info("webhook %s deactivated by %s", webhook_id, principal.name)
    return Response(status_code=HTTPStatus.NO_CONTENT)
