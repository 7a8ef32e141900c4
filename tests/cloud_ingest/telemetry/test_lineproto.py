"""Line protocol encoding: every line parses back (strictly) to the reading's tags, fields and time, and
InfluxDB 1.6 - a strict line-protocol parser - stores and returns exactly those values."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_ingest.telemetry import batch_line, escape_tag, marker_lines, reading_lines
from cloud_ingest.telemetry.lineproto import PrefixKey
from coldtrace.contract import ClockQuality, Flag, Marker, MarkerKind, Reading, SourceFormat
from tests.coldtrace.contract.strategies import identifiers, markers, readings
from tests.harness.influxdb1 import InfluxDB1

FLOAT_FIELDS = ("temperature_c", "humidity_pct", "shock_g", "battery_v", "lat", "lon", "anomaly_score")

#: Tag values that need escaping, as a gateway id, site id or profile name might be spelt by mistake.
AWKWARD_TEXT = st.text(
    alphabet=st.sampled_from(list(",= \"'#"))
    | st.characters(codec="utf-8", exclude_categories=("Cc", "Cs"), exclude_characters="\\"),
    min_size=1,
    max_size=24,
)

# -- a strict parser ------------------------------------------------------------------------------

_FLOAT = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\Z")
_INT = re.compile(r"-?\d+i\Z")


def _split_unescaped(text: str, sep: str, escapable: str) -> list[str]:
    """Split ``text`` at unescaped ``sep``; a backslash may only escape a character of ``escapable``."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            assert i + 1 < len(text), f"trailing backslash in {text!r}"
            assert text[i + 1] in escapable, f"stray backslash in {text!r}"
            current.append(text[i : i + 2])
            i += 2
            continue
        if char == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\([, =])", r"\1", text)


def parse_line(line: str) -> tuple[str, dict[str, str], dict[str, float | int], int]:
    """Parse one line of (string-free) line protocol, failing on anything the spec does not allow."""
    assert "\n" not in line
    sections = _split_unescaped(line, " ", ", =")
    assert len(sections) == 3, f"expected measurement+tags, fields, timestamp: {line!r}"
    head, field_text, stamp = sections
    series = _split_unescaped(head, ",", ", =")
    measurement = _unescape(series[0])
    assert measurement
    assert not re.search(r"(?<!\\)=", series[0]), (
        "unescaped '=' is fine in a measurement but we never write one"
    )
    tags: dict[str, str] = {}
    for tag in series[1:]:
        key_value = _split_unescaped(tag, "=", ", =")
        assert len(key_value) == 2, f"tag without exactly one unescaped '=': {tag!r}"
        key, value = (_unescape(part) for part in key_value)
        assert key, f"empty tag key in {line!r}"
        assert value, f"empty tag value in {line!r}"
        assert key not in tags, f"tag {key} repeated"
        tags[key] = value
    fields: dict[str, float | int] = {}
    for field in field_text.split(","):
        key, _, value = field.partition("=")
        assert key, f"empty field key in {line!r}"
        assert key not in fields, f"repeated field {key} in {line!r}"
        if _INT.match(value):
            fields[key] = int(value[:-1])
        else:
            assert _FLOAT.match(value), f"not a line-protocol float: {value!r}"
            fields[key] = float(value)
    assert re.fullmatch(r"-?\d+", stamp), f"bad timestamp {stamp!r}"
    return measurement, tags, fields, int(stamp)


# -- what a reading should become -----------------------------------------------------------------


def expected_tags(reading: Reading, gateway: str, profile: str | None) -> dict[str, str]:
    """The tags the schema promises for ``reading``."""
    tags = {
        "site": reading.site_id,
        "gateway": gateway,
        "device": reading.device_id,
        "clock": reading.clock.value,
    }
    if reading.shipment_id is not None:
        tags["shipment"] = reading.shipment_id
    if reading.lot_ids:
        tags["lots"] = ",".join(reading.lot_ids)
    if profile is not None:
        tags["profile"] = profile
    return tags


def expected_fields(reading: Reading) -> dict[str, float | int]:
    """The fields the schema promises for ``reading``."""
    fields: dict[str, float | int] = {
        name: value for name in FLOAT_FIELDS if (value := getattr(reading, name)) is not None
    }
    fields["seq"] = reading.seq
    fields["skew_ms"] = reading.t_gateway_ms - reading.t_device_ms
    fields["glitch"] = int(Flag.GLITCH in reading.flags)
    fields["backfill"] = int(Flag.BACKFILL in reading.flags)
    return fields


