"""The exact first-order solution shared by the thermal models."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_sim.physics.thermal import Coupling, equilibrium, relax, time_to_reach

temps = st.floats(-50.0, 60.0)
taus = st.floats(1.0, 1e6)


def test_parallel_paths_add_conductances() -> None:
    eq_c, tau_s = equilibrium([Coupling(30.0, 100.0), Coupling(-10.0, 100.0)])
    assert eq_c == pytest.approx(10.0)
    assert tau_s == pytest.approx(50.0)


def test_an_infinite_path_is_no_path() -> None:
    assert equilibrium([Coupling(20.0, 600.0), Coupling(99.0, math.inf)]) == pytest.approx((20.0, 600.0))


def test_no_finite_path_is_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        equilibrium([Coupling(20.0, math.inf)])


@pytest.mark.parametrize("tau_s", [0.0, -1.0, math.nan])
def test_bad_time_constant_is_refused(tau_s: float) -> None:
    with pytest.raises(ValueError, match="tau_s"):
        Coupling(20.0, tau_s)


def test_one_time_constant_closes_63_percent_of_the_gap() -> None:
    assert relax(0.0, 10.0, 300.0, 300.0) == pytest.approx(10.0 * (1 - math.exp(-1)))


def test_time_to_reach_is_infinite_when_the_target_is_behind_or_beyond() -> None:
    assert time_to_reach(5.0, 8.0, 30.0, 3600.0) == pytest.approx(3600.0 * math.log(25.0 / 22.0))
    assert time_to_reach(5.0, 3.0, 30.0, 3600.0) == math.inf  # behind: the node moves away from it
    assert time_to_reach(5.0, 30.0, 30.0, 3600.0) == math.inf  # the equilibrium is approached, never hit
    assert time_to_reach(5.0, 40.0, 30.0, 3600.0) == math.inf  # beyond the equilibrium
    assert time_to_reach(5.0, 5.0, 30.0, 3600.0) == 0.0


@given(start=temps, eq=temps, fraction=st.floats(0.01, 0.99), tau=taus)
def test_relax_reaches_the_target_at_time_to_reach(
    start: float, eq: float, fraction: float, tau: float
) -> None:
    target = start + fraction * (eq - start)
    t = time_to_reach(start, target, eq, tau)
    if start != eq:
        assert relax(start, eq, t, tau) == pytest.approx(target, abs=1e-9)


@given(start=temps, eq=temps, a=st.floats(0.0, 1e5), b=st.floats(0.0, 1e5), tau=taus)
def test_relax_composes(start: float, eq: float, a: float, b: float, tau: float) -> None:
    # Exactness means two steps equal one: what makes the models independent of the step size.
    assert relax(relax(start, eq, a, tau), eq, b, tau) == pytest.approx(
        relax(start, eq, a + b, tau), abs=1e-9
    )
