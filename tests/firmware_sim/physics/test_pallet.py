"""Passive pallet: holds 2-8 °C for its rated hours, then leaves the range within the computed time."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_sim.physics import pallet
from firmware_sim.physics.pallet import PalletParams, PalletState, rated_hours

PARAMS = PalletParams()
DT_S = 60.0


def test_rated_hours_formula() -> None:
    # 8 MJ / (0.9 W/K * 25 K) / 3600 ~ 98.8 h: a "96 h" shipper.
    assert rated_hours(PARAMS, 30.0) == pytest.approx(8.0e6 / (0.9 * 25.0) / 3600.0)
    assert rated_hours(PARAMS, 5.0) == math.inf


@pytest.mark.parametrize("ambient_c", [15.0, 30.0, 40.0])
def test_holds_2_to_8_for_its_rated_hours_then_leaves_in_bounded_time(ambient_c: float) -> None:
    rated_s = rated_hours(PARAMS, ambient_c) * 3600.0
    # After the packs are spent the product drifts from 5 °C toward ambient with tau = C / UA.
    leave_s = rated_s + PARAMS.tau_s * math.log((ambient_c - 5.0) / (ambient_c - 8.0))
    state = pallet.initial_state(PARAMS)
    t_s = 0.0
    while t_s + DT_S <= rated_s:
        state = pallet.step(state, PARAMS, DT_S, ambient_c)
        t_s += DT_S
        assert 2.0 <= state.product_c <= 8.0
    assert state.latent_left_j == pytest.approx(PARAMS.latent_heat_j * (1 - t_s / rated_s), abs=1.0)
    while state.product_c <= 8.0:
        state = pallet.step(state, PARAMS, DT_S, ambient_c)
        t_s += DT_S
    assert leave_s <= t_s < leave_s + DT_S
    assert state.latent_left_j == 0.0


def test_part_melted_packs_protect_against_freezing_until_they_are_solid() -> None:
    state = pallet.initial_state(PARAMS, frozen_fraction=0.5)
    cold_c = -10.0
    freeze_s = 0.5 * PARAMS.latent_heat_j / (PARAMS.ua_w_per_k * (PARAMS.phase_c - cold_c))
    held = pallet.step(state, PARAMS, freeze_s - 60.0, cold_c)
    assert held.product_c == PARAMS.phase_c
    assert held.latent_left_j < PARAMS.latent_heat_j
    cooled = pallet.step(state, PARAMS, freeze_s + 3600.0, cold_c)
    assert cooled.latent_left_j == PARAMS.latent_heat_j  # fully frozen...
    assert cooled.product_c == pytest.approx(relax_from_phase(cold_c, 3600.0))  # ...then sensible cooling


def relax_from_phase(ambient_c: float, seconds: float) -> float:
    return ambient_c + (PARAMS.phase_c - ambient_c) * math.exp(-seconds / PARAMS.tau_s)


def test_fully_frozen_packs_give_no_freeze_protection() -> None:
    state = pallet.step(pallet.initial_state(PARAMS), PARAMS, 3600.0, -10.0)
    assert state.product_c == pytest.approx(relax_from_phase(-10.0, 3600.0))


def test_ambient_at_the_phase_temperature_changes_nothing() -> None:
    state = pallet.initial_state(PARAMS, frozen_fraction=0.3)
    assert pallet.step(state, PARAMS, 1e6, PARAMS.phase_c) == state


def test_bad_frozen_fraction_is_refused() -> None:
    with pytest.raises(ValueError, match="frozen_fraction"):
        pallet.initial_state(PARAMS, frozen_fraction=1.5)


@given(
    fraction=st.floats(0.0, 1.0),
    steps=st.lists(st.tuples(st.floats(0.0, 48 * 3600.0), st.floats(-30.0, 45.0)), min_size=1, max_size=20),
)
def test_temperature_stays_between_its_reservoirs_and_latent_heat_in_range(
    fraction: float, steps: list[tuple[float, float]]
) -> None:
    state = pallet.initial_state(PARAMS, frozen_fraction=fraction)
    temps = [PARAMS.phase_c, *(ambient for _, ambient in steps)]
    for dt_s, ambient_c in steps:
        state = pallet.step(state, PARAMS, dt_s, ambient_c)
        assert min(temps) - 1e-9 <= state.product_c <= max(temps) + 1e-9
        assert 0.0 <= state.latent_left_j <= PARAMS.latent_heat_j
        # Consistent: off the phase temperature the packs are all solid (below) or all liquid (above).
        if state.product_c < PARAMS.phase_c:
            assert state.latent_left_j == PARAMS.latent_heat_j
        if state.product_c > PARAMS.phase_c:
            assert state.latent_left_j == 0.0


@given(
    fraction=st.floats(0.0, 1.0),
    ambient_c=st.floats(-30.0, 45.0),
    a=st.floats(0.0, 200 * 3600.0),
    b=st.floats(0.0, 200 * 3600.0),
)
def test_result_does_not_depend_on_the_step_size(
    fraction: float, ambient_c: float, a: float, b: float
) -> None:
    state = pallet.initial_state(PARAMS, frozen_fraction=fraction)
    one = pallet.step(state, PARAMS, a + b, ambient_c)
    two = pallet.step(pallet.step(state, PARAMS, a, ambient_c), PARAMS, b, ambient_c)
    assert two.product_c == pytest.approx(one.product_c, abs=1e-6)
    assert two.latent_left_j == pytest.approx(one.latent_left_j, abs=1e-3)


def test_states_are_plain_values() -> None:
    assert PalletState(5.0, 1.0) == PalletState(5.0, 1.0)
