"""Fleet health: are the gateways up, is anything piling up in their outboxes, are the devices alive."""

# ruff: noqa: S608 - Grafana query templates: Grafana fills in time ranges and selected variable values.

from __future__ import annotations

from coldtrace.grafana.common import AGENT, GATEWAY, IN_GATEWAY, SITE, TO_MS, timestamp
from coldtrace.grafana.model import SQL, Dashboard, InfluxQL, Panel, PromQL, Row, Step

_SILENT_MS = 15 * 60_000

_gateways = Row(
    "Gateways",
    (
        Panel(
            title="Uplinks up",
            description="Agents whose link to the cloud broker is connected "
            "(coldtrace_agent_uplink_connected).",
            kind="stat",
            targets=(
                PromQL(
                    expr=f"sum(coldtrace_agent_uplink_connected{{{AGENT}}})",
                    instant=True,
                    legend="uplinks up",
                ),
            ),
            width=6,
            height=4,
            steps=(Step("red"), Step("green", 1)),
        ),
        Panel(
            title="Agents answering scrapes",
            description="Agent metrics endpoints Prometheus reached on its last scrape (up).",
            kind="stat",
            targets=(PromQL(expr=f"sum(up{{{AGENT}}})", instant=True, legend="agents up"),),
            width=6,
            height=4,
            steps=(Step("red"), Step("green", 1)),
        ),
        Panel(
            title="Gateways heard from in the last 15 min",
            description="Active gateways whose last batch the cloud stored within 15 minutes of the end "
            "of the time range (gateways.last_seen_ms).",
            kind="stat",
            targets=(
                SQL(
                    sql="SELECT count(*) AS gateways FROM gateways WHERE gateway_id IN ($gateway) "
                    f"AND status = 'active' AND last_seen_ms >= {TO_MS} - {_SILENT_MS}"
                ),
            ),
            width=6,
            height=4,
            steps=(Step("red"), Step("green", 1)),
        ),
        Panel(
            title="Devices silent for 15 min or more",
            description="Devices whose newest reading the gateway received over 15 minutes before the end "
            "of the time range (devices.last_seen_ms).",
            kind="stat",
            targets=(
                SQL(
                    sql="SELECT count(*) AS devices FROM devices WHERE gateway_id IN ($gateway) "
                    f"AND last_seen_ms < {TO_MS} - {_SILENT_MS}"
                ),
            ),
            width=6,
            height=4,
            steps=(Step("green"), Step("orange", 1)),
        ),
        Panel(
            title="Gateway registry",
            description="The cloud's registry: status, when each gateway was last heard from, its batch "
            "chain head and what it has delivered.",
            kind="table",
            targets=(
                SQL(
                    sql=f"SELECT gateway_id AS gateway, site_id AS site, status, "
                    f"{timestamp('last_seen_ms')} AS last_seen, head_seq AS chain_head, "
                    "batches_accepted AS batches, readings_accepted AS readings "
                    "FROM gateways WHERE gateway_id IN ($gateway) "
                    "ORDER BY last_seen_ms NULLS FIRST, gateway_id"
                ),
            ),
            width=14,
            height=7,
        ),
        Panel(
            title="Anomaly model per gateway",
            description="The signed model each agent scores with; rules_only=True means it fell back to "
            "the rules-only score (coldtrace_agent_model_info).",
            kind="table",
            targets=(
                PromQL(
                    expr=f"max by (gateway, model, rules_only) (coldtrace_agent_model_info{{{AGENT}}})",
                    table=True,
                ),
            ),
            width=10,
            height=7,
        ),
    ),
)


def _agent_gauge(title: str, description: str, metric: str, unit: str) -> Panel:
    return Panel(
        title=title,
        description=description,
        kind="timeseries",
        targets=(PromQL(expr=f"max by (gateway) ({metric}{{{AGENT}}})", legend="{{gateway}}"),),
        unit=unit,
        width=8,
    )


