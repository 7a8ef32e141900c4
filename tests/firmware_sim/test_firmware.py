"""Signed firmware updates: only a vendor-signed, newer image for this model, with its own blob, installs."""

from __future__ import annotations

import hashlib
import struct

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_sim.firmware import (
    IMAGE_MAGIC,
    SIGNING_CONTEXT,
    FirmwareSlot,
    RejectReason,
    UpdateResult,
    accept_update,
    build_image,
)

VENDOR = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
MODEL = "reefer-x2"
BLOB = bytes(range(256)) * 4
IMAGE = build_image(BLOB, MODEL, "2.0.0", VENDOR)


def _offer(image: bytes, current: str = "1.9.9", model: str = MODEL) -> UpdateResult:
    return accept_update(current, model, image, VENDOR.public_key())


def _manifest_span(image: bytes) -> tuple[int, int]:
    (length,) = struct.unpack_from(">I", image, 4)
    return 8, 8 + length


def _signed_image(manifest: bytes, blob: bytes, key: Ed25519PrivateKey = VENDOR) -> bytes:
    """An image around any manifest bytes, correctly signed: for what only the vendor could send."""
    signature = key.sign(SIGNING_CONTEXT + manifest)
    return IMAGE_MAGIC + struct.pack(">I", len(manifest)) + manifest + signature + blob


def test_layout_and_canonical_manifest() -> None:
    start, end = _manifest_span(IMAGE)
    manifest = IMAGE[start:end]
    assert IMAGE[:4] == b"CTFW"
    assert manifest == orjson.dumps(
        {
            "device_model": MODEL,
            "sha256": hashlib.sha256(BLOB).hexdigest(),
            "size": len(BLOB),
            "version": "2.0.0",
        },
        option=orjson.OPT_SORT_KEYS,
    )
    VENDOR.public_key().verify(IMAGE[end : end + 64], SIGNING_CONTEXT + manifest)
    assert IMAGE[end + 64 :] == BLOB


def test_valid_image_is_accepted_and_the_version_bumps() -> None:
    slot = FirmwareSlot(device_model=MODEL, version="1.9.9", vendor_public_key=VENDOR.public_key())
    result = slot.offer(IMAGE)
    assert result == UpdateResult(accepted=True, version="2.0.0", offered="2.0.0")
    assert (slot.version, slot.blob) == ("2.0.0", BLOB)
    # Offering it again is now a no-op refusal.
    again = slot.offer(IMAGE)
    assert (again.accepted, again.reason, again.version) == (False, RejectReason.SAME_VERSION, "2.0.0")


def test_rejection_leaves_the_slot_alone() -> None:
    slot = FirmwareSlot(
        device_model=MODEL, version="2.1.0", vendor_public_key=VENDOR.public_key(), blob=b"old"
    )
    result = slot.offer(IMAGE)
    assert (result.accepted, result.reason, result.version, result.offered) == (
        False,
        RejectReason.DOWNGRADE,
        "2.1.0",
        "2.0.0",
    )
    assert (slot.version, slot.blob) == ("2.1.0", b"old")
    assert result.detail


@pytest.mark.parametrize(
    ("current", "offered", "reason"),
    [
        ("2.0.0", "1.9.9", RejectReason.DOWNGRADE),
        ("2.10.0", "2.9.0", RejectReason.DOWNGRADE),
        ("1.10.0", "1.9.10", RejectReason.DOWNGRADE),
        ("2.0.0", "2.0.0", RejectReason.SAME_VERSION),
        ("2.9.0", "2.10.0", None),
        ("1.9.9", "2.0.0", None),
        ("0.0.9", "0.0.10", None),
        ("9.0.0", "10.0.0", None),
    ],
)
def test_versions_compare_numerically(current: str, offered: str, reason: RejectReason | None) -> None:
    result = _offer(build_image(BLOB, MODEL, offered, VENDOR), current=current)
    assert (result.accepted, result.reason) == (reason is None, reason)


def test_wrong_model_is_refused() -> None:
    assert _offer(IMAGE, model="pallet-tag").reason is RejectReason.WRONG_MODEL


def test_signed_by_another_key_is_refused() -> None:
    assert _offer(build_image(BLOB, MODEL, "2.0.0", OTHER)).reason is RejectReason.BAD_SIGNATURE


