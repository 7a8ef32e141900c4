"""What a device says, in SI units, whatever vendor format carried it.

The simulator builds these and encodes them; the edge agent decodes payloads into them and normalises
them into contract readings. Construction does not validate (decoders have already checked every field
with their own field paths); :mod:`coldtrace.device_formats.validation` holds the rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from coldtrace.contract.reading import SourceFormat

#: The device formats this package encodes and decodes (``SourceFormat.NATIVE`` is not one).
VENDOR_FORMATS = frozenset(
    {SourceFormat.VENDOR_A_JSON, SourceFormat.VENDOR_B_BINARY, SourceFormat.VENDOR_C_TEXT}
)

#: Sequence numbers and drop counters are u32 on the devices.
U32_MAX = 2**32 - 1
MAX_SAMPLES_PER_MESSAGE = 64

#: "MAJOR.MINOR.PATCH", no leading zeros (semver 2.0 core). Components stay below 10^9 so that a
#: version string can never be long enough to make int() slow or refuse it.
FIRMWARE_PATTERN = r"^(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})$"
_FIRMWARE = re.compile(FIRMWARE_PATTERN)


def parse_version(text: str) -> tuple[int, int, int]:
    """Split a "MAJOR.MINOR.PATCH" version into integers, which compare in semver order.

    Raises ValueError for anything else (pre-release and build suffixes included).
    """
    match = _FIRMWARE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a MAJOR.MINOR.PATCH version")
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch)


@dataclass(frozen=True, slots=True)
class DeviceSample:
    """One sample as the device reports it; a quantity the device did not measure is None."""

    seq: int
    """The device's monotonic sequence number, 0..2^32-1."""
    t_device_ms: int
    """Device clock, UTC milliseconds since the epoch; near 0 when the clock was never set."""
    temperature_c: float | None = None
    humidity_pct: float | None = None
    shock_g: float | None = None
    battery_v: float | None = None
    lat: float | None = None
    lon: float | None = None
    buffered: bool = False
    """Held in device memory while offline, sent late."""
    sensor_fault: bool = False
    """The device's own self-test flag."""


@dataclass(frozen=True, slots=True)
class DeviceMessage:
    """One payload's worth of samples from one device."""

    device_id: str
    firmware: str
    """"MAJOR.MINOR.PATCH"."""
    format: SourceFormat
    """Which vendor format carries (or carried) the message."""
    samples: tuple[DeviceSample, ...]
    """1..64 samples; a device may batch several."""
    dropped: int = 0
    """Samples the device dropped from its full buffer since its last report."""
