"""Canonical bytes: deterministic, round-tripping, and the only accepted encoding."""

from __future__ import annotations

import random

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coldtrace.contract import Batch, ContractError, Reading, RejectCode, canonical_bytes, decode_model
from tests.coldtrace.contract.strategies import batches, readings


@given(readings())
def test_reading_round_trips(reading: Reading) -> None:
    data = canonical_bytes(reading)
    decoded = decode_model(Reading, data)
    assert decoded == reading
    assert canonical_bytes(decoded) == data


@given(batches())
def test_batch_round_trips(batch: Batch) -> None:
    data = canonical_bytes(batch)
    assert decode_model(Batch, data) == batch


@given(batches(), st.randoms(use_true_random=False))
def test_canonical_bytes_do_not_depend_on_construction_order(batch: Batch, rnd: random.Random) -> None:
    # Rebuild the same batch from a dict whose keys are shuffled at every level.
    def shuffled(value: object) -> object:
        if isinstance(value, dict):
            items = list(value.items())
            rnd.shuffle(items)
            return {k: shuffled(v) for k, v in items}
        if isinstance(value, list):
            return [shuffled(v) for v in value]
        return value

    rebuilt = Batch.model_validate_json(orjson.dumps(shuffled(batch.model_dump(mode="json"))))
    assert canonical_bytes(rebuilt) == canonical_bytes(batch)


@given(batches())
def test_non_canonical_spelling_of_valid_content_is_refused(batch: Batch) -> None:
    pretty = orjson.dumps(batch.model_dump(mode="json"), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    with pytest.raises(ContractError) as caught:
        decode_model(Batch, pretty)
    assert caught.value.code is RejectCode.NON_CANONICAL


@given(readings())
def test_int_for_float_names_the_field(reading: Reading) -> None:
    document = reading.model_dump(mode="json")
    document["temperature_c"] = 5
    document["lat"] = document["lon"] = None
    with pytest.raises(ContractError) as caught:
        decode_model(Reading, orjson.dumps(document, option=orjson.OPT_SORT_KEYS))
    assert caught.value.code is RejectCode.NON_CANONICAL
    assert caught.value.field == "temperature_c"
    assert "5.0" in caught.value.reason


def test_omitted_optional_field_is_named() -> None:
    reading = Reading.model_validate_json(
        b'{"bound":false,"clock":"ok","device_id":"d1","seq":1,"site_id":"s","source_format":"native",'
        b'"t_device_ms":1795000000000,"t_gateway_ms":1795000000000,"temperature_c":3.5}'
    )
    data = canonical_bytes(reading).replace(b'"battery_v":null,', b"")
    with pytest.raises(ContractError) as caught:
        decode_model(Reading, data)
    assert caught.value.field == "battery_v"
    assert "missing" in caught.value.reason


def test_repeated_key_is_refused() -> None:
    reading = Reading.model_validate_json(
        b'{"bound":false,"clock":"ok","device_id":"d1","seq":1,"site_id":"s","source_format":"native",'
        b'"t_device_ms":1795000000000,"t_gateway_ms":1795000000000,"temperature_c":3.5}'
    )
    data = canonical_bytes(reading).replace(b'"seq":1,', b'"seq":1,"seq":1,')
    with pytest.raises(ContractError) as caught:
        decode_model(Reading, data)
    assert caught.value.code is RejectCode.NON_CANONICAL
