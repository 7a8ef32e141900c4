"""One cloud worker process: MQTT consumer, telemetry spool drain, webhooks, housekeeping, metrics.

Workers are stateless - everything durable is in the SQL database and on the broker - so operators
run as many as the load needs (``coldtrace cloud worker --instance N``). Every duty is a task in one
TaskGroup; SIGTERM cancels them, the consumer's unacknowledged message stays with the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from sqlalchemy import Engine

from cloud_ingest.consumer import BatchConsumer
from cloud_ingest.housekeeping import run_housekeeping
from cloud_ingest.ingest import Ingestor
from cloud_ingest.metrics import CloudMetrics
from cloud_ingest.settings import CloudSettings
from cloud_ingest.spool import Handoff, SpoolDrainer
from cloud_ingest.telemetry import TelemetryWriter
from cloud_ingest.webhooks import WebhookDispatcher, WebhookMetrics
from coldtrace.metrics_server import serve

logger = logging.getLogger(__name__)


@dataclass
class Worker:
    """The duties of one worker; :meth:`run` until cancelled."""

    engine: Engine
    settings: CloudSettings
    instance: int = 1
    metrics: CloudMetrics = field(default_factory=CloudMetrics)
    metrics_port: asyncio.Future[int] | None = None

    def __post_init__(self) -> None:
        self.ingestor = Ingestor(self.engine, self.settings, metrics=self.metrics)
        self.consumer: BatchConsumer | None = None
        self.drainer: SpoolDrainer | None = None

    def health(self) -> dict[str, object]:
        """What ``/health`` reports."""
        return {
            "instance": self.instance,
            "consumer_connected": self.consumer is not None and self.consumer.client.connected.is_set(),
            "batches_handled": 0 if self.consumer is None else self.consumer.handled,
        }

    @contextlib.asynccontextmanager
    async def _telemetry(self) -> AsyncIterator[TelemetryWriter | None]:
        t = self.settings.telemetry
        if t.url is None:
            yield None
            return
        async with TelemetryWriter(
            url=t.url, token=t.token, org=t.org, bucket=t.bucket, timeout_s=t.timeout_s
        ) as w:
            yield w

    async def run(self) -> None:
        """Run every duty until cancelled."""
        s = self.settings
        tune_gc(s.gc_young_threshold)
        ready = self.metrics_port or asyncio.get_running_loop().create_future()
        async with (
            self._telemetry() as writer,
            WebhookDispatcher.from_settings(
                self.engine, s, metrics=WebhookMetrics(self.metrics.registry)
            ) as webhooks,
            asyncio.TaskGroup() as tg,
        ):
            tg.create_task(serve(s.metrics_host, s.metrics_port, self.metrics, self.health, ready=ready),
                           name="metrics")  # fmt: skip
            tg.create_task(run_housekeeping(self.engine, s, self.metrics), name="housekeeping")
            tg.create_task(webhooks.run(interval_s=s.housekeeping_interval_s), name="webhooks")
            if writer is not None:
                handoff = None
                if s.telemetry.handoff_chunks:
                    handoff = Handoff(max_chunks=s.telemetry.handoff_chunks,
                                      lease_ms=round(s.telemetry.lease_s * 1000))  # fmt: skip
                self.ingestor.handoff = handoff
                self.drainer = SpoolDrainer(self.engine, writer, s.telemetry, metrics=self.metrics,
                                            handoff=handoff)  # fmt: skip
                tg.create_task(self.drainer.run(), name="spool-drain")
            if s.broker is not None:
                client_id = f"{s.broker.client_id}-{self.instance}"
                self.consumer = BatchConsumer(self.ingestor, s.broker, client_id=client_id)
                tg.create_task(self.consumer.run(), name="mqtt-consumer")
            logger.info("worker %d running (broker %s, telemetry %s)", self.instance,
                        s.broker.url if s.broker else "none", s.telemetry.url or "spool only")  # fmt: skip


def tune_gc(young_threshold: int) -> None:
    """Collect the young generation less often, and leave what start-up built out of every pass.

    Objects alive now (modules, settings, caches) would otherwise be traversed by each full
    collection for the life of the process.
    """
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, old)
    gc.freeze()


async def run_until_signalled(worker: Worker) -> None:
    """Run ``worker`` until SIGTERM or SIGINT, then stop cleanly."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        if task is not None:
            loop.add_signal_handler(sig, task.cancel)
    try:
        await worker.run()
    except asyncio.CancelledError:
        logger.info("worker %d stopping", worker.instance)
    finally:
        if worker.consumer is not None:
            with contextlib.suppress(Exception):
                await worker.consumer.close()
