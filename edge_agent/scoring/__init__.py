"""Anomaly scoring: is a reading a sensor glitch (high score) or what the product really did (low)?

Runtime (needs only numpy, numba and onnxruntime)::

    model = load_model(models_dir / "default", [trusted_public_key])   # ModelRejected if not valid
    scorer = Scorer(model)                                             # Scorer(None): rules only
    result = scorer.score(slots, t_ms, temperature)                    # NaN = no temperature
    # result.scores in [0, 1]; result.model_ref goes into Reading.model; result.rules_only means
    # Flag.RULES_ONLY

- :mod:`.features`: per-device rolling features, from previous samples only; the loop itself is
  :mod:`.kernels` (numba), run from an ahead-of-time build (:mod:`.compiled`) or numba's JIT;
- :mod:`.model`: signed model packages (``<name>.onnx`` + ``.json`` manifest + ``.sig``), verification
  and loading into onnxruntime (one thread);
- :mod:`.rules`: the documented rules-only score (no model, or a reading without a temperature);
- :mod:`.scorer`: features → model or rules, with fallback when the model fails;
- :mod:`.dataset`, :mod:`.train`, :mod:`.export`, :mod:`.cli`: training (``train`` extra: scikit-learn,
  skl2onnx, onnx), mounted as ``coldtrace model …``.

The shipped default model
-------------------------
``edge_agent/models/default.{onnx,json,sig}``, signed with a DEVELOPMENT key whose public half is
``edge_agent/models/dev-signing-key.pub.pem`` (the private key is not in the repository). A production
gateway trusts its own key instead (the agent's ``model_trusted_keys`` setting).

Retrain and re-sign::

    coldtrace model keygen --out /secure/place/model-signing.pem        # writes KEY.pem (0600) + KEY.pub.pem
    coldtrace model train --out edge_agent/models --key /secure/place/model-signing.pem \\
        --seed 1 --devices 200 --hours 12 --created-utc 2026-11-23T00:00:00Z
    cp /secure/place/model-signing.pub.pem edge_agent/models/dev-signing-key.pub.pem   # if the key changed
    coldtrace model verify edge_agent/models --public-key edge_agent/models/dev-signing-key.pub.pem

The same seed and options reproduce the ONNX file byte for byte; with the same ``--created-utc`` and key
the manifest and signature are identical too (Ed25519 signatures are deterministic). Changing a feature
definition means bumping ``features.FEATURE_VERSION`` and retraining: the agent refuses a model whose
feature spec differs from its own.
"""

from edge_agent.scoring.errors import ModelInferenceError, ModelRejected, RejectReason, ScoringError
from edge_agent.scoring.features import FEATURE_NAMES, N_FEATURES, DeviceSlots, FeatureState
from edge_agent.scoring.model import LoadedModel, ModelManifest, load_model, verify_package
from edge_agent.scoring.rules import RULES_REF, rules_score
from edge_agent.scoring.scorer import Scorer, ScoreResult

__all__ = [
    "FEATURE_NAMES",
    "N_FEATURES",
    "RULES_REF",
    "DeviceSlots",
    "FeatureState",
    "LoadedModel",
    "ModelInferenceError",
    "ModelManifest",
    "ModelRejected",
    "RejectReason",
    "ScoreResult",
    "Scorer",
    "ScoringError",
    "load_model",
    "rules_score",
    "verify_package",
]
