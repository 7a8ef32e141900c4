"""Grafana's query expansion, done the way Grafana does it, so the tests run what Grafana would send.

Two steps, as in Grafana. The frontend replaces template variables and the global variables
(``$__interval``, ``$__interval_ms``, ``$__range``, ``$__rate_interval`` for Prometheus,
``$timeFilter`` for InfluxQL), formatting a multi-value or "All" selection per datasource:

* Prometheus: values regex-escaped for a PromQL string, ``(a|b)`` (``prometheusSpecialRegexEscape``);
* InfluxDB: values regex-escaped, ``(a|b)`` (``escapeRegex`` in ``interpolateQueryExpr``);
* SQL: values quoted as literals, ``'a','b'`` (``quoteLiteral``).

Then the SQL backend expands its macros (``$__timeFilter(col)``, ``$__timeFrom()``, ``$__timeTo()``,
``$__unixEpochFrom()``, ``$__unixEpochTo()``, ``$__unixEpochFilter(col)``) with the same pattern as
Grafana's ``sqleng`` (no nested parentheses in macro arguments).

Anything left that looks like a variable or a macro is an error: a dashboard that uses an undefined
variable, or a macro the tests do not know, fails instead of being sent half-expanded.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

#: Grafana's ``rangeutil.roundInterval``: (below this many ms, use this interval in ms).
_ROUND_INTERVAL = (
    (15, 10),
    (35, 20),
    (75, 50),
    (150, 100),
    (350, 200),
    (750, 500),
    (1_500, 1_000),
    (3_500, 2_000),
    (7_500, 5_000),
    (12_500, 10_000),
    (17_500, 15_000),
    (25_000, 20_000),
    (45_000, 30_000),
    (90_000, 60_000),
    (210_000, 120_000),
    (450_000, 300_000),
    (750_000, 600_000),
    (1_050_000, 900_000),
    (1_500_000, 1_200_000),
    (2_700_000, 1_800_000),
    (5_400_000, 3_600_000),
    (9_000_000, 7_200_000),
    (16_200_000, 10_800_000),
    (32_400_000, 21_600_000),
    (86_400_000, 43_200_000),
    (604_800_000, 86_400_000),
    (1_814_400_000, 604_800_000),
    (3_628_800_000, 2_592_000_000),
)
#: Grafana's default when a panel has no width to derive max data points from.
MAX_DATA_POINTS = 1000

#: Template variables: ``$name`` or ``${name}`` (``${name:format}`` and ``[[name]]`` are not used).
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
#: Grafana sqleng's macro pattern.
_SQL_MACRO = re.compile(r"\$(__[_a-zA-Z0-9]+)\(([^)]*)\)")
_PROMETHEUS_SPECIAL = re.compile(r"[$^*{}\[\]'+?.()|]")
_REGEX_SPECIAL = re.compile(r"[\\^$*+?.()|\[\]{}/]")


class ExpansionError(ValueError):
    """A query uses a variable or macro Grafana would not expand."""


@dataclass(frozen=True, slots=True)
class TimeRange:
    """The dashboard's time range, epoch milliseconds."""

    from_ms: int
    to_ms: int

    @property
    def span_ms(self) -> int:
        """Its length."""
        return self.to_ms - self.from_ms


def round_interval(ms: float) -> int:
    """Grafana's ``roundInterval``: the nearest "nice" interval, in ms."""
    for below, interval in _ROUND_INTERVAL:
        if ms < below:
            return interval
    return 31_536_000_000


def interval_ms(
    time_range: TimeRange, *, min_interval_ms: int = 0, max_data_points: int = MAX_DATA_POINTS
) -> int:
    """``$__interval_ms``: the range over the panel's points, rounded, at least the datasource's minimum."""
    return max(round_interval(time_range.span_ms / max_data_points), min_interval_ms)


