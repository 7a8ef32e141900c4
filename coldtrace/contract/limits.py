"""Size and range limits of the wire contract, enforced by encoders and decoders alike.

The defaults are the protocol's ceilings. A deployment may lower them (an operator's setting, passed in
as a :class:`Limits`), never raise them: a batch valid for one side must be valid for the other.
"""

from __future__ import annotations

from dataclasses import dataclass

#: 2^53 - 1: integers stay exact in every JSON implementation (IEEE doubles).
MAX_SAFE_INT = 9_007_199_254_740_991

#: Device clocks may be unset (1970) and still be reported - flagged, not refused - so the device
#: timestamp only has to lie in [1970-01-01, 2100-01-01).
DEVICE_TS_MIN_MS = 0
#: Gateway clocks are NTP-synchronised; their stamps must lie in [2020-01-01, 2100-01-01).
GATEWAY_TS_MIN_MS = 1_577_836_800_000
TS_MAX_MS = 4_102_444_800_000

MAX_READINGS_PER_BATCH = 1000
MAX_MARKERS_PER_BATCH = 1000
MAX_BATCH_BYTES = 1024 * 1024
MAX_DEVICE_PAYLOAD_BYTES = 16 * 1024
MAX_LOTS_PER_READING = 32


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Limits one side enforces; each must not exceed the protocol ceiling of the same name."""

    max_readings_per_batch: int = MAX_READINGS_PER_BATCH
    max_markers_per_batch: int = MAX_MARKERS_PER_BATCH
    max_batch_bytes: int = MAX_BATCH_BYTES
    max_device_payload_bytes: int = MAX_DEVICE_PAYLOAD_BYTES

    def __post_init__(self) -> None:
        ceilings = {
            "max_readings_per_batch": MAX_READINGS_PER_BATCH,
            "max_markers_per_batch": MAX_MARKERS_PER_BATCH,
            "max_batch_bytes": MAX_BATCH_BYTES,
            "max_device_payload_bytes": MAX_DEVICE_PAYLOAD_BYTES,
        }
        for name, ceiling in ceilings.items():
            value = getattr(self, name)
            if not 1 <= value <= ceiling:
                raise ValueError(f"{name}={value} is outside 1..{ceiling} (the protocol ceiling)")


DEFAULT_LIMITS = Limits()
