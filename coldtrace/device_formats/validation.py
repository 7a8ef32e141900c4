"""The rules every device message obeys, whichever format carried it.

One implementation serves all formats: :func:`find_problem` names the first broken rule by model
attribute (``samples[2].temperature_c``), and each decoder translates that into its own field path
(``s[2].tF``, ``byte 41 (sample 2 temperature)``, ``line 3 field 6 (T)``) only when something is wrong,
so the success path builds no path strings.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from coldtrace.contract.errors import ContractError, FieldError, RejectCode
from coldtrace.contract.limits import DEVICE_TS_MIN_MS, TS_MAX_MS, Limits
from coldtrace.contract.reading import ID_PATTERN
from coldtrace.device_formats.model import (
    FIRMWARE_PATTERN,
    MAX_SAMPLES_PER_MESSAGE,
    U32_MAX,
    DeviceMessage,
    DeviceSample,
)

_ID = re.compile(ID_PATTERN)
_FIRMWARE = re.compile(FIRMWARE_PATTERN)

#: Plausible physical ranges, inclusive, in the model's SI units (the same as the contract's Reading).
QUANTITY_RANGES: dict[str, tuple[float, float, str]] = {
    "temperature_c": (-100.0, 150.0, "°C"),
    "humidity_pct": (0.0, 100.0, "%"),
    "shock_g": (0.0, 500.0, "g"),
    "battery_v": (0.0, 60.0, "V"),
    "lat": (-90.0, 90.0, "°"),
    "lon": (-180.0, 180.0, "°"),
}
_RANGES = tuple((name, low, high) for name, (low, high, _) in QUANTITY_RANGES.items())


@dataclass(frozen=True, slots=True)
class Problem:
    """The first broken rule of a message, named by model attribute."""

    sample: int | None
    """Index into ``samples``; None for an attribute of the message itself."""
    name: str
    """The attribute of DeviceSample (or DeviceMessage) that is wrong."""
    reason: str
    code: RejectCode = RejectCode.INVALID_FIELD

    @property
    def model_path(self) -> str:
        """The attribute's path in the model, e.g. ``samples[2].temperature_c``."""
        return self.name if self.sample is None else f"samples[{self.sample}].{self.name}"

    def error(self, field: str) -> ContractError:
        """The ContractError for this problem, reported at ``field`` (a format-specific path)."""
        return ContractError(self.code, FieldError(field, self.reason))


def _out_of_range(value: float, low: float, high: float, unit: str) -> str:
    if not math.isfinite(value):
        return f"must be a finite number, not {value}"
    return f"{value} is outside {low}..{high} {unit}"


def _sample_problem(sample: DeviceSample) -> tuple[str, str] | None:
    if not 0 <= sample.seq <= U32_MAX:
        return "seq", f"{sample.seq} is outside 0..{U32_MAX}"
    if not DEVICE_TS_MIN_MS <= sample.t_device_ms < TS_MAX_MS:
        return "t_device_ms", f"{sample.t_device_ms} is outside {DEVICE_TS_MIN_MS}..{TS_MAX_MS - 1} ms"
    for name, low, high in _RANGES:
        value = getattr(sample, name)
        # Written so that NaN fails: every comparison with NaN is false.
        if value is not None and not low <= value <= high:
            return name, _out_of_range(value, *QUANTITY_RANGES[name])
    if (sample.lat is None) != (sample.lon is None):
        return ("lon" if sample.lon is None else "lat"), "lat and lon must be given together"
    return None


def _message_problem(message: DeviceMessage) -> Problem | None:
    if _ID.fullmatch(message.device_id) is None:
        return Problem(None, "device_id", f"{message.device_id!r} does not match {ID_PATTERN}")
    if _FIRMWARE.fullmatch(message.firmware) is None:
        return Problem(None, "firmware", f"{message.firmware!r} is not a MAJOR.MINOR.PATCH version")
    if not 0 <= message.dropped <= U32_MAX:
        return Problem(None, "dropped", f"{message.dropped} is outside 0..{U32_MAX}")
    count = len(message.samples)
    if count > MAX_SAMPLES_PER_MESSAGE:
        reason = f"{count} samples exceed {MAX_SAMPLES_PER_MESSAGE} per message"
        return Problem(None, "samples", reason, RejectCode.OVERSIZED)
    if count == 0:
        return Problem(None, "samples", "a message must carry at least one sample")
    return None


def find_problem(message: DeviceMessage) -> Problem | None:
    """The first rule ``message`` breaks, or None when it is valid."""
    problem = _message_problem(message)
    if problem is not None:
        return problem
    for index, sample in enumerate(message.samples):
        found = _sample_problem(sample)
        if found is not None:
            return Problem(index, *found)
    return None


def require_valid(message: DeviceMessage) -> None:
    """Raise ContractError, at the model path of the first broken rule, unless ``message`` is valid.

    Encoders call this, so no format ever carries a message its decoder would refuse.
    """
    problem = find_problem(message)
    if problem is not None:
        raise problem.error(problem.model_path)


def check_size(payload: bytes, limits: Limits) -> None:
    """Refuse a payload over the device payload limit, before anything parses it."""
    if len(payload) > limits.max_device_payload_bytes:
        raise ContractError(
            RejectCode.OVERSIZED,
            FieldError("", f"payload of {len(payload)} bytes exceeds {limits.max_device_payload_bytes}"),
        )


def check_format(message: DeviceMessage, expected: str) -> None:
    """Refuse to encode ``message`` in a format other than the one it names."""
    if message.format != expected:
        raise ContractError(
            RejectCode.INVALID_FIELD,
            FieldError("format", f"message is {message.format}, this encoder writes {expected}"),
        )
