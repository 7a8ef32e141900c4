"""What the demo broker keeps per client: sessions (subscriptions, messages in flight, the queue of an
absent client) and connections."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field

from coldtrace.demo.broker.acl import Filter
from coldtrace.demo.broker.packets import Publish, Will, disconnect, publish
from coldtrace.mqtt_wire import Properties, Reason

logger = logging.getLogger(__name__)

NEVER_EXPIRES = 0xFFFFFFFF
DEFAULT_RECEIVE_MAXIMUM = 65_535


@dataclass(frozen=True, slots=True)
class Subscription:
    """One subscription of a session."""

    topic_filter: Filter
    qos: int
    no_local: bool
    retain_as_published: bool
    subscription_id: int | None


@dataclass(frozen=True, slots=True)
class Message:
    """An application message as routed (forwarded properties only)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties


@dataclass(eq=False, slots=True)
class Session:
    """A client's session; outlives its connection when the client asked for a session expiry."""

    client_id: str
    identity: str
    expiry_s: int = 0
    receive_maximum: int = DEFAULT_RECEIVE_MAXIMUM
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    connection: Connection | None = None
    inflight: dict[int, Publish] = field(default_factory=dict)
    queue: deque[Publish] = field(default_factory=deque)
    next_id: int = 0
    expires_at: float | None = None

    def _packet_id(self) -> int:
        while True:
            self.next_id = self.next_id % 65_535 + 1
            if self.next_id not in self.inflight:
                return self.next_id

    def deliver(self, message: Publish, *, max_queued: int) -> None:
        """Send now if connected with room in the client's receive window, else keep it in order."""
        if message.qos == 0:
            if self.connection is not None:
                self.connection.send(publish(message))
            return
        if self.connection is not None and not self.queue and len(self.inflight) < self.receive_maximum:
            self._send(message)
            return
        if len(self.queue) >= max_queued:
            self.queue.popleft()
            logger.warning(
                "session %s: queue full (%d), dropped its oldest message", self.client_id, max_queued
            )
        self.queue.append(message)

    def _send(self, message: Publish) -> None:
        assert self.connection is not None  # noqa: S101 - callers check
        packet_id = self._packet_id()
        outgoing = Publish(
            message.topic, message.payload, 1, message.retain, False, packet_id, message.properties
        )
        self.inflight[packet_id] = outgoing
        self.connection.send(publish(outgoing))

    def acknowledged(self, packet_id: int) -> None:
        """A PUBACK from the client: the message is done; send what waited for room."""
        self.inflight.pop(packet_id, None)
        self.pump()

    def pump(self) -> None:
        """Send queued messages while the client has room."""
        while self.connection is not None and self.queue and len(self.inflight) < self.receive_maximum:
            self._send(self.queue.popleft())

    def resume(self) -> None:
        """After a reconnect: resend unacknowledged messages (DUP set, same ids), then the queue."""
        assert self.connection is not None  # noqa: S101 - called right after attaching
        for packet_id, message in list(self.inflight.items()):
            again = Publish(
                message.topic, message.payload, 1, message.retain, True, packet_id, message.properties
            )
            self.inflight[packet_id] = again
            self.connection.send(publish(again))
        self.pump()


class Connection:
    """One client's TLS stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, identity: str) -> None:
        self.reader = reader
        self.writer = writer
        self.identity = identity
        self.session: Session | None = None
        self.will: Will | None = None
        self.clean_disconnect = False
        self.closed = False

    def send(self, data: bytes) -> None:
        if not self.closed and not self.writer.is_closing():
            self.writer.write(data)

    def close(self, reason: Reason | None = None) -> None:
        """Say why (if connected) and drop the connection."""
        if self.closed:
            return
        if reason is not None:
            self.send(disconnect(reason))
        self.closed = True
        self.writer.close()

    def abort(self) -> None:
        """Drop the connection at once, without a goodbye."""
        self.closed = True
        self.writer.transport.abort()
