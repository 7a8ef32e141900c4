"""MQTT 5.0 packets as the demo broker reads and writes them (server side only).

Only what a broker needs: it decodes CONNECT, PUBLISH, PUBACK, SUBSCRIBE, UNSUBSCRIBE, PINGREQ and
DISCONNECT from clients and encodes CONNACK, PUBLISH, PUBACK, SUBACK, UNSUBACK, PINGRESP and
DISCONNECT for them. QoS 2 is not offered (CONNACK says Maximum QoS 1). Section numbers refer to the
OASIS MQTT 5.0 standard.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from coldtrace.mqtt_wire import (
    MalformedPacket,
    PacketError,
    PacketType,
    Prop,
    Properties,
    ProtocolViolation,
    Reader,
    Reason,
    utf8,
    varint,
)


# -- client → broker -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Will:
    """The message a client wants published if it vanishes."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties


@dataclass(frozen=True, slots=True)
class Connect:
    """CONNECT (3.1)."""

    client_id: str
    clean_start: bool
    keepalive_s: int
    properties: Properties
    will: Will | None = None
    username: str | None = None
    password: bytes | None = None


@dataclass(frozen=True, slots=True)
class Publish:
    """PUBLISH (3.3), either direction."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None
    properties: Properties = field(default_factory=Properties)


@dataclass(frozen=True, slots=True)
class PubAck:
    """PUBACK (3.4) from a client."""

    packet_id: int
    reason: int


@dataclass(frozen=True, slots=True)
class SubscriptionRequest:
    """One topic filter of a SUBSCRIBE with its options (3.8.3.1)."""

    topic_filter: str
    qos: int
    no_local: bool
    retain_as_published: bool
    retain_handling: int


@dataclass(frozen=True, slots=True)
class Subscribe:
    """SUBSCRIBE (3.8)."""

    packet_id: int
    requests: tuple[SubscriptionRequest, ...]
    subscription_id: int | None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """UNSUBSCRIBE (3.10)."""

    packet_id: int
    filters: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PingReq:
    """PINGREQ (3.12)."""


@dataclass(frozen=True, slots=True)
class Disconnect:
    """DISCONNECT (3.14) from a client."""

    reason: int
    session_expiry_s: int | None


ClientPacket = Connect | Publish | PubAck | Subscribe | Unsubscribe | PingReq | Disconnect


class UnsupportedVersion(PacketError):
    """A CONNECT for a protocol version other than 5; ``level`` says which."""

    reason = Reason.UNSUPPORTED_PROTOCOL_VERSION

    def __init__(self, level: int) -> None:
        super().__init__(f"protocol level {level} is not MQTT 5")
        self.level = level


def decode(first_byte: int, body: bytes) -> ClientPacket:  # noqa: PLR0911 - one return per packet type
    """Decode one packet a client sent: its fixed header's first byte and its body."""
    kind, flags = first_byte >> 4, first_byte & 0x0F
    reader = Reader(body)
    match kind:
        case PacketType.CONNECT:
            return _connect(reader, flags)
        case PacketType.PUBLISH:
            return _publish(reader, flags)
        case PacketType.PUBACK:
            _flags(kind, flags, 0)
            packet_id = reader.u16()
            return PubAck(packet_id, reader.byte() if reader.remaining() else 0)
        case PacketType.SUBSCRIBE:
            _flags(kind, flags, 2)
            return _subscribe(reader)
        case PacketType.UNSUBSCRIBE:
            _flags(kind, flags, 2)
            packet_id = reader.u16()
            Properties.read(reader)
            filters = []
            while reader.remaining():
                filters.append(reader.utf8())
            if not filters:
                raise ProtocolViolation("UNSUBSCRIBE without a topic filter")
            return Unsubscribe(packet_id, tuple(filters))
        case PacketType.PINGREQ:
            _flags(kind, flags, 0)
            return PingReq()
        case PacketType.DISCONNECT:
            _flags(kind, flags, 0)
            reason = reader.byte() if reader.remaining() else 0
            expiry = Properties.read(reader).integer(Prop.SESSION_EXPIRY) if reader.remaining() else None
            return Disconnect(reason, expiry)
        case PacketType.PUBREC | PacketType.PUBREL | PacketType.PUBCOMP:
            raise ProtocolViolation("QoS 2 is not offered by this broker", Reason.QOS_NOT_SUPPORTED)
        case _:
            raise ProtocolViolation(f"packet type {kind} is not expected from a client")


def _flags(kind: int, flags: int, expected: int) -> None:
    if flags != expected:
        raise MalformedPacket(f"packet type {kind} with reserved flags {flags:#x}")


