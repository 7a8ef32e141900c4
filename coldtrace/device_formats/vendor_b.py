"""Vendor B: a compact little-endian binary frame with a CRC-32 trailer.

Frame, all integers little-endian::

    offset   size  field
    0        1     magic 0xC7
    1        1     frame version 0x01
    2        1     L: device id length, 1..64
    3        L     device id, ASCII, matching ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$
    3+L      3     firmware MAJOR, MINOR, PATCH: one u8 each (so each is 0..255)
    6+L      2     dropped: u16, samples dropped from the device's full buffer since last report
    8+L      1     N: sample count, 1..64
    9+L      ...   N samples, back to back
    end-4    4     CRC-32 (zlib.crc32: IEEE 802.3 polynomial, init and final XOR 0xFFFFFFFF) over
                   every byte before it, u32

Sample::

    +0       4     seq: u32
    +4       8     t_device_ms: i64, device clock in UTC ms since the epoch, 0 <= t < 4102444800000
    +12      1     presence bits: 0x01 temperature, 0x02 humidity, 0x04 shock, 0x08 battery,
                   0x10 position, 0x20 buffered, 0x40 sensor fault; 0x80 reserved, must be 0
    +13            the present quantities only, in this order:
             2       temperature: i16, 0.01 °C      (-100.00..150.00)
             2       humidity:    u16, 0.01 %       (0.00..100.00)
             2       shock:       u16, 0.01 g       (0.00..500.00)
             2       battery:     u16, 1 mV         (0.000..60.000 V)
             4+4     lat, lon:    i32 each, 1e-7 °  (-90..90, -180..180)

Quantisation is part of the format: the encoder rounds each quantity to the nearest step (ties to
even), so a decoded value is within half a step of the device's own (0.005 °C, %, g; 0.0005 V;
5e-8 °). A decoder reads ``raw / scale`` exactly. Values outside the ranges above are refused even
where the integer type could hold them.

The decoder checks the size limit, magic, version and CRC before it interprets anything else, so a
corrupted or truncated frame is reported as such (``bad_frame``), never as a wrong field value.
"""

from __future__ import annotations

import struct
import zlib

from coldtrace.contract.errors import ContractError, FieldError, RejectCode
from coldtrace.contract.limits import DEFAULT_LIMITS, Limits
from coldtrace.contract.reading import SourceFormat
from coldtrace.device_formats.model import (
    MAX_SAMPLES_PER_MESSAGE,
    DeviceMessage,
    DeviceSample,
    parse_version,
)
from coldtrace.device_formats.validation import Problem, check_format, check_size, find_problem, require_valid

FORMAT = SourceFormat.VENDOR_B_BINARY
MAGIC = 0xC7
VERSION = 0x01

TEMPERATURE = 0x01
HUMIDITY = 0x02
SHOCK = 0x04
BATTERY = 0x08
POSITION = 0x10
BUFFERED = 0x20
FAULT = 0x40
RESERVED = 0x80

_PREFIX = struct.Struct("<BBB")  # magic, version, device id length
_HEADER = struct.Struct("<BBBHB")  # firmware major, minor, patch; dropped; sample count
_SAMPLE = struct.Struct("<IqB")  # seq, t_device_ms, presence bits
_CRC = struct.Struct("<I")
MAX_DROPPED = 0xFFFF
MAX_FIRMWARE_COMPONENT = 0xFF
#: Shorter than this, a frame cannot even hold its header (with a one-character id) and CRC.
MIN_FRAME_BYTES = _PREFIX.size + 1 + _HEADER.size + _CRC.size

# Each present quantity in frame order: presence bit, struct code, byte size, model attributes, scale.
_QUANTITIES = (
    (TEMPERATURE, "h", 2, ("temperature_c",), 100),
    (HUMIDITY, "H", 2, ("humidity_pct",), 100),
    (SHOCK, "H", 2, ("shock_g",), 100),
    (BATTERY, "H", 2, ("battery_v",), 1000),
    (POSITION, "ii", 8, ("lat", "lon"), 10_000_000),
)
_LABELS = {
    "seq": "seq",
    "t_device_ms": "timestamp",
    "temperature_c": "temperature",
    "humidity_pct": "humidity",
    "shock_g": "shock",
    "battery_v": "battery",
    "lat": "latitude",
    "lon": "longitude",
}
#: The struct of a sample's quantities for each combination of the five quantity bits.
_LAYOUTS = tuple(
    struct.Struct("<" + "".join(code for bit, code, *_ in _QUANTITIES if mask & bit)) for mask in range(32)
)


