"""Signed model packages: write them, verify them, load them into onnxruntime.

A package is three files with one stem, e.g. ``default.onnx``, ``default.json``, ``default.sig``:

- ``<name>.onnx``: the model. One input ``features`` (float32, shape [n, F] with F the number of
  feature columns), outputs ``glitch_score`` (float32 [n, 1], calibrated to [0, 1]) and
  ``score_samples`` (the raw IsolationForest score, as scikit-learn's ``score_samples``);
- ``<name>.json``: the manifest (:class:`ModelManifest`), canonical JSON (keys sorted, no whitespace);
- ``<name>.sig``: the 64-byte Ed25519 signature of ``SIGNING_CONTEXT + manifest bytes``.

The manifest binds the ONNX file by SHA-256 and size, and names the feature spec the model was
trained on. :func:`load_model` checks, in this order, so nothing unsigned is ever interpreted: the
signature (with any of the trusted keys), the manifest (valid and canonical), the ONNX bytes (hash
and size), the feature spec (equal to what the running code computes), and finally that onnxruntime
loads the model, that its inputs and outputs are the ones above and that it scores a row. Every
failure raises :class:`~edge_agent.scoring.errors.ModelRejected` with a reason.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import numpy as np
import onnxruntime as ort
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from numpy.typing import NDArray
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from coldtrace.contract import ContractError
from coldtrace.contract.canonical import canonical_bytes, decode_model
from coldtrace.contract.reading import ID_PATTERN
from edge_agent.scoring.errors import ModelInferenceError, ModelRejected, RejectReason
from edge_agent.scoring.features import N_FEATURES, feature_spec
from edge_agent.scoring.keys import key_id

__all__ = [
    "INPUT_NAME",
    "MANIFEST_FORMAT",
    "MAX_MODEL_BYTES",
    "OPSET",
    "ORT_ERRORS",
    "RAW_OUTPUT",
    "SCORE_OUTPUT",
    "SIGNING_CONTEXT",
    "Calibration",
    "FeatureSpec",
    "LoadedModel",
    "ModelManifest",
    "ModelRejected",
    "PackagePaths",
    "RejectReason",
    "TrainingInfo",
    "build_manifest",
    "load_model",
    "session_options",
    "sign_manifest",
    "verify_package",
    "write_package",
]

logger = logging.getLogger(__name__)

#: Prefix of every signed manifest: a model signature is never valid for anything else.
SIGNING_CONTEXT = b"coldtrace/model/v1\x00"
MANIFEST_FORMAT: Final = "coldtrace-model/v1"
INPUT_NAME = "features"
SCORE_OUTPUT = "glitch_score"
RAW_OUTPUT = "score_samples"
#: Opsets the exporter targets (skl2onnx's IsolationForest converter needs exactly these).
OPSET: dict[str, int] = {"": 17, "ai.onnx.ml": 3}
SIGNATURE_BYTES = 64
#: Refuse to read more than this: a forest of a few hundred trees is a few MB.
MAX_MODEL_BYTES = 64 * 1024 * 1024
MAX_MANIFEST_BYTES = 64 * 1024
#: Scores may leave [0, 1] by float rounding only.
_SCORE_TOLERANCE = 1e-6

#: onnxruntime's own exceptions derive straight from Exception; these are the ones translated at the
#: boundary (with the errors its Python layer raises for bad arguments).
ORT_ERRORS: tuple[type[Exception], ...] = (
    *(
        v
        for v in vars(_ort_state).values()
        if isinstance(v, type) and issubclass(v, Exception) and v.__module__ == _ort_state.__name__
    ),
    RuntimeError,
    ValueError,
    TypeError,
)

_LOAD_ERRORS: tuple[type[Exception], ...] = (*ORT_ERRORS, ModelInferenceError)

Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
ModelId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
UtcTimestamp = Annotated[str, StringConstraints(pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class FeatureSpec(_Strict):
    """The feature columns a model consumes, in order, and the parameters that define them."""

    version: int
    names: tuple[str, ...]
    short_window: int
    long_window: int
    std_floor_k: float
    min_dt_s: float

    @classmethod
    def current(cls) -> FeatureSpec:
        """What :mod:`edge_agent.scoring.features` computes in this build."""
        return cls.model_validate(feature_spec(), strict=False)


class Calibration(_Strict):
    """How the raw IsolationForest anomaly ``a = -score_samples`` (in (0, 1]) maps to [0, 1].

    ``glitch_score = 1 / (1 + exp(-(a - threshold) / width))``: ``threshold`` is the (1 -
    contamination) quantile of ``a`` over the clean training readings, so that fraction of them scores
    above 0.5; ``width`` puts their median at 0.05.
    """

    threshold: float
    width: Annotated[float, Field(gt=0.0)]
    contamination: Annotated[float, Field(gt=0.0, lt=0.5)]


class TrainingInfo(_Strict):
    """How the model was made, so that it can be made again."""

    algorithm: Literal["isolation_forest"]
    seed: int
    scenarios: tuple[str, ...]
    devices: int
    hours: float
    n_rows: int
    """Readings the simulation produced (what a gateway decoded)."""
    n_train: int
    """Readings the forest was fitted on (the clean ones)."""
    n_estimators: int
    max_samples: int
    model_features: tuple[str, ...]
    """The feature columns the trees split on (a subset of ``feature_spec.names``)."""
    libraries: dict[str, str]


class ModelManifest(_Strict):
    """What the signature covers."""

    format: Literal["coldtrace-model/v1"]
    model_id: ModelId
    sha256: Sha256Hex
    size: Annotated[int, Field(ge=1, le=MAX_MODEL_BYTES)]
    opset: dict[str, int]
    feature_spec: FeatureSpec
    calibration: Calibration
    training: TrainingInfo
    created_utc: UtcTimestamp

    @property
    def model_ref(self) -> str:
        """``<model id>@<first 16 hex of the ONNX file's SHA-256>`` (the readings' ``model`` field)."""
        return f"{self.model_id}@{self.sha256[:16]}"


@dataclass(frozen=True, slots=True)
class PackagePaths:
    """The three files of a package."""

    onnx: Path
    manifest: Path
    signature: Path

    @classmethod
    def of(cls, dir_or_path: Path | str) -> PackagePaths:
        """A package's files from its directory (``default.*``, or the only ``*.json`` there), any of
        its three files, or its stem."""
        path = Path(dir_or_path)
        if path.is_dir():
            stem = path / "default"
            if not stem.with_suffix(".json").exists():
                manifests = sorted(path.glob("*.json"))
                if len(manifests) != 1:
                    raise ModelRejected(
                        RejectReason.MISSING_FILE,
                        f"expected default.json or exactly one *.json, found {len(manifests)}",
                        path=path,
                    )
                stem = manifests[0].with_suffix("")
        elif path.suffix in {".onnx", ".json", ".sig"}:
            stem = path.with_suffix("")
        else:
            stem = path
        return cls(stem.with_suffix(".onnx"), stem.with_suffix(".json"), stem.with_suffix(".sig"))


def build_manifest(
    onnx_bytes: bytes,
    *,
    model_id: str,
    calibration: Calibration,
    training: TrainingInfo,
    created_utc: str,
) -> ModelManifest:
    """The manifest for ``onnx_bytes`` trained on this build's feature spec."""
    return ModelManifest(
        format=MANIFEST_FORMAT,
        model_id=model_id,
        sha256=hashlib.sha256(onnx_bytes).hexdigest(),
        size=len(onnx_bytes),
        opset=dict(OPSET),
        feature_spec=FeatureSpec.current(),
        calibration=calibration,
        training=training,
        created_utc=created_utc,
    )


