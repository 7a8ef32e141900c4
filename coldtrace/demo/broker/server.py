"""An in-process MQTT 5 broker that admits only clients with a verified certificate.

Why not a library broker: the project's clients speak MQTT 5 (PUBACK reason codes decide whether a
batch was delivered; shared subscriptions split the cloud's work; persistent sessions carry QoS 1
messages over a reconnect), and the pure-Python brokers on PyPI either speak only MQTT 3.1.1 (amqtt,
hbmqtt) or lack persistent sessions and shared subscriptions (moat-lib-mqtt). This one implements the
part of MQTT 5 coldtrace uses, over asyncio:

- **mutual TLS first**: every connection starts as plain TCP and is upgraded with a server context
  that has ``CERT_REQUIRED`` against the PKI's CA bundle and checks its CRL, so a client without a
  valid certificate is refused in the handshake, before any MQTT byte is read (counted in
  :attr:`BrokerStats.tls_refused`). The certificate's CN is the identity, as Mosquitto's
  ``use_identity_as_username``; whatever username a client sends is ignored.
- **ACLs** (:mod:`coldtrace.demo.broker.acl`): a forbidden publish gets PUBACK 135, a forbidden
  subscription SUBACK 135.
- QoS 0 and 1 (CONNACK announces Maximum QoS 1), retained messages, ``$share/<group>/`` subscriptions
  (one member of the group gets each message), persistent sessions (clean start off, session expiry)
  with their unacknowledged and queued messages resent on reconnect, the client's Receive Maximum,
  keepalive, session take-over, wills; PUBACK 16 when a message matched no subscription.

Not offered: QoS 2, topic aliases, enhanced authentication, message expiry. State lives in memory:
this broker is for the demo and tests, not for production (use Mosquitto there).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from coldtrace.demo.broker.acl import Acl, Filter, valid_topic
from coldtrace.demo.broker.packets import (
    Connect,
    Disconnect,
    PingReq,
    PubAck,
    Publish,
    Subscribe,
    Unsubscribe,
    UnsupportedVersion,
    Will,
    connack,
    connack_v311_refused,
    decode,
    pingresp,
    puback,
    suback,
    unsuback,
)
from coldtrace.demo.broker.session import (
    DEFAULT_RECEIVE_MAXIMUM,
    NEVER_EXPIRES,
    Connection,
    Message,
    Session,
    Subscription,
)
from coldtrace.mqtt_wire import (
    MalformedPacket,
    PacketError,
    Prop,
    Properties,
    ProtocolViolation,
    Reason,
    int_property,
    str_property,
)

logger = logging.getLogger(__name__)


def server_tls(*, ca_file: str, cert_file: str, key_file: str, crl_file: str | None) -> ssl.SSLContext:
    """A server context that requires a client certificate chaining to ``ca_file`` (TLS 1.2+)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    context.load_verify_locations(cafile=ca_file)
    context.verify_mode = ssl.CERT_REQUIRED
    if crl_file is not None:
        context.load_verify_locations(cafile=crl_file)
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return context


def certificate_identity(peercert: Any) -> str | None:
    """The CN of a verified peer certificate (``SSLSocket.getpeercert()`` form)."""
    if not isinstance(peercert, dict):
        return None
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and isinstance(value, str):
                return value
    return None


@dataclass(slots=True)
class BrokerStats:
    """What a broker has done since it started."""

    connections: int = 0
    """MQTT sessions accepted (CONNACK 0)."""
    tls_refused: int = 0
    """Connections refused in the TLS handshake (no certificate, an untrusted or revoked one)."""
    connect_refused: int = 0
    """CONNECTs refused after the handshake (wrong protocol version, bad client id, …)."""
    received: int = 0
    """Application messages accepted from clients."""
    delivered: int = 0
    """Copies handed to subscribers (queued for an offline persistent session included)."""
    unrouted: int = 0
    """Messages that matched no subscription (PUBACK 16)."""
    denied: int = 0
    """Publishes and subscriptions refused by the ACL."""


