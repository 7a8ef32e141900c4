"""The rules-only glitch score, used when no valid model is loaded and for readings without a temperature.

Pure NumPy on the feature matrix of :mod:`edge_agent.scoring.features`. Three kinds of evidence, each
mapped to [0, 1] by a linear ramp ``ramp(v, lo, hi) = clip((v - lo) / (hi - lo), 0, 1)``::

    jump    = min(ramp(|rate_k_per_s| * 60, 10, 20), ramp(|dev_med8_k|, 3, 6))
    stuck   = max(ramp(stuck_trend_k, 0.15, 0.4), ramp(stuck_run, 360, 1080))
    missing = 1 for a dropout row
    score   = max(jump, stuck, missing)

Why these constants:

- **Rate.** The fastest real change the monitored air can make is an open door pulling it toward
  ambient with the reefer's door time constant (10 min, :mod:`firmware_sim.physics.reefer`): at most
  (ambient - air) / 10 min, i.e. 7 K/min for frozen cargo (-25 °C) in 45 °C ambient, ~2.5 K/min for a
  chilled box in summer. Cold rooms (75 min) and pallets are far slower. Above 10 K/min a step is
  implausible for any enclosure; above 20 K/min it is impossible. A spike (>= 8 K in one 10 s sample,
  :mod:`firmware_sim.faults`) is >= 48 K/min.
- **Jump from the baseline.** The rate alone also fires on the reading *after* a spike (the sensor
  returning to the truth), so the reading must also sit away from the median of the 8 before it,
  which one spike cannot move. 3 K is beyond the median's lag behind a real 2.5 K/min ramp (~1.3 K);
  6 K is below the smallest injected spike (8 K) and the °C-read-as-°F error of a chilled product
  (~20 K).
- **Stuck.** A live but coarse sensor (0.1 K resolution) repeats a value only while its trend moves
  less than the resolution; ``stuck_trend_k`` says how far the trend that led into the repeat would
  have carried it by now. Clean readings of the coarsest vendor format (0.1 K) stay below 0.2 K in
  the simulator; the score passes 0.5 at 0.275 K, almost three of its steps. Without a trend
  (stable product) only a very long exact repeat is suspicious: 1 h starts to count, 3 h is certain.
- Drift (a slowly growing offset) is indistinguishable from a real slow excursion in one device's own
  history; the rules do not try (the cloud can compare devices that share a space).

The rules' reference (``rules@<hash>``) hashes these constants and the feature spec, so readings say
exactly which rules scored them.
"""

from __future__ import annotations

import hashlib

import numpy as np
import orjson
from numpy.typing import NDArray

from edge_agent.scoring.features import COLUMN, N_FEATURES, feature_spec

RULES_ID = "rules"
#: K/min: a step starts to be implausible / is impossible for any enclosure.
RATE_PLAUSIBLE_K_PER_MIN = 10.0
RATE_IMPOSSIBLE_K_PER_MIN = 20.0
#: K from the median of the previous 8: a glitch-sized departure starts / is certain.
JUMP_START_K = 3.0
JUMP_FULL_K = 6.0
#: K the trend would have moved during a repeat: suspicious / certain.
STUCK_TREND_START_K = 0.15
STUCK_TREND_FULL_K = 0.4
#: Samples of exact repeats without a trend: suspicious / certain (1 h / 3 h at 10 s).
STUCK_RUN_START = 360
STUCK_RUN_FULL = 1080
#: A reading without a temperature is a sensor fault by definition.
MISSING_SCORE = 1.0


def _ramp(values: NDArray[np.float64], lo: float, hi: float) -> NDArray[np.float64]:
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def rules_score(features: NDArray[np.floating]) -> NDArray[np.float64]:
    """Glitch score in [0, 1] for each row of a (n, F) feature matrix (formula in the module docstring)."""
    if features.ndim != 2 or features.shape[1] != N_FEATURES:
        raise ValueError(f"expected a (n, {N_FEATURES}) feature matrix, got shape {features.shape}")
    x = np.nan_to_num(features.astype(np.float64), nan=0.0, posinf=1e300, neginf=-1e300)
    rate_k_per_min = np.abs(x[:, COLUMN["rate_k_per_s"]]) * 60.0
    jump = np.minimum(
        _ramp(rate_k_per_min, RATE_PLAUSIBLE_K_PER_MIN, RATE_IMPOSSIBLE_K_PER_MIN),
        _ramp(np.abs(x[:, COLUMN["dev_med8_k"]]), JUMP_START_K, JUMP_FULL_K),
    )
    stuck = np.maximum(
        _ramp(x[:, COLUMN["stuck_trend_k"]], STUCK_TREND_START_K, STUCK_TREND_FULL_K),
        _ramp(x[:, COLUMN["stuck_run"]], STUCK_RUN_START, STUCK_RUN_FULL),
    )
    missing = np.where(x[:, COLUMN["missing"]] > 0.5, MISSING_SCORE, 0.0)
    return np.maximum(np.maximum(jump, stuck), missing)


def _rules_digest() -> str:
    constants = {
        "rate_k_per_min": [RATE_PLAUSIBLE_K_PER_MIN, RATE_IMPOSSIBLE_K_PER_MIN],
        "jump_k": [JUMP_START_K, JUMP_FULL_K],
        "stuck_trend_k": [STUCK_TREND_START_K, STUCK_TREND_FULL_K],
        "stuck_run": [STUCK_RUN_START, STUCK_RUN_FULL],
        "missing": MISSING_SCORE,
        "features": feature_spec(),
    }
    return hashlib.sha256(orjson.dumps(constants, option=orjson.OPT_SORT_KEYS)).hexdigest()


#: What readings scored by the rules carry in their ``model`` field.
RULES_REF = f"{RULES_ID}@{_rules_digest()[:16]}"
