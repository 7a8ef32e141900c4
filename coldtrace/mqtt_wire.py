"""MQTT 5.0 on the wire: reason codes, the primitives, properties (section numbers: OASIS MQTT 5.0).

Shared by the demo's broker (``coldtrace.demo.broker``) and the agent's ingest client
(``coldtrace.mqtt_native``).

A packet that breaks the rules raises :class:`MalformedPacket` or :class:`ProtocolViolation`, which
carry the reason code the broker disconnects with.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass


class PacketType(enum.IntEnum):
    """The control packet types (2.1.2)."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15


class Reason(enum.IntEnum):
    """The reason codes the broker sends (2.4)."""

    SUCCESS = 0x00
    GRANTED_QOS_1 = 0x01
    NO_MATCHING_SUBSCRIBERS = 0x10
    NO_SUBSCRIPTION_EXISTED = 0x11
    UNSPECIFIED_ERROR = 0x80
    MALFORMED_PACKET = 0x81
    PROTOCOL_ERROR = 0x82
    UNSUPPORTED_PROTOCOL_VERSION = 0x84
    CLIENT_IDENTIFIER_NOT_VALID = 0x85
    NOT_AUTHORIZED = 0x87
    SERVER_SHUTTING_DOWN = 0x8B
    KEEP_ALIVE_TIMEOUT = 0x8D
    SESSION_TAKEN_OVER = 0x8E
    TOPIC_FILTER_INVALID = 0x8F
    TOPIC_NAME_INVALID = 0x90
    RECEIVE_MAXIMUM_EXCEEDED = 0x93
    TOPIC_ALIAS_INVALID = 0x94
    PACKET_TOO_LARGE = 0x95
    QOS_NOT_SUPPORTED = 0x9B


class PacketError(Exception):
    """A client sent something the broker must answer with DISCONNECT and ``reason``."""

    reason: Reason = Reason.PROTOCOL_ERROR


class MalformedPacket(PacketError):
    """The bytes do not parse as the packet they claim to be."""

    reason = Reason.MALFORMED_PACKET


