"""A small typed model of the Grafana dashboard JSON coldtrace uses, and its rendering.

Only what the coldtrace dashboards need: three datasources (fixed uids, provisioned by
``grafana/provisioning/datasources/coldtrace.yaml``), raw queries (PromQL, InfluxQL, SQL), four panel
kinds, rows, query variables and SQL annotations. Layout is computed: panels flow left to right on
Grafana's 24-column grid under their row, and ids are numbered in order, so no two panels can share
an id or overlap. The JSON follows Grafana's dashboard schema version 39 (Grafana 10.4 / 11).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Json = dict[str, Any]

SCHEMA_VERSION = 39
GRID_COLUMNS = 24
#: Every coldtrace dashboard carries this tag; the dashboards link to each other through it.
TAG = "coldtrace"


@dataclass(frozen=True, slots=True)
class Datasource:
    """A provisioned datasource, referred to by its fixed uid."""

    uid: str
    type: str

    def ref(self) -> Json:
        """The ``{"type", "uid"}`` reference panels and targets carry."""
        return {"type": self.type, "uid": self.uid}


INFLUXDB = Datasource(uid="coldtrace-influxdb", type="influxdb")
POSTGRES = Datasource(uid="coldtrace-postgres", type="grafana-postgresql-datasource")
PROMETHEUS = Datasource(uid="coldtrace-prometheus", type="prometheus")
#: Grafana's built-in "-- Mixed --" datasource: each target names its own.
MIXED = Datasource(uid="-- Mixed --", type="datasource")
#: The datasources the provisioning file must define.
DATASOURCES = (INFLUXDB, POSTGRES, PROMETHEUS)


# -- queries ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PromQL:
    """A PromQL query: a range query (time series) unless ``instant`` or ``table``."""

    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False
    """Instant, formatted as a table (one row per series, labels as columns)."""

    @property
    def datasource(self) -> Datasource:
        """Where it runs."""
        return PROMETHEUS

    def render(self, ref_id: str) -> Json:
        """The target JSON."""
        instant = self.instant or self.table
        target: Json = {
            "datasource": PROMETHEUS.ref(),
            "editorMode": "code",
            "expr": self.expr,
            "instant": instant,
            "range": not instant,
            "legendFormat": self.legend or "__auto",
            "refId": ref_id,
        }
        if self.table:
            target["format"] = "table"
        return target


@dataclass(frozen=True, slots=True, kw_only=True)
class InfluxQL:
    """A raw InfluxQL query, time-series result; ``alias`` names series (``$tag_<key>``, ``$col``)."""

    query: str
    alias: str = ""

    @property
    def datasource(self) -> Datasource:
        """Where it runs."""
        return INFLUXDB

    def render(self, ref_id: str) -> Json:
        """The target JSON."""
        return {
            "datasource": INFLUXDB.ref(),
            "alias": self.alias,
            "query": self.query,
            "rawQuery": True,
            "resultFormat": "time_series",
            "refId": ref_id,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class SQL:
    """Raw PostgreSQL; ``time_series`` wants columns ``time``, ``metric``, ``value`` ordered by time."""

    sql: str
    format: Literal["table", "time_series"] = "table"

    @property
    def datasource(self) -> Datasource:
        """Where it runs."""
        return POSTGRES

    def render(self, ref_id: str) -> Json:
        """The target JSON."""
        return {
            "datasource": POSTGRES.ref(),
            "editorMode": "code",
            "format": self.format,
            "rawQuery": True,
            "rawSql": self.sql,
            "refId": ref_id,
        }


Target = PromQL | InfluxQL | SQL

# -- panels -------------------------------------------------------------------------------------------

PanelKind = Literal["timeseries", "stat", "table", "bargauge"]


@dataclass(frozen=True, slots=True)
class Step:
    """A threshold step: from ``value`` up (None: the base colour)."""

    color: str
    value: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Panel:
    """One visualisation."""

    title: str
    description: str
    kind: PanelKind
    targets: tuple[Target, ...]
    unit: str = "short"
    width: int = 12
    height: int = 8
    steps: tuple[Step, ...] = (Step("green"),)
    decimals: int | None = None
    overrides: tuple[Json, ...] = ()
    links: tuple[Json, ...] = ()

    def __post_init__(self) -> None:
        if not self.targets:
            raise ValueError(f"panel {self.title!r} has no query")
        if not 1 <= self.width <= GRID_COLUMNS:
            raise ValueError(f"panel {self.title!r}: width {self.width} is not 1..{GRID_COLUMNS}")

    @property
    def datasource(self) -> Datasource:
        """The targets' datasource, or Mixed when they use several."""
        used = {t.datasource for t in self.targets}
        return used.pop() if len(used) == 1 else MIXED

    def render(self, panel_id: int, x: int, y: int) -> Json:
        """The panel JSON at grid position (``x``, ``y``)."""
        defaults: Json = {
            "unit": self.unit,
            "color": {"mode": "palette-classic" if self.kind == "timeseries" else "thresholds"},
            "thresholds": {
                "mode": "absolute",
                "steps": [{"color": s.color, "value": s.value} for s in self.steps],
            },
            "mappings": [],
        }
        if self.decimals is not None:
            defaults["decimals"] = self.decimals
        if self.kind == "timeseries":
            defaults["custom"] = {
                "drawStyle": "line",
                "lineWidth": 1,
                "fillOpacity": 10,
                "spanNulls": False,
                "showPoints": "never",
            }
        refs = (chr(ord("A") + i) for i in range(len(self.targets)))
        panel: Json = {
            "id": panel_id,
            "type": self.kind,
            "title": self.title,
            "description": self.description,
            "datasource": self.datasource.ref(),
            "gridPos": {"h": self.height, "w": self.width, "x": x, "y": y},
            "targets": [t.render(ref) for t, ref in zip(self.targets, refs, strict=True)],
            "fieldConfig": {"defaults": defaults, "overrides": list(self.overrides)},
            "options": _options(self.kind),
        }
        if self.links:
            panel["links"] = list(self.links)
        return panel


