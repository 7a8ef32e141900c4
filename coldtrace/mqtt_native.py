"""An MQTT 5 client written on asyncio streams, for the edge agent's device ingest.

Measured with py-spy on the agent under ``scripts/bench_agent.py``'s load: paho's pure-Python
packet handling (reading, properties, callbacks, the PUBACK it writes per message) took about 80 % of
the agent's event loop, more than decoding, binding, scoring and storing the readings together. This
client does only what ingest needs, on the event loop: connect with a client certificate (TLS by the
``ssl`` module, as with paho), subscribe, receive QoS 0/1 publishes on ``messages``, acknowledge each
one when told to (PUBACKs written in one TLS write per loop turn), publish QoS 0/1 with the PUBACK
reason, keepalive. It has the interface of :class:`coldtrace.mqtt.MqttClient`, so the reconnection
helpers there drive it too.

Flow control: ``messages`` holds at most ``receive_maximum`` messages; while it is full the socket
is not read. So consume ``messages`` while ``subscribe`` waits: a persistent session's queued messages
arrive ahead of the SUBACK.

What it leaves out, on purpose: QoS 2, topic aliases, will messages, user names, enhanced
authentication, and resending our own unacknowledged publishes after a reconnect (their futures fail
with NotConnected instead: the agent publishes only best-effort local alerts on this link).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from coldtrace.mqtt import (
    BrokerUnreachable,
    BrokerUrl,
    ConnectRefused,
    Message,
    MqttError,
    NotConnected,
    PublishAndWait,
    TlsFiles,
    connect_error,
)
from coldtrace.mqtt_wire import PacketError, PacketType, Prop, Reader, utf8, varint

logger = logging.getLogger(__name__)

_PINGREQ = b"\xc0\x00"
_DISCONNECT = b"\xe0\x00"
_U16 = struct.Struct(">H")


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + varint(len(body)) + body


class NativeMqttClient(PublishAndWait):
    """One MQTT 5 connection on asyncio streams; the interface of :class:`coldtrace.mqtt.MqttClient`."""

    def __init__(
        self, *, client_id: str, broker: BrokerUrl, tls: TlsFiles | None = None,
        ssl_context: ssl.SSLContext | None = None, clean_start: bool = True, session_expiry_s: int = 0,
        keepalive_s: int = 30, manual_ack: bool = False, receive_maximum: int | None = None,
    ) -> None:  # fmt: skip
        """As :class:`coldtrace.mqtt.MqttClient` (``manual_ack``: PUBACK only on ``Message.ack()``)."""
        self.client_id = client_id
        self.broker = broker
        self._context = ssl_context or (tls.context() if tls is not None else None)
        if broker.tls and self._context is None:
            raise ValueError(f"{broker.host}:{broker.port} needs TLS files for mqtts")
        self._clean_start = clean_start
        self._session_expiry_s = session_expiry_s
        self._keepalive_s = keepalive_s
        self._manual_ack = manual_ack
        self._receive_maximum = receive_maximum
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[ReasonCode]] = {}
        self._subscribed: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._heard = 0.0
        # Bounded: Mosquitto 2.0 was seen to stop honouring Receive Maximum once acknowledgements
        # flowed (all of a 5,000-message backlog arrived after 50 PUBACKs), so the socket is not read
        # while the queue is full and TCP holds the rest back.
        self.messages: asyncio.Queue[Message] = asyncio.Queue(maxsize=receive_maximum or 0)
        self.connected = asyncio.Event()
        self.disconnected = asyncio.Event()
        self.disconnected.set()

    # -- lifecycle -------------------------------------------------------------------------------
    async def connect(self, *, timeout_s: float = 10.0) -> None:
        """Connect and wait for CONNACK; BrokerUnreachable (retry later) or ConnectRefused (do not)."""
        where = f"{self.broker.host}:{self.broker.port}"
        context = self._context if self.broker.tls else None
        try:
            async with asyncio.timeout(timeout_s):
                reader, writer = await asyncio.open_connection(
                    self.broker.host, self.broker.port, ssl=context,
                    server_hostname=self.broker.host if context is not None else None,
                )  # fmt: skip
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            raise connect_error(self.client_id, where, exc) from exc
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # Nagle would hold a PUBACK back until the broker's delayed ACK (see coldtrace.mqtt).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        writer.write(self._connect_packet())
        try:
            async with asyncio.timeout(timeout_s):
                kind, _, body = await self._read_packet(reader)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError) as exc:
            writer.close()
            raise ConnectRefused(
                f"{self.client_id}: connection to {where} closed before CONNACK ({exc!r}); "
                "certificate refused?"
            ) from exc
        except TimeoutError as exc:
            writer.close()
            raise BrokerUnreachable(
                f"{self.client_id}: no CONNACK from {where} within {timeout_s:g} s"
            ) from exc
        if kind != PacketType.CONNACK or len(body) < 2:
            writer.close()
            raise ConnectRefused(f"{self.client_id}: {where} answered CONNECT with packet type {kind}")
        reason = ReasonCode(PacketTypes.CONNACK, identifier=body[1])
        if reason.is_failure:
            writer.close()
            raise ConnectRefused(f"{self.client_id}: broker refused: {reason}")
        self._writer = writer
        self._heard = asyncio.get_running_loop().time()
        self.disconnected.clear()
        self.connected.set()
        self._tasks = [
            asyncio.create_task(self._receive(reader), name=f"mqtt-read-{self.client_id}"),
            asyncio.create_task(self._keepalive(), name=f"mqtt-ping-{self.client_id}"),
        ]

    def _connect_packet(self) -> bytes:
        properties = bytes((Prop.SESSION_EXPIRY,)) + struct.pack(">I", self._session_expiry_s)
        if self._receive_maximum is not None:
            properties += bytes((Prop.RECEIVE_MAXIMUM,)) + _U16.pack(self._receive_maximum)
        flags = 0x02 if self._clean_start else 0x00
        body = (
            utf8("MQTT") + bytes((5, flags)) + _U16.pack(self._keepalive_s)
            + varint(len(properties)) + properties + utf8(self.client_id)
        )  # fmt: skip
        return _packet(PacketType.CONNECT << 4, body)

    async def disconnect(self) -> None:
        """Send DISCONNECT (normal) and close the connection."""
        writer = self._writer
        if writer is not None:
            self._flush()
            with contextlib.suppress(OSError, RuntimeError):
                writer.write(_DISCONNECT)
        await self._lost("disconnect requested")

    async def _lost(self, why: str) -> None:
        """The connection is over: stop its tasks, fail what waited on it, say so."""
        writer, self._writer = self._writer, None
        current = asyncio.current_task()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            if task is not current:
                task.cancel()
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError, asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(2):
                    await writer.wait_closed()
            logger.debug("%s disconnected: %s", self.client_id, why)
        failure = NotConnected(f"{self.client_id}: connection lost ({why})")
        for pending in self._pending.values():
            if not pending.done():
                pending.set_exception(failure)
        for subscribing in self._subscribed.values():
            if not subscribing.done():
                subscribing.set_exception(failure)
        self._pending.clear()
        self._subscribed.clear()
        self._out.clear()
        self.connected.clear()
        self.disconnected.set()

    # -- reading ---------------------------------------------------------------------------------
    @staticmethod
    async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
        """(packet type, flags, body) of the next packet."""
        first = (await reader.readexactly(1))[0]
        length = shift = 0
        while True:
            byte = (await reader.readexactly(1))[0]
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift > 21:
                raise MqttError("malformed remaining length")
        body = await reader.readexactly(length) if length else b""
        return first >> 4, first & 0x0F, body

    async def _receive(self, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        why = "closed by the broker"
        try:
            while True:
                kind, flags, body = await self._read_packet(reader)
                self._heard = loop.time()
                if kind == PacketType.PUBLISH:
                    message = self._on_publish(flags, body)
                    if self.messages.full():  # wait for the consumer (a coroutine per message is dear)
                        await self.messages.put(message)
                    else:
                        self.messages.put_nowait(message)
                elif kind == PacketType.PUBACK:
                    self._on_puback(body)
                elif kind == PacketType.SUBACK:
                    self._on_suback(body)
                elif kind == PacketType.DISCONNECT:
                    reason = ReasonCode(PacketTypes.DISCONNECT, identifier=body[0] if body else 0)
                    why = f"the broker sent DISCONNECT ({reason})"
                    return
                elif kind != PacketType.PINGRESP:
                    why = f"unexpected packet type {kind} from the broker"
                    return
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError) as exc:
            why = f"{type(exc).__name__}: {exc}"
        except (MqttError, PacketError) as exc:
            why = f"malformed packet from the broker: {exc}"
        finally:
            if self._writer is not None:
                await asyncio.shield(self._lost(why))

    def _on_publish(self, flags: int, body: bytes) -> Message:
        qos = (flags >> 1) & 0x03
        packet = Reader(body)
        topic = packet.utf8()
        mid = packet.u16() if qos else 0
        packet.take(packet.varint())  # properties: none that ingest uses
        payload = packet.rest()
        if qos and not self._manual_ack:
            self._ack(mid)
        acknowledge = (lambda: self._ack(mid)) if qos and self._manual_ack else _nothing
        return Message(topic=topic, payload=payload, qos=qos, mid=mid, _ack=acknowledge)

    def _on_puback(self, body: bytes) -> None:
        packet = Reader(body)
        mid = packet.u16()
        reason = ReasonCode(PacketTypes.PUBACK, identifier=packet.byte() if packet.remaining() else 0)
        future = self._pending.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(reason)

    def _on_suback(self, body: bytes) -> None:
        packet = Reader(body)
        mid = packet.u16()
        packet.take(packet.varint())  # properties
        reasons = [ReasonCode(PacketTypes.SUBACK, identifier=code) for code in packet.rest()]
        future = self._subscribed.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(reasons)

    async def _keepalive(self) -> None:
        """PINGREQ at half the keepalive; a broker silent for 1.5 keepalives is gone (as it judges us)."""
        loop = asyncio.get_running_loop()
        interval = max(1.0, self._keepalive_s / 2)
        while True:
            await asyncio.sleep(interval)
            # A full queue means we stopped reading, not that the broker went quiet.
            if loop.time() - self._heard > 1.5 * self._keepalive_s and not self.messages.full():
                await asyncio.shield(
                    self._lost(f"no packet from the broker for {1.5 * self._keepalive_s:g} s")
                )
                return
            self._send(_PINGREQ)

    # -- writing ---------------------------------------------------------------------------------
    def _send(self, packet: bytes) -> None:
        """Queue ``packet``; everything queued in one loop turn goes out in one write."""
        if self._writer is None:
            raise NotConnected(f"{self.client_id}: not connected")
        self._out.append(packet)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self._writer is not None:
            data = b"".join(self._out)
            self._out.clear()
            try:
                self._writer.write(data)
            except (OSError, RuntimeError) as exc:  # the reader sees the broken link and cleans up
                logger.debug("%s: write failed: %s", self.client_id, exc)

    def _ack(self, mid: int) -> None:
        if self._writer is not None:  # after a reconnect the broker redelivers it: nothing to do
            self._send(b"\x40\x02" + _U16.pack(mid))

    def _packet_id(self) -> int:
        for _ in range(65535):
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self._pending and self._next_id not in self._subscribed:
                return self._next_id
        raise MqttError(f"{self.client_id}: 65535 packets in flight")

    # -- operations ------------------------------------------------------------------------------
    def publish_nowait(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> asyncio.Future[ReasonCode]:
        """Send a publish; the future resolves with the PUBACK reason (QoS 1) or once queued (QoS 0)."""
        if qos not in (0, 1):
            raise ValueError("this client publishes QoS 0 and 1 only")
        future: asyncio.Future[ReasonCode] = asyncio.get_running_loop().create_future()
        if self._writer is None:
            future.set_exception(NotConnected(f"{self.client_id}: publish to {topic} while disconnected"))
            return future
        header = utf8(topic)
        if qos:
            mid = self._packet_id()
            header += _U16.pack(mid)
            self._pending[mid] = future
        else:
            future.set_result(ReasonCode(PacketTypes.PUBACK, identifier=0))
        self._send(_packet((PacketType.PUBLISH << 4) | (qos << 1) | int(retain), header + b"\x00" + payload))
        return future

    async def subscribe(self, topic: str, *, qos: int = 1) -> None:
        """Subscribe and wait for SUBACK; MqttError if the broker refuses."""
        if self._writer is None:
            raise NotConnected(f"{self.client_id}: subscribe to {topic} while disconnected")
        mid = self._packet_id()
        future: asyncio.Future[list[ReasonCode]] = asyncio.get_running_loop().create_future()
        self._subscribed[mid] = future
        self._send(
            _packet(
                (PacketType.SUBSCRIBE << 4) | 0x02, _U16.pack(mid) + b"\x00" + utf8(topic) + bytes((qos,))
            )
        )
        for reason in await future:
            if reason.is_failure:
                raise MqttError(f"subscription to {topic} refused: {reason}")


def _nothing() -> None:
    """The ack of a QoS 0 message, or of one already acknowledged on receipt."""
