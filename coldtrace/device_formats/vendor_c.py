"""Vendor C: the legacy text format, one ASCII line per sample, NMEA-style checksum.

A message is 1..64 lines, each ended by LF (0x0A, the last line too), all with the same device id
and firmware. A line::

    CT1;<device_id>;<firmware>;<seq>;<epoch>[;<key>=<value>]...*<XX>

e.g. ``CT1;reefer-7;2.4.1;812;1795000000.250;T=5.5;H=71.2;B=3.58;G=0.12;P=53.540000,9.980000;F=b*67``

Fields, numbered from 1 as in error paths (``line 2 field 5 (epoch)``):

=====  =============  ===========================================================================
field  name           value
=====  =============  ===========================================================================
1      tag            ``CT1``
2      device_id      matching ``^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$``
3      firmware       ``MAJOR.MINOR.PATCH``, no leading zeros
4      seq            decimal 0..4294967295, no sign, no leading zeros
5      epoch          device clock, UTC seconds since the epoch, no leading zeros, optionally
                      with 1..3 decimals (milliseconds); below 4102444800 (year 2100)
6...   ``T=``         temperature, °C; the encoder writes 1 decimal; -100..150
       ``H=``         relative humidity, %; 1 decimal; 0..100
       ``B=``         battery, V; 2 decimals; 0..60
       ``G=``         shock, g; 2 decimals; 0..500
       ``P=lat,lon``  position, degrees; 6 decimals each; -90..90, -180..180
       ``F=``         flags, one or both letters: ``b`` buffered while offline, ``f`` sensor fault
       ``D=``         samples dropped from the device's full buffer since last report, decimal
                      0..4294967295; on line 1 only (an extension of the legacy format: absent = 0)
=====  =============  ===========================================================================

Optional fields may come in any order, each at most once; a quantity the device did not measure is
left out. Numbers are plain decimals (``-?digits[.digits]``): no exponent, no ``+``, no NaN or
infinity. ``*XX`` is the XOR of every byte of the line before the ``*``, as two upper-case hex
digits. Quantisation is part of the format: the encoder rounds to the decimals above, so a decoded
value is within half a step of the device's own (0.05 °C and %, 0.005 V and g, 5e-7 °); epoch
milliseconds are exact (whole seconds are written without decimals).
"""

from __future__ import annotations

import functools
import operator
import re
from typing import Any

from coldtrace.contract.errors import ContractError, FieldError, RejectCode
from coldtrace.contract.limits import DEFAULT_LIMITS, Limits
from coldtrace.contract.reading import SourceFormat
from coldtrace.device_formats.model import MAX_SAMPLES_PER_MESSAGE, DeviceMessage, DeviceSample
from coldtrace.device_formats.validation import Problem, check_format, check_size, find_problem, require_valid

FORMAT = SourceFormat.VENDOR_C_TEXT
TAG = b"CT1"
REQUIRED_FIELDS = 5

_DECIMAL = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?")
_COUNT = re.compile(rb"0|[1-9][0-9]{0,9}")
_EPOCH = re.compile(rb"(0|[1-9][0-9]{0,9})(?:\.([0-9]{1,3}))?")
_CHECKSUM = re.compile(rb"[0-9A-F]{2}")
_FLAGS = {b"b": (True, False), b"f": (False, True), b"bf": (True, True), b"fb": (True, True)}
_QUANTITY_KEYS = {b"T": "temperature_c", b"H": "humidity_pct", b"B": "battery_v", b"G": "shock_g"}
_KEYS_OF = {name: key for key, name in _QUANTITY_KEYS.items()} | {"lat": b"P", "lon": b"P", "dropped": b"D"}
_FIXED_FIELDS = {
    "device_id": (2, "device_id"),
    "firmware": (3, "firmware"),
    "seq": (4, "seq"),
    "t_device_ms": (5, "epoch"),
}


def checksum(body: bytes) -> int:
    """XOR of all bytes of ``body``: the line's ``*XX`` value."""
    return functools.reduce(operator.xor, body, 0)


