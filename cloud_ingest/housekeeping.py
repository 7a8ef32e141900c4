"""Periodic duties of a worker: chain-gap alerts, escalation, and the gauges of alerts and holds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import DBAPIError

from cloud_ingest.alerts import Workflow, escalate_due
from cloud_ingest.db.tables import alerts, holds
from cloud_ingest.gaps import raise_gap_alerts
from cloud_ingest.metrics import CloudMetrics
from cloud_ingest.settings import CloudSettings
from coldtrace.clock import wall_ms

logger = logging.getLogger(__name__)


def housekeep(engine: Engine, settings: CloudSettings, metrics: CloudMetrics, *, now_ms: int) -> None:
    """One round: raise overdue gap alerts, escalate, refresh gauges."""
    with engine.begin() as conn:
        raise_gap_alerts(conn, grace_ms=round(settings.chain_gap_grace_s * 1000), now_ms=now_ms)
        escalate_due(conn, period_ms=round(settings.escalate_after_s * 1000), now_ms=now_ms)
    with engine.connect() as conn:
        for condition, count in conn.execute(
            select(alerts.c.condition, func.count())
            .where(alerts.c.workflow != Workflow.CLOSED)
            .group_by(alerts.c.condition)
        ):
            metrics.open_alerts.labels(condition).set(count)
        active = conn.execute(select(func.count()).select_from(holds).where(holds.c.status == "active"))
        metrics.active_holds.set(active.scalar_one())


async def run_housekeeping(
    engine: Engine, settings: CloudSettings, metrics: CloudMetrics, *, clock: Callable[[], int] = wall_ms
) -> None:
    """Housekeep every ``housekeeping_interval_s`` until cancelled; a database outage is waited out."""
    while True:
        try:
            await asyncio.to_thread(housekeep, engine, settings, metrics, now_ms=clock())
        except DBAPIError as exc:
            logger.warning("housekeeping cannot reach the database: %s", exc.orig or exc)
        await asyncio.sleep(settings.housekeeping_interval_s)
