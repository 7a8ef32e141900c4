"""Signed firmware updates for the simulated device.

Image layout (integers big-endian)::

    b"CTFW" | manifest length (u32) | manifest | Ed25519 signature (64 bytes) | blob

The manifest is canonical JSON (UTF-8, keys sorted, no spaces)::

    {"device_model":"reefer-x2","sha256":"<hex of SHA-256 of blob>","size":<len(blob)>,"version":"2.4.1"}

The vendor signs ``SIGNING_CONTEXT + manifest`` with its Ed25519 key; the context keeps a firmware
signature from ever being valid for anything else. The blob is bound through the manifest's hash
and size. A device installs an image only if the signature verifies with the vendor key it trusts,
the manifest names its model and a strictly newer version (numeric semver order: 2.10.0 > 2.9.0),
and the blob matches the manifest. Otherwise it keeps its current firmware and reports why.

The signature is checked before the manifest is parsed, so nothing unsigned is ever interpreted.
"""

from __future__ import annotations

import enum
import hashlib
import re
import struct
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from coldtrace.contract.reading import ID_PATTERN
from coldtrace.device_formats import parse_version

IMAGE_MAGIC = b"CTFW"
SIGNING_CONTEXT = b"coldtrace/firmware/v1\x00"
SIGNATURE_BYTES = 64
#: A manifest is four short fields; anything much longer is not one.
MAX_MANIFEST_BYTES = 4096

_HEADER = struct.Struct(">4sI")
_MODEL = re.compile(ID_PATTERN)
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_MANIFEST_KEYS = frozenset({"device_model", "sha256", "size", "version"})


class RejectReason(enum.StrEnum):
    """Why a device refused an image; it reports this and keeps its current firmware."""

    MALFORMED = "malformed"  #: not an image frame, or a signed manifest that is not a valid manifest
    BAD_SIGNATURE = "bad_signature"  #: the manifest is not signed by the vendor key the device trusts
    WRONG_MODEL = "wrong_model"  #: built for another device model
    DOWNGRADE = "downgrade"  #: older than the running firmware
    SAME_VERSION = "same_version"  #: the running firmware already
    HASH_MISMATCH = "hash_mismatch"  #: the blob is not the one the manifest describes (size or SHA-256)


@dataclass(frozen=True, slots=True)
class Manifest:
    """What the vendor signs about a blob."""

    device_model: str
    version: str
    sha256: str
    size: int

    def to_bytes(self) -> bytes:
        """The canonical JSON the signature covers."""
        document = {
            "device_model": self.device_model,
            "sha256": self.sha256,
            "size": self.size,
            "version": self.version,
        }
        return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True, slots=True)
class UpdateResult:
    """The outcome of offering an image to a device."""

    accepted: bool
    version: str
    """The version the device runs after the offer: the new one if accepted, else the current one."""
    offered: str | None = None
    """The version the image's signed manifest names, when it got that far."""
    reason: RejectReason | None = None
    """Why the image was refused; None when accepted."""
    detail: str = ""


