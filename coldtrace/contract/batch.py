"""The signed gateway batch: what an edge agent sends and the cloud verifies.

Frame layout::

    b"CT" | version | key_id (8 bytes) | Ed25519 signature (64 bytes) | body (canonical JSON)

Version 2 (what this build writes): the signature covers
``b"coldtrace/batch/v2\0" + magic + version + key_id + SHA-256(body)``. Version 1 (still read, so
frames formed before an upgrade verify): ``b"coldtrace/batch/v1\0" + magic + version + key_id +
body``. Either way it covers every byte received but the signature itself, so verification never
depends on re-serialising anything. Ed25519 hashes its message twice, so signing the 32-byte digest
instead of a 200 kB body cost 166 us instead of 545 us here (verifying: 224 instead of 373 us); the
contexts differ, so a signature of one version never verifies as the other. The body must also be
in canonical form (see :mod:`coldtrace.contract.canonical`): one batch has exactly one valid encoding,
a resend is byte-identical and its hash - the link of the per-gateway hash chain - is stable.
``key_id`` selects which of the gateway's registered keys to verify with.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal, Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from coldtrace.contract.canonical import canonical_bytes, check_plain, decode_model, plain
from coldtrace.contract.errors import ContractError, FieldError, RejectCode
from coldtrace.contract.limits import (
    DEFAULT_LIMITS,
    GATEWAY_TS_MIN_MS,
    MAX_MARKERS_PER_BATCH,
    MAX_READINGS_PER_BATCH,
    MAX_SAFE_INT,
    TS_MAX_MS,
    Limits,
)
from coldtrace.contract.reading import (
    ClockQuality,
    DeviceTimeMs,
    Flag,
    Identifier,
    Reading,
    Sequence64,
    SourceFormat,
    _field_error,
)

#: Version of the batch body schema this build writes and reads.
SCHEMA_VERSION = 1
FRAME_MAGIC = b"CT"
#: The frame version this build writes; it reads every version in ``SIGNING_CONTEXTS``.
FRAME_VERSION = 2
KEY_ID_BYTES = 8
SIGNATURE_BYTES = 64
HEADER_BYTES = len(FRAME_MAGIC) + 1 + KEY_ID_BYTES + SIGNATURE_BYTES
#: Domain separation, per frame version: a batch signature can never be replayed as a signature over
#: anything else, nor as one of another frame version.
SIGNING_CONTEXTS = {1: b"coldtrace/batch/v1\x00", 2: b"coldtrace/batch/v2\x00"}
#: ``prev_hash`` of a gateway's first batch.
GENESIS_HASH = "0" * 64

HexDigest = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class MarkerKind(enum.StrEnum):
    """An explicit record of readings that will never arrive, so that no gap is silent."""

    THINNED = "thinned"  #: evicted from the gateway outbox under its disk budget
    DEVICE_DROPPED = "device_dropped"  #: the device's own buffer overflowed while it was offline
    MISSING = "missing"  #: the gateway saw a sequence gap it could not fill


@plain
class Marker(BaseModel):
    """A run of one device's readings, by sequence and time, that was not forwarded."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    count: Annotated[int, Field(ge=1, le=MAX_SAFE_INT)]
    device_id: Identifier
    kind: MarkerKind
    seq_from: Sequence64
    seq_to: Sequence64
    t_from_ms: DeviceTimeMs
    t_to_ms: DeviceTimeMs

    @model_validator(mode="after")
    def _check_ranges(self) -> Self:
        if self.seq_to < self.seq_from:
            raise _field_error("seq_to", "must not be lower than seq_from")
        if self.count > self.seq_to - self.seq_from + 1:
            raise _field_error("count", "exceeds the number of sequence numbers in seq_from..seq_to")
        if self.t_to_ms < self.t_from_ms:
            raise _field_error("t_to_ms", "must not be earlier than t_from_ms")
        return self


@plain
class Batch(BaseModel):
    """The body of a signed batch. Fields in alphabetical (canonical) order."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    batch_seq: Annotated[int, Field(ge=1, le=MAX_SAFE_INT)]
    """Per-gateway batch number, monotonic across restarts, starting at 1."""
    created_ms: Annotated[int, Field(ge=GATEWAY_TS_MIN_MS, lt=TS_MAX_MS)]
    gateway_id: Identifier
    markers: Annotated[tuple[Marker, ...], Field(max_length=MAX_MARKERS_PER_BATCH)] = ()
    prev_hash: HexDigest
    """SHA-256 (hex) of the previous batch's whole frame; GENESIS_HASH for batch 1."""
    readings: Annotated[tuple[Reading, ...], Field(max_length=MAX_READINGS_PER_BATCH)]
    schema_version: Literal[1]

    @model_validator(mode="after")
    def _check_content(self) -> Self:
        if not self.readings and not self.markers:
            raise _field_error("readings", "a batch must carry at least one reading or marker")
        if self.batch_seq == 1 and self.prev_hash != GENESIS_HASH:
            raise _field_error("prev_hash", "batch 1 must chain to the genesis hash (64 zeros)")
        return self