def test_every_blob_byte_is_protected() -> None:
    _, end = _manifest_span(IMAGE)
    blob_start = end + 64
    for position in range(blob_start, len(IMAGE), 37):
        tampered = bytearray(IMAGE)
        tampered[position] ^= 0x01
        assert _offer(bytes(tampered)).reason in {RejectReason.HASH_MISMATCH, RejectReason.BAD_SIGNATURE}
    assert _offer(IMAGE + b"\x00").reason is RejectReason.HASH_MISMATCH
    assert _offer(IMAGE[:-1]).reason is RejectReason.HASH_MISMATCH


def test_every_manifest_and_signature_byte_is_protected() -> None:
    start, end = _manifest_span(IMAGE)
    for position in range(start, end + 64):
        tampered = bytearray(IMAGE)
        tampered[position] ^= 0x20
        assert _offer(bytes(tampered)).reason is RejectReason.BAD_SIGNATURE, position


def test_swapping_in_another_blob_is_refused() -> None:
    _, end = _manifest_span(IMAGE)
    assert _offer(IMAGE[: end + 64] + b"x" * len(BLOB)).reason is RejectReason.HASH_MISMATCH


def test_truncated_images_are_malformed() -> None:
    _, end = _manifest_span(IMAGE)
    for length in range(end + 64):
        assert _offer(IMAGE[:length]).reason is RejectReason.MALFORMED, length


@pytest.mark.parametrize(
    "image",
    [
        b"",
        b"CTF",
        b"XXXX" + IMAGE[4:],
        IMAGE[:4] + struct.pack(">I", 2**32 - 1) + IMAGE[8:],
        IMAGE[:4] + struct.pack(">I", 0) + IMAGE[8:],
    ],
)
def test_broken_frames_are_refused(image: bytes) -> None:
    result = _offer(image)
    assert result.reason in {RejectReason.MALFORMED, RejectReason.BAD_SIGNATURE}
    assert (result.accepted, result.version) == (False, "1.9.9")


@pytest.mark.parametrize(
    "manifest",
    [
        b"not json",
        b"[]",
        b'{"device_model":"reefer-x2"}',
        b'{"device_model":"reefer-x2","sha256":"00","size":1,"version":"2.0.0"}',
        b'{"device_model":"reefer-x2","sha256":"' + b"0" * 64 + b'","size":-1,"version":"2.0.0"}',
        b'{"device_model":"reefer-x2","sha256":"' + b"0" * 64 + b'","size":"1","version":"2.0.0"}',
        b'{"device_model":"reefer-x2","sha256":"' + b"0" * 64 + b'","size":1,"version":"v2"}',
        b'{"version":"2.0.0","device_model":"reefer-x2","sha256":"' + b"0" * 64 + b'","size":1}',
        b'{"device_model":"reefer-x2","extra":1,"sha256":"' + b"0" * 64 + b'","size":1,"version":"2.0.0"}',
    ],
)
def test_signed_but_malformed_manifests_are_refused(manifest: bytes) -> None:
    assert _offer(_signed_image(manifest, b"x")).reason is RejectReason.MALFORMED


def test_build_image_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="version"):
        build_image(BLOB, MODEL, "2.0", VENDOR)
    with pytest.raises(ValueError, match="device model"):
        build_image(BLOB, "a/b", "2.0.0", VENDOR)


def test_a_corrupt_current_version_is_a_bug_not_a_rejection() -> None:
    with pytest.raises(ValueError, match="MAJOR"):
        accept_update("latest", MODEL, IMAGE, VENDOR.public_key())


@settings(max_examples=200)
@given(st.binary(max_size=400))
def test_random_bytes_never_raise_and_never_install(image: bytes) -> None:
    for candidate in (image, IMAGE_MAGIC + image, IMAGE[:8] + image):
        result = _offer(candidate)
        assert not result.accepted
        assert result.version == "1.9.9"
        assert result.reason is not None


@given(st.integers(0, len(IMAGE) - 1), st.integers(1, 255))
def test_no_single_byte_change_installs(position: int, mask: int) -> None:
    tampered = bytearray(IMAGE)
    tampered[position] ^= mask
    result = _offer(bytes(tampered))
    assert not result.accepted
    assert result.reason is not None
