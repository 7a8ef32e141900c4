"""Vendor B (binary frame, CRC-32): layout, quantisation, corruption detection, byte-level field paths."""

from __future__ import annotations

import contextlib
import dataclasses
import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coldtrace.contract import ContractError, Limits, RejectCode, SourceFormat
from coldtrace.contract.limits import MAX_DEVICE_PAYLOAD_BYTES
from coldtrace.device_formats import DeviceMessage, DeviceSample, vendor_b
from tests.coldtrace.device_formats.strategies import TOLERANCE_B, assert_close, messages

b_messages = messages(SourceFormat.VENDOR_B_BINARY, max_component=255, max_dropped=0xFFFF)

SAMPLE = DeviceSample(
    seq=812,
    t_device_ms=1_795_000_000_000,
    temperature_c=5.5,
    humidity_pct=71.2,
    shock_g=0.12,
    battery_v=3.58,
    lat=53.54,
    lon=9.98,
    buffered=True,
)
MESSAGE = DeviceMessage(
    device_id="d1", firmware="2.4.1", format=SourceFormat.VENDOR_B_BINARY, samples=(SAMPLE, SAMPLE), dropped=3
)
# With the id "d1": the header is 11 bytes, so sample 0 starts at byte 11 and its quantities at 24.
SAMPLE_0 = 11


def _frame(body: bytes) -> bytes:
    """A frame with a correct CRC around ``body``, so the decoder reads on past the CRC check."""
    return body + struct.pack("<I", zlib.crc32(body))


def _header(count: int = 1, device_id: bytes = b"d1", dropped: int = 0) -> bytes:
    return bytes((0xC7, 0x01, len(device_id))) + device_id + struct.pack("<BBBHB", 2, 4, 1, dropped, count)


def _sample(
    presence: int, *values: int, seq: int = 1, t_ms: int = 1_795_000_000_000, codes: str = ""
) -> bytes:
    return struct.pack("<IqB", seq, t_ms, presence) + struct.pack("<" + codes, *values)


def test_layout_is_as_documented() -> None:
    frame = vendor_b.encode(dataclasses.replace(MESSAGE, samples=(SAMPLE,)))
    expected = _header(dropped=3) + _sample(
        0x3F, 550, 7120, 12, 3580, 535_400_000, 99_800_000, seq=812, codes="hHHHii"
    )
    assert frame == _frame(expected)
    assert len(frame) == 11 + 13 + 16 + 4


def test_decode_reads_si_units() -> None:
    message = vendor_b.decode(vendor_b.encode(MESSAGE))
    assert message == MESSAGE


@given(b_messages)
def test_round_trip_within_half_a_step(message: DeviceMessage) -> None:
    assert_close(vendor_b.decode(vendor_b.encode(message)), message, TOLERANCE_B)


@pytest.mark.parametrize(
    ("value", "decoded"), [(4.004, 4.0), (4.006, 4.01), (-0.004, 0.0), (149.999, 150.0), (-99.996, -100.0)]
)
def test_temperature_is_rounded_to_the_nearest_centidegree(value: float, decoded: float) -> None:
    sample = DeviceSample(seq=1, t_device_ms=0, temperature_c=value)
    message = dataclasses.replace(MESSAGE, samples=(sample,))
    assert vendor_b.decode(vendor_b.encode(message)).samples[0].temperature_c == decoded