@dataclass(frozen=True, slots=True)
class SignedBatch:
    """A decoded, verified frame: the batch plus what identifies it on the wire."""

    batch: Batch
    key_id: bytes
    frame_hash: str
    """SHA-256 hex of the whole frame; the next batch's ``prev_hash``."""
    frame: bytes


def key_id_of(public_key: Ed25519PublicKey) -> bytes:
    """The 8-byte id of a gateway signing key: the head of SHA-256 over its raw public bytes."""
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).digest()[:KEY_ID_BYTES]


def frame_hash(frame: bytes) -> str:
    """SHA-256 hex of a whole frame: the link of the per-gateway hash chain."""
    return hashlib.sha256(frame).hexdigest()


def _check_limits(batch: Batch, limits: Limits) -> None:
    _check_counts(len(batch.readings), len(batch.markers), limits)


def _check_counts(readings: int, markers: int, limits: Limits) -> None:
    errors = []
    if readings > limits.max_readings_per_batch:
        errors.append(FieldError("readings", f"{readings} readings exceed {limits.max_readings_per_batch}"))
    if markers > limits.max_markers_per_batch:
        errors.append(FieldError("markers", f"{markers} markers exceed {limits.max_markers_per_batch}"))
    if errors:
        raise ContractError(RejectCode.OVERSIZED, errors)


