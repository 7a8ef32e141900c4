"""Shipment temperature: each shipment's and lot's readings against its profile's limits, with the
excursions and holds the cloud's rules raised marked on the time axis."""

# ruff: noqa: S608 - Grafana query templates: Grafana fills in time ranges and selected variable values.

from __future__ import annotations

from coldtrace.grafana.common import (
    FROM_MS,
    GATEWAY,
    IN_GATEWAY,
    IN_LOT,
    IN_SHIPMENT,
    LOT,
    MKT_ACTIVATION_K,
    SHIPMENT,
    SITE,
    TO_MS,
    overlaps_range,
    profile_limits,
    timestamp,
)
from coldtrace.grafana.model import (
    SQL,
    Annotation,
    Dashboard,
    InfluxQL,
    Panel,
    Row,
    series_override,
)

#: Readings of the selected shipments and lots through the selected gateways, in the time range.
_READINGS = f'FROM "reading" WHERE {IN_SHIPMENT} AND {IN_LOT} AND {IN_GATEWAY} AND $timeFilter'

#: Two points per limit and shipment, at both ends of the time range: a horizontal line per limit.
_LIMIT_LINES = SQL(
    sql="SELECT b.t AS time, s.shipment_id || ' ' || l.bound || ' limit' AS metric, l.value "
    f"FROM shipments s JOIN {profile_limits('lim')} ON lim.profile = s.profile "
    "CROSS JOIN LATERAL (VALUES ('min', lim.min_c), ('max', lim.max_c)) AS l(bound, value) "
    "CROSS JOIN (VALUES ($__timeFrom()::timestamptz), ($__timeTo()::timestamptz)) AS b(t) "
    "WHERE s.shipment_id IN ($shipment) ORDER BY 1, 2",
    format="time_series",
)
_LIMIT_STYLE = series_override(
    " (min|max) limit$",
    {
        "color": {"mode": "fixed", "fixedColor": "red"},
        "custom.lineStyle": {"fill": "dash", "dash": [10, 10]},
        "custom.fillOpacity": 0,
        "custom.lineWidth": 2,
    },
)

_SUBJECT = (
    "((x.subject_type = 'shipment' AND x.subject_id IN ($shipment)) "
    "OR (x.subject_type = 'lot' AND x.subject_id IN ($lot)))"
)

EXCURSIONS = Annotation(
    name="Excursions",
    color="red",
    sql=f"SELECT {timestamp('x.started_ms')} AS time, "
    f"{timestamp(f'COALESCE(x.cleared_ms, {TO_MS})')} AS timeend, "
    "x.title || ' (' || x.severity || ', ' || x.condition || ')' AS text, x.rule_id || ',' || x.kind AS tags "
    f"FROM alerts x WHERE x.kind IN ('excursion', 'budget', 'mkt') AND {_SUBJECT} "
    f"AND {overlaps_range('x.started_ms', 'x.cleared_ms')} ORDER BY 1",
)
HOLDS = Annotation(
    name="Holds",
    color="purple",
    sql=f"SELECT {timestamp('x.placed_ms')} AS time, "
    f"{timestamp(f'COALESCE(x.released_ms, {TO_MS})')} AS timeend, "
    "'Hold on ' || x.subject_type || ' ' || x.subject_id || ': ' || x.reason AS text, "
    "'hold,' || x.source || ',' || x.status AS tags "
    f"FROM holds x WHERE {_SUBJECT} AND {overlaps_range('x.placed_ms', 'x.released_ms')} ORDER BY 1",
)

_temperature = Row(
    "Temperature against the profile's limits",
    (
        Panel(
            title="Temperature by shipment and lots",
            description="Warmest and coldest sensor per interval of each shipment, by the lots they "
            "travel with (reading tags shipment, lots; a mean would hide one failing reefer among "
            "good ones), and the limits of the shipment's profile (dashed). Red regions: excursions; "
            "purple: holds.",
            kind="timeseries",
            targets=(
                InfluxQL(
                    query=f'SELECT max("temperature_c") AS "warmest", min("temperature_c") AS "coldest" '
                    f'{_READINGS} GROUP BY time($__interval), "shipment", "lots" fill(none)',
                    alias="$tag_shipment [$tag_lots] $col",
                ),
                _LIMIT_LINES,
            ),
            unit="celsius",
            width=24,
            height=10,
            overrides=(_LIMIT_STYLE,),
        ),
        Panel(
            title="Temperature by sensor",
            description="Each sensor of the selected shipments (mean per interval), against the limits.",
            kind="timeseries",
            targets=(
                InfluxQL(
                    query=f'SELECT mean("temperature_c") {_READINGS} '
                    'GROUP BY time($__interval), "shipment", "device" fill(none)',
                    alias="$tag_shipment $tag_device",
                ),
                _LIMIT_LINES,
            ),
            unit="celsius",
            width=24,
            height=10,
            overrides=(_LIMIT_STYLE,),
        ),
    ),
)

