"""Hypothesis strategies for valid contract documents."""

from __future__ import annotations

from hypothesis import strategies as st

from coldtrace.contract import (
    GENESIS_HASH,
    Batch,
    ClockQuality,
    Flag,
    Marker,
    MarkerKind,
    Reading,
    SourceFormat,
)
from coldtrace.contract.limits import DEVICE_TS_MIN_MS, GATEWAY_TS_MIN_MS, MAX_SAFE_INT, TS_MAX_MS

identifiers = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
model_refs = st.builds(
    lambda name, digest: f"{name}@{digest}", identifiers, st.from_regex(r"\A[0-9a-f]{16}\Z")
)
device_ts = st.integers(DEVICE_TS_MIN_MS, TS_MAX_MS - 1)
gateway_ts = st.integers(GATEWAY_TS_MIN_MS, TS_MAX_MS - 1)


def _bounded(lo: float, hi: float) -> st.SearchStrategy[float | None]:
    return st.none() | st.floats(lo, hi, allow_nan=False, allow_infinity=False)


@st.composite
def readings(draw: st.DrawFn, device_id: str | None = None) -> Reading:
    """Any valid reading, bound or unbound, with or without a score and a position."""
    bound = draw(st.booleans())
    shipment = draw(st.none() | identifiers) if bound else None
    lots = (
        tuple(sorted(draw(st.sets(identifiers, min_size=0 if shipment else 1, max_size=4)))) if bound else ()
    )
    position = draw(st.none() | st.tuples(st.floats(-90, 90), st.floats(-180, 180)))
    temperature = draw(_bounded(-100, 150))
    if temperature is None and position is None:
        temperature = draw(st.floats(-100, 150))
    scored = draw(st.booleans())
    return Reading(
        anomaly_score=draw(st.floats(0, 1)) if scored else None,
        battery_v=draw(_bounded(0, 60)),
        bound=bound,
        clock=draw(st.sampled_from(ClockQuality)),
        device_id=device_id or draw(identifiers),
        flags=tuple(sorted(draw(st.sets(st.sampled_from(Flag))))),
        humidity_pct=draw(_bounded(0, 100)),
        lat=None if position is None else position[0],
        lon=None if position is None else position[1],
        lot_ids=lots,
        manifest_version=draw(st.none() | st.integers(1, MAX_SAFE_INT)),
        model=draw(model_refs) if scored else None,
        seq=draw(st.integers(0, MAX_SAFE_INT)),
        shipment_id=shipment,
        shock_g=draw(_bounded(0, 500)),
        site_id=draw(identifiers),
        source_format=draw(st.sampled_from(SourceFormat)),
        t_device_ms=draw(device_ts),
        t_gateway_ms=draw(gateway_ts),
        temperature_c=temperature,
    )


@st.composite
def markers(draw: st.DrawFn) -> Marker:
    """Any valid gap marker."""
    seq_from = draw(st.integers(0, MAX_SAFE_INT))
    seq_to = draw(st.integers(seq_from, MAX_SAFE_INT))
    t_from = draw(device_ts)
    return Marker(
        count=draw(st.integers(1, min(seq_to - seq_from + 1, MAX_SAFE_INT))),
        device_id=draw(identifiers),
        kind=draw(st.sampled_from(MarkerKind)),
        seq_from=seq_from,
        seq_to=seq_to,
        t_from_ms=t_from,
        t_to_ms=draw(st.integers(t_from, TS_MAX_MS - 1)),
    )


@st.composite
def batches(draw: st.DrawFn, max_readings: int = 8, *, max_markers: int = 2, min_seq: int = 1) -> Batch:
    """Any valid batch body (of at most ``max_markers`` markers, with a sequence of ``min_seq`` or more)."""
    seq = draw(st.integers(min_seq, MAX_SAFE_INT))
    marker_list = tuple(draw(st.lists(markers(), max_size=max_markers)))
    reading_list = tuple(draw(st.lists(readings(), min_size=0 if marker_list else 1, max_size=max_readings)))
    return Batch(
        batch_seq=seq,
        created_ms=draw(gateway_ts),
        gateway_id=draw(identifiers),
        markers=marker_list,
        prev_hash=GENESIS_HASH if seq == 1 else draw(st.from_regex(r"\A[0-9a-f]{64}\Z")),
        readings=reading_list,
        schema_version=1,
    )
