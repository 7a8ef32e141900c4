"""Model packages: the shipped default loads; every kind of bad package is refused with its reason."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from coldtrace.contract.reading import MODEL_REF_PATTERN
from edge_agent.scoring.errors import ModelRejected, RejectReason
from edge_agent.scoring.features import N_FEATURES, feature_spec
from edge_agent.scoring.model import (
    SIGNING_CONTEXT,
    FeatureSpec,
    LoadedModel,
    ModelManifest,
    PackagePaths,
    load_model,
)
from tests.edge_agent.scoring.conftest import MODELS_DIR, SHIPPED, repackage


def _rejected(path: Path, keys: list[Ed25519PublicKey]) -> RejectReason:
    with pytest.raises(ModelRejected) as info:
        load_model(path, keys)
    return info.value.reason


def test_shipped_default_loads_with_the_committed_key(shipped_model: LoadedModel) -> None:
    assert re.fullmatch(MODEL_REF_PATTERN, shipped_model.model_ref)
    manifest = shipped_model.manifest
    assert shipped_model.model_ref == f"{manifest.model_id}@{manifest.sha256[:16]}"
    assert manifest.feature_spec == FeatureSpec.current()
    assert manifest.opset == {"": 17, "ai.onnx.ml": 3}
    scores = shipped_model.infer(np.zeros((4, N_FEATURES), dtype=np.float32))
    assert scores.shape == (4,)
    assert ((scores >= 0) & (scores <= 1)).all()


def test_shipped_default_is_small_and_the_private_key_is_not_shipped() -> None:
    assert PackagePaths.of(SHIPPED).onnx.stat().st_size < 2 * 1024 * 1024
    for path in MODELS_DIR.iterdir():
        assert b"PRIVATE KEY" not in path.read_bytes(), path


@pytest.mark.parametrize("how", ["directory", "stem", "onnx", "manifest"])
def test_a_package_is_found_from_any_of_its_names(
    how: str, package_copy: PackagePaths, shipped_key: Ed25519PublicKey
) -> None:
    path = {
        "directory": package_copy.onnx.parent,
        "stem": package_copy.onnx.with_suffix(""),
        "onnx": package_copy.onnx,
        "manifest": package_copy.manifest,
    }[how]
    assert load_model(path, [shipped_key]).model_ref


def test_tampered_onnx_bytes(package_copy: PackagePaths, shipped_key: Ed25519PublicKey) -> None:
    data = bytearray(package_copy.onnx.read_bytes())
    data[len(data) // 2] ^= 0x01
    package_copy.onnx.write_bytes(bytes(data))
    assert _rejected(package_copy.onnx, [shipped_key]) is RejectReason.HASH_MISMATCH


def test_tampered_manifest(package_copy: PackagePaths, shipped_key: Ed25519PublicKey) -> None:
    document = orjson.loads(package_copy.manifest.read_bytes())
    document["calibration"]["threshold"] = 2.0  # would silence every glitch
    package_copy.manifest.write_bytes(orjson.dumps(document, option=orjson.OPT_SORT_KEYS))
    assert _rejected(package_copy.onnx, [shipped_key]) is RejectReason.BAD_SIGNATURE


def test_wrong_key(package_copy: PackagePaths, throwaway_key: Ed25519PrivateKey) -> None:
    assert _rejected(package_copy.onnx, [throwaway_key.public_key()]) is RejectReason.BAD_SIGNATURE


def test_any_trusted_key_may_have_signed(
    package_copy: PackagePaths, shipped_key: Ed25519PublicKey, throwaway_key: Ed25519PrivateKey
) -> None:
    model = load_model(package_copy.onnx, [throwaway_key.public_key(), shipped_key])
    assert model.key_id


def test_no_trusted_keys(package_copy: PackagePaths) -> None:
    assert _rejected(package_copy.onnx, []) is RejectReason.BAD_SIGNATURE


def test_unsigned(package_copy: PackagePaths, shipped_key: Ed25519PublicKey) -> None:
    package_copy.signature.unlink()
    assert _rejected(package_copy.onnx, [shipped_key]) is RejectReason.UNSIGNED


def test_truncated_signature(package_copy: PackagePaths, shipped_key: Ed25519PublicKey) -> None:
    package_copy.signature.write_bytes(package_copy.signature.read_bytes()[:63])
    assert _rejected(package_copy.onnx, [shipped_key]) is RejectReason.BAD_SIGNATURE


def test_oversized_files(package_copy: PackagePaths, shipped_key: Ed25519PublicKey) -> None:
    package_copy.signature.write_bytes(package_copy.signature.read_bytes() * 2)
    assert _rejected(package_copy.onnx, [shipped_key]) is RejectReason.BAD_SIGNATURE
    package_copy.signature.write_bytes(package_copy.signature.read_bytes()[:64])
    with package_copy.onnx.open("ab") as handle:
        handle.write(b"\0")  # one byte more than the manifest says: not even read
    assert _rejected(package_copy.onnx, [shipped_key]) is RejectReason.HASH_MISMATCH


def test_missing_onnx(package_copy: PackagePaths, shipped_key: Ed25519PublicKey) -> None:
    package_copy.onnx.unlink()
    assert _rejected(package_copy.manifest, [shipped_key]) is RejectReason.MISSING_FILE


def test_missing_package(tmp_path: Path, shipped_key: Ed25519PublicKey) -> None:
    assert _rejected(tmp_path, [shipped_key]) is RejectReason.MISSING_FILE
    assert _rejected(tmp_path / "nothing", [shipped_key]) is RejectReason.MISSING_FILE


def test_signed_but_not_canonical(
    package_copy: PackagePaths, throwaway_key: Ed25519PrivateKey, shipped_manifest: ModelManifest
) -> None:
    body = orjson.dumps(shipped_manifest.model_dump(mode="json"), option=orjson.OPT_INDENT_2)
    package_copy.manifest.write_bytes(body)
    package_copy.signature.write_bytes(throwaway_key.sign(SIGNING_CONTEXT + body))
    assert _rejected(package_copy.onnx, [throwaway_key.public_key()]) is RejectReason.BAD_MANIFEST


def test_signed_garbage_instead_of_onnx(
    tmp_path: Path, throwaway_key: Ed25519PrivateKey, shipped_manifest: ModelManifest
) -> None:
    paths = repackage(tmp_path, b"\x08\x07garbage, not a protobuf" * 40, shipped_manifest, throwaway_key)
    with pytest.raises(ModelRejected) as info:
        load_model(paths.onnx, [throwaway_key.public_key()])
    assert info.value.reason is RejectReason.CORRUPT_MODEL
    assert "onnxruntime" in str(info.value)


def test_signed_onnx_with_the_wrong_interface(
    tmp_path: Path, throwaway_key: Ed25519PrivateKey, shipped_manifest: ModelManifest
) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper  # noqa: PLC0415

    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["x"], ["glitch_score"])],
        "wrong",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("glitch_score", TensorProto.FLOAT, ["n", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    paths = repackage(tmp_path, model.SerializeToString(), shipped_manifest, throwaway_key)
    with pytest.raises(ModelRejected) as info:
        load_model(paths.onnx, [throwaway_key.public_key()])
    assert info.value.reason is RejectReason.CORRUPT_MODEL
    assert "features" in info.value.detail


def test_feature_spec_mismatch(
    tmp_path: Path,
    package_copy: PackagePaths,
    throwaway_key: Ed25519PrivateKey,
    shipped_manifest: ModelManifest,
) -> None:
    spec = feature_spec()
    other = FeatureSpec.model_validate({**spec, "long_window": 64}, strict=False)
    paths = repackage(
        tmp_path / "other",
        package_copy.onnx.read_bytes(),
        shipped_manifest,
        throwaway_key,
        feature_spec=other,
    )
    with pytest.raises(ModelRejected) as info:
        load_model(paths.onnx, [throwaway_key.public_key()])
    assert info.value.reason is RejectReason.FEATURE_SPEC_MISMATCH
    assert "long_window" in info.value.detail
