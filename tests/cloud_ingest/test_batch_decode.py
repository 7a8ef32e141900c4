"""The cloud's fast batch decoder against the contract's: the same batch, or it defers."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from cloud_ingest import batch_decode
from cloud_ingest.batch_decode import decode_batch, fast_decode
from coldtrace.contract import Batch, ContractError, Limits, RejectCode, canonical_bytes, decode_body
from coldtrace.contract.batch import probe_batch
from tests.coldtrace.contract.strategies import batches

#: Any JSON value orjson writes, including awkward ones: 64-bit integers, tiny and huge floats, odd text.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=70),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=2),
    max_leaves=4,
)  # fmt: skip
#: Batches the fast path is for: no gap markers, not a gateway's first.
plain_batches = batches(max_markers=0, min_seq=2)


def _example() -> Batch:
    """A plain batch of two readings that set every field, as a gateway sends them."""
    probe = probe_batch()
    reading = probe.readings[0]
    second = reading.model_copy(update={"seq": reading.seq + 1})
    return probe.model_copy(update={"batch_seq": 2, "markers": (), "prev_hash": "a" * 64,
                                    "readings": (reading, second)})  # fmt: skip


EXAMPLE = _example()


def reference(body: bytes) -> Batch | None:
    """The contract's verdict: the batch, or None for a refused body."""
    try:
        return decode_body(body)
    except ContractError:
        return None


def assert_same(fast: Batch, ref: Batch | None) -> None:
    """``fast`` is the batch the contract decodes, down to what pydantic records of each model."""
    assert ref is not None, "the fast path accepted a body the contract refuses"
    assert fast == ref
    assert fast.model_fields_set == ref.model_fields_set
    assert [r.model_fields_set for r in fast.readings] == [r.model_fields_set for r in ref.readings]
    assert [type(v) for r in fast.readings for v in vars(r).values()] == [
        type(v) for r in ref.readings for v in vars(r).values()
    ]
    assert canonical_bytes(fast) == canonical_bytes(ref)


def test_the_fast_path_is_in_use() -> None:
    assert batch_decode._enabled


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(plain_batches)
def test_a_valid_batch_is_decoded_by_the_fast_path_as_the_contract_decodes_it(batch: Batch) -> None:
    body = canonical_bytes(batch)
    fast = fast_decode(body)
    assert fast is not None, "a valid batch took the slow path"
    assert_same(fast, reference(body))
    assert fast == batch


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_every_valid_batch_decodes_as_the_contract_decodes_it(batch: Batch) -> None:
    body = canonical_bytes(batch)
    assert_same(decode_batch(body), reference(body))


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(plain_batches, st.data())
def test_a_canonical_body_with_any_value_in_any_field_is_judged_as_the_contract_judges_it(
    batch: Batch, data: st.DataObject
) -> None:
    # Canonical bodies get past the re-encoding check, so this tests the types, ranges, patterns and
    # rules; the value may break any of them, or none.
    doc: dict[str, Any] = orjson.loads(canonical_bytes(batch))
    target = doc if data.draw(st.booleans()) else data.draw(st.sampled_from(doc["readings"]))
    name = data.draw(st.sampled_from(sorted(target)))
    if data.draw(st.integers(0, 9)) == 0:
        del target[name]
    else:
        target[name] = data.draw(json_values)
    body = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    fast = fast_decode(body)
    if fast is not None:
        assert_same(fast, reference(body))


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(plain_batches, st.data())
def test_a_damaged_body_is_judged_as_the_contract_judges_it(batch: Batch, data: st.DataObject) -> None:
    body = bytearray(canonical_bytes(batch))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(body) - 1))
        action = data.draw(st.sampled_from(["replace", "insert", "delete"]))
        byte = data.draw(st.sampled_from(b' "\\,.:-+0123456789eE[]{}nulltruefalse\n\xc3\xa9'))
        if action == "replace":
            body[at] = byte
        elif action == "insert":
            body.insert(at, byte)
        else:
            del body[at]
    fast = fast_decode(bytes(body))
    if fast is not None:
        assert_same(fast, reference(bytes(body)))


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda doc: doc["readings"][0].update(temperature_c=151.0), RejectCode.INVALID_FIELD),
        (lambda doc: doc["readings"][0].update(device_id="dev/1"), RejectCode.INVALID_FIELD),
        (lambda doc: doc["readings"][0].update(lat=1.0, lon=None), RejectCode.INVALID_FIELD),
        (lambda doc: doc["readings"][0].update(unknown=1), RejectCode.INVALID_FIELD),
        (lambda doc: doc.update(schema_version=2), RejectCode.UNSUPPORTED_SCHEMA),
    ],
)
def test_a_refused_body_raises_the_contracts_error(change: Any, code: RejectCode) -> None:
    doc = orjson.loads(canonical_bytes(EXAMPLE))
    change(doc)
    with pytest.raises(ContractError) as refused:
        decode_batch(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS))
    assert refused.value.code is code


def test_a_non_canonical_body_raises_the_contracts_error() -> None:
    body = canonical_bytes(EXAMPLE).replace(b'"batch_seq":', b'"batch_seq": ')
    with pytest.raises(ContractError) as refused:
        decode_batch(body)
    assert refused.value.code is RejectCode.NON_CANONICAL


def test_too_many_readings_for_the_limits_raise_oversized() -> None:
    body = canonical_bytes(EXAMPLE)
    with pytest.raises(ContractError) as refused:
        decode_batch(body, limits=Limits(max_readings_per_batch=1))
    assert refused.value.code is RejectCode.OVERSIZED


def test_a_constraint_the_fast_path_cannot_apply_stops_it_at_import() -> None:
    class Stepped(BaseModel):
        level: Annotated[int, Field(multiple_of=5)]

    with pytest.raises(TypeError, match="level"):
        batch_decode._Fields(Stepped, {})


def test_equal_identifiers_are_one_object_and_the_table_of_them_stays_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batch_decode, "_SHARED_MAX", 4)
    first, second = EXAMPLE.readings
    # The storing transaction keys sets and dicts by these: one object hashes once.
    fast = fast_decode(canonical_bytes(EXAMPLE))
    assert fast is not None
    assert fast.readings[0].device_id is fast.readings[1].device_id
    assert fast.readings[0].lot_ids[0] is fast.readings[1].lot_ids[0]
    for n in range(3):
        renamed = [r.model_copy(update={"device_id": f"dev-{n}-{r.seq}"}) for r in (first, second)]
        body = canonical_bytes(EXAMPLE.model_copy(update={"readings": tuple(renamed)}))
        assert fast_decode(body) is not None
        assert fast_decode(body.replace(b'"batch_seq":', b'"batch_seq": ')) is None  # refused, yet seen
        # At most the bound, plus what the last body brought: its 7 distinct identifiers.
        assert len(batch_decode._SHARED) <= 4 + 7