def sign_batch(batch: Batch, private_key: Ed25519PrivateKey, *, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Encode ``batch`` canonically, sign it and return the frame; ContractError if it breaks a limit."""
    _check_limits(batch, limits)
    return _signed(canonical_bytes(batch), private_key, limits)


def _signed(body: bytes, private_key: Ed25519PrivateKey, limits: Limits) -> bytes:
    size = HEADER_BYTES + len(body)
    if size > limits.max_batch_bytes:
        raise ContractError(
            RejectCode.OVERSIZED, FieldError("", f"frame of {size} bytes exceeds {limits.max_batch_bytes}")
        )
    key_id = key_id_of(private_key.public_key())
    head = FRAME_MAGIC + bytes((FRAME_VERSION,)) + key_id
    return head + private_key.sign(signed_message(FRAME_VERSION, key_id, body)) + body


def signed_message(version: int, key_id: bytes, body: bytes) -> bytes:
    """The bytes a frame's signature covers (see the module docstring)."""
    covered = hashlib.sha256(body).digest() if version >= 2 else body
    return SIGNING_CONTEXTS[version] + FRAME_MAGIC + bytes((version,)) + key_id + covered


#: Stands in for the readings while the rest of a batch is validated (a batch must carry a reading or
#: a marker); never signed.
_STAND_IN = Marker(
    count=1, device_id="stand-in", kind=MarkerKind.MISSING, seq_from=0, seq_to=0, t_from_ms=0, t_to_ms=0
)


def batch_without_readings(
    *, batch_seq: int, created_ms: int, gateway_id: str, markers: Sequence[Marker] = (), prev_hash: str
) -> Batch:
    """A batch with every field but its readings, each validated as :class:`Batch` validates it.

    For :func:`sign_batch_with_readings`, which adds the readings. Such a batch need not carry a
    marker: the rule that a batch carries a reading or a marker is checked when it is signed.
    Raises pydantic's ValidationError, as ``Batch(...)`` does.
    """
    checked = Batch(
        batch_seq=batch_seq,
        created_ms=created_ms,
        gateway_id=gateway_id,
        markers=tuple(markers) or (_STAND_IN,),
        prev_hash=prev_hash,
        readings=(),
        schema_version=1,
    )
    return checked if markers else checked.model_copy(update={"markers": ()})


#: Where the readings go in the canonical body of a batch without readings: keys are sorted, so the
#: readings array is followed only by the schema version (an integer, no string can follow it).
_EMPTY_READINGS = b'"readings":[]'
_AFTER_READINGS = b',"schema_version":'


def sign_batch_with_readings(
    batch: Batch,
    reading_bodies: Sequence[bytes],
    private_key: Ed25519PrivateKey,
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> bytes:
    """The frame :func:`sign_batch` returns for ``batch`` carrying the readings encoded as ``reading_bodies``.

    ``batch`` has no readings of its own (see :func:`batch_without_readings`). Each body must be the
    canonical bytes of a valid :class:`Reading`, in the order the batch carries them; they are spliced
    into the canonical body unchecked (that is what makes this faster than building the batch), so
    only pass bytes that were produced by ``canonical_bytes`` and protected since. Raises
    ContractError (OVERSIZED) for what breaks ``limits``, exactly as ``sign_batch`` does, and
    ContractError (INVALID_FIELD) for a batch without readings or markers, which ``Batch`` refuses.
    """
    if batch.readings:
        raise ValueError("batch must have no readings of its own: they are given as reading_bodies")
    _check_counts(len(reading_bodies), len(batch.markers), limits)
    if not reading_bodies and not batch.markers:
        raise ContractError(
            RejectCode.INVALID_FIELD,
            FieldError("readings", "a batch must carry at least one reading or marker"),
        )
    head, found, tail = canonical_bytes(batch).rpartition(_EMPTY_READINGS)
    if not found or not tail.startswith(_AFTER_READINGS):
        raise AssertionError("the canonical batch body does not end with its readings and schema version")
    body = b"".join((head, b'"readings":[', b",".join(reading_bodies), b"]", tail))
    return _signed(body, private_key, limits)


@dataclass(frozen=True, slots=True)
class Frame:
    """A frame split into its parts, before anything in it is trusted."""

    version: int
    key_id: bytes
    signature: bytes
    body: bytes

    @property
    def signed_message(self) -> bytes:
        """The bytes the signature covers."""
        return signed_message(self.version, self.key_id, self.body)


def open_frame(frame: bytes, *, limits: Limits = DEFAULT_LIMITS) -> Frame:
    """Check a frame's size and header and split it; nothing is verified or parsed yet."""
    if len(frame) > limits.max_batch_bytes:
        raise ContractError(
            RejectCode.OVERSIZED,
            FieldError("", f"frame of {len(frame)} bytes exceeds {limits.max_batch_bytes}"),
        )
    if len(frame) <= HEADER_BYTES or frame[:2] != FRAME_MAGIC:
        raise ContractError(RejectCode.BAD_FRAME, FieldError("", "not a coldtrace batch frame"))
    if frame[2] not in SIGNING_CONTEXTS:
        readable = ", ".join(str(v) for v in SIGNING_CONTEXTS)
        raise ContractError(
            RejectCode.UNSUPPORTED_SCHEMA,
            FieldError("", f"frame version {frame[2]} is not supported (this build reads {readable})"),
        )
    key_start = len(FRAME_MAGIC) + 1
    sig_start = key_start + KEY_ID_BYTES
    return Frame(
        version=frame[2],
        key_id=frame[key_start:sig_start],
        signature=frame[sig_start:HEADER_BYTES],
        body=frame[HEADER_BYTES:],
    )


def decode_body(body: bytes, *, limits: Limits = DEFAULT_LIMITS) -> Batch:
    """Strictly decode a batch body; it must be canonical and within ``limits``."""
    batch = decode_model(Batch, body, schema_field="schema_version", schema_version=SCHEMA_VERSION)
    _check_limits(batch, limits)
    return batch


def verify_frame(
    frame: bytes, public_key: Ed25519PublicKey, *, limits: Limits = DEFAULT_LIMITS
) -> SignedBatch:
    """Verify a frame's signature with the sender's key, then decode its body strictly.

    The signature is checked before the body is parsed, over the exact bytes received.
    """
    parts = open_frame(frame, limits=limits)
    if parts.key_id != key_id_of(public_key):
        raise ContractError(
            RejectCode.BAD_SIGNATURE,
            FieldError("key_id", f"frame is signed with key {parts.key_id.hex()}, not the one given"),
        )
    try:
        public_key.verify(parts.signature, parts.signed_message)
    except InvalidSignature as exc:
        raise ContractError(
            RejectCode.BAD_SIGNATURE,
            FieldError("", "Ed25519 signature does not verify with the sender's key"),
        ) from exc
    batch = decode_body(parts.body, limits=limits)
    return SignedBatch(batch=batch, key_id=parts.key_id, frame_hash=frame_hash(frame), frame=frame)


def probe_batch() -> Batch:
    """A batch whose reading sets every field (floats of awkward spellings) and which has a marker."""
    reading = Reading(
        anomaly_score=0.1234567890123, battery_v=3.6, bound=True, clock=ClockQuality.SKEWED,
        device_id="probe-1", flags=(Flag.BACKFILL, Flag.GLITCH), humidity_pct=1e-7, lat=-33.8688,
        lon=151.20929, lot_ids=("A-1", "B.2"), manifest_version=MAX_SAFE_INT, model="m@0123456789abcdef",
        seq=0, shipment_id="S_1", shock_g=499.99999999999994, site_id="w",
        source_format=SourceFormat.VENDOR_B_BINARY, t_device_ms=0, t_gateway_ms=4_102_444_799_999,
        temperature_c=-0.0,
    )  # fmt: skip
    marker = Marker(
        count=1, device_id="probe-1", kind=MarkerKind.THINNED, seq_from=3, seq_to=4, t_from_ms=0, t_to_ms=1
    )
    return Batch(
        batch_seq=1, created_ms=4_102_444_799_999, gateway_id="g", markers=(marker,), prev_hash=GENESIS_HASH,
        readings=(reading,), schema_version=1,
    )  # fmt: skip


check_plain(probe_batch())
