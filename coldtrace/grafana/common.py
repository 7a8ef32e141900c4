"""What the four dashboards share: template variables, query fragments, profile limits.

Variables come from the cloud's registry in PostgreSQL (``cloud_ingest/db/tables.py``): sites and
gateways from ``gateways``, shipments from the manifests' ``bindings``, lots from ``lots``. Every
variable is multi-value with "All", so queries filter with ``IN ($var)`` in SQL and with anchored
regular expressions in InfluxQL and PromQL - the forms Grafana expands multi-values into.

Prometheus series carry ``gateway`` and ``site`` only if the scrape configuration sets them on each
agent's target (``grafana/README.md`` shows how); the metrics themselves do not.
"""

# ruff: noqa: S608 - Grafana query templates: Grafana fills in time ranges and selected variable values.

from __future__ import annotations

from coldtrace.grafana.model import QueryVariable
from coldtrace.profiles import PROFILES

SITE = QueryVariable(
    name="site",
    label="Site",
    sql="SELECT DISTINCT site_id FROM gateways WHERE site_id IS NOT NULL ORDER BY 1",
)
GATEWAY = QueryVariable(
    name="gateway", label="Gateway", sql="SELECT gateway_id FROM gateways WHERE site_id IN ($site) ORDER BY 1"
)
SHIPMENT = QueryVariable(
    name="shipment",
    label="Shipment",
    sql="SELECT DISTINCT shipment_id FROM bindings "
    "WHERE gateway_id IN ($gateway) AND shipment_id IS NOT NULL ORDER BY 1",
)
LOT = QueryVariable(
    name="lot", label="Lot", sql="SELECT lot_id FROM lots WHERE shipment_id IN ($shipment) ORDER BY 1"
)

#: ΔH/R in kelvin the cloud's MKT buckets were summed with (``rules.mkt_activation_k``, default
#: 10 000 K). A deployment that changes that setting must change this constant and rebuild.
MKT_ACTIVATION_K = 10_000.0

# -- PromQL ---------------------------------------------------------------------------------------------

#: Label matchers of an agent's series (its scrape target's labels).
AGENT = 'site=~"$site", gateway=~"$gateway"'

# -- InfluxQL (measurements, tags and fields of cloud_ingest/telemetry/lineproto.py) -----------------------

#: Gateways are already narrowed by site, and a reading's ``site`` tag is its gateway's site.
IN_GATEWAY = '"gateway" =~ /^$gateway$/'
IN_SHIPMENT = '"shipment" =~ /^$shipment$/'
#: ``lots`` is the reading's lot ids, sorted and comma-joined: match any one of the selected lots.
IN_LOT = '"lots" =~ /(^|,)$lot(,|$)/'

# -- SQL (tables of cloud_ingest/db/tables.py; times are UTC milliseconds) -------------------------------

#: The range's ends in epoch milliseconds (the macros give integer seconds; bigint, or x 1000 overflows).
FROM_MS = "$__unixEpochFrom()::bigint * 1000"
TO_MS = "$__unixEpochTo()::bigint * 1000"


def in_range(column: str) -> str:
    """``column`` (epoch milliseconds) within the dashboard's time range."""
    return f"{column} BETWEEN {FROM_MS} AND {TO_MS}"


def overlaps_range(start: str, end: str) -> str:
    """The span ``start``..``end`` (ms; ``end`` NULL while open) overlaps the dashboard's time range."""
    return f"{start} <= {TO_MS} AND COALESCE({end}, {TO_MS}) >= {FROM_MS}"


def timestamp(column: str) -> str:
    """Epoch milliseconds as a timestamp Grafana shows as a date."""
    return f"to_timestamp({column} / 1000.0)"


def bucket(column: str) -> str:
    """Epoch milliseconds floored to the panel's interval, as the ``time`` of a time series."""
    return f"to_timestamp(({column} / $__interval_ms) * $__interval_ms / 1000.0)"


def subject_in_scope(alias: str) -> str:
    """An alert's or hold's subject is one of the selected shipments, their lots, gateways or devices."""
    a = alias
    return (
        f"(({a}.subject_type = 'shipment' AND {a}.subject_id IN ($shipment))"
        f" OR ({a}.subject_type = 'lot' AND {a}.subject_id IN "
        "(SELECT lot_id FROM lots WHERE shipment_id IN ($shipment)))"
        f" OR ({a}.subject_type = 'gateway' AND {a}.subject_id IN ($gateway))"
        f" OR ({a}.subject_type = 'device' AND {a}.subject_id IN "
        "(SELECT device_id FROM devices WHERE gateway_id IN ($gateway))))"
    )


def profile_limits(alias: str = "lim") -> str:
    """The temperature limits of every profile (``coldtrace.profiles``) as an inline SQL table
    ``alias(profile, min_c, max_c)``: the database stores a shipment's profile name, not its limits."""
    rows = ", ".join(
        f"('{p.name.value}', {p.temperature_min_c!r}, {p.temperature_max_c!r})" for p in PROFILES.values()
    )
    return f"(VALUES {rows}) AS {alias}(profile, min_c, max_c)"
