"""Reproducible training of the glitch model (needs the ``train`` extra: scikit-learn, skl2onnx, onnx).

1. Simulate the training scenarios offline (:mod:`edge_agent.scoring.dataset`) with ``seed``.
2. Compute the rolling features exactly as the agent does (:class:`FeatureState`, reading by reading).
3. Fit an IsolationForest (fixed ``random_state``, one job) on the features of the CLEAN readings
   only, splitting on :data:`MODEL_FEATURES`. Clean readings include real excursions (door openings,
   compressor failures), so a real warming looks normal to the model; what it isolates is what a
   healthy sensor does not do.
4. Export it as a compact ONNX graph (:mod:`edge_agent.scoring.export`), calibrate the output so the
   clean training readings' (1 - contamination) quantile maps to 0.5, and check the graph against
   scikit-learn and skl2onnx.
5. Sign and write the package, load it back through :func:`load_model`, and evaluate it end to end
   (the real :class:`Scorer`) on the same scenarios simulated with a held-out seed.

The same seed and options give byte-identical ONNX bytes (the exporter is deterministic and the forest
is fitted single-threaded); with the same ``created_utc`` the manifest and its Ed25519 signature
(deterministic too) are identical as well.
"""

from __future__ import annotations

import importlib.metadata
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from numpy.typing import NDArray
from sklearn.ensemble import IsolationForest

from edge_agent.scoring.dataset import (
    CLEAN,
    LABELS,
    TRAINING_SCENARIOS,
    LabelledReadings,
    simulate,
    training_scenarios,
)
from edge_agent.scoring.export import forest_onnx_bytes
from edge_agent.scoring.features import COLUMN, N_FEATURES, FeatureState
from edge_agent.scoring.model import (
    INPUT_NAME,
    RAW_OUTPUT,
    Calibration,
    LoadedModel,
    ModelManifest,
    PackagePaths,
    TrainingInfo,
    build_manifest,
    load_model,
    session_options,
    write_package,
)
from edge_agent.scoring.scorer import Scorer
from firmware_sim.truth import Label

