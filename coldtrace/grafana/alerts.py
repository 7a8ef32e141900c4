"""Alerts and holds: what is open now, what happened, and what still has to reach the ERP and ledger."""

# ruff: noqa: S608 - Grafana query templates: Grafana fills in time ranges and selected variable values.

from __future__ import annotations

from coldtrace.grafana.common import (
    GATEWAY,
    SHIPMENT,
    SITE,
    bucket,
    in_range,
    subject_in_scope,
    timestamp,
)
from coldtrace.grafana.model import SQL, Dashboard, Panel, PromQL, Row, Step

_ALERTS_IN_SCOPE = subject_in_scope("a")
_HOLDS_IN_SCOPE = subject_in_scope("h")

_now = Row(
    "Now",
    (
        Panel(
            title="Open alerts",
            description="Alerts not closed, by condition: active (still out of range) or cleared "
            "(back in range, awaiting acknowledgement and closing).",
            kind="stat",
            targets=(
                SQL(
                    sql="SELECT a.condition, count(*) AS alerts FROM alerts a WHERE a.workflow <> 'closed' "
                    f"AND {_ALERTS_IN_SCOPE} GROUP BY a.condition ORDER BY 1"
                ),
            ),
            width=8,
            height=5,
            steps=(Step("green"), Step("red", 1)),
        ),
        Panel(
            title="Active holds",
            description="Inventory held, by subject type (shipment or lot).",
            kind="stat",
            targets=(
                SQL(
                    sql="SELECT h.subject_type, count(*) AS holds FROM holds h WHERE h.status = 'active' "
                    f"AND {_HOLDS_IN_SCOPE} GROUP BY h.subject_type ORDER BY 1"
                ),
            ),
            width=8,
            height=5,
            steps=(Step("green"), Step("purple", 1)),
        ),
        Panel(
            title="As the workers count them",
            description="The workers' own gauges over the whole fleet (coldtrace_cloud_open_alerts, "
            "coldtrace_cloud_active_holds), refreshed by their housekeeping; every worker reports the same "
            "totals, so the maximum is shown.",
            kind="stat",
            targets=(
                PromQL(
                    expr="max by (condition) (coldtrace_cloud_open_alerts)",
                    instant=True,
                    legend="alerts {{condition}}",
                ),
                PromQL(expr="max(coldtrace_cloud_active_holds)", instant=True, legend="active holds"),
            ),
            width=8,
            height=5,
        ),
    ),
)

_open = Row(
    "Open alerts and active holds",
    (
        Panel(
            title="Open alerts",
            description="Alerts not closed, worst first. started is event time (when the condition truly "
            "began, from the device clocks); raised is when the cloud raised it.",
            kind="table",
            targets=(
                SQL(
                    sql=f"SELECT a.id, a.severity, a.rule_id AS rule, a.subject_type, a.subject_id, a.title, "
                    f"{timestamp('a.started_ms')} AS started, {timestamp('a.raised_ms')} AS raised, "
                    "a.condition, a.workflow, a.escalation_level AS escalation, a.occurrences, "
                    "a.device_id AS device FROM alerts a "
                    f"WHERE a.workflow <> 'closed' AND {_ALERTS_IN_SCOPE} "
                    "ORDER BY CASE a.severity WHEN 'critical' THEN 0 WHEN 'major' THEN 1 ELSE 2 END, "
                    "a.started_ms LIMIT 500"
                ),
            ),
            width=24,
            height=8,
        ),
        Panel(
            title="Active holds",
            description="Held inventory with the lots a shipment hold covers and their quantities.",
            kind="table",
            targets=(
                SQL(
                    sql="SELECT h.id, h.subject_type, h.subject_id, "
                    "(SELECT string_agg(l.lot_id || ' (' || l.quantity || ' ' || l.unit || ')', ', ' "
                    "ORDER BY l.lot_id) FROM lots l WHERE (h.subject_type = 'shipment' AND l.shipment_id = "
                    "h.subject_id) OR (h.subject_type = 'lot' AND l.lot_id = h.subject_id)) AS lots, "
                    f"h.reason, h.source, h.placed_by, {timestamp('h.placed_ms')} AS placed, h.alert_id "
                    f"FROM holds h WHERE h.status = 'active' AND {_HOLDS_IN_SCOPE} "
                    "ORDER BY h.placed_ms LIMIT 500"
                ),
            ),
            width=24,
            height=7,
        ),
    ),
)

