"""The MQTT side of a worker: a shared subscription to every gateway's batches, acked after commit.

Workers of one ``share_group`` split the batches (``$share/<group>/ct/v1/gw/+/batch``); each keeps a
persistent session (clean start off, session expiry) so a restart loses nothing queued for it. A
message is acknowledged only once its outcome is durable: stored, recognised as a duplicate, or
dead-lettered as a reject. While the database is down the worker holds the message, retries with
backoff and acknowledges nothing, so the broker keeps everything it has not acknowledged.
"""

from __future__ import annotations

import asyncio
import logging

from cloud_ingest.ingest import Ingestor, IngestResult, StoreUnavailable
from cloud_ingest.settings import BrokerSettings
from cloud_ingest.telemetry import Backoff
from cloud_ingest.verify import IngestReject, Rejected
from coldtrace.contract import ContractError
from coldtrace.contract.topics import parse_gateway_batch, shared_gateway_batches
from coldtrace.mqtt import Message, MqttClient, connect_with_backoff, reconnect_forever

logger = logging.getLogger(__name__)


class BatchConsumer:
    """Feeds one worker's MQTT messages through an :class:`Ingestor`."""

    def __init__(self, ingestor: Ingestor, settings: BrokerSettings, *, client_id: str) -> None:
        self.ingestor = ingestor
        self.settings = settings
        self.client = MqttClient(
            client_id=client_id, broker=settings.broker, tls=settings.tls, clean_start=False,
            session_expiry_s=settings.session_expiry_s, manual_ack=True,
        )  # fmt: skip
        self.subscribed = asyncio.Event()
        self.handled = 0

    async def _subscribe(self) -> None:
        await self.client.subscribe(shared_gateway_batches(self.settings.share_group), qos=1)
        self.subscribed.set()

    async def handle(self, message: Message) -> IngestResult:
        """Ingest one message and acknowledge it (what :meth:`run` does, one message at a time)."""
        result = await self.process(message)
        self._ack(message)
        return result

    async def process(self, message: Message) -> IngestResult:
        """Ingest one message, retrying while the database is down; does not acknowledge it."""
        backoff = Backoff(initial_s=0.2, max_s=10.0)
        while True:
            try:
                return await asyncio.to_thread(self._ingest, message)
            except StoreUnavailable as exc:
                delay = backoff.next_delay()
                logger.warning(
                    "%s; holding batch on %s unacknowledged, retry in %.1f s", exc, message.topic, delay
                )
                await asyncio.sleep(delay)

    def _ack(self, message: Message) -> None:
        message.ack()
        self.handled += 1

    def _ingest(self, message: Message) -> IngestResult:
        try:
            gateway_id = parse_gateway_batch(message.topic)
        except ContractError as exc:
            rejected = Rejected(IngestReject.BAD_TOPIC, str(exc))
            return self.ingestor.reject(
                message.payload, rejected, identity=None, topic_gateway=None, transport="mqtt",
                received_ms=self.ingestor.now_ms(),
            )  # fmt: skip
        # The broker's ACL lets only the certificate named in the topic publish there.
        return self.ingestor.ingest(
            message.payload, topic_gateway=gateway_id, identity=gateway_id, transport="mqtt"
        )

    async def run(self) -> None:
        """Connect, subscribe and consume until cancelled."""
        await connect_with_backoff(self.client, initial_s=0.5, max_s=15.0)
        await self._subscribe()
        async with asyncio.TaskGroup() as tg:
            # Retries refusals too once connected: a restarting broker must not end the worker.
            tg.create_task(
                reconnect_forever(self.client, initial_s=0.5, max_s=15.0, on_connect=self._subscribe),
                name=f"{self.client.client_id}-reconnect",
            )
            # Up to max_in_flight batches are stored at once (their transactions overlap the
            # database's commit waits); one gateway's batches stay in order, each after the one
            # before, and PUBACKs go out in the order the batches arrived, as MQTT asks.
            in_order: asyncio.Queue[tuple[Message, asyncio.Task[IngestResult]]] = asyncio.Queue(
                maxsize=self.settings.max_in_flight
            )
            tg.create_task(self._acknowledge(in_order), name=f"{self.client.client_id}-acks")
            last_of: dict[str, asyncio.Task[IngestResult]] = {}
            while True:
                message = await self.client.messages.get()
                task = tg.create_task(self._after(last_of.get(message.topic), message))
                last_of[message.topic] = task
                await in_order.put((message, task))
                if len(last_of) > 4 * self.settings.max_in_flight:
                    last_of = {t: k for t, k in last_of.items() if not k.done()}

    async def _after(self, before: asyncio.Task[IngestResult] | None, message: Message) -> IngestResult:
        if before is not None:
            await asyncio.wait([before])
        return await self.process(message)

    async def _acknowledge(self, in_order: asyncio.Queue[tuple[Message, asyncio.Task[IngestResult]]]) -> None:
        while True:
            message, task = await in_order.get()
            await task
            self._ack(message)

    async def close(self) -> None:
        """Disconnect (unacknowledged messages stay with the session on the broker)."""
        await self.client.disconnect()
