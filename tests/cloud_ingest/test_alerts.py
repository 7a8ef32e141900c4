"""Alert lifecycle in SQL: latched raise/clear/re-occur, people's workflow, escalation, events."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, insert, select

from cloud_ingest.alerts import (
    AlertSpec,
    Severity,
    acknowledge,
    clear_alert,
    close,
    escalate_due,
    raise_alert,
)
from cloud_ingest.db.tables import alert_events, alerts, outbox_events, webhook_deliveries, webhooks
from cloud_ingest.errors import Conflict
from cloud_ingest.housekeeping import housekeep
from cloud_ingest.metrics import CloudMetrics
from cloud_ingest.settings import CloudSettings

T = 1_790_000_000_000
HOUR = 3_600_000


def spec(started_ms: int = T, severity: Severity = Severity.MAJOR) -> AlertSpec:
    return AlertSpec(
        rule_id="temp_high", kind="excursion", subject_type="shipment", subject_id="S1", severity=severity,
        title="too warm", started_ms=started_ms,
    )  # fmt: skip


def alert_row(engine: Engine, alert_id: int):  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return conn.execute(select(alerts).where(alerts.c.id == alert_id)).one()


def test_one_open_alert_per_rule_and_subject_latched_until_people_close_it(engine: Engine) -> None:
    with engine.begin() as conn:
        first, new = raise_alert(conn, spec(), now_ms=T)
        assert new
        again, new = raise_alert(conn, spec(started_ms=T - HOUR, severity=Severity.CRITICAL), now_ms=T + 1)
        assert (again, new) == (first, False)
    row = alert_row(engine, first)
    assert (row.started_ms, row.severity, row.occurrences) == (T - HOUR, "critical", 1)  # earlier, worse
    with engine.begin() as conn:
        clear_alert(conn, spec().dedupe_key, now_ms=T + 2)
        with pytest.raises(Conflict, match="unacknowledged"):
            close(conn, first, actor="qa", comment="done", now_ms=T + 3)  # latched until acknowledged
    with engine.begin() as conn:
        acknowledge(conn, first, actor="ops", comment="on it", now_ms=T + 3)
        # A repeat breach before closing re-activates the same alert.
        assert raise_alert(conn, spec(), now_ms=T + 4) == (first, False)
    assert (alert_row(engine, first).condition, alert_row(engine, first).occurrences) == ("active", 2)
    with engine.begin() as conn:
        with pytest.raises(Conflict, match="still active"):
            close(conn, first, actor="qa", comment="done", now_ms=T + 5)
        clear_alert(conn, spec().dedupe_key, now_ms=T + 6)
        close(conn, first, actor="qa", comment="product checked, released", now_ms=T + 7)
        # Closed: the next breach is a new alert.
        second, new = raise_alert(conn, spec(), now_ms=T + 8)
    assert new
    assert second != first
    with engine.connect() as conn:
        kinds = conn.execute(
            select(alert_events.c.kind).where(alert_events.c.alert_id == first).order_by(alert_events.c.id)
        ).scalars().all()  # fmt: skip
    assert kinds == ["raised", "updated", "cleared", "acknowledged", "reoccurred", "cleared", "closed"]


def test_unacknowledged_alerts_escalate_once_per_period_and_notify_webhooks(engine: Engine) -> None:
    with engine.begin() as conn:
        hook = {"url": "http://127.0.0.1:9/h", "secret": "s", "topics": "alert.", "created_ms": T}
        conn.execute(insert(webhooks).values(**hook))
        alert_id, _ = raise_alert(conn, spec(), now_ms=T)
        assert escalate_due(conn, period_ms=HOUR, now_ms=T + HOUR - 1) == 0
        assert escalate_due(conn, period_ms=HOUR, now_ms=T + HOUR) == 1
        assert escalate_due(conn, period_ms=HOUR, now_ms=T + HOUR + 5) == 0
        assert escalate_due(conn, period_ms=HOUR, now_ms=T + 3 * HOUR) == 1
    assert alert_row(engine, alert_id).escalation_level == 3
    with engine.begin() as conn:
        acknowledge(conn, alert_id, actor="ops", comment=None, now_ms=T + 3 * HOUR)
        assert escalate_due(conn, period_ms=HOUR, now_ms=T + 9 * HOUR) == 0
    with engine.connect() as conn:
        topics = conn.execute(select(outbox_events.c.topic).order_by(outbox_events.c.id)).scalars().all()
        deliveries = conn.execute(select(webhook_deliveries.c.status)).scalars().all()
    assert topics == ["alert.raised", "alert.escalated", "alert.escalated", "alert.acknowledged"]
    assert deliveries == ["pending"] * 4


def test_housekeeping_escalates_and_exports_alert_and_hold_gauges(engine: Engine) -> None:
    with engine.begin() as conn:
        raise_alert(conn, spec(), now_ms=T)
    metrics = CloudMetrics()
    housekeep(engine, CloudSettings(escalate_after_s=60), metrics, now_ms=T + 120_000)
    assert metrics.registry.get_sample_value("coldtrace_cloud_open_alerts", {"condition": "active"}) == 1
    assert metrics.registry.get_sample_value("coldtrace_cloud_active_holds") == 0
    with engine.connect() as conn:
        assert conn.execute(select(alerts.c.escalation_level)).scalar_one() == 2