_history = Row(
    "History",
    (
        Panel(
            title="Alerts raised by rule",
            description="Alerts the cloud raised per interval (alerts.raised_ms), by rule.",
            kind="timeseries",
            targets=(
                SQL(
                    sql=f"SELECT {bucket('a.raised_ms')} AS time, a.rule_id AS metric, count(*) AS value "
                    f"FROM alerts a WHERE {in_range('a.raised_ms')} AND {_ALERTS_IN_SCOPE} "
                    "GROUP BY 1, 2 ORDER BY 1, 2",
                    format="time_series",
                ),
            ),
            width=8,
        ),
        Panel(
            title="Holds placed and released",
            description="Holds placed and released per interval.",
            kind="timeseries",
            targets=(
                SQL(
                    sql=f"SELECT {bucket('h.placed_ms')} AS time, 'placed' AS metric, count(*) AS value "
                    f"FROM holds h WHERE {in_range('h.placed_ms')} AND {_HOLDS_IN_SCOPE} GROUP BY 1 "
                    f"UNION ALL SELECT {bucket('h.released_ms')}, 'released', count(*) "
                    f"FROM holds h WHERE {in_range('h.released_ms')} AND {_HOLDS_IN_SCOPE} GROUP BY 1 "
                    "ORDER BY 1, 2",
                    format="time_series",
                ),
            ),
            width=8,
        ),
        Panel(
            title="Rule outcomes (workers)",
            description="Alerts raised, holds placed and isolated glitch-scored breaches flagged (counted, "
            "not alerted) by the workers' rules, per interval, over the whole fleet.",
            kind="timeseries",
            targets=(
                PromQL(
                    expr="sum(increase(coldtrace_cloud_alerts_raised_total[$__rate_interval]))",
                    legend="alerts raised",
                ),
                PromQL(
                    expr="sum(increase(coldtrace_cloud_holds_placed_total[$__rate_interval]))",
                    legend="holds placed",
                ),
                PromQL(
                    expr="sum(increase(coldtrace_cloud_glitches_flagged_total[$__rate_interval]))",
                    legend="glitches flagged",
                ),
            ),
            width=8,
        ),
        Panel(
            title="Alert history",
            description="What happened to the alerts in the time range: raised, cleared, escalated, "
            "acknowledged, closed, and by whom (alert_events).",
            kind="table",
            targets=(
                SQL(
                    sql=f"SELECT {timestamp('e.at_ms')} AS at, e.alert_id, e.kind AS event, e.actor, "
                    "e.comment, a.rule_id AS rule, a.subject_type, a.subject_id, a.title FROM alert_events e "
                    f"JOIN alerts a ON a.id = e.alert_id WHERE {in_range('e.at_ms')} AND {_ALERTS_IN_SCOPE} "
                    "ORDER BY e.at_ms DESC, e.id DESC LIMIT 500"
                ),
            ),
            width=16,
            height=9,
        ),
        Panel(
            title="Events for the ERP and the ledger",
            description="Alert and hold changes written to the transactional outbox in the time range, "
            "and how many the ERP and ledger relays have not taken yet (outbox_events).",
            kind="table",
            targets=(
                SQL(
                    sql="SELECT topic, count(*) AS events, "
                    "count(*) FILTER (WHERE erp_done_ms IS NULL) AS erp_pending, "
                    "count(*) FILTER (WHERE ledger_done_ms IS NULL) AS ledger_pending FROM outbox_events "
                    f"WHERE {in_range('at_ms')} GROUP BY topic ORDER BY topic"
                ),
            ),
            width=8,
            height=9,
        ),
    ),
)

ALERTS_AND_HOLDS = Dashboard(
    uid="coldtrace-alerts-holds",
    title="coldtrace / Alerts and holds",
    description="Open alerts and active holds, their history, and the events waiting for the ERP and ledger.",
    variables=(SITE, GATEWAY, SHIPMENT),
    rows=(_now, _open, _history),
)
