"""``/v1/devices``: each device as its newest reading left it (battery, clock, firmware, temperature)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from sqlalchemy import Row, select

from cloud_ingest.api.auth import authorize
from cloud_ingest.api.models import DeviceOut, Page
from cloud_ingest.api.routes import Cursor, Db, Limit, keyset, page_rows
from cloud_ingest.db.tables import devices
from cloud_ingest.errors import NotFound

router = APIRouter(prefix="/devices", tags=["devices"], dependencies=[Depends(authorize)])


def _device_out(row: Row[Any]) -> DeviceOut:
    return DeviceOut.model_validate(row._mapping)


@router.get("", name="devices.list")
def list_devices(
    *,
    engine: Db,
    limit: Limit = 100,
    cursor: Cursor = None,
    gateway_id: Annotated[str | None, Query(max_length=64)] = None,
    site: Annotated[str | None, Query(max_length=64, description="Site id.")] = None,
) -> Page[DeviceOut]:
    """Devices in id order, optionally of one gateway or site."""
    stmt = select(devices)
    if gateway_id is not None:
        stmt = stmt.where(devices.c.gateway_id == gateway_id)
    if site is not None:
        stmt = stmt.where(devices.c.site_id == site)
    with engine.begin() as conn:
        rows = conn.execute(keyset(stmt, [devices.c.device_id], cursor=cursor, limit=limit)).all()
    page, next_cursor = page_rows(rows, limit, lambda r: [r.device_id])
    return Page[DeviceOut](items=[_device_out(r) for r in page], next_cursor=next_cursor)


@router.get("/{device_id}", name="devices.get")
def get_device(*, engine: Db, device_id: str) -> DeviceOut:
    """One device."""
    with engine.begin() as conn:
        row = conn.execute(select(devices).where(devices.c.device_id == device_id)).one_or_none()
    if row is None:
        raise NotFound(f"device {device_id} has not been seen")
    return _device_out(row)
