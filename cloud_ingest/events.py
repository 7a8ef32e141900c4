"""The transactional outbox: every change to alerts and holds becomes an event in the same transaction.

The ERP adapter and the traceability ledger consume ``outbox_events`` (each keeps its own done-mark),
and every matching webhook gets a pending delivery row, so nothing is announced that was rolled back
and nothing committed goes unannounced.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Connection, insert, select

from cloud_ingest.db.tables import outbox_events, webhook_deliveries, webhooks


def topic_matches(patterns: str, topic: str) -> bool:
    """True when ``topic`` is selected by a webhook's comma-separated prefixes (``*`` selects all)."""
    for raw in patterns.split(","):
        pattern = raw.strip()
        if pattern in {"*", topic} or (pattern.endswith(".") and topic.startswith(pattern)):
            return True
    return False


def emit(
    conn: Connection,
    *,
    topic: str,
    aggregate_type: str,
    aggregate_id: str,
    payload: dict[str, Any],
    now_ms: int,
) -> int:
    """Record one event and queue its webhook deliveries; returns the event id."""
    event_id = conn.execute(
        insert(outbox_events)
        .values(
            at_ms=now_ms,
            topic=topic,
            aggregate_type=aggregate_type,
            aggregate_id=aggregate_id,
            payload=orjson.dumps(payload, option=orjson.OPT_SORT_KEYS).decode(),
        )
        .returning(outbox_events.c.id)
    ).scalar_one()
    targets = [
        row.id
        for row in conn.execute(select(webhooks.c.id, webhooks.c.topics).where(webhooks.c.active))
        if topic_matches(row.topics, topic)
    ]
    if targets:
        conn.execute(
            insert(webhook_deliveries),
            [
                {"webhook_id": w, "event_id": event_id, "status": "pending", "next_attempt_ms": now_ms}
                for w in targets
            ],
        )
    return int(event_id)
