"""Strict decoding of readings: every invalid field is refused with its path and a reason."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coldtrace.contract import ContractError, Reading, RejectCode, canonical_bytes, decode_model
from coldtrace.contract.limits import MAX_SAFE_INT, TS_MAX_MS
from tests.coldtrace.contract.strategies import readings

NOT_AN_ID = st.sampled_from(["", "a/b", "a+b", "#", "-lead", "x" * 65, "é", "a b", "dev\n"])
NOT_A_NUMBER = st.sampled_from(["4.0", True, [], {}, None])
NON_FINITE = st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999"])

# field -> values that must be refused for it. ``None`` is valid for optional fields, so it only
# appears where the field is required. No infinities here: orjson would write them as null;
# non-finite literals are tested on their own below.
INVALID: dict[str, st.SearchStrategy[Any]] = {
    "device_id": NOT_AN_ID | st.integers(-(2**63), 2**63 - 1),
    "site_id": NOT_AN_ID | st.none(),
    "seq": st.integers(-(2**63), -1) | st.integers(MAX_SAFE_INT + 1, 2**63 - 1) | st.just("1") | st.just(1.0),
    "t_device_ms": st.integers(-(2**63), -1) | st.integers(TS_MAX_MS, 2**63 - 1) | st.just("2026-01-01"),
    "t_gateway_ms": st.integers(-(2**63), 1_577_836_799_999) | st.integers(TS_MAX_MS, 2**63 - 1),
    "temperature_c": st.floats(max_value=-100.01, allow_infinity=False)
    | st.floats(min_value=150.01, allow_infinity=False)
    | NOT_A_NUMBER.filter(lambda v: v is not None),
    "humidity_pct": st.floats(max_value=-0.01, allow_infinity=False)
    | st.floats(min_value=100.01, allow_infinity=False),
    "shock_g": st.floats(max_value=-0.01, allow_infinity=False),
    "battery_v": st.floats(min_value=60.01, allow_infinity=False) | st.just("3.6"),
    "anomaly_score": st.floats(min_value=1.01, allow_infinity=False)
    | st.floats(max_value=-0.01, allow_infinity=False),
    "clock": st.sampled_from(["OK", "fine", 1, None]),
    "source_format": st.sampled_from(["vendor-z", "", None]),
    "bound": st.sampled_from(["true", 1, None]),
    "manifest_version": st.sampled_from([0, -1, "3", 1.5]),
    "model": st.sampled_from(["iforest", "iforest@XYZ", "a@0123456789abcde", 7]),
}


def _document(reading: Reading) -> dict[str, Any]:
    document: dict[str, Any] = reading.model_dump(mode="json")
    return document


def _decode(document: dict[str, Any]) -> Reading:
    return decode_model(Reading, orjson.dumps(document, option=orjson.OPT_SORT_KEYS))


@given(readings(), st.sampled_from(sorted(INVALID)), st.data())
def test_every_invalid_field_is_named(reading: Reading, field: str, data: st.DataObject) -> None:
    document = _document(reading)
    document[field] = data.draw(INVALID[field], label=field)
    with pytest.raises(ContractError) as caught:
        _decode(document)
    fields = {e.field for e in caught.value.errors}
    # The bad value itself, or a rule that ties it to another field (e.g. score without model).
    assert field in fields or caught.value.field in {"model", "bound", "lon", "lat", "temperature_c"}
    assert caught.value.code in {RejectCode.INVALID_FIELD, RejectCode.NON_CANONICAL}
    assert all(e.reason for e in caught.value.errors)


@given(readings(), NON_FINITE)
def test_non_finite_numbers_are_refused(reading: Reading, literal: bytes) -> None:
    data = canonical_bytes(reading.model_copy(update={"temperature_c": 1.5}))
    with pytest.raises(ContractError) as caught:
        decode_model(Reading, data.replace(b'"temperature_c":1.5', b'"temperature_c":' + literal))
    assert caught.value.field == "temperature_c"


def test_integer_beyond_64_bits_is_refused() -> None:
    data = b'{"bound":false,"clock":"ok","device_id":"d1","seq":1,"site_id":"s","source_format":"native",'
    data += b'"t_device_ms":1795000000000,"t_gateway_ms":1795000000000,"temperature_c":3.5}'
    with pytest.raises(ContractError) as caught:
        decode_model(Reading, data.replace(b'"seq":1', b'"seq":' + b"9" * 40))
    assert caught.value.field == "seq"


@given(readings(), st.sampled_from(["device_id", "seq", "clock", "site_id", "t_device_ms", "bound"]))
def test_missing_required_field_is_named(reading: Reading, field: str) -> None:
    document = _document(reading)
    del document[field]
    with pytest.raises(ContractError) as caught:
        _decode(document)
    assert caught.value.code is RejectCode.INVALID_FIELD
    assert caught.value.field == field
    assert caught.value.reason == "required field is missing"


@given(readings())
def test_unknown_field_is_refused(reading: Reading) -> None:
    document = _document(reading)
    document["temperature_f"] = 40.0
    with pytest.raises(ContractError) as caught:
        _decode(document)
    assert caught.value.field == "temperature_f"
    assert caught.value.reason == "unknown field"


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"lat": 1.0, "lon": None}, "lon", "together"),
        ({"bound": True, "shipment_id": None, "lot_ids": []}, "bound", "needs a shipment_id"),
        ({"bound": False, "shipment_id": "SHP-1"}, "bound", "must not name"),
        ({"lot_ids": ["b", "a"], "bound": True}, "lot_ids", "sorted"),
        ({"flags": ["glitch", "backfill"]}, "flags", "sorted"),
        ({"flags": ["glitch", "glitch"]}, "flags", "repeats"),
        ({"anomaly_score": 0.5, "model": None}, "model", "together"),
        (
            {"temperature_c": None, "humidity_pct": None, "shock_g": None, "battery_v": None},
            "temperature_c",
            "at least one",
        ),
    ],
)
def test_cross_field_rules_name_the_field(change: dict[str, Any], field: str, reason: str) -> None:
    document = {
        "anomaly_score": None, "battery_v": None, "bound": False, "clock": "ok", "device_id": "d-1",
        "flags": [], "humidity_pct": None, "lat": None, "lon": None, "lot_ids": [], "manifest_version": None,
        "model": None, "seq": 1, "shipment_id": None, "shock_g": None, "site_id": "wh-1",
        "source_format": "native", "t_device_ms": 1_795_000_000_000, "t_gateway_ms": 1_795_000_000_050,
        "temperature_c": 4.5,
    }  # fmt: skip
    assert _decode(document).skew_ms == 50
    document.update(change)
    with pytest.raises(ContractError) as caught:
        _decode(document)
    assert caught.value.field == field
    assert reason in caught.value.reason


@pytest.mark.parametrize("data", [b"", b"{", b"null", b"[1,2]", b'{"seq":', b"\xff\xfe", b'"text"'])
def test_malformed_documents_raise_contract_errors(data: bytes) -> None:
    with pytest.raises(ContractError) as caught:
        decode_model(Reading, data)
    assert caught.value.code in {RejectCode.MALFORMED_JSON, RejectCode.INVALID_FIELD}