def sign_manifest(manifest: ModelManifest, key: Ed25519PrivateKey) -> tuple[bytes, bytes]:
    """The canonical manifest bytes and their signature."""
    body = canonical_bytes(manifest)
    return body, key.sign(SIGNING_CONTEXT + body)


def write_package(
    directory: Path,
    onnx_bytes: bytes,
    manifest: ModelManifest,
    key: Ed25519PrivateKey,
    *,
    name: str = "default",
) -> PackagePaths:
    """Write ``directory/<name>.{onnx,json,sig}`` (creating the directory) and return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = PackagePaths.of(directory / name)
    body, signature = sign_manifest(manifest, key)
    paths.onnx.write_bytes(onnx_bytes)
    paths.manifest.write_bytes(body)
    paths.signature.write_bytes(signature)
    return paths


def _read(path: Path, *, limit: int, what: str, missing: RejectReason, too_big: RejectReason) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise ModelRejected(too_big, f"the {what} is {size} bytes (at most {limit} expected)", path=path)
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ModelRejected(missing, f"no {what} file", path=path) from exc
    except OSError as exc:
        raise ModelRejected(
            RejectReason.MISSING_FILE, f"cannot read the {what}: {exc.strerror}", path=path
        ) from exc


def verify_package(
    dir_or_path: Path | str, trusted_keys: Sequence[Ed25519PublicKey]
) -> tuple[ModelManifest, bytes, str]:
    """Check signature, manifest, hash and feature spec; return the manifest, ONNX bytes and signer's key id.

    Does not touch onnxruntime (see :func:`load_model` for the full check).
    """
    paths = PackagePaths.of(dir_or_path)
    body = _read(
        paths.manifest, limit=MAX_MANIFEST_BYTES, what="manifest",
        missing=RejectReason.MISSING_FILE, too_big=RejectReason.BAD_MANIFEST,
    )  # fmt: skip
    signature = _read(
        paths.signature, limit=SIGNATURE_BYTES, what="signature",
        missing=RejectReason.UNSIGNED, too_big=RejectReason.BAD_SIGNATURE,
    )  # fmt: skip
    if len(signature) != SIGNATURE_BYTES:
        raise ModelRejected(
            RejectReason.BAD_SIGNATURE, f"signature is {len(signature)} bytes, not 64", path=paths.signature
        )
    signer = _signer(body, signature, trusted_keys)
    if signer is None:
        raise ModelRejected(
            RejectReason.BAD_SIGNATURE,
            f"the manifest is not signed by any of the {len(trusted_keys)} trusted key(s)",
            path=paths.signature,
        )
    try:
        manifest = decode_model(ModelManifest, body)
    except ContractError as exc:
        raise ModelRejected(RejectReason.BAD_MANIFEST, str(exc), path=paths.manifest) from exc
    onnx_bytes = _read(
        paths.onnx, limit=manifest.size, what="ONNX model",
        missing=RejectReason.MISSING_FILE, too_big=RejectReason.HASH_MISMATCH,
    )  # fmt: skip
    digest = hashlib.sha256(onnx_bytes).hexdigest()
    if digest != manifest.sha256 or len(onnx_bytes) != manifest.size:
        raise ModelRejected(
            RejectReason.HASH_MISMATCH,
            f"the ONNX file has SHA-256 {digest[:16]}… ({len(onnx_bytes)} bytes); the manifest names "
            f"{manifest.sha256[:16]}… ({manifest.size} bytes)",
            path=paths.onnx,
        )
    expected = FeatureSpec.current()
    if manifest.feature_spec != expected:
        raise ModelRejected(
            RejectReason.FEATURE_SPEC_MISMATCH,
            f"trained on {manifest.feature_spec.model_dump()}, this build computes {expected.model_dump()}",
            path=paths.manifest,
        )
    return manifest, onnx_bytes, signer


def _signer(body: bytes, signature: bytes, trusted_keys: Sequence[Ed25519PublicKey]) -> str | None:
    for key in trusted_keys:
        try:
            key.verify(signature, SIGNING_CONTEXT + body)
        except InvalidSignature:
            continue
        return key_id(key)
    return None


def session_options() -> Any:
    """One thread, sequential: the agent scores small batches and must not compete with its own loops."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: onnxruntime warnings go to stderr, not our logs
    return options