def _bad_frame(field: str, reason: str) -> ContractError:
    return ContractError(RejectCode.BAD_FRAME, FieldError(field, reason))


def _truncated(offset: int, what: str) -> ContractError:
    return _bad_frame(f"byte {offset} ({what})", "frame ends inside this field")


def _quantity_offset(payload: bytes, start: int, name: str) -> int:
    """Where attribute ``name`` of the sample at ``start`` lies in the frame."""
    presence = payload[start + 12]
    offset = start + _SAMPLE.size
    for bit, _, size, names, _ in _QUANTITIES:
        if name in names:
            break
        if presence & bit:
            offset += size
    return offset + 4 * names.index(name)


def _problem_path(problem: Problem, payload: bytes, starts: list[int]) -> str:
    id_end = 3 + payload[2]
    if problem.sample is None:
        offset, label = {
            "device_id": (3, "device id"),
            "firmware": (id_end, "firmware"),
            "dropped": (id_end + 3, "dropped"),
            "samples": (id_end + 5, "sample count"),
        }[problem.name]
        return f"byte {offset} ({label})"
    start = starts[problem.sample]
    if problem.name == "seq":
        offset = start
    elif problem.name == "t_device_ms":
        offset = start + 4
    else:
        offset = _quantity_offset(payload, start, problem.name)
    return f"byte {offset} (sample {problem.sample} {_LABELS[problem.name]})"


def _check_frame(payload: bytes) -> int:
    """Check magic, version and CRC before anything else is read; return where the CRC starts."""
    if len(payload) < MIN_FRAME_BYTES:
        raise _bad_frame("", f"frame of {len(payload)} bytes is shorter than the minimum {MIN_FRAME_BYTES}")
    if payload[0] != MAGIC:
        raise _bad_frame("byte 0 (magic)", f"0x{payload[0]:02X} is not the vendor B magic 0x{MAGIC:02X}")
    if payload[1] != VERSION:
        raise ContractError(
            RejectCode.UNSUPPORTED_SCHEMA,
            FieldError(
                "byte 1 (version)", f"frame version {payload[1]} is not supported (this build reads 1)"
            ),
        )
    end = len(payload) - _CRC.size
    (expected,) = _CRC.unpack_from(payload, end)
    actual = zlib.crc32(memoryview(payload)[:end])
    if actual != expected:
        raise _bad_frame(
            f"byte {end} (crc)",
            f"CRC-32 0x{actual:08X} of the frame does not match 0x{expected:08X}: corrupted or truncated",
        )
    return end


def _read_sample(payload: bytes, offset: int, end: int, index: int) -> tuple[DeviceSample, int]:
    """The sample at ``offset`` and the offset after it."""
    if offset + _SAMPLE.size > end:
        raise _truncated(offset, f"sample {index}")
    seq, t_device_ms, presence = _SAMPLE.unpack_from(payload, offset)
    if presence & RESERVED:
        raise ContractError(
            RejectCode.INVALID_FIELD,
            FieldError(f"byte {offset + 12} (sample {index} presence)", "reserved bit 0x80 is set"),
        )
    layout = _LAYOUTS[presence & 0x1F]
    offset += _SAMPLE.size
    if offset + layout.size > end:
        raise _truncated(offset, f"sample {index} quantities")
    values = iter(layout.unpack_from(payload, offset))
    temperature = next(values) / 100 if presence & TEMPERATURE else None
    humidity = next(values) / 100 if presence & HUMIDITY else None
    shock = next(values) / 100 if presence & SHOCK else None
    battery = next(values) / 1000 if presence & BATTERY else None
    if presence & POSITION:
        lat, lon = next(values) / 10_000_000, next(values) / 10_000_000
    else:
        lat = lon = None
    sample = DeviceSample(
        seq=seq,
        t_device_ms=t_device_ms,
        temperature_c=temperature,
        humidity_pct=humidity,
        shock_g=shock,
        battery_v=battery,
        lat=lat,
        lon=lon,
        buffered=bool(presence & BUFFERED),
        sensor_fault=bool(presence & FAULT),
    )
    return sample, offset + layout.size


