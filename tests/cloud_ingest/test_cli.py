"""``coldtrace cloud``: migrate, register and revoke a gateway against a real database file."""

from __future__ import annotations

import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import select
from typer.testing import CliRunner

from certs.pki import IssuedIdentity, Pki
from cloud_ingest.db.engine import open_database
from cloud_ingest.db.tables import gateway_keys, gateways
from coldtrace.cli import app
from coldtrace.contract.batch import key_id_of
from coldtrace.exitcodes import ExitCode
from tests.harness.ports import free_port

runner = CliRunner()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "cloud.toml"
    path.write_text(f'database_url = "sqlite:///{tmp_path / "cloud.db"}"\n')
    return path


def test_register_then_revoke_a_gateway(tmp_path: Path, config: Path) -> None:
    key = Ed25519PrivateKey.generate().public_key()
    pem = tmp_path / "gw.pub.pem"
    pem.write_bytes(key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    assert runner.invoke(app, ["cloud", "migrate", "--config", str(config)]).exit_code == 0
    result = runner.invoke(
        app, ["cloud", "gateways", "register", "gw-9", str(pem), "--site", "s1", "--config", str(config)]
    )
    assert result.exit_code == 0, result.output
    assert key_id_of(key).hex() in result.output
    result = runner.invoke(app, ["cloud", "gateways", "revoke", "gw-9", "--config", str(config)])
    assert result.exit_code == 0, result.output
    engine = open_database(f"sqlite:///{tmp_path / 'cloud.db'}")
    with engine.connect() as conn:
        assert conn.execute(select(gateways.c.status)).scalar_one() == "revoked"
        assert conn.execute(select(gateway_keys.c.revoked_ms)).scalar_one() is not None
    # A revoked gateway cannot be registered again under the same id.
    again = runner.invoke(app, ["cloud", "gateways", "register", "gw-9", str(pem), "--config", str(config)])
    assert again.exit_code == ExitCode.USAGE
    assert "revoked" in again.output


def test_a_file_that_is_no_key_is_an_input_error(tmp_path: Path, config: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("hello")
    result = runner.invoke(app, ["cloud", "gateways", "register", "gw-9", str(bad), "--config", str(config)])
    assert result.exit_code == ExitCode.INVALID_INPUT
    assert "cannot read a public key" in result.output


@pytest.mark.services
def test_serve_answers_and_stops_on_sigterm(
    tmp_path: Path, pki: Pki, server_identity: IssuedIdentity
) -> None:
    api_port, ingest_port, metrics_port = free_port(), free_port(), free_port()
    config = tmp_path / "cloud.toml"
    config.write_text(
        f'database_url = "sqlite:///{tmp_path / "cloud.db"}"\n[api]\nport = {api_port}\n'
        f"metrics_port = {metrics_port}\ningest_port = {ingest_port}\n"
        f'cert_file = "{server_identity.chain_path}"\n'
        f'key_file = "{server_identity.key_path}"\nclient_ca_file = "{pki.ca_bundle_path}"\n'
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "coldtrace", "cloud", "serve", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        context = ssl.create_default_context(cafile=str(pki.ca_bundle_path))
        with httpx.Client(verify=context, timeout=2.0) as client:
            deadline = time.monotonic() + 30
            while True:  # the server needs a moment to bind; nothing else can tell us when it has
                try:
                    response = client.get(f"https://localhost:{api_port}/healthz")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, (
                        process.stdout.read1().decode() if process.stdout else ""
                    )
                    time.sleep(0.1)
            assert response.status_code == 200
            exposition = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2.0).text
            assert 'coldtrace_api_requests_total{method="GET",route="healthz",status="200"} 1.0' in exposition
            # The ingest listener insists on a client certificate.
            with pytest.raises(httpx.TransportError):
                client.post(f"https://localhost:{ingest_port}/v1/ingest/batches", content=b"x")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
