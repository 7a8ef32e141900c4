"""Vendor C (legacy text lines, XOR checksum): grammar, quantisation, corruption, line/field paths."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coldtrace.contract import ContractError, Limits, RejectCode, SourceFormat
from coldtrace.contract.limits import MAX_DEVICE_PAYLOAD_BYTES
from coldtrace.device_formats import DeviceMessage, DeviceSample, vendor_c
from coldtrace.device_formats.validation import find_problem
from tests.coldtrace.device_formats.strategies import TOLERANCE_C, assert_close, messages

c_messages = messages(SourceFormat.VENDOR_C_TEXT)

HEAD = "CT1;reefer-7;2.4.1;812;1795000000"


def _line(body: str) -> bytes:
    """A line with its correct checksum, so the decoder reads on past the checksum."""
    data = body.encode()
    return b"%s*%02X\n" % (data, vendor_c.checksum(data))


def test_the_documented_example() -> None:
    line = b"CT1;reefer-7;2.4.1;812;1795000000.250;T=5.5;H=71.2;B=3.58;G=0.12;P=53.540000,9.980000;F=b*67\n"
    message = vendor_c.decode(line)
    assert message == DeviceMessage(
        device_id="reefer-7",
        firmware="2.4.1",
        format=SourceFormat.VENDOR_C_TEXT,
        samples=(
            DeviceSample(
                seq=812,
                t_device_ms=1_795_000_000_250,
                temperature_c=5.5,
                humidity_pct=71.2,
                shock_g=0.12,
                battery_v=3.58,
                lat=53.54,
                lon=9.98,
                buffered=True,
            ),
        ),
    )
    assert vendor_c.encode(message) == line


def test_several_lines_make_one_message_and_dropped_rides_on_line_1() -> None:
    payload = _line(HEAD + ";T=4.0;D=12") + _line("CT1;reefer-7;2.4.1;813;1795000060;T=4.1;F=fb")
    message = vendor_c.decode(payload)
    assert message.dropped == 12
    assert [s.seq for s in message.samples] == [812, 813]
    assert (message.samples[1].buffered, message.samples[1].sensor_fault) == (True, True)
    assert vendor_c.encode(message) == _line(HEAD + ";T=4.0;D=12") + _line(
        "CT1;reefer-7;2.4.1;813;1795000060;T=4.1;F=bf"
    )


@pytest.mark.parametrize(
    ("epoch", "millis"),
    [
        ("0", 0),
        ("1795000000", 1_795_000_000_000),
        ("1795000000.5", 1_795_000_000_500),
        ("1.25", 1250),
        ("1.007", 1007),
    ],
)
def test_epoch_seconds_map_exactly_to_milliseconds(epoch: str, millis: int) -> None:
    message = vendor_c.decode(_line(f"CT1;d1;1.0.0;1;{epoch};T=1.0"))
    assert message.samples[0].t_device_ms == millis


def test_optional_fields_in_any_order() -> None:
    message = vendor_c.decode(_line(HEAD + ";P=1.5,-2.5;F=f;T=-3.2"))
    sample = message.samples[0]
    assert (sample.temperature_c, sample.lat, sample.lon, sample.sensor_fault) == (-3.2, 1.5, -2.5, True)


@given(c_messages)
def test_round_trip_within_half_a_step(message: DeviceMessage) -> None:
    assert_close(vendor_c.decode(vendor_c.encode(message)), message, TOLERANCE_C)


@given(c_messages, st.data())
def test_single_byte_mutation_is_detected_or_changes_the_message(
    message: DeviceMessage, data: st.DataObject
) -> None:
    payload = bytearray(vendor_c.encode(message))
    position = data.draw(st.integers(0, len(payload) - 1), label="position")
    payload[position] = data.draw(st.integers(0, 255).filter(lambda v: v != payload[position]), label="value")
    try:
        decoded = vendor_c.decode(bytes(payload))
    except ContractError:
        return
    assert decoded != vendor_c.decode(vendor_c.encode(message))
    assert find_problem(decoded) is None


@given(st.binary(max_size=200))
def test_random_bytes_raise_only_contract_errors(payload: bytes) -> None:
    body = b"CT1;" + payload
    for candidate in (body, body + b"\n", b"%s*%02X\n" % (body, vendor_c.checksum(body))):
        with contextlib.suppress(ContractError):
            vendor_c.decode(candidate)


@given(st.text(alphabet="CT1;dev.-0123456789=THBGPFDbf,*-", max_size=80))
def test_random_lines_with_a_valid_checksum_raise_only_contract_errors(body: str) -> None:
    with contextlib.suppress(ContractError):
        vendor_c.decode(_line(body))


@pytest.mark.parametrize(
    ("payload", "field", "code"),
    [
        (_line("CT1;a/b;2.4.1;1;1795000000;T=1.0"), "line 1 field 2 (device_id)", RejectCode.INVALID_FIELD),
        (_line("CT1;d1;2.4;1;1795000000;T=1.0"), "line 1 field 3 (firmware)", RejectCode.INVALID_FIELD),
        (_line("CT1;d1;2.4.1;-1;1795000000"), "line 1 field 4 (seq)", RejectCode.INVALID_FIELD),
        (_line("CT1;d1;2.4.1;01;1795000000"), "line 1 field 4 (seq)", RejectCode.INVALID_FIELD),
        (_line("CT1;d1;2.4.1;4294967296;1795000000"), "line 1 field 4 (seq)", RejectCode.INVALID_FIELD),
        (_line("CT1;d1;2.4.1;1;1795000000.1234"), "line 1 field 5 (epoch)", RejectCode.INVALID_FIELD),
        (_line("CT1;d1;2.4.1;1;1.795e9"), "line 1 field 5 (epoch)", RejectCode.INVALID_FIELD),
        (_line("CT1;d1;2.4.1;1;4102444800"), "line 1 field 5 (epoch)", RejectCode.INVALID_FIELD),
        (_line(HEAD) + _line("CT1;reefer-7;2.4.1;2;x"), "line 2 field 5 (epoch)", RejectCode.INVALID_FIELD),
        (_line(HEAD + ";T=abc"), "line 1 field 6 (T)", RejectCode.INVALID_FIELD),
        (_line(HEAD + ";T=nan"), "line 1 field 6 (T)", RejectCode.INVALID_FIELD),
        (_line(HEAD + ";T=inf"), "line 1 field 6 (T)", RejectCode.INVALID_FIELD),
        (_line(HEAD + ";T=1e2"), "line 1 field 6 (T)", RejectCode.INVALID_FIELD),
        (_line(HEAD + ";T=+4.0"), "line 1 field 6 (T)", RejectCode.INVALID_FIELD),
        (_line(HEAD + ";T=1_0"), "line 1 field 6 (T)", RejectCode.INVALID_FIELD),
        (_line(HEAD + ";T=150.1"), "line 1 field 6 (T)", RejectCode.INVALID_FIELD),
        (_line(HEAD + ";T=4.0;H=100.1"), "line 1 field 7 (H)", RejectCode.INVALID_FIELD),
        (_line(HEAD + ";B=60.01"), "line 1 field 6 (B)", RejectCode.INVALID_FIELD),
        (_line(HEAD + ";G=-0.01"), "line 1 field 6 (G)", RejectCode.INVALID_FIELD),
        (_line(HEAD + ";T=4.0;P=91.0,0.0"), "line 1 field 7 (P)", RejectCode.INVALID_FIELD),
        (_line(HEAD + ";P=1.0,180.5;T=4.0"), "line 1 field 6 (P)", RejectCode.INVALID_FIELD),
        (_line(HEAD + ";P=1.0"), "line 1 field 6 (P)", RejectCode.INVALID_FIELD),
        (_line(HEAD + ";F=x"), "line 1 field 6 (F)", RejectCode.INVALID_FIELD),
        (_line(HEAD + ";F=bb"), "line 1 field 6 (F)", RejectCode.INVALID_FIELD),
        (_line(HEAD + ";F="), "line 1 field 6 (F)", RejectCode.INVALID_FIELD),
        (_line(HEAD + ";D=-1"), "line 1 field 6 (D)", RejectCode.INVALID_FIELD),
        (_line(HEAD + ";D=4294967296"), "line 1 field 6 (D)", RejectCode.INVALID_FIELD),
        (_line(HEAD) + _line("CT1;reefer-7;2.4.1;2;1;D=1"), "line 2 field 6 (D)", RejectCode.INVALID_FIELD),
        (_line(HEAD + ";X=1"), "line 1 field 6 (X)", RejectCode.INVALID_FIELD),
        (_line(HEAD + ";T=1.0;T=2.0"), "line 1 field 7 (T)", RejectCode.INVALID_FIELD),
        (
            _line(HEAD) + _line("CT1;reefer-8;2.4.1;2;1"),
            "line 2 field 2 (device_id)",
            RejectCode.INVALID_FIELD,
        ),
        (
            _line(HEAD) + _line("CT1;reefer-7;2.4.2;2;1"),
            "line 2 field 3 (firmware)",
            RejectCode.INVALID_FIELD,
        ),
        (_line(HEAD + ";T"), "line 1 field 6", RejectCode.BAD_FRAME),
        (_line(HEAD + ";"), "line 1 field 6", RejectCode.BAD_FRAME),
        (_line("CT1;d1;2.4.1;1"), "line 1", RejectCode.BAD_FRAME),
        (_line("CT2;d1;2.4.1;1;1"), "line 1 field 1 (tag)", RejectCode.BAD_FRAME),
        (_line(HEAD)[:-4] + b"*00\n", "line 1 checksum", RejectCode.BAD_FRAME),
        (b"CT1;d1;1.0.0;1;9*4a\n", "line 1 checksum", RejectCode.BAD_FRAME),
        (HEAD.encode() + b"\n", "line 1", RejectCode.BAD_FRAME),
        (_line(HEAD)[:-1], "line 1", RejectCode.BAD_FRAME),
        (_line(HEAD) + _line(HEAD)[:-1], "line 2", RejectCode.BAD_FRAME),
        (_line(HEAD) + b"\n", "line 2", RejectCode.BAD_FRAME),
        (_line(HEAD).replace(b"\n", b"\r\n"), "line 1 checksum", RejectCode.BAD_FRAME),
        (_line("CT1;r\xe9;2.4.1;1;1"), "byte 5", RejectCode.BAD_FRAME),
        (_line(HEAD) * 65, "line 65", RejectCode.OVERSIZED),
    ],
)
def test_every_invalid_field_is_named_by_line_and_field(payload: bytes, field: str, code: RejectCode) -> None:
    with pytest.raises(ContractError) as caught:
        vendor_c.decode(payload)
    assert (caught.value.code, caught.value.field) == (code, field)


def test_decimal_grammar_accepts_plain_decimals() -> None:
    message = vendor_c.decode(_line(HEAD + ";T=-0.0;H=100;B=3.575;G=0"))
    sample = message.samples[0]
    assert (sample.temperature_c, sample.humidity_pct, sample.battery_v, sample.shock_g) == (
        0.0,
        100.0,
        3.575,
        0.0,
    )


def test_oversized_payload_is_refused_before_parsing() -> None:
    with pytest.raises(ContractError) as caught:
        vendor_c.decode(b"CT1;" + b"\xff" * MAX_DEVICE_PAYLOAD_BYTES)
    assert caught.value.code is RejectCode.OVERSIZED


def test_encoder_quantises_and_refuses_invalid_messages() -> None:
    sample = DeviceSample(
        seq=1, t_device_ms=1_795_000_000_001, temperature_c=4.06, battery_v=3.576, lat=1e-9, lon=-0.0
    )
    message = DeviceMessage(
        device_id="d1", firmware="1.0.0", format=SourceFormat.VENDOR_C_TEXT, samples=(sample,)
    )
    assert vendor_c.encode(message) == _line(
        "CT1;d1;1.0.0;1;1795000000.001;T=4.1;B=3.58;P=0.000000,-0.000000"
    )
    with pytest.raises(ContractError) as caught:
        vendor_c.encode(
            dataclasses.replace(message, samples=(dataclasses.replace(sample, humidity_pct=-1.0),))
        )
    assert caught.value.field == "samples[0].humidity_pct"
    with pytest.raises(ContractError) as caught:
        vendor_c.encode(dataclasses.replace(message, samples=(sample,) * 65))
    assert caught.value.code is RejectCode.OVERSIZED
    with pytest.raises(ContractError) as caught:
        vendor_c.encode(message, limits=Limits(max_device_payload_bytes=16))
    assert caught.value.code is RejectCode.OVERSIZED