def expected_time(reading: Reading) -> int:
    """Device time, except that an unset clock's 1970 stamp gives way to the gateway's."""
    return reading.t_gateway_ms if reading.clock is ClockQuality.UNSET else reading.t_device_ms


def profile_by_seq(name: str | None) -> Callable[[Reading], str | None]:
    """A profile that depends on the reading, so the prefix cache is exercised with and without it."""
    return lambda reading: name if reading.seq % 2 == 0 else None


def _reading(**overrides: Any) -> Reading:
    values: dict[str, Any] = {
        "bound": False,
        "clock": ClockQuality.OK,
        "device_id": "dev-1",
        "seq": 7,
        "site_id": "wh-1",
        "source_format": SourceFormat.NATIVE,
        "t_device_ms": 1_795_000_000_000,
        "t_gateway_ms": 1_795_000_000_250,
        "temperature_c": 4.25,
    }
    return Reading(**{**values, **overrides})


# -- properties -----------------------------------------------------------------------------------


@given(
    st.lists(readings(), max_size=12), st.lists(identifiers, min_size=1, max_size=3), st.none() | identifiers
)
def test_a_shared_prefix_cache_writes_what_a_fresh_one_does(
    batch: list[Reading], gateways: list[str], profile: str | None
) -> None:
    profile_of = profile_by_seq(profile)
    cache: dict[PrefixKey, str] = {}
    for _ in range(2):  # the second round is served from the cache
        for gateway in gateways:
            assert reading_lines(batch, gateway_id=gateway, profile_of=profile_of, prefixes=cache) == (
                reading_lines(batch, gateway_id=gateway, profile_of=profile_of)
            )


@given(st.lists(readings(), max_size=12), identifiers, st.none() | identifiers)
def test_every_reading_line_parses_back_to_its_values(
    batch: list[Reading], gateway: str, profile: str | None
) -> None:
    profile_of = profile_by_seq(profile)

    text = reading_lines(batch, gateway_id=gateway, profile_of=profile_of)

    lines = text.split("\n") if text else []
    assert len(lines) == len(batch)
    for line, reading in zip(lines, batch, strict=True):
        measurement, tags, fields, stamp = parse_line(line)
        assert measurement == "reading"
        assert tags == expected_tags(reading, gateway, profile_of(reading))
        assert list(tags) == sorted(tags), "tags are written sorted by key"
        assert fields == expected_fields(reading)
        # Float text must round-trip bit for bit, and integers stay integers.
        for name, value in fields.items():
            assert type(value) is type(expected_fields(reading)[name]), name
        assert stamp == expected_time(reading)


@given(st.lists(markers(), max_size=8), identifiers, st.none() | identifiers)
def test_every_marker_line_parses_back(batch: list[Marker], gateway: str, site: str | None) -> None:
    text = marker_lines(batch, gateway_id=gateway, site_id=site)

    lines = text.split("\n") if text else []
    assert len(lines) == len(batch)
    for line, marker in zip(lines, batch, strict=True):
        measurement, tags, fields, stamp = parse_line(line)
        assert measurement == "gap"
        want = {"device": marker.device_id, "gateway": gateway, "kind": marker.kind.value}
        if site is not None:
            want["site"] = site
        assert tags == want
        assert fields == {
            "count": marker.count,
            "seq_from": marker.seq_from,
            "seq_to": marker.seq_to,
            "t_to_ms": marker.t_to_ms,
        }
        assert stamp == marker.t_from_ms


@given(AWKWARD_TEXT, AWKWARD_TEXT, AWKWARD_TEXT)
def test_awkward_tag_values_are_escaped_and_parse_back(gateway: str, site: str, profile: str) -> None:
    reading = _reading()
    marker = Marker(
        count=1, device_id="dev-1", kind=MarkerKind.MISSING, seq_from=1, seq_to=1, t_from_ms=5, t_to_ms=5
    )

    _, reading_tags, _, _ = parse_line(
        reading_lines([reading], gateway_id=gateway, profile_of=lambda _: profile)
    )
    _, gap_tags, _, _ = parse_line(marker_lines([marker], gateway_id=gateway, site_id=site))
    _, batch_tags, _, _ = parse_line(
        batch_line(
            gateway_id=gateway, site_id=site, batch_seq=1, readings=1, markers=1, lag_ms=0, received_ms=9
        )
    )

    assert reading_tags["gateway"] == gateway
    assert reading_tags["profile"] == profile
    assert gap_tags["gateway"] == gateway
    assert gap_tags["site"] == site
    assert batch_tags == {"gateway": gateway, "site": site}


