"""``/v1/rejects``: the dead letters - every frame the cloud refused, why, from whom, and its bytes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from sqlalchemy import Row, func, select

from cloud_ingest.api.auth import authorize
from cloud_ingest.api.models import Page, RejectOut, RejectSummary
from cloud_ingest.api.routes import Cursor, Db, Limit, keyset, page_rows
from cloud_ingest.db.tables import rejects
from cloud_ingest.errors import NotFound
from cloud_ingest.verify import IngestReject

router = APIRouter(prefix="/rejects", tags=["rejects"], dependencies=[Depends(authorize)])

Since = Annotated[int | None, Query(ge=0, description="Only rejects received at or after (UTC ms).")]
Reason = Annotated[IngestReject | None, Query(description="Only this reason code.")]
Identity = Annotated[str | None, Query(max_length=128, description="Only from this sender (gateway id).")]

_COLUMNS = [c for c in rejects.columns if c.name != "raw"]


def _reject_out(row: Row[Any]) -> RejectOut:
    return RejectOut.model_validate({**row._mapping, "raw_kept": row.raw_kept})


@router.get("", name="rejects.list")
def list_rejects(
    *, engine: Db, limit: Limit = 100, cursor: Cursor = None, reason: Reason = None,
    identity: Identity = None, since_ms: Since = None,
) -> Page[RejectOut]:  # fmt: skip
    """Refused frames, newest first."""
    stmt = select(*_COLUMNS, rejects.c.raw.is_not(None).label("raw_kept"))
    if reason is not None:
        stmt = stmt.where(rejects.c.reason == reason.value)
    if identity is not None:
        stmt = stmt.where(rejects.c.identity == identity)
    if since_ms is not None:
        stmt = stmt.where(rejects.c.received_ms >= since_ms)
    with engine.begin() as conn:
        rows = conn.execute(keyset(stmt, [rejects.c.id], cursor=cursor, limit=limit, descending=True)).all()
    page, next_cursor = page_rows(rows, limit, lambda r: [r.id])
    return Page[RejectOut](items=[_reject_out(r) for r in page], next_cursor=next_cursor)


@router.get("/summary", name="rejects.summary")
def summarize_rejects(*, engine: Db, identity: Identity = None, since_ms: Since = None) -> RejectSummary:
    """How many frames were refused, by reason code."""
    stmt = select(rejects.c.reason, func.count()).group_by(rejects.c.reason)
    if identity is not None:
        stmt = stmt.where(rejects.c.identity == identity)
    if since_ms is not None:
        stmt = stmt.where(rejects.c.received_ms >= since_ms)
    with engine.begin() as conn:
        counts = {reason: int(n) for reason, n in conn.execute(stmt)}
    return RejectSummary(total=sum(counts.values()), by_reason=dict(sorted(counts.items())))


@router.get(
    "/{reject_id}/raw", name="rejects.raw", response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
)  # fmt: skip
def reject_raw(*, engine: Db, reject_id: int) -> Response:
    """The refused frame's bytes as received (404 when only its hash was kept: above the byte cap)."""
    with engine.begin() as conn:
        raw = conn.execute(select(rejects.c.raw).where(rejects.c.id == reject_id)).scalar_one_or_none()
    if raw is None:
        raise NotFound(f"reject {reject_id} does not exist or kept only its hash")
    return Response(content=bytes(raw), media_type="application/octet-stream")
