"""Gateway alerts for gaps in a batch chain that stay open past the grace period."""

from __future__ import annotations

from sqlalchemy import Connection, func, select, update

from cloud_ingest.alerts import AlertSpec, Severity, clear_alert, dedupe_key, raise_alert
from cloud_ingest.db.tables import chain_gaps

RULE_ID = "chain_gap"


def raise_gap_alerts(conn: Connection, *, grace_ms: int, now_ms: int) -> int:
    """Raise an alert for every gap open longer than ``grace_ms``; returns how many gaps it covered."""
    overdue = conn.execute(
        select(chain_gaps).where(
            chain_gaps.c.filled_ms.is_(None), chain_gaps.c.alert_id.is_(None),
            chain_gaps.c.detected_ms <= now_ms - grace_ms,
        ).with_for_update(skip_locked=True)
    ).all()  # fmt: skip
    for gap in overdue:
        missing = gap.seq_to - gap.seq_from + 1
        alert_id, _ = raise_alert(
            conn,
            AlertSpec(
                rule_id=RULE_ID, kind="gateway", subject_type="gateway", subject_id=gap.gateway_id,
                severity=Severity.MAJOR, started_ms=gap.detected_ms,
                title=f"gateway {gap.gateway_id}: {missing} batch(es) missing from its chain "
                f"({gap.seq_from}..{gap.seq_to})",
                detail={"seq_from": gap.seq_from, "seq_to": gap.seq_to},
            ),
            now_ms=now_ms,
        )  # fmt: skip
        conn.execute(
            update(chain_gaps)
            .where(chain_gaps.c.gateway_id == gap.gateway_id, chain_gaps.c.seq_from == gap.seq_from)
            .values(alert_id=alert_id)
        )
    return len(overdue)


def clear_gap_alert(conn: Connection, gateway_id: str, *, now_ms: int) -> None:
    """Clear the gateway's gap alert once every gap of its chain is filled."""
    open_gaps = conn.execute(
        select(func.count())
        .select_from(chain_gaps)
        .where(chain_gaps.c.gateway_id == gateway_id, chain_gaps.c.filled_ms.is_(None))
    ).scalar_one()
    if not open_gaps:
        clear_alert(conn, dedupe_key(RULE_ID, "gateway", gateway_id), now_ms=now_ms)
