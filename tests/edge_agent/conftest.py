"""Fixtures for agent tests: a gateway broker and a cloud broker (real Mosquitto, mutual TLS)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from certs.pki import IssuedIdentity, Pki, Role
from tests.harness.mosquitto import DEFAULT_SERVICE_ACL, Mosquitto, MosquittoTlsFiles, agent_acl
from tests.harness.services import require_binary

GATEWAY = "gw-0"
#: The agent's identity on its own broker: it reads every device and publishes local alerts.
AGENT_ACL = agent_acl(GATEWAY)


def _broker(pki: Pki, server: IssuedIdentity) -> Mosquitto:
    binary = require_binary("Mosquitto", "mosquitto", package="mosquitto", extra_dirs=[Path("/usr/sbin")])
    tls = MosquittoTlsFiles(
        cafile=pki.ca_bundle_path, certfile=server.chain_path, keyfile=server.key_path, crlfile=pki.crl_path
    )
    return Mosquitto(binary, tls, service_acl={**DEFAULT_SERVICE_ACL, **AGENT_ACL}, log_every_message=False)


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
def signing_key(tmp_path: Path) -> tuple[Path, Ed25519PrivateKey]:
    """A gateway batch-signing key written 0600."""
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "signing.key"
    path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    path.chmod(0o600)
    return path, key


def agent_toml(
    tmp_path: Path,
    *,
    pki: Pki,
    identity: Callable[[Role, str], IssuedIdentity],
    local: Mosquitto,
    cloud: Mosquitto,
    signing: Path,
    **extra: object,
) -> Path:
    """Write an agent config file for gateway ``gw-0`` against the two brokers."""
    local_id = identity(Role.SERVICE, f"agent-{GATEWAY}")
    cloud_id = identity(Role.GATEWAY, GATEWAY)
    lines = [
        f'gateway_id = "{GATEWAY}"',
        'site_id = "wh-test"',
        f'state_dir = "{tmp_path / "state"}"',
        f'signing_key = "{signing}"',
        "metrics_port = 0",
        *(f"{k} = {v!r}".replace("'", '"') for k, v in extra.items()),
        "[local]",
        f'url = "mqtts://127.0.0.1:{local.port}"',
        f'ca_file = "{pki.ca_bundle_path}"',
        f'cert_file = "{local_id.cert_path}"',
        f'key_file = "{local_id.key_path}"',
        "[cloud]",
        f'url = "mqtts://127.0.0.1:{cloud.port}"',
        f'ca_file = "{pki.ca_bundle_path}"',
        f'cert_file = "{cloud_id.chain_path}"',
        f'key_file = "{cloud_id.key_path}"',
    ]
    path = tmp_path / "agent.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
