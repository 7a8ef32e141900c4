"""Hypothesis strategies for valid device messages, and a comparison that allows for quantisation."""

from __future__ import annotations

import dataclasses
import math

from hypothesis import strategies as st

from coldtrace.contract import SourceFormat
from coldtrace.contract.limits import TS_MAX_MS
from coldtrace.device_formats import DeviceMessage, DeviceSample
from coldtrace.device_formats.model import U32_MAX

identifiers = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")

#: Half a quantisation step per quantity, plus room for the float arithmetic of the scaling.
SLACK = 1e-9
TOLERANCE_A = dict.fromkeys(("temperature_c",), 1e-9)
TOLERANCE_B = {
    "temperature_c": 0.005 + SLACK,
    "humidity_pct": 0.005 + SLACK,
    "shock_g": 0.005 + SLACK,
    "battery_v": 0.0005 + SLACK,
    "lat": 5e-8 + SLACK,
    "lon": 5e-8 + SLACK,
}
TOLERANCE_C = {
    "temperature_c": 0.05 + SLACK,
    "humidity_pct": 0.05 + SLACK,
    "shock_g": 0.005 + SLACK,
    "battery_v": 0.005 + SLACK,
    "lat": 5e-7 + SLACK,
    "lon": 5e-7 + SLACK,
}


def versions(max_component: int = 999_999_999) -> st.SearchStrategy[str]:
    """Valid MAJOR.MINOR.PATCH strings."""
    component = st.integers(0, max_component)
    return st.builds(lambda a, b, c: f"{a}.{b}.{c}", component, component, component)


def _quantity(low: float, high: float) -> st.SearchStrategy[float | None]:
    return st.none() | st.floats(low, high)


@st.composite
def samples(draw: st.DrawFn) -> DeviceSample:
    """Any valid sample, with any combination of quantities."""
    position = draw(st.none() | st.tuples(st.floats(-90, 90), st.floats(-180, 180)))
    return DeviceSample(
        seq=draw(st.integers(0, U32_MAX)),
        t_device_ms=draw(st.integers(0, TS_MAX_MS - 1)),
        temperature_c=draw(_quantity(-100, 150)),
        humidity_pct=draw(_quantity(0, 100)),
        shock_g=draw(_quantity(0, 500)),
        battery_v=draw(_quantity(0, 60)),
        lat=None if position is None else position[0],
        lon=None if position is None else position[1],
        buffered=draw(st.booleans()),
        sensor_fault=draw(st.booleans()),
    )


@st.composite
def messages(
    draw: st.DrawFn,
    fmt: SourceFormat,
    *,
    max_component: int = 999_999_999,
    max_dropped: int = U32_MAX,
    max_samples: int = 8,
) -> DeviceMessage:
    """Any valid message in ``fmt`` (the caller narrows what the format cannot carry)."""
    return DeviceMessage(
        device_id=draw(identifiers),
        firmware=draw(versions(max_component)),
        format=fmt,
        samples=tuple(draw(st.lists(samples(), min_size=1, max_size=max_samples))),
        dropped=draw(st.integers(0, max_dropped)),
    )


def assert_close(actual: DeviceMessage, expected: DeviceMessage, tolerance: dict[str, float]) -> None:
    """``actual`` equals ``expected`` except for quantities within ``tolerance`` of each other."""
    assert dataclasses.replace(actual, samples=()) == dataclasses.replace(expected, samples=())
    assert len(actual.samples) == len(expected.samples)
    for got, want in zip(actual.samples, expected.samples, strict=True):
        for field in dataclasses.fields(DeviceSample):
            a, b = getattr(got, field.name), getattr(want, field.name)
            if field.name in tolerance and a is not None and b is not None:
                assert math.isclose(a, b, rel_tol=0, abs_tol=tolerance[field.name]), (field.name, a, b)
            else:
                assert a == b, (field.name, a, b)
