"""Refrigerated container (reefer): thermostat with hysteresis, timed defrost, door openings, failure.

The state is one lumped temperature: the return air a logger in the box measures. The cargo's thermal
mass is folded into the time constants, so the model is meant for the sensor signal; it overstates how
fast the core of the cargo follows a door opening.

Heat paths (see :mod:`firmware_sim.physics.thermal`), each a first-order coupling:

- ambient, always, through the insulated walls (``tau_ambient_s``);
- ambient through the open door (``tau_door_s``, much shorter) while the door is open;
- the evaporator's supply air (``supply_c``, ``tau_cooling_s``) while the compressor runs;
- the defrost heater (``defrost_heater_c``, ``tau_defrost_s``) while defrosting; the compressor is off.

The step is integrated exactly and event by event: within a step the model advances to the next
thermostat switch or defrost start/end (found analytically), switches, and goes on. The result does not
depend on the step size, and the thermostat never overshoots its band between samples.

Default parameters (a loaded 40 ft chilled reefer at 5 °C; assumptions, not measurements):

- ``tau_ambient_s`` = 4 h. A 40 ft high-cube box has ~120 m2 of wall at a K-value of ~0.35-0.4 W/m2K
  (ATP class FRC limit 0.4), so UA ~ 45 W/K. The heat capacity that exchanges with the air within
  hours (air, lining, the outer layer of the cargo) is taken as ~650 kJ/K, and 650 kJ/K / 45 W/K ~ 4 h.
  A failed unit in 30 °C ambient then takes ~31 min to go from 5 to 8 °C.
- ``supply_c`` = -2 °C with ``tau_cooling_s`` = 30 min: the unit pulls the box below its lower switch
  point up to ~45 °C ambient (see :func:`pull_down_limit_c`). Real units modulate; on/off with a 2 K band
  gives the saw-tooth loggers show.
- Defrost every 6 h for 20 min (chilled-mode defaults of common units are 3-12 h; defrost ends on coil
  temperature after 10-40 min). The evaporator fans stop during defrost, so little heater heat reaches
  the cargo space: a weak path (12 h) to 25 °C, giving a rise of ~2.5 K in 30 °C ambient.
- ``tau_door_s`` = 10 min: with the doors open the box air is replaced within minutes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from firmware_sim.physics._checks import require_finite, require_finite_positive, require_positive
from firmware_sim.physics.thermal import Coupling, equilibrium, relax, time_to_reach

HOUR_S = 3600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ReeferParams:
    """Thermal and control parameters of a refrigerated box (defaults: loaded 40 ft chilled reefer)."""

    setpoint_c: float = 5.0  #: thermostat setpoint, °C
    hysteresis_k: float = 2.0  #: band width, K: compressor on above setpoint + h/2, off below setpoint - h/2
    tau_ambient_s: float = 4 * HOUR_S  #: box -> ambient through the walls, s
    supply_c: float = -2.0  #: supply air the box approaches while the compressor runs, °C
    tau_cooling_s: float = 0.5 * HOUR_S  #: box -> supply air while the compressor runs, s
    defrost_interval_s: float = 6 * HOUR_S  #: from the end of one defrost to the start of the next, s
    defrost_duration_s: float = 20 * 60.0  #: length of a defrost (compressor off, heater on), s
    defrost_heater_c: float = 25.0  #: temperature the defrost heat would drive the box to, °C
    tau_defrost_s: float = 12 * HOUR_S  #: box -> heater during defrost, s (math.inf: off-cycle defrost)
    tau_door_s: float = 10 * 60.0  #: box -> ambient through the open door, s

    def __post_init__(self) -> None:
        require_finite(
            setpoint_c=self.setpoint_c, supply_c=self.supply_c, defrost_heater_c=self.defrost_heater_c
        )
        require_finite_positive(
            hysteresis_k=self.hysteresis_k,
            tau_ambient_s=self.tau_ambient_s,
            tau_cooling_s=self.tau_cooling_s,
            defrost_interval_s=self.defrost_interval_s,
            defrost_duration_s=self.defrost_duration_s,
            tau_door_s=self.tau_door_s,
        )
        require_positive(tau_defrost_s=self.tau_defrost_s)

    @property
    def low_c(self) -> float:
        """Lower switch point, °C: the compressor stops here."""
        return self.setpoint_c - self.hysteresis_k / 2

    @property
    def high_c(self) -> float:
        """Upper switch point, °C: the compressor starts here."""
        return self.setpoint_c + self.hysteresis_k / 2


#: A loaded 40 ft reefer carrying frozen cargo at -18 °C: walls and door as the chilled default, defrost
#: every 12 h (less moisture to freeze out of cold air), supply air 10 K below the setpoint.
FROZEN_REEFER = ReeferParams(
    setpoint_c=-18.0, supply_c=-28.0, defrost_interval_s=12 * HOUR_S, defrost_heater_c=10.0
)


@dataclass(frozen=True, slots=True)
class ReeferInputs:
    """What the world does to the box over one step (held constant over the step)."""

    ambient_c: float  #: outside air temperature, °C
    door_open: bool = False  #: doors open for the whole step
    compressor_failed: bool = False  #: the compressor cannot run (no cooling; no defrost is started)


@dataclass(frozen=True, slots=True)
class ReeferState:
    """The box at one instant."""

    air_c: float  #: return-air temperature, °C
    compressor_on: bool  #: the compressor is running
    defrosting: bool  #: a defrost is in progress
    defrost_clock_s: float  #: s since the current defrost started, or since the last one ended


def initial_state(params: ReeferParams, *, air_c: float | None = None) -> ReeferState:
    """A box at ``air_c`` (default: the setpoint), compressor off, a defrost just finished."""
    return ReeferState(
        air_c=params.setpoint_c if air_c is None else air_c,
        compressor_on=False,
        defrosting=False,
        defrost_clock_s=0.0,
    )


def time_to_cross(start_c: float, threshold_c: float, ambient_c: float, tau_s: float) -> float:
    """Seconds an uncooled box takes from ``start_c`` to ``threshold_c`` drifting toward ``ambient_c``.

    ``tau * ln((ambient - start) / (ambient - threshold))``; ``math.inf`` if it never gets there.
    """
    return time_to_reach(start_c, threshold_c, ambient_c, tau_s)


def pull_down_limit_c(params: ReeferParams, ambient_c: float) -> float:
    """Temperature the box settles at with the compressor running non-stop, doors shut, °C.

    The unit can hold its setpoint only while this lies below ``params.low_c``.
    """
    settled_c, _ = equilibrium(
        (Coupling(ambient_c, params.tau_ambient_s), Coupling(params.supply_c, params.tau_cooling_s))
    )
    return settled_c


def step(state: ReeferState, params: ReeferParams, dt_s: float, inputs: ReeferInputs) -> ReeferState:
    """Advance the box by ``dt_s`` seconds under constant ``inputs``, exactly (see the module docstring)."""
    if not dt_s >= 0:
        raise ValueError(f"dt_s must be >= 0, got {dt_s!r}")
    air_c, on, defrosting, clock_s = state.air_c, state.compressor_on, state.defrosting, state.defrost_clock_s
    failed = inputs.compressor_failed
    remaining_s = dt_s
    while True:
        on = _thermostat(air_c, on, params, idle=defrosting or failed)
        if remaining_s <= 0.0:
            break
        eq_c, tau_s = equilibrium(_couplings(params, inputs, cooling=on, defrosting=defrosting))
        until_defrost_s = _until_defrost_event(params, clock_s, defrosting=defrosting, failed=failed)
        until_switch_s = _until_switch(air_c, params, eq_c, tau_s, on=on, idle=defrosting or failed)
        span_s = min(remaining_s, until_defrost_s, until_switch_s)
        air_c = relax(air_c, eq_c, span_s, tau_s)
        if defrosting or not failed:
            clock_s += span_s
        remaining_s -= span_s
        if span_s == until_defrost_s:
            defrosting, clock_s = not defrosting, 0.0
        elif span_s == until_switch_s:
            on = not on
    return ReeferState(air_c=air_c, compressor_on=on, defrosting=defrosting, defrost_clock_s=clock_s)


def _thermostat(air_c: float, on: bool, params: ReeferParams, *, idle: bool) -> bool:
    """The compressor's next state; ``idle`` (defrost or failure) forces it off."""
    if idle:
        return False
    if air_c >= params.high_c:
        return True
    if air_c <= params.low_c:
        return False
    return on


def _couplings(
    params: ReeferParams, inputs: ReeferInputs, *, cooling: bool, defrosting: bool
) -> list[Coupling]:
    paths = [Coupling(inputs.ambient_c, params.tau_ambient_s)]
    if inputs.door_open:
        paths.append(Coupling(inputs.ambient_c, params.tau_door_s))
    if cooling:
        paths.append(Coupling(params.supply_c, params.tau_cooling_s))
    if defrosting:
        paths.append(Coupling(params.defrost_heater_c, params.tau_defrost_s))
    return paths


def _until_defrost_event(params: ReeferParams, clock_s: float, *, defrosting: bool, failed: bool) -> float:
    if defrosting:
        return max(0.0, params.defrost_duration_s - clock_s)
    if failed:
        # Nothing ices up on a coil that is not cooling: the defrost clock waits for the compressor.
        return math.inf
    return max(0.0, params.defrost_interval_s - clock_s)


def _until_switch(
    air_c: float, params: ReeferParams, eq_c: float, tau_s: float, *, on: bool, idle: bool
) -> float:
    if idle:
        return math.inf
    return time_to_reach(air_c, params.low_c if on else params.high_c, eq_c, tau_s)
