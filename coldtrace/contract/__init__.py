"""The coldtrace wire contract, version 1: what the edge agent sends and the cloud accepts.

One module tree, imported by both sides: the canonical :class:`Reading`, the signed :class:`Batch`
frame, topic names and size limits. Decoding is strict: any invalid input raises
:class:`ContractError` with a reason code and the offending field paths.
"""

from coldtrace.contract.batch import (
    GENESIS_HASH,
    SCHEMA_VERSION,
    Batch,
    Frame,
    Marker,
    MarkerKind,
    SignedBatch,
    batch_without_readings,
    decode_body,
    frame_hash,
    key_id_of,
    open_frame,
    sign_batch,
    sign_batch_with_readings,
    verify_frame,
)
from coldtrace.contract.canonical import canonical_bytes, decode_model
from coldtrace.contract.errors import ContractError, FieldError, RejectCode
from coldtrace.contract.limits import DEFAULT_LIMITS, Limits
from coldtrace.contract.manifest import Binding, DeviceEntry, Manifest
from coldtrace.contract.reading import ClockQuality, Flag, Reading, SourceFormat

__all__ = [
    "DEFAULT_LIMITS",
    "GENESIS_HASH",
    "SCHEMA_VERSION",
    "Batch",
    "Binding",
    "ClockQuality",
    "ContractError",
    "DeviceEntry",
    "FieldError",
    "Flag",
    "Frame",
    "Limits",
    "Manifest",
    "Marker",
    "MarkerKind",
    "Reading",
    "RejectCode",
    "SignedBatch",
    "SourceFormat",
    "batch_without_readings",
    "canonical_bytes",
    "decode_body",
    "decode_model",
    "frame_hash",
    "key_id_of",
    "open_frame",
    "sign_batch",
    "sign_batch_with_readings",
    "verify_frame",
]