# -- examples -------------------------------------------------------------------------------------


def test_escaping_of_commas_equals_and_spaces() -> None:
    assert escape_tag("a,b=c d") == r"a\,b\=c\ d"
    assert escape_tag("lot-1") == "lot-1"


@pytest.mark.parametrize("value", ["", "a\\b", "trailing\\", "two\nlines", "cr\r", "tab\t", "del\x7f"])
def test_unrepresentable_tag_values_are_refused_not_altered(value: str) -> None:
    with pytest.raises(ValueError, match="cannot be written"):
        escape_tag(value)
    with pytest.raises(ValueError, match="cannot be written"):
        reading_lines([_reading()], gateway_id="gw-1", profile_of=lambda _: value)


def test_a_full_reading_line_reads_as_documented() -> None:
    reading = _reading(
        anomaly_score=0.5,
        model="iforest@0123456789abcdef",
        battery_v=3.6,
        bound=True,
        flags=(Flag.BACKFILL, Flag.GLITCH),
        humidity_pct=61.5,
        lat=52.52,
        lon=13.405,
        lot_ids=("lot-a", "lot-b"),
        shipment_id="shp-9",
        shock_g=0.0,
    )

    line = reading_lines([reading], gateway_id="gw-1", profile_of=lambda _: "pharma-2-8")

    assert line == (
        r"reading,clock=ok,device=dev-1,gateway=gw-1,lots=lot-a\,lot-b,profile=pharma-2-8,shipment=shp-9,"
        "site=wh-1 temperature_c=4.25,humidity_pct=61.5,shock_g=0.0,battery_v=3.6,lat=52.52,lon=13.405,"
        "anomaly_score=0.5,seq=7i,skew_ms=250i,glitch=1i,backfill=1i 1795000000000"
    )


def test_an_unset_clock_is_stamped_with_gateway_time_and_keeps_its_skew() -> None:
    reading = _reading(clock=ClockQuality.UNSET, t_device_ms=12_000)

    _, tags, fields, stamp = parse_line(reading_lines([reading], gateway_id="gw-1"))

    assert tags["clock"] == "unset"
    assert stamp == reading.t_gateway_ms
    assert fields["skew_ms"] == reading.t_gateway_ms - 12_000


def test_minimal_reading_omits_absent_tags_and_fields() -> None:
    _, tags, fields, _ = parse_line(reading_lines([_reading()], gateway_id="gw-1"))

    assert tags == {"clock": "ok", "device": "dev-1", "gateway": "gw-1", "site": "wh-1"}
    assert fields == {"temperature_c": 4.25, "seq": 7, "skew_ms": 250, "glitch": 0, "backfill": 0}


def test_batch_line() -> None:
    line = batch_line(
        gateway_id="gw-1", site_id=None, batch_seq=3, readings=10, markers=1, lag_ms=1500, received_ms=99
    )

    assert line == "ingest_batch,gateway=gw-1 batch_seq=3i,readings=10i,markers=1i,lag_ms=1500i 99"


def test_no_input_gives_no_lines() -> None:
    assert reading_lines([], gateway_id="gw-1") == ""
    assert marker_lines([], gateway_id="gw-1", site_id=None) == ""


# -- InfluxDB 1.6 as the oracle ---------------------------------------------------------------------


def _fresh_database(influxdb1: InfluxDB1) -> str:
    """A database of its own per example, with shards long enough for 1970..2100 in two."""
    name = f"lp_{uuid.uuid4().hex[:12]}"
    influxdb1.create_database(name)
    # The default 7-day shards would give every random timestamp a shard (and a directory) of its own.
    influxdb1.query(name, f'ALTER RETENTION POLICY "autogen" ON "{name}" SHARD DURATION 5300w DEFAULT')
    return name


def _rows(influxdb1: InfluxDB1, database: str, measurement: str) -> list[dict[str, Any]]:
    influxql = f'SELECT * FROM "{measurement}"'  # noqa: S608 - InfluxQL of constant names, not SQL
    body = influxdb1.query(database, influxql, epoch="ms")
    # A column exists only once some point has that tag or field: read rows with .get().
    series = body["results"][0].get("series", [])
    if not series:
        return []
    (only,) = series
    return [dict(zip(only["columns"], values, strict=True)) for values in only["values"]]