def duration(ms: int) -> str:
    """Grafana's ``secondsToHms``: ``10s``, ``1m``, ``500ms`` (the largest whole unit)."""
    seconds = ms / 1000
    for unit, size in (("y", 31_536_000), ("d", 86_400), ("h", 3_600), ("m", 60)):
        if whole := math.floor(seconds / size):
            return f"{whole}{unit}"
    if whole := math.floor(seconds):
        return f"{whole}s"
    return f"{ms}ms"


def format_values(values: Sequence[str], datasource_type: str) -> str:
    """A multi-value (or "All") selection as Grafana writes it into a query of ``datasource_type``."""
    if datasource_type == "prometheus":
        escaped = [
            _PROMETHEUS_SPECIAL.sub(lambda m: "\\\\" + m.group(0), v.replace("\\", "\\\\\\\\"))
            for v in values
        ]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    if datasource_type == "influxdb":
        escaped = [_REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), v) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    if datasource_type in ("grafana-postgresql-datasource", "postgres"):
        return ",".join("'" + v.replace("'", "''") + "'" for v in values)
    raise ExpansionError(f"no variable formatting for datasource type {datasource_type!r}")


def _rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def expand(
    query: str,
    *,
    datasource_type: str,
    time_range: TimeRange,
    variables: Mapping[str, Sequence[str]],
    interval: int,
    scrape_interval_ms: int = 15_000,
) -> str:
    """``query`` as Grafana would send it. ``variables``: each variable's selected values; ``interval``:
    the panel's ``$__interval`` in ms; ``scrape_interval_ms``: the Prometheus datasource's timeInterval."""
    span_s = time_range.span_ms // 1000
    builtins = {
        "__interval": duration(interval),
        "__interval_ms": str(interval),
        "__range": f"{span_s}s",
        "__range_s": str(span_s),
        "__range_ms": str(time_range.span_ms),
        "__from": str(time_range.from_ms),
        "__to": str(time_range.to_ms),
    }
    if datasource_type == "prometheus":
        # $__rate_interval = max($__interval + scrape interval, 4 x scrape interval).
        builtins["__rate_interval"] = duration(max(interval + scrape_interval_ms, 4 * scrape_interval_ms))
    if datasource_type == "influxdb":
        builtins["timeFilter"] = f"time >= {time_range.from_ms}ms and time <= {time_range.to_ms}ms"

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in builtins:
            return builtins[name]
        if name in variables:
            values = variables[name]
            if not values:
                raise ExpansionError(f"variable ${name} has no value to select")
            return format_values(values, datasource_type)
        if name.startswith("__") and query[match.end() : match.end() + 1] == "(":
            return match.group(0)  # a backend macro, expanded below
        raise ExpansionError(f"${name} is neither a dashboard variable nor a Grafana global variable")

    text = _VARIABLE.sub(replace, query)
    if datasource_type in ("grafana-postgresql-datasource", "postgres"):
        text = _expand_sql_macros(text, time_range)
    if leftover := _SQL_MACRO.search(text):
        raise ExpansionError(f"{leftover.group(0)} is not a macro of {datasource_type}")
    return text


def _expand_sql_macros(text: str, time_range: TimeRange) -> str:
    start, end = time_range.from_ms, time_range.to_ms

    def replace(match: re.Match[str]) -> str:
        name, argument = match.group(1), match.group(2).strip()
        match name:
            case "__timeFilter":
                return f"{argument} BETWEEN '{_rfc3339(start)}' AND '{_rfc3339(end)}'"
            case "__timeFrom":
                return f"'{_rfc3339(start)}'"
            case "__timeTo":
                return f"'{_rfc3339(end)}'"
            case "__unixEpochFrom":
                return str(start // 1000)
            case "__unixEpochTo":
                return str(end // 1000)
            case "__unixEpochFilter":
                return f"{argument} >= {start // 1000} AND {argument} <= {end // 1000}"
        raise ExpansionError(f"${name}() is not a PostgreSQL macro the tests expand")

    return _SQL_MACRO.sub(replace, text)
