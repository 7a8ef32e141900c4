"""The demo's work directory and the throwaway PKI and keys it generates there.

Layout (keys 0600, key directories 0700, as ``coldtrace certs`` writes them)::

    <workdir>/
      .coldtrace-demo        marker: this directory belongs to a demo and may be cleared by the next one
      pki/                   root + issuing CA, server, gateway and service identities
      cloud/cloud.db         the cloud's SQLite database
      gateways/<id>/         a gateway's batch-signing key and agent state (outbox, manifest, dead letters)
      truth.jsonl            the simulator's ground truth
      summary.json           what the summary printed, for scripts and tests
      demo.log               every component's log
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from certs.errors import PkiPermissionError
from certs.pki import IssuedIdentity, Pki, Role
from coldtrace.demo.errors import WorkdirUnusable

MARKER = ".coldtrace-demo"
INGEST_IDENTITY = "svc-ingest"
LOADGEN_IDENTITY = "sim-loadgen"
SERVER_NAME = "localhost"


def agent_identity(gateway_id: str) -> str:
    """The edge agent's identity on its own gateway broker."""
    return f"agent-{gateway_id}"


@dataclass(frozen=True, slots=True)
class Workdir:
    """Where everything of one demo run lives."""

    path: Path
    temporary: bool
    """Created by the demo (removed at exit) rather than given with --workdir."""

    @property
    def pki_dir(self) -> Path:
        """The PKI."""
        return self.path / "pki"

    @property
    def database(self) -> Path:
        """The cloud's SQLite file."""
        return self.path / "cloud" / "cloud.db"

    def gateway_dir(self, gateway_id: str) -> Path:
        """A gateway's key and state."""
        return self.path / "gateways" / gateway_id

    @property
    def truth(self) -> Path:
        """The ground-truth file."""
        return self.path / "truth.jsonl"

    @property
    def summary(self) -> Path:
        """The machine-readable summary."""
        return self.path / "summary.json"

    @property
    def log(self) -> Path:
        """The log file."""
        return self.path / "demo.log"

    def remove(self) -> None:
        """Delete a temporary work directory (a given one is left for inspection)."""
        if self.temporary:
            shutil.rmtree(self.path, ignore_errors=True)


def prepare(path: Path | None) -> Workdir:
    """A writable, empty work directory: a new temporary one, or ``path`` (empty or an earlier demo's)."""
    if path is None:
        try:
            made = Path(tempfile.mkdtemp(prefix="coldtrace-demo-"))
        except OSError as exc:
            raise WorkdirUnusable(Path(tempfile.gettempdir()), exc.strerror or str(exc)) from exc
        workdir = Workdir(made, temporary=True)
    else:
        workdir = Workdir(path.resolve(), temporary=False)
    try:
        workdir.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        entries = [p for p in workdir.path.iterdir() if p.name != MARKER]
        if entries and not (workdir.path / MARKER).is_file():
            raise WorkdirUnusable(workdir.path, "it is not empty and was not made by an earlier demo")
        for entry in entries:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        (workdir.path / MARKER).write_text("made by coldtrace demo; its contents are replaced on each run\n")
        workdir.path.chmod(0o700)
    except OSError as exc:
        raise WorkdirUnusable(workdir.path, exc.strerror or str(exc)) from exc
    return workdir


@dataclass(frozen=True, slots=True)
class DemoPki:
    """The throwaway PKI and every identity the demo's components present."""

    pki: Pki
    server: IssuedIdentity
    ingest: IssuedIdentity
    loadgen: IssuedIdentity
    gateways: dict[str, IssuedIdentity]
    agents: dict[str, IssuedIdentity]


def make_pki(workdir: Workdir, gateway_ids: list[str]) -> DemoPki:
    """Create the CA and issue the server, service and gateway certificates."""
    try:
        # Leaves must expire before their issuer: a 30-day leaf issued a moment after a 30-day CA would not.
        pki = Pki.init(workdir.pki_dir, org="coldtrace demo", root_days=90, issuing_days=60)
        server = pki.issue(
            Role.SERVER, SERVER_NAME, days=30, dns_names=["localhost"], ip_addresses=["127.0.0.1"]
        )
        return DemoPki(
            pki=pki,
            server=server,
            ingest=pki.issue(Role.SERVICE, INGEST_IDENTITY, days=30),
            loadgen=pki.issue(Role.SERVICE, LOADGEN_IDENTITY, days=30),
            gateways={g: pki.issue(Role.GATEWAY, g, days=30) for g in gateway_ids},
            agents={g: pki.issue(Role.SERVICE, agent_identity(g), days=30) for g in gateway_ids},
        )
    except (OSError, PkiPermissionError) as exc:
        raise WorkdirUnusable(workdir.pki_dir, str(exc)) from exc


def write_signing_key(path: Path) -> Ed25519PrivateKey:
    """A new Ed25519 batch-signing key, written PKCS8 PEM with mode 0600 (never printed)."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
    except OSError as exc:
        raise WorkdirUnusable(path.parent, exc.strerror or str(exc)) from exc
    return key
