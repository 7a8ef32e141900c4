"""Ambient: the daily cycle's shape and the weather anomaly's statistics and determinism."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from firmware_sim.physics import ambient
from firmware_sim.physics.ambient import AmbientParams, AmbientState

PARAMS = AmbientParams()


def test_daily_cycle_peaks_at_its_hour_and_averages_its_mean() -> None:
    peak = ambient.diurnal_c(PARAMS, 15 * 3600.0)
    trough = ambient.diurnal_c(PARAMS, 3 * 3600.0)
    assert peak == pytest.approx(26.0)
    assert trough == pytest.approx(14.0)
    hourly = [ambient.diurnal_c(PARAMS, h * 3600.0) for h in range(24)]
    assert max(hourly) == peak
    assert statistics.fmean(hourly) == pytest.approx(20.0)
    assert ambient.diurnal_c(PARAMS, 86_400.0 + 7200.0) == pytest.approx(ambient.diurnal_c(PARAMS, 7200.0))


def _trajectory(seed: int, steps: int, dt_s: float) -> list[float]:
    rng = np.random.default_rng(seed)
    state = ambient.initial_state(rng, PARAMS)
    temps = []
    for i in range(steps):
        state = ambient.step(state, PARAMS, dt_s, rng)
        temps.append(ambient.ambient_c(PARAMS, state, (i + 1) * dt_s))
    return temps


def test_same_seed_same_weather() -> None:
    assert _trajectory(9, 500, 600.0) == _trajectory(9, 500, 600.0)
    assert _trajectory(9, 500, 600.0) != _trajectory(10, 500, 600.0)


def test_anomaly_is_stationary_with_its_documented_spread() -> None:
    # Independent draws one step each from the stationary law: the exact transition keeps sigma.
    rng = np.random.default_rng(12)
    ends = [
        ambient.step(ambient.initial_state(rng, PARAMS), PARAMS, 3600.0, rng).anomaly_k for _ in range(4000)
    ]
    assert statistics.pstdev(ends) == pytest.approx(PARAMS.anomaly_sigma_k, rel=0.05)
    assert abs(statistics.fmean(ends)) < 0.1


def test_anomaly_moves_slowly() -> None:
    rng = np.random.default_rng(13)
    state = AmbientState(3.0)
    after = ambient.step(state, PARAMS, 600.0, rng)
    # Over 10 min the anomaly keeps e^(-600/172800) of itself plus ~0.17 K of noise.
    assert after.anomaly_k == pytest.approx(3.0 * math.exp(-600.0 / PARAMS.anomaly_tau_s), abs=1.0)


def test_no_anomaly_means_the_pure_cycle() -> None:
    params = AmbientParams(anomaly_sigma_k=0.0)
    rng = np.random.default_rng(14)
    state = ambient.step(ambient.initial_state(rng, params), params, 3600.0, rng)
    assert ambient.ambient_c(params, state, 3600.0) == ambient.diurnal_c(params, 3600.0)
