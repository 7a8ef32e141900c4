"""Canonical bytes: deterministic, round-tripping, and the only accepted encoding."""

from __future__ import annotations

import random

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, field_serializer

from coldtrace.contract import (
    Batch,
    ContractError,
    Reading,
    RejectCode,
    canonical,
    canonical_bytes,
    decode_model,
)
from coldtrace.contract.batch import probe_batch
from coldtrace.contract.canonical import _PLAIN, check_plain, reference_bytes
from tests.coldtrace.contract.strategies import batches, readings


@given(readings())
def test_reading_round_trips(reading: Reading) -> None:
    data = canonical_bytes(reading)
    decoded = decode_model(Reading, data)
    assert decoded == reading
    assert canonical_bytes(decoded) == data


@settings(max_examples=300)
@given(batches())
def test_the_direct_encoder_writes_exactly_the_reference_bytes(batch: Batch) -> None:
    assert {Batch, Reading} <= _PLAIN, "the import-time probe found a disagreement"
    assert canonical_bytes(batch) == reference_bytes(batch)
    for reading in batch.readings:
        assert canonical_bytes(reading) == reference_bytes(reading)


def test_an_unvalidated_value_takes_the_reference_path() -> None:
    # model_construct skips validation: orjson cannot write a set, so the reference converts it.
    fields = {**probe_batch().readings[0].__dict__, "lot_ids": {"a"}}
    odd = Reading.model_construct(**fields)
    with pytest.warns(UserWarning, match="serialized value may not be as expected"):
        assert canonical_bytes(odd) == canonical_bytes(Reading(**{**fields, "lot_ids": ("a",)}))


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


def test_a_disagreeing_probe_turns_the_direct_path_off(monkeypatch: pytest.MonkeyPatch) -> None:
    class Doubled(BaseModel):  # a serialiser changes the dump, not the stored dict
        value: int

        @field_serializer("value")
        def _twice(self, value: int) -> int:
            return 2 * value

    marked = {Doubled}
    monkeypatch.setattr(canonical, "_PLAIN", marked)
    check_plain(Doubled(value=1))
    assert marked == set()
    assert canonical_bytes(Doubled(value=1)) == b'{"value":2}'
