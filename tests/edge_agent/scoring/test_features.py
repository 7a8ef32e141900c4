"""Rolling features: hand-computed values, previous-samples-only windows, batching, dropouts, growth."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.scoring.features import (
    COLUMN,
    FEATURE_NAMES,
    N_FEATURES,
    STD_FLOOR_K,
    DeviceSlots,
    FeatureState,
    feature_spec,
)

T0 = 1_795_000_000_000


def _one_device(values: list[float], *, step_ms: int = 10_000) -> np.ndarray:
    n = len(values)
    return FeatureState().update_and_features(
        np.zeros(n, dtype=np.int64), T0 + step_ms * np.arange(n, dtype=np.int64), np.array(values)
    )


def _col(rows: np.ndarray, name: str) -> np.ndarray:
    return rows[:, COLUMN[name]].astype(np.float64)


def test_feature_names_and_spec_agree() -> None:
    assert len(FEATURE_NAMES) == N_FEATURES == len(set(FEATURE_NAMES))
    assert feature_spec()["names"] == list(FEATURE_NAMES)


def test_first_reading_of_a_device_has_no_history() -> None:
    rows = _one_device([5.0])
    assert rows.dtype == np.float32
    assert rows.shape == (1, N_FEATURES)
    assert not rows.any()


def test_hand_computed_ramp() -> None:
    rows = _one_device([5.0, 5.2, 5.4, 5.6])
    third, fourth = rows[2], rows[3]
    # Third reading: history 5.0, 5.2 (mean 5.1, std 0.1), last 5.2 ten seconds earlier.
    assert third[COLUMN["delta_k"]] == pytest.approx(0.2, abs=1e-6)
    assert third[COLUMN["rate_k_per_s"]] == pytest.approx(0.02, abs=1e-7)
    assert third[COLUMN["z8"]] == pytest.approx((5.4 - 5.1) / 0.1, rel=1e-5)
    assert third[COLUMN["z32"]] == pytest.approx(3.0, rel=1e-5)
    assert third[COLUMN["dev_med8_k"]] == pytest.approx(0.3, abs=1e-6)
    assert third[COLUMN["trend8_k_per_h"]] == pytest.approx(72.0, rel=1e-5)  # 0.2 K per 10 s
    assert third[COLUMN["dt_s"]] == pytest.approx(10.0)
    assert third[COLUMN["n_prev"]] == 2
    assert third[COLUMN["slope32_k_per_h"]] == 0.0  # the line needs 3 samples
    # Fourth: the line through 5.0, 5.2, 5.4 rises 72 K/h and predicts 5.6 exactly.
    assert fourth[COLUMN["slope32_k_per_h"]] == pytest.approx(72.0, rel=1e-5)
    assert fourth[COLUMN["resid32_k"]] == pytest.approx(0.0, abs=1e-5)
    std = math.sqrt((0.2**2 + 0.0 + 0.2**2) / 3)
    assert fourth[COLUMN["z8"]] == pytest.approx((5.6 - 5.2) / std, rel=1e-5)
    assert fourth[COLUMN["stuck_run"]] == 0
    assert not fourth[COLUMN["missing"]]


def test_std_floor_applies_to_a_flat_history() -> None:
    rows = _one_device([5.0] * 10 + [5.05])
    assert rows[-1, COLUMN["z8"]] == pytest.approx(0.05 / STD_FLOOR_K, rel=1e-5)


def test_a_spike_is_not_part_of_its_own_window() -> None:
    values = [5.0, 5.2] * 8 + [25.0, 5.0]
    rows = _one_device(values)
    spike, after = rows[-2], rows[-1]
    # Window of the previous 8: mean 5.1, std 0.1. Had the spike been inside, |z| could not exceed
    # sqrt(8) ~ 2.8 however large the spike.
    assert spike[COLUMN["z8"]] == pytest.approx((25.0 - 5.1) / 0.1, rel=1e-4)
    assert spike[COLUMN["z32"]] > 100
    assert spike[COLUMN["dev_med8_k"]] == pytest.approx(19.9, abs=1e-4)
    # The reading after it: a big step back, but at the median of the window the spike is now in.
    assert after[COLUMN["delta_k"]] == pytest.approx(-20.0, abs=1e-4)
    assert abs(after[COLUMN["dev_med8_k"]]) <= 0.2 + 1e-6


def test_stuck_run_and_trend() -> None:
    # A live ramp of 0.1 K per 10 s (36 K/h), then the sensor repeats 5.5 four more times.
    rows = _one_device([5.0, 5.1, 5.2, 5.3, 5.4, 5.5, 5.5, 5.5, 5.5, 5.5])
    assert _col(rows, "stuck_run").tolist() == [0, 0, 0, 0, 0, 0, 1, 2, 3, 4]
    # The repeat began at 5.5 with a 36 K/h trend; n readings later that trend would be 0.1 * n K away.
    assert _col(rows, "stuck_trend_k")[6:] == pytest.approx([0.1, 0.2, 0.3, 0.4], rel=1e-4)
    assert not _col(rows, "stuck_trend_k")[:6].any()


def test_dropouts_give_a_defined_row_and_leave_the_state_alone() -> None:
    rows = _one_device([5.0, 5.1, math.nan, 5.3, math.inf])
    assert rows[2].tolist() == [1.0 if n == "missing" else 0.0 for n in FEATURE_NAMES]
    assert rows[4, COLUMN["missing"]] == 1.0
    # 5.3 is compared with 5.1, twenty seconds earlier.
    assert rows[3, COLUMN["delta_k"]] == pytest.approx(0.2, abs=1e-6)
    assert rows[3, COLUMN["dt_s"]] == pytest.approx(20.0)
    assert rows[3, COLUMN["n_prev"]] == 2


readings = st.lists(
    st.tuples(
        st.integers(0, 3),  # device slot
        st.integers(5_000, 15_000),  # ms since the device's previous reading
        st.one_of(st.floats(-30.0, 40.0, allow_nan=False), st.just(math.nan), st.sampled_from([5.0, 5.1])),
    ),
    min_size=1,
    max_size=120,
)


def _arrays(rows: list[tuple[int, int, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    clocks: dict[int, int] = {}
    t = []
    for slot, gap, _ in rows:
        clocks[slot] = clocks.get(slot, T0) + gap
        t.append(clocks[slot])
    slots = np.array([r[0] for r in rows], dtype=np.int64)
    return slots, np.array(t, dtype=np.int64), np.array([r[2] for r in rows], dtype=np.float64)


@settings(max_examples=60, deadline=None)
@given(readings, st.lists(st.integers(1, 40), min_size=1, max_size=20))
def test_one_batch_equals_any_chunking(rows: list[tuple[int, int, float]], cuts: list[int]) -> None:
    slots, t, temp = _arrays(rows)
    whole = FeatureState(capacity=1).update_and_features(slots, t, temp)
    one_at_a_time = FeatureState(capacity=1)
    singles = np.concatenate(
        [
            one_at_a_time.update_and_features(slots[i : i + 1], t[i : i + 1], temp[i : i + 1])
            for i in range(len(rows))
        ]
    )
    chunked_state = FeatureState(capacity=1)
    chunks, start, k = [], 0, 0
    while start < len(rows):
        size = cuts[k % len(cuts)]
        chunks.append(
            chunked_state.update_and_features(
                slots[start : start + size], t[start : start + size], temp[start : start + size]
            )
        )
        start, k = start + size, k + 1
    np.testing.assert_array_equal(whole, singles)
    np.testing.assert_array_equal(whole, np.concatenate(chunks))


@settings(max_examples=60, deadline=None)
@given(readings)
def test_dropouts_do_not_change_the_other_rows(rows: list[tuple[int, int, float]]) -> None:
    slots, t, temp = _arrays(rows)
    with_gaps = FeatureState().update_and_features(slots, t, temp)
    valid = ~np.isnan(temp)
    without = FeatureState().update_and_features(slots[valid], t[valid], temp[valid])
    np.testing.assert_array_equal(with_gaps[valid], without)
    assert (with_gaps[~valid, COLUMN["missing"]] == 1.0).all()


def test_devices_do_not_see_each_other() -> None:
    state = FeatureState()
    state.update_and_features(
        np.array([0, 0, 0]), T0 + np.array([0, 10_000, 20_000]), np.array([5.0, 5.1, 5.2])
    )
    rows = state.update_and_features(
        np.array([1, 0]), T0 + np.array([30_000, 30_000]), np.array([-18.0, 5.3])
    )
    assert rows[0, COLUMN["n_prev"]] == 0
    assert rows[1, COLUMN["n_prev"]] == 3
    assert rows[1, COLUMN["delta_k"]] == pytest.approx(0.1, abs=1e-6)


def test_new_devices_grow_the_state_and_start_empty() -> None:
    slots = DeviceSlots()
    assert slots.slots_for(["a", "b", "a"]).tolist() == [0, 1, 0]
    ids = [f"dev-{i}" for i in range(100)]
    batch = slots.slots_for(ids)
    assert len(slots) == 102
    assert "dev-7" in slots
    state = FeatureState(capacity=2)
    first = state.update_and_features(batch, np.full(100, T0), np.full(100, 5.0))
    assert state.capacity >= int(batch.max()) + 1
    assert not first.any()
    second = state.update_and_features(batch, np.full(100, T0 + 10_000), np.full(100, 5.5))
    assert _col(second, "delta_k") == pytest.approx(np.full(100, 0.5))
    state.reset(int(batch[0]))
    assert state.history(int(batch[0])) == 0
    assert state.history(int(batch[1])) == 2


def test_rejects_mismatched_or_negative_input() -> None:
    state = FeatureState()
    with pytest.raises(ValueError, match="same length"):
        state.update_and_features(np.array([0, 1]), np.array([T0]), np.array([5.0, 5.0]))
    with pytest.raises(ValueError, match=">= 0"):
        state.update_and_features(np.array([-1]), np.array([T0]), np.array([5.0]))
    assert state.update_and_features(np.array([], dtype=np.int64), np.array([]), np.array([])).shape == (
        0,
        N_FEATURES,
    )
