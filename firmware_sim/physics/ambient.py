"""Outdoor air temperature: a daily sinusoid plus a slow, mean-reverting weather anomaly.

``ambient(t) = mean + amplitude * cos(2 pi (hour(t) - hour_of_max) / 24) + anomaly(t)``

The anomaly is an Ornstein-Uhlenbeck process (a random walk pulled back toward zero) rather than a
free random walk, so a month-long run does not drift off into implausible weather. It is stepped with
its exact discretisation, ``x' = x e^(-dt/tau) + sigma sqrt(1 - e^(-2 dt/tau)) N(0, 1)``, so its
statistics do not depend on the step size.

Defaults (a temperate summer day; assumptions): mean 20 °C, +/-6 K, warmest at 15:00 local, weather
anomaly with a standard deviation of 2 K and a correlation time of 2 days.

Time is seconds from local midnight of the simulation's first day.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from firmware_sim.physics._checks import require_finite, require_finite_positive, require_non_negative

DAY_S = 86_400.0


@dataclass(frozen=True, slots=True, kw_only=True)
class AmbientParams:
    """Daily cycle and weather variability of the outside air."""

    mean_c: float = 20.0  #: daily mean, °C
    amplitude_k: float = 6.0  #: half the daily swing, K
    hour_of_max: float = 15.0  #: local hour of the daily maximum, h (0..24)
    anomaly_sigma_k: float = 2.0  #: standard deviation of the weather anomaly, K (0: none)
    anomaly_tau_s: float = 2 * DAY_S  #: correlation time of the anomaly, s

    def __post_init__(self) -> None:
        require_finite(mean_c=self.mean_c)
        require_non_negative(
            amplitude_k=self.amplitude_k, hour_of_max=self.hour_of_max, anomaly_sigma_k=self.anomaly_sigma_k
        )
        require_finite_positive(anomaly_tau_s=self.anomaly_tau_s)


@dataclass(frozen=True, slots=True)
class AmbientState:
    """The weather anomaly at one instant."""

    anomaly_k: float = 0.0  #: departure from the daily cycle, K


def diurnal_c(params: AmbientParams, t_s: float) -> float:
    """The daily cycle alone at ``t_s``, °C."""
    hours = t_s / 3600.0
    return params.mean_c + params.amplitude_k * math.cos(2 * math.pi * (hours - params.hour_of_max) / 24.0)


def ambient_c(params: AmbientParams, state: AmbientState, t_s: float) -> float:
    """Outside air temperature at ``t_s`` with the anomaly ``state`` holds, °C."""
    return diurnal_c(params, t_s) + state.anomaly_k


def initial_state(rng: np.random.Generator, params: AmbientParams) -> AmbientState:
    """An anomaly drawn from the process's stationary distribution."""
    return AmbientState(float(rng.normal(0.0, params.anomaly_sigma_k)))


def step(state: AmbientState, params: AmbientParams, dt_s: float, rng: np.random.Generator) -> AmbientState:
    """Advance the anomaly by ``dt_s`` seconds (exact Ornstein-Uhlenbeck transition)."""
    if not dt_s >= 0:
        raise ValueError(f"dt_s must be >= 0, got {dt_s!r}")
    keep = math.exp(-dt_s / params.anomaly_tau_s)
    noise_k = params.anomaly_sigma_k * math.sqrt(1.0 - keep * keep) * float(rng.standard_normal())
    return AmbientState(state.anomaly_k * keep + noise_k)
