"""Alerts: a condition axis set by the system and a workflow axis set by people.

``condition`` is ``active`` while the rule's breach holds and ``cleared`` once it stops; ``workflow``
goes ``unacknowledged`` -> ``acknowledged`` -> ``closed`` by people, each step with actor and comment.
An alert is latched: clearing does not close it, and a repeat breach of the same (rule, subject)
re-activates the open alert (``occurrences`` + 1) instead of raising another. Only a closed alert lets
the next breach raise a new one. Every change appends to ``alert_events`` and emits an outbox event
in the caller's transaction.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import Connection, Row, insert, select, update

from cloud_ingest.db.tables import alert_events, alerts
from cloud_ingest.errors import Conflict, NotFound
from cloud_ingest.events import emit

SYSTEM_ACTOR = "system"


class Condition(enum.StrEnum):
    """Set by the rules."""

    ACTIVE = "active"
    CLEARED = "cleared"


class Workflow(enum.StrEnum):
    """Set by people."""

    UNACKNOWLEDGED = "unacknowledged"
    ACKNOWLEDGED = "acknowledged"
    CLOSED = "closed"


class Severity(enum.StrEnum):
    """Ordered from least to most urgent."""

    INFO = "info"
    MINOR = "minor"
    MAJOR = "major"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """Position in urgency order."""
        return list(Severity).index(self)


def dedupe_key(rule_id: str, subject_type: str, subject_id: str) -> str:
    """The key that allows one open alert per (rule, subject)."""
    return f"{rule_id}|{subject_type}|{subject_id}"


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertSpec:
    """What a rule found: the alert to raise (or re-activate) for one (rule, subject)."""

    rule_id: str
    kind: str  # excursion | budget | mkt | gateway
    subject_type: str
    subject_id: str
    severity: Severity
    title: str
    started_ms: int
    device_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def dedupe_key(self) -> str:
        """One open alert per (rule, subject)."""
        return dedupe_key(self.rule_id, self.subject_type, self.subject_id)


def _event(
    conn: Connection, alert_id: int, kind: str, *, actor: str, comment: str | None, now_ms: int
) -> None:
    conn.execute(
        insert(alert_events).values(alert_id=alert_id, at_ms=now_ms, kind=kind, actor=actor, comment=comment)
    )


def _announce(conn: Connection, alert_id: int, topic: str, now_ms: int) -> None:
    row = conn.execute(select(alerts).where(alerts.c.id == alert_id)).one()
    emit(
        conn,
        topic=topic,
        aggregate_type="alert",
        aggregate_id=str(alert_id),
        payload=alert_payload(row),
        now_ms=now_ms,
    )


def alert_payload(row: Row[Any]) -> dict[str, Any]:
    """An alert row as the API and events show it."""
    return {
        "id": row.id,
        "rule_id": row.rule_id,
        "kind": row.kind,
        "subject_type": row.subject_type,
        "subject_id": row.subject_id,
        "severity": row.severity,
        "condition": row.condition,
        "workflow": row.workflow,
        "title": row.title,
        "device_id": row.device_id,
        "started_ms": row.started_ms,
        "raised_ms": row.raised_ms,
        "cleared_ms": row.cleared_ms,
        "updated_ms": row.updated_ms,
        "escalation_level": row.escalation_level,
        "occurrences": row.occurrences,
        "detail": orjson.loads(row.detail),
    }


def open_alert(conn: Connection, dedupe_key: str) -> Row[Any] | None:
    """The not-yet-closed alert of a (rule, subject), locked for update where the database can."""
    return conn.execute(
        select(alerts).where(alerts.c.dedupe_key == dedupe_key, alerts.c.workflow != Workflow.CLOSED)
        .with_for_update()
    ).one_or_none()  # fmt: skip


def raise_alert(conn: Connection, spec: AlertSpec, *, now_ms: int) -> tuple[int, bool]:
    """Raise ``spec`` or re-activate its open alert; returns (alert id, whether it is new).

    A late reading can move the start earlier (event time), never later; severity only goes up.
    """
    existing = open_alert(conn, spec.dedupe_key)
    if existing is None:
        alert_id = conn.execute(
            insert(alerts)
            .values(
                dedupe_key=spec.dedupe_key,
                rule_id=spec.rule_id,
                kind=spec.kind,
                subject_type=spec.subject_type,
                subject_id=spec.subject_id,
                severity=spec.severity,
                condition=Condition.ACTIVE,
                workflow=Workflow.UNACKNOWLEDGED,
                title=spec.title,
                device_id=spec.device_id,
                started_ms=spec.started_ms,
                raised_ms=now_ms,
                updated_ms=now_ms,
                detail=orjson.dumps(spec.detail, option=orjson.OPT_SORT_KEYS).decode(),
            )
            .returning(alerts.c.id)
        ).scalar_one()
        _event(conn, alert_id, "raised", actor=SYSTEM_ACTOR, comment=spec.title, now_ms=now_ms)
        _announce(conn, alert_id, "alert.raised", now_ms)
        return int(alert_id), True
    alert_id = int(existing.id)
    changes: dict[str, Any] = {}
    if spec.started_ms < existing.started_ms:
        changes["started_ms"] = spec.started_ms
    if spec.severity.rank > Severity(existing.severity).rank:
        changes["severity"] = spec.severity
    if existing.condition == Condition.CLEARED:
        changes.update(condition=Condition.ACTIVE, cleared_ms=None, occurrences=existing.occurrences + 1)
    if changes:
        conn.execute(update(alerts).where(alerts.c.id == alert_id).values(updated_ms=now_ms, **changes))
        kind = "reoccurred" if "condition" in changes else "updated"
        _event(conn, alert_id, kind, actor=SYSTEM_ACTOR, comment=None, now_ms=now_ms)
        _announce(conn, alert_id, f"alert.{kind}", now_ms)
    return alert_id, False


def clear_alert(conn: Connection, dedupe_key: str, *, now_ms: int) -> int | None:
    """Mark the open alert of (rule, subject) cleared; it stays open until people close it."""
    existing = open_alert(conn, dedupe_key)
    if existing is None or existing.condition == Condition.CLEARED:
        return None
    conn.execute(
        update(alerts)
        .where(alerts.c.id == existing.id)
        .values(condition=Condition.CLEARED, cleared_ms=now_ms, updated_ms=now_ms)
    )
    _event(conn, existing.id, "cleared", actor=SYSTEM_ACTOR, comment=None, now_ms=now_ms)
    _announce(conn, existing.id, "alert.cleared", now_ms)
    return int(existing.id)


def _locked(conn: Connection, alert_id: int) -> Row[Any]:
    row = conn.execute(select(alerts).where(alerts.c.id == alert_id).with_for_update()).one_or_none()
    if row is None:
        raise NotFound(f"alert {alert_id} does not exist")
    return row


def acknowledge(conn: Connection, alert_id: int, *, actor: str, comment: str | None, now_ms: int) -> None:
    """People have seen the alert: it stops escalating."""
    row = _locked(conn, alert_id)
    if row.workflow != Workflow.UNACKNOWLEDGED:
        raise Conflict(
            f"alert {alert_id} is {row.workflow}, only an unacknowledged alert can be acknowledged"
        )
    conn.execute(
        update(alerts)
        .where(alerts.c.id == alert_id)
        .values(workflow=Workflow.ACKNOWLEDGED, updated_ms=now_ms)
    )
    _event(conn, alert_id, "acknowledged", actor=actor, comment=comment, now_ms=now_ms)
    _announce(conn, alert_id, "alert.acknowledged", now_ms)


def close(conn: Connection, alert_id: int, *, actor: str, comment: str, now_ms: int) -> None:
    """Close an acknowledged alert whose condition has cleared; a comment saying why is required."""
    row = _locked(conn, alert_id)
    if row.workflow == Workflow.CLOSED:
        raise Conflict(f"alert {alert_id} is already closed")
    if row.workflow == Workflow.UNACKNOWLEDGED:
        raise Conflict(f"alert {alert_id} is unacknowledged: acknowledge it before closing it")
    if row.condition == Condition.ACTIVE:
        raise Conflict(f"alert {alert_id} is still active: it can be closed once its condition clears")
    if not comment.strip():
        raise Conflict("closing an alert needs a comment saying why")
    conn.execute(
        update(alerts).where(alerts.c.id == alert_id).values(workflow=Workflow.CLOSED, updated_ms=now_ms)
    )
    _event(conn, alert_id, "closed", actor=actor, comment=comment, now_ms=now_ms)
    _announce(conn, alert_id, "alert.closed", now_ms)


def comment(conn: Connection, alert_id: int, *, actor: str, text: str, now_ms: int) -> None:
    """Append a comment to an alert's history."""
    _locked(conn, alert_id)
    _event(conn, alert_id, "commented", actor=actor, comment=text, now_ms=now_ms)


def escalate_due(conn: Connection, *, period_ms: int, now_ms: int) -> int:
    """Raise the escalation level of every alert left unacknowledged for another ``period_ms``."""
    rows = conn.execute(
        select(alerts.c.id, alerts.c.raised_ms, alerts.c.escalation_level)
        .where(alerts.c.workflow == Workflow.UNACKNOWLEDGED)
        .with_for_update(skip_locked=True)
    ).all()
    escalated = 0
    for row in rows:
        due_level = (now_ms - row.raised_ms) // period_ms
        if due_level > row.escalation_level:
            conn.execute(
                update(alerts)
                .where(alerts.c.id == row.id)
                .values(escalation_level=due_level, updated_ms=now_ms)
            )
            _event(conn, row.id, "escalated", actor=SYSTEM_ACTOR, comment=f"level {due_level}", now_ms=now_ms)
            _announce(conn, row.id, "alert.escalated", now_ms)
            escalated += 1
    return escalated
