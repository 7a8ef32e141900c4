"""Humidity: RH follows temperature in a closed box, condenses at 100 %, mixes toward outside air."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_sim.physics import humidity
from firmware_sim.physics.humidity import HumidityInputs, HumidityParams, saturation_vapour_hpa

SEALED = HumidityParams(tau_leak_s=math.inf)
PARAMS = HumidityParams()


@pytest.mark.parametrize(
    ("temp_c", "hpa"),
    # Reference saturation pressures over water (WMO tables), checked to 0.5 %.
    [(0.0, 6.112), (20.0, 23.39), (30.0, 42.47), (-20.0, 1.2540)],
)
def test_magnus_matches_reference_values(temp_c: float, hpa: float) -> None:
    assert saturation_vapour_hpa(temp_c) == pytest.approx(hpa, rel=0.005)


def _closed(air_c: float) -> HumidityInputs:
    return HumidityInputs(air_c=air_c, ambient_c=25.0, ambient_rh_pct=60.0)


def test_cooling_a_closed_box_raises_rh_and_warming_lowers_it() -> None:
    start = humidity.state_at(20.0, 50.0)
    cooled = humidity.step(start, SEALED, 600.0, _closed(10.0))
    assert cooled.vapour_hpa == start.vapour_hpa  # moisture conserved
    assert cooled.rh_pct > start.rh_pct
    # The ratio of saturation pressures at 20 and 10 °C is ~1.90, so 50 % becomes ~95 %.
    assert cooled.rh_pct == pytest.approx(50.0 * saturation_vapour_hpa(20.0) / saturation_vapour_hpa(10.0))
    warmed = humidity.step(start, SEALED, 600.0, _closed(30.0))
    assert warmed.rh_pct < start.rh_pct


def test_cooling_past_the_dew_point_condenses_and_the_water_is_lost() -> None:
    start = humidity.state_at(20.0, 80.0)
    fogged = humidity.step(start, SEALED, 600.0, _closed(2.0))
    assert fogged.rh_pct == 100.0
    assert fogged.vapour_hpa == pytest.approx(saturation_vapour_hpa(2.0))
    rewarmed = humidity.step(fogged, SEALED, 600.0, _closed(20.0))
    assert rewarmed.rh_pct < 80.0


def test_an_open_door_pulls_the_vapour_toward_outside() -> None:
    start = humidity.state_at(5.0, 90.0)
    outside_hpa = 0.6 * saturation_vapour_hpa(25.0)
    door = HumidityInputs(air_c=5.0, ambient_c=25.0, ambient_rh_pct=60.0, door_open=True)
    after = humidity.step(start, PARAMS, 300.0, door)
    keep = math.exp(-300.0 * (1 / PARAMS.tau_leak_s + 1 / PARAMS.tau_door_s))
    expected_hpa = min(outside_hpa + (start.vapour_hpa - outside_hpa) * keep, saturation_vapour_hpa(5.0))
    assert after.vapour_hpa == pytest.approx(expected_hpa)
    assert after.rh_pct == 100.0  # warm humid air entering a 5 °C box condenses


def test_leak_alone_is_slow() -> None:
    start = humidity.state_at(5.0, 50.0)
    after = humidity.step(start, PARAMS, 60.0, _closed(5.0))
    assert after.rh_pct == pytest.approx(50.0, abs=0.5)


@pytest.mark.parametrize("rh", [-1.0, 100.5])
def test_rh_outside_0_100_is_refused(rh: float) -> None:
    with pytest.raises(ValueError, match="rh_pct"):
        humidity.state_at(20.0, rh)


@given(
    rh=st.floats(0.0, 100.0),
    air_c=st.floats(-30.0, 45.0),
    steps=st.lists(
        st.tuples(
            st.floats(0.0, 3600.0),
            st.builds(
                HumidityInputs,
                air_c=st.floats(-30.0, 45.0),
                ambient_c=st.floats(-30.0, 45.0),
                ambient_rh_pct=st.floats(0.0, 100.0),
                door_open=st.booleans(),
            ),
        ),
        min_size=1,
        max_size=20,
    ),
)
def test_rh_stays_within_0_and_100(
    rh: float, air_c: float, steps: list[tuple[float, HumidityInputs]]
) -> None:
    state = humidity.state_at(air_c, rh)
    for dt_s, inputs in steps:
        state = humidity.step(state, PARAMS, dt_s, inputs)
        assert 0.0 <= state.rh_pct <= 100.0
        assert state.vapour_hpa >= 0.0
