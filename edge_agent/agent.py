"""The edge agent: ingest → normalise → bind → score → durable outbox → sign + chain → uplink.

Three long-lived tasks in one ``asyncio.TaskGroup``:

- **ingest** reads device messages from the local broker with manual acknowledgement, refuses bad
  ones into the dead-letter store, normalises, scores and commits the rest to the outbox, and only
  then acknowledges them (a message is safe once written, never before);
- **uplink** forms signed, hash-chained batches from the outbox and publishes them to the cloud
  broker with QoS 1, keeping a window of batches in flight; a batch leaves the outbox only on PUBACK;
  no batch is formed while the cloud link is down (what waits stays thinnable), and after an outage
  live readings and excursions go first and the backlog drains at a set rate;
- **housekeeping** refreshes gauges every second and thins as soon as the outbox is over its disk
  budget; a small HTTP task serves metrics.

All SQLite work runs on one dedicated thread, so the outbox connection is only ever used by it.
Cancelling ``run()`` (SIGTERM) stops the tasks; whatever was received but not committed was not
acknowledged either, so the broker delivers it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import stat
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

from coldtrace.clock import wall_ms
from coldtrace.contract import ContractError, FieldError, Flag, Reading, RejectCode
from coldtrace.contract.topics import (
    ALL_DEVICE_UPLINKS,
    GatewayCommand,
    check_identity,
    gateway_batches,
    gateway_local_alert,
    parse_device_uplink,
    parse_gateway_command,
)
from coldtrace.device_formats import decode
from coldtrace.mqtt import (
    Message,
    MqttClient,
    MqttConnection,
    MqttError,
    connect_with_backoff,
    reached_subscribers,
    reconnect_forever,
)
from coldtrace.mqtt_native import NativeMqttClient
from coldtrace.profiles import PROFILES
from edge_agent.deadletter import DeadLetter, DeadLetters
from edge_agent.metrics import AgentMetrics, serve
from edge_agent.normalize import ClockPolicy, Normalized, Normalizer
from edge_agent.outbox import Outbox, OutboxFull, PendingFrame, Priority
from edge_agent.scoring.compiled import KernelUnavailable, compiled_kernel
from edge_agent.scoring.features import jit_kernel
from edge_agent.scoring.model import LoadedModel, ModelRejected, load_model
from edge_agent.scoring.scorer import Scorer
from edge_agent.settings import AgentSettings
from gateway.registry import Registry

logger = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

#: Device messages handled per commit: one outbox transaction, then one round of acknowledgements.
INGEST_CHUNK = 512
#: Unacknowledged device messages the broker may send the agent (MQTT 5 Receive Maximum): a chunk being
#: stored and the next ones arriving. Bounds memory when a backlog waits on the broker.
INGEST_RECEIVE_MAXIMUM = 4 * INGEST_CHUNK
#: Frames formed in one outbox transaction while a backlog drains (a group). Each transaction also
#: rewrites every draining device's index pages and sent-record, so larger ones drain faster: 16
#: instead of 8 drained 11 % more readings/s (BENCHMARKS.md, agent-drain). The next group is formed
#: while the window is in flight, but only one, and only once the link has acknowledged a frame since
#: the last group was formed: formed frames cannot be thinned, and a link that fails silently is
#: noticed only after the keepalive, so what it can freeze stays bounded (window + one group).
FRAMES_PER_COMMIT = 16
#: The shipped default anomaly model and the public key it is signed with.
DEFAULT_MODEL_DIR = Path(__file__).parent / "models"
DEFAULT_MODEL_KEY = DEFAULT_MODEL_DIR / "dev-signing-key.pub.pem"


class AgentError(Exception):
    """A configuration or start-up problem the operator must fix; the message says how."""


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The gateway's batch-signing key; refuses a key file other users can read.

    The key must be 0600 and belong to the agent's user (``coldtrace gateway install`` and
    ``coldtrace gateway enroll`` leave it so).
    """
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except PermissionError as exc:
        raise AgentError(
            f"cannot read the signing key {path}: {exc.strerror}; it must belong to the user the agent "
            f"runs as, mode 600 (run: chown <agent user> {path})"
        ) from exc
    except OSError as exc:
        raise AgentError(f"cannot read the signing key {path}: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AgentError(f"signing key {path} is readable by other users; run: chmod 600 {path}")
    key = load_pem_private_key(data, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise AgentError(f"{path} is not an Ed25519 private key (PEM, PKCS8)")
    return key


def _trusted_keys(paths: tuple[Path, ...]) -> list[Ed25519PublicKey]:
    keys = []
    for path in paths or (DEFAULT_MODEL_KEY,):
        key = load_pem_public_key(path.read_bytes())
        if not isinstance(key, Ed25519PublicKey):
            raise AgentError(f"model signing key {path} is not an Ed25519 public key")
        keys.append(key)
    return keys


class EdgeAgent:
    """One gateway's pipeline. ``await run()`` until cancelled."""

    def __init__(self, settings: AgentSettings, *, now_ms: Callable[[], int] = wall_ms) -> None:
        settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.settings = settings
        self.now_ms = now_ms
        self.metrics = AgentMetrics()
        self.signer = load_signing_key(settings.signing_key)
        self.registry = Registry(settings.manifest_path, gateway_id=settings.gateway_id)
        policy = ClockPolicy(
            skew_tolerance_ms=settings.skew_tolerance_ms, jump_threshold_ms=settings.jump_threshold_ms
        )
        self.normalizer = Normalizer(registry=self.registry, site_id=settings.site_id, policy=policy)
        self.scorer = Scorer(self._model())
        self.feature_kernel: str | None = None
        """How the feature loop runs (``compiled`` or ``jit``), once :meth:`run` has started."""
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agent-db")
        self._outbox: Outbox | None = None
        self._deadletters: DeadLetters | None = None
        self.local: MqttConnection | None = None
        self.cloud: MqttClient | None = None
        self.metrics_port: asyncio.Future[int] | None = None
        self._new_data = asyncio.Event()
        self._ingest_ready = asyncio.Event()
        self._uplink_ready = asyncio.Event()
        self._unbatched = 0
        self._cloud_down_since: float | None = time.monotonic()
        self._alerted: set[str] = set()
        self._sent_rate = 0.0
        # Whether the cloud broker acknowledged a frame since the last group was formed.
        self._acked_since_formed = True
        self._drain_eta_s = 0.0
        self._stats: dict[str, Any] = {}

    def _model(self) -> LoadedModel | None:
        location = self.settings.model_dir or DEFAULT_MODEL_DIR / "default"
        try:
            model = load_model(location, _trusted_keys(self.settings.model_trusted_keys))
        except (ModelRejected, OSError) as exc:
            logger.error("anomaly model refused (%s); scoring with the rules-only fallback", exc)  # noqa: TRY400
            return None
        logger.info("anomaly model %s loaded", model.model_ref)
        return model

    async def _load_feature_kernel(self) -> None:
        """Run the ahead-of-time feature loop when configured and available, else numba's JIT build."""
        if self.settings.feature_kernel == "compiled":
            directory = self.settings.kernel_path
            try:
                self.scorer.state.kernel = await compiled_kernel(
                    directory, timeout_s=self.settings.kernel_build_timeout_s
                )
            except (KernelUnavailable, OSError) as exc:
                logger.warning("compiled feature loop unavailable in %s (%s); numba compiles it in-process",
                               directory, exc)  # fmt: skip
            else:
                self.feature_kernel = "compiled"
                logger.info("feature loop: compiled ahead of time (%s)", directory)
                return
        self.scorer.state.kernel = jit_kernel()
        self.feature_kernel = "jit"

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._db, lambda: fn(*args, **kwargs))

    @property
    def outbox(self) -> Outbox:
        """The durable outbox (open while the agent runs)."""
        if self._outbox is None:
            raise AgentError("the agent is not running")
        return self._outbox

    # -- lifecycle -------------------------------------------------------------------------------
    async def run(self) -> None:
        """Run until cancelled; close everything on the way out."""
        s = self.settings
        await self._load_feature_kernel()
        self._outbox = await self._call(
            Outbox, s.outbox_path, gateway_id=s.gateway_id, budget_bytes=s.outbox_budget_bytes,
            synchronous=s.outbox_synchronous,
        )  # fmt: skip
        self._deadletters = await self._call(DeadLetters, s.deadletter_path, max_rows=s.deadletter_max_rows)
        self._unbatched = self._outbox.waiting  # a backlog left by the last run is batched at once
        ingest_client = NativeMqttClient if s.ingest_client == "native" else MqttClient
        self.local = ingest_client(
            client_id=f"agent-{s.gateway_id}", broker=s.local.broker, tls=s.local.tls, clean_start=False,
            session_expiry_s=7 * 86_400, manual_ack=True, receive_maximum=INGEST_RECEIVE_MAXIMUM,
        )  # fmt: skip
        self.cloud = MqttClient(
            client_id=s.gateway_id, broker=s.cloud.broker, tls=s.cloud.tls, clean_start=False,
            session_expiry_s=7 * 86_400,
        )  # fmt: skip
        self.metrics_port = asyncio.get_running_loop().create_future()
        self.metrics.model.labels(model=self.scorer.model_ref, rules_only=str(self.scorer.rules_only)).set(1)
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._ingest(self.local), name="ingest")
                tasks.create_task(self._uplink(self.cloud), name="uplink")
                tasks.create_task(self._commands(self.cloud), name="commands")
                tasks.create_task(self._housekeeping(), name="housekeeping")
                tasks.create_task(
                    serve(s.metrics_host, s.metrics_port, self.metrics, self.health, ready=self.metrics_port),
                    name="metrics",
                )
        finally:
            for client in (self.local, self.cloud):
                with contextlib.suppress(MqttError, OSError):  # best effort on the way out
                    await client.disconnect()
            await self._call(self._close_stores)
            self._db.shutdown(wait=True)

    async def ready(self) -> None:
        """Wait until the agent is subscribed on its broker and connected to the cloud.

        From then on the gateway broker keeps the agent's persistent session: device messages
        published while the agent is down are queued for it, not lost.
        """
        await self._ingest_ready.wait()
        await self._uplink_ready.wait()

    def _close_stores(self) -> None:
        if self._outbox is not None:
            self._outbox.close()
        if self._deadletters is not None:
            self._deadletters.close()

    async def _keep_connected(
        self, client: MqttConnection, name: str, on_connect: Callable[[], Awaitable[None]]
    ) -> None:
        s = self.settings
        await connect_with_backoff(client, initial_s=s.reconnect_initial_s, max_s=s.reconnect_max_s)
        logger.info("%s broker connected (%s:%s)", name, client.broker.host, client.broker.port)
        await on_connect()

    # -- ingest ----------------------------------------------------------------------------------
    async def _ingest(self, client: MqttConnection) -> None:
        async def subscribe() -> None:
            await client.subscribe(ALL_DEVICE_UPLINKS, qos=1)
            logger.info("receiving device readings (%s)", ALL_DEVICE_UPLINKS)
            self._ingest_ready.set()

        async def consume() -> None:
            while True:
                chunk = [await client.messages.get()]
                while len(chunk) < INGEST_CHUNK and not client.messages.empty():
                    chunk.append(client.messages.get_nowait())
                await self._handle(chunk)

        # Consuming starts before the first subscribe: the broker sends a persistent session's queued
        # messages ahead of the SUBACK, and a client that stops reading while its queue is full
        # (coldtrace.mqtt_native) would otherwise never see the SUBACK.
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(consume(), name="ingest-consume")
            await self._keep_connected(client, "local", subscribe)
            supervisor = self._stay_connected(client, subscribe)
            try:
                await asyncio.Future()  # until cancelled; the consumer's failure cancels this too
            finally:
                supervisor.cancel()

    def _stay_connected(
        self, client: MqttConnection, on_connect: Callable[[], Awaitable[None]]
    ) -> asyncio.Task[None]:
        s = self.settings
        return asyncio.create_task(
            reconnect_forever(
                client, initial_s=s.reconnect_initial_s, max_s=s.reconnect_max_s, on_connect=on_connect
            ),
            name=f"reconnect-{client.client_id}",
        )

    async def _handle(self, chunk: list[Message]) -> None:
        received = self.now_ms()
        started = time.perf_counter()
        letters: list[DeadLetter] = []
        normalized: list[Normalized] = []
        self.metrics.messages.inc(len(chunk))
        for message in chunk:
            try:
                normalized.extend(self._accept(message, received))
            except ContractError as exc:
                self.metrics.rejected.labels(reason=exc.code.value).inc()
                letters.append(DeadLetter(received, exc.code.value, message.topic, str(exc), message.payload))
        rows = self._score(normalized)
        inserted = await self._store(rows) if rows else 0
        if letters:
            await self._call(self._dead_letters.add, letters)
        for message in chunk:  # committed (or refused and kept): now the broker may forget them
            message.ack()
        self.metrics.ingested.inc(inserted)
        self.metrics.duplicates.inc(len(rows) - inserted)
        self.metrics.ingest_latency.observe(time.perf_counter() - started)
        if inserted:
            self._unbatched += inserted
            self._new_data.set()

    async def _store(self, rows: list[tuple[Reading, Priority]]) -> int:
        """Commit ``rows``; with the disk full, thin and retry (their messages stay unacknowledged)."""
        while True:
            try:
                return await self._call(self.outbox.append, rows)
            except OutboxFull as exc:
                logger.error("outbox full (%s): thinning routine readings before accepting more", exc)  # noqa: TRY400
                try:
                    thinned = await self._call(self.outbox.enforce_budget)
                except OutboxFull:
                    thinned = 0
                self.metrics.thinned.inc(thinned)
                if (
                    not thinned
                ):  # nothing left to thin: hold ingest (the broker queues) until the uplink drains
                    await asyncio.sleep(1.0)

    @property
    def _dead_letters(self) -> DeadLetters:
        if self._deadletters is None:
            raise AgentError("the agent is not running")
        return self._deadletters

    def _accept(self, message: Message, received_ms: int) -> list[Normalized]:
        device_id = parse_device_uplink(message.topic)
        if not self.settings.accept_unregistered and not self.registry.knows(device_id):
            raise ContractError(
                RejectCode.IDENTITY_MISMATCH, FieldError("topic", f"{device_id} is not registered")
            )
        decoded = decode(message.payload)
        check_identity(decoded.device_id, device_id)
        return self.normalizer.normalize(decoded, t_gateway_ms=received_ms)

    def _score(self, normalized: list[Normalized]) -> list[tuple[Reading, Priority]]:
        if not normalized:
            return []
        readings = [n.reading for n in normalized]
        t_ms = np.array([r.t_device_ms for r in readings], dtype=np.int64)
        temps = np.array([math.nan if r.temperature_c is None else r.temperature_c for r in readings])
        result = self.scorer.score_devices([r.device_id for r in readings], t_ms, temps)
        fallback = self._fallback_active()
        # Received while the uplink is down: it waits in the outbox for the link (the contract's
        # "held through an uplink outage"), so the cloud can tell backfill from live data.
        backfill = self._cloud_down_since is not None
        rows: list[tuple[Reading, Priority]] = []
        for n, score, by_rules in zip(
            normalized, result.scores.tolist(), result.by_rules.tolist(), strict=True
        ):
            flags = set(n.reading.flags)
            glitch = score >= self.settings.glitch_threshold
            if glitch:
                flags.add(Flag.GLITCH)
            if by_rules:
                flags.add(Flag.RULES_ONLY)
            if backfill:
                flags.add(Flag.BACKFILL)
            breach = (
                n.profile is not None
                and n.reading.temperature_c is not None
                and not PROFILES[n.profile].temperature_in_range(n.reading.temperature_c)
            )
            if breach and fallback and not glitch:
                flags.add(Flag.LOCAL_ALERT)
                self._local_alert(n.reading)
            reading = n.reading.model_copy(
                update={"anomaly_score": score, "model": result.model_ref, "flags": tuple(sorted(flags))}
            )
            self.metrics.scores.observe(score)
            priority = Priority.EXCURSION if breach else Priority.ANOMALOUS if glitch else Priority.ROUTINE
            rows.append((reading, priority))
        return rows

    # -- local fallback ----------------------------------------------------------------------------
    def _fallback_active(self) -> bool:
        down = self._cloud_down_since
        return down is not None and time.monotonic() - down >= self.settings.fallback_after_s

    def _local_alert(self, reading: Reading) -> None:
        key = f"{reading.device_id}/{reading.shipment_id}"
        if key in self._alerted or self.local is None:
            return  # one alert per device and shipment per outage
        self._alerted.add(key)
        self.metrics.local_alerts.inc()
        alert = {
            "device_id": reading.device_id, "shipment_id": reading.shipment_id,
            "lot_ids": list(reading.lot_ids),
            "temperature_c": reading.temperature_c, "t_device_ms": reading.t_device_ms, "hold": True,
            "reason": "profile breach while the cloud is unreachable",
        }  # fmt: skip
        logger.warning("local alert: %s", alert)
        self.local.publish_nowait(gateway_local_alert(self.settings.gateway_id), orjson.dumps(alert), qos=1)

    # -- uplink ----------------------------------------------------------------------------------
    async def _uplink(self, client: MqttClient) -> None:
        s = self.settings
        topic = gateway_batches(s.gateway_id)
        in_flight: dict[int, asyncio.Future[Any]] = {}
        counts: dict[int, int] = {}

        async def subscribe() -> None:
            await client.subscribe(f"ct/v1/gw/{s.gateway_id}/cmd/#", qos=1)
            self._uplink_ready.set()

        def send(frame: PendingFrame) -> None:
            in_flight[frame.batch_seq] = client.publish_nowait(topic, frame.frame, qos=1)
            counts[frame.batch_seq] = frame.reading_count

        await self._keep_connected(client, "cloud", subscribe)
        supervisor = self._stay_connected(client, subscribe)
        try:
            while True:
                self._track_cloud(client)
                # Acknowledgements that came in, then formed but unacknowledged frames (after a
                # restart: byte-identical resends), in one call to the database thread.
                delivered = await self._delivered(in_flight)
                pending_frames = await self._call(self._acknowledge, delivered)
                for seq in delivered:
                    sent = counts.pop(seq, 0)
                    self.metrics.batches_sent.inc()
                    self.metrics.readings_sent.inc(sent)
                    self._sent_rate = 0.9 * self._sent_rate + 0.1 * sent
                    self._acked_since_formed = True
                unsent = 0
                for pending in pending_frames:
                    if pending.batch_seq not in in_flight:
                        if len(in_flight) < s.uplink_window:
                            send(pending)
                        else:
                            unsent += 1
                # No new batch while the link is down: waiting readings stay thinnable, and once the
                # link is back live readings go before the backlog (formed frames are immutable).
                linked = client.connected.is_set()
                room = s.uplink_window - len(in_flight)
                # A backlog is formed a group of frames to a transaction, one sync to disk for all: it
                # waits for room for a group rather than forming one frame per acknowledgement, or
                # forms the next group ahead while the window is in flight (see FRAMES_PER_COMMIT).
                backlog = self._unbatched > s.batch_max_readings
                group = min(FRAMES_PER_COMMIT, s.uplink_window) if backlog else 1
                ahead = backlog and not unsent and self._acked_since_formed
                if linked and (room >= group or ahead) and await self._batch_due():
                    formed, self._unbatched = await self._call(self._form_batches, group)
                    if formed:
                        self._acked_since_formed = False
                        for frame in formed:
                            if len(in_flight) < s.uplink_window:
                                send(frame)
                        await self._pace(sum(frame.reading_count for frame in formed))
                        continue
                if not in_flight:
                    await (self._wait_for_data() if linked else self._wait_for_link(client))
                    continue
                await asyncio.wait(in_flight.values(), timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
        finally:
            supervisor.cancel()

    def _acknowledge(self, delivered: list[int]) -> list[PendingFrame]:
        """Forget the ``delivered`` batches; the frames still pending. db thread."""
        if delivered:
            self.outbox.acknowledge(*delivered)
        return self.outbox.pending_frames()

    def _form_batches(self, count: int) -> tuple[list[PendingFrame], int]:
        """Up to ``count`` next signed frames and how many readings still wait; db thread."""
        s = self.settings
        now = self.now_ms()
        formed = self.outbox.form_batches(
            signer=self.signer, max_readings=s.batch_max_readings, now_ms=now,
            live_after_ms=now - s.live_window_ms, count=count,
        )  # fmt: skip
        return formed, self.outbox.waiting

    async def _delivered(self, in_flight: dict[int, asyncio.Future[Any]]) -> list[int]:
        """The batches the cloud broker acknowledged, taken out of ``in_flight``; failures stay pending."""
        delivered: list[int] = []
        for seq in sorted(in_flight):
            future = in_flight[seq]
            if not future.done():
                continue
            del in_flight[seq]
            error = future.exception()
            if error is not None or not reached_subscribers(future.result()):
                # Refused, or dropped for want of a subscriber (a broker just restarted, the cloud's
                # workers not yet back): the batch stays in the outbox and is resent next round.
                logger.error("batch %s not delivered by the cloud broker: %s", seq, error or future.result())
                await asyncio.sleep(self.settings.reconnect_initial_s)
                continue
            delivered.append(seq)
        return delivered

    async def _batch_due(self) -> bool:
        # A full batch waits (fresh readings, or a backlog to drain): form it now.
        if self._unbatched >= self.settings.batch_max_readings:
            return True
        if self._unbatched == 0 and not self._stats.get("readings"):
            return False
        # Let a batch fill for up to batch_max_age_ms, then send what there is.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.batch_max_age_ms / 1000):
                while self._unbatched < self.settings.batch_max_readings:
                    self._new_data.clear()
                    await self._new_data.wait()
        return True

    async def _wait_for_data(self) -> None:
        self._new_data.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await self._new_data.wait()

    async def _wait_for_link(self, client: MqttClient) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await client.connected.wait()

    async def _pace(self, readings: int) -> None:
        backlog = int(self._stats.get("readings", 0))
        if backlog > self.settings.batch_max_readings * self.settings.uplink_window:
            await asyncio.sleep(readings / self.settings.backfill_rate_per_s)

    def _track_cloud(self, client: MqttClient) -> None:
        if client.connected.is_set():
            if self._cloud_down_since is not None:
                self._cloud_down_since = None
                self._alerted.clear()
            self.metrics.uplink_connected.set(1)
        else:
            if self._cloud_down_since is None:
                self._cloud_down_since = time.monotonic()
            self.metrics.uplink_connected.set(0)

    # -- commands --------------------------------------------------------------------------------
    async def _commands(self, client: MqttClient) -> None:
        while True:
            message = await client.messages.get()
            try:
                gateway_id, kind = parse_gateway_command(message.topic)
                check_identity(gateway_id, self.settings.gateway_id)
                if kind is GatewayCommand.MANIFEST:
                    outcome = await asyncio.to_thread(self.registry.apply, message.payload)
                    logger.info("manifest command: %s", outcome.value)
                else:
                    logger.warning("command %s not handled by this agent version", kind.value)
            except ContractError as exc:
                self.metrics.rejected.labels(reason=f"command_{exc.code.value}").inc()
                logger.error("refused command on %s: %s", message.topic, exc)  # noqa: TRY400
                await self._call(
                    self._dead_letters.add,
                    [DeadLetter(self.now_ms(), exc.code.value, message.topic, str(exc), message.payload)],
                )

    # -- housekeeping ----------------------------------------------------------------------------
    async def _housekeeping(self) -> None:
        while True:
            stats = await self._call(self.outbox.stats)
            self._stats = {
                "readings": stats.readings, "bytes": stats.bytes_on_disk,
                "frames_pending": stats.frames_pending,
                "oldest_gateway_ms": stats.oldest_gateway_ms, "next_batch_seq": stats.next_batch_seq,
                "head_hash": stats.head_hash,
            }  # fmt: skip
            self.metrics.outbox_readings.set(stats.readings)
            self.metrics.outbox_bytes.set(stats.bytes_on_disk)
            age = (
                0.0
                if stats.oldest_gateway_ms is None
                else max(0.0, (self.now_ms() - stats.oldest_gateway_ms) / 1000)
            )
            self.metrics.outbox_oldest_age.set(age)
            rate = self._sent_rate * 4  # EWMA of readings per settled batch, ~4 settles per second
            self._drain_eta_s = stats.readings / rate if rate > 0 else 0.0
            self.metrics.drain_eta.set(self._drain_eta_s)
            if stats.bytes_on_disk > self.settings.outbox_budget_bytes:
                try:
                    thinned = await self._call(self.outbox.enforce_budget)
                except OutboxFull as exc:
                    logger.error("disk full even for thinning: %s", exc)  # noqa: TRY400
                    thinned = 0
                if thinned:
                    logger.warning("outbox over its disk budget: thinned %d routine readings", thinned)
                    self.metrics.thinned.inc(thinned)
            await asyncio.sleep(1.0)

    def health(self) -> dict[str, Any]:
        """What ``/health`` and ``coldtrace gateway status`` report."""
        down = self._cloud_down_since
        return {
            "gateway_id": self.settings.gateway_id,
            "uplink_connected": down is None,
            "cloud_unreachable_s": None if down is None else round(time.monotonic() - down, 1),
            "local_fallback": self._fallback_active(),
            "outbox": self._stats,
            "drain_eta_s": round(self._drain_eta_s, 1),
            "model": self.scorer.model_ref,
            "rules_only": self.scorer.rules_only,
            "feature_kernel": self.feature_kernel,
            "manifest_version": self.registry.version,
        }
