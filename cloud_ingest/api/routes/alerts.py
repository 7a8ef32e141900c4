"""``/v1/alerts``: list and read alerts, and the people's side of their workflow."""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from sqlalchemy import Connection, select

from cloud_ingest import alerts as alert_workflow
from cloud_ingest.alerts import Condition, Severity, Workflow, alert_payload
from cloud_ingest.api.auth import Authorized, authorize
from cloud_ingest.api.models import AckIn, AlertDetail, AlertEventOut, AlertOut, CloseIn, CommentIn, Page
from cloud_ingest.api.routes import Cursor, Db, Limit, NowMs, keyset, page_rows
from cloud_ingest.db.tables import alert_events, alerts
from cloud_ingest.errors import NotFound

router = APIRouter(prefix="/alerts", tags=["alerts"], dependencies=[Depends(authorize)])


def alert_out(row: Any) -> AlertOut:
    """An alerts row as the API shows it."""
    return AlertOut.model_validate(alert_payload(row))


def _detail(conn: Connection, alert_id: int) -> AlertDetail:
    row = conn.execute(select(alerts).where(alerts.c.id == alert_id)).one_or_none()
    if row is None:
        raise NotFound(f"alert {alert_id} does not exist")
    events = conn.execute(
        select(alert_events).where(alert_events.c.alert_id == alert_id).order_by(alert_events.c.id)
    ).all()
    return AlertDetail(
        **alert_payload(row),
        events=[
            AlertEventOut(id=e.id, at_ms=e.at_ms, kind=e.kind, actor=e.actor, comment=e.comment)
            for e in events
        ],
    )


@router.get("", name="alerts.list")
def list_alerts(
    *,
    engine: Db,
    limit: Limit = 100,
    cursor: Cursor = None,
    workflow: Workflow | None = None,
    condition: Condition | None = None,
    severity: Severity | None = None,
    subject_type: Annotated[str | None, Query(max_length=16)] = None,
    subject_id: Annotated[str | None, Query(max_length=64)] = None,
    rule_id: Annotated[str | None, Query(max_length=48)] = None,
    since_ms: Annotated[int | None, Query(ge=0, description="Raised at or after this time.")] = None,
) -> Page[AlertOut]:
    """Alerts, newest first, optionally filtered."""
    stmt = select(alerts)
    filters = [
        (alerts.c.workflow, workflow),
        (alerts.c.condition, condition),
        (alerts.c.severity, severity),
        (alerts.c.subject_type, subject_type),
        (alerts.c.subject_id, subject_id),
        (alerts.c.rule_id, rule_id),
    ]
    for column, value in filters:
        if value is not None:
            stmt = stmt.where(column == value)
    if since_ms is not None:
        stmt = stmt.where(alerts.c.raised_ms >= since_ms)
    with engine.begin() as conn:
        rows = conn.execute(keyset(stmt, [alerts.c.id], cursor=cursor, limit=limit, descending=True)).all()
    page, next_cursor = page_rows(rows, limit, lambda r: [r.id])
    return Page[AlertOut](items=[alert_out(r) for r in page], next_cursor=next_cursor)


@router.get("/{alert_id}", name="alerts.get")
def get_alert(*, engine: Db, alert_id: int) -> AlertDetail:
    """One alert and its history."""
    with engine.begin() as conn:
        return _detail(conn, alert_id)


@router.post("/{alert_id}/ack", name="alerts.ack")
def acknowledge(
    *, principal: Authorized, engine: Db, now_ms: NowMs, alert_id: int, body: AckIn
) -> AlertDetail:
    """Acknowledge an unacknowledged alert: it stops escalating. 409 in any other workflow state."""
    with engine.begin() as conn:
        alert_workflow.acknowledge(conn, alert_id, actor=principal.name, comment=body.comment, now_ms=now_ms)
        return _detail(conn, alert_id)


@router.post("/{alert_id}/close", name="alerts.close")
def close(*, principal: Authorized, engine: Db, now_ms: NowMs, alert_id: int, body: CloseIn) -> AlertDetail:
    """Close an alert whose condition has cleared. 409 while it is active or once closed."""
    with engine.begin() as conn:
        alert_workflow.close(conn, alert_id, actor=principal.name, comment=body.comment, now_ms=now_ms)
        return _detail(conn, alert_id)


@router.post("/{alert_id}/comments", name="alerts.comment", status_code=HTTPStatus.CREATED)
def add_comment(
    *, principal: Authorized, engine: Db, now_ms: NowMs, alert_id: int, body: CommentIn
) -> AlertDetail:
    """Append a comment to an alert's history."""
    with engine.begin() as conn:
        alert_workflow.comment(conn, alert_id, actor=principal.name, text=body.text, now_ms=now_ms)
        return _detail(conn, alert_id)
