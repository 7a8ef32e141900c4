"""Edge agents for the drills: ``coldtrace agent run`` child processes, one per gateway.

A child process, so that ``kill -9`` is real: the agent's SQLite outbox, its MQTT sessions on both
brokers and its in-flight batches are left exactly as a crash leaves them. Its config file is the
one an installed gateway has; its metrics and health come over HTTP like an operator's.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families

from certs.pki import IssuedIdentity, Pki
from coldtrace.demo.workdir import write_signing_key
from tests.cloud_ingest.drills_workers import REPO, metric, poll
from tests.harness.child import KillableChild
from tests.harness.mosquitto import Mosquitto

_PORT_LINE = re.compile(r"metrics and health on http://127\.0\.0\.1:(\d+)/metrics")
#: Device clocks in a drill read up to the scenario's length behind the gateway (simulated time is
#: compressed into seconds), so only a day of difference counts as skew: jumps are what is under test.
SKEW_TOLERANCE_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class AgentFiles:
    """Where one gateway's agent keeps its config, state and signing key."""

    home: Path

    @property
    def config(self) -> Path:
        return self.home / "agent.toml"

    @property
    def state_dir(self) -> Path:
        return self.home / "state"

    @property
    def signing_key(self) -> Path:
        return self.home / "signing.key"

    @property
    def log(self) -> Path:
        return self.home / "agent.log"

    @property
    def deadletters(self) -> Path:
        return self.state_dir / "deadletter.db"


def write_agent_config(
    files: AgentFiles, *, gateway_id: str, site_id: str, pki: Pki, local: IssuedIdentity,
    cloud: IssuedIdentity, local_url: str, cloud_url: str, extra: dict[str, int | float | str] | None = None,
) -> Ed25519PrivateKey:  # fmt: skip
    """Write the agent's TOML file and a fresh batch-signing key (0600); returns the key."""
    files.home.mkdir(parents=True, exist_ok=True)
    key = write_signing_key(files.signing_key)
    options: dict[str, int | float | str] = {
        "metrics_port": 0,
        "skew_tolerance_ms": SKEW_TOLERANCE_MS,
        # Outages in a drill last seconds: back-off must not delay the drain by more than that.
        "reconnect_initial_s": 0.2,
        "reconnect_max_s": 1.0,
        # Small batches keep a refused frame below the cloud's dead-letter cap, so it is kept whole.
        "batch_max_readings": 100,
        **(extra or {}),
    }
    lines = [
        f'gateway_id = "{gateway_id}"',
        f'site_id = "{site_id}"',
        f'state_dir = "{files.state_dir}"',
        f'signing_key = "{files.signing_key}"',
        *(f"{k} = {v!r}".replace("'", '"') for k, v in options.items()),
    ]
    for table, url, who in (("local", local_url, local), ("cloud", cloud_url, cloud)):
        lines += [
            f"[{table}]",
            f'url = "{url}"',
            f'ca_file = "{pki.ca_bundle_path}"',
            f'cert_file = "{who.chain_path}"',
            f'key_file = "{who.key_path}"',
        ]
    files.config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return key


class AgentProcess(KillableChild):
    """``coldtrace agent run --config …`` as a child that can be SIGKILLed and started again."""

    def __init__(self, gateway_id: str, files: AgentFiles, *, local_broker: Mosquitto) -> None:
        super().__init__()
        self.gateway_id = gateway_id
        self.files = files
        self.local_broker = local_broker
        self.port: int | None = None
        self._log_offset = 0

    def start(self) -> int:
        """Start the agent; returns the gateway broker's log offset to pass to :meth:`wait_ready`."""
        broker_offset = self.local_broker.log_size()
        self._log_offset = self.files.log.stat().st_size if self.files.log.exists() else 0
        self.port = None
        argv = [sys.executable, "-m", "coldtrace", "agent", "run", "--config", str(self.files.config)]
        with self.files.log.open("ab") as out:
            self.proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, "COLDTRACE_LOG_LEVEL": "INFO"})  # fmt: skip
        return broker_offset

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def log_text(self, *, this_run: bool = False) -> str:
        """The agent's log (all runs, or only the current one)."""
        with self.files.log.open("rb") as f:
            f.seek(self._log_offset if this_run else 0)
            return f.read().decode("utf-8", errors="replace")

    def _ready(self, broker_offset: int) -> bool:
        if not self.alive:
            raise RuntimeError(f"agent {self.gateway_id} exited:\n{self.log_text(this_run=True)[-3000:]}")
        if self.port is None and (m := _PORT_LINE.search(self.log_text(this_run=True))):
            self.port = int(m.group(1))
        if self.port is None:
            return False
        subscribed = f"Sending SUBACK to agent-{self.gateway_id}" in self.local_broker.log_text(broker_offset)
        return subscribed and bool(self.health()["uplink_connected"])

    async def wait_ready(self, broker_offset: int, *, within_s: float = 60.0) -> None:
        """Until the agent serves /health, is subscribed on its gateway broker and linked to the cloud."""
        await poll(
            lambda: self._ready(broker_offset), within_s=within_s, what=f"agent {self.gateway_id} ready"
        )

    def health(self) -> dict[str, Any]:
        """The agent's ``/health`` report."""
        assert self.port is not None, f"agent {self.gateway_id} has not reported its port"
        body: dict[str, Any] = httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=5.0).json()
        return body

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample of the agent's /metrics."""
        assert self.port is not None, f"agent {self.gateway_id} has not reported its port"
        return metric(self.port, name, **labels)

    def drained(self) -> bool:
        """True when the outbox holds no reading and no unacknowledged frame."""
        outbox = self.health().get("outbox") or {}
        return outbox.get("readings") == 0 and outbox.get("frames_pending") == 0

    def dead_letters(self) -> list[tuple[str, str, bytes]]:
        """(reason, topic, payload) of every device message the agent refused, from its dead-letter file."""
        with sqlite3.connect(self.files.deadletters) as conn:
            return [
                (r, t, bytes(p)) for r, t, p in conn.execute("SELECT reason, topic, payload FROM dead_letter")
            ]

    def rejects_by_reason(self) -> Counter[str]:
        """The agent's refusal counters from /metrics (a restart resets them)."""
        assert self.port is not None, f"agent {self.gateway_id} has not reported its port"
        return counter_by_label(self.port, "coldtrace_agent_messages_rejected_total", "reason")


def counter_by_label(port: int, name: str, label: str) -> Counter[str]:
    """A labelled counter of the /metrics served on ``port``, summed by ``label`` (zeros left out)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5.0).text
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.value:
                counts[sample.labels[label]] += int(sample.value)
    return counts
