"""Cloud workers for the drills: child processes (config file, start, SIGKILL, /metrics) or in-process.

A child worker is ``coldtrace cloud worker --config X --instance N`` in its own process, so a SIGKILL
is a real crash: its database connections drop mid-transaction and its MQTT connection goes without
a DISCONNECT, leaving the broker holding what it had not acknowledged. In-process workers (the same
:class:`Worker`, one engine each, as separate processes would have) start at once and let a drill
read their metrics registry and consumers directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from certs.pki import IssuedIdentity, Pki
from cloud_ingest.db.engine import create_db_engine
from cloud_ingest.metrics import CloudMetrics
from cloud_ingest.settings import BrokerSettings, CloudSettings, TelemetrySettings
from cloud_ingest.worker import Worker
from tests.harness.child import KillableChild
from tests.harness.mosquitto import Mosquitto

REPO = Path(__file__).resolve().parents[2]
LEASE_MS = 2_000
"""The spool lease in the drills' workers (``telemetry.lease_s``): long enough for a live worker's
write, short enough that a chunk orphaned by a SIGKILL is written again within the drill."""
_PORT_LINE = re.compile(r"metrics and health on http://127\.0\.0\.1:(\d+)/metrics")


def cloud_settings(
    *, database_url: str, broker: Mosquitto, pki: Pki, service: IssuedIdentity, client_id: str,
    share_group: str, telemetry_url: str,
) -> CloudSettings:  # fmt: skip
    """A drill's worker settings. ``metrics_port = 0``: each worker binds a free port (and logs it)."""
    return CloudSettings(
        database_url=database_url,
        broker=BrokerSettings(
            url=f"mqtts://{broker.host}:{broker.port}", ca_file=pki.ca_bundle_path,
            cert_file=service.cert_path, key_file=service.key_path, client_id=client_id,
            share_group=share_group,
        ),
        # Short retry delays: a drill's outage lasts seconds, and back-off must not delay the drain.
        # A short lease: a worker killed between leasing a chunk and deleting it, or cut off from the
        # database meanwhile, leaves the chunk to the others once the lease expires.
        telemetry=TelemetrySettings(
            url=telemetry_url, retry_initial_s=0.2, retry_max_s=1.0, lease_s=LEASE_MS / 1000
        ),
        metrics_port=0,
        housekeeping_interval_s=1.0,
    )  # fmt: skip


def write_config(path: Path, settings: CloudSettings) -> Path:
    """``settings`` as the TOML file ``coldtrace cloud worker --config`` reads."""
    assert settings.broker is not None
    b, t = settings.broker, settings.telemetry
    path.write_text(
        f"""\
database_url = "{settings.database_url}"
metrics_port = {settings.metrics_port}
housekeeping_interval_s = {settings.housekeeping_interval_s}

[broker]
url = "{b.url}"
ca_file = "{b.ca_file}"
cert_file = "{b.cert_file}"
key_file = "{b.key_file}"
client_id = "{b.client_id}"
share_group = "{b.share_group}"

[telemetry]
url = "{t.url}"
retry_initial_s = {t.retry_initial_s}
retry_max_s = {t.retry_max_s}
lease_s = {t.lease_s}
""",
        encoding="utf-8",
    )
    return path


async def poll(predicate: Callable[[], bool], *, within_s: float, what: str) -> None:
    """Wait for a state only another process or a database can show (nothing there can signal us).

    The predicate runs in a thread (it may query a database); the interval is short and fixed.
    """
    try:
        async with asyncio.timeout(within_s):
            while not await asyncio.to_thread(predicate):  # noqa: ASYNC110 - see the docstring
                await asyncio.sleep(0.05)
    except TimeoutError as exc:
        raise TimeoutError(f"not {what} within {within_s:g} s") from exc