#: The columns the trees split on. The others stay in the input (the feature spec is the whole row)
#: but made the forest worse in trials: dt_s, n_prev and missing are near-constant on clean data,
#: slope32/trend8/z32 mostly describe the thermostat saw-tooth, and delta_k duplicates rate_k_per_s.
MODEL_FEATURES: tuple[str, ...] = (
    "rate_k_per_s",
    "z8",
    "dev_med8_k",
    "resid32_k",
    "stuck_run",
    "stuck_trend_k",
)
#: The score above which a reading counts as "judged a glitch" in the evaluation.
DECISION_THRESHOLD = 0.5
#: Rows scored per call in the evaluation, as the agent would batch them.
EVAL_BATCH = 256
#: Rows checked against scikit-learn and skl2onnx after export.
CHECK_ROWS = 20_000
#: Largest tolerated difference of ``score_samples`` from scikit-learn / skl2onnx (float32 sums).
CHECK_TOLERANCE = 1e-5


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainConfig:
    """Everything that decides the model's bytes."""

    seed: int = 1
    devices: int = 200
    hours: float = 12.0
    eval_seed: int | None = None
    """Seed of the held-out evaluation run; default ``seed + 1000``."""
    eval_devices: int | None = None
    """Devices in the evaluation run; default a quarter of ``devices`` (at least 10)."""
    n_estimators: int = 100
    max_samples: int = 256
    contamination: float = 0.002
    model_id: str = "glitch-iforest"
    created_utc: str | None = None
    """ISO-8601 UTC (``2026-01-01T00:00:00Z``); default now. Fix it to reproduce a package byte for byte."""
    check_export: bool = True

    @property
    def held_out_seed(self) -> int:
        """The evaluation seed actually used."""
        return self.seed + 1000 if self.eval_seed is None else self.eval_seed

    @property
    def held_out_devices(self) -> int:
        """The evaluation fleet size actually used."""
        return max(10, self.devices // 4) if self.eval_devices is None else self.eval_devices


@dataclass(frozen=True, slots=True)
class LabelCount:
    """How many readings of one label there were and how many scored above the threshold."""

    label: str
    total: int
    flagged: int

    @property
    def share(self) -> float:
        """Fraction flagged."""
        return self.flagged / self.total if self.total else 0.0


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Score > 0.5 ("glitch") against the ground truth, over readings WITH a temperature.

    Dropouts (no temperature) are left out of precision and recall: they are scored 1 by definition.
    """

    scorer: str
    per_label: tuple[LabelCount, ...]
    excursion: LabelCount
    """Clean readings during a real excursion (true temperature out of range)."""
    precision: float
    recall: float
    clean_false_positive_rate: float

    def count(self, label: Label | str) -> LabelCount:
        """The row of one label."""
        return next(c for c in self.per_label if c.label == str(label))


@dataclass(frozen=True, slots=True)
class ExportCheck:
    """Largest difference of the exported graph's ``score_samples`` from the reference implementations."""

    rows: int
    max_diff_sklearn: float
    max_diff_skl2onnx: float | None


@dataclass(slots=True)
class TrainResult:
    """What :func:`train` produced."""

    paths: PackagePaths
    manifest: ModelManifest
    model: Evaluation
    rules: Evaluation
    export_check: ExportCheck | None
    seconds: dict[str, float] = field(default_factory=dict)


def features_of(readings: LabelledReadings) -> NDArray[np.float32]:
    """The features the agent would compute for these readings, in arrival order."""
    return FeatureState(len(readings.device_ids)).update_and_features(
        readings.slots, readings.t_ms, readings.temperature
    )


def fit_forest(x_clean: NDArray[np.float32], config: TrainConfig) -> IsolationForest:
    """The IsolationForest over :data:`MODEL_FEATURES` of the clean readings (one job: deterministic)."""
    columns = [COLUMN[name] for name in MODEL_FEATURES]
    forest = IsolationForest(
        n_estimators=config.n_estimators,
        max_samples=min(config.max_samples, x_clean.shape[0]),
        contamination="auto",
        random_state=config.seed,
        n_jobs=1,
    )
    return forest.fit(np.ascontiguousarray(x_clean[:, columns]))


def _raw_anomaly(onnx_bytes: bytes, x: NDArray[np.float32]) -> NDArray[np.float64]:
    """``-score_samples`` (the forest's anomaly in (0, 1]) from an exported graph."""
    session = ort.InferenceSession(
        onnx_bytes, sess_options=session_options(), providers=["CPUExecutionProvider"]
    )
    (raw,) = session.run([RAW_OUTPUT], {INPUT_NAME: np.ascontiguousarray(x)})
    return -np.asarray(raw, dtype=np.float64).reshape(-1)


def calibrate(anomaly: NDArray[np.float64], contamination: float) -> Calibration:
    """Map the (1 - contamination) quantile to 0.5 and the median to 0.05 (see :class:`Calibration`)."""
    threshold = float(np.quantile(anomaly, 1.0 - contamination))
    median = float(np.median(anomaly))
    width = (threshold - median) / math.log(19.0)
    if not width > 0.0:
        raise ValueError("the clean training scores have no spread: too few readings to calibrate")
    return Calibration(threshold=threshold, width=width, contamination=contamination)


def check_export(
    forest: IsolationForest, onnx_bytes: bytes, x: NDArray[np.float32], *, with_skl2onnx: bool = True
) -> ExportCheck:
    """Compare the exported graph's ``score_samples`` with scikit-learn's and skl2onnx's on rows ``x``.

    Raises ValueError beyond :data:`CHECK_TOLERANCE`.
    """
    columns = [COLUMN[name] for name in MODEL_FEATURES]
    ours = -_raw_anomaly(onnx_bytes, x)
    subset = np.ascontiguousarray(x[:, columns])
    diff_sklearn = float(np.max(np.abs(ours - forest.score_samples(subset)), initial=0.0))
    diff_skl2onnx: float | None = None
    if with_skl2onnx:
        from skl2onnx import to_onnx  # noqa: PLC0415 - optional, slow import

        reference = to_onnx(
            forest,
            subset[:1],
            target_opset={"": 17, "ai.onnx.ml": 3},
            options={id(forest): {"score_samples": True}},
        )
        session = ort.InferenceSession(
            reference.SerializeToString(), sess_options=session_options(), providers=["CPUExecutionProvider"]
        )
        (theirs,) = session.run(["score_samples"], {session.get_inputs()[0].name: subset})
        diff_skl2onnx = float(
            np.max(np.abs(ours - np.asarray(theirs, dtype=np.float64).reshape(-1)), initial=0.0)
        )
    worst = max(diff_sklearn, diff_skl2onnx or 0.0)
    if worst > CHECK_TOLERANCE:
        raise ValueError(f"exported graph differs from the reference by {worst:.2e} (> {CHECK_TOLERANCE:g})")
    return ExportCheck(rows=int(x.shape[0]), max_diff_sklearn=diff_sklearn, max_diff_skl2onnx=diff_skl2onnx)


def evaluate(model: LoadedModel | None, datasets: Sequence[LabelledReadings]) -> Evaluation:
    """Score every dataset with a fresh :class:`Scorer` in batches of 256 and compare with the truth."""
    scores = []
    for data in datasets:
        scorer = Scorer(model)
        for start in range(0, len(data), EVAL_BATCH):
            part = slice(start, start + EVAL_BATCH)
            scores.append(scorer.score(data.slots[part], data.t_ms[part], data.temperature[part]).scores)
    score = np.concatenate(scores) if scores else np.zeros(0)
    label = np.concatenate([d.label for d in datasets])
    excursion = np.concatenate([d.excursion for d in datasets])
    present = ~np.isnan(np.concatenate([d.temperature for d in datasets]))
    flagged = score > DECISION_THRESHOLD
    per_label = tuple(
        LabelCount(str(lab), int((label == code).sum()), int((flagged & (label == code)).sum()))
        for code, lab in enumerate(LABELS)
    )
    glitch = present & (label != CLEAN)
    clean = present & (label == CLEAN)
    true_pos = int((flagged & glitch).sum())
    false_pos = int((flagged & clean).sum())
    real = clean & excursion
    return Evaluation(
        scorer="rules" if model is None else model.model_ref,
        per_label=per_label,
        excursion=LabelCount("excursion", int(real.sum()), int((flagged & real).sum())),
        precision=true_pos / (true_pos + false_pos) if true_pos + false_pos else 0.0,
        recall=true_pos / int(glitch.sum()) if glitch.any() else 0.0,
        clean_false_positive_rate=false_pos / int(clean.sum()) if clean.any() else 0.0,
    )


def _versions() -> dict[str, str]:
    return {
        name: importlib.metadata.version(name)
        for name in ("scikit-learn", "skl2onnx", "onnx", "onnxruntime", "numpy", "numba")
    }


def _now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def train(
    config: TrainConfig,
    out: Path,
    key: Ed25519PrivateKey,
    *,
    name: str = "default",
    progress: Callable[[str], None] = lambda _: None,
) -> TrainResult:
    """Train, export, sign and write ``out/<name>.{onnx,json,sig}``, then evaluate the package."""
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = now - clock
        clock = now

    scenarios = training_scenarios(config.hours)
    train_sets = []
    for scenario in scenarios:
        progress(
            f"simulating {scenario.name}: {config.devices} devices, {config.hours:g} h, seed {config.seed}"
        )
        train_sets.append(simulate(scenario, devices=config.devices, seed=config.seed))
    lap("simulate")
    x = np.concatenate([features_of(d) for d in train_sets])
    labels = np.concatenate([d.label for d in train_sets])
    x_clean = np.ascontiguousarray(x[labels == CLEAN])
    lap("features")
    progress(f"fitting IsolationForest on {x_clean.shape[0]} clean readings of {x.shape[0]}")
    forest = fit_forest(x_clean, config)
    columns = [COLUMN[name] for name in MODEL_FEATURES]
    placeholder = Calibration(threshold=0.5, width=1.0, contamination=config.contamination)
    draft = forest_onnx_bytes(forest, columns=columns, n_inputs=N_FEATURES, calibration=placeholder)
    calibration = calibrate(_raw_anomaly(draft, x_clean), config.contamination)
    onnx_bytes = forest_onnx_bytes(forest, columns=columns, n_inputs=N_FEATURES, calibration=calibration)
    lap("fit")
    check = None
    if config.check_export:
        rows = np.random.default_rng(config.seed).choice(
            x.shape[0], size=min(CHECK_ROWS, x.shape[0]), replace=False
        )
        check = check_export(forest, onnx_bytes, np.ascontiguousarray(x[np.sort(rows)]))
        lap("check")
    training = TrainingInfo(
        algorithm="isolation_forest",
        seed=config.seed,
        scenarios=TRAINING_SCENARIOS,
        devices=config.devices,
        hours=float(config.hours),
        n_rows=int(x.shape[0]),
        n_train=int(x_clean.shape[0]),
        n_estimators=config.n_estimators,
        max_samples=int(forest.max_samples_),
        model_features=MODEL_FEATURES,
        libraries=_versions(),
    )
    manifest = build_manifest(
        onnx_bytes,
        model_id=config.model_id,
        calibration=calibration,
        training=training,
        created_utc=config.created_utc or _now_utc(),
    )
    paths = write_package(out, onnx_bytes, manifest, key, name=name)
    loaded = load_model(paths.manifest, [key.public_key()])
    lap("write")
    eval_sets = []
    for scenario in scenarios:
        devices, seed = config.held_out_devices, config.held_out_seed
        progress(f"evaluating on {scenario.name}: {devices} devices, held-out seed {seed}")
        eval_sets.append(simulate(scenario, devices=devices, seed=seed))
    model_eval = evaluate(loaded, eval_sets)
    rules_eval = evaluate(None, eval_sets)
    lap("evaluate")
    return TrainResult(paths, manifest, model_eval, rules_eval, check, seconds)