def _connect(reader: Reader, flags: int) -> Connect:
    _flags(PacketType.CONNECT, flags, 0)
    if reader.utf8() != "MQTT":
        raise ProtocolViolation("protocol name is not MQTT", Reason.UNSUPPORTED_PROTOCOL_VERSION)
    level = reader.byte()
    if level != 5:
        raise UnsupportedVersion(level)
    connect_flags = reader.byte()
    if connect_flags & 0x01:
        raise MalformedPacket("reserved CONNECT flag set")
    keepalive = reader.u16()
    properties = Properties.read(reader)
    if properties.has(Prop.AUTHENTICATION_METHOD):
        raise ProtocolViolation("enhanced authentication is not offered", Reason.NOT_AUTHORIZED)
    client_id = reader.utf8()
    will = None
    if connect_flags & 0x04:
        will_properties = Properties.read(reader)
        topic = reader.utf8()
        payload = reader.binary()
        will_qos = (connect_flags >> 3) & 0x03
        if will_qos > 1:
            raise ProtocolViolation("will QoS 2 is not offered", Reason.QOS_NOT_SUPPORTED)
        will = Will(topic, payload, will_qos, bool(connect_flags & 0x20), will_properties)
    elif connect_flags & 0x38:
        raise MalformedPacket("will QoS or retain set without a will")
    username = reader.utf8() if connect_flags & 0x80 else None
    password = reader.binary() if connect_flags & 0x40 else None
    return Connect(client_id, bool(connect_flags & 0x02), keepalive, properties, will, username, password)


def _publish(reader: Reader, flags: int) -> Publish:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3")
    if qos == 2:
        raise ProtocolViolation("QoS 2 is not offered by this broker", Reason.QOS_NOT_SUPPORTED)
    dup = bool(flags & 0x08)
    if dup and qos == 0:
        raise MalformedPacket("DUP set on a QoS 0 PUBLISH")
    topic = reader.utf8()
    packet_id = reader.u16() if qos else None
    if packet_id == 0:
        raise MalformedPacket("packet identifier 0")
    properties = Properties.read(reader)
    if properties.has(Prop.TOPIC_ALIAS):
        raise ProtocolViolation("topic aliases are not offered", Reason.TOPIC_ALIAS_INVALID)
    if properties.has(Prop.SUBSCRIPTION_IDENTIFIER):
        raise ProtocolViolation("a client may not send a subscription identifier")
    return Publish(topic, reader.rest(), qos, bool(flags & 0x01), dup, packet_id, properties)


def _subscribe(reader: Reader) -> Subscribe:
    packet_id = reader.u16()
    properties = Properties.read(reader)
    subscription_id = properties.integer(Prop.SUBSCRIPTION_IDENTIFIER)
    if subscription_id == 0:
        raise MalformedPacket("subscription identifier 0")
    requests = []
    while reader.remaining():
        topic_filter = reader.utf8()
        options = reader.byte()
        if options & 0xC0 or (options >> 4) & 0x03 == 3 or options & 0x03 == 3:
            raise MalformedPacket(f"invalid subscription options {options:#x}")
        requests.append(
            SubscriptionRequest(
                topic_filter=topic_filter, qos=options & 0x03, no_local=bool(options & 0x04),
                retain_as_published=bool(options & 0x08), retain_handling=(options >> 4) & 0x03,
            )
        )  # fmt: skip
    if not requests:
        raise ProtocolViolation("SUBSCRIBE without a topic filter")
    return Subscribe(packet_id, tuple(requests), subscription_id)


# -- broker → client -----------------------------------------------------------------------------
def _packet(kind: PacketType, flags: int, body: bytes) -> bytes:
    return bytes([(kind << 4) | flags]) + varint(len(body)) + body


def connack(*, session_present: bool, reason: Reason, properties: Properties | None = None) -> bytes:
    """CONNACK (3.2)."""
    encoded = (properties or Properties()).encode()
    return _packet(PacketType.CONNACK, 0, bytes([int(session_present), reason]) + encoded)


def connack_v311_refused() -> bytes:
    """A 3.1.1 CONNACK with return code 1 (unacceptable protocol version), for an older client."""
    return bytes([PacketType.CONNACK << 4, 2, 0, 1])


def publish(message: Publish) -> bytes:
    """PUBLISH (3.3) as the broker sends it."""
    flags = (0x08 if message.dup else 0) | (message.qos << 1) | (0x01 if message.retain else 0)
    head = utf8(message.topic)
    if message.qos:
        if message.packet_id is None:
            raise ValueError("a QoS 1 PUBLISH needs a packet identifier")
        head += struct.pack(">H", message.packet_id)
    return _packet(PacketType.PUBLISH, flags, head + message.properties.encode() + message.payload)


def puback(packet_id: int, reason: Reason) -> bytes:
    """PUBACK (3.4); the short form when the publish succeeded."""
    body = struct.pack(">H", packet_id)
    if reason is not Reason.SUCCESS:
        body += bytes([reason])
    return _packet(PacketType.PUBACK, 0, body)


def suback(packet_id: int, reasons: Sequence[int]) -> bytes:
    """SUBACK (3.9)."""
    return _packet(PacketType.SUBACK, 0, struct.pack(">H", packet_id) + b"\x00" + bytes(reasons))


def unsuback(packet_id: int, reasons: Sequence[int]) -> bytes:
    """UNSUBACK (3.11)."""
    return _packet(PacketType.UNSUBACK, 0, struct.pack(">H", packet_id) + b"\x00" + bytes(reasons))


def pingresp() -> bytes:
    """PINGRESP (3.13)."""
    return _packet(PacketType.PINGRESP, 0, b"")


def disconnect(reason: Reason) -> bytes:
    """DISCONNECT (3.14) from the broker."""
    return _packet(PacketType.DISCONNECT, 0, bytes([reason]) + b"\x00")