class LoadedModel:
    """A verified package with its onnxruntime session. Not thread-safe (one scorer owns it)."""

    __slots__ = ("_session", "key_id", "manifest", "path")

    def __init__(self, manifest: ModelManifest, session: Any, *, path: Path, key_id: str) -> None:
        self.manifest = manifest
        self.path = path
        self.key_id = key_id
        self._session = session

    @property
    def model_ref(self) -> str:
        """``<model id>@<first 16 hex of the ONNX SHA-256>``."""
        return self.manifest.model_ref

    def infer(self, features: NDArray[np.float32]) -> NDArray[np.float64]:
        """Calibrated glitch scores in [0, 1] for a (n, F) float32 feature matrix.

        Raises ModelInferenceError if onnxruntime fails or returns anything but n finite scores in [0, 1].
        """
        n = features.shape[0]
        try:
            (raw,) = self._session.run([SCORE_OUTPUT], {INPUT_NAME: features})
        except ORT_ERRORS as exc:
            raise ModelInferenceError(self.model_ref, f"{type(exc).__name__}: {exc}") from exc
        scores = np.asarray(raw, dtype=np.float64).reshape(-1)
        if scores.shape != (n,):
            raise ModelInferenceError(self.model_ref, f"returned {scores.shape[0]} scores for {n} rows")
        if n == 0:
            return scores
        # min/max propagate NaN, and NaN fails every comparison: this also refuses non-finite scores.
        low, high = scores.min(), scores.max()
        if not (low >= -_SCORE_TOLERANCE and high <= 1.0 + _SCORE_TOLERANCE):
            raise ModelInferenceError(self.model_ref, "returned scores outside [0, 1] or not finite")
        return scores if low >= 0.0 and high <= 1.0 else np.clip(scores, 0.0, 1.0)


