"""The rules-only score: each kind of evidence, the [0, 1] range, the reference."""

from __future__ import annotations

import re

import numpy as np
import pytest

from coldtrace.contract.reading import MODEL_REF_PATTERN
from edge_agent.scoring.features import COLUMN, N_FEATURES
from edge_agent.scoring.rules import RULES_REF, rules_score


def _row(**values: float) -> np.ndarray:
    row = np.zeros((1, N_FEATURES), dtype=np.float32)
    for name, value in values.items():
        row[0, COLUMN[name]] = value
    return row


@pytest.mark.parametrize(
    ("features", "expected"),
    [
        ({}, 0.0),
        # A spike: 20 K in 10 s (120 K/min), 20 K from the median of the last 8.
        ({"rate_k_per_s": 2.0, "dev_med8_k": 20.0}, 1.0),
        # The reading after it: as fast, but back at the baseline.
        ({"rate_k_per_s": -2.0, "dev_med8_k": 0.1}, 0.0),
        # A door opening at 2.5 K/min, 1.3 K ahead of the lagging median: real.
        ({"rate_k_per_s": 2.5 / 60, "dev_med8_k": 1.3}, 0.0),
        # 15 K/min and 4.5 K off the baseline: half-way up both ramps.
        ({"rate_k_per_s": 0.25, "dev_med8_k": 4.5}, 0.5),
        # A repeat during which the trend would have moved 0.4 K: certainly stuck; 0.1 K: not.
        ({"stuck_run": 12, "stuck_trend_k": 0.4}, 1.0),
        ({"stuck_run": 12, "stuck_trend_k": 0.1}, 0.0),
        # Identical for 2 h without any trend.
        ({"stuck_run": 720}, 0.5),
        ({"missing": 1.0}, 1.0),
    ],
)
def test_rules(features: dict[str, float], expected: float) -> None:
    assert rules_score(_row(**features))[0] == pytest.approx(expected)


def test_scores_stay_in_range_for_any_input() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(scale=1e3, size=(500, N_FEATURES)).astype(np.float32)
    x[::7] = np.nan
    x[::11, 0] = np.inf
    scores = rules_score(x)
    assert scores.dtype == np.float64
    assert ((scores >= 0.0) & (scores <= 1.0)).all()


def test_rejects_a_matrix_of_the_wrong_width() -> None:
    with pytest.raises(ValueError, match="feature matrix"):
        rules_score(np.zeros((2, 3)))


def test_reference_is_a_model_ref() -> None:
    assert re.fullmatch(MODEL_REF_PATTERN, RULES_REF)
    assert RULES_REF.startswith("rules@")
