"""``/v1/shipments``: each shipment's status, lots, newest readings, excursions and MKT."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from sqlalchemy import Connection, Row, and_, func, or_, select

from cloud_ingest.alerts import Condition, Severity, Workflow
from cloud_ingest.api.auth import authorize
from cloud_ingest.api.models import (
    ExcursionGroup,
    ExcursionSummary,
    MktOut,
    Page,
    ReadingOut,
    ShipmentDetail,
    ShipmentOut,
    ShipmentStatus,
)
from cloud_ingest.api.routes import Cursor, Db, Limit, Settings, keyset, page_rows, split_list
from cloud_ingest.api.routes.lots import lot_views
from cloud_ingest.db.tables import alerts, bindings, holds, lots, mkt_buckets, readings, shipments
from cloud_ingest.errors import NotFound
from cloud_ingest.holds import SubjectType
from cloud_ingest.rules.mkt import HOUR_MS, mkt_from_sums

router = APIRouter(prefix="/shipments", tags=["shipments"], dependencies=[Depends(authorize)])


def _mkt(conn: Connection, shipment_id: str, *, window_h: int, activation_k: float) -> MktOut | None:
    subject = f"shipment:{shipment_id}"
    newest = conn.execute(
        select(func.max(mkt_buckets.c.hour_ms)).where(mkt_buckets.c.subject == subject)
    ).scalar_one_or_none()
    if newest is None:
        return None
    # The newest bucket and the window_h - 1 hours before it: window_h whole hours of readings, the
    # same window the MKT rule judges (cloud_ingest.rules.engine), so the two never disagree.
    oldest = newest - (window_h - 1) * HOUR_MS
    sum_exp, n = conn.execute(
        select(func.sum(mkt_buckets.c.sum_exp), func.sum(mkt_buckets.c.n)).where(
            mkt_buckets.c.subject == subject, mkt_buckets.c.hour_ms >= oldest
        )
    ).one()
    if not n or not sum_exp:
        return None  # buckets without readings (never written so, but an empty window has no MKT)
    return MktOut(
        mkt_c=mkt_from_sums(float(sum_exp), int(n), activation_k),
        window_h=window_h,
        from_ms=oldest,
        to_ms=newest + HOUR_MS,
        readings=int(n),
    )


def _reading_out(row: Row[Any]) -> ReadingOut:
    return ReadingOut(
        device_id=row.device_id, seq=row.seq, gateway_id=row.gateway_id, t_device_ms=row.t_device_ms,
        received_ms=row.received_ms, clock=row.clock, temperature_c=row.temperature_c,
        humidity_pct=row.humidity_pct, shock_g=row.shock_g, battery_v=row.battery_v,
        anomaly_score=row.anomaly_score, flags=split_list(row.flags), lot_ids=split_list(row.lot_ids),
    )  # fmt: skip


def _latest_by_device(conn: Connection, shipment_id: str) -> list[ReadingOut]:
    devices = conn.execute(
        select(bindings.c.device_id)
        .where(bindings.c.shipment_id == shipment_id)
        .distinct()
        .order_by(bindings.c.device_id)
    ).scalars()
    latest = []
    for device_id in devices:
        # One indexed probe per device (device_id, t_device_ms) rather than a scan of the shipment.
        row = conn.execute(
            select(readings)
            .where(readings.c.device_id == device_id, readings.c.shipment_id == shipment_id)
            .order_by(readings.c.t_device_ms.desc(), readings.c.seq.desc())
            .limit(1)
        ).first()
        if row is not None:
            latest.append(_reading_out(row))
    return latest


def _excursions(conn: Connection, shipment_id: str) -> ExcursionSummary:
    on_shipment = and_(alerts.c.subject_type == SubjectType.SHIPMENT, alerts.c.subject_id == shipment_id)
    groups = conn.execute(
        select(alerts.c.rule_id, alerts.c.severity, func.count(), func.min(alerts.c.started_ms))
        .where(on_shipment)
        .group_by(alerts.c.rule_id, alerts.c.severity)
        .order_by(alerts.c.rule_id, alerts.c.severity)
    ).all()
    open_count = conn.execute(
        select(func.count()).where(on_shipment, alerts.c.workflow != Workflow.CLOSED)
    ).scalar_one()
    return ExcursionSummary(
        total=sum(int(g[2]) for g in groups),
        open=int(open_count),
        first_started_ms=min((int(g[3]) for g in groups), default=None),
        groups=[
            ExcursionGroup(rule_id=g[0], severity=Severity(g[1]), count=int(g[2]), first_started_ms=int(g[3]))
            for g in groups
        ],
    )


def _statuses(conn: Connection, shipment_ids: Sequence[str]) -> dict[str, tuple[ShipmentStatus, list[int]]]:
    """Status and covering active hold ids of each shipment, in three queries for the whole page."""
    lot_rows = conn.execute(
        select(lots.c.lot_id, lots.c.shipment_id).where(lots.c.shipment_id.in_(shipment_ids))
    ).all()
    shipment_of_lot = {r.lot_id: r.shipment_id for r in lot_rows}
    hold_rows = conn.execute(
        select(holds.c.id, holds.c.subject_type, holds.c.subject_id).where(
            holds.c.status == "active",
            or_(
                and_(holds.c.subject_type == SubjectType.SHIPMENT, holds.c.subject_id.in_(shipment_ids)),
                and_(holds.c.subject_type == SubjectType.LOT, holds.c.subject_id.in_(list(shipment_of_lot))),
            ),
        )
    ).all()
    held: dict[str, list[int]] = {}
    for hold in hold_rows:
        shipment = (
            hold.subject_id if hold.subject_type == SubjectType.SHIPMENT else shipment_of_lot[hold.subject_id]
        )
        held.setdefault(shipment, []).append(int(hold.id))
    in_excursion = set(
        conn.execute(
            select(alerts.c.subject_id).where(
                alerts.c.subject_type == SubjectType.SHIPMENT,
                alerts.c.subject_id.in_(shipment_ids),
                alerts.c.workflow != Workflow.CLOSED,
                alerts.c.condition == Condition.ACTIVE,
            )
        ).scalars()
    )
    result = {}
    for shipment_id in shipment_ids:
        if shipment_id in held:
            result[shipment_id] = (ShipmentStatus.HELD, sorted(held[shipment_id]))
        elif shipment_id in in_excursion:
            result[shipment_id] = (ShipmentStatus.EXCURSION, [])
        else:
            result[shipment_id] = (ShipmentStatus.OK, [])
    return result


@router.get("", name="shipments.list")
def list_shipments(*, engine: Db, limit: Limit = 100, cursor: Cursor = None) -> Page[ShipmentOut]:
    """Shipments in id order, each with its status."""
    with engine.begin() as conn:
        rows = conn.execute(
            keyset(select(shipments), [shipments.c.shipment_id], cursor=cursor, limit=limit)
        ).all()
        page, next_cursor = page_rows(rows, limit, lambda r: [r.shipment_id])
        statuses = _statuses(conn, [r.shipment_id for r in page])
    return Page[ShipmentOut](
        items=[
            ShipmentOut(
                shipment_id=r.shipment_id,
                profile=r.profile,
                created_ms=r.created_ms,
                status=statuses[r.shipment_id][0],
            )
            for r in page
        ],
        next_cursor=next_cursor,
    )


@router.get("/{shipment_id}", name="shipments.get")
def get_shipment(
    *,
    engine: Db,
    settings: Settings,
    shipment_id: str,
    readings_limit: Annotated[int, Query(ge=0, le=1000, description="Newest readings to include.")] = 20,
) -> ShipmentDetail:
    """A shipment: status, lots, newest readings, excursion summary and mean kinetic temperature.

    ``held`` when an active hold covers the shipment or one of its lots, ``excursion`` when an open
    alert on it is still active, else ``ok``.
    """
    with engine.begin() as conn:
        row = conn.execute(select(shipments).where(shipments.c.shipment_id == shipment_id)).one_or_none()
        if row is None:
            raise NotFound(f"shipment {shipment_id} is not known to the cloud")
        status, hold_ids = _statuses(conn, [shipment_id])[shipment_id]
        lot_rows = conn.execute(
            select(lots).where(lots.c.shipment_id == shipment_id).order_by(lots.c.lot_id)
        ).all()
        newest = conn.execute(
            select(readings)
            .where(readings.c.shipment_id == shipment_id)
            .order_by(readings.c.t_device_ms.desc(), readings.c.device_id, readings.c.seq.desc())
            .limit(readings_limit)
        ).all()
        return ShipmentDetail(
            shipment_id=row.shipment_id,
            profile=row.profile,
            created_ms=row.created_ms,
            status=status,
            hold_ids=hold_ids,
            lots=lot_views(conn, lot_rows),
            latest_by_device=_latest_by_device(conn, shipment_id),
            latest_readings=[_reading_out(r) for r in newest],
            excursions=_excursions(conn, shipment_id),
            mkt=_mkt(
                conn,
                shipment_id,
                window_h=settings.rules.mkt_window_h,
                activation_k=settings.rules.mkt_activation_k,
            ),
        )
