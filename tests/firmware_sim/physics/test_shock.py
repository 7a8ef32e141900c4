"""Shock: magnitudes in their documented ranges, seeded determinism, event rates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from firmware_sim.physics import shock
from firmware_sim.physics.shock import GRange, ShockInputs, ShockKind, ShockParams

PARAMS = ShockParams()
HANDLED = ShockInputs(handling=True)


def test_documented_ranges() -> None:
    assert PARAMS.range_of(ShockKind.VIBRATION) == GRange(0.1, 0.5)
    assert PARAMS.range_of(ShockKind.FORKLIFT) == GRange(1.0, 3.0)
    assert PARAMS.range_of(ShockKind.DROP) == GRange(5.0, 30.0)


def test_every_event_lies_in_the_range_of_its_kind() -> None:
    rng = np.random.default_rng(3)
    events = [e for _ in range(2000) for e in shock.draw_events(rng, PARAMS, 600.0, HANDLED)]
    kinds = {e.kind for e in events}
    assert kinds == {ShockKind.FORKLIFT, ShockKind.DROP}
    assert all(e.peak_g in PARAMS.range_of(e.kind) for e in events)
    drops = sorted(e.peak_g for e in events if e.kind is ShockKind.DROP)
    # Log-uniform: the median sits at the geometric mean of the range, sqrt(5 * 30) ~ 12.2 g.
    assert drops[len(drops) // 2] == pytest.approx(math.sqrt(5.0 * 30.0), rel=0.2)


def test_baseline_while_moving_is_road_vibration_and_idle_is_noise() -> None:
    rng = np.random.default_rng(4)
    moving = [shock.sample(rng, PARAMS, 10.0, ShockInputs(moving=True)) for _ in range(500)]
    idle = [shock.sample(rng, PARAMS, 10.0, ShockInputs()) for _ in range(500)]
    assert all(s.peak_g in PARAMS.vibration_g and not s.events for s in moving)
    assert all(s.peak_g in PARAMS.noise_g and not s.events for s in idle)


def test_peak_is_the_largest_of_baseline_and_events() -> None:
    rng = np.random.default_rng(5)
    samples = [shock.sample(rng, PARAMS, 600.0, ShockInputs(moving=True, handling=True)) for _ in range(500)]
    with_events = [s for s in samples if s.events]
    assert with_events
    assert all(s.peak_g == max(e.peak_g for e in s.events) for s in with_events)  # events beat 0.5 g


def test_a_fixed_seed_gives_identical_draws() -> None:
    def draws(seed: int) -> list[shock.ShockSample]:
        rng = np.random.default_rng(seed)
        return [
            shock.sample(rng, PARAMS, 60.0, ShockInputs(moving=i % 3 == 0, handling=True)) for i in range(300)
        ]

    assert draws(42) == draws(42)
    assert draws(42) != draws(43)


def test_rates_match_within_poisson_bounds() -> None:
    rng = np.random.default_rng(6)
    intervals, dt_s = 5000, 60.0
    events = [e for _ in range(intervals) for e in shock.draw_events(rng, PARAMS, dt_s, HANDLED)]
    hours = intervals * dt_s / 3600.0
    for kind, rate in (
        (ShockKind.FORKLIFT, PARAMS.forklift_rate_per_h),
        (ShockKind.DROP, PARAMS.drop_rate_per_h),
    ):
        expected = rate * hours
        count = sum(1 for e in events if e.kind is kind)
        assert abs(count - expected) < 5 * math.sqrt(expected), kind


def test_no_discrete_shocks_unless_handled() -> None:
    rng = np.random.default_rng(8)
    assert all(not shock.draw_events(rng, PARAMS, 3600.0, ShockInputs(moving=True)) for _ in range(100))


def test_inverted_range_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        GRange(3.0, 1.0)
