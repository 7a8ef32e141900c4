"""Inventory holds on lots and shipments.

A hold on a shipment holds every lot travelling in it. Rules place holds (one active rule hold per
subject, enforced by a partial unique index); people may place manual holds beside them. Only the
``quality`` role releases a hold, and only with a reason. Every change emits an outbox event in the
same transaction, which the ERP adapter and the traceability ledger consume.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, and_, insert, or_, select, update

from cloud_ingest.db.tables import holds, lots
from cloud_ingest.errors import Conflict, Forbidden, NotFound
from cloud_ingest.events import emit

RELEASE_ROLE = "quality"


class SubjectType(enum.StrEnum):
    """What a hold applies to."""

    LOT = "lot"
    SHIPMENT = "shipment"


class HoldSource(enum.StrEnum):
    """Who placed a hold."""

    RULE = "rule"
    MANUAL = "manual"


def hold_payload(row: Row[Any]) -> dict[str, Any]:
    """A hold row as the API and events show it."""
    return {
        "id": row.id,
        "subject_type": row.subject_type,
        "subject_id": row.subject_id,
        "status": row.status,
        "source": row.source,
        "reason": row.reason,
        "alert_id": row.alert_id,
        "placed_by": row.placed_by,
        "placed_ms": row.placed_ms,
        "released_by": row.released_by,
        "released_ms": row.released_ms,
        "release_reason": row.release_reason,
    }


def _announce(conn: Connection, hold_id: int, topic: str, now_ms: int) -> None:
    row = conn.execute(select(holds).where(holds.c.id == hold_id)).one()
    payload = hold_payload(row)
    payload["lot_ids"] = lots_held_by(conn, SubjectType(row.subject_type), row.subject_id)
    emit(conn, topic=topic, aggregate_type="hold", aggregate_id=str(hold_id), payload=payload, now_ms=now_ms)


def lots_held_by(conn: Connection, subject_type: SubjectType, subject_id: str) -> list[str]:
    """The lots a hold on this subject covers (a shipment's lots as the cloud knows them)."""
    if subject_type is SubjectType.LOT:
        return [subject_id]
    return list(
        conn.execute(select(lots.c.lot_id).where(lots.c.shipment_id == subject_id).order_by(lots.c.lot_id))
        .scalars()
        .all()
    )


def place_hold(
    conn: Connection,
    *,
    subject_type: SubjectType,
    subject_id: str,
    source: HoldSource,
    reason: str,
    placed_by: str,
    now_ms: int,
    alert_id: int | None = None,
) -> tuple[int, bool]:
    """Place a hold; returns (hold id, whether it is new).

    A rule hold on a subject that already has an active rule hold returns that one: a sustained or
    repeated excursion holds product once.
    """
    if not reason.strip():
        raise Conflict("a hold needs a reason")
    if source is HoldSource.RULE:
        existing = conn.execute(
            select(holds.c.id).where(
                holds.c.subject_type == subject_type, holds.c.subject_id == subject_id,
                holds.c.status == "active", holds.c.source == HoldSource.RULE,
            )
        ).scalar_one_or_none()  # fmt: skip
        if existing is not None:
            return int(existing), False
    hold_id = conn.execute(
        insert(holds)
        .values(
            subject_type=subject_type,
            subject_id=subject_id,
            status="active",
            source=source,
            reason=reason,
            alert_id=alert_id,
            placed_by=placed_by,
            placed_ms=now_ms,
        )
        .returning(holds.c.id)
    ).scalar_one()
    _announce(conn, int(hold_id), "hold.placed", now_ms)
    return int(hold_id), True


def release_hold(conn: Connection, hold_id: int, *, actor: str, role: str, reason: str, now_ms: int) -> None:
    """Release a hold: the quality role only, with a reason."""
    if role != RELEASE_ROLE:
        raise Forbidden(f"only the {RELEASE_ROLE!r} role may release a hold (caller has {role!r})")
    if not reason.strip():
        raise Conflict("releasing a hold needs a reason")
    row = conn.execute(select(holds).where(holds.c.id == hold_id).with_for_update()).one_or_none()
    if row is None:
        raise NotFound(f"hold {hold_id} does not exist")
    if row.status != "active":
        raise Conflict(f"hold {hold_id} is already {row.status}")
    conn.execute(
        update(holds)
        .where(holds.c.id == hold_id)
        .values(status="released", released_by=actor, released_ms=now_ms, release_reason=reason)
    )
    _announce(conn, hold_id, "hold.released", now_ms)


@dataclass(frozen=True, slots=True)
class LotStatus:
    """A lot's quantities and the active holds that cover it."""

    lot_id: str
    shipment_id: str | None
    profile: str
    quantity: float
    unit: str
    on_hold: float
    sellable: float
    hold_ids: tuple[int, ...]


def active_holds_covering(conn: Connection, lot_id: str, shipment_id: str | None) -> list[Row[Any]]:
    """Active holds on the lot itself or on its shipment."""
    subject = and_(holds.c.subject_type == SubjectType.LOT, holds.c.subject_id == lot_id)
    if shipment_id is not None:
        subject = or_(
            subject, and_(holds.c.subject_type == SubjectType.SHIPMENT, holds.c.subject_id == shipment_id)
        )
    return list(
        conn.execute(select(holds).where(holds.c.status == "active", subject).order_by(holds.c.id)).all()
    )


def lot_status(conn: Connection, lot_id: str) -> LotStatus:
    """Quantity on hold and sellable quantity of a lot (holds cover whole lots)."""
    lot = conn.execute(select(lots).where(lots.c.lot_id == lot_id)).one_or_none()
    if lot is None:
        raise NotFound(f"lot {lot_id} is not known to the cloud")
    covering = active_holds_covering(conn, lot_id, lot.shipment_id)
    on_hold = lot.quantity if covering else 0.0
    return LotStatus(
        lot_id=lot_id, shipment_id=lot.shipment_id, profile=lot.profile, quantity=lot.quantity,
        unit=lot.unit, on_hold=on_hold, sellable=lot.quantity - on_hold,
        hold_ids=tuple(int(h.id) for h in covering),
    )  # fmt: skip