class MqttBroker:
    """``async with MqttBroker(name=…, tls=…, acl=…) as broker:`` listens on ``broker.port`` until exit."""

    def __init__(
        self, *, name: str, tls: ssl.SSLContext, acl: Acl, host: str = "127.0.0.1", port: int = 0,
        max_packet_bytes: int = 4 * 1024 * 1024, max_queued: int = 200_000, connect_timeout_s: float = 10.0,
    ) -> None:  # fmt: skip
        self.name = name
        self.host = host
        self.port = port
        self.stats = BrokerStats()
        self._tls = tls
        self._acl = acl
        self._max_packet_bytes = max_packet_bytes
        self._max_queued = max_queued
        self._connect_timeout_s = connect_timeout_s
        self._sessions: dict[str, Session] = {}
        self._retained: dict[str, Message] = {}
        self._connections: set[Connection] = set()
        self._share_turn: dict[tuple[str, str], itertools.count[int]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._stack = contextlib.AsyncExitStack()
        self._group: asyncio.TaskGroup | None = None
        self._server: asyncio.Server | None = None
        self._numbers = itertools.count(1)

    @property
    def url(self) -> str:
        """``mqtts://host:port``."""
        return f"mqtts://{self.host}:{self.port}"

    def describe(self) -> str:
        """One line for the summary: sessions, messages and refusals."""
        s = self.stats
        return (f"{self.name}: {s.connections} sessions, {s.received:,} msgs in, {s.denied} denied, "
                f"{s.tls_refused} TLS refused")  # fmt: skip

    async def __aenter__(self) -> Self:
        self._group = await self._stack.enter_async_context(asyncio.TaskGroup())
        try:
            self._server = await asyncio.start_server(self._accept, self.host, self.port)
        except BaseException:
            await self._stack.aclose()
            raise
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._spawn(self._expire_sessions(), f"{self.name}-session-expiry")
        logger.info("%s broker listening on %s (mutual TLS)", self.name, self.url)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.abort()
        for task in list(self._tasks):
            task.cancel()
        await self._stack.__aexit__(exc_type, exc, tb)
        if self._server is not None:
            await self._server.wait_closed()
        logger.info("%s broker stopped", self.name)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        assert self._group is not None  # noqa: S101 - only while running
        task = self._group.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._server is None or not self._server.is_serving():
            writer.transport.abort()
            return
        self._spawn(self._connection(reader, writer), f"{self.name}-connection-{next(self._numbers)}")

    async def wait_for(self, predicate: Callable[[BrokerStats], bool]) -> None:
        """Wait until ``predicate(stats)`` holds; it is re-checked whenever the counters change."""
        while not predicate(self.stats):
            self._changed.clear()
            await self._changed.wait()

    async def subscribed(self, topic_filter: str) -> None:
        """Wait until some session holds a subscription to exactly ``topic_filter``."""
        while not any(topic_filter in s.subscriptions for s in self._sessions.values()):
            self._changed.clear()
            await self._changed.wait()

    def _count(self, what: str, n: int = 1) -> None:
        setattr(self.stats, what, getattr(self.stats, what) + n)
        self._changed.set()

    # -- one connection ----------------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            await writer.start_tls(self._tls, ssl_handshake_timeout=self._connect_timeout_s)
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            self._count("tls_refused")
            logger.info("%s broker: TLS handshake with %s refused: %s", self.name, peer, exc)
            writer.transport.abort()
            return
        identity = certificate_identity(writer.get_extra_info("peercert"))
        if identity is None:  # cannot happen with CERT_REQUIRED; never admit a nameless peer
            self._count("tls_refused")
            writer.transport.abort()
            return
        connection = Connection(reader, writer, identity)
        self._connections.add(connection)
        try:
            await self._serve(connection)
        except UnsupportedVersion as exc:
            self._count("connect_refused")
            logger.info("%s broker: %s from %s refused: %s", self.name, identity, peer, exc)
            if exc.level in {3, 4}:
                connection.send(connack_v311_refused())
            connection.close()
        except PacketError as exc:
            logger.warning("%s broker: %s (%s): %s", self.name, identity, peer, exc)
            if connection.session is None:
                self._count("connect_refused")
                connection.send(connack(session_present=False, reason=exc.reason))
                connection.close()
            else:
                connection.close(exc.reason)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError) as exc:
            logger.debug("%s broker: %s (%s) gone: %r", self.name, identity, peer, exc)
        finally:
            self._detach(connection)
            connection.abort()

    async def _read(self, reader: asyncio.StreamReader) -> tuple[int, bytes]:
        first = (await reader.readexactly(1))[0]
        length, shift = 0, 0
        for _ in range(4):
            byte = (await reader.readexactly(1))[0]
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
        else:
            raise MalformedPacket("remaining length longer than 4 bytes")
        if length > self._max_packet_bytes:
            raise ProtocolViolation(
                f"packet of {length} bytes exceeds {self._max_packet_bytes}", Reason.PACKET_TOO_LARGE
            )
        return first, await reader.readexactly(length)

    async def _serve(self, connection: Connection) -> None:
        async with asyncio.timeout(self._connect_timeout_s):
            first = decode(*await self._read(connection.reader))
        if not isinstance(first, Connect):
            raise ProtocolViolation("the first packet must be CONNECT")
        keepalive = self._attach(connection, first)
        while not connection.closed:
            async with asyncio.timeout(keepalive * 1.5 if keepalive else None):
                packet = decode(*await self._read(connection.reader))
            session = connection.session
            assert session is not None  # noqa: S101 - attached above
            match packet:
                case Publish():
                    self._publish(connection, session, packet)
                case PubAck(packet_id=packet_id):
                    session.acknowledged(packet_id)
                case Subscribe():
                    self._subscribe(connection, session, packet)
                case Unsubscribe():
                    self._unsubscribe(connection, session, packet)
                case PingReq():
                    connection.send(pingresp())
                case Disconnect(reason=reason, session_expiry_s=expiry):
                    connection.clean_disconnect = reason == 0
                    if expiry is not None:
                        session.expiry_s = expiry
                    return
                case Connect():
                    raise ProtocolViolation("a second CONNECT")
            await connection.writer.drain()

    def _attach(self, connection: Connection, packet: Connect) -> int:
        """Open or resume the session of a CONNECT and answer CONNACK; returns the keepalive."""
        client_id = packet.client_id
        extra: list[tuple[int, bytes]] = []
        if not client_id:
            client_id = f"auto-{uuid.uuid4().hex}"
            extra.append(str_property(Prop.ASSIGNED_CLIENT_ID, client_id))
        existing = self._sessions.get(client_id)
        if existing is not None and existing.identity != connection.identity:
            raise ProtocolViolation(
                f"client id {client_id!r} belongs to another identity", Reason.CLIENT_IDENTIFIER_NOT_VALID
            )
        if existing is not None and existing.connection is not None:
            logger.info("%s broker: session %s taken over", self.name, client_id)
            old = existing.connection
            self._detach(old, publish_will=True)
            old.close(Reason.SESSION_TAKEN_OVER)
            existing = self._sessions.get(client_id)  # a session without expiry ended with its connection
        present = existing is not None and not packet.clean_start
        session = existing if present and existing is not None else Session(client_id, connection.identity)
        self._sessions[client_id] = session
        session.expiry_s = packet.properties.integer(Prop.SESSION_EXPIRY) or 0
        session.receive_maximum = packet.properties.integer(Prop.RECEIVE_MAXIMUM) or DEFAULT_RECEIVE_MAXIMUM
        session.expires_at = None
        session.connection = connection
        connection.session = session
        connection.will = packet.will
        properties = Properties(
            (
                *extra,
                int_property(Prop.MAXIMUM_QOS, 1),
                int_property(Prop.RETAIN_AVAILABLE, 1),
                int_property(Prop.MAXIMUM_PACKET_SIZE, self._max_packet_bytes),
                int_property(Prop.WILDCARD_AVAILABLE, 1),
                int_property(Prop.SUBSCRIPTION_ID_AVAILABLE, 1),
                int_property(Prop.SHARED_AVAILABLE, 1),
            )
        )
        connection.send(connack(session_present=present, reason=Reason.SUCCESS, properties=properties))
        self._count("connections")
        logger.debug("%s broker: %s connected as %s (session present: %s)", self.name,
                     connection.identity, client_id, present)  # fmt: skip
        if present:
            session.resume()
        return packet.keepalive_s

    def _detach(self, connection: Connection, *, publish_will: bool | None = None) -> None:
        """The connection is over: keep or end its session, publish its will if it vanished."""
        self._connections.discard(connection)
        session = connection.session
        if session is None or session.connection is not connection:
            return
        session.connection = None
        will, connection.will = connection.will, None
        if will is not None and (
            publish_will if publish_will is not None else not connection.clean_disconnect
        ):
            self._route_will(session, will)
        if session.expiry_s == 0:
            self._sessions.pop(session.client_id, None)
        elif session.expiry_s != NEVER_EXPIRES:
            session.expires_at = asyncio.get_running_loop().time() + session.expiry_s

    def _route_will(self, session: Session, will: Will) -> None:
        if valid_topic(will.topic) and self._acl.may_publish(session.identity, will.topic):
            message = Message(will.topic, will.payload, will.qos, will.retain, will.properties.forwarded())
            self._route(message, source=session)

    async def _expire_sessions(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(5.0)
            now = loop.time()
            for client_id, session in list(self._sessions.items()):
                if session.expires_at is not None and session.expires_at <= now:
                    del self._sessions[client_id]

    # -- publish -------------------------------------------------------------------------------------
    def _publish(self, connection: Connection, session: Session, packet: Publish) -> None:
        if not valid_topic(packet.topic):
            raise ProtocolViolation(f"invalid topic name {packet.topic!r}", Reason.TOPIC_NAME_INVALID)
        if not self._acl.may_publish(connection.identity, packet.topic):
            self._count("denied")
            logger.info("%s broker: %s may not publish to %s", self.name, connection.identity, packet.topic)
            if packet.packet_id is not None:
                connection.send(puback(packet.packet_id, Reason.NOT_AUTHORIZED))
            return
        self._count("received")
        message = Message(
            packet.topic, packet.payload, packet.qos, packet.retain, packet.properties.forwarded()
        )
        if packet.retain:
            if packet.payload:
                self._retained[packet.topic] = message
            else:
                self._retained.pop(packet.topic, None)
        routed = self._route(message, source=session)
        if not routed:
            self._count("unrouted")
        if packet.packet_id is not None:
            reason = Reason.SUCCESS if routed else Reason.NO_MATCHING_SUBSCRIBERS
            connection.send(puback(packet.packet_id, reason))

    def _route(self, message: Message, *, source: Session | None) -> int:
        """Hand ``message`` to every matching session (one per share group); returns how many."""
        levels = message.topic.split("/")
        direct: dict[str, tuple[Session, list[Subscription]]] = {}
        shared: dict[tuple[str, str], list[tuple[Session, Subscription]]] = {}
        for session in self._sessions.values():
            for subscription in session.subscriptions.values():
                topic_filter = subscription.topic_filter
                if not topic_filter.matches(levels):
                    continue
                if topic_filter.group is None:
                    if subscription.no_local and source is session:
                        continue
                    direct.setdefault(session.client_id, (session, []))[1].append(subscription)
                else:
                    shared.setdefault((topic_filter.group, topic_filter.proper), []).append(
                        (session, subscription)
                    )
        for session, subscriptions in direct.values():
            self._deliver(session, message, subscriptions)
        for key, members in shared.items():
            online = [m for m in members if m[0].connection is not None] or members
            turn = next(self._share_turn.setdefault(key, itertools.count()))
            session, subscription = online[turn % len(online)]
            self._deliver(session, message, [subscription])
        return len(direct) + len(shared)

    def _deliver(self, session: Session, message: Message, subscriptions: list[Subscription]) -> None:
        qos = min(message.qos, max(s.qos for s in subscriptions))
        retain = message.retain and any(s.retain_as_published for s in subscriptions)
        ids = [int_property(Prop.SUBSCRIPTION_IDENTIFIER, s.subscription_id) for s in subscriptions
               if s.subscription_id is not None]  # fmt: skip
        properties = Properties(message.properties.items + tuple(ids)) if ids else message.properties
        session.deliver(
            Publish(message.topic, message.payload, qos, retain, False, None, properties),
            max_queued=self._max_queued,
        )
        self._count("delivered")

    # -- subscriptions -------------------------------------------------------------------------------
    def _subscribe(self, connection: Connection, session: Session, packet: Subscribe) -> None:
        reasons: list[int] = []
        retained: list[Subscription] = []
        for request in packet.requests:
            topic_filter = Filter.parse(request.topic_filter)
            if topic_filter is None:
                reasons.append(Reason.TOPIC_FILTER_INVALID)
                continue
            if not self._acl.may_subscribe(connection.identity, topic_filter):
                self._count("denied")
                logger.info("%s broker: %s may not subscribe to %s", self.name, connection.identity,
                            request.topic_filter)  # fmt: skip
                reasons.append(Reason.NOT_AUTHORIZED)
                continue
            existed = request.topic_filter in session.subscriptions
            subscription = Subscription(
                topic_filter, min(request.qos, 1), request.no_local, request.retain_as_published,
                packet.subscription_id,
            )  # fmt: skip
            session.subscriptions[request.topic_filter] = subscription
            reasons.append(subscription.qos)
            wanted = request.retain_handling == 0 or (request.retain_handling == 1 and not existed)
            if topic_filter.group is None and wanted:
                retained.append(subscription)
        connection.send(suback(packet.packet_id, reasons))
        self._changed.set()
        for subscription in retained:
            for topic, message in self._retained.items():
                if subscription.topic_filter.matches(topic.split("/")):
                    ids = () if subscription.subscription_id is None else (
                        int_property(Prop.SUBSCRIPTION_IDENTIFIER, subscription.subscription_id),
                    )  # fmt: skip
                    session.deliver(
                        Publish(topic, message.payload, min(message.qos, subscription.qos), True, False, None,
                                Properties(message.properties.items + ids)),
                        max_queued=self._max_queued,
                    )  # fmt: skip

    def _unsubscribe(self, connection: Connection, session: Session, packet: Unsubscribe) -> None:
        reasons = [
            Reason.SUCCESS
            if session.subscriptions.pop(text, None) is not None
            else Reason.NO_SUBSCRIPTION_EXISTED
            for text in packet.filters
        ]
        connection.send(unsuback(packet.packet_id, reasons))
