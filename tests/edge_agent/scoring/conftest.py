"""Fixtures for the scoring tests: the shipped default model, throwaway keys, package helpers."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

import edge_agent
from edge_agent.scoring.keys import load_public_key
from edge_agent.scoring.model import (
    LoadedModel,
    ModelManifest,
    PackagePaths,
    load_model,
    verify_package,
    write_package,
)

MODELS_DIR = Path(edge_agent.__file__).parent / "models"
SHIPPED = MODELS_DIR / "default"
SHIPPED_KEY = MODELS_DIR / "dev-signing-key.pub.pem"


@pytest.fixture(scope="session")
def shipped_key() -> Ed25519PublicKey:
    """The committed public half of the development model-signing key."""
    return load_public_key(SHIPPED_KEY)


@pytest.fixture(scope="session")
def shipped_model(shipped_key: Ed25519PublicKey) -> LoadedModel:
    """The shipped default model, verified."""
    return load_model(SHIPPED, [shipped_key])


@pytest.fixture(scope="session")
def shipped_manifest(shipped_key: Ed25519PublicKey) -> ModelManifest:
    """The shipped default model's manifest."""
    return verify_package(SHIPPED, [shipped_key])[0]


@pytest.fixture
def package_copy(tmp_path: Path) -> PackagePaths:
    """A copy of the shipped package in a temporary directory, free to tamper with."""
    paths = PackagePaths.of(SHIPPED)
    for source in (paths.onnx, paths.manifest, paths.signature):
        shutil.copy(source, tmp_path / source.name)
    return PackagePaths.of(tmp_path)


@pytest.fixture(scope="session")
def throwaway_key() -> Ed25519PrivateKey:
    """A key nobody trusts unless a test says so."""
    return Ed25519PrivateKey.generate()


def repackage(
    directory: Path, onnx_bytes: bytes, base: ModelManifest, key: Ed25519PrivateKey, **updates: Any
) -> PackagePaths:
    """Sign ``onnx_bytes`` with ``key`` under a copy of ``base``: hash and size fixed up, then ``updates``."""
    manifest = base.model_copy(
        update={"sha256": hashlib.sha256(onnx_bytes).hexdigest(), "size": len(onnx_bytes), **updates}
    )
    return write_package(directory, onnx_bytes, manifest, key)
