"""``/v1/holds``: inventory holds, manual placing and the quality role's release."""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from sqlalchemy import Connection, select

from cloud_ingest import holds as inventory
from cloud_ingest.api.auth import Authorized, authorize
from cloud_ingest.api.models import HoldDetail, HoldIn, HoldOut, HoldStatus, Page, ReleaseIn
from cloud_ingest.api.routes import Cursor, Db, Limit, NowMs, keyset, page_rows
from cloud_ingest.db.tables import holds, lots, shipments
from cloud_ingest.errors import NotFound
from cloud_ingest.holds import HoldSource, SubjectType, hold_payload, lots_held_by

router = APIRouter(prefix="/holds", tags=["holds"], dependencies=[Depends(authorize)])


def _detail(conn: Connection, hold_id: int) -> HoldDetail:
    row = conn.execute(select(holds).where(holds.c.id == hold_id)).one_or_none()
    if row is None:
        raise NotFound(f"hold {hold_id} does not exist")
    covered = lots_held_by(conn, SubjectType(row.subject_type), row.subject_id)
    return HoldDetail(**hold_payload(row), lot_ids=covered)


def _subject_exists(conn: Connection, subject_type: SubjectType, subject_id: str) -> bool:
    table, key = (
        (lots, lots.c.lot_id) if subject_type is SubjectType.LOT else (shipments, shipments.c.shipment_id)
    )
    return conn.execute(select(key).select_from(table).where(key == subject_id)).first() is not None


@router.get("", name="holds.list")
def list_holds(
    *,
    engine: Db,
    limit: Limit = 100,
    cursor: Cursor = None,
    status: HoldStatus | None = None,
    subject_type: SubjectType | None = None,
    subject_id: Annotated[str | None, Query(max_length=64)] = None,
    source: HoldSource | None = None,
) -> Page[HoldOut]:
    """Holds, newest first, optionally filtered."""
    stmt = select(holds)
    filters = [
        (holds.c.status, status),
        (holds.c.subject_type, subject_type),
        (holds.c.subject_id, subject_id),
        (holds.c.source, source),
    ]
    for column, value in filters:
        if value is not None:
            stmt = stmt.where(column == value)
    with engine.begin() as conn:
        rows = conn.execute(keyset(stmt, [holds.c.id], cursor=cursor, limit=limit, descending=True)).all()
    page, next_cursor = page_rows(rows, limit, lambda r: [r.id])
    return Page[HoldOut](
        items=[HoldOut.model_validate(hold_payload(r)) for r in page], next_cursor=next_cursor
    )


@router.get("/{hold_id}", name="holds.get")
def get_hold(*, engine: Db, hold_id: int) -> HoldDetail:
    """One hold and the lots it covers."""
    with engine.begin() as conn:
        return _detail(conn, hold_id)


@router.post("", name="holds.place", status_code=HTTPStatus.CREATED)
def place_hold(*, principal: Authorized, engine: Db, now_ms: NowMs, body: HoldIn) -> HoldDetail:
    """Place a manual hold on a lot or shipment the cloud knows (404 otherwise)."""
    with engine.begin() as conn:
        if not _subject_exists(conn, body.subject_type, body.subject_id):
            raise NotFound(f"{body.subject_type} {body.subject_id} is not known to the cloud")
        hold_id, _ = inventory.place_hold(
            conn,
            subject_type=body.subject_type,
            subject_id=body.subject_id,
            source=HoldSource.MANUAL,
            reason=body.reason,
            placed_by=principal.name,
            now_ms=now_ms,
        )
        return _detail(conn, hold_id)


@router.post("/{hold_id}/release", name="holds.release")
def release_hold(
    *, principal: Authorized, engine: Db, now_ms: NowMs, hold_id: int, body: ReleaseIn
) -> HoldDetail:
    """Release an active hold, saying why (quality role). 409 when it is not active."""
    with engine.begin() as conn:
        inventory.release_hold(
            conn, hold_id, actor=principal.name, role=principal.role, reason=body.reason, now_ms=now_ms
        )
        return _detail(conn, hold_id)
