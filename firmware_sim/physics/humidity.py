"""Relative humidity of the air in a closed box, following its temperature.

The conserved quantity is the water vapour partial pressure ``e`` (hPa): at constant total pressure a
closed box keeps its mixing ratio, so ``e`` does not change when the air warms or cools, while the
saturation pressure ``e_s(T)`` does. Relative humidity ``100 * e / e_s(T)`` therefore rises when the air
cools and falls when it warms. When cooling would push it past 100 % the excess condenses (on walls,
cargo, the coil) and is gone: ``e`` is capped at ``e_s(T)``.

Outside air mixes in with first-order exchange: slowly through gaps and vents (``tau_leak_s``), quickly
through an open door (``tau_door_s``); ``e`` relaxes toward the ambient vapour pressure.

Saturation pressure over water from the Magnus formula with the coefficients of Sonntag (1990), as
recommended by the WMO: ``e_s(T) = 6.112 hPa * exp(17.62 T / (243.12 + T))``, within ~0.3 % from -45
to 60 °C (below 0 °C this is over supercooled water, as hygrometers report it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from firmware_sim.physics._checks import require_finite_positive, require_positive

MAGNUS_E0_HPA = 6.112  #: saturation vapour pressure at 0 °C, hPa
MAGNUS_A = 17.62  #: Magnus coefficient, dimensionless
MAGNUS_B_C = 243.12  #: Magnus coefficient, °C


@dataclass(frozen=True, slots=True, kw_only=True)
class HumidityParams:
    """Air exchange with the outside (defaults: a reefer box; assumptions).

    A closed reefer with its fresh-air vent shut still exchanges air through door seals and drains
    (~0.1 air changes per hour, hence 10 h); an open door swaps the air within minutes.
    """

    tau_leak_s: float = 10 * 3600.0  #: box air -> ambient with the door shut, s (math.inf: sealed)
    tau_door_s: float = 5 * 60.0  #: box air -> ambient with the door open, s

    def __post_init__(self) -> None:
        require_positive(tau_leak_s=self.tau_leak_s)
        require_finite_positive(tau_door_s=self.tau_door_s)


@dataclass(frozen=True, slots=True)
class HumidityInputs:
    """Conditions over one step."""

    air_c: float  #: the box air temperature at the end of the step (from the thermal model), °C
    ambient_c: float  #: outside air temperature, °C
    ambient_rh_pct: float  #: outside relative humidity, % (0..100)
    door_open: bool = False  #: door open for the whole step


@dataclass(frozen=True, slots=True)
class HumidityState:
    """The box air's moisture at one instant."""

    air_c: float  #: air temperature, °C
    vapour_hpa: float  #: water vapour partial pressure, hPa

    @property
    def rh_pct(self) -> float:
        """Relative humidity, % (0..100)."""
        return relative_humidity_pct(self.vapour_hpa, self.air_c)


def saturation_vapour_hpa(temp_c: float) -> float:
    """Saturation vapour pressure over water at ``temp_c`` (Magnus/Sonntag 1990), hPa."""
    return MAGNUS_E0_HPA * math.exp(MAGNUS_A * temp_c / (MAGNUS_B_C + temp_c))


def relative_humidity_pct(vapour_hpa: float, temp_c: float) -> float:
    """Relative humidity of air at ``temp_c`` holding ``vapour_hpa`` of vapour, %, capped at 100."""
    return min(100.0, 100.0 * vapour_hpa / saturation_vapour_hpa(temp_c))


def state_at(air_c: float, rh_pct: float) -> HumidityState:
    """The state of air at ``air_c`` with relative humidity ``rh_pct`` (%, 0..100)."""
    if not 0.0 <= rh_pct <= 100.0:
        raise ValueError(f"rh_pct must lie in [0, 100], got {rh_pct!r}")
    return HumidityState(air_c=air_c, vapour_hpa=rh_pct / 100.0 * saturation_vapour_hpa(air_c))


def step(state: HumidityState, params: HumidityParams, dt_s: float, inputs: HumidityInputs) -> HumidityState:
    """Advance by ``dt_s`` seconds: exchange vapour with the outside, then condense any excess."""
    if not dt_s >= 0:
        raise ValueError(f"dt_s must be >= 0, got {dt_s!r}")
    if not 0.0 <= inputs.ambient_rh_pct <= 100.0:
        raise ValueError(f"ambient_rh_pct must lie in [0, 100], got {inputs.ambient_rh_pct!r}")
    ambient_hpa = inputs.ambient_rh_pct / 100.0 * saturation_vapour_hpa(inputs.ambient_c)
    rate_per_s = 1.0 / params.tau_leak_s + (1.0 / params.tau_door_s if inputs.door_open else 0.0)
    vapour_hpa = ambient_hpa + (state.vapour_hpa - ambient_hpa) * math.exp(-dt_s * rate_per_s)
    vapour_hpa = min(vapour_hpa, saturation_vapour_hpa(inputs.air_c))
    return HumidityState(air_c=inputs.air_c, vapour_hpa=vapour_hpa)