def _options(kind: PanelKind) -> Json:
    reduce = {"calcs": ["lastNotNull"], "fields": "", "values": False}
    match kind:
        case "timeseries":
            return {
                "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                "tooltip": {"mode": "multi", "sort": "desc"},
            }
        case "stat":
            # values=True: one tile per row of a table result (e.g. one per alert condition).
            return {
                "reduceOptions": {**reduce, "values": True},
                "colorMode": "value",
                "graphMode": "none",
                "justifyMode": "auto",
                "orientation": "auto",
                "textMode": "value_and_name",
            }
        case "bargauge":
            return {
                "reduceOptions": {**reduce, "values": True},
                "displayMode": "basic",
                "orientation": "horizontal",
                "showUnfilled": True,
            }
        case "table":
            return {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}}


def series_override(name_regex: str, properties: Mapping[str, Any]) -> Json:
    """Style the series whose display name matches ``name_regex`` (a JavaScript regex, no slashes)."""
    return {
        "matcher": {"id": "byRegexp", "options": f"/{name_regex}/"},
        "properties": [{"id": key, "value": value} for key, value in properties.items()],
    }


@dataclass(frozen=True, slots=True)
class Row:
    """A titled band of panels."""

    title: str
    panels: tuple[Panel, ...]


# -- variables and annotations ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryVariable:
    """A multi-value template variable filled by a SQL query (one column), "All" selected by default.

    The query may use variables defined before this one; Grafana re-runs it when they change.
    """

    name: str
    label: str
    sql: str
    datasource: Datasource = POSTGRES

    def render(self) -> Json:
        """The variable JSON."""
        return {
            "name": self.name,
            "label": self.label,
            "type": "query",
            "datasource": self.datasource.ref(),
            "query": self.sql,
            "definition": self.sql,
            "refresh": 1,  # on dashboard load
            "multi": True,
            "includeAll": True,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "options": [],
            "regex": "",
            "sort": 1,
            "hide": 0,
            "skipUrlSync": False,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Annotation:
    """Time regions from SQL: columns ``time``, ``timeend``, ``text``, ``tags`` (comma-separated)."""

    name: str
    sql: str
    color: str

    def render(self) -> Json:
        """The annotation JSON."""
        return {
            "name": self.name,
            "datasource": POSTGRES.ref(),
            "enable": True,
            "hide": False,
            "iconColor": self.color,
            "target": SQL(sql=self.sql).render("Anno"),
        }


_BUILT_IN_ANNOTATIONS: Json = {
    "builtIn": 1,
    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
    "enable": True,
    "hide": True,
    "iconColor": "rgba(0, 211, 255, 1)",
    "name": "Annotations & Alerts",
    "type": "dashboard",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Dashboard:
    """One dashboard file."""

    uid: str
    title: str
    description: str
    variables: tuple[QueryVariable, ...]
    rows: tuple[Row, ...]
    annotations: tuple[Annotation, ...] = ()
    time_from: str = "now-6h"
    refresh: str = "1m"
    extra_tags: tuple[str, ...] = field(default=())

    @property
    def filename(self) -> str:
        """The file name under ``grafana/dashboards/``."""
        return f"{self.uid}.json"

    def render(self) -> Json:
        """The dashboard JSON (what Grafana's file provider loads)."""
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": [TAG, *self.extra_tags],
            "timezone": "utc",
            "editable": True,
            "graphTooltip": 1,  # shared crosshair
            "time": {"from": self.time_from, "to": "now"},
            "refresh": self.refresh,
            "schemaVersion": SCHEMA_VERSION,
            "version": 1,
            "links": [
                {
                    "type": "dashboards",
                    "tags": [TAG],
                    "asDropdown": True,
                    "title": "coldtrace",
                    "includeVars": True,
                    "keepTime": True,
                    "icon": "external link",
                },
            ],
            "annotations": {"list": [_BUILT_IN_ANNOTATIONS, *(a.render() for a in self.annotations)]},
            "templating": {"list": [v.render() for v in self.variables]},
            "panels": _layout(self.rows),
        }


def _layout(rows: tuple[Row, ...]) -> list[Json]:
    """Rows and their panels on the grid, ids 1, 2, 3 ... in reading order."""
    panels: list[Json] = []
    y = 0
    for row in rows:
        panels.append(
            {
                "id": len(panels) + 1,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": GRID_COLUMNS, "x": 0, "y": y},
                "panels": [],
            }
        )
        y += 1
        x = band = 0
        for panel in row.panels:
            if x + panel.width > GRID_COLUMNS:
                y, x, band = y + band, 0, 0
            panels.append(panel.render(len(panels) + 1, x, y))
            x += panel.width
            band = max(band, panel.height)
        y += band
    return panels