def _unique_devices(batch: list[Reading]) -> list[Reading]:
    # Points with the same series and time are one point to InfluxDB; a device per reading keeps
    # every reading its own point while keeping the generated identifier's characters.
    return [r.model_copy(update={"device_id": f"{i}.{r.device_id}"[:64]}) for i, r in enumerate(batch)]


@pytest.mark.services
@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
@given(st.lists(readings(), min_size=30, max_size=60), identifiers, st.none() | identifiers)
def test_influxdb1_stores_generated_readings_exactly(
    influxdb1: InfluxDB1, generated: list[Reading], gateway: str, profile: str | None
) -> None:
    batch = _unique_devices(generated)
    profile_of = profile_by_seq(profile)
    database = _fresh_database(influxdb1)

    response = influxdb1.write(
        database, reading_lines(batch, gateway_id=gateway, profile_of=profile_of), precision="ms"
    )

    assert response.status_code == 204, response.text
    stored = {row["device"]: row for row in _rows(influxdb1, database, "reading")}
    assert len(stored) == len(batch)
    tag_keys = ("site", "gateway", "device", "clock", "shipment", "lots", "profile")
    for reading in batch:
        row = stored[reading.device_id]
        want_tags = expected_tags(reading, gateway, profile_of(reading))
        assert {k: row[k] for k in tag_keys if row.get(k) is not None} == want_tags
        want_fields = expected_fields(reading)
        field_keys = ("seq", "skew_ms", "glitch", "backfill", *FLOAT_FIELDS)
        assert {k: row[k] for k in field_keys if row.get(k) is not None} == want_fields
        assert row["time"] == expected_time(reading)


@pytest.mark.services
@settings(max_examples=15, deadline=None)
@given(AWKWARD_TEXT, AWKWARD_TEXT, st.lists(markers(), min_size=1, max_size=5))
def test_influxdb1_stores_awkward_tags_and_markers_exactly(
    influxdb1: InfluxDB1, gateway: str, site: str, gaps: list[Marker]
) -> None:
    gaps = [m.model_copy(update={"device_id": f"{i}.{m.device_id}"[:64]}) for i, m in enumerate(gaps)]
    database = _fresh_database(influxdb1)
    text = "\n".join(
        [
            reading_lines([_reading()], gateway_id=gateway, profile_of=lambda _: site),
            marker_lines(gaps, gateway_id=gateway, site_id=site),
            batch_line(
                gateway_id=gateway, site_id=site, batch_seq=1, readings=1, markers=1, lag_ms=5, received_ms=9
            ),
        ]
    )

    response = influxdb1.write(database, text, precision="ms")

    assert response.status_code == 204, response.text
    (reading_row,) = _rows(influxdb1, database, "reading")
    assert (reading_row["gateway"], reading_row["profile"]) == (gateway, site)
    stored_gaps = {row["device"]: row for row in _rows(influxdb1, database, "gap")}
    assert len(stored_gaps) == len(gaps)
    for marker in gaps:
        row = stored_gaps[marker.device_id]
        assert (row["gateway"], row["site"], row["kind"]) == (gateway, site, marker.kind.value)
        assert (row["count"], row["seq_from"], row["seq_to"]) == (
            marker.count,
            marker.seq_from,
            marker.seq_to,
        )
        assert (row["t_to_ms"], row["time"]) == (marker.t_to_ms, marker.t_from_ms)
    (batch_row,) = _rows(influxdb1, database, "ingest_batch")
    assert batch_row == {
        "time": 9,
        "gateway": gateway,
        "site": site,
        "batch_seq": 1,
        "readings": 1,
        "markers": 1,
        "lag_ms": 5,
    }


@pytest.mark.services
def test_influxdb1_refuses_what_the_parser_refuses(influxdb1: InfluxDB1) -> None:
    # The strict parser above and the server agree on the kind of mistake escaping prevents.
    database = _fresh_database(influxdb1)
    unescaped = "reading,gateway=gw 1,device=d temperature_c=1.0 1000"

    response = influxdb1.write(database, unescaped, precision="ms")

    assert response.status_code == 400
    with pytest.raises(AssertionError):
        parse_line(unescaped)
