"""Signed batch frames: sign/verify round trip, tamper evidence, limits and schema versions."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from coldtrace.contract import (
    GENESIS_HASH,
    Batch,
    ClockQuality,
    ContractError,
    FieldError,
    Limits,
    Marker,
    MarkerKind,
    Reading,
    RejectCode,
    SourceFormat,
    batch_without_readings,
    canonical_bytes,
    decode_body,
    frame_hash,
    open_frame,
    sign_batch,
    sign_batch_with_readings,
    verify_frame,
)
from coldtrace.contract.batch import FRAME_VERSION, HEADER_BYTES, key_id_of, signed_message
from coldtrace.contract.limits import MAX_READINGS_PER_BATCH
from tests.coldtrace.contract.strategies import batches, markers, readings

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


@given(batches())
def test_sign_verify_round_trip(batch: Batch) -> None:
    frame = sign_batch(batch, KEY)
    signed = verify_frame(frame, KEY.public_key())
    assert signed.batch == batch
    assert signed.frame_hash == frame_hash(frame)
    # Ed25519 and canonical bytes are deterministic: a re-sign is byte-identical (resends dedupe).
    assert sign_batch(signed.batch, KEY) == frame


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(batches(max_readings=3), st.data())
def test_flipping_any_bit_breaks_verification(batch: Batch, data: st.DataObject) -> None:
    frame = sign_batch(batch, KEY)
    bit = data.draw(st.integers(0, len(frame) * 8 - 1), label="bit")
    tampered = bytearray(frame)
    tampered[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(ContractError) as caught:
        verify_frame(bytes(tampered), KEY.public_key())
    assert caught.value.code in {
        RejectCode.BAD_SIGNATURE,
        RejectCode.BAD_FRAME,
        RejectCode.UNSUPPORTED_SCHEMA,
    }


@given(batches(max_readings=2))
def test_wrong_key_is_refused(batch: Batch) -> None:
    with pytest.raises(ContractError) as caught:
        verify_frame(sign_batch(batch, KEY), OTHER_KEY.public_key())
    assert caught.value.code is RejectCode.BAD_SIGNATURE
    assert caught.value.field == "key_id"


def test_signature_over_other_content_with_same_key_id_is_refused() -> None:
    first, second = (
        Batch(
            batch_seq=1,
            created_ms=1_795_000_000_000,
            gateway_id="gw-1",
            prev_hash=GENESIS_HASH,
            readings=(r,),
            schema_version=1,
        )
        for r in (_reading(4.0), _reading(9.0))
    )
    frame_a, frame_b = sign_batch(first, KEY), sign_batch(second, KEY)
    spliced = frame_a[:HEADER_BYTES] + frame_b[HEADER_BYTES:]
    with pytest.raises(ContractError) as caught:
        verify_frame(spliced, KEY.public_key())
    assert caught.value.code is RejectCode.BAD_SIGNATURE


def _reading(temperature: float, seq: int = 1) -> Reading:
    return Reading(
        bound=False, clock=ClockQuality.OK, device_id="d-1", seq=seq, site_id="wh-1",
        source_format=SourceFormat.NATIVE, t_device_ms=1_795_000_000_000, t_gateway_ms=1_795_000_000_000,
        temperature_c=temperature,
    )  # fmt: skip


def _batch(n: int) -> Batch:
    return Batch.model_construct(
        batch_seq=1, created_ms=1_795_000_000_000, gateway_id="gw-1", markers=(), prev_hash=GENESIS_HASH,
        readings=tuple(_reading(4.0, seq=i) for i in range(n)), schema_version=1,
    )  # fmt: skip


def test_too_many_readings_refused_by_encoder_and_decoder() -> None:
    batch = _batch(MAX_READINGS_PER_BATCH + 1)
    with pytest.raises(ContractError) as encoded:
        sign_batch(batch, KEY)
    assert encoded.value.code is RejectCode.OVERSIZED
    with pytest.raises(ContractError) as decoded:
        decode_body(canonical_bytes(batch))
    assert decoded.value.code is RejectCode.OVERSIZED
    assert decoded.value.field == "readings"


def test_operator_limits_apply_on_both_sides() -> None:
    limits = Limits(max_readings_per_batch=10, max_batch_bytes=4096)
    frame = sign_batch(_batch(11), KEY)  # within the protocol ceiling
    with pytest.raises(ContractError) as decoded:
        verify_frame(frame, KEY.public_key(), limits=limits)
    assert decoded.value.code is RejectCode.OVERSIZED
    with pytest.raises(ContractError) as too_big:
        sign_batch(_batch(10), KEY, limits=Limits(max_batch_bytes=1000))
    assert too_big.value.code is RejectCode.OVERSIZED
    with pytest.raises(ContractError):
        open_frame(b"CT\x01" + bytes(5000), limits=limits)


def test_limits_cannot_exceed_protocol_ceiling() -> None:
    with pytest.raises(ValueError, match="protocol ceiling"):
        Limits(max_readings_per_batch=MAX_READINGS_PER_BATCH + 1)


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_unknown_schema_version_is_refused(version: object) -> None:
    document = _batch(1).model_dump(mode="json")
    document["schema_version"] = version
    with pytest.raises(ContractError) as caught:
        decode_body(orjson.dumps(document, option=orjson.OPT_SORT_KEYS))
    assert caught.value.code is RejectCode.UNSUPPORTED_SCHEMA
    assert caught.value.field == "schema_version"


@pytest.mark.parametrize("version", [0, 3, 255])
def test_unknown_frame_version_is_refused(version: int) -> None:
    frame = bytearray(sign_batch(_batch(1), KEY))
    frame[2] = version
    with pytest.raises(ContractError) as caught:
        open_frame(bytes(frame))
    assert caught.value.code is RejectCode.UNSUPPORTED_SCHEMA


def _version_1(body: bytes) -> bytes:
    """A frame as a version-1 build signed it: over the body itself."""
    key_id = key_id_of(KEY.public_key())
    return b"CT\x01" + key_id + KEY.sign(signed_message(1, key_id, body)) + body


def test_frames_are_written_as_version_2_signing_the_body_digest() -> None:
    frame = sign_batch(_batch(3), KEY)
    parts = open_frame(frame)
    assert frame[2] == parts.version == FRAME_VERSION == 2
    digest_message = b"coldtrace/batch/v2\x00CT\x02" + parts.key_id + hashlib.sha256(parts.body).digest()
    KEY.public_key().verify(parts.signature, digest_message)  # raises if the signature covers anything else


def test_version_1_frames_still_verify_and_versions_cannot_be_swapped() -> None:
    v2 = sign_batch(_batch(3), KEY)
    body = v2[HEADER_BYTES:]
    v1 = _version_1(body)
    assert verify_frame(v1, KEY.public_key()).batch == verify_frame(v2, KEY.public_key()).batch
    # Each signature with the other version byte: its context and message differ, so neither verifies.
    for frame, other in ((v1, 2), (v2, 1)):
        swapped = bytes([*frame[:2], other, *frame[3:]])
        with pytest.raises(ContractError) as caught:
            verify_frame(swapped, KEY.public_key())
        assert caught.value.code is RejectCode.BAD_SIGNATURE


@pytest.mark.parametrize("frame", [b"", b"CT", b"XX\x01" + bytes(200), b"CT\x01" + bytes(72)])
def test_truncated_or_foreign_frames_are_bad_frames(frame: bytes) -> None:
    with pytest.raises(ContractError) as caught:
        open_frame(frame)
    assert caught.value.code is RejectCode.BAD_FRAME


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"batch_seq": 0}, "batch_seq"),
        ({"batch_seq": 1, "prev_hash": "ab" * 32}, "prev_hash"),
        ({"prev_hash": "AB" * 32}, "prev_hash"),
        ({"readings": [], "markers": []}, "readings"),
        ({"created_ms": 1_000}, "created_ms"),
        ({"gateway_id": "gw/1"}, "gateway_id"),
    ],
)
def test_invalid_batch_fields_are_named(change: dict[str, object], field: str) -> None:
    document = _batch(1).model_dump(mode="json")
    document.update(change)
    with pytest.raises(ContractError) as caught:
        decode_body(orjson.dumps(document, option=orjson.OPT_SORT_KEYS))
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("marker", "field"),
    [
        ({"seq_from": 5, "seq_to": 4, "count": 1}, "markers[0].seq_to"),
        ({"seq_from": 1, "seq_to": 2, "count": 3}, "markers[0].count"),
        ({"t_from_ms": 10, "t_to_ms": 9}, "markers[0].t_to_ms"),
        ({"kind": "lost"}, "markers[0].kind"),
    ],
)
def test_invalid_markers_are_named(marker: dict[str, object], field: str) -> None:
    base = {"count": 1, "device_id": "d-1", "kind": "thinned", "seq_from": 1, "seq_to": 1, "t_from_ms": 0,
            "t_to_ms": 0}  # fmt: skip
    document = _batch(1).model_dump(mode="json")
    document["markers"] = [base | marker]
    with pytest.raises(ContractError) as caught:
        decode_body(orjson.dumps(document, option=orjson.OPT_SORT_KEYS))
    assert caught.value.field == field


@given(st.lists(readings(device_id="d-7"), min_size=1, max_size=3))
def test_hash_chain_links_frames(batch_readings: list[object]) -> None:
    first = Batch(batch_seq=1, created_ms=1_795_000_000_000, gateway_id="gw-1", prev_hash=GENESIS_HASH,
                  readings=tuple(batch_readings), schema_version=1)  # fmt: skip
    frame_1 = sign_batch(first, KEY)
    second = first.model_copy(update={"batch_seq": 2, "prev_hash": frame_hash(frame_1)})
    signed_2 = verify_frame(sign_batch(second, KEY), KEY.public_key())
    assert signed_2.batch.prev_hash == verify_frame(frame_1, KEY.public_key()).frame_hash


def _without_readings(batch: Batch) -> Batch:
    return batch_without_readings(
        batch_seq=batch.batch_seq, created_ms=batch.created_ms, gateway_id=batch.gateway_id,
        markers=batch.markers, prev_hash=batch.prev_hash,
    )  # fmt: skip


@settings(max_examples=300)
@given(batches())
def test_signing_with_reading_bodies_gives_the_frame_of_the_whole_batch(batch: Batch) -> None:
    empty = _without_readings(batch)
    assert empty == batch.model_copy(update={"readings": ()})
    bodies = [canonical_bytes(r) for r in batch.readings]
    assert sign_batch_with_readings(empty, bodies, KEY) == sign_batch(batch, KEY)


def _outcome(sign: Callable[[], bytes]) -> bytes | tuple[RejectCode, tuple[FieldError, ...]]:
    try:
        return sign()
    except ContractError as exc:
        return exc.code, exc.errors


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(batches(max_readings=4), st.data())
def test_signing_with_reading_bodies_breaks_the_same_limits(batch: Batch, data: st.DataObject) -> None:
    # Readings and markers added beyond the strategy's few (model_construct: Batch's own ceiling of
    # 1000 is not what is tested), and limits drawn around the batch's actual counts and size.
    extra_readings = data.draw(st.lists(readings(), max_size=3), label="extra readings")
    extra_markers = data.draw(st.lists(markers(), max_size=3), label="extra markers")
    whole = Batch.model_construct(
        **(
            dict(batch)
            | {"readings": (*batch.readings, *extra_readings), "markers": (*batch.markers, *extra_markers)}
        )
    )
    size = len(sign_batch(whole, KEY))
    limits = Limits(
        max_readings_per_batch=max(1, len(whole.readings) + data.draw(st.integers(-2, 1), label="readings")),
        max_markers_per_batch=max(1, len(whole.markers) + data.draw(st.integers(-2, 1), label="markers")),
        max_batch_bytes=size + data.draw(st.integers(-2, 1), label="bytes"),
    )
    empty = _without_readings(whole)
    bodies = [canonical_bytes(r) for r in whole.readings]
    expected = _outcome(lambda: sign_batch(whole, KEY, limits=limits))
    assert _outcome(lambda: sign_batch_with_readings(empty, bodies, KEY, limits=limits)) == expected


def test_signing_with_reading_bodies_refuses_an_empty_batch() -> None:
    empty = batch_without_readings(
        batch_seq=1, created_ms=1_795_000_000_000, gateway_id="gw-1", prev_hash=GENESIS_HASH
    )
    with pytest.raises(ContractError) as caught:
        sign_batch_with_readings(empty, [], KEY)
    assert (caught.value.code, caught.value.field) == (RejectCode.INVALID_FIELD, "readings")
    with pytest.raises(ValueError, match="no readings of its own"):
        sign_batch_with_readings(_batch(1), [canonical_bytes(_reading(4.0))], KEY)


@pytest.mark.parametrize(
    ("created_ms", "gateway_id", "prev_hash"),
    [
        (1_000, "gw-1", GENESIS_HASH),
        (1_795_000_000_000, "gw/1", GENESIS_HASH),
        (1_795_000_000_000, "gw-1", "ab" * 32),  # batch 1 must chain to the genesis hash
        (1_795_000_000_000, "gw-1", "AB" * 32),
    ],
)
def test_a_batch_without_readings_is_validated_like_a_batch(
    created_ms: int, gateway_id: str, prev_hash: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        batch_without_readings(batch_seq=1, created_ms=created_ms, gateway_id=gateway_id, prev_hash=prev_hash)
    with pytest.raises(ValidationError) as expected:
        Batch(
            batch_seq=1, created_ms=created_ms, gateway_id=gateway_id, prev_hash=prev_hash,
            readings=(_reading(4.0),), schema_version=1,
        )  # fmt: skip

    def errors(exc: ValidationError) -> list[tuple[object, ...]]:
        return [(e["type"], e["loc"], e["msg"]) for e in exc.errors()]

    assert errors(caught.value) == errors(expected.value)


def test_a_batch_without_readings_keeps_its_markers() -> None:
    marker = Marker(count=1, device_id="d-1", kind=MarkerKind.THINNED, seq_from=1, seq_to=1, t_from_ms=0,
                    t_to_ms=0)  # fmt: skip
    batch = batch_without_readings(
        batch_seq=2, created_ms=1_795_000_000_000, gateway_id="gw-1", markers=[marker], prev_hash="ab" * 32
    )
    assert (batch.markers, batch.readings) == ((marker,), ())
