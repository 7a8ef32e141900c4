"""Vendor A: one JSON object per message, temperature in degrees Fahrenheit.

Example (one line on the wire, UTF-8, no particular key order or spacing required)::

    {"id":"reefer-7","fw":"2.4.1","drop":0,
     "s":[{"n":812,"ts":1795000000000,"tF":41.9,"rh":71.2,"g":0.12,"bat":3.58,
           "gps":[53.54,9.98],"buf":false,"flt":false}]}

Message object:

========  ========  ===========================================================================
key       required  value
========  ========  ===========================================================================
``id``    yes       device id, string matching ``^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$``
``fw``    yes       firmware version, string ``"MAJOR.MINOR.PATCH"`` (no leading zeros)
``drop``  no (0)    integer 0..2^32-1: samples dropped from the device's full buffer since last report
``s``     yes       array of 1..64 sample objects
========  ========  ===========================================================================

Sample object:

========  ========  ===========================================================================
key       required  value
========  ========  ===========================================================================
``n``     yes       integer 0..2^32-1, the device's monotonic sequence number
``ts``    yes       integer, device clock in UTC milliseconds since the epoch, 0 <= ts < 4102444800000
``tF``    no        number, temperature in °F; decoded as ``(tF - 32) * 5 / 9`` °C (no rounding),
                    which must lie in -100..150 °C (-148..302 °F)
``rh``    no        number, relative humidity in %, 0..100
``g``     no        number, shock in g, 0..500
``bat``   no        number, battery in V, 0..60
``gps``   no        array ``[lat, lon]`` of numbers in degrees, -90..90 and -180..180
``buf``   no (f.)   boolean, the sample was buffered on the device while offline
``flt``   no (f.)   boolean, the device's sensor self-test failed
========  ========  ===========================================================================

A quantity the device did not measure is left out; ``null`` is not accepted in its place. Numbers may
be written as integers or decimals; NaN and infinities are refused. Unknown keys and repeated keys are
refused. The encoder writes keys in the order above, ``drop``, ``buf`` and ``flt`` always, and floats
in their shortest round-trip form, so only the °C → °F → °C conversion loses anything (about 1e-13).
"""

from __future__ import annotations

from typing import Any

import orjson

from coldtrace.contract.errors import ContractError, FieldError, RejectCode
from coldtrace.contract.limits import DEFAULT_LIMITS, Limits
from coldtrace.contract.reading import SourceFormat
from coldtrace.device_formats.model import MAX_SAMPLES_PER_MESSAGE, DeviceMessage, DeviceSample
from coldtrace.device_formats.validation import Problem, check_format, check_size, find_problem, require_valid

FORMAT = SourceFormat.VENDOR_A_JSON

_MESSAGE_KEYS = frozenset({"id", "fw", "drop", "s"})
_SAMPLE_KEYS = frozenset({"n", "ts", "tF", "rh", "g", "bat", "gps", "buf", "flt"})
_MESSAGE_PATHS = {"device_id": "id", "firmware": "fw", "dropped": "drop", "samples": "s"}
_SAMPLE_PATHS = {
    "seq": "n",
    "t_device_ms": "ts",
    "temperature_c": "tF",
    "humidity_pct": "rh",
    "shock_g": "g",
    "battery_v": "bat",
    "lat": "gps[0]",
    "lon": "gps[1]",
    "buffered": "buf",
    "sensor_fault": "flt",
}
#: Marks a key that is absent, as opposed to present with the value null.
_ABSENT: Any = object()


def _path(index: int | None, key: str) -> str:
    return key if index is None else f"s[{index}].{key}"


def _invalid(index: int | None, key: str, reason: str) -> ContractError:
    return ContractError(RejectCode.INVALID_FIELD, FieldError(_path(index, key), reason))


def _check_keys(
    obj: dict[str, Any], allowed: frozenset[str], required: tuple[str, ...], index: int | None
) -> None:
    if not allowed.issuperset(obj):
        raise _invalid(index, sorted(set(obj) - allowed)[0], "unknown field")
    for key in required:
        if key not in obj:
            raise _invalid(index, key, "required field is missing")


def _integer(value: Any, index: int | None, key: str) -> int:
    # bool is a subclass of int; JSON true is not a number. orjson turns integers beyond u64 into floats.
    if type(value) is not int:
        raise _invalid(index, key, "must be an integer")
    return value


def _number(value: Any, index: int, key: str) -> float | None:
    if value is _ABSENT:
        return None
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value)
    raise _invalid(index, key, "must be a number")


def _boolean(value: Any, index: int, key: str) -> bool:
    if type(value) is not bool:
        raise _invalid(index, key, "must be true or false")
    return value


def _string(value: Any, key: str) -> str:
    if type(value) is not str:
        raise _invalid(None, key, "must be a string")
    return value


