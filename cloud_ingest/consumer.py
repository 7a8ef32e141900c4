"""The MQTT side of a worker: a shared subscription to every gateway's batches, acked after commit.

Workers of one ``share_group`` split the batches (``$share/<group>/ct/v1/gw/+/batch``); each keeps a
persistent session (clean start off, session expiry) so a restart loses nothing queued for it. A
message is acknowledged only once its outcome is durable: stored, recognised as a duplicate, or
dead-lettered as a reject. While the database is down the worker holds the message, retries with
backoff and acknowledges nothing, so the broker keeps everything it has not acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from cloud_ingest.ingest import Checked, Inbound, Ingestor, IngestResult, StoreUnavailable
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
            # Room for the group being stored and the next one, which is verified meanwhile.
            receive_maximum=min(65535, 2 * settings.group_max_frames),
        )  # fmt: skip
        self.subscribed = asyncio.Event()
        self.handled = 0

    async def _subscribe(self) -> None:
        await self.client.subscribe(shared_gateway_batches(self.settings.share_group), qos=1)
        self.subscribed.set()

    async def handle(self, message: Message) -> IngestResult:
        """Ingest one message and acknowledge it (what :meth:`run` does for a group of one)."""
        [result] = await self.process([message])
        self._ack(message)
        return result

    async def process(self, group: list[Message]) -> list[IngestResult]:
        """Ingest a group in one transaction, retrying while the database is down; acknowledges nothing.

        If a group of several fails to store, its messages are retried one by one, so a frame the
        database cannot take holds back only itself.
        """
        backoff = Backoff(initial_s=0.2, max_s=10.0)
        while True:
            try:
                return await asyncio.to_thread(self._ingest, group)
            except StoreUnavailable as exc:
                if len(group) > 1:
                    logger.warning("%s; storing the %d batches of the group one by one", exc, len(group))
                    return [result for m in group for result in await self.process([m])]
                delay = backoff.next_delay()
                logger.warning(
                    "%s; holding batch on %s unacknowledged, retry in %.1f s", exc, group[0].topic, delay
                )
                await asyncio.sleep(delay)

    def _ack(self, message: Message) -> None:
        message.ack()
        self.handled += 1

    def _ingest(self, group: list[Message]) -> list[IngestResult]:
        return self.ingestor.ingest_many([_inbound(m) for m in group], transport="mqtt")

    def _next_group(self, first: Message) -> list[Message]:
        """``first`` and whatever else has arrived, within the group limits, in arrival order."""
        group, size = [first], len(first.payload)
        queue = self.client.messages
        while len(group) < self.settings.group_max_frames and size < self.settings.group_max_bytes:
            try:
                message = queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            group.append(message)
            size += len(message.payload)
        return group

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
            # One group is stored at a time, so one gateway's batches are stored in order, and
            # PUBACKs go out in the order the batches arrived, as MQTT asks, each after its commit.
            # The next group is verified (CPU) while the previous one commits (mostly waiting).
            storing: asyncio.Task[None] | None = None
            while True:
                group = self._next_group(await self.client.messages.get())
                checked = await self._check(group)
                if storing is not None:
                    await storing
                storing = tg.create_task(self._store_and_ack(group, checked))

    async def _check(self, group: list[Message]) -> Checked | None:
        """The group verified, or None when that needs the database and it is down."""
        try:
            return await asyncio.to_thread(self.ingestor.check, [_inbound(m) for m in group])
        except StoreUnavailable:
            return None

    async def _store_and_ack(self, group: list[Message], checked: Checked | None) -> None:
        stored = False
        if checked is not None:
            with contextlib.suppress(StoreUnavailable):
                await asyncio.to_thread(self.ingestor.store, checked, transport="mqtt")
                stored = True
        if not stored:
            await self.process(group)  # retries, with backoff, until the database is back
        for message in group:
            self._ack(message)

    async def close(self) -> None:
        """Disconnect (unacknowledged messages stay with the session on the broker)."""
        await self.client.disconnect()


def _inbound(message: Message) -> Inbound:
    try:
        gateway_id = parse_gateway_batch(message.topic)
    except ContractError as exc:
        return Inbound(message.payload, None, None, refused=Rejected(IngestReject.BAD_TOPIC, str(exc)))
    # The broker's ACL lets only the certificate named in the topic publish there.
    return Inbound(message.payload, topic_gateway=gateway_id, identity=gateway_id)