class WorkerProcess(KillableChild):
    """One ``coldtrace cloud worker`` child; its stderr (the log) goes to ``log``, appended across runs."""

    def __init__(self, config: Path, instance: int, log: Path, *, client_id: str) -> None:
        super().__init__()
        self.config = config
        self.instance = instance
        self.log = log
        self.client_id = f"{client_id}-{instance}"
        """The MQTT client id the worker uses (the settings' ``client_id`` plus ``-<instance>``)."""
        self._log_offset = 0
        self.port: int | None = None

    def start(self) -> None:
        """Start the worker; see :meth:`wait_ready`."""
        self._log_offset = self.log.stat().st_size if self.log.exists() else 0
        self.port = None
        argv = [sys.executable, "-m", "coldtrace", "cloud", "worker",
                "--config", str(self.config), "--instance", str(self.instance)]  # fmt: skip
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, "COLDTRACE_LOG_LEVEL": "INFO"})  # fmt: skip

    def log_text(self, *, this_run: bool = False) -> str:
        """The worker's log (all runs, or only the current one)."""
        with self.log.open("rb") as f:
            f.seek(self._log_offset if this_run else 0)
            return f.read().decode("utf-8", errors="replace")

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def _ready(self, broker: Mosquitto, broker_offset: int) -> bool:
        if not self.alive:
            raise RuntimeError(f"worker {self.instance} exited:\n{self.log_text(this_run=True)[-3000:]}")
        if self.port is None and (m := _PORT_LINE.search(self.log_text(this_run=True))):
            self.port = int(m.group(1))
        return self.port is not None and f"Sending SUBACK to {self.client_id}" in broker.log_text(
            broker_offset
        )

    async def wait_ready(self, broker: Mosquitto, broker_offset: int, *, within_s: float = 30.0) -> None:
        """Until the worker serves /metrics and the broker has granted its subscription."""
        await poll(lambda: self._ready(broker, broker_offset), within_s=within_s, what="worker ready")

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample of the worker's /metrics, read over HTTP."""
        assert self.port is not None
        return metric(self.port, name, **labels)


def unacknowledged(broker: Mosquitto, client_id: str, *, since: int) -> int:
    """QoS 1 messages the broker has sent ``client_id`` and not had acknowledged, from its log."""
    log = broker.log_text(since)
    return log.count(f"Sending PUBLISH to {client_id} (") - log.count(f"Received PUBACK from {client_id} (")


def metric(port: int, name: str, **labels: str) -> float | None:
    """One sample of the /metrics a worker serves on ``port`` (None when absent)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5.0).text
    wanted = sorted(labels.items())
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sorted(sample.labels.items()) == wanted:
                return float(sample.value)
    return None


@contextlib.asynccontextmanager
async def running_workers(settings: CloudSettings, n: int) -> AsyncIterator[list[Worker]]:
    """``n`` in-process workers, each with its own engine; yields once all are subscribed.

    On exit the workers are cancelled (a SIGTERM's effect) and their MQTT sessions closed; a worker
    whose task ended early makes the block fail with that task's error.
    """
    loop = asyncio.get_running_loop()
    ports: list[asyncio.Future[int]] = [loop.create_future() for _ in range(n)]
    workers = [
        Worker(create_db_engine(settings.database_url), settings, instance=i + 1, metrics=CloudMetrics(),
               metrics_port=ports[i])
        for i in range(n)
    ]  # fmt: skip
    tasks = [asyncio.create_task(w.run(), name=f"worker-{w.instance}") for w in workers]
    try:
        async with asyncio.timeout(30):
            for worker, port, task in zip(workers, ports, tasks, strict=True):
                either: set[asyncio.Future[Any]] = {port, task}
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                # The consumer is created in the same step that starts the metrics server.
                assert worker.consumer is not None, task
                await worker.consumer.subscribed.wait()
        yield workers
        for task in tasks:
            assert not task.done(), f"{task.get_name()} ended: {task.exception()!r}"
    finally:
        for task in tasks:
            task.cancel()
        for worker, task in zip(workers, tasks, strict=True):
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if worker.consumer is not None:
                await worker.consumer.close()
            worker.engine.dispose()