def decode(payload: bytes, *, limits: Limits = DEFAULT_LIMITS) -> DeviceMessage:
    """Decode a vendor B frame; ContractError names the byte, e.g. ``byte 17 (sample 0 temperature)``."""
    check_size(payload, limits)
    end = _check_frame(payload)
    # From here the bytes are what the device sent; a structural error is its encoder's.
    id_length = payload[2]
    offset = _PREFIX.size + id_length
    if offset + _HEADER.size > end:
        raise _truncated(_PREFIX.size, "device id")
    major, minor, patch, dropped, count = _HEADER.unpack_from(payload, offset)
    offset += _HEADER.size
    if count > MAX_SAMPLES_PER_MESSAGE:
        raise ContractError(
            RejectCode.OVERSIZED,
            FieldError(
                f"byte {offset - 1} (sample count)", f"{count} samples exceed {MAX_SAMPLES_PER_MESSAGE}"
            ),
        )
    samples = []
    starts = []
    for index in range(count):
        starts.append(offset)
        sample, offset = _read_sample(payload, offset, end, index)
        samples.append(sample)
    if offset != end:
        raise _bad_frame(f"byte {offset}", f"{end - offset} bytes follow the last sample")
    message = DeviceMessage(
        # latin-1 maps every byte to one character; the id pattern then refuses anything not ASCII.
        device_id=payload[_PREFIX.size : _PREFIX.size + id_length].decode("latin-1"),
        firmware=f"{major}.{minor}.{patch}",
        format=FORMAT,
        samples=tuple(samples),
        dropped=dropped,
    )
    problem = find_problem(message)
    if problem is not None:
        raise problem.error(_problem_path(problem, payload, starts))
    return message


def _encode_sample(sample: DeviceSample) -> bytes:
    presence = 0
    values: list[int] = []
    for bit, _, _, names, scale in _QUANTITIES:
        present = [getattr(sample, name) for name in names]
        if present[0] is not None:
            presence |= bit
            values.extend(round(value * scale) for value in present)
    if sample.buffered:
        presence |= BUFFERED
    if sample.sensor_fault:
        presence |= FAULT
    head = _SAMPLE.pack(sample.seq, sample.t_device_ms, presence)
    return head + _LAYOUTS[presence & 0x1F].pack(*values)


def encode(message: DeviceMessage, *, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Encode a valid message as a vendor B frame, quantising each quantity to the format's step.

    ContractError (at the model path) if the message breaks a rule or does not fit the frame: firmware
    components above 255 or more than 65535 dropped samples.
    """
    check_format(message, FORMAT)
    require_valid(message)
    firmware = parse_version(message.firmware)
    if max(firmware) > MAX_FIRMWARE_COMPONENT:
        raise ContractError(
            RejectCode.INVALID_FIELD,
            FieldError("firmware", f"{message.firmware}: vendor B stores each component in one byte"),
        )
    if message.dropped > MAX_DROPPED:
        raise ContractError(
            RejectCode.INVALID_FIELD,
            FieldError("dropped", f"{message.dropped} exceeds the u16 counter of vendor B ({MAX_DROPPED})"),
        )
    device_id = message.device_id.encode("ascii")
    body = b"".join(
        [
            _PREFIX.pack(MAGIC, VERSION, len(device_id)),
            device_id,
            _HEADER.pack(*firmware, message.dropped, len(message.samples)),
            *(_encode_sample(sample) for sample in message.samples),
        ]
    )
    frame = body + _CRC.pack(zlib.crc32(body))
    check_size(frame, limits)
    return frame
