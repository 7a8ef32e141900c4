"""Training: a tiny run is reproducible for a seed, loads, and its export matches the references."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.scoring.dataset import stretch
from firmware_sim.scenario import builtin_scenarios

pytest.importorskip("sklearn")
pytest.importorskip("skl2onnx")
pytest.importorskip("onnx")

from edge_agent.scoring.model import load_model
from edge_agent.scoring.train import TrainConfig, TrainResult, train

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
TINY = TrainConfig(
    seed=7, devices=4, hours=1.0, eval_devices=3, n_estimators=20, max_samples=128,
    created_utc="2026-01-01T00:00:00Z", check_export=False,
)  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    return train(TINY, tmp_path_factory.mktemp("tiny"), KEY)


def test_same_seed_same_package(tiny: TrainResult, tmp_path: Path) -> None:
    again = train(TINY, tmp_path, KEY)
    assert again.manifest.sha256 == tiny.manifest.sha256
    for ours, theirs in zip(
        (again.paths.onnx, again.paths.manifest, again.paths.signature),
        (tiny.paths.onnx, tiny.paths.manifest, tiny.paths.signature),
        strict=True,
    ):
        assert ours.read_bytes() == theirs.read_bytes(), ours.name


def test_another_seed_another_model(tiny: TrainResult, tmp_path: Path) -> None:
    other = train(replace(TINY, seed=8), tmp_path, KEY)
    assert other.manifest.sha256 != tiny.manifest.sha256


def test_the_package_loads_and_records_how_it_was_made(tiny: TrainResult) -> None:
    model = load_model(tiny.paths.onnx.parent, [KEY.public_key()])
    assert model.model_ref == tiny.manifest.model_ref
    training = model.manifest.training
    assert (training.seed, training.devices, training.hours) == (7, 4, 1.0)
    assert training.n_estimators == 20
    assert 0 < training.n_train <= training.n_rows
    assert set(training.libraries) >= {"scikit-learn", "skl2onnx", "onnx", "onnxruntime"}
    assert model.manifest.calibration.contamination == TINY.contamination
    # The evaluation ran on the held-out seed and found the spikes.
    assert tiny.model.count("spike").total > 0
    assert tiny.rules.count("spike").share == 1.0


def test_export_matches_scikit_learn_and_skl2onnx(tmp_path: Path) -> None:
    config = replace(TINY, check_export=True)
    result = train(config, tmp_path, KEY)
    check = result.export_check
    assert check is not None
    assert check.max_diff_sklearn < 1e-5
    assert check.max_diff_skl2onnx is not None
    assert check.max_diff_skl2onnx < 1e-5


def test_stretch_repeats_events_with_the_original_period() -> None:
    storm = builtin_scenarios()["glitch-storm"]  # 2 h, one storm at 30 min
    long = stretch(storm, 7.0)
    assert long.duration_s == 7 * 3600
    assert [e.at_s for e in long.events] == [1800, 9000, 16200, 23400]
