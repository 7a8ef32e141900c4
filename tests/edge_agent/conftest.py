"""Fixtures for agent tests: an enrolled gateway, its two brokers (real Mosquitto, mutual TLS), agent configs.

The gateway's identity is made the way a real one is: ``gateway.enroll`` creates the TLS and
batch-signing keys locally and the session PKI signs the CSR (``coldtrace gateway enroll --offline``).
The agent uses exactly those files; the cloud-side test subscriber trusts the certificate through
the CA and the signing key enrolled with it (see ``tests/edge_agent/cloud_side.py``).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from certs.pki import IssuedIdentity, Pki, Role
from tests.harness.enrolled import EnrolledGateway
from tests.harness.mosquitto import DEFAULT_SERVICE_ACL, Mosquitto, MosquittoTlsFiles, agent_acl
from tests.harness.process import ManagedProcess, ServiceError
from tests.harness.services import require_binary

GATEWAY = "gw-0"
#: The agent's identity on its own broker: it reads every device and publishes local alerts.
AGENT_ACL = agent_acl(GATEWAY)


def _broker(pki: Pki, server: IssuedIdentity, *, persistence: bool = False) -> Mosquitto:
    binary = require_binary("Mosquitto", "mosquitto", package="mosquitto", extra_dirs=[Path("/usr/sbin")])
    tls = MosquittoTlsFiles(
        cafile=pki.ca_bundle_path, certfile=server.chain_path, keyfile=server.key_path, crlfile=pki.crl_path
    )
    return Mosquitto(
        binary,
        tls,
        service_acl={**DEFAULT_SERVICE_ACL, **AGENT_ACL},
        persistence=persistence,
        log_every_message=False,
    )


@pytest.fixture(scope="module")
def gateway_broker(pki: Pki, server_identity: IssuedIdentity) -> Iterator[Mosquitto]:
    """The warehouse gateway's local broker."""
    broker = _broker(pki, server_identity)
    broker.start()
    yield broker
    broker.close()


@pytest.fixture(scope="module")
def cloud_broker(pki: Pki, server_identity: IssuedIdentity) -> Iterator[Mosquitto]:
    """The cloud broker the agent forwards to."""
    broker = _broker(pki, server_identity)
    broker.start()
    yield broker
    broker.close()


@pytest.fixture
def durable_cloud(pki: Pki, server_identity: IssuedIdentity) -> Iterator[Mosquitto]:
    """A cloud broker that keeps sessions on disk, so stopping it loses no queued batch."""
    broker = _broker(pki, server_identity, persistence=True)
    broker.start()
    yield broker
    broker.close()


def agent_toml(
    tmp_path: Path,
    *,
    pki: Pki,
    identity: Callable[[Role, str], IssuedIdentity],
    local: Mosquitto,
    cloud: Mosquitto,
    gateway: EnrolledGateway,
    **extra: object,
) -> Path:
    """Write an agent config for the enrolled gateway against the two brokers (its enrolled files)."""
    local_id = identity(Role.SERVICE, f"agent-{gateway.gateway_id}")
    files = gateway.files
    lines = [
        f'gateway_id = "{gateway.gateway_id}"',
        'site_id = "wh-test"',
        f'state_dir = "{tmp_path / "state"}"',
        f'signing_key = "{files.signing_key}"',
        "metrics_port = 0",
        *(f"{k} = {v!r}".replace("'", '"') for k, v in extra.items()),
        "[local]",
        f'url = "mqtts://127.0.0.1:{local.port}"',
        f'ca_file = "{pki.ca_bundle_path}"',
        f'cert_file = "{local_id.cert_path}"',
        f'key_file = "{local_id.key_path}"',
        "[cloud]",
        f'url = "mqtts://127.0.0.1:{cloud.port}"',
        f'ca_file = "{files.ca_bundle}"',
        f'cert_file = "{files.chain}"',
        f'key_file = "{files.tls_key}"',
    ]
    path = tmp_path / "agent.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class AgentProcess:
    """``coldtrace agent run`` as a child process that can be SIGKILLed and started again."""

    #: What the agent logs once subscribed on its gateway broker (its session keeps messages from then on).
    CONNECTED = "receiving device readings"

    def __init__(self, config: Path, workdir: Path) -> None:
        argv = [sys.executable, "-m", "coldtrace", "agent", "run", "--config", str(config)]
        self.process = ManagedProcess("agent", argv, workdir=workdir, stop_grace=30.0)
        self.kills = 0
        self._offset = 0

    def start(self) -> None:
        """Start a new agent process; ``up()`` waits until it is connected."""
        self._offset = self._log_size()
        self.process.start()

    async def up(self, timeout_s: float = 60.0) -> float:
        """Wait until this run of the agent is connected to its gateway broker; seconds since start."""

        def connected() -> bool:
            with self.process.log_path.open("rb") as log:
                log.seek(self._offset)
                return self.CONNECTED.encode() in log.read()

        # Another process's readiness can only be polled (ManagedProcess does so with a deadline).
        return await asyncio.to_thread(self.process.wait_ready, connected, timeout_s, what="connected")

    def kill9(self) -> None:
        """SIGKILL the agent and reap it: a crash."""
        if self.process.kill() != -9:
            raise ServiceError(f"agent was not running when killed\n{self.process.log_tail()}")
        self.kills += 1

    def stop(self) -> int | None:
        """SIGTERM (the agent flushes and exits); the exit status."""
        return self.process.stop()

    def log_tail(self) -> str:
        """The end of the agent's log, for failure messages."""
        return self.process.log_tail()

    def _log_size(self) -> int:
        try:
            return self.process.log_path.stat().st_size
        except FileNotFoundError:
            return 0
