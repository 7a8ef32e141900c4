"""What devices send to the gateway: three vendor payload formats, one model.

Real fleets are mixed. :func:`decode` recognises the format from a payload's first bytes and returns
a :class:`DeviceMessage` in SI units; :func:`encode` writes a message in the format it names. Each
vendor module documents its format byte by byte. Decoding is strict: anything invalid raises
:class:`~coldtrace.contract.ContractError` with a reason code and a format-specific field path, and
nothing else escapes a decoder.

=================  ===============  ==============================  ==========================
format             first bytes      module                          quantisation
=================  ===============  ==============================  ==========================
``vendor-a-json``  ``{``            :mod:`.vendor_a` (JSON, °F)     none (°F↔°C float only)
``vendor-b-binary``  ``0xC7``         :mod:`.vendor_b` (binary, CRC)  0.01 °C, %, g; mV; 1e-7 °
``vendor-c-text``  ``CT1;``         :mod:`.vendor_c` (text lines)   0.1 °C, %; 0.01 V, g; 1e-6 °
=================  ===============  ==============================  ==========================
"""

from __future__ import annotations

from collections.abc import Callable

from coldtrace.contract.errors import ContractError, FieldError, RejectCode
from coldtrace.contract.limits import DEFAULT_LIMITS, MAX_DEVICE_PAYLOAD_BYTES, Limits
from coldtrace.contract.reading import SourceFormat
from coldtrace.device_formats import vendor_a, vendor_b, vendor_c
from coldtrace.device_formats.model import (
    FIRMWARE_PATTERN,
    MAX_SAMPLES_PER_MESSAGE,
    VENDOR_FORMATS,
    DeviceMessage,
    DeviceSample,
    parse_version,
)
from coldtrace.device_formats.validation import check_size, find_problem, require_valid

__all__ = [
    "FIRMWARE_PATTERN",
    "MAX_DEVICE_PAYLOAD_BYTES",
    "MAX_SAMPLES_PER_MESSAGE",
    "VENDOR_FORMATS",
    "DeviceMessage",
    "DeviceSample",
    "decode",
    "encode",
    "find_problem",
    "parse_version",
    "require_valid",
    "sniff",
]

_DECODERS: dict[SourceFormat, Callable[..., DeviceMessage]] = {
    SourceFormat.VENDOR_A_JSON: vendor_a.decode,
    SourceFormat.VENDOR_B_BINARY: vendor_b.decode,
    SourceFormat.VENDOR_C_TEXT: vendor_c.decode,
}
_ENCODERS: dict[SourceFormat, Callable[..., bytes]] = {
    SourceFormat.VENDOR_A_JSON: vendor_a.encode,
    SourceFormat.VENDOR_B_BINARY: vendor_b.encode,
    SourceFormat.VENDOR_C_TEXT: vendor_c.encode,
}


def sniff(payload: bytes) -> SourceFormat:
    """The vendor format of ``payload``, from its first bytes; ContractError (bad_frame) if none fits."""
    if not payload:
        raise ContractError(RejectCode.BAD_FRAME, FieldError("", "empty payload"))
    if payload[:1] == b"{":
        return SourceFormat.VENDOR_A_JSON
    if payload[:1] == bytes((vendor_b.MAGIC,)):
        return SourceFormat.VENDOR_B_BINARY
    if payload[:4] == vendor_c.TAG + b";":
        return SourceFormat.VENDOR_C_TEXT
    raise ContractError(
        RejectCode.BAD_FRAME,
        FieldError("byte 0", f"payload starting {payload[:4]!r} is in no known device format"),
    )


def decode(payload: bytes, *, limits: Limits = DEFAULT_LIMITS) -> DeviceMessage:
    """Refuse an oversized payload, recognise its format and decode it strictly."""
    check_size(payload, limits)
    return _DECODERS[sniff(payload)](payload, limits=limits)


def encode(message: DeviceMessage, *, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Encode ``message`` in the vendor format it names; ContractError if it is invalid or does not fit."""
    encoder = _ENCODERS.get(message.format)
    if encoder is None:
        raise ContractError(
            RejectCode.INVALID_FIELD, FieldError("format", f"{message.format} is not a device format")
        )
    return encoder(message, limits=limits)
