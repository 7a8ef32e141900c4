"""Logger battery: charge drawn by sleeping, sampling and transmitting; cold derating; voltage.

The state is the charge drawn so far, which only grows. What that leaves depends on the temperature:
a cold cell delivers less of its rated capacity (its reaction slows and the voltage under load reaches
cut-off sooner), and gives most of it back when it warms, so the derating applies to the usable
capacity at the current temperature rather than to the charge already drawn. Voltage follows the
state of charge along a lithium-thionyl-chloride (Li-SOCl2) discharge curve: ~3.6 V almost all the
way, then a steep drop to the 3.0 V cut-off in the last few percent.

Default parameters (an AA bobbin Li-SOCl2 cell such as the ER14505 class; assumptions shaped on
typical datasheet curves, not one vendor's data):

- 2600 mAh rated at +20 °C and low current;
- usable fraction 100 % from +20 °C up, 80 % at 0 °C, 60 % at -20 °C, 45 % at -40 °C (linear between);
- 10 uA sleep (MCU, RTC, sensor standby), 0.5 uAh per sample (~5 mA for ~0.35 s),
  30 uAh per transmission (a short-range radio burst, ~40 mA for ~2.7 s; cellular is ~10x more).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from firmware_sim.physics._checks import require_finite_positive, require_non_negative

Curve = tuple[tuple[float, float], ...]

#: Usable fraction of rated capacity by cell temperature, (°C, fraction); flat beyond the ends.
LI_SOCL2_DERATING: Curve = ((-40.0, 0.45), (-20.0, 0.60), (0.0, 0.80), (20.0, 1.0))

#: Voltage under a light load by state of charge, (fraction, V): flat plateau, steep end of life.
LI_SOCL2_VOLTAGE: Curve = (
    (0.0, 3.00),
    (0.02, 3.30),
    (0.05, 3.45),
    (0.10, 3.52),
    (0.30, 3.58),
    (1.0, 3.65),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class BatteryParams:
    """A logger's cell and its power budget (defaults: AA Li-SOCl2 cell, short-range radio)."""

    capacity_mah: float = 2600.0  #: rated capacity at +20 °C, mAh
    sleep_ua: float = 10.0  #: continuous draw between activities, uA
    sample_uah: float = 0.5  #: charge per sensor sample, uAh
    transmit_uah: float = 30.0  #: charge per transmission, uAh
    derating: Curve = LI_SOCL2_DERATING  #: usable fraction of capacity by temperature, (°C, 0..1]
    voltage: Curve = LI_SOCL2_VOLTAGE  #: volts by state of charge, (0..1, V), rising with charge

    def __post_init__(self) -> None:
        require_finite_positive(capacity_mah=self.capacity_mah)
        require_non_negative(
            sleep_ua=self.sleep_ua, sample_uah=self.sample_uah, transmit_uah=self.transmit_uah
        )
        _check_curve("derating", self.derating)
        _check_curve("voltage", self.voltage)
        if not all(0 < fraction <= 1 for _, fraction in self.derating):
            raise ValueError("derating fractions must lie in (0, 1]")
        if [v for _, v in self.voltage] != sorted(v for _, v in self.voltage):
            raise ValueError("voltage must not fall as the state of charge rises")

    @property
    def cutoff_v(self) -> float:
        """Voltage at which the cell counts as empty (the curve's value at zero charge), V."""
        return _interpolate(self.voltage, 0.0)


@dataclass(frozen=True, slots=True)
class BatteryInputs:
    """What the device did during one step."""

    temperature_c: float  #: cell temperature, °C (does not change the charge drawn)
    samples: int = 0  #: sensor samples taken
    transmissions: int = 0  #: radio transmissions sent


@dataclass(frozen=True, slots=True)
class BatteryState:
    """The cell at one instant."""

    used_mah: float = 0.0  #: charge drawn since it was new, mAh


def step(state: BatteryState, params: BatteryParams, dt_s: float, inputs: BatteryInputs) -> BatteryState:
    """Charge drawn over ``dt_s`` seconds of sleep plus the step's samples and transmissions."""
    if not dt_s >= 0:
        raise ValueError(f"dt_s must be >= 0, got {dt_s!r}")
    if inputs.samples < 0 or inputs.transmissions < 0:
        raise ValueError("samples and transmissions must be >= 0")
    drawn_uah = (
        params.sleep_ua * dt_s / 3600.0
        + params.sample_uah * inputs.samples
        + params.transmit_uah * inputs.transmissions
    )
    return BatteryState(used_mah=state.used_mah + drawn_uah / 1000.0)


def usable_fraction(params: BatteryParams, temperature_c: float) -> float:
    """Fraction of rated capacity the cell can deliver at ``temperature_c``."""
    return _interpolate(params.derating, temperature_c)


def state_of_charge(state: BatteryState, params: BatteryParams, temperature_c: float) -> float:
    """Fraction of the charge usable at ``temperature_c`` that is left, 0..1."""
    usable_mah = params.capacity_mah * usable_fraction(params, temperature_c)
    return min(1.0, max(0.0, 1.0 - state.used_mah / usable_mah))


def volts(state: BatteryState, params: BatteryParams, temperature_c: float) -> float:
    """Terminal voltage under a light load at ``temperature_c``, V."""
    return _interpolate(params.voltage, state_of_charge(state, params, temperature_c))


def is_depleted(state: BatteryState, params: BatteryParams, temperature_c: float) -> bool:
    """The cell has reached its cut-off at ``temperature_c`` (it may recover some charge when warmer)."""
    return state_of_charge(state, params, temperature_c) <= 0.0


def _interpolate(curve: Curve, x: float) -> float:
    """Piecewise-linear ``curve`` at ``x``, held flat beyond its ends."""
    xs = [point[0] for point in curve]
    if x <= xs[0]:
        return curve[0][1]
    if x >= xs[-1]:
        return curve[-1][1]
    i = bisect.bisect_right(xs, x)
    (x0, y0), (x1, y1) = curve[i - 1], curve[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def _check_curve(name: str, curve: Sequence[tuple[float, float]]) -> None:
    xs = [point[0] for point in curve]
    if len(xs) < 2 or any(b <= a for a, b in itertools.pairwise(xs)):
        raise ValueError(f"{name} needs at least two points with strictly increasing x")
