"""Run a dashboard's queries on the real engines, as Grafana would, and say what came back.

Each query is expanded (:mod:`tests.grafana.expand`) with the dashboard's variables set to values
taken from the scenario's data (every value, as "All" selects), then sent: InfluxQL to InfluxDB 1.6's
``/query``, SQL to PostgreSQL, PromQL to Prometheus's ``/api/v1/query_range`` (time series) or
``/api/v1/query`` at the end of the range (instant and table queries), with Grafana's step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from tests.grafana.expand import TimeRange, expand, interval_ms
from tests.grafana.scenario import DashboardScenario
from tests.harness.prometheus import SCRAPE_INTERVAL_S

Json = dict[str, Any]

PROMETHEUS = "prometheus"
INFLUXDB = "influxdb"
POSTGRES = "grafana-postgresql-datasource"
_SCRAPE_MS = round(SCRAPE_INTERVAL_S * 1000)


@dataclass(frozen=True, slots=True)
class Result:
    """What one query returned, flattened: ``series`` names and their non-null, non-NaN values."""

    query: str
    columns: tuple[str, ...] = ()
    rows: tuple[tuple[Any, ...], ...] = ()
    """SQL rows, or InfluxDB points (time first), or Prometheus samples as (series, time, value)."""
    series: tuple[str, ...] = field(default=())

    @property
    def values(self) -> list[Any]:
        """Every non-null, non-NaN value except times and Prometheus series names."""
        skip = {i for i, c in enumerate(self.columns) if c in ("time", "timeend", "series")}
        return [v for row in self.rows for i, v in enumerate(row) if i not in skip and _present(v)]

    @property
    def has_data(self) -> bool:
        """At least one value a panel would show."""
        return bool(self.values)

    def column(self, name: str) -> list[Any]:
        """One column of the rows."""
        index = self.columns.index(name)
        return [row[index] for row in self.rows]


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


class Engines:
    """The scenario's engines, and the dashboard time range they are queried with."""

    def __init__(self, scenario: DashboardScenario) -> None:
        self.scenario = scenario
        self.time_range = TimeRange(scenario.from_ms, scenario.to_ms)

    def interval_ms(self, datasource_type: str) -> int:
        """``$__interval`` for a panel on this datasource (Prometheus: never below its scrape interval)."""
        floor = _SCRAPE_MS if datasource_type == PROMETHEUS else 0
        return interval_ms(self.time_range, min_interval_ms=floor)

    def expand(self, query: str, datasource_type: str, variables: Mapping[str, Sequence[str]]) -> str:
        """``query`` as Grafana would send it to ``datasource_type``."""
        return expand(
            query,
            datasource_type=datasource_type,
            time_range=self.time_range,
            variables=variables,
            interval=self.interval_ms(datasource_type),
            scrape_interval_ms=_SCRAPE_MS,
        )

    def run(self, target: Json, variables: Mapping[str, Sequence[str]]) -> Result:
        """Expand and run one panel target (or annotation target)."""
        kind = target["datasource"]["type"]
        if kind == PROMETHEUS:
            return self._promql(target, variables)
        if kind == INFLUXDB:
            return self.influxql(self.expand(target["query"], kind, variables))
        if kind == POSTGRES:
            return self.sql(self.expand(target["rawSql"], kind, variables))
        raise AssertionError(f"target of unknown datasource type {kind!r}: {target}")

    def variable_values(self, variable: Json, resolved: Mapping[str, Sequence[str]]) -> list[str]:
        """Run a query variable's query (expanded with the variables before it) and return its values."""
        kind = variable["datasource"]["type"]
        if kind != POSTGRES:
            raise AssertionError(f"variable {variable['name']} on {kind}: only SQL variables are used")
        result = self.sql(self.expand(variable["query"], kind, resolved))
        if len(result.columns) != 1:
            raise AssertionError(
                f"variable {variable['name']} query returns {result.columns}, not one column"
            )
        return [str(v) for v in result.column(result.columns[0]) if v is not None]

    # -- engines ------------------------------------------------------------------------------------

    def sql(self, query: str) -> Result:
        """Run SQL on the cloud's PostgreSQL database, read-only like a Grafana reader role."""
        with psycopg.connect(self.scenario.postgres_dsn) as conn:
            conn.read_only = True
            cursor = conn.execute(query.encode())
            columns = tuple(d.name for d in cursor.description or ())
            rows = tuple(tuple(row) for row in cursor.fetchall())
        return Result(query=query, columns=columns, rows=rows)

    def influxql(self, query: str) -> Result:
        """Run InfluxQL on the scenario's InfluxDB database (raises on a statement error)."""
        body = self.scenario.influxdb.query(self.scenario.influx_db, query, epoch="ms")
        rows: list[tuple[Any, ...]] = []
        names: list[str] = []
        columns: tuple[str, ...] = ()
        for statement in body["results"]:
            for s in statement.get("series", []):
                columns = tuple(s["columns"])
                names.append(f"{s['name']} {s.get('tags', {})}")
                rows += [tuple(v) for v in s["values"]]
        return Result(query=query, columns=columns, rows=tuple(rows), series=tuple(names))

    def _promql(self, target: Json, variables: Mapping[str, Sequence[str]]) -> Result:
        expr = self.expand(target["expr"], PROMETHEUS, variables)
        prometheus = self.scenario.prometheus
        if target.get("instant"):
            data = prometheus.query(expr, at=self.time_range.to_ms / 1000)
            samples = [(str(s["metric"]), *s["value"]) for s in data["result"]]
        else:
            step_s = self.interval_ms(PROMETHEUS) / 1000
            data = prometheus.query_range(
                expr, start=self.time_range.from_ms / 1000, end=self.time_range.to_ms / 1000, step_s=step_s
            )
            samples = [(str(s["metric"]), *v) for s in data["result"] for v in s["values"]]
        rows = tuple((name, t, float(v)) for name, t, v in samples)
        return Result(
            query=expr,
            columns=("series", "time", "value"),
            rows=rows,
            series=tuple(sorted({r[0] for r in rows})),
        )
