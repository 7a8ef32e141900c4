"""Walk-in cold room: a large thermal mass, evaporator defrost, and door traffic that follows the shifts.

Thermally a cold room is the refrigerated box of :mod:`firmware_sim.physics.reefer` with much longer time
constants, so it reuses that model (thermostat, defrost, exact stepping); this module adds the room's
parameters and its door traffic.

Default parameters (a 10 x 10 x 6 m chilled room at 3 °C holding ~2.5 t of produce; assumptions):

- ``tau_ambient_s`` = 24 h: 100 mm PIR panels (U ~ 0.22 W/m2K) over ~400 m2 give UA ~ 90 W/K; with
  ~7.8 MJ/K of stored heat capacity (2.5 t at ~3.2 kJ/kgK) that is 7.8e6 / 90 s ~ 24 h.
- ``tau_door_s`` = 75 min: an open 3 x 3 m dock door lets in roughly 30 kW at a 17 K difference
  (Gosney-Olama infiltration), i.e. ~1.8 kW/K, and 7.8 MJ/K / 1.8 kW/K ~ 75 min.
- Cooling toward -4 °C with ``tau_cooling_s`` = 1 h (~2 kW/K, ~14 kW at the setpoint): enough to recover
  from busy-shift door traffic.
- Defrost every 6 h for 30 min with a weak heater path (24 h to 20 °C): the mass barely notices.
- Traffic: busy 06-14 (12 openings/h) and 14-22 (8/h), quiet at night (1/h), ~40 s per opening.

Time is seconds from local midnight of the simulation's first day.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from firmware_sim.physics import reefer
from firmware_sim.physics._checks import require_finite_positive, require_non_negative
from firmware_sim.physics.reefer import HOUR_S, ReeferInputs, ReeferParams, ReeferState

DAY_S = 24 * HOUR_S

#: Thermal and control parameters of the default chilled cold room (see the module docstring).
COLD_ROOM_THERMAL = ReeferParams(
    setpoint_c=3.0,
    hysteresis_k=1.5,
    tau_ambient_s=24 * HOUR_S,
    supply_c=-4.0,
    tau_cooling_s=1 * HOUR_S,
    defrost_interval_s=6 * HOUR_S,
    defrost_duration_s=30 * 60.0,
    defrost_heater_c=20.0,
    tau_defrost_s=24 * HOUR_S,
    tau_door_s=75 * 60.0,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ShiftTraffic:
    """Door openings by shift (local hours; the night shift wraps past midnight)."""

    day_start_h: float = 6.0  #: start of the day shift, h of day
    evening_start_h: float = 14.0  #: start of the evening shift, h of day
    night_start_h: float = 22.0  #: start of the night shift, h of day
    day_rate_per_h: float = 12.0  #: mean door openings per hour on the day shift
    evening_rate_per_h: float = 8.0  #: mean door openings per hour on the evening shift
    night_rate_per_h: float = 1.0  #: mean door openings per hour at night
    mean_open_s: float = 40.0  #: mean time the door stays open per opening, s

    def __post_init__(self) -> None:
        if not 0 <= self.day_start_h < self.evening_start_h < self.night_start_h < 24:
            raise ValueError("shift starts must satisfy 0 <= day < evening < night < 24")
        require_non_negative(
            day_rate_per_h=self.day_rate_per_h,
            evening_rate_per_h=self.evening_rate_per_h,
            night_rate_per_h=self.night_rate_per_h,
        )
        require_finite_positive(mean_open_s=self.mean_open_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class ColdRoomParams:
    """A cold room: its thermal model and its door traffic."""

    thermal: ReeferParams = COLD_ROOM_THERMAL  #: thermostat, defrost and heat paths
    traffic: ShiftTraffic = field(default_factory=ShiftTraffic)  #: door openings by shift


@dataclass(frozen=True, slots=True)
class DoorEvent:
    """One door opening."""

    start_s: float  #: when the door opens, s from the simulation's local midnight
    duration_s: float  #: how long it stays open, s

    @property
    def end_s(self) -> float:
        """When the door closes, s."""
        return self.start_s + self.duration_s


@dataclass(frozen=True, slots=True)
class ColdRoomInputs:
    """What the world does to the room over one step."""

    ambient_c: float  #: air temperature outside the room (dock, warehouse), °C
    door_open_s: float = 0.0  #: seconds of this step during which the door is open
    compressor_failed: bool = False  #: the refrigeration plant cannot run


def initial_state(params: ColdRoomParams, *, air_c: float | None = None) -> ReeferState:
    """A room at ``air_c`` (default: the setpoint), compressor off, a defrost just finished."""
    return reefer.initial_state(params.thermal, air_c=air_c)


def door_rate_per_h(traffic: ShiftTraffic, hour_of_day: float) -> float:
    """Mean door openings per hour at ``hour_of_day`` (any real; taken modulo 24)."""
    hour = hour_of_day % 24
    if traffic.day_start_h <= hour < traffic.evening_start_h:
        return traffic.day_rate_per_h
    if traffic.evening_start_h <= hour < traffic.night_start_h:
        return traffic.evening_rate_per_h
    return traffic.night_rate_per_h


def draw_door_events(
    rng: np.random.Generator, traffic: ShiftTraffic, *, start_s: float, duration_s: float
) -> tuple[DoorEvent, ...]:
    """Door openings in ``[start_s, start_s + duration_s)``, sorted by start.

    A Poisson process whose rate changes only at shift boundaries, drawn boundary to boundary (exact for
    a piecewise-constant rate). Open times are gamma-distributed (shape 2) around ``mean_open_s``: rarely
    a blink, sometimes several times the mean.
    """
    end_s = start_s + duration_s
    events: list[DoorEvent] = []
    for seg_start_s, seg_end_s in _shift_segments(traffic, start_s, end_s):
        rate_per_s = door_rate_per_h(traffic, seg_start_s / HOUR_S) / HOUR_S
        count = int(rng.poisson(rate_per_s * (seg_end_s - seg_start_s)))
        starts = np.sort(rng.uniform(seg_start_s, seg_end_s, size=count))
        opens = rng.gamma(2.0, traffic.mean_open_s / 2.0, size=count)
        events.extend(DoorEvent(float(s), float(d)) for s, d in zip(starts, opens, strict=True))
    return tuple(events)


def door_open_seconds(events: Iterable[DoorEvent], t0_s: float, t1_s: float) -> float:
    """Seconds within ``[t0_s, t1_s)`` during which at least one of ``events`` holds the door open."""
    intervals = sorted(
        (max(e.start_s, t0_s), min(e.end_s, t1_s)) for e in events if e.start_s < t1_s and e.end_s > t0_s
    )
    total_s = 0.0
    cursor_s = t0_s
    for lo_s, hi_s in intervals:
        uncounted_from_s = max(lo_s, cursor_s)  # overlapping openings count once
        if hi_s > uncounted_from_s:
            total_s += hi_s - uncounted_from_s
            cursor_s = hi_s
    return total_s


def step(state: ReeferState, params: ColdRoomParams, dt_s: float, inputs: ColdRoomInputs) -> ReeferState:
    """Advance the room by ``dt_s`` seconds.

    The door's open seconds are applied first, then the rest of the step with the door shut: exact for
    the total exposure, approximate only in where within the step it falls.
    """
    if not 0 <= inputs.door_open_s <= dt_s:
        raise ValueError(f"door_open_s must lie in [0, dt_s], got {inputs.door_open_s!r} for dt_s={dt_s!r}")
    opened = ReeferInputs(inputs.ambient_c, door_open=True, compressor_failed=inputs.compressor_failed)
    shut = ReeferInputs(inputs.ambient_c, door_open=False, compressor_failed=inputs.compressor_failed)
    state = reefer.step(state, params.thermal, inputs.door_open_s, opened)
    return reefer.step(state, params.thermal, dt_s - inputs.door_open_s, shut)


def _shift_segments(traffic: ShiftTraffic, start_s: float, end_s: float) -> list[tuple[float, float]]:
    """Split ``[start_s, end_s)`` at every shift boundary so the door rate is constant on each piece."""
    boundaries_h = (traffic.day_start_h, traffic.evening_start_h, traffic.night_start_h)
    cuts = {start_s, end_s}
    for day in range(math.floor(start_s / DAY_S), math.floor(end_s / DAY_S) + 1):
        cuts.update(day * DAY_S + h * HOUR_S for h in boundaries_h)
    points = sorted(c for c in cuts if start_s <= c <= end_s)
    return [(a, b) for a, b in itertools.pairwise(points) if b > a]
