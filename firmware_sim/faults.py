"""Fault injection with ground truth: sensor faults on the temperature channel, transport faults on messages.

Every draw comes from the device's own ``numpy.random.Generator``, so a seed reproduces the faults.
Fault magnitudes are documented here because the anomaly filter is scored against them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from firmware_sim.scenario import FaultRates
from firmware_sim.truth import Label

#: A spike is this far from the true value, in K (either sign).
SPIKE_MIN_K, SPIKE_MAX_K = 8.0, 25.0
#: A stuck sensor repeats its last value for this many samples.
STUCK_MIN_SAMPLES, STUCK_MAX_SAMPLES = 6, 60
#: A drifting sensor's offset grows at this rate (K per hour, either sign) for this many samples.
DRIFT_MIN_K_PER_H, DRIFT_MAX_K_PER_H = 1.0, 4.0
DRIFT_MIN_SAMPLES, DRIFT_MAX_SAMPLES = 30, 360
#: A replay resends one of this many most recent messages.
REPLAY_HISTORY = 100


def fahrenheit_to_celsius(value_f: float) -> float:
    """°F → °C."""
    return (value_f - 32.0) * 5.0 / 9.0


@dataclass(slots=True)
class SensorFaults:
    """Per-device state of the temperature sensor's faults."""

    stuck_value: float | None = None
    stuck_left: int = 0
    drift_offset_k: float = 0.0
    drift_rate_k_per_s: float = 0.0
    drift_left: int = 0

    def apply(
        self, true_c: float, *, rates: FaultRates, multiplier: float, dt_s: float, rng: np.random.Generator,
        last_reported: float | None, wrong_units_allowed: bool,
    ) -> tuple[float | None, Label]:  # fmt: skip
        """The temperature the sensor reports for ``true_c``, and its label."""
        if self.stuck_left > 0 and self.stuck_value is not None:
            self.stuck_left -= 1
            return self.stuck_value, Label.STUCK
        if self.drift_left > 0:
            self.drift_left -= 1
            self.drift_offset_k += self.drift_rate_k_per_s * dt_s
            return true_c + self.drift_offset_k, Label.DRIFT
        # One uniform draw picks at most one new fault, so the labels never overlap.
        u = float(rng.random())
        for label, rate in (
            (Label.SPIKE, rates.spike),
            (Label.STUCK, rates.stuck),
            (Label.DRIFT, rates.drift),
            (Label.DROPOUT, rates.dropout),
            (Label.WRONG_UNITS, rates.wrong_units if wrong_units_allowed else 0.0),
        ):
            p = min(1.0, rate * multiplier)
            if u < p:
                return self._start(label, true_c, dt_s=dt_s, rng=rng, last_reported=last_reported)
            u -= p
        return true_c, Label.CLEAN

    def _start(
        self,
        label: Label,
        true_c: float,
        *,
        dt_s: float,
        rng: np.random.Generator,
        last_reported: float | None,
    ) -> tuple[float | None, Label]:
        if label is Label.SPIKE:
            sign = 1.0 if rng.random() < 0.5 else -1.0
            return true_c + sign * float(rng.uniform(SPIKE_MIN_K, SPIKE_MAX_K)), label
        if label is Label.STUCK:
            self.stuck_value = true_c if last_reported is None else last_reported
            self.stuck_left = int(rng.integers(STUCK_MIN_SAMPLES, STUCK_MAX_SAMPLES + 1)) - 1
            return self.stuck_value, label
        if label is Label.DRIFT:
            sign = 1.0 if rng.random() < 0.5 else -1.0
            self.drift_rate_k_per_s = sign * float(rng.uniform(DRIFT_MIN_K_PER_H, DRIFT_MAX_K_PER_H)) / 3600.0
            self.drift_left = int(rng.integers(DRIFT_MIN_SAMPLES, DRIFT_MAX_SAMPLES + 1)) - 1
            self.drift_offset_k = self.drift_rate_k_per_s * dt_s
            return true_c + self.drift_offset_k, label
        if label is Label.DROPOUT:
            return None, label
        # Wrong units: the firmware writes the °C number into the °F field, so the gateway reads
        # true_c as °F. Expressed in °C, the reported value is therefore F→C(true_c).
        return fahrenheit_to_celsius(true_c), label


class TransportFault(enum.StrEnum):
    """What happens to one message on its way to the broker."""

    NONE = "none"
    MALFORMED = "malformed"
    OUT_OF_ORDER = "out_of_order"
    DUPLICATE = "duplicate"
    REPLAY = "replay"


def draw_transport_fault(rates: FaultRates, rng: np.random.Generator) -> TransportFault:
    """At most one transport fault per message, by one uniform draw."""
    u = float(rng.random())
    for fault, rate in (
        (TransportFault.MALFORMED, rates.malformed),
        (TransportFault.OUT_OF_ORDER, rates.out_of_order),
        (TransportFault.DUPLICATE, rates.duplicate),
        (TransportFault.REPLAY, rates.replay),
    ):
        if u < rate:
            return fault
        u -= rate
    return TransportFault.NONE


def corrupt(payload: bytes, rng: np.random.Generator) -> bytes:
    """A corrupted copy of ``payload``: truncated, or with a run of garbage bytes written into it."""
    if len(payload) > 4 and rng.random() < 0.5:
        return payload[: int(rng.integers(1, len(payload) - 1))]
    start = int(rng.integers(0, max(1, len(payload) - 4)))
    garbage = rng.integers(0, 256, size=4, dtype=np.uint8).tobytes()
    corrupted = payload[:start] + garbage + payload[start + 4 :]
    # Make sure something changed (garbage may equal what it overwrote).
    return corrupted if corrupted != payload else payload[:-1]
