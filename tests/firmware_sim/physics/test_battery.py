"""Battery: charge arithmetic, voltage falling with use, cold derating shortening life."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_sim.physics import battery
from firmware_sim.physics.battery import BatteryInputs, BatteryParams, BatteryState

PARAMS = BatteryParams()


def test_charge_drawn_by_sleep_samples_and_transmissions() -> None:
    after = battery.step(BatteryState(), PARAMS, 3600.0, BatteryInputs(20.0, samples=360, transmissions=12))
    # 10 uA for 1 h = 10 uAh; 360 x 0.5 uAh = 180 uAh; 12 x 30 uAh = 360 uAh.
    assert after.used_mah == pytest.approx((10.0 + 180.0 + 360.0) / 1000.0)


@pytest.mark.parametrize(
    ("temp_c", "fraction"), [(-40.0, 0.45), (-20.0, 0.6), (-30.0, 0.525), (20.0, 1.0), (50.0, 1.0)]
)
def test_documented_derating_curve(temp_c: float, fraction: float) -> None:
    assert battery.usable_fraction(PARAMS, temp_c) == pytest.approx(fraction)


def test_fresh_cell_reads_its_plateau_and_empty_cell_its_cutoff() -> None:
    assert battery.volts(BatteryState(), PARAMS, 20.0) == pytest.approx(3.65)
    assert PARAMS.cutoff_v == 3.0
    assert battery.volts(BatteryState(used_mah=PARAMS.capacity_mah), PARAMS, 20.0) == 3.0


def _life_s(temp_c: float) -> float:
    """Seconds of a 1 sample/min, 1 transmission/15 min duty cycle until cut-off, in 1 h steps."""
    state, hours = BatteryState(), 0
    hourly = BatteryInputs(temp_c, samples=60, transmissions=4)
    voltages = [battery.volts(state, PARAMS, temp_c)]
    while not battery.is_depleted(state, PARAMS, temp_c):
        state = battery.step(state, PARAMS, 3600.0, hourly)
        voltages.append(battery.volts(state, PARAMS, temp_c))
        hours += 1
    assert all(b <= a for a, b in itertools.pairwise(voltages))  # falls monotonically
    assert voltages[len(voltages) // 2] > 3.5  # flat for most of its life
    return hours * 3600.0


def test_cold_derating_shortens_life() -> None:
    warm_s, cold_s = _life_s(20.0), _life_s(-20.0)
    assert warm_s > 300 * 86_400  # ~160 uAh/h: well over a year on an AA cell
    assert cold_s / warm_s == pytest.approx(0.6, abs=0.01)


def test_warming_gives_back_the_capacity_lost_to_cold() -> None:
    state = BatteryState(used_mah=0.7 * PARAMS.capacity_mah)
    assert battery.is_depleted(state, PARAMS, -20.0)
    assert not battery.is_depleted(state, PARAMS, 20.0)
    assert battery.volts(state, PARAMS, 20.0) > battery.volts(state, PARAMS, -20.0)


@given(used=st.lists(st.floats(0.0, 5000.0), min_size=2, max_size=20), temp_c=st.floats(-40.0, 60.0))
def test_voltage_never_rises_with_use(used: list[float], temp_c: float) -> None:
    voltages = [battery.volts(BatteryState(u), PARAMS, temp_c) for u in sorted(used)]
    assert all(b <= a for a, b in itertools.pairwise(voltages))
    assert all(PARAMS.cutoff_v <= v <= 3.65 for v in voltages)


def test_bad_curves_and_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="increasing"):
        BatteryParams(derating=((0.0, 1.0), (0.0, 0.5)))
    with pytest.raises(ValueError, match="not fall"):
        BatteryParams(voltage=((0.0, 3.6), (1.0, 3.0)))
    with pytest.raises(ValueError, match="samples"):
        battery.step(BatteryState(), PARAMS, 1.0, BatteryInputs(20.0, samples=-1))
