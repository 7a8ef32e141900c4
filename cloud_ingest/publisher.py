"""Pushes manifests to gateways on their command topic, over the API process's own MQTT connection.

The API's routes run in worker threads; the MQTT client lives on the event loop that serves them.
``publish_manifest`` hands the publish to that loop and waits for the broker's PUBACK, so the API can
record ``published_ms`` truthfully. Retained, so a gateway that connects later still gets the newest
manifest; QoS 1, so a gateway with a persistent session gets it after an outage.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging

from cloud_ingest.api.routes.manifests import PublishFailed
from cloud_ingest.settings import BrokerSettings
from coldtrace.contract.topics import GatewayCommand, gateway_command
from coldtrace.mqtt import MqttClient, MqttError, connect_with_backoff, reconnect_forever

logger = logging.getLogger(__name__)


class MqttManifestPublisher:
    """An MQTT link owned by the API process; ``async with`` it on the loop that serves the API."""

    def __init__(self, settings: BrokerSettings, *, client_id: str, timeout_s: float = 10.0) -> None:
        self.client = MqttClient(client_id=client_id, broker=settings.broker, tls=settings.tls)
        self.timeout_s = timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._keeper: asyncio.Task[None] | None = None

    async def __aenter__(self) -> MqttManifestPublisher:
        self._loop = asyncio.get_running_loop()
        await connect_with_backoff(self.client, initial_s=0.5, max_s=15.0, deadline_s=60.0)
        self._keeper = asyncio.create_task(
            reconnect_forever(self.client, initial_s=0.5, max_s=15.0), name="manifest-publisher-reconnect"
        )
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        await self.client.disconnect()

    def publish_manifest(self, gateway_id: str, body: bytes) -> None:
        """Publish ``body`` to the gateway's manifest topic; PublishFailed if the broker did not take it."""
        if self._loop is None or not self.client.connected.is_set():
            raise PublishFailed("the API is not connected to the cloud broker; publish again later")
        topic = gateway_command(gateway_id, GatewayCommand.MANIFEST)
        future = asyncio.run_coroutine_threadsafe(
            self.client.publish(topic, body, qos=1, retain=True), self._loop
        )
        try:
            future.result(timeout=self.timeout_s)
        except (MqttError, concurrent.futures.TimeoutError) as exc:
            future.cancel()
            raise PublishFailed(f"the broker did not take the manifest for {gateway_id}: {exc}") from exc
