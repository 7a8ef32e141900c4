"""Errors of the scoring stage: a model package that is refused, a model that fails while running."""

from __future__ import annotations

import enum
from pathlib import Path


class RejectReason(enum.StrEnum):
    """Why a model package was refused; stable strings, fit for metric labels and logs."""

    MISSING_FILE = "missing_file"  #: the manifest or the ONNX file is not there or cannot be read
    UNSIGNED = "unsigned"  #: no signature file next to the manifest
    BAD_SIGNATURE = "bad_signature"  #: the signature verifies with none of the trusted keys
    BAD_MANIFEST = "bad_manifest"  #: signed, but not a valid canonical manifest
    HASH_MISMATCH = "hash_mismatch"  #: the ONNX bytes are not the ones the manifest names
    FEATURE_SPEC_MISMATCH = "feature_spec_mismatch"  #: trained on other features than this code computes
    CORRUPT_MODEL = "corrupt_model"  #: onnxruntime cannot load or run it, or its inputs/outputs are wrong


class ScoringError(Exception):
    """Base of the scoring stage's errors."""


class ModelRejected(ScoringError):
    """A model package failed verification; the agent keeps scoring with the rules."""

    def __init__(self, reason: RejectReason, detail: str, *, path: Path | str | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.path = None if path is None else str(path)
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}{reason.value}: {detail}")


class ModelInferenceError(ScoringError):
    """A loaded model raised or returned something unusable while scoring a batch."""

    def __init__(self, model_ref: str, detail: str) -> None:
        self.model_ref = model_ref
        self.detail = detail
        super().__init__(f"model {model_ref} failed: {detail}")
