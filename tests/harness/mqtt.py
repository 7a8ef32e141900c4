"""An MQTT v5 test client over mutual TLS (paho-mqtt 2.x) that reports outcomes instead of hiding them.

Every wait is an event with a deadline, never a fixed sleep. The client drives paho's network loop in
its own thread rather than ``loop_start()``: paho's loop thread reconnects after a lost connection,
which would turn "the broker refused me" into a retry storm; here a lost connection simply ends the
loop and is recorded.

How a refusal shows up depends on the TLS version. With TLS 1.2 the server rejects a client certificate
inside the handshake, so ``connect()`` raises. With TLS 1.3 the client finishes its side of the
handshake before the server has checked the client certificate, so ``connect()`` returns normally and
the refusal arrives afterwards as an alert on the first read: no CONNACK, the connection closes.
``connect()`` below treats both (and a missing CONNACK before the deadline) as "not connected", with
the TLS error text as the reason.
"""

from __future__ import annotations

import queue
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

#: PUBACK / SUBACK / CONNACK reason codes tests compare against (MQTT 5.0, section 2.4).
SUCCESS = 0
NOT_AUTHORIZED = 135


@dataclass(frozen=True, slots=True)
class ClientTls:
    """What a client trusts (``ca_certs``) and presents (``certfile`` chain + ``keyfile``; None = no cert)."""

    ca_certs: Path
    certfile: Path | None = None
    keyfile: Path | None = None


class CertFiles(Protocol):
    """Anything naming a certificate chain and its key, e.g. ``certs.pki.IssuedIdentity``."""

    @property
    def chain_path(self) -> Path:
        """Leaf certificate followed by the issuing CA, PEM."""
        ...

    @property
    def key_path(self) -> Path:
        """The leaf's private key, PEM."""
        ...


def client_tls(ca_certs: Path, who: CertFiles | None) -> ClientTls:
    """TLS for a test client: trust ``ca_certs``; present ``who``'s chain and key (None: no certificate)."""
    if who is None:
        return ClientTls(ca_certs=ca_certs)
    return ClientTls(ca_certs=ca_certs, certfile=who.chain_path, keyfile=who.key_path)


@dataclass(frozen=True, slots=True)
class ConnectResult:
    """Outcome of a connection attempt.

    ``connected`` is True only when a successful CONNACK arrived. ``reason_code`` is the CONNACK
    reason code when one arrived (0 = success), None when the TLS handshake or transport failed first;
    ``reason`` is the human-readable cause (CONNACK reason name or the TLS/socket error).
    """

    connected: bool
    reason: str
    reason_code: int | None = None


