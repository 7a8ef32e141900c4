"""InfluxDB line protocol for verified readings, gap markers and ingest batches (millisecond precision).

The text these functions return is what the durable spool stores and what
:class:`~cloud_ingest.telemetry.writer.TelemetryWriter` sends to ``/api/v2/write?precision=ms``.
Every line is a pure function of the verified batch, so writing a chunk again after a lost
acknowledgement overwrites each point with identical values: retries are idempotent.

Schema (one row per key; "i" marks a line-protocol integer, "f" a float)
------------------------------------------------------------------------

=============  =====  ==============  ===========================================================
measurement    role   key             value
=============  =====  ==============  ===========================================================
reading        tag    clock           ok / skewed / unset / jumped (``Reading.clock``)
reading        tag    device          ``device_id``
reading        tag    gateway         the sending gateway's id
reading        tag    lots            sorted lot ids joined with ","; omitted when none
reading        tag    profile         ``profile_of(reading)``; omitted when None or not given
reading        tag    shipment        ``shipment_id``; omitted when None
reading        tag    site            ``site_id``
reading        field  temperature_c   f; omitted when None (so are the other floats)
reading        field  humidity_pct    f
reading        field  shock_g         f
reading        field  battery_v       f
reading        field  lat, lon        f (always together)
reading        field  anomaly_score   f
reading        field  seq             i, the device's sequence number
reading        field  skew_ms         i, ``t_gateway_ms - t_device_ms``
reading        field  glitch          i, 1 when flagged ``glitch``, else 0
reading        field  backfill        i, 1 when flagged ``backfill``, else 0
reading        time                   ``t_device_ms``; ``t_gateway_ms`` when clock is ``unset``
gap            tag    device          the marker's ``device_id``
gap            tag    gateway         the sending gateway's id
gap            tag    kind            thinned / device_dropped / missing
gap            tag    site            the gateway's site; omitted when unknown
gap            field  count           i, readings that will never arrive
gap            field  seq_from        i
gap            field  seq_to          i
gap            field  t_to_ms         i, end of the gap (device time)
gap            time                   ``t_from_ms`` (device time)
ingest_batch   tag    gateway         the sending gateway's id
ingest_batch   tag    site            omitted when unknown
ingest_batch   field  batch_seq       i
ingest_batch   field  readings        i, readings in the batch
ingest_batch   field  markers         i, gap markers in the batch
ingest_batch   field  lag_ms          i, as the caller measures it (receive minus creation time)
ingest_batch   time                   ``received_ms``; +1 ms for each earlier batch of the same gateway
                                      stored in the same transaction (a series keeps one point per time)
=============  =====  ==============  ===========================================================

Tags are written sorted by key (InfluxDB sorts a series key's tags anyway; sorted input saves it the
work). Why the timestamp of an unset clock is the gateway's: such a device reports 1970 timestamps, and
plotting those would put the points half a century before the shipment; ``skew_ms`` keeps the
difference. ``glitch`` and ``backfill`` are 0/1 integers rather than booleans because VictoriaMetrics
stores neither booleans nor strings meaningfully, and an integer sums into "glitches per hour".

Per-reading identifiers (``seq``) are fields, never tags: a tag per sequence number would make every
reading its own series.

Series cardinality. InfluxDB keys a series by measurement and tag set; VictoriaMetrics keys it by
``<measurement>_<field>`` plus labels, so it holds up to 11 series per ``reading`` tag set. A device's
tag set changes when its shipment or lots change, when it moves to another gateway or site (a
shipment travels), and when its clock quality changes (usually ``ok``, the odd ``skewed`` spell).
At any time a device is near one gateway with one shipment, so a fleet of D devices has about
2 x D active tag sets (InfluxDB series) and about 22 x D VictoriaMetrics series; every new shipment,
lot set or hop adds new ones (churn: old series go idle, the active set does not grow).
10,000 devices: ~20,000 InfluxDB series, ~220,000 VictoriaMetrics series. ``gap`` adds at most
3 tag sets per device and gateway, ``ingest_batch`` one per gateway.

Two points with the same measurement, tag set and timestamp are one point to the server (the later
write wins field by field): two readings of one device in the same millisecond with the same tags
collapse, as do two readings of an unset-clock device received in the same gateway millisecond.
``seq`` gaps in the stored data reveal it.

Escaping follows the line protocol reference: commas, equals signs and spaces in tag values (the
measurement names and keys are constants that need none). Backslashes, control characters (line
breaks above all) and empty values cannot be stored faithfully in a tag (InfluxDB 1.x keeps
``\\\\`` as two characters; a trailing backslash escapes the separator), so a tag value containing
one is refused with ValueError rather than altered. Coldtrace identifiers
(``[A-Za-z0-9][A-Za-z0-9._-]{0,63}``) never contain them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from coldtrace.contract import ClockQuality, Flag, Marker, Reading

READING_MEASUREMENT = "reading"
GAP_MEASUREMENT = "gap"
BATCH_MEASUREMENT = "ingest_batch"

_ESCAPE_TAG = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
#: Backslashes and control characters (line breaks above all) do not survive a round trip.
_UNREPRESENTABLE = re.compile(r"[\\\x00-\x1f\x7f]")

ProfileOf = Callable[[Reading], str | None]


def escape_tag(value: str) -> str:
    """``value`` escaped for a tag key or tag value (commas, equals signs and spaces).

    Raises ValueError for a value line protocol cannot carry unchanged: empty, or containing a
    backslash or a control character (line feed, carriage return, tab, ...).
    """
    if not value or _UNREPRESENTABLE.search(value):
        raise ValueError(f"tag value {value!r} cannot be written as line protocol unchanged")
    return value.translate(_ESCAPE_TAG)


def _reading_prefix(
    *,
    clock: ClockQuality,
    device: str,
    gateway_tag: str,
    lots: tuple[str, ...],
    profile: str | None,
    shipment: str | None,
    site: str,
) -> str:
    # Tags in key order: InfluxDB sorts a series key's tags anyway; pre-sorted input skips that work.
    parts = [READING_MEASUREMENT, f"clock={clock.value}", f"device={escape_tag(device)}"]
    parts.append(f"gateway={gateway_tag}")  # escaped once per call by the caller
    if lots:
        parts.append(f"lots={escape_tag(','.join(lots))}")
    if profile is not None:
        parts.append(f"profile={escape_tag(profile)}")
    if shipment is not None:
        parts.append(f"shipment={escape_tag(shipment)}")
    parts.append(f"site={escape_tag(site)}")
    return ",".join(parts)


#: A reading line's tag set: (gateway, site, device, shipment, lots, clock, profile).
PrefixKey = tuple[str, str, str, str | None, tuple[str, ...], ClockQuality, str | None]


def reading_lines(
    readings: Iterable[Reading],
    *,
    gateway_id: str,
    profile_of: ProfileOf | None = None,
    prefixes: dict[PrefixKey, str] | None = None,
) -> str:
    """Line protocol for ``readings`` of gateway ``gateway_id``: one ``reading`` line each, "\\n"-joined.

    ``profile_of`` names a reading's temperature profile (the ``profile`` tag), None for no tag. The
    schema is in this module's docstring. Raises ValueError for a tag value that cannot be written
    (see :func:`escape_tag`); contract-valid readings never produce one.

    ``prefixes`` caches each tag set's escaped prefix; pass the same dict to every call (and bound
    its size) so a fleet's few thousand tag sets are escaped once, not once per batch.
    """
    gateway_tag = escape_tag(gateway_id)
    # A batch holds many readings of few devices: the tag prefix is built once per distinct tag set.
    if prefixes is None:
        prefixes = {}
    unset = ClockQuality.UNSET
    glitch_flag = Flag.GLITCH
    backfill_flag = Flag.BACKFILL
    lines: list[str] = []
    append = lines.append
    for r in readings:
        profile = None if profile_of is None else profile_of(r)
        clock = r.clock
        key = (gateway_id, r.site_id, r.device_id, r.shipment_id, r.lot_ids, clock, profile)
        prefix = prefixes.get(key)
        if prefix is None:
            prefix = prefixes[key] = _reading_prefix(
                clock=clock,
                device=r.device_id,
                gateway_tag=gateway_tag,
                lots=r.lot_ids,
                profile=profile,
                shipment=r.shipment_id,
                site=r.site_id,
            )
        # repr() is the shortest text that parses back to the same double; the contract forbids
        # nan/inf, which line protocol cannot carry.
        values = ""
        if (v := r.temperature_c) is not None:
            values += f"temperature_c={v!r},"
        if (v := r.humidity_pct) is not None:
            values += f"humidity_pct={v!r},"
        if (v := r.shock_g) is not None:
            values += f"shock_g={v!r},"
        if (v := r.battery_v) is not None:
            values += f"battery_v={v!r},"
        if (v := r.lat) is not None:
            values += f"lat={v!r},lon={r.lon!r},"
        if (v := r.anomaly_score) is not None:
            values += f"anomaly_score={v!r},"
        flags = r.flags
        t_device = r.t_device_ms
        t_gateway = r.t_gateway_ms
        append(
            f"{prefix} {values}seq={r.seq}i,skew_ms={t_gateway - t_device}i,"
            f"glitch={int(glitch_flag in flags)}i,backfill={int(backfill_flag in flags)}i "
            f"{t_gateway if clock is unset else t_device}"
        )
    return "\n".join(lines)


def marker_lines(markers: Iterable[Marker], *, gateway_id: str, site_id: str | None) -> str:
    """Line protocol for gap markers: one ``gap`` line each, so thinned or missing data shows on a chart.

    The timestamp is the gap's ``t_from_ms`` (device time: a marker carries no clock quality, so an
    unset device clock puts it in 1970). Raises ValueError for a tag value that cannot be written.
    """
    tail = f",gateway={escape_tag(gateway_id)}"
    site = "" if site_id is None else f",site={escape_tag(site_id)}"
    return "\n".join(
        f"{GAP_MEASUREMENT},device={escape_tag(m.device_id)}{tail},kind={m.kind.value}{site} "
        f"count={m.count}i,seq_from={m.seq_from}i,seq_to={m.seq_to}i,t_to_ms={m.t_to_ms}i {m.t_from_ms}"
        for m in markers
    )


def batch_line(
    *,
    gateway_id: str,
    site_id: str | None,
    batch_seq: int,
    readings: int,
    markers: int,
    lag_ms: int,
    received_ms: int,
) -> str:
    """One ``ingest_batch`` line: what a gateway's batch carried and how late it arrived.

    ``lag_ms`` is the caller's measure of delay (e.g. receive time minus batch creation time);
    the timestamp is ``received_ms``. Raises ValueError for a tag value that cannot be written.
    """
    site = "" if site_id is None else f",site={escape_tag(site_id)}"
    return (
        f"{BATCH_MEASUREMENT},gateway={escape_tag(gateway_id)}{site} "
        f"batch_seq={batch_seq}i,readings={readings}i,markers={markers}i,lag_ms={lag_ms}i {received_ms}"
    )