@given(b_messages, st.data())
def test_every_single_bit_flip_is_detected(message: DeviceMessage, data: st.DataObject) -> None:
    frame = bytearray(vendor_b.encode(message))
    bit = data.draw(st.integers(0, 8 * len(frame) - 1), label="bit")
    frame[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(ContractError) as caught:
        vendor_b.decode(bytes(frame))
    assert caught.value.code in {RejectCode.BAD_FRAME, RejectCode.UNSUPPORTED_SCHEMA}


def test_every_truncation_is_detected() -> None:
    frame = vendor_b.encode(MESSAGE)
    for length in range(len(frame)):
        with pytest.raises(ContractError) as caught:
            vendor_b.decode(frame[:length])
        assert caught.value.code is RejectCode.BAD_FRAME


@given(b_messages, st.data())
def test_single_byte_mutations_raise(message: DeviceMessage, data: st.DataObject) -> None:
    frame = bytearray(vendor_b.encode(message))
    position = data.draw(st.integers(0, len(frame) - 1), label="position")
    frame[position] = data.draw(st.integers(0, 255).filter(lambda v: v != frame[position]), label="value")
    with pytest.raises(ContractError):
        vendor_b.decode(bytes(frame))


@given(st.binary(max_size=200))
def test_random_bytes_raise_only_contract_errors(payload: bytes) -> None:
    for candidate in (payload, b"\xc7\x01" + payload, _frame(b"\xc7\x01" + payload)):
        with contextlib.suppress(ContractError):
            vendor_b.decode(candidate)


@pytest.mark.parametrize(
    ("frame", "field", "code"),
    [
        (_header(device_id=b"a/b") + _sample(0), "byte 3 (device id)", RejectCode.INVALID_FIELD),
        (_header(device_id=b"r\xe9f") + _sample(0), "byte 3 (device id)", RejectCode.INVALID_FIELD),
        (_header(count=0), "byte 10 (sample count)", RejectCode.INVALID_FIELD),
        (_header(count=65) + _sample(0) * 65, "byte 10 (sample count)", RejectCode.OVERSIZED),
        (_header() + _sample(0, t_ms=-1), "byte 15 (sample 0 timestamp)", RejectCode.INVALID_FIELD),
        (
            _header() + _sample(0, t_ms=4_102_444_800_000),
            "byte 15 (sample 0 timestamp)",
            RejectCode.INVALID_FIELD,
        ),
        (
            _header() + _sample(0x01, 15001, codes="h"),
            "byte 24 (sample 0 temperature)",
            RejectCode.INVALID_FIELD,
        ),
        (
            _header() + _sample(0x01, -10001, codes="h"),
            "byte 24 (sample 0 temperature)",
            RejectCode.INVALID_FIELD,
        ),
        (
            _header() + _sample(0x03, 0, 10001, codes="hH"),
            "byte 26 (sample 0 humidity)",
            RejectCode.INVALID_FIELD,
        ),
        (_header() + _sample(0x04, 50001, codes="H"), "byte 24 (sample 0 shock)", RejectCode.INVALID_FIELD),
        (
            _header() + _sample(0x09, 0, 60001, codes="hH"),
            "byte 26 (sample 0 battery)",
            RejectCode.INVALID_FIELD,
        ),
        (
            _header() + _sample(0x10, 900_000_001, 0, codes="ii"),
            "byte 24 (sample 0 latitude)",
            RejectCode.INVALID_FIELD,
        ),
        (
            _header() + _sample(0x12, 0, 0, -1_800_000_001, codes="Hii"),
            "byte 30 (sample 0 longitude)",
            RejectCode.INVALID_FIELD,
        ),
        (_header() + _sample(0x80), "byte 23 (sample 0 presence)", RejectCode.INVALID_FIELD),
        (
            _header(count=2) + _sample(0) + _sample(0x01, 20000, codes="h"),
            "byte 37 (sample 1 temperature)",
            RejectCode.INVALID_FIELD,
        ),
        (_header(count=2) + _sample(0), "byte 24 (sample 1)", RejectCode.BAD_FRAME),
        (_header() + _sample(0x01), "byte 24 (sample 0 quantities)", RejectCode.BAD_FRAME),
        (_header() + _sample(0) + b"\x00", "byte 24", RejectCode.BAD_FRAME),
        (bytes((0xC7, 0x01, 200)) + b"d" * 20, "byte 3 (device id)", RejectCode.BAD_FRAME),
    ],
)
def test_every_invalid_field_is_named_by_byte(frame: bytes, field: str, code: RejectCode) -> None:
    with pytest.raises(ContractError) as caught:
        vendor_b.decode(_frame(frame))
    assert (caught.value.code, caught.value.field) == (code, field)


def test_header_errors() -> None:
    good = vendor_b.encode(MESSAGE)
    with pytest.raises(ContractError) as caught:
        vendor_b.decode(b"\xc8" + good[1:])
    assert (caught.value.code, caught.value.field) == (RejectCode.BAD_FRAME, "byte 0 (magic)")
    with pytest.raises(ContractError) as caught:
        vendor_b.decode(_frame(b"\xc7\x02" + good[2:-4]))
    assert (caught.value.code, caught.value.field) == (RejectCode.UNSUPPORTED_SCHEMA, "byte 1 (version)")
    with pytest.raises(ContractError) as caught:
        vendor_b.decode(good[:-1] + bytes((good[-1] ^ 0x80,)))
    assert caught.value.code is RejectCode.BAD_FRAME
    assert caught.value.field == f"byte {len(good) - 4} (crc)"


def test_oversized_payload_is_refused_before_parsing() -> None:
    with pytest.raises(ContractError) as caught:
        vendor_b.decode(b"\xc7\x01" + b"\x00" * MAX_DEVICE_PAYLOAD_BYTES)
    assert caught.value.code is RejectCode.OVERSIZED


def test_encoder_refuses_what_the_frame_cannot_carry() -> None:
    with pytest.raises(ContractError) as caught:
        vendor_b.encode(dataclasses.replace(MESSAGE, firmware="2.256.0"))
    assert caught.value.field == "firmware"
    with pytest.raises(ContractError) as caught:
        vendor_b.encode(dataclasses.replace(MESSAGE, dropped=65_536))
    assert caught.value.field == "dropped"
    with pytest.raises(ContractError) as caught:
        vendor_b.encode(dataclasses.replace(MESSAGE, samples=(dataclasses.replace(SAMPLE, lon=None),)))
    assert caught.value.field == "samples[0].lon"
    with pytest.raises(ContractError) as caught:
        vendor_b.encode(MESSAGE, limits=Limits(max_device_payload_bytes=32))
    assert caught.value.code is RejectCode.OVERSIZED