@dataclass(frozen=True, slots=True)
class Received:
    """A message delivered to a subscriber."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


class MqttTestClient:
    """One MQTT v5 connection over TLS. Use as a context manager; ``close()`` always disconnects."""

    def __init__(
        self,
        host: str,
        port: int,
        tls: ClientTls,
        *,
        client_id: str,
        timeout: float = 5.0,
        keepalive: int = 30,
        username: str | None = None,
    ) -> None:
        """Configure the client; nothing touches the network until ``connect()``.

        ``username`` is sent in CONNECT; a broker with ``use_identity_as_username`` must ignore it.
        """
        self.host = host
        self.port = port
        self.client_id = client_id
        self.timeout = timeout
        self.keepalive = keepalive
        self.messages: queue.Queue[Received] = queue.Queue()
        self.errors: list[str] = []  # paho's error/warning log lines: carry the TLS alert text
        self._cond = threading.Condition()
        self._connack: ReasonCode | None = None
        self._disconnect: ReasonCode | None = None
        self._pubacks: dict[int, int] = {}
        self._subacks: dict[int, list[int]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop_running = False
        self._closed = False

        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        client.tls_set(
            ca_certs=str(tls.ca_certs),
            certfile=None if tls.certfile is None else str(tls.certfile),
            keyfile=None if tls.keyfile is None else str(tls.keyfile),
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
        if username is not None:
            client.username_pw_set(username)
        client.connect_timeout = timeout
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_log = self._on_log
        # Keep all socket I/O on the loop thread. Without a write-registration callback, paho writes
        # straight from the caller's thread inside publish()/subscribe()/disconnect(), racing the loop
        # thread's reads on the same SSL connection (OpenSSL connections are not thread-safe). With
        # one, paho only queues the packet and wakes the loop's select(), and the loop writes it.
        client.on_socket_register_write = self._on_socket_event
        self._client = client

    # -- paho callbacks (run in the loop thread) --------------------------------------------------

    def _on_connect(
        self,
        _client: paho.Client,
        _userdata: Any,
        _flags: Any,
        reason_code: ReasonCode,
        _props: Properties | None,
    ) -> None:
        with self._cond:
            self._connack = reason_code
            self._cond.notify_all()

    def _on_disconnect(
        self,
        _client: paho.Client,
        _userdata: Any,
        _flags: Any,
        reason_code: ReasonCode,
        _props: Properties | None,
    ) -> None:
        with self._cond:
            self._disconnect = reason_code
            self._cond.notify_all()

    def _on_publish(
        self, _client: paho.Client, _userdata: Any, mid: int, reason_code: ReasonCode, _props: Properties
    ) -> None:
        with self._cond:
            self._pubacks[mid] = reason_code.value
            self._cond.notify_all()

    def _on_subscribe(
        self,
        _client: paho.Client,
        _userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        _props: Properties,
    ) -> None:
        with self._cond:
            self._subacks[mid] = [code.value for code in reason_codes]
            self._cond.notify_all()

    def _on_message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        self.messages.put(Received(message.topic, bytes(message.payload), message.qos, bool(message.retain)))

    def _on_socket_event(self, _client: paho.Client, _userdata: Any, _sock: Any) -> None:
        pass  # see __init__: registering at all is what matters

    def _on_log(self, _client: paho.Client, _userdata: Any, level: int, buf: str) -> None:
        if level in (paho.MQTT_LOG_ERR, paho.MQTT_LOG_WARNING):
            with self._cond:
                self.errors.append(buf)

    # -- network loop -----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            # Wakes at once on traffic or on publish()/subscribe() (paho's internal socketpair).
            if self._client.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
        with self._cond:
            # A loop that ended without paho calling on_disconnect still means "no connection".
            self._loop_running = False
            self._cond.notify_all()

    def _wait(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with self._cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def _loop_alive(self) -> bool:
        # A flag set under the condition, not Thread.is_alive(): the thread notifies waiters while it
        # is still alive, and they must already see it as finished.
        return self._loop_running

    # -- API --------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True after a successful CONNACK while the connection is still up."""
        return (
            self._connack is not None
            and not self._connack.is_failure
            and self._disconnect is None
            and self._loop_alive()
        )

    def connect(self, timeout: float | None = None) -> ConnectResult:
        """Connect, perform the TLS handshake, send CONNECT and wait for CONNACK or for the refusal."""
        try:
            self._client.connect(self.host, self.port, keepalive=self.keepalive, clean_start=True)
        except (ssl.SSLError, OSError) as exc:
            # TLS 1.2 (or a server certificate the client rejects): refused inside the handshake.
            self.close()
            return ConnectResult(False, f"{type(exc).__name__}: {exc}")
        self._loop_running = True
        self._thread = threading.Thread(target=self._run, name=f"mqtt-{self.client_id}", daemon=True)
        self._thread.start()
        arrived = self._wait(
            lambda: self._connack is not None or self._disconnect is not None or not self._loop_alive(),
            timeout,
        )
        with self._cond:
            connack, disconnect, errors = self._connack, self._disconnect, list(self.errors)
        if connack is not None:
            return ConnectResult(not connack.is_failure, connack.getName(), connack.value)
        detail = "; ".join(errors) or (
            f"disconnected: {disconnect.getName()}" if disconnect is not None else "connection ended"
        )
        if not arrived:
            detail = f"no CONNACK within {self.timeout if timeout is None else timeout:.1f}s"
        self.close()
        return ConnectResult(False, detail)

    def publish(self, topic: str, payload: bytes | str, *, qos: int = 1, timeout: float | None = None) -> int:
        """Publish and, for QoS 1, return the PUBACK reason code (0 success, 135 not authorized).

        QoS 0 returns 0 once the packet is handed to the socket. Raises TimeoutError when no PUBACK
        arrives (for example because the broker closed the connection).
        """
        info = self._client.publish(topic, payload, qos=qos)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"publish to {topic!r} not sent: {paho.error_string(info.rc)}")
        if qos == 0:
            return SUCCESS
        if not self._wait(lambda: info.mid in self._pubacks or not self._loop_alive(), timeout):
            raise TimeoutError(f"no PUBACK for {topic!r} (mid {info.mid}); errors: {self.errors}")
        with self._cond:
            if info.mid not in self._pubacks:
                raise ConnectionError(f"connection lost before PUBACK for {topic!r}; errors: {self.errors}")
            return self._pubacks.pop(info.mid)

    def subscribe(self, topic_filter: str, *, qos: int = 1, timeout: float | None = None) -> list[int]:
        """Subscribe and return the SUBACK reason codes (granted QoS, or >= 128 for a refusal)."""
        result, mid = self._client.subscribe(topic_filter, qos=qos)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise ConnectionError(f"subscribe to {topic_filter!r} not sent: {paho.error_string(result)}")
        if not self._wait(lambda: mid in self._subacks or not self._loop_alive(), timeout):
            raise TimeoutError(f"no SUBACK for {topic_filter!r}")
        with self._cond:
            if mid not in self._subacks:
                raise ConnectionError(
                    f"connection lost before SUBACK for {topic_filter!r}; errors: {self.errors}"
                )
            return self._subacks.pop(mid)

    def next_message(self, timeout: float | None = None) -> Received | None:
        """The next delivered message, or None if none arrives within ``timeout``."""
        try:
            return self.messages.get(timeout=self.timeout if timeout is None else timeout)
        except queue.Empty:
            return None

    def messages_until(self, topic: str, timeout: float | None = None) -> list[Received]:
        """Every message delivered up to and including the first one on ``topic``.

        Use it with a marker: publish the message that must NOT arrive, then an allowed marker on the
        same connection; the broker handles one connection's packets in order, so once the marker is
        here, anything the first publish produced would be here too. That proves absence without a
        fixed sleep. Raises TimeoutError if the marker never comes.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        seen: list[Received] = []
        while True:
            message = self.next_message(max(0.0, deadline - time.monotonic()))
            if message is None:
                raise TimeoutError(f"no message on {topic!r}; received before the deadline: {seen}")
            seen.append(message)
            if message.topic == topic:
                return seen

    def close(self) -> None:
        """Disconnect (if connected) and stop the network loop. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._loop_alive():
            # DISCONNECT is flushed by the loop thread, which ends once paho closes the socket.
            self._client.disconnect()
            self._wait(lambda: not self._loop_running, self.timeout)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout)
        sock = self._client.socket()
        if sock is not None:
            # Refused or timed-out attempts can leave paho's socket open.
            sock.close()

    def __enter__(self) -> Self:
        """Return self; the caller decides when to ``connect()``."""
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the connection."""
        self.close()


def connect_outcome(
    host: str, port: int, tls: ClientTls, *, client_id: str, timeout: float = 5.0
) -> ConnectResult:
    """Try a connection and close it again: only the outcome (CONNACK or refusal) matters."""
    with MqttTestClient(host, port, tls, client_id=client_id, timeout=timeout) as client:
        return client.connect()


def publish_reason(
    host: str,
    port: int,
    tls: ClientTls,
    topic: str,
    payload: bytes | str,
    *,
    client_id: str,
    timeout: float = 5.0,
) -> int:
    """Connect, publish once with QoS 1 and return the PUBACK reason code."""
    with MqttTestClient(host, port, tls, client_id=client_id, timeout=timeout) as client:
        result = client.connect()
        if not result.connected:
            raise ConnectionError(f"{client_id} could not connect: {result.reason}")
        return client.publish(topic, payload, qos=1)
