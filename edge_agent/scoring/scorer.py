"""The scoring stage: rolling features, then the model (or the rules), one batch at a time.

A high score means "likely a sensor glitch, not a real change of the product's temperature". The
model's ONNX graph already returns calibrated scores in [0, 1] (see
:class:`~edge_agent.scoring.model.Calibration`: the clean training readings' (1 - contamination)
quantile of the raw IsolationForest score maps to 0.5, their median to 0.05).

Rows the model never sees:

- a reading without a temperature (the caller passes NaN) gets the rules' score (1.0: a dropout is a
  sensor fault) and is marked in :attr:`ScoreResult.by_rules`;
- every row, when no valid model is loaded or after the model failed once: the scorer logs the
  failure one time, drops the model and carries on with the rules (``rules_only`` is then True, and
  ``model_ref`` names the rules).

Not thread-safe: the agent owns one scorer and calls it from one thread (its ONNX executor).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from edge_agent.scoring.errors import ModelInferenceError
from edge_agent.scoring.features import COLUMN, DeviceSlots, FeatureState
from edge_agent.scoring.model import LoadedModel
from edge_agent.scoring.rules import RULES_REF, rules_score

logger = logging.getLogger(__name__)

_MISSING = COLUMN["missing"]
#: Feature values are clamped to this before inference: float32 infinities would isolate at once,
#: and no physical feature comes near it.
_FEATURE_LIMIT = 1e9


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """Scores of one batch, in input order."""

    scores: NDArray[np.float64]
    """Glitch score of each reading, in [0, 1]."""
    model_ref: str
    """The model that scored the batch (``<id>@<16 hex>``), or the rules' reference."""
    rules_only: bool
    """No model was used for this batch: stamp every reading with ``Flag.RULES_ONLY``."""
    by_rules: NDArray[np.bool_]
    """Rows the rules scored: all of them when ``rules_only``, else the readings without a temperature."""


class Scorer:
    """Scores readings as they arrive; keeps each device's rolling history between calls."""

    def __init__(self, model: LoadedModel | None, *, state: FeatureState | None = None) -> None:
        self._model = model
        self.state = state if state is not None else FeatureState()
        self.slots = DeviceSlots()
        """A device-id → slot map for callers that have ids rather than slots."""
        self.failure: ModelInferenceError | None = None
        """Why the model was dropped, if it failed at inference time."""

    @property
    def model(self) -> LoadedModel | None:
        """The model in use; None when scoring with the rules."""
        return self._model

    @property
    def rules_only(self) -> bool:
        """True when no model is in use."""
        return self._model is None

    @property
    def model_ref(self) -> str:
        """The reference readings scored now carry."""
        return RULES_REF if self._model is None else self._model.model_ref

    def score(
        self,
        slots: NDArray[np.integer],
        t_ms: NDArray[np.integer],
        temperature: NDArray[np.floating],
    ) -> ScoreResult:
        """Update each device's history with the batch and score every reading (rows in order).

        ``slots`` map readings to devices (see :class:`~edge_agent.scoring.features.DeviceSlots`),
        ``t_ms`` is the device time in ms, ``temperature`` in °C with NaN where the reading has none.
        """
        features = self.state.update_and_features(slots, t_ms, temperature)
        n = features.shape[0]
        missing = features[:, _MISSING] > 0.5
        model = self._model
        if model is None:
            return ScoreResult(rules_score(features), RULES_REF, True, np.ones(n, dtype=np.bool_))
        if n == 0:
            return ScoreResult(np.zeros(0), model.model_ref, False, missing)
        # The feature matrix is ours: clamp it in place (see _FEATURE_LIMIT).
        np.clip(features, -_FEATURE_LIMIT, _FEATURE_LIMIT, out=features)
        try:
            if not missing.any():  # the common case: no boolean indexing, no copies
                scores = model.infer(features)
            else:
                scores = rules_score(features)
                present = ~missing
                if present.any():
                    scores[present] = model.infer(np.ascontiguousarray(features[present]))
        except ModelInferenceError as exc:
            self._drop_model(exc)
            return ScoreResult(rules_score(features), RULES_REF, True, np.ones(n, dtype=np.bool_))
        return ScoreResult(scores, model.model_ref, False, missing)

    def score_devices(
        self,
        device_ids: Sequence[str],
        t_ms: NDArray[np.integer],
        temperature: NDArray[np.floating],
    ) -> ScoreResult:
        """:meth:`score` for callers holding device ids; slots come from :attr:`slots`."""
        return self.score(self.slots.slots_for(device_ids), t_ms, temperature)

    def _drop_model(self, exc: ModelInferenceError) -> None:
        # Logged once: the model is dropped, so this cannot repeat until a new scorer is built.
        logger.error(
            "anomaly model %s failed; scoring with the rules from now on: %s", exc.model_ref, exc.detail
        )
        self.failure = exc
        self._model = None