def _check_interface(session: Any) -> None:
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME or inputs[0].type != "tensor(float)":
        found = [(i.name, i.type) for i in inputs]
        raise ValueError(f"expected one float input {INPUT_NAME!r}, found {found}")
    shape = inputs[0].shape
    if len(shape) != 2 or shape[1] != N_FEATURES:
        raise ValueError(f"input {INPUT_NAME!r} has shape {shape}, expected [n, {N_FEATURES}]")
    outputs = {o.name for o in session.get_outputs()}
    if SCORE_OUTPUT not in outputs:
        raise ValueError(f"no output {SCORE_OUTPUT!r} (outputs: {sorted(outputs)})")


def load_model(dir_or_path: Path | str, trusted_keys: Sequence[Ed25519PublicKey]) -> LoadedModel:
    """Verify a package (see the module docstring) and open it in onnxruntime.

    Raises ModelRejected, with the reason, if anything is wrong.
    """
    manifest, onnx_bytes, signer = verify_package(dir_or_path, trusted_keys)
    paths = PackagePaths.of(dir_or_path)
    try:
        session = ort.InferenceSession(
            onnx_bytes, sess_options=session_options(), providers=["CPUExecutionProvider"]
        )
        _check_interface(session)
        model = LoadedModel(manifest, session, path=paths.onnx, key_id=signer)
        model.infer(np.zeros((1, N_FEATURES), dtype=np.float32))
    except _LOAD_ERRORS as exc:
        raise ModelRejected(
            RejectReason.CORRUPT_MODEL, f"onnxruntime cannot use it: {exc}", path=paths.onnx
        ) from exc
    logger.info("loaded model %s from %s (signed by key %s)", model.model_ref, paths.onnx, signer)
    return model
