"""``/v1/lots``: lots, their quantities on hold and sellable, and the ERP's quantity updates."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from sqlalchemy import Connection, Row, and_, insert, or_, select, update

from cloud_ingest.alerts import alert_payload
from cloud_ingest.api.auth import authorize
from cloud_ingest.api.models import AlertOut, HoldOut, LotDetail, LotIn, LotOut, Page
from cloud_ingest.api.routes import Cursor, Db, Limit, NowMs, keyset, page_rows
from cloud_ingest.db.tables import alerts, holds, lots, shipments
from cloud_ingest.errors import NotFound
from cloud_ingest.holds import SubjectType, active_holds_covering, hold_payload, lot_status
from coldtrace.contract.reading import ID_PATTERN

router = APIRouter(prefix="/lots", tags=["lots"], dependencies=[Depends(authorize)])

LotId = Annotated[str, Path(pattern=ID_PATTERN)]


def lot_views(conn: Connection, rows: Sequence[Row[Any]]) -> list[LotOut]:
    """``lots`` rows with their hold quantities, in one query for all their covering holds.

    Same rule as :func:`cloud_ingest.holds.lot_status` (any active hold on the lot or its shipment
    holds the whole lot), batched so a page of a thousand lots is two queries, not two thousand.
    """
    if not rows:
        return []
    lot_ids = [r.lot_id for r in rows]
    shipment_ids = sorted({r.shipment_id for r in rows if r.shipment_id is not None})
    covering = conn.execute(
        select(holds.c.id, holds.c.subject_type, holds.c.subject_id).where(
            holds.c.status == "active",
            or_(
                and_(holds.c.subject_type == SubjectType.LOT, holds.c.subject_id.in_(lot_ids)),
                and_(holds.c.subject_type == SubjectType.SHIPMENT, holds.c.subject_id.in_(shipment_ids)),
            ),
        )
    ).all()
    by_subject: dict[tuple[str, str], list[int]] = defaultdict(list)
    for hold in covering:
        by_subject[(hold.subject_type, hold.subject_id)].append(int(hold.id))
    views = []
    for row in rows:
        hold_ids = sorted(
            by_subject.get((SubjectType.LOT, row.lot_id), [])
            + by_subject.get((SubjectType.SHIPMENT, row.shipment_id or ""), [])
        )
        on_hold = row.quantity if hold_ids else 0.0
        views.append(
            LotOut(
                lot_id=row.lot_id, shipment_id=row.shipment_id, profile=row.profile, sku=row.sku,
                quantity=row.quantity, unit=row.unit, on_hold=on_hold, sellable=row.quantity - on_hold,
                hold_ids=hold_ids,
            )
        )  # fmt: skip
    return views


@router.get("", name="lots.list")
def list_lots(
    *,
    engine: Db,
    limit: Limit = 100,
    cursor: Cursor = None,
    shipment_id: Annotated[str | None, Query(max_length=64)] = None,
) -> Page[LotOut]:
    """Lots in id order, optionally those of one shipment."""
    stmt = select(lots)
    if shipment_id is not None:
        stmt = stmt.where(lots.c.shipment_id == shipment_id)
    with engine.begin() as conn:
        rows = conn.execute(keyset(stmt, [lots.c.lot_id], cursor=cursor, limit=limit)).all()
        page, next_cursor = page_rows(rows, limit, lambda r: [r.lot_id])
        return Page[LotOut](items=lot_views(conn, page), next_cursor=next_cursor)


@router.get("/{lot_id}", name="lots.get")
def get_lot(*, engine: Db, lot_id: str) -> LotDetail:
    """A lot's quantities, the active holds covering it and the alerts on it or its shipment."""
    with engine.begin() as conn:
        lot_row = conn.execute(select(lots).where(lots.c.lot_id == lot_id)).one_or_none()
        if lot_row is None:
            raise NotFound(f"lot {lot_id} is not known to the cloud")
        status = lot_status(conn, lot_id)
        covering = active_holds_covering(conn, lot_id, status.shipment_id)
        subjects = and_(alerts.c.subject_type == SubjectType.LOT, alerts.c.subject_id == lot_id)
        if status.shipment_id is not None:
            subjects = or_(
                subjects,
                and_(
                    alerts.c.subject_type == SubjectType.SHIPMENT, alerts.c.subject_id == status.shipment_id
                ),
            )
        alert_rows = conn.execute(select(alerts).where(subjects).order_by(alerts.c.id.desc())).all()
    return LotDetail(
        lot_id=status.lot_id, shipment_id=status.shipment_id, profile=status.profile, sku=lot_row.sku,
        quantity=status.quantity, unit=status.unit, on_hold=status.on_hold, sellable=status.sellable,
        hold_ids=list(status.hold_ids),
        holds=[HoldOut.model_validate(hold_payload(h)) for h in covering],
        alerts=[AlertOut.model_validate(alert_payload(a)) for a in alert_rows],
    )  # fmt: skip


@router.put("/{lot_id}", name="lots.put")
def put_lot(*, engine: Db, now_ms: NowMs, lot_id: LotId, body: LotIn) -> LotOut:
    """Register a lot's quantity from the ERP, creating the lot if the cloud does not know it yet.

    ``shipment_id`` and ``sku`` keep their stored values when omitted; a named shipment must exist.
    """
    values: dict[str, Any] = {"profile": body.profile, "quantity": body.quantity, "unit": body.unit}
    for optional in ("shipment_id", "sku"):
        if optional in body.model_fields_set:
            values[optional] = getattr(body, optional)
    with engine.begin() as conn:
        if body.shipment_id is not None:
            known = conn.execute(
                select(shipments.c.shipment_id).where(shipments.c.shipment_id == body.shipment_id)
            ).first()
            if known is None:
                raise NotFound(f"shipment {body.shipment_id} is not known to the cloud")
        existing = conn.execute(
            select(lots.c.lot_id).where(lots.c.lot_id == lot_id).with_for_update()
        ).one_or_none()
        if existing is None:
            conn.execute(insert(lots).values(lot_id=lot_id, created_ms=now_ms, **values))
        else:
            conn.execute(update(lots).where(lots.c.lot_id == lot_id).values(**values))
        row = conn.execute(select(lots).where(lots.c.lot_id == lot_id)).one()
        return lot_views(conn, [row])[0]
