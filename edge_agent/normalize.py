"""Normalisation: a decoded device message becomes canonical readings, bound to what they protect.

Units are already SI (the vendor decoders convert). Here the gateway adds what only it knows: when it
received the message, how far the device clock can be trusted, which shipment and lots the device
travels with at the time each sample was taken, and quality flags. It never alters a device value or
timestamp: an implausible clock is flagged, not corrected.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from coldtrace.contract import ClockQuality, Flag, Reading
from coldtrace.contract.limits import GATEWAY_TS_MIN_MS
from coldtrace.device_formats import DeviceMessage, DeviceSample
from coldtrace.profiles import ProfileName
from gateway.registry import Registry


@dataclass(frozen=True, slots=True, kw_only=True)
class ClockPolicy:
    """How much device clock error is tolerated before a reading is flagged."""

    skew_tolerance_ms: int = 120_000
    """|gateway time - device time| beyond this, for a live sample, marks the clock skewed."""
    jump_threshold_ms: int = 300_000
    """A change of the device's clock offset beyond this between two live messages is a jump."""


@dataclass(frozen=True, slots=True)
class Normalized:
    """A reading and the product profile of what it is bound to (None when unbound)."""

    reading: Reading
    profile: ProfileName | None


@dataclass(slots=True)
class _DeviceState:
    max_seq: int = -1
    offset_ms: int | None = None
    """gateway time - device time at the last live message: transit plus clock error."""


@dataclass(slots=True)
class Normalizer:
    """Turns decoded device messages into unscored contract readings."""

    registry: Registry
    site_id: str
    policy: ClockPolicy = field(default_factory=ClockPolicy)
    _devices: dict[str, _DeviceState] = field(default_factory=dict)
    empty_samples: int = 0
    """Samples that carried no measured quantity (skipped: a reading must measure something)."""

    def normalize(self, message: DeviceMessage, *, t_gateway_ms: int) -> list[Normalized]:
        """The readings of ``message``, received at ``t_gateway_ms``."""
        state = self._devices.setdefault(message.device_id, _DeviceState())
        jumped = self._clock_jumped(state, message, t_gateway_ms)
        readings = []
        for sample in message.samples:
            if _empty(sample):
                self.empty_samples += 1
                continue
            readings.append(self._reading(message, sample, t_gateway_ms, state, jumped=jumped))
            state.max_seq = max(state.max_seq, sample.seq)
        return readings

    def _clock_jumped(self, state: _DeviceState, message: DeviceMessage, t_gateway_ms: int) -> bool:
        live = [s for s in message.samples if not s.buffered]
        if not live:
            return False
        offset = t_gateway_ms - live[-1].t_device_ms
        previous, state.offset_ms = state.offset_ms, offset
        return previous is not None and abs(offset - previous) > self.policy.jump_threshold_ms

    def _clock(self, sample: DeviceSample, t_gateway_ms: int, *, jumped: bool) -> ClockQuality:
        if sample.t_device_ms < GATEWAY_TS_MIN_MS:
            return ClockQuality.UNSET
        if jumped:
            return ClockQuality.JUMPED
        skew = t_gateway_ms - sample.t_device_ms
        # A buffered sample is legitimately old, but no sample can come from the future.
        ahead = skew < -self.policy.skew_tolerance_ms
        behind = not sample.buffered and skew > self.policy.skew_tolerance_ms
        return ClockQuality.SKEWED if ahead or behind else ClockQuality.OK

    def _reading(
        self,
        message: DeviceMessage,
        sample: DeviceSample,
        t_gateway_ms: int,
        state: _DeviceState,
        *,
        jumped: bool,
    ) -> Normalized:
        clock = self._clock(sample, t_gateway_ms, jumped=jumped)
        # Bind by when the sample was taken; an unset clock says nothing, so use the arrival time.
        event_ms = t_gateway_ms if clock is ClockQuality.UNSET else sample.t_device_ms
        bound = self.registry.bound(message.device_id, event_ms)
        flags = set()
        if sample.seq < state.max_seq:
            flags.add(Flag.OUT_OF_ORDER)
        if sample.buffered:
            flags.add(Flag.DEVICE_BUFFERED)
        if sample.sensor_fault:
            flags.add(Flag.SENSOR_FAULT)
        reading = Reading(
            battery_v=sample.battery_v,
            bound=bound is not None,
            clock=clock,
            device_id=message.device_id,
            flags=tuple(sorted(flags)),
            humidity_pct=sample.humidity_pct,
            lat=sample.lat,
            lon=sample.lon,
            lot_ids=bound.binding.lot_ids if bound else (),
            manifest_version=bound.manifest_version if bound else None,
            seq=sample.seq,
            shipment_id=bound.binding.shipment_id if bound else None,
            shock_g=sample.shock_g,
            site_id=self.registry.site_id or self.site_id,
            source_format=message.format,
            t_device_ms=sample.t_device_ms,
            t_gateway_ms=t_gateway_ms,
            temperature_c=sample.temperature_c,
        )
        return Normalized(reading, bound.binding.profile if bound else None)


def _empty(sample: DeviceSample) -> bool:
    return all(
        v is None
        for v in (sample.temperature_c, sample.humidity_pct, sample.shock_g, sample.battery_v, sample.lat)
    )