class ProtocolViolation(PacketError):
    """A well-formed packet the protocol forbids here."""

    def __init__(self, message: str, reason: Reason = Reason.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.reason = reason


class Prop(enum.IntEnum):
    """The properties the broker reads or writes by name (2.2.2.2)."""

    PAYLOAD_FORMAT = 0x01
    MESSAGE_EXPIRY = 0x02
    SUBSCRIPTION_IDENTIFIER = 0x0B
    SESSION_EXPIRY = 0x11
    ASSIGNED_CLIENT_ID = 0x12
    AUTHENTICATION_METHOD = 0x15
    RECEIVE_MAXIMUM = 0x21
    TOPIC_ALIAS = 0x23
    MAXIMUM_QOS = 0x24
    RETAIN_AVAILABLE = 0x25
    MAXIMUM_PACKET_SIZE = 0x27
    WILDCARD_AVAILABLE = 0x28
    SUBSCRIPTION_ID_AVAILABLE = 0x29
    SHARED_AVAILABLE = 0x2A


class _Kind(enum.Enum):
    BYTE = 1
    U16 = 2
    U32 = 4
    VARINT = 5
    UTF8 = 6
    BINARY = 7
    PAIR = 8


#: The encoding of every property identifier (2.2.2.2, table 2-4).
_PROPERTY_KINDS: dict[int, _Kind] = {
    0x01: _Kind.BYTE, 0x02: _Kind.U32, 0x03: _Kind.UTF8, 0x08: _Kind.UTF8, 0x09: _Kind.BINARY,
    0x0B: _Kind.VARINT, 0x11: _Kind.U32, 0x12: _Kind.UTF8, 0x13: _Kind.U16, 0x15: _Kind.UTF8,
    0x16: _Kind.BINARY, 0x17: _Kind.BYTE, 0x18: _Kind.U32, 0x19: _Kind.BYTE, 0x1A: _Kind.UTF8,
    0x1C: _Kind.UTF8, 0x1F: _Kind.UTF8, 0x21: _Kind.U16, 0x22: _Kind.U16, 0x23: _Kind.U16,
    0x24: _Kind.BYTE, 0x25: _Kind.BYTE, 0x26: _Kind.PAIR, 0x27: _Kind.U32, 0x28: _Kind.BYTE,
    0x29: _Kind.BYTE, 0x2A: _Kind.BYTE,
}  # fmt: skip
#: Properties a broker forwards with an application message (3.3.2.3); the rest stay hop-local.
FORWARDED = frozenset({0x01, 0x02, 0x03, 0x08, 0x09, 0x26})
MAX_VARINT = 268_435_455


# -- primitives ----------------------------------------------------------------------------------
class Reader:
    """Reads MQTT primitives from one packet body; any overrun is a malformed packet."""

    __slots__ = ("_buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self._buf = buf
        self.pos = 0

    def take(self, n: int) -> bytes:
        """The next ``n`` bytes."""
        end = self.pos + n
        if end > len(self._buf):
            raise MalformedPacket(f"packet ends {end - len(self._buf)} bytes early")
        chunk = self._buf[self.pos : end]
        self.pos = end
        return chunk

    def byte(self) -> int:
        """One byte."""
        return self.take(1)[0]

    def u16(self) -> int:
        """A two-byte integer."""
        value: int = struct.unpack(">H", self.take(2))[0]
        return value

    def u32(self) -> int:
        """A four-byte integer."""
        value: int = struct.unpack(">I", self.take(4))[0]
        return value

    def varint(self) -> int:
        """A variable byte integer (1.5.5)."""
        value, shift = 0, 0
        for _ in range(4):
            b = self.byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
        raise MalformedPacket("variable byte integer longer than 4 bytes")

    def binary(self) -> bytes:
        """Two-byte length, then that many bytes."""
        return self.take(self.u16())

    def utf8(self) -> str:
        """A UTF-8 encoded string (1.5.4); no U+0000."""
        raw = self.binary()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedPacket("string is not UTF-8") from exc
        if "\x00" in text:
            raise MalformedPacket("string contains U+0000")
        return text

    def remaining(self) -> int:
        """Bytes not read yet."""
        return len(self._buf) - self.pos

    def rest(self) -> bytes:
        """Every byte not read yet."""
        return self.take(self.remaining())


def varint(value: int) -> bytes:
    """Encode a variable byte integer."""
    if not 0 <= value <= MAX_VARINT:
        raise ValueError(f"{value} does not fit a variable byte integer")
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


def utf8(text: str) -> bytes:
    """Encode a UTF-8 string with its length."""
    raw = text.encode("utf-8")
    return struct.pack(">H", len(raw)) + raw


# -- properties ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Properties:
    """Properties as (identifier, encoded value) pairs, in the order received."""

    items: tuple[tuple[int, bytes], ...] = ()

    @classmethod
    def read(cls, reader: Reader) -> Properties:
        """Read a property length and the properties it covers."""
        length = reader.varint()
        body = Reader(reader.take(length))
        items: list[tuple[int, bytes]] = []
        while body.remaining():
            ident = body.varint()
            kind = _PROPERTY_KINDS.get(ident)
            start = body.pos
            match kind:
                case None:
                    raise MalformedPacket(f"unknown property identifier {ident:#x}")
                case _Kind.BYTE | _Kind.U16 | _Kind.U32:
                    body.take(kind.value)
                case _Kind.VARINT:
                    body.varint()
                case _Kind.UTF8:
                    body.utf8()
                case _Kind.BINARY:
                    body.binary()
                case _Kind.PAIR:
                    body.utf8()
                    body.utf8()
            end = body.pos
            body.pos = start
            items.append((ident, body.take(end - start)))
        return cls(tuple(items))

    def integer(self, ident: Prop) -> int | None:
        """The value of an integer property, None when absent."""
        for key, raw in self.items:
            if key == ident:
                reader = Reader(raw)
                return reader.varint() if _PROPERTY_KINDS[key] is _Kind.VARINT else int.from_bytes(raw)
        return None

    def has(self, ident: Prop) -> bool:
        """True when the property is present."""
        return any(key == ident for key, _ in self.items)

    def forwarded(self) -> Properties:
        """The properties that travel with an application message to its subscribers."""
        return Properties(tuple(item for item in self.items if item[0] in FORWARDED))

    def encode(self) -> bytes:
        """Property length and properties."""
        body = b"".join(varint(key) + raw for key, raw in self.items)
        return varint(len(body)) + body


def int_property(ident: Prop, value: int) -> tuple[int, bytes]:
    """An integer property, encoded by its kind."""
    kind = _PROPERTY_KINDS[ident]
    raw = varint(value) if kind is _Kind.VARINT else value.to_bytes(kind.value)
    return (int(ident), raw)


def str_property(ident: Prop, value: str) -> tuple[int, bytes]:
    """A string property."""
    return (int(ident), utf8(value))