_conditions = Row(
    "Conditions",
    (
        Panel(
            title="Hourly mean kinetic temperature",
            description=f"MKT of each hour from the cloud's hourly buckets (mkt_buckets, ΔH/R = "
            f"{MKT_ACTIVATION_K:g} K), per shipment and lot: the single temperature that would have "
            "degraded the goods as much as the real, varying one.",
            kind="timeseries",
            targets=(
                SQL(
                    sql=f"SELECT {timestamp('hour_ms')} AS time, subject AS metric, "
                    f"{MKT_ACTIVATION_K!r} / -ln(sum_exp / n) - 273.15 AS value FROM mkt_buckets "
                    "WHERE ((split_part(subject, ':', 1) = 'shipment' "
                    "AND split_part(subject, ':', 2) IN ($shipment)) "
                    "OR (split_part(subject, ':', 1) = 'lot' AND split_part(subject, ':', 2) IN ($lot))) "
                    f"AND n > 0 AND hour_ms BETWEEN {FROM_MS} - 3600000 AND {TO_MS} ORDER BY 1, 2",
                    format="time_series",
                ),
            ),
            unit="celsius",
        ),
        Panel(
            title="Highest humidity by shipment",
            description="Highest relative humidity per interval (reading.humidity_pct).",
            kind="timeseries",
            targets=(
                InfluxQL(
                    query=f'SELECT max("humidity_pct") {_READINGS} '
                    'GROUP BY time($__interval), "shipment" fill(none)',
                    alias="$tag_shipment",
                ),
            ),
            unit="humidity",
        ),
        Panel(
            title="Shocks by shipment",
            description="Largest shock per interval (reading.shock_g): drops and forklift knocks.",
            kind="timeseries",
            targets=(
                InfluxQL(
                    query=f'SELECT max("shock_g") {_READINGS} '
                    'GROUP BY time($__interval), "shipment" fill(none)',
                    alias="$tag_shipment",
                ),
            ),
            unit="accG",
        ),
        Panel(
            title="Readings scored as glitches",
            description="Readings the gateway's anomaly model flagged as probable sensor glitches "
            "(reading.glitch): counted by the rules, not alerted on unless the breach is sustained.",
            kind="timeseries",
            targets=(
                InfluxQL(
                    query=f'SELECT sum("glitch") {_READINGS} '
                    'GROUP BY time($__interval), "shipment" fill(none)',
                    alias="$tag_shipment",
                ),
            ),
        ),
    ),
)

_shipments = Row(
    "Shipments",
    (
        Panel(
            title="Shipments",
            description="Each selected shipment: profile and limits, lots, open alerts, and whether it or "
            "one of its lots is on hold.",
            kind="table",
            targets=(
                SQL(
                    sql="SELECT s.shipment_id AS shipment, s.profile, lim.min_c, lim.max_c, "
                    "(SELECT string_agg(l.lot_id, ', ' ORDER BY l.lot_id) FROM lots l "
                    "WHERE l.shipment_id = s.shipment_id) AS lots, "
                    "(SELECT count(*) FROM alerts a WHERE a.subject_type = 'shipment' "
                    "AND a.subject_id = s.shipment_id AND a.workflow <> 'closed') AS open_alerts, "
                    "EXISTS (SELECT 1 FROM holds h WHERE h.status = 'active' "
                    "AND ((h.subject_type = 'shipment' AND h.subject_id = s.shipment_id) "
                    "OR (h.subject_type = 'lot' AND h.subject_id IN "
                    "(SELECT l.lot_id FROM lots l WHERE l.shipment_id = s.shipment_id)))) AS on_hold "
                    f"FROM shipments s LEFT JOIN {profile_limits('lim')} ON lim.profile = s.profile "
                    "WHERE s.shipment_id IN ($shipment) ORDER BY on_hold DESC, s.shipment_id"
                ),
            ),
            width=24,
            height=7,
        ),
    ),
)

SHIPMENT_TEMPERATURE = Dashboard(
    uid="coldtrace-shipment-temperature",
    title="coldtrace / Shipment temperature",
    description="Temperature per shipment and lot against the profile's limits, with excursions and holds.",
    variables=(SITE, GATEWAY, SHIPMENT, LOT),
    rows=(_temperature, _conditions, _shipments),
    annotations=(EXCURSIONS, HOLDS),
)
