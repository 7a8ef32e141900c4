"""The package entry points: format sniffing, dispatch, the size limit, shared validation rules."""

from __future__ import annotations

import contextlib
import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coldtrace.contract import ContractError, Limits, RejectCode, SourceFormat
from coldtrace.device_formats import (
    MAX_DEVICE_PAYLOAD_BYTES,
    DeviceMessage,
    DeviceSample,
    decode,
    encode,
    parse_version,
    sniff,
)
from tests.coldtrace.device_formats.strategies import (
    TOLERANCE_A,
    TOLERANCE_B,
    TOLERANCE_C,
    assert_close,
    messages,
)

TOLERANCE = {
    SourceFormat.VENDOR_A_JSON: TOLERANCE_A,
    SourceFormat.VENDOR_B_BINARY: TOLERANCE_B,
    SourceFormat.VENDOR_C_TEXT: TOLERANCE_C,
}
any_message = st.sampled_from(sorted(TOLERANCE)).flatmap(
    lambda fmt: messages(fmt, max_component=255, max_dropped=0xFFFF)
)
SAMPLE = DeviceSample(seq=1, t_device_ms=1_795_000_000_000, temperature_c=4.0)


def _message(fmt: SourceFormat, *samples: DeviceSample) -> DeviceMessage:
    return DeviceMessage(device_id="d1", firmware="1.2.3", format=fmt, samples=samples or (SAMPLE,))


@pytest.mark.parametrize("fmt", sorted(TOLERANCE))
def test_each_format_is_recognised_by_its_first_bytes(fmt: SourceFormat) -> None:
    payload = encode(_message(fmt))
    assert sniff(payload) is fmt
    assert_close(decode(payload), _message(fmt), TOLERANCE[fmt])


@given(any_message)
def test_round_trip_through_the_dispatcher(message: DeviceMessage) -> None:
    assert_close(decode(encode(message)), message, TOLERANCE[message.format])


@pytest.mark.parametrize("payload", [b"", b" {}", b"[1]", b"\xc8\x01", b"CT1,", b"ct1;", b"\x00"])
def test_unknown_formats_are_bad_frames(payload: bytes) -> None:
    with pytest.raises(ContractError) as caught:
        decode(payload)
    assert caught.value.code is RejectCode.BAD_FRAME


def test_oversized_payload_is_refused_before_sniffing() -> None:
    # Not in any format: only the size check can have refused it.
    with pytest.raises(ContractError) as caught:
        decode(b"\x00" * (MAX_DEVICE_PAYLOAD_BYTES + 1))
    assert caught.value.code is RejectCode.OVERSIZED
    small = Limits(max_device_payload_bytes=8)
    with pytest.raises(ContractError) as caught:
        decode(encode(_message(SourceFormat.VENDOR_A_JSON)), limits=small)
    assert caught.value.code is RejectCode.OVERSIZED
    assert MAX_DEVICE_PAYLOAD_BYTES == 16 * 1024


@pytest.mark.parametrize("fmt", sorted(TOLERANCE))
def test_a_worst_case_message_fits_the_limit(fmt: SourceFormat) -> None:
    # Longest id and version, 64 samples with every quantity at its longest spelling.
    sample = DeviceSample(
        seq=2**32 - 1,
        t_device_ms=4_102_444_799_999,
        temperature_c=-99.99999999999997,
        humidity_pct=99.99999999999997,
        shock_g=499.99999999999994,
        battery_v=59.999999999999993,
        lat=-89.99999999999997,
        lon=-179.99999999999997,
        buffered=True,
        sensor_fault=True,
    )
    firmware = "255.255.255" if fmt is SourceFormat.VENDOR_B_BINARY else "999999999.999999999.999999999"
    message = DeviceMessage(
        device_id="x" * 64,
        firmware=firmware,
        format=fmt,
        samples=(sample,) * 64,
        dropped=0xFFFF if fmt is SourceFormat.VENDOR_B_BINARY else 2**32 - 1,
    )
    assert len(encode(message)) <= MAX_DEVICE_PAYLOAD_BYTES


@given(st.binary(max_size=300), st.sampled_from([b"", b"{", b"\xc7\x01", b"CT1;"]))
def test_random_bytes_raise_only_contract_errors(payload: bytes, prefix: bytes) -> None:
    with contextlib.suppress(ContractError):
        decode(prefix + payload)


def test_native_is_not_a_device_format() -> None:
    with pytest.raises(ContractError) as caught:
        encode(_message(SourceFormat.NATIVE))
    assert caught.value.field == "format"


@pytest.mark.parametrize(
    ("change", "field", "code"),
    [
        ({"device_id": "a b"}, "device_id", RejectCode.INVALID_FIELD),
        ({"firmware": "1.2"}, "firmware", RejectCode.INVALID_FIELD),
        ({"dropped": -1}, "dropped", RejectCode.INVALID_FIELD),
        ({"samples": ()}, "samples", RejectCode.INVALID_FIELD),
        ({"samples": (SAMPLE,) * 65}, "samples", RejectCode.OVERSIZED),
        (
            {"samples": (SAMPLE, dataclasses.replace(SAMPLE, seq=-1))},
            "samples[1].seq",
            RejectCode.INVALID_FIELD,
        ),
        (
            {"samples": (dataclasses.replace(SAMPLE, temperature_c=math.nan),)},
            "samples[0].temperature_c",
            None,
        ),
        ({"samples": (dataclasses.replace(SAMPLE, shock_g=math.inf),)}, "samples[0].shock_g", None),
        ({"samples": (dataclasses.replace(SAMPLE, lat=1.0),)}, "samples[0].lon", None),
        ({"samples": (dataclasses.replace(SAMPLE, lon=1.0),)}, "samples[0].lat", None),
        ({"samples": (dataclasses.replace(SAMPLE, t_device_ms=-5),)}, "samples[0].t_device_ms", None),
    ],
)
@pytest.mark.parametrize("fmt", sorted(TOLERANCE))
def test_encoders_refuse_invalid_messages_at_the_model_path(
    change: dict[str, object], field: str, code: RejectCode | None, fmt: SourceFormat
) -> None:
    message = dataclasses.replace(_message(fmt), **change)  # type: ignore[arg-type]
    with pytest.raises(ContractError) as caught:
        encode(message)
    assert caught.value.field == field
    assert caught.value.code is (code or RejectCode.INVALID_FIELD)


def test_non_finite_reason_says_so() -> None:
    message = _message(SourceFormat.VENDOR_A_JSON, dataclasses.replace(SAMPLE, temperature_c=math.nan))
    with pytest.raises(ContractError, match="finite"):
        encode(message)


@pytest.mark.parametrize(
    ("text", "expected"), [("0.0.0", (0, 0, 0)), ("2.10.0", (2, 10, 0)), ("999999999.0.1", (999999999, 0, 1))]
)
def test_versions_parse_to_comparable_tuples(text: str, expected: tuple[int, int, int]) -> None:
    assert parse_version(text) == expected
    assert parse_version("2.10.0") > parse_version("2.9.0")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1.2",
        "1.2.3.4",
        "01.2.3",
        "1.2.3-rc1",
        "1.2.3\n",
        "1e3.0.0",
        "1000000000.0.0",
        "\u0661.\u0662.\u0663",
    ],
)
def test_malformed_versions_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"MAJOR\.MINOR\.PATCH"):
        parse_version(text)
