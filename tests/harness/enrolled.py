"""A gateway enrolled like in the field, for tests across packages (agent, cloud scenarios, dashboards)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from certs.pki import Pki
from gateway.enroll import GatewayFiles, LocalKeys, prepare, sign_offline


@dataclass(frozen=True, slots=True)
class EnrolledGateway:
    """A gateway enrolled like in the field: its files and what the admin saw at enrollment."""

    files: GatewayFiles
    keys: LocalKeys

    @property
    def gateway_id(self) -> str:
        """The certificate's CN."""
        return self.keys.gateway_id

    @property
    def signing_public_key(self) -> Ed25519PublicKey:
        """The batch-signing key the cloud registers for this gateway."""
        return Ed25519PublicKey.from_public_bytes(self.keys.signing_public_raw)


def enroll_offline(pki: Pki, gateway_id: str, directory: Path) -> EnrolledGateway:
    """Keys made locally in ``directory``, the CSR signed by ``pki`` (``gateway enroll --offline``)."""
    files = GatewayFiles(directory)
    keys = prepare(files, gateway_id)
    sign_offline(files, keys, pki_dir=pki.directory)
    return EnrolledGateway(files=files, keys=keys)