class _RefusedError(Exception):
    """Internal: ends the checks early with the reason to report."""

    def __init__(self, reason: RejectReason, detail: str, offered: str | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.offered = offered


def build_image(blob: bytes, device_model: str, version: str, vendor_key: Ed25519PrivateKey) -> bytes:
    """Sign a manifest for ``blob`` with the vendor key and frame it with the blob.

    Raises ValueError if ``device_model`` is not an identifier or ``version`` not MAJOR.MINOR.PATCH.
    """
    if _MODEL.fullmatch(device_model) is None:
        raise ValueError(f"device model {device_model!r} does not match {ID_PATTERN}")
    parse_version(version)
    manifest = Manifest(
        device_model=device_model, version=version, sha256=hashlib.sha256(blob).hexdigest(), size=len(blob)
    ).to_bytes()
    signature = vendor_key.sign(SIGNING_CONTEXT + manifest)
    return _HEADER.pack(IMAGE_MAGIC, len(manifest)) + manifest + signature + blob


def _split(image: bytes) -> tuple[bytes, bytes, bytes]:
    """Manifest bytes, signature and blob of an image frame; nothing in them is trusted yet."""
    if len(image) < _HEADER.size:
        raise _RefusedError(RejectReason.MALFORMED, f"image of {len(image)} bytes has no header")
    magic, manifest_length = _HEADER.unpack_from(image)
    if magic != IMAGE_MAGIC:
        raise _RefusedError(RejectReason.MALFORMED, f"magic {magic!r} is not {IMAGE_MAGIC!r}")
    if manifest_length > MAX_MANIFEST_BYTES:
        raise _RefusedError(
            RejectReason.MALFORMED, f"manifest length {manifest_length} exceeds {MAX_MANIFEST_BYTES}"
        )
    signature_start = _HEADER.size + manifest_length
    blob_start = signature_start + SIGNATURE_BYTES
    if len(image) < blob_start:
        raise _RefusedError(RejectReason.MALFORMED, "image ends before its signature does (truncated)")
    return image[_HEADER.size : signature_start], image[signature_start:blob_start], image[blob_start:]


def _parse_manifest(data: bytes) -> Manifest:
    """The signed manifest, which must be canonical and complete."""
    try:
        document: Any = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise _RefusedError(RejectReason.MALFORMED, f"manifest is not JSON: {exc}") from exc
    if type(document) is not dict or document.keys() != _MANIFEST_KEYS:
        raise _RefusedError(
            RejectReason.MALFORMED, f"manifest must have exactly the keys {sorted(_MANIFEST_KEYS)}"
        )
    model, version, digest, size = (document[k] for k in ("device_model", "version", "sha256", "size"))
    if not (type(model) is str and type(version) is str and type(digest) is str and type(size) is int):
        raise _RefusedError(RejectReason.MALFORMED, "manifest field of the wrong type")
    manifest = Manifest(device_model=model, version=version, sha256=digest, size=size)
    try:
        parse_version(version)
    except ValueError as exc:
        raise _RefusedError(RejectReason.MALFORMED, str(exc)) from exc
    if _SHA256_HEX.fullmatch(digest) is None or size < 0 or manifest.to_bytes() != data:
        raise _RefusedError(RejectReason.MALFORMED, "manifest is not in canonical form")
    return manifest


def _check(current: tuple[int, int, int], device_model: str, image: bytes, key: Ed25519PublicKey) -> Manifest:
    """The manifest of an installable image; _RefusedError at the first check that fails.

    The checks run in order: frame, signature, manifest, model, version, blob.
    """
    manifest_bytes, signature, blob = _split(image)
    try:
        key.verify(signature, SIGNING_CONTEXT + manifest_bytes)
    except InvalidSignature as exc:
        raise _RefusedError(
            RejectReason.BAD_SIGNATURE, "manifest signature does not verify with the vendor key"
        ) from exc
    manifest = _parse_manifest(manifest_bytes)
    offered = manifest.version
    if manifest.device_model != device_model:
        raise _RefusedError(
            RejectReason.WRONG_MODEL, f"image is for {manifest.device_model}, not {device_model}", offered
        )
    new = parse_version(manifest.version)
    if new == current:
        raise _RefusedError(RejectReason.SAME_VERSION, f"{offered} is already running", offered)
    if new < current:
        raise _RefusedError(RejectReason.DOWNGRADE, f"{offered} is older than the running firmware", offered)
    if len(blob) != manifest.size:
        raise _RefusedError(
            RejectReason.HASH_MISMATCH, f"blob is {len(blob)} bytes, manifest says {manifest.size}", offered
        )
    if hashlib.sha256(blob).hexdigest() != manifest.sha256:
        raise _RefusedError(RejectReason.HASH_MISMATCH, "blob SHA-256 differs from the manifest's", offered)
    return manifest


def accept_update(
    current_version: str, device_model: str, image: bytes, vendor_public_key: Ed25519PublicKey
) -> UpdateResult:
    """Decide whether a device running ``current_version`` installs ``image``.

    Never raises for a bad image: the refusal is returned, with its reason, for the device to report.
    ``current_version`` is the device's own state, so a malformed one is a bug: ValueError.
    """
    current = parse_version(current_version)
    try:
        manifest = _check(current, device_model, image, vendor_public_key)
    except _RefusedError as refused:
        return UpdateResult(
            accepted=False,
            version=current_version,
            offered=refused.offered,
            reason=refused.reason,
            detail=refused.detail,
        )
    return UpdateResult(accepted=True, version=manifest.version, offered=manifest.version)


class FirmwareSlot:
    """A device's installed firmware: replaced only by an image that :func:`accept_update` approves."""

    def __init__(
        self, *, device_model: str, version: str, vendor_public_key: Ed25519PublicKey, blob: bytes = b""
    ) -> None:
        parse_version(version)
        self.device_model = device_model
        self._version = version
        self._blob = blob
        self._vendor_public_key = vendor_public_key

    @property
    def version(self) -> str:
        """The running firmware version."""
        return self._version

    @property
    def blob(self) -> bytes:
        """The running firmware image's blob."""
        return self._blob

    def offer(self, image: bytes) -> UpdateResult:
        """Install ``image`` if it is acceptable; either way, say what happened."""
        result = accept_update(self._version, self.device_model, image, self._vendor_public_key)
        if result.accepted:
            self._version = result.version
            self._blob = _split(image)[2]
        return result