def _bad_frame(field: str, reason: str) -> ContractError:
    return ContractError(RejectCode.BAD_FRAME, FieldError(field, reason))


def _invalid(line: int, field: int, name: str | bytes, reason: str) -> ContractError:
    label = name.decode() if isinstance(name, bytes) else name
    return ContractError(RejectCode.INVALID_FIELD, FieldError(f"line {line} field {field} ({label})", reason))


def _decimal(value: bytes, line: int, field: int, name: bytes) -> float:
    if _DECIMAL.fullmatch(value) is None:
        raise _invalid(line, field, name, f"{value.decode()!r} is not a decimal number")
    return float(value)


def _read_optional(fields: list[bytes], line: int) -> tuple[dict[str, Any], int | None]:
    """A line's optional fields: DeviceSample keyword arguments, and the dropped count if given."""
    found: dict[str, Any] = {}
    dropped = None
    seen: set[bytes] = set()
    for number, item in enumerate(fields[REQUIRED_FIELDS:], start=REQUIRED_FIELDS + 1):
        key, equals, value = item.partition(b"=")
        if not equals:
            raise _bad_frame(f"line {line} field {number}", f"{item.decode()!r} is not key=value")
        if key in seen:
            raise _invalid(line, number, key, "appears twice on the line")
        seen.add(key)
        if key in _QUANTITY_KEYS:
            found[_QUANTITY_KEYS[key]] = _decimal(value, line, number, key)
        elif key == b"P":
            lat, comma, lon = value.partition(b",")
            if not comma:
                raise _invalid(line, number, key, "must be lat,lon")
            found["lat"] = _decimal(lat, line, number, key)
            found["lon"] = _decimal(lon, line, number, key)
        elif key == b"F":
            if value not in _FLAGS:
                raise _invalid(line, number, key, f"{value.decode()!r} is not a set of flags b, f")
            found["buffered"], found["sensor_fault"] = _FLAGS[value]
        elif key == b"D":
            if line != 1:
                raise _invalid(line, number, key, "dropped count is only allowed on line 1")
            if _COUNT.fullmatch(value) is None:
                raise _invalid(line, number, key, f"{value.decode()!r} is not a count")
            dropped = int(value)
        else:
            raise _invalid(line, number, key, "unknown field")
    return found, dropped


def _read_line(raw: bytes, line: int) -> tuple[list[bytes], DeviceSample, int | None]:
    """Check one line's checksum and read it: its fields, its sample, its dropped count if any."""
    body, star, check = raw.rpartition(b"*")
    if not star:
        raise _bad_frame(f"line {line}", "has no *XX checksum")
    if _CHECKSUM.fullmatch(check) is None:
        raise _bad_frame(f"line {line} checksum", f"{check.decode()!r} is not two upper-case hex digits")
    actual = checksum(body)
    if actual != int(check, 16):
        raise _bad_frame(f"line {line} checksum", f"line XORs to {actual:02X}, not {check.decode()}")
    fields = body.split(b";")
    if len(fields) < REQUIRED_FIELDS:
        raise _bad_frame(f"line {line}", f"has {len(fields)} fields, needs CT1;id;firmware;seq;epoch")
    if fields[0] != TAG:
        raise _bad_frame(f"line {line} field 1 (tag)", f"{fields[0].decode()!r} is not {TAG.decode()}")
    if _COUNT.fullmatch(fields[3]) is None:
        raise _invalid(line, 4, "seq", f"{fields[3].decode()!r} is not a sequence number")
    epoch = _EPOCH.fullmatch(fields[4])
    if epoch is None:
        raise _invalid(line, 5, "epoch", f"{fields[4].decode()!r} is not epoch seconds (up to 3 decimals)")
    seconds, fraction = epoch.groups()
    # Integer arithmetic: seconds with a decimal fraction map exactly onto milliseconds.
    t_device_ms = int(seconds) * 1000 + (int(fraction.ljust(3, b"0")) if fraction else 0)
    optional, dropped = _read_optional(fields, line)
    return fields, DeviceSample(seq=int(fields[3]), t_device_ms=t_device_ms, **optional), dropped


