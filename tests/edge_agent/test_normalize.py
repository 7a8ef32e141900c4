"""Normalisation: device values and timestamps kept as sent, clocks judged, readings bound by event time."""

from __future__ import annotations

from pathlib import Path

from coldtrace.contract import ClockQuality, Flag, SourceFormat
from coldtrace.device_formats import DeviceMessage, DeviceSample
from coldtrace.profiles import ProfileName
from edge_agent.normalize import ClockPolicy, Normalizer
from gateway.registry import Registry
from tests.gateway.test_registry import T0, manifest


def _normalizer(tmp_path: Path) -> Normalizer:
    registry = Registry(tmp_path / "m.json", gateway_id="gw-0")
    registry.apply(manifest(7))
    return Normalizer(registry=registry, site_id="fallback-site", policy=ClockPolicy())


def _message(*samples: DeviceSample, device_id: str = "reefer-1") -> DeviceMessage:
    return DeviceMessage(
        device_id=device_id, firmware="2.4.1", format=SourceFormat.VENDOR_A_JSON, samples=samples
    )


def test_values_and_device_time_are_kept_and_binding_follows_event_time(tmp_path: Path) -> None:
    normalizer = _normalizer(tmp_path)
    # Taken before the move at T0+1h, received after it: bound to the shipment of when it was taken.
    sample = DeviceSample(seq=4, t_device_ms=T0 + 3_599_000, temperature_c=5.25, humidity_pct=71.0)
    [out] = normalizer.normalize(_message(sample), t_gateway_ms=T0 + 3_600_500)
    r = out.reading
    assert (r.temperature_c, r.humidity_pct, r.t_device_ms, r.seq) == (5.25, 71.0, T0 + 3_599_000, 4)
    assert r.t_gateway_ms == T0 + 3_600_500
    assert r.skew_ms == 1_500
    assert (r.bound, r.shipment_id, r.lot_ids, r.manifest_version) == (True, "SHP-A", ("LOT-1",), 7)
    assert out.profile is ProfileName.VACCINES
    assert r.site_id == "wh-hamburg"
    assert r.clock is ClockQuality.OK


def test_unbound_device_is_kept_and_flagged_unbound(tmp_path: Path) -> None:
    [out] = _normalizer(tmp_path).normalize(
        _message(DeviceSample(seq=1, t_device_ms=T0, temperature_c=3.0), device_id="room-2"), t_gateway_ms=T0
    )
    assert not out.reading.bound
    assert out.reading.shipment_id is None
    assert out.profile is None


def test_clock_quality_is_flagged_never_corrected(tmp_path: Path) -> None:
    normalizer = _normalizer(tmp_path)
    unset = DeviceSample(seq=1, t_device_ms=42_000, temperature_c=3.0)
    ahead = DeviceSample(seq=2, t_device_ms=T0 + 10 * 60_000, temperature_c=3.0)
    late_live = DeviceSample(seq=3, t_device_ms=T0 - 10 * 60_000, temperature_c=3.0)
    late_buffered = DeviceSample(seq=4, t_device_ms=T0 - 10 * 60_000, temperature_c=3.0, buffered=True)
    clocks = [
        normalizer.normalize(_message(s, device_id=f"d{i}"), t_gateway_ms=T0)[0].reading
        for i, s in enumerate((unset, ahead, late_live, late_buffered))
    ]
    assert [r.clock for r in clocks] == [
        ClockQuality.UNSET,
        ClockQuality.SKEWED,
        ClockQuality.SKEWED,
        ClockQuality.OK,
    ]
    assert [r.t_device_ms for r in clocks] == [42_000, T0 + 600_000, T0 - 600_000, T0 - 600_000]
    assert Flag.DEVICE_BUFFERED in clocks[3].flags
    # An unset clock binds by arrival time.
    assert clocks[0].device_id == "d0"


def test_clock_jump_and_out_of_order_are_flagged(tmp_path: Path) -> None:
    normalizer = _normalizer(tmp_path)
    first = normalizer.normalize(
        _message(DeviceSample(seq=10, t_device_ms=T0, temperature_c=4.0)), t_gateway_ms=T0
    )
    assert first[0].reading.clock is ClockQuality.OK
    jumped = normalizer.normalize(
        _message(DeviceSample(seq=11, t_device_ms=T0 - 3_600_000 + 10_000, temperature_c=4.0)),
        t_gateway_ms=T0 + 10_000,
    )
    assert jumped[0].reading.clock is ClockQuality.JUMPED
    late = normalizer.normalize(
        _message(DeviceSample(seq=9, t_device_ms=T0 - 10_000, temperature_c=4.0)), t_gateway_ms=T0 + 20_000
    )
    assert Flag.OUT_OF_ORDER in late[0].reading.flags


def test_sample_without_any_quantity_is_skipped_and_counted(tmp_path: Path) -> None:
    normalizer = _normalizer(tmp_path)
    out = normalizer.normalize(
        _message(
            DeviceSample(seq=1, t_device_ms=T0, sensor_fault=True),
            DeviceSample(seq=2, t_device_ms=T0, battery_v=3.6),
        ),
        t_gateway_ms=T0,
    )
    assert [n.reading.seq for n in out] == [2]
    assert normalizer.empty_samples == 1
