"""Mechanical shock: the peak acceleration a logger's accelerometer records in one sampling interval.

Values are peak dynamic acceleration in g with gravity removed. Three sources:

- road vibration while the truck moves: a baseline peak drawn each interval (0.1-0.5 g; ISTA/ASTM
  truck vibration spectra are ~0.5 g rms and below);
- forklift handling while the load is being handled: bumps at a Poisson rate, 1-3 g each;
- drops while handled: rare, 5-30 g (a pallet set down hard to a drop of ~30 cm onto concrete), drawn
  log-uniformly because small drops are far more common than large ones.

A stationary, untouched logger reads its noise floor (0-0.02 g). Randomness comes only from the
``numpy.random.Generator`` the caller passes, drawn in a fixed order, so a seed fixes the sequence.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

import numpy as np

from firmware_sim.physics._checks import require_finite_positive, require_non_negative


class ShockKind(enum.StrEnum):
    """What caused a shock."""

    VIBRATION = "vibration"  #: the baseline of a moving truck
    FORKLIFT = "forklift"  #: a bump while handled
    DROP = "drop"  #: a drop while handled


@dataclass(frozen=True, slots=True)
class GRange:
    """A closed range of peak accelerations, g."""

    low_g: float  #: smallest peak, g
    high_g: float  #: largest peak, g

    def __post_init__(self) -> None:
        require_non_negative(low_g=self.low_g, high_g=self.high_g)
        if self.low_g > self.high_g:
            raise ValueError(f"low_g {self.low_g} exceeds high_g {self.high_g}")

    def __contains__(self, value: object) -> bool:
        return isinstance(value, float | int) and self.low_g <= value <= self.high_g


@dataclass(frozen=True, slots=True, kw_only=True)
class ShockParams:
    """Magnitudes and rates of shocks (defaults: see the module docstring; assumptions)."""

    noise_g: GRange = field(default_factory=lambda: GRange(0.0, 0.02))  #: idle sensor noise, g
    vibration_g: GRange = field(default_factory=lambda: GRange(0.1, 0.5))  #: road vibration peak, g
    forklift_g: GRange = field(default_factory=lambda: GRange(1.0, 3.0))  #: forklift bump peak, g
    drop_g: GRange = field(default_factory=lambda: GRange(5.0, 30.0))  #: drop peak, g
    forklift_rate_per_h: float = 30.0  #: bumps per hour while handled
    drop_rate_per_h: float = 0.5  #: drops per hour while handled

    def __post_init__(self) -> None:
        require_non_negative(
            forklift_rate_per_h=self.forklift_rate_per_h, drop_rate_per_h=self.drop_rate_per_h
        )
        require_finite_positive(drop_low_g=self.drop_g.low_g)  # log-uniform needs a positive floor

    def range_of(self, kind: ShockKind) -> GRange:
        """The magnitude range of ``kind``."""
        match kind:
            case ShockKind.VIBRATION:
                return self.vibration_g
            case ShockKind.FORKLIFT:
                return self.forklift_g
            case ShockKind.DROP:
                return self.drop_g


@dataclass(frozen=True, slots=True)
class ShockInputs:
    """What the load is going through during the interval."""

    moving: bool = False  #: on a moving truck
    handling: bool = False  #: being moved by forklift or hand (loading, cross-docking)


@dataclass(frozen=True, slots=True)
class ShockEvent:
    """One shock."""

    kind: ShockKind  #: its cause
    peak_g: float  #: its peak, g


@dataclass(frozen=True, slots=True)
class ShockSample:
    """What the accelerometer reports for one interval."""

    peak_g: float  #: largest peak in the interval (baseline included), g
    events: tuple[ShockEvent, ...]  #: discrete shocks in the interval (vibration baseline excluded)


def draw_events(
    rng: np.random.Generator, params: ShockParams, dt_s: float, inputs: ShockInputs
) -> tuple[ShockEvent, ...]:
    """Discrete shocks (forklift bumps, drops) in an interval of ``dt_s`` seconds; none unless handled."""
    if not dt_s >= 0:
        raise ValueError(f"dt_s must be >= 0, got {dt_s!r}")
    if not inputs.handling:
        return ()
    hours = dt_s / 3600.0
    bumps = int(rng.poisson(params.forklift_rate_per_h * hours))
    drops = int(rng.poisson(params.drop_rate_per_h * hours))
    bump_g = rng.uniform(params.forklift_g.low_g, params.forklift_g.high_g, size=bumps)
    drop_g = np.exp(rng.uniform(math.log(params.drop_g.low_g), math.log(params.drop_g.high_g), size=drops))
    # exp(log(x)) can land a hair outside the range; clip so the documented bounds hold exactly.
    drop_g = np.clip(drop_g, params.drop_g.low_g, params.drop_g.high_g)
    return tuple(ShockEvent(ShockKind.FORKLIFT, float(g)) for g in bump_g) + tuple(
        ShockEvent(ShockKind.DROP, float(g)) for g in drop_g
    )


def sample(rng: np.random.Generator, params: ShockParams, dt_s: float, inputs: ShockInputs) -> ShockSample:
    """The peak g a logger observes over one sampling interval of ``dt_s`` seconds."""
    floor = params.vibration_g if inputs.moving else params.noise_g
    baseline_g = float(rng.uniform(floor.low_g, floor.high_g))
    events = draw_events(rng, params, dt_s, inputs)
    return ShockSample(peak_g=max([baseline_g, *(e.peak_g for e in events)]), events=events)
