"""Mean kinetic temperature against hand-computed values (ΔH/R = 10 000 K)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud_ingest.rules.mkt import boltzmann, hour_of, mkt_c, mkt_from_sums


def test_two_equal_periods_at_20_and_30_c() -> None:
    # exp(-10000/293.15) = 1.5319587735e-15, exp(-10000/303.15) = 4.7199879570e-15;
    # mean 3.1259733653e-15, -ln(mean) = 33.4113…, 10000 / 33.4113 = 299.40989 K = 26.25989 °C.
    assert mkt_c([20.0, 30.0]) == pytest.approx(26.259887, abs=1e-6)


def test_a_cold_chain_day_weighs_warm_hours_more_than_the_mean() -> None:
    # 2, 4, 6, 8, 12 °C: arithmetic mean 6.4 °C, MKT 7.13628 °C (warm readings age product faster).
    assert mkt_c([2.0, 4.0, 6.0, 8.0, 12.0]) == pytest.approx(7.136278, abs=1e-6)


def test_activation_energy_is_configurable() -> None:
    temps = [2.0, 12.0]
    expected = 5000.0 / -math.log((math.exp(-5000 / 275.15) + math.exp(-5000 / 285.15)) / 2) - 273.15
    assert mkt_c(temps, 5000.0) == pytest.approx(expected, rel=1e-12)


@given(st.floats(min_value=-40, max_value=60), st.integers(min_value=1, max_value=500))
def test_a_constant_temperature_is_its_own_mkt(t: float, n: int) -> None:
    assert mkt_from_sums(boltzmann(t) * n, n) == pytest.approx(t, abs=1e-6)


@given(st.lists(st.floats(min_value=-30, max_value=40), min_size=1, max_size=50))
def test_mkt_lies_between_the_mean_and_the_maximum(temps: list[float]) -> None:
    value = mkt_c(temps)
    assert sum(temps) / len(temps) - 1e-6 <= value <= max(temps) + 1e-6


@given(st.lists(st.floats(min_value=-30, max_value=40), min_size=2, max_size=50), st.integers(1, 49))
def test_bucket_sums_are_additive(temps: list[float], cut: int) -> None:
    cut = min(cut, len(temps) - 1)
    head, tail = temps[:cut], temps[cut:]
    total = sum(map(boltzmann, head)) + sum(map(boltzmann, tail))
    assert mkt_from_sums(total, len(temps)) == pytest.approx(mkt_c(temps), abs=1e-9)


def test_empty_window_is_an_error_and_hours_are_utc_buckets() -> None:
    with pytest.raises(ValueError, match="at least one reading"):
        mkt_from_sums(0.0, 0)
    assert hour_of(3_600_000 * 5 + 59_999) == 3_600_000 * 5