def _problem_path(problem: Problem, lines: list[list[bytes]]) -> str:
    # Message-level attributes (device id, firmware, dropped) are read from line 1.
    index = problem.sample or 0
    if problem.name in _FIXED_FIELDS:
        number, label = _FIXED_FIELDS[problem.name]
        return f"line {index + 1} field {number} ({label})"
    if problem.name not in _KEYS_OF:
        return f"line {index + 1}"
    key = _KEYS_OF[problem.name]
    number = next(n for n, item in enumerate(lines[index], start=1) if item.partition(b"=")[0] == key)
    return f"line {index + 1} field {number} ({key.decode()})"


def decode(payload: bytes, *, limits: Limits = DEFAULT_LIMITS) -> DeviceMessage:
    """Decode vendor C lines; ContractError names the line and field, e.g. ``line 2 field 5 (epoch)``."""
    check_size(payload, limits)
    if not payload.isascii():
        at = next(i for i, byte in enumerate(payload) if byte > 0x7F)
        raise _bad_frame(f"byte {at}", "vendor C payloads are ASCII")
    if not payload.endswith(b"\n"):
        last_line = payload.count(b"\n") + 1
        raise _bad_frame(f"line {last_line}", "does not end with LF (truncated?)")
    raws = payload[:-1].split(b"\n")
    if len(raws) > MAX_SAMPLES_PER_MESSAGE:
        raise ContractError(
            RejectCode.OVERSIZED,
            FieldError(f"line {MAX_SAMPLES_PER_MESSAGE + 1}", f"{len(raws)} lines exceed the maximum"),
        )
    lines: list[list[bytes]] = []
    samples: list[DeviceSample] = []
    dropped = 0
    for number, raw in enumerate(raws, start=1):
        fields, sample, line_dropped = _read_line(raw, number)
        if lines:
            if fields[1] != lines[0][1]:
                raise _invalid(number, 2, "device_id", "differs from line 1: one message, one device")
            if fields[2] != lines[0][2]:
                raise _invalid(number, 3, "firmware", "differs from line 1")
        elif line_dropped is not None:
            dropped = line_dropped
        lines.append(fields)
        samples.append(sample)
    message = DeviceMessage(
        device_id=lines[0][1].decode("ascii"),
        firmware=lines[0][2].decode("ascii"),
        format=FORMAT,
        samples=tuple(samples),
        dropped=dropped,
    )
    problem = find_problem(message)
    if problem is not None:
        raise problem.error(_problem_path(problem, lines))
    return message


def _encode_line(message: DeviceMessage, sample: DeviceSample, *, first: bool) -> bytes:
    parts = [TAG.decode(), message.device_id, message.firmware, str(sample.seq)]
    seconds, millis = divmod(sample.t_device_ms, 1000)
    parts.append(f"{seconds}.{millis:03d}" if millis else str(seconds))
    if sample.temperature_c is not None:
        parts.append(f"T={sample.temperature_c:.1f}")
    if sample.humidity_pct is not None:
        parts.append(f"H={sample.humidity_pct:.1f}")
    if sample.battery_v is not None:
        parts.append(f"B={sample.battery_v:.2f}")
    if sample.shock_g is not None:
        parts.append(f"G={sample.shock_g:.2f}")
    if sample.lat is not None:
        parts.append(f"P={sample.lat:.6f},{sample.lon:.6f}")
    flags = ("b" if sample.buffered else "") + ("f" if sample.sensor_fault else "")
    if flags:
        parts.append(f"F={flags}")
    if first and message.dropped:
        parts.append(f"D={message.dropped}")
    body = ";".join(parts).encode("ascii")
    return b"%s*%02X\n" % (body, checksum(body))


def encode(message: DeviceMessage, *, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Encode a valid message as vendor C lines, rounding each quantity to the format's decimals."""
    check_format(message, FORMAT)
    require_valid(message)
    payload = b"".join(
        _encode_line(message, sample, first=index == 0) for index, sample in enumerate(message.samples)
    )
    check_size(payload, limits)
    return payload
