"""One simulated logger: sampling, sequence numbers, its clock, its memory while offline, its faults.

A device is driven by the fleet at its sample times. It returns the messages it publishes at that time
(usually one, sometimes none while it fills a multi-sample message or is offline, sometimes several:
a catch-up after an outage, a duplicate, a replay) and records every sample's fate in the ground truth.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from coldtrace.contract import ContractError
from coldtrace.device_formats import DeviceMessage, DeviceSample, decode, encode
from coldtrace.device_formats.model import MAX_SAMPLES_PER_MESSAGE
from coldtrace.profiles import PROFILES
from firmware_sim.environment import Environment
from firmware_sim.faults import REPLAY_HISTORY, SensorFaults, TransportFault, corrupt, draw_transport_fault
from firmware_sim.firmware import UpdateResult, accept_update
from firmware_sim.scenario import FleetGroup, Scenario
from firmware_sim.truth import EventTruth, Fate, Label, PublishKind, PublishTruth, SampleTruth, TruthWriter

FIRMWARE_VERSION = "2.4.1"


@dataclass(frozen=True, slots=True)
class Emission:
    """One MQTT publication the fleet makes, at a simulated time."""

    t_sim_ms: int
    device_id: str
    gateway: int
    payload: bytes
    kind: PublishKind
    seqs: tuple[int, ...]


@dataclass(slots=True)
class _Pending:
    sample: DeviceSample
    t_sim_ms: int
    true_c: float
    label: Label
    excursion: bool


@dataclass(slots=True)
class _Sent:
    payload: bytes
    seqs: tuple[int, ...]
    pending: list[_Pending]


@dataclass(slots=True)
class Windows:
    """Time windows in ms (sorted, may overlap); answers "is t inside any of them"."""

    spans: list[tuple[int, int]] = field(default_factory=list)

    def add(self, start_ms: int, end_ms: int) -> None:
        """Add the window [start_ms, end_ms)."""
        bisect.insort(self.spans, (start_ms, end_ms))

    def contains(self, t_ms: int) -> bool:
        """True when ``t_ms`` lies in any window."""
        return any(start <= t_ms < end for start, end in self.spans)


@dataclass(slots=True, kw_only=True)
class SimDevice:
    """A logger on a reefer, in a cold room or on a pallet."""

    index: int
    device_id: str
    group: FleetGroup
    scenario: Scenario
    rng: np.random.Generator
    env: Environment
    start_ms: int
    truth: TruthWriter
    gateway: int = 0
    firmware: str = FIRMWARE_VERSION
    unset_clock: bool = False
    clock_offset_ms: int = 0
    drift_ppm: float = 0.0
    clock_jumps: list[tuple[int, int]] = field(default_factory=list)
    """(at simulated ms, step in ms) in time order."""
    gateway_moves: list[tuple[int, int]] = field(default_factory=list)
    """(at simulated ms, new gateway index) in time order."""
    offline: Windows = field(default_factory=Windows)
    glitch_storms: list[tuple[int, int, float]] = field(default_factory=list)
    seq: int = 0
    faults: SensorFaults = field(default_factory=SensorFaults)
    pending: list[_Pending] = field(default_factory=list)
    buffer: deque[_Pending] = field(default_factory=deque)
    dropped_since_report: int = 0
    held: _Sent | None = None
    history: deque[_Sent] = field(default_factory=lambda: deque(maxlen=REPLAY_HISTORY))
    last_reported: float | None = None

    # -- time ------------------------------------------------------------------------------------
    def device_time_ms(self, t_sim_ms: int) -> int:
        """What the device's own clock says at simulated time ``t_sim_ms``."""
        elapsed = t_sim_ms - self.start_ms
        if self.unset_clock:
            value = self.clock_offset_ms + elapsed  # counts from 1970: the RTC was never set
        else:
            value = t_sim_ms + self.clock_offset_ms + round(self.drift_ppm * 1e-6 * elapsed)
        value += sum(step for at, step in self.clock_jumps if t_sim_ms >= at)
        return max(0, value)

    def gateway_at(self, t_sim_ms: int) -> int:
        """The gateway the device reports to at ``t_sim_ms``."""
        current = self.gateway
        for at, target in self.gateway_moves:
            if t_sim_ms >= at:
                current = target
        return current

    def _multiplier(self, t_sim_ms: int) -> float:
        return max((m for start, end, m in self.glitch_storms if start <= t_sim_ms < end), default=1.0)

    # -- sampling --------------------------------------------------------------------------------
    def tick(self, t_sim_ms: int) -> list[Emission]:
        """Take the sample due at ``t_sim_ms`` and return what the device publishes now."""
        online = not self.offline.contains(t_sim_ms)
        will_send = online and len(self.pending) + 1 >= self.group.samples_per_message
        true = self.env.advance((t_sim_ms - self.start_ms) / 1000.0, transmitted=will_send)
        reported, label = self.faults.apply(
            true.temperature_c, rates=self.scenario.faults, multiplier=self._multiplier(t_sim_ms),
            dt_s=self.scenario.sample_interval_s, rng=self.rng, last_reported=self.last_reported,
            wrong_units_allowed=self.group.format.value == "vendor-a-json",
        )  # fmt: skip
        if reported is not None:
            reported = round(reported, 2)
            self.last_reported = reported
        sample = DeviceSample(
            seq=self.seq,
            t_device_ms=self.device_time_ms(t_sim_ms),
            temperature_c=reported,
            humidity_pct=round(true.humidity_pct, 1),
            shock_g=round(true.shock_g, 2),
            battery_v=round(true.battery_v, 2),
            lat=None if true.lat is None else round(true.lat, 6),
            lon=None if true.lon is None else round(true.lon, 6),
            buffered=not online,
            sensor_fault=label is Label.DROPOUT,
        )
        self.seq += 1
        excursion = not PROFILES[self.group.profile].temperature_in_range(true.temperature_c)
        entry = _Pending(sample, t_sim_ms, true.temperature_c, label, excursion)
        if not online:
            self._buffer(entry)
            return []
        emissions = self._catch_up(t_sim_ms)
        self.pending.append(entry)
        if len(self.pending) >= self.group.samples_per_message:
            emissions.extend(self._report(t_sim_ms, self.pending, PublishKind.NORMAL))
            self.pending = []
        return emissions

    def _buffer(self, entry: _Pending) -> None:
        # Offline: the multi-sample message in progress joins the device memory too.
        if self.pending:
            for p in self.pending:
                self._keep(p)
            self.pending = []
        self._keep(entry)

    def _keep(self, entry: _Pending) -> None:
        if len(self.buffer) >= self.scenario.device_buffer_samples:
            oldest = self.buffer.popleft()
            self.dropped_since_report += 1
            self._record(oldest, Fate.DEVICE_DROPPED, self.gateway_at(entry.t_sim_ms))
        self.buffer.append(entry)

    def _catch_up(self, t_sim_ms: int) -> list[Emission]:
        emissions: list[Emission] = []
        while self.buffer:
            chunk = [self.buffer.popleft() for _ in range(min(MAX_SAMPLES_PER_MESSAGE, len(self.buffer)))]
            for p in chunk:
                p.sample = replace(p.sample, buffered=True)
            emissions.extend(self._emit(t_sim_ms, chunk, PublishKind.BUFFERED))
        return emissions

    # -- publishing ------------------------------------------------------------------------------
    def _message(self, chunk: list[_Pending]) -> bytes:
        message = DeviceMessage(
            device_id=self.device_id, firmware=self.firmware, format=self.group.format,
            samples=tuple(p.sample for p in chunk), dropped=self.dropped_since_report,
        )  # fmt: skip
        self.dropped_since_report = 0
        return encode(message)

    def _emit(self, t_sim_ms: int, chunk: list[_Pending], kind: PublishKind) -> list[Emission]:
        payload = self._message(chunk)
        sent = _Sent(payload, tuple(p.sample.seq for p in chunk), chunk)
        self.history.append(sent)
        return [self._publish(t_sim_ms, sent, kind, Fate.SENT)]

    def _report(self, t_sim_ms: int, chunk: list[_Pending], kind: PublishKind) -> list[Emission]:
        """A regular report, with at most one transport fault."""
        payload = self._message(chunk)
        sent = _Sent(payload, tuple(p.sample.seq for p in chunk), chunk)
        fault = draw_transport_fault(self.scenario.faults, self.rng)
        out: list[Emission] = []
        if fault is TransportFault.MALFORMED:
            broken = _Sent(self._corrupt(payload), sent.seqs, chunk)
            return [self._publish(t_sim_ms, broken, PublishKind.MALFORMED, Fate.MALFORMED)]
        if fault is TransportFault.OUT_OF_ORDER and self.held is None:
            self.held = sent
            return []
        out.append(self._publish(t_sim_ms, sent, kind, Fate.SENT))
        if self.held is not None:
            out.append(self._publish(t_sim_ms, self.held, PublishKind.OUT_OF_ORDER, Fate.SENT))
            self.held = None
        if fault is TransportFault.DUPLICATE:
            out.append(self._publish(t_sim_ms, sent, PublishKind.DUPLICATE, None))
        elif fault is TransportFault.REPLAY and self.history:
            old = self.history[int(self.rng.integers(0, len(self.history)))]
            out.append(self._publish(t_sim_ms, old, PublishKind.REPLAY, None))
        self.history.append(sent)
        return out

    def _corrupt(self, payload: bytes) -> bytes:
        # Ground truth promises the corrupted message cannot be decoded: check, or try again.
        for _ in range(8):
            broken = corrupt(payload, self.rng)
            try:
                decode(broken)
            except ContractError:
                return broken
        return payload[:1]

    def _publish(self, t_sim_ms: int, sent: _Sent, kind: PublishKind, fate: Fate | None) -> Emission:
        gateway = self.gateway_at(t_sim_ms)
        if fate is not None:  # first publication of these samples: their fate is decided now
            for p in sent.pending:
                self._record(p, fate, gateway)
        self.truth.write(
            PublishTruth(
                device_id=self.device_id, gateway=gateway, t_sim_ms=t_sim_ms, seqs=sent.seqs, kind=kind,
                format=self.group.format.value, size=len(sent.payload),
            )
        )  # fmt: skip
        return Emission(t_sim_ms, self.device_id, gateway, sent.payload, kind, sent.seqs)

    def _record(self, p: _Pending, fate: Fate, gateway: int) -> None:
        self.truth.write(
            SampleTruth(
                device_id=self.device_id, gateway=gateway, seq=p.sample.seq, t_sim_ms=p.t_sim_ms,
                t_device_ms=p.sample.t_device_ms, true_temperature_c=round(p.true_c, 4),
                reported_temperature_c=p.sample.temperature_c, label=p.label, excursion=p.excursion,
                fate=fate,
            )
        )  # fmt: skip

    @property
    def model(self) -> str:
        """The device model a firmware image must be built for (one per vendor format)."""
        return f"{self.group.format.value}-logger"

    def offer_firmware(self, image: bytes, vendor_key: Ed25519PublicKey, t_sim_ms: int) -> UpdateResult:
        """Install a firmware image if its vendor signature, hash, model and version check out.

        The outcome is reported in the ground truth; an accepted version shows in every later message.
        """
        result = accept_update(self.firmware, self.model, image, vendor_key)
        if result.accepted:
            self.firmware = result.version
        outcome = (
            f"installed {result.version}" if result.accepted else f"refused {result.offered}: {result.reason}"
        )
        self.truth.write(
            EventTruth(t_sim_ms=t_sim_ms, kind="firmware_update", devices=(self.device_id,), detail=outcome)
        )
        return result

    def finish(self, t_sim_ms: int) -> list[Emission]:
        """End of the run: send what is held or half-filled; what is still in device memory stays unsent."""
        out: list[Emission] = []
        if self.held is not None:  # no successor came: it is late, but still in order
            out.append(self._publish(t_sim_ms, self.held, PublishKind.NORMAL, Fate.SENT))
            self.held = None
        if self.pending:
            out.extend(self._emit(t_sim_ms, self.pending, PublishKind.NORMAL))
            self.pending = []
        for p in self.buffer:
            self._record(p, Fate.UNSENT, self.gateway_at(t_sim_ms))
        self.buffer.clear()
        return out
