"""Reefer: failure drift against the analytic crossing time, thermostat band, defrost bump, doors."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_sim.physics import reefer
from firmware_sim.physics.reefer import FROZEN_REEFER, ReeferInputs, ReeferParams, ReeferState
from firmware_sim.physics.thermal import Coupling, equilibrium, relax, time_to_reach

DT_S = 10.0
DAY_S = 86_400.0
#: The documented defaults: setpoint 5 °C, 2 K band, tau_ambient 4 h, in a 30 °C yard.
PARAMS = ReeferParams()
HOT = ReeferInputs(ambient_c=30.0)


def _run(state: ReeferState, params: ReeferParams, inputs: ReeferInputs, seconds: float) -> list[ReeferState]:
    trajectory = []
    for _ in range(round(seconds / DT_S)):
        state = reefer.step(state, params, DT_S, inputs)
        trajectory.append(state)
    return trajectory


def _defrost_peak_bound(params: ReeferParams, ambient_c: float) -> float:
    """A defrost starts at most at the upper switch point and rises toward the defrost equilibrium."""
    defrost_eq_c, defrost_tau_s = equilibrium(
        [Coupling(ambient_c, params.tau_ambient_s), Coupling(params.defrost_heater_c, params.tau_defrost_s)]
    )
    return relax(params.high_c, defrost_eq_c, params.defrost_duration_s, defrost_tau_s)


def test_failed_compressor_crosses_8c_at_the_analytic_time() -> None:
    expected_s = reefer.time_to_cross(5.0, 8.0, 30.0, 4 * 3600.0)
    assert expected_s == pytest.approx(4 * 3600.0 * math.log(25.0 / 22.0))  # ~30.7 min
    failed = replace(HOT, compressor_failed=True)
    trajectory = _run(reefer.initial_state(PARAMS, air_c=5.0), PARAMS, failed, 2 * expected_s)
    crossed_s = next(i + 1 for i, s in enumerate(trajectory) if s.air_c >= 8.0) * DT_S
    # Sampled every DT_S, the first sample at or past 8 °C comes within one step after the crossing.
    assert expected_s <= crossed_s < expected_s + DT_S
    assert not any(s.compressor_on or s.defrosting for s in trajectory)


def test_failed_compressor_never_passes_ambient() -> None:
    failed = replace(HOT, compressor_failed=True)
    end = reefer.step(reefer.initial_state(PARAMS), PARAMS, 10 * DAY_S, failed)
    assert end.air_c == pytest.approx(30.0, abs=0.01)
    assert end.air_c <= 30.0
    assert end.defrost_clock_s == 0.0  # the defrost clock waits while the compressor is dead


def test_working_unit_holds_the_band_over_a_day_with_defrost_bumps() -> None:
    trajectory = _run(reefer.initial_state(PARAMS), PARAMS, HOT, DAY_S)
    bump_max_c = _defrost_peak_bound(PARAMS, 30.0)
    temps = [s.air_c for s in trajectory]
    assert min(temps) >= PARAMS.low_c - 1e-9  # 4 °C: the event-driven thermostat never undershoots
    assert max(temps) <= bump_max_c + 1e-9
    assert 1.0 < bump_max_c - PARAMS.high_c < 3.0  # "a couple of K"
    assert max(temps) > PARAMS.high_c + 1.0  # the bump is really there
    after_defrost = [s for s in trajectory if not s.defrosting and s.air_c > PARAMS.high_c + 1e-9]
    assert after_defrost  # a defrost leaves the box above the band...
    assert all(s.compressor_on for s in after_defrost)  # ...and the compressor pulls it back at once
    starts = sum(1 for a, b in itertools.pairwise(trajectory) if b.defrosting and not a.defrosting)
    assert starts == 3  # at 6 h, 12 h 20 min, 18 h 40 min
    cycles = sum(1 for a, b in itertools.pairwise(trajectory) if b.compressor_on and not a.compressor_on)
    assert 20 <= cycles <= 60  # a saw-tooth of a few tens of minutes


def test_a_ten_minute_door_opening_peaks_and_recovers_as_computed() -> None:
    door_s = 600.0
    start = reefer.initial_state(PARAMS, air_c=5.0)  # compressor off, defrost far away
    opened = replace(HOT, door_open=True)
    during = _run(start, PARAMS, opened, door_s)
    peak_c = during[-1].air_c  # the air warms for as long as the door stays open

    # Bounds from tau_door alone: compressor off throughout (upper), compressor on throughout (lower).
    door_paths = [Coupling(30.0, PARAMS.tau_ambient_s), Coupling(30.0, PARAMS.tau_door_s)]
    off_eq, off_tau = equilibrium(door_paths)
    on_eq, on_tau = equilibrium([*door_paths, Coupling(PARAMS.supply_c, PARAMS.tau_cooling_s)])
    assert relax(5.0, on_eq, door_s, on_tau) < peak_c < relax(5.0, off_eq, door_s, off_tau)
    # Exactly: off until the upper switch point, then cooling against the open door.
    switch_s = time_to_reach(5.0, PARAMS.high_c, off_eq, off_tau)
    assert peak_c == pytest.approx(relax(PARAMS.high_c, on_eq, door_s - switch_s, on_tau), abs=1e-6)
    assert 15.0 < peak_c < 20.0  # a sensor in the door's draught sees most of the yard temperature

    # After closing, the compressor pulls the box back to within 0.5 K of the band.
    after = _run(during[-1], PARAMS, HOT, 3 * 3600.0)
    closed_eq, closed_tau = equilibrium(
        [Coupling(30.0, PARAMS.tau_ambient_s), Coupling(PARAMS.supply_c, PARAMS.tau_cooling_s)]
    )
    expected_s = time_to_reach(peak_c, PARAMS.high_c + 0.5, closed_eq, closed_tau)  # ~32 min
    recovered_s = next(i + 1 for i, s in enumerate(after) if s.air_c <= PARAMS.high_c + 0.5) * DT_S
    assert expected_s <= recovered_s < expected_s + DT_S
    assert all(s.compressor_on for s in after[: int(expected_s // DT_S)])


def test_too_hot_a_yard_defeats_the_unit_at_its_pull_down_limit() -> None:
    params = replace(PARAMS, defrost_interval_s=100 * DAY_S)
    limit_c = reefer.pull_down_limit_c(params, 60.0)
    assert limit_c > params.low_c  # cannot reach its lower switch point: runs non-stop
    end = reefer.step(reefer.initial_state(params), params, 2 * DAY_S, ReeferInputs(60.0))
    assert end.compressor_on
    assert end.air_c == pytest.approx(limit_c, abs=1e-6)


def test_frozen_preset_holds_minus_18() -> None:
    trajectory = _run(reefer.initial_state(FROZEN_REEFER), FROZEN_REEFER, HOT, DAY_S)
    cooling = [s.air_c for s in trajectory if not s.defrosting]
    assert FROZEN_REEFER.low_c - 1e-9 <= min(cooling)
    assert max(s.air_c for s in trajectory) <= _defrost_peak_bound(FROZEN_REEFER, 30.0) + 1e-9
    assert sum(1 for s in trajectory if s.defrosting) * DT_S == pytest.approx(
        FROZEN_REEFER.defrost_duration_s
    )


def test_a_cold_yard_takes_the_box_below_setpoint_without_heating() -> None:
    # No heating mode is modelled: in a -20 °C yard the box drifts toward the yard, compressor off.
    end = reefer.step(reefer.initial_state(PARAMS), PARAMS, DAY_S, ReeferInputs(-20.0))
    assert end.air_c < 0.0
    assert not end.compressor_on


def test_zero_step_is_identity_but_settles_the_thermostat() -> None:
    hot_box = reefer.initial_state(PARAMS, air_c=12.0)
    after = reefer.step(hot_box, PARAMS, 0.0, HOT)
    assert after.air_c == 12.0
    assert after.compressor_on


@pytest.mark.parametrize(
    "field", ["hysteresis_k", "tau_ambient_s", "tau_cooling_s", "defrost_interval_s", "tau_door_s"]
)
def test_non_positive_parameters_are_refused(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        replace(PARAMS, **{field: 0.0})


def test_negative_step_is_refused() -> None:
    with pytest.raises(ValueError, match="dt_s"):
        reefer.step(reefer.initial_state(PARAMS), PARAMS, -1.0, HOT)


def test_time_to_cross_never_when_the_threshold_is_past_ambient() -> None:
    assert reefer.time_to_cross(5.0, 31.0, 30.0, 3600.0) == math.inf


# -- properties over the documented parameter ranges ---------------------------------------------------


@st.composite
def _params(draw: st.DrawFn) -> ReeferParams:
    setpoint = draw(st.floats(-30.0, 15.0))
    return ReeferParams(
        setpoint_c=setpoint,
        hysteresis_k=draw(st.floats(0.5, 5.0)),
        tau_ambient_s=draw(st.floats(3600.0, 48 * 3600.0)),
        supply_c=setpoint - draw(st.floats(1.0, 15.0)),
        tau_cooling_s=draw(st.floats(300.0, 4 * 3600.0)),
        defrost_interval_s=draw(st.floats(3600.0, DAY_S)),
        defrost_duration_s=draw(st.floats(300.0, 3600.0)),
        defrost_heater_c=draw(st.floats(-10.0, 40.0)),
        tau_defrost_s=draw(st.one_of(st.just(math.inf), st.floats(3600.0, 48 * 3600.0))),
        tau_door_s=draw(st.floats(60.0, 3600.0)),
    )


_inputs = st.builds(
    ReeferInputs, ambient_c=st.floats(-40.0, 50.0), door_open=st.booleans(), compressor_failed=st.booleans()
)


@st.composite
def _state(draw: st.DrawFn) -> ReeferState:
    defrosting = draw(st.booleans())
    return ReeferState(
        air_c=draw(st.floats(-40.0, 50.0)),
        compressor_on=draw(st.booleans()) and not defrosting,
        defrosting=defrosting,
        defrost_clock_s=draw(st.floats(0.0, 1800.0)),
    )


@settings(max_examples=200)
@given(
    params=_params(),
    state=_state(),
    steps=st.lists(st.tuples(st.floats(0.0, 3600.0), _inputs), min_size=1, max_size=20),
)
def test_step_stays_between_its_reservoirs(
    params: ReeferParams, state: ReeferState, steps: list[tuple[float, ReeferInputs]]
) -> None:
    reservoirs = [
        state.air_c,
        params.supply_c,
        params.defrost_heater_c,
        *(inputs.ambient_c for _, inputs in steps),
    ]
    low, high = min(reservoirs) - 1e-9, max(reservoirs) + 1e-9
    for dt_s, inputs in steps:
        state = reefer.step(state, params, dt_s, inputs)
        assert not math.isnan(state.air_c)
        assert low <= state.air_c <= high
        assert not (state.compressor_on and (state.defrosting or inputs.compressor_failed))
        assert (
            0.0 <= state.defrost_clock_s <= max(params.defrost_interval_s, params.defrost_duration_s) + 1e-6
        )


@given(params=_params(), state=_state(), inputs=_inputs, a=st.floats(0.0, 7200.0), b=st.floats(0.0, 7200.0))
def test_result_does_not_depend_on_the_step_size(
    params: ReeferParams, state: ReeferState, inputs: ReeferInputs, a: float, b: float
) -> None:
    one = reefer.step(state, params, a + b, inputs)
    two = reefer.step(reefer.step(state, params, a, inputs), params, b, inputs)
    assert two.air_c == pytest.approx(one.air_c, abs=1e-6)
    assert two.defrost_clock_s == pytest.approx(one.defrost_clock_s, abs=1e-6)
