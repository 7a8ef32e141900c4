"""A strict InfluxDB line-protocol parser, so the demo's telemetry sink refuses what InfluxDB would.

``measurement[,tag=value…] field=value[,field=value…] [timestamp]`` with the documented escapes:
commas and spaces in measurements; commas, equals signs and spaces in tag keys, tag values and field
keys; double quotes and backslashes in string field values. Field values are floats (``1``, ``-2.5``,
``1e3``), integers (``3i``), unsigned integers (``3u``), booleans (``t``, ``true``, ``F``, …) or
strings; NaN and infinities are refused, as by InfluxDB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FieldValue = float | int | bool | str

_TRUE = frozenset({"t", "T", "true", "True", "TRUE"})
_FALSE = frozenset({"f", "F", "false", "False", "FALSE"})


class LineError(ValueError):
    """A line that is not valid line protocol; the message names the line and what is wrong."""


@dataclass(frozen=True, slots=True)
class Point:
    """One parsed line."""

    measurement: str
    tags: tuple[tuple[str, str], ...]
    fields: tuple[tuple[str, FieldValue], ...]
    time: int | None

    @property
    def series(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        """Measurement and tag set: InfluxDB's series key (tags sorted)."""
        return self.measurement, tuple(sorted(self.tags))

    def field_type(self, name: str) -> str:
        """``float``, ``integer``, ``boolean`` or ``string`` of the named field."""
        for key, value in self.fields:
            if key == name:
                return _type_name(value)
        raise KeyError(name)


def _type_name(value: FieldValue) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    return "string"


def _token(text: str, pos: int, stops: str, escapable: str) -> tuple[str, int]:
    """Read up to an unescaped character of ``stops``; returns the unescaped token and where it ended."""
    out: list[str] = []
    i = pos
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text) and text[i + 1] in escapable:
            out.append(text[i + 1])
            i += 2
            continue
        if char in stops:
            break
        out.append(char)
        i += 1
    return "".join(out), i


def _string(text: str, pos: int) -> tuple[str, int]:
    """A double-quoted string field value starting at ``pos``; returns it and the position after it."""
    out: list[str] = []
    i = pos + 1
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text) and text[i + 1] in '"\\':
            out.append(text[i + 1])
            i += 2
            continue
        if char == '"':
            return "".join(out), i + 1
        out.append(char)
        i += 1
    raise LineError("unterminated string field value")


def _value(raw: str) -> FieldValue:
    if not raw:
        raise LineError("missing field value")
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    if raw[-1] in "iu":
        try:
            number = int(raw[:-1], 10)
        except ValueError as exc:
            raise LineError(f"invalid integer {raw!r}") from exc
        if raw[-1] == "u" and number < 0:
            raise LineError(f"negative unsigned integer {raw!r}")
        return number
    try:
        number_f = float(raw)
    except ValueError as exc:
        raise LineError(f"invalid field value {raw!r}") from exc
    if not math.isfinite(number_f) or raw.lower().lstrip("+-") in {"nan", "inf", "infinity"}:
        raise LineError(f"invalid float {raw!r}")
    return number_f


def _fields(line: str, pos: int) -> tuple[list[tuple[str, FieldValue]], int]:
    """The field set starting at ``pos``, and where it ended."""
    fields: list[tuple[str, FieldValue]] = []
    i = pos
    while True:
        key, i = _token(line, i, "=, ", ",= ")
        if i >= len(line) or line[i] != "=" or not key:
            raise LineError(f"invalid field at column {i + 1}")
        i += 1
        if i < len(line) and line[i] == '"':
            text, i = _string(line, i)
            fields.append((key, text))
        else:
            raw, i = _token(line, i, ", ", "")
            fields.append((key, _value(raw)))
        if i < len(line) and line[i] == ",":
            i += 1
            continue
        return fields, i


def parse_line(line: str) -> Point:
    """Parse one non-empty, non-comment line."""
    measurement, i = _token(line, 0, ", ", ", ")
    if not measurement:
        raise LineError("missing measurement")
    tags: list[tuple[str, str]] = []
    while i < len(line) and line[i] == ",":
        key, i = _token(line, i + 1, "=, ", ",= ")
        if i >= len(line) or line[i] != "=" or not key:
            raise LineError(f"missing tag key or '=' after {measurement!r}")
        value, i = _token(line, i + 1, ", =", ",= ")
        if not value:
            raise LineError(f"missing tag value for {key!r}")
        tags.append((key, value))
    if i >= len(line) or line[i] != " ":
        raise LineError("missing fields")
    fields, i = _fields(line, i + 1)
    time = None
    rest = line[i:].strip()
    if rest:
        try:
            time = int(rest, 10)
        except ValueError as exc:
            raise LineError(f"invalid timestamp {rest!r}") from exc
    if len({k for k, _ in fields}) != len(fields):
        raise LineError("a field appears twice")
    return Point(measurement, tuple(tags), tuple(fields), time)


def parse_lines(text: str) -> list[Point]:
    """Every point of a write body; LineError names the first bad line (1-based)."""
    points = []
    for number, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            points.append(parse_line(line.rstrip("\r")))
        except LineError as exc:
            raise LineError(f"line {number}: {exc}: {line[:200]!r}") from exc
    return points