_outbox = Row(
    "Outbox and uplink",
    (
        _agent_gauge(
            "Outbox depth",
            "Readings in each gateway's outbox not yet acknowledged by the cloud "
            "broker (coldtrace_agent_outbox_readings).",
            "coldtrace_agent_outbox_readings",
            "short",
        ),
        _agent_gauge(
            "Oldest unacknowledged reading",
            "Age of the oldest reading still in the outbox: how "
            "far behind the cloud's view of this gateway is (coldtrace_agent_outbox_oldest_age_seconds).",
            "coldtrace_agent_outbox_oldest_age_seconds",
            "s",
        ),
        _agent_gauge(
            "Drain ETA",
            "The agent's estimate of the time to empty its backlog at the current send "
            "rate; 0 when there is nothing to drain (coldtrace_agent_drain_eta_seconds).",
            "coldtrace_agent_drain_eta_seconds",
            "s",
        ),
        _agent_gauge(
            "Outbox size on disk",
            "SQLite outbox size; the agent thins routine readings when it "
            "reaches its disk budget (coldtrace_agent_outbox_bytes).",
            "coldtrace_agent_outbox_bytes",
            "bytes",
        ),
        Panel(
            title="Readings acknowledged by the cloud broker",
            description="Readings per second leaving each outbox (coldtrace_agent_readings_sent_total).",
            kind="timeseries",
            targets=(
                PromQL(
                    expr="sum by (gateway) (rate(coldtrace_agent_readings_sent_total"
                    f"{{{AGENT}}}[$__rate_interval]))",
                    legend="{{gateway}}",
                ),
            ),
            unit="cps",
            width=8,
        ),
        _agent_gauge(
            "Uplink connected",
            "1 while the agent's link to the cloud broker is up (coldtrace_agent_uplink_connected).",
            "coldtrace_agent_uplink_connected",
            "bool_on_off",
        ),
    ),
)

_devices = Row(
    "Devices",
    (
        Panel(
            title="Devices, longest silent first",
            description="Every device's newest reading as the cloud stored it (devices table): when the "
            "gateway received it, temperature, battery and clock quality.",
            kind="table",
            targets=(
                SQL(
                    sql=f"SELECT device_id AS device, gateway_id AS gateway, site_id AS site, "
                    f"{timestamp('last_seen_ms')} AS last_seen, temperature_c, battery_v, clock, "
                    "clock_skew_ms / 1000.0 AS clock_skew_s, readings_total AS readings, firmware "
                    "FROM devices WHERE gateway_id IN ($gateway) ORDER BY last_seen_ms, device_id LIMIT 500"
                ),
            ),
            width=24,
            height=9,
        ),
        Panel(
            title="Lowest battery voltage per gateway",
            description="The weakest battery reported through each gateway (reading.battery_v).",
            kind="timeseries",
            targets=(
                InfluxQL(
                    query=f'SELECT min("battery_v") FROM "reading" WHERE {IN_GATEWAY} AND $timeFilter '
                    'GROUP BY time($__interval), "gateway" fill(none)',
                    alias="$tag_gateway",
                ),
            ),
            unit="volt",
        ),
        Panel(
            title="Weakest batteries",
            description="Devices by their last reported battery voltage, lowest first.",
            kind="table",
            targets=(
                SQL(
                    sql=f"SELECT device_id AS device, gateway_id AS gateway, battery_v, "
                    f"{timestamp('last_seen_ms')} AS last_seen FROM devices "
                    "WHERE gateway_id IN ($gateway) AND battery_v IS NOT NULL "
                    "ORDER BY battery_v, device_id LIMIT 20"
                ),
            ),
        ),
        Panel(
            title="Readings by clock quality",
            description="How the gateways judged the device clocks (reading tag clock: ok, skewed, unset, "
            "jumped). The readings keep the device's own timestamps; skew_ms keeps the difference.",
            kind="timeseries",
            targets=(
                InfluxQL(
                    query=f'SELECT count("seq") FROM "reading" WHERE {IN_GATEWAY} AND $timeFilter '
                    'GROUP BY time($__interval), "clock" fill(none)',
                    alias="$tag_clock",
                ),
            ),
        ),
        Panel(
            title="Clock skew per gateway",
            description="Gateway receive time minus device time (reading.skew_ms): the largest (device "
            "behind, or readings buffered) and the smallest (device ahead) per interval.",
            kind="timeseries",
            targets=(
                InfluxQL(
                    query='SELECT max("skew_ms") / 1000 AS "max", min("skew_ms") / 1000 AS "min" '
                    f'FROM "reading" WHERE {IN_GATEWAY} AND $timeFilter '
                    'GROUP BY time($__interval), "gateway" fill(none)',
                    alias="$tag_gateway $col",
                ),
            ),
            unit="s",
        ),
        Panel(
            title="Largest clock skew per device",
            description="Devices by the skew of their newest reading (devices.clock_skew_ms).",
            kind="table",
            targets=(
                SQL(
                    sql="SELECT device_id AS device, gateway_id AS gateway, clock, "
                    "clock_skew_ms / 1000.0 AS clock_skew_s FROM devices WHERE gateway_id IN ($gateway) "
                    "ORDER BY abs(clock_skew_ms) DESC, device_id LIMIT 20"
                ),
            ),
        ),
    ),
)

FLEET_HEALTH = Dashboard(
    uid="coldtrace-fleet-health",
    title="coldtrace / Fleet health",
    description="Gateways online, outbox backlog and drain ETA, devices last seen, batteries and clocks.",
    variables=(SITE, GATEWAY),
    rows=(_gateways, _outbox, _devices),
)
