"""Vendor A (JSON, °F): round trips, strict decoding, a field path for every invalid field."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coldtrace.contract import ContractError, Limits, RejectCode, SourceFormat
from coldtrace.contract.limits import MAX_DEVICE_PAYLOAD_BYTES
from coldtrace.device_formats import DeviceMessage, DeviceSample, vendor_a
from tests.coldtrace.device_formats.strategies import TOLERANCE_A, assert_close, messages

EXAMPLE = (
    b'{"id":"reefer-7","fw":"2.4.1","drop":0,"s":[{"n":812,"ts":1795000000000,"tF":41.9,"rh":71.2,'
    b'"g":0.12,"bat":3.58,"gps":[53.54,9.98],"buf":false,"flt":false}]}'
)


def _document() -> dict[str, Any]:
    document: dict[str, Any] = orjson.loads(EXAMPLE)
    document["s"].append({"n": 813, "ts": 1795000060000, "tF": 42.0})
    return document


def test_the_documented_example_decodes_to_si_units() -> None:
    message = vendor_a.decode(EXAMPLE)
    assert message.device_id == "reefer-7"
    assert message.firmware == "2.4.1"
    assert message.format is SourceFormat.VENDOR_A_JSON
    (sample,) = message.samples
    assert math.isclose(sample.temperature_c or 0, 5.5, abs_tol=1e-12)
    assert (sample.humidity_pct, sample.shock_g, sample.battery_v) == (71.2, 0.12, 3.58)
    assert (sample.lat, sample.lon) == (53.54, 9.98)
    assert (sample.seq, sample.t_device_ms, sample.buffered, sample.sensor_fault) == (
        812,
        1795000000000,
        False,
        False,
    )
    assert vendor_a.encode(message) == EXAMPLE


def test_conversion_is_exact_arithmetic_not_rounded() -> None:
    payload = EXAMPLE.replace(b'"tF":41.9', b'"tF":41.23')
    assert vendor_a.decode(payload).samples[0].temperature_c == (41.23 - 32) * 5 / 9


def test_absent_quantities_and_defaults() -> None:
    message = vendor_a.decode(b'{"id":"d1","fw":"1.0.0","s":[{"n":0,"ts":0}]}')
    assert message.dropped == 0
    assert message.samples == (DeviceSample(seq=0, t_device_ms=0),)
    assert b'"tF"' not in vendor_a.encode(message)


@given(messages(SourceFormat.VENDOR_A_JSON))
def test_round_trip(message: DeviceMessage) -> None:
    assert_close(vendor_a.decode(vendor_a.encode(message)), message, TOLERANCE_A)


def test_integers_are_accepted_as_numbers() -> None:
    payload = EXAMPLE.replace(b'"rh":71.2', b'"rh":71').replace(b'"tF":41.9', b'"tF":32')
    sample = vendor_a.decode(payload).samples[0]
    assert (sample.humidity_pct, sample.temperature_c) == (71.0, 0.0)


# (change to the two-sample document, expected field, expected code)
INVALID: list[tuple[str, Any, str, RejectCode]] = [
    ("s[0].tF", "41", "s[0].tF", RejectCode.INVALID_FIELD),
    ("s[0].tF", None, "s[0].tF", RejectCode.INVALID_FIELD),
    ("s[0].tF", True, "s[0].tF", RejectCode.INVALID_FIELD),
    ("s[1].tF", 302.1, "s[1].tF", RejectCode.INVALID_FIELD),
    ("s[1].tF", -148.1, "s[1].tF", RejectCode.INVALID_FIELD),
    ("s[0].n", -1, "s[0].n", RejectCode.INVALID_FIELD),
    ("s[0].n", 2**32, "s[0].n", RejectCode.INVALID_FIELD),
    ("s[0].n", 1.0, "s[0].n", RejectCode.INVALID_FIELD),
    ("s[0].n", True, "s[0].n", RejectCode.INVALID_FIELD),
    ("s[0].n", 2**64 - 1, "s[0].n", RejectCode.INVALID_FIELD),
    ("s[0].ts", -1, "s[0].ts", RejectCode.INVALID_FIELD),
    ("s[0].ts", 4_102_444_800_000, "s[0].ts", RejectCode.INVALID_FIELD),
    ("s[0].ts", "2026-01-01", "s[0].ts", RejectCode.INVALID_FIELD),
    ("s[0].rh", 100.01, "s[0].rh", RejectCode.INVALID_FIELD),
    ("s[0].rh", -0.01, "s[0].rh", RejectCode.INVALID_FIELD),
    ("s[0].g", -1, "s[0].g", RejectCode.INVALID_FIELD),
    ("s[0].g", 500.5, "s[0].g", RejectCode.INVALID_FIELD),
    ("s[0].bat", 60.01, "s[0].bat", RejectCode.INVALID_FIELD),
    ("s[0].bat", "3.6", "s[0].bat", RejectCode.INVALID_FIELD),
    ("s[0].gps", [90.5, 0], "s[0].gps[0]", RejectCode.INVALID_FIELD),
    ("s[0].gps", [0, -180.5], "s[0].gps[1]", RejectCode.INVALID_FIELD),
    ("s[0].gps", [0, "9.98"], "s[0].gps[1]", RejectCode.INVALID_FIELD),
    ("s[0].gps", [1.0], "s[0].gps", RejectCode.INVALID_FIELD),
    ("s[0].gps", {"lat": 1, "lon": 2}, "s[0].gps", RejectCode.INVALID_FIELD),
    ("s[0].buf", 1, "s[0].buf", RejectCode.INVALID_FIELD),
    ("s[0].flt", "false", "s[0].flt", RejectCode.INVALID_FIELD),
    ("s[0].tC", 5.5, "s[0].tC", RejectCode.INVALID_FIELD),
    ("s[1]", [], "s[1]", RejectCode.INVALID_FIELD),
    ("id", "a/b", "id", RejectCode.INVALID_FIELD),
    ("id", "x" * 65, "id", RejectCode.INVALID_FIELD),
    ("id", "dev\n", "id", RejectCode.INVALID_FIELD),
    ("id", 7, "id", RejectCode.INVALID_FIELD),
    ("fw", "2.4", "fw", RejectCode.INVALID_FIELD),
    ("fw", "02.4.1", "fw", RejectCode.INVALID_FIELD),
    ("fw", "2.4.1-rc1", "fw", RejectCode.INVALID_FIELD),
    ("drop", -1, "drop", RejectCode.INVALID_FIELD),
    ("drop", 2**32, "drop", RejectCode.INVALID_FIELD),
    ("drop", None, "drop", RejectCode.INVALID_FIELD),
    ("s", [], "s", RejectCode.INVALID_FIELD),
    ("s", {}, "s", RejectCode.INVALID_FIELD),
    ("s", [{"n": 1, "ts": 1}] * 65, "s", RejectCode.OVERSIZED),
    ("site", "wh-1", "site", RejectCode.INVALID_FIELD),
]


def _set(document: dict[str, Any], path: str, value: Any) -> None:
    if path.startswith("s["):
        index, _, key = path[2:].partition("]")
        target = document["s"][int(index)]
        if key:
            target[key.lstrip(".")] = value
        else:
            document["s"][int(index)] = value
    else:
        document[path] = value


@pytest.mark.parametrize(("path", "value", "field", "code"), INVALID)
def test_every_invalid_field_is_named(path: str, value: Any, field: str, code: RejectCode) -> None:
    document = _document()
    _set(document, path, value)
    with pytest.raises(ContractError) as caught:
        vendor_a.decode(orjson.dumps(document))
    assert (caught.value.code, caught.value.field) == (code, field)
    assert caught.value.reason


@pytest.mark.parametrize(("key", "field"), [("id", "id"), ("fw", "fw"), ("s", "s")])
def test_missing_required_field_is_named(key: str, field: str) -> None:
    document = _document()
    del document[key]
    with pytest.raises(ContractError) as caught:
        vendor_a.decode(orjson.dumps(document))
    assert (caught.value.field, caught.value.reason) == (field, "required field is missing")


@pytest.mark.parametrize("key", ["n", "ts"])
def test_missing_sample_field_is_named(key: str) -> None:
    document = _document()
    del document["s"][1][key]
    with pytest.raises(ContractError) as caught:
        vendor_a.decode(orjson.dumps(document))
    assert caught.value.field == f"s[1].{key}"


@pytest.mark.parametrize(
    "payload",
    [
        b'{"id":"a","id":"b","fw":"1.0.0","s":[{"n":1,"ts":1}]}',
        b'{"id":"a","fw":"1.0.0","s":[{"n":1,"n":2,"ts":1}]}',
        b'{"id":"a","fw":"1.0.0","s":[{"n":1,"ts":1,"tF":40,"tF":41}]}',
    ],
)
def test_repeated_keys_are_refused(payload: bytes) -> None:
    with pytest.raises(ContractError) as caught:
        vendor_a.decode(payload)
    assert caught.value.code is RejectCode.MALFORMED_JSON


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e400"])
def test_non_finite_numbers_are_refused(literal: bytes) -> None:
    with pytest.raises(ContractError) as caught:
        vendor_a.decode(EXAMPLE.replace(b"41.9", literal))
    assert caught.value.code is RejectCode.MALFORMED_JSON


@pytest.mark.parametrize(
    "payload", [b"", b"{", b"null", b"[]", b'"text"', b"\xff\xfe", b'{"id":"a",}', b"{} {}"]
)
def test_malformed_documents(payload: bytes) -> None:
    with pytest.raises(ContractError) as caught:
        vendor_a.decode(payload)
    assert caught.value.code in {RejectCode.MALFORMED_JSON, RejectCode.INVALID_FIELD}


def test_oversized_payload_is_refused_before_parsing() -> None:
    # Not even JSON: only the size check can have refused it.
    with pytest.raises(ContractError) as caught:
        vendor_a.decode(b"{" + b"x" * MAX_DEVICE_PAYLOAD_BYTES)
    assert caught.value.code is RejectCode.OVERSIZED
    with pytest.raises(ContractError) as caught:
        vendor_a.decode(EXAMPLE, limits=Limits(max_device_payload_bytes=len(EXAMPLE) - 1))
    assert caught.value.code is RejectCode.OVERSIZED


@given(st.binary(max_size=300))
def test_random_bytes_raise_only_contract_errors(payload: bytes) -> None:
    with contextlib.suppress(ContractError):
        vendor_a.decode(b"{" + payload)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=10,
)


@given(st.data())
def test_random_values_in_a_valid_document_raise_only_contract_errors(data: st.DataObject) -> None:
    document = _document()
    key = data.draw(
        st.sampled_from(["id", "fw", "drop", "s", "s[0].n", "s[1].ts", "s[0].tF", "s[0].gps", "s[0].buf"])
    )
    _set(document, key, data.draw(json_values))
    with contextlib.suppress(ContractError):
        vendor_a.decode(orjson.dumps(document))


@given(st.integers(0, len(EXAMPLE) - 1), st.integers(0, 255))
def test_single_byte_mutations_raise_only_contract_errors(position: int, value: int) -> None:
    mutated = bytearray(EXAMPLE)
    mutated[position] = value
    with contextlib.suppress(ContractError):
        vendor_a.decode(bytes(mutated))


def test_encoder_refuses_an_invalid_message() -> None:
    message = vendor_a.decode(EXAMPLE)
    hot = dataclasses.replace(
        message, samples=(dataclasses.replace(message.samples[0], temperature_c=150.5),)
    )
    with pytest.raises(ContractError) as caught:
        vendor_a.encode(hot)
    assert caught.value.field == "samples[0].temperature_c"
    with pytest.raises(ContractError) as caught:
        vendor_a.encode(dataclasses.replace(message, format=SourceFormat.VENDOR_C_TEXT))
    assert caught.value.field == "format"
    with pytest.raises(ContractError) as caught:
        vendor_a.encode(message, limits=Limits(max_device_payload_bytes=64))
    assert caught.value.code is RejectCode.OVERSIZED