def _sample(item: Any, index: int) -> DeviceSample:
    if type(item) is not dict:
        raise _invalid(None, f"s[{index}]", "must be an object")
    _check_keys(item, _SAMPLE_KEYS, ("n", "ts"), index)
    fahrenheit = _number(item.get("tF", _ABSENT), index, "tF")
    lat = lon = None
    gps = item.get("gps", _ABSENT)
    if gps is not _ABSENT:
        if type(gps) is not list or len(gps) != 2:
            raise _invalid(index, "gps", "must be an array [lat, lon]")
        lat = _number(gps[0], index, "gps[0]")
        lon = _number(gps[1], index, "gps[1]")
    return DeviceSample(
        seq=_integer(item["n"], index, "n"),
        t_device_ms=_integer(item["ts"], index, "ts"),
        temperature_c=None if fahrenheit is None else (fahrenheit - 32.0) * 5.0 / 9.0,
        humidity_pct=_number(item.get("rh", _ABSENT), index, "rh"),
        shock_g=_number(item.get("g", _ABSENT), index, "g"),
        battery_v=_number(item.get("bat", _ABSENT), index, "bat"),
        lat=lat,
        lon=lon,
        buffered=_boolean(item.get("buf", False), index, "buf"),
        sensor_fault=_boolean(item.get("flt", False), index, "flt"),
    )


def _problem_path(problem: Problem) -> str:
    if problem.sample is None:
        return _MESSAGE_PATHS[problem.name]
    return _path(problem.sample, _SAMPLE_PATHS[problem.name])


def decode(payload: bytes, *, limits: Limits = DEFAULT_LIMITS) -> DeviceMessage:
    """Decode a vendor A payload; ContractError names the offending key, e.g. ``s[2].tF``."""
    check_size(payload, limits)
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ContractError(RejectCode.MALFORMED_JSON, FieldError("", str(exc))) from exc
    if type(document) is not dict:
        raise ContractError(RejectCode.INVALID_FIELD, FieldError("", "must be a JSON object"))
    _check_keys(document, _MESSAGE_KEYS, ("id", "fw", "s"), None)
    items = document["s"]
    if type(items) is not list:
        raise _invalid(None, "s", "must be an array of samples")
    if len(items) > MAX_SAMPLES_PER_MESSAGE:
        # Refused before the samples are looked at: their number is what is wrong.
        raise ContractError(
            RejectCode.OVERSIZED,
            FieldError("s", f"{len(items)} samples exceed {MAX_SAMPLES_PER_MESSAGE} per message"),
        )
    message = DeviceMessage(
        device_id=_string(document["id"], "id"),
        firmware=_string(document["fw"], "fw"),
        format=FORMAT,
        samples=tuple([_sample(item, index) for index, item in enumerate(items)]),
        dropped=_integer(document.get("drop", 0), None, "drop"),
    )
    problem = find_problem(message)
    if problem is not None:
        if problem.name == "temperature_c":
            raise ContractError(
                problem.code, FieldError(_problem_path(problem), f"{problem.reason} (converted from °F)")
            )
        raise problem.error(_problem_path(problem))
    # orjson keeps the last of repeated keys without a word. Every string in a valid document is a key
    # or the id or fw value, and none of them can contain a quote, so each string adds exactly two
    # quote characters: one more key on the wire than in the parsed objects shows up as two more.
    strings = len(document) + sum(len(item) for item in items) + 2
    if payload.count(b'"') != 2 * strings:
        raise ContractError(RejectCode.MALFORMED_JSON, FieldError("", "an object repeats a key"))
    return message


def _sample_document(sample: DeviceSample) -> dict[str, Any]:
    item: dict[str, Any] = {"n": sample.seq, "ts": sample.t_device_ms}
    if sample.temperature_c is not None:
        item["tF"] = sample.temperature_c * 9.0 / 5.0 + 32.0
    if sample.humidity_pct is not None:
        item["rh"] = sample.humidity_pct
    if sample.shock_g is not None:
        item["g"] = sample.shock_g
    if sample.battery_v is not None:
        item["bat"] = sample.battery_v
    if sample.lat is not None:
        item["gps"] = [sample.lat, sample.lon]
    item["buf"] = sample.buffered
    item["flt"] = sample.sensor_fault
    return item


def encode(message: DeviceMessage, *, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Encode a valid vendor A message; ContractError (at the model path) if it breaks a rule."""
    check_format(message, FORMAT)
    require_valid(message)
    payload = orjson.dumps(
        {
            "id": message.device_id,
            "fw": message.firmware,
            "drop": message.dropped,
            "s": [_sample_document(sample) for sample in message.samples],
        }
    )
    check_size(payload, limits)
    return payload
