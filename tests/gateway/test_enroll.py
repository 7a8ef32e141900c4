"""``coldtrace gateway enroll`` against a real cloud API (uvicorn on loopback) and a real PKI.

The flow: an admin opens an enrollment, the gateway submits its CSR and signing key, the admin
approves, the gateway installs its certificate; then the installed identity completes mutual TLS with
Mosquitto as the gateway, and the cloud verifies a batch the gateway signs with its new key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import Engine, select
from typer.testing import CliRunner, Result

from certs.pki import IssuedIdentity, Pki, Role
from cloud_ingest.api import create_app
from cloud_ingest.api.routes.enrollments import enrollment_router
from cloud_ingest.db.engine import open_database
from cloud_ingest.db.tables import enrollments, gateways
from cloud_ingest.keys import Role as KeyRole
from cloud_ingest.keys import create_key
from cloud_ingest.settings import CloudSettings
from cloud_ingest.verify import KeyRing, verify
from coldtrace.cli import app
from coldtrace.contract.limits import DEFAULT_LIMITS
from coldtrace.exitcodes import ExitCode
from coldtrace.mqtt import BrokerUrl, MqttClient, PublishRefused, TlsFiles
from edge_agent.agent import load_signing_key
from gateway.enroll import (
    CloudEnrollment,
    EnrollError,
    EnrollUsage,
    GatewayFiles,
    install_certificate,
    prepare,
)
from tests.cloud_ingest.builders import T0, GatewaySim, reading
from tests.harness.mosquitto import Mosquitto
from tests.harness.ports import LOOPBACK

_runner = CliRunner()


def cli(argv: list[str], **kwargs: Any) -> Result:
    """Run ``coldtrace`` in-process, then give logging back its handlers.

    The root command points the root logger at the runner's stderr, which is closed once the command
    returns; the API's thread keeps logging and must not write there.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        return _runner.invoke(app, argv, **kwargs)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@dataclass
class Cloud:
    """The cloud API served on loopback, and an admin's view of it."""

    url: str
    engine: Engine
    http: httpx.Client
    admin: dict[str, str]
    operator: dict[str, str]

    def open(self, gateway_id: str, **body: Any) -> tuple[int, str]:
        answer = self.http.post(
            "/v1/enrollments", json={"gateway_id": gateway_id, **body}, headers=self.admin
        )
        assert answer.status_code == 201, answer.text
        return answer.json()["id"], answer.json()["token"]

    def approve(self, enrollment_id: int, **body: Any) -> httpx.Response:
        return self.http.post(f"/v1/enrollments/{enrollment_id}/approve", json=body, headers=self.admin)

    def view(self, enrollment_id: int) -> dict[str, Any]:
        answer = self.http.get(f"/v1/enrollments/{enrollment_id}", headers=self.admin)
        assert answer.status_code == 200, answer.text
        view: dict[str, Any] = answer.json()
        return view


@contextlib.contextmanager
def serve_cloud(pki_dir: Path, db_path: Path, *, https: IssuedIdentity | None = None) -> Iterator[Cloud]:
    """``create_app`` with the enrollment routes, served by uvicorn on an ephemeral loopback port.

    With ``https`` (a server identity of the PKI in ``pki_dir``) the API speaks HTTPS only.
    """
    engine = open_database(f"sqlite:///{db_path}")
    with engine.begin() as conn:
        admin = create_key(conn, role=KeyRole.ADMIN, name="admin-user", now_ms=T0).key
        operator = create_key(conn, role=KeyRole.OPERATOR, name="operator-user", now_ms=T0).key
    api = create_app(engine=engine, settings=CloudSettings(), extra_routers=[enrollment_router(pki_dir)])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOOPBACK, 0))
    sock.listen()  # connections queue in the backlog until uvicorn accepts: no start-up race
    url = f"{'https' if https else 'http'}://{LOOPBACK}:{sock.getsockname()[1]}"
    tls: dict[str, Any] = {}
    if https is not None:
        tls = {"ssl_certfile": str(https.chain_path), "ssl_keyfile": str(https.key_path)}
    server = uvicorn.Server(uvicorn.Config(api, log_config=None, lifespan="off", access_log=False, **tls))
    # A thread, not a task: the CLI under test blocks its caller, so the server needs a loop of its own.
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="cloud-api", daemon=True)
    thread.start()
    try:
        trust = ssl.create_default_context(cafile=str(pki_dir / "ca-bundle.pem"))
        with httpx.Client(base_url=url, timeout=10, verify=trust) as http:
            yield Cloud(
                url=url,
                engine=engine,
                http=http,
                admin={"Authorization": f"Bearer {admin}"},
                operator={"Authorization": f"Bearer {operator}"},
            )
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        engine.dispose()


@pytest.fixture
def own_pki(tmp_path: Path) -> Pki:
    return Pki.init(tmp_path / "pki")


@pytest.fixture
def cloud(own_pki: Pki, tmp_path: Path) -> Iterator[Cloud]:
    with serve_cloud(own_pki.directory, tmp_path / "cloud.db") as served:
        yield served


def enroll(
    cloud: Cloud, enrollment_id: int, token: str, gateway_id: str, directory: Path, *extra: str
) -> Any:
    """``coldtrace gateway enroll`` in cloud mode, the token passed the recommended way (environment)."""
    argv = [
        "gateway", "enroll", "--gateway-id", gateway_id, "--dir", str(directory), "--cloud-url", cloud.url,
        "--enrollment-id", str(enrollment_id), *extra,
    ]  # fmt: skip
    return cli(argv, env={"COLDTRACE_ENROLL_TOKEN": token})


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_installed(files: GatewayFiles, gateway_id: str, pki: Pki) -> None:
    assert mode(files.directory) == 0o700
    for key in (files.tls_key, files.signing_key):
        assert mode(key) == 0o600
        assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    for public in (files.csr, files.cert, files.chain, files.ca_bundle, files.signing_pub):
        assert mode(public) == 0o644
    leaf, issuing = x509.load_pem_x509_certificates(files.chain.read_bytes())
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == gateway_id
    assert x509.load_pem_x509_certificate(files.cert.read_bytes()) == leaf
    assert files.ca_bundle.read_bytes() == pki.ca_bundle_path.read_bytes()
    assert issuing == x509.load_pem_x509_certificate(pki.issuing_cert_path.read_bytes())
    assert pki.info(Role.GATEWAY, gateway_id).serial == leaf.serial_number
    # The CA never held the private key.
    assert not (pki.directory / "issued" / "gateway" / gateway_id / "key.pem").exists()


def assert_secrets_not_shown(output: str, files: GatewayFiles, token: str | None = None) -> None:
    assert "PRIVATE KEY" not in output
    for key in (files.tls_key, files.signing_key):
        body = "".join(key.read_text().splitlines()[1:-1])
        assert body[:40] not in output.replace("\n", "")
    if token is not None:
        assert token not in output


async def talk_as_gateway(broker: Mosquitto, files: GatewayFiles, gateway_id: str) -> None:
    """Connect with the installed identity; the broker's ACL confines it to its own topics (CN = username)."""
    client = MqttClient(
        client_id=gateway_id,
        broker=BrokerUrl(host=broker.host, port=broker.port, tls=True),
        tls=TlsFiles(ca_file=files.ca_bundle, cert_file=files.chain, key_file=files.tls_key),
    )
    await client.connect()
    try:
        await client.publish(f"ct/v1/gw/{gateway_id}/status", b"online", qos=1)
        with pytest.raises(PublishRefused):
            await client.publish("ct/v1/gw/gw-someone-else/status", b"forged", qos=1)
    finally:
        await client.disconnect()


# --- the whole path ------------------------------------------------------------------------------------


@pytest.mark.services
def test_enrolled_gateway_speaks_mutual_tls_and_the_cloud_verifies_its_batches(
    pki: Pki, mosquitto_tls: Mosquitto, tmp_path: Path
) -> None:
    # The session PKI refuses a second live certificate per name: a name of our own.
    gateway_id = f"gw-enrol-{secrets.token_hex(4)}"
    files = GatewayFiles(tmp_path / "tls")
    with serve_cloud(pki.directory, tmp_path / "cloud.db") as cloud:
        enrollment_id, token = cloud.open(gateway_id, ttl_s=600)

        submitted = enroll(cloud, enrollment_id, token, gateway_id, files.directory)
        assert submitted.exit_code == 0, submitted.output
        assert "submitted to enrollment" in submitted.output
        assert not files.chain.exists()
        view = cloud.view(enrollment_id)
        assert view["status"] == "submitted"
        # What the gateway printed is what the admin compares before approving.
        assert view["tls_key_sha256"] in submitted.output
        assert view["signing_key_id"] in submitted.output

        approved = cloud.approve(enrollment_id, site_id="site-e2e")
        assert approved.status_code == 200, approved.text

        installed = enroll(cloud, enrollment_id, token, gateway_id, files.directory, "--wait")
        assert installed.exit_code == 0, installed.output
        assert "keys reused" in installed.output
        assert f'signing_key = "{files.signing_key}"' in installed.output
        assert f'cert_file = "{files.chain}"' in installed.output
        assert "[cloud]" in installed.output
        assert_secrets_not_shown(submitted.output + installed.output, files, token)
        # The token is spent.
        again = cloud.http.get(
            f"/v1/enrollments/{enrollment_id}/certificate", headers={"Authorization": f"Bearer {token}"}
        )
        assert again.status_code == 410

        with cloud.engine.begin() as conn:
            site = conn.execute(
                select(gateways.c.site_id).where(gateways.c.gateway_id == gateway_id)
            ).scalar_one()
        assert site == "site-e2e"
        assert_installed(files, gateway_id, pki)

        asyncio.run(talk_as_gateway(mosquitto_tls, files, gateway_id))

        # The key the agent will load signs a batch the cloud verifies with the key it registered.
        sim = GatewaySim(gateway_id=gateway_id, key=load_signing_key(files.signing_key))
        frame = sim.frame([reading("dev-1", 1, T0, 4.5)])
        verified = verify(
            frame,
            topic_gateway=gateway_id,
            identity=gateway_id,
            keys=KeyRing(cloud.engine),
            limits=DEFAULT_LIMITS,
        )
        assert verified.batch.gateway_id == gateway_id
        assert verified.key_id.hex() == view["signing_key_id"]


def test_wait_installs_as_soon_as_an_admin_approves(cloud: Cloud, own_pki: Pki, tmp_path: Path) -> None:
    enrollment_id, token = cloud.open("gw-wait")
    files = GatewayFiles(tmp_path / "tls")
    # A separate process, so this test can act as the admin while the command waits.
    command = [
        sys.executable, "-m", "coldtrace", "gateway", "enroll", "--gateway-id", "gw-wait", "--dir",
        str(files.directory), "--cloud-url", cloud.url, "--enrollment-id", str(enrollment_id), "--wait",
        "--poll-interval", "0.05", "--timeout", "60",
    ]  # fmt: skip
    env = {**os.environ, "COLDTRACE_ENROLL_TOKEN": token}
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    ) as proc:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # blocks until the command says it is waiting: no sleeping here
            seen.append(line)
            if line.startswith("waiting up to"):
                break
        else:
            pytest.fail("".join(seen))
        assert cloud.approve(enrollment_id).status_code == 200
        rest = proc.stdout.read()
        assert proc.wait(timeout=60) == 0, "".join(seen) + rest
    assert "enrolled gateway gw-wait" in rest
    assert_installed(files, "gw-wait", own_pki)


def test_wait_gives_up_after_its_timeout_and_the_rerun_resumes(
    cloud: Cloud, own_pki: Pki, tmp_path: Path
) -> None:
    enrollment_id, token = cloud.open("gw-slow")
    directory = tmp_path / "tls"
    late = enroll(
        cloud,
        enrollment_id,
        token,
        "gw-slow",
        directory,
        "--wait",
        "--timeout",
        "0.2",
        "--poll-interval",
        "0.05",
    )
    assert late.exit_code == ExitCode.FAILURE
    assert "not approved within 0.2 s" in late.output
    keys_before = (directory / "gateway.key").read_bytes(), (directory / "signing.key").read_bytes()
    assert cloud.approve(enrollment_id).status_code == 200
    resumed = enroll(cloud, enrollment_id, token, "gw-slow", directory, "--wait")
    assert resumed.exit_code == 0, resumed.output
    assert ((directory / "gateway.key").read_bytes(), (directory / "signing.key").read_bytes()) == keys_before
    assert_installed(GatewayFiles(directory), "gw-slow", own_pki)


def test_enrollment_over_https_trusts_the_ca_it_is_given(own_pki: Pki, tmp_path: Path) -> None:
    server = own_pki.issue(Role.SERVER, "cloud-api", ip_addresses=[LOOPBACK])
    with serve_cloud(own_pki.directory, tmp_path / "cloud.db", https=server) as cloud:
        assert cloud.url.startswith("https://")
        enrollment_id, token = cloud.open("gw-tls")
        untrusted = enroll(cloud, enrollment_id, token, "gw-tls", tmp_path / "tls")
        assert untrusted.exit_code == ExitCode.FAILURE
        assert "CERTIFICATE_VERIFY_FAILED" in untrusted.output
        ca = ["--ca-file", str(own_pki.ca_bundle_path)]
        assert enroll(cloud, enrollment_id, token, "gw-tls", tmp_path / "tls", *ca).exit_code == 0
        assert cloud.approve(enrollment_id).status_code == 200
        installed = enroll(cloud, enrollment_id, token, "gw-tls", tmp_path / "tls", *ca, "--wait")
        assert installed.exit_code == 0, installed.output
    assert_installed(GatewayFiles(tmp_path / "tls"), "gw-tls", own_pki)


# --- refusals through the CLI --------------------------------------------------------------------------


def test_a_wrong_token_is_refused_and_shown_nowhere(cloud: Cloud, tmp_path: Path) -> None:
    enrollment_id, _ = cloud.open("gw-1")
    wrong = secrets.token_urlsafe(32)
    result = enroll(cloud, enrollment_id, wrong, "gw-1", tmp_path / "tls")
    assert result.exit_code == ExitCode.FAILURE
    assert "refused (401)" in result.output
    assert wrong not in result.output


def test_a_spent_token_cannot_enrol_again(cloud: Cloud, tmp_path: Path) -> None:
    enrollment_id, token = cloud.open("gw-1")
    assert enroll(cloud, enrollment_id, token, "gw-1", tmp_path / "a").exit_code == 0
    assert cloud.approve(enrollment_id).status_code == 200
    assert enroll(cloud, enrollment_id, token, "gw-1", tmp_path / "a", "--wait").exit_code == 0
    replay = enroll(cloud, enrollment_id, token, "gw-1", tmp_path / "b", "--wait")
    assert replay.exit_code == ExitCode.FAILURE
    assert "refused (410)" in replay.output
    assert "already used" in replay.output


def test_an_expired_token_is_refused(cloud: Cloud, tmp_path: Path) -> None:
    enrollment_id, token = cloud.open("gw-1", ttl_s=60)
    with cloud.engine.begin() as conn:  # an hour later, as far as this enrollment is concerned
        conn.execute(enrollments.update().values(expires_ms=enrollments.c.created_ms - 3_600_000))
    result = enroll(cloud, enrollment_id, token, "gw-1", tmp_path / "tls")
    assert result.exit_code == ExitCode.FAILURE
    assert "refused (410)" in result.output
    assert "expired" in result.output


def test_a_gateway_id_other_than_the_enrollments_is_refused(cloud: Cloud, tmp_path: Path) -> None:
    enrollment_id, token = cloud.open("gw-1")
    result = enroll(cloud, enrollment_id, token, "gw-2", tmp_path / "tls")
    assert result.exit_code == ExitCode.FAILURE
    assert "refused (422)" in result.output
    assert "must be exactly 'gw-1'" in result.output
    assert cloud.view(enrollment_id)["status"] == "open"


def test_routes_refuse_wrong_roles_and_missing_keys(cloud: Cloud) -> None:
    enrollment_id, _ = cloud.open("gw-1")
    assert cloud.http.post("/v1/enrollments", json={"gateway_id": "gw-2"}).status_code == 401
    assert (
        cloud.http.post("/v1/enrollments", json={"gateway_id": "gw-2"}, headers=cloud.operator).status_code
        == 403
    )
    assert (
        cloud.http.post(
            f"/v1/enrollments/{enrollment_id}/approve", json={}, headers=cloud.operator
        ).status_code
        == 403
    )
    assert cloud.http.get(f"/v1/enrollments/{enrollment_id}/certificate").status_code == 401
    assert (
        cloud.http.get(f"/v1/enrollments/{enrollment_id}/certificate", headers=cloud.admin).status_code == 401
    )


def test_an_unreadable_ca_file_is_a_usage_error(cloud: Cloud, tmp_path: Path) -> None:
    enrollment_id, token = cloud.open("gw-1")
    result = enroll(
        cloud, enrollment_id, token, "gw-1", tmp_path / "tls", "--ca-file", str(tmp_path / "nope.pem")
    )
    assert result.exit_code == ExitCode.USAGE
    assert "cannot use --ca-file" in result.output


def test_plain_http_beyond_loopback_is_refused_before_any_key_exists(tmp_path: Path) -> None:
    argv = [
        "gateway", "enroll", "--gateway-id", "gw-1", "--dir", str(tmp_path / "tls"), "--cloud-url",
        "http://cloud.example.com", "--enrollment-id", "1",
    ]  # fmt: skip
    result = cli(argv, env={"COLDTRACE_ENROLL_TOKEN": "t"})
    assert result.exit_code == ExitCode.USAGE
    assert "use https://" in result.output
    assert not (tmp_path / "tls").exists()


@pytest.mark.parametrize(
    "argv",
    [
        [],  # neither mode
        ["--offline", "--cloud-url", "https://cloud.example.com", "--enrollment-id", "1"],  # both
        ["--cloud-url", "https://cloud.example.com"],  # no enrollment id
    ],
)
def test_the_mode_must_be_clear(tmp_path: Path, argv: list[str]) -> None:
    result = cli(["gateway", "enroll", "--gateway-id", "gw-1", "--dir", str(tmp_path), *argv])
    assert result.exit_code == ExitCode.USAGE


def test_the_token_is_asked_for_without_echo_when_not_given(cloud: Cloud, tmp_path: Path) -> None:
    enrollment_id, token = cloud.open("gw-1")
    argv = [
        "gateway", "enroll", "--gateway-id", "gw-1", "--dir", str(tmp_path / "tls"), "--cloud-url", cloud.url,
        "--enrollment-id", str(enrollment_id),
    ]  # fmt: skip
    result = cli(argv, input=f"{token}\n", env={"COLDTRACE_ENROLL_TOKEN": None})
    assert result.exit_code == 0, result.output
    assert "enrollment token" in result.output
    assert token not in result.output


def test_a_redirect_is_not_followed(tmp_path: Path) -> None:
    # A listener that answers every request with a redirect elsewhere: the token must not follow it.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOOPBACK, 0))
    sock.listen()
    port = sock.getsockname()[1]

    def answer_once() -> None:
        conn, _ = sock.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.2:9/x\r\n"
                b"Content-Length: 0\r\n\r\n"
            )

    thread = threading.Thread(target=answer_once, name="redirector", daemon=True)
    thread.start()
    try:
        cloud = CloudEnrollment(
            base_url=f"http://{LOOPBACK}:{port}", enrollment_id=1, token=secrets.token_urlsafe(32)
        )
        keys = prepare(GatewayFiles(tmp_path / "tls"), "gw-1")
        with pytest.raises(EnrollError, match="refused \\(307\\)"):
            cloud.submit(keys)
    finally:
        thread.join(timeout=10)
        sock.close()


# --- offline -------------------------------------------------------------------------------------------


def test_offline_enrollment_signs_with_a_local_pki(own_pki: Pki, tmp_path: Path) -> None:
    files = GatewayFiles(tmp_path / "tls")
    argv = [
        "gateway", "enroll", "--gateway-id", "gw-site", "--dir", str(files.directory), "--offline",
        "--pki-dir", str(own_pki.directory),
    ]  # fmt: skip
    result = cli(argv)
    assert result.exit_code == 0, result.output
    assert_installed(files, "gw-site", own_pki)
    assert f"coldtrace cloud gateways register gw-site {files.signing_pub}" in result.output
    assert_secrets_not_shown(result.output, files)

    again = cli(argv)
    assert again.exit_code == ExitCode.USAGE
    assert "--force" in again.output
    old_key = files.tls_key.read_bytes()
    old_serial = own_pki.info(Role.GATEWAY, "gw-site").serial
    forced = cli([*argv, "--force"])
    assert forced.exit_code == 0, forced.output
    assert files.tls_key.read_bytes() != old_key
    assert own_pki.crl_info().revoked_serials == (old_serial,)
    assert_installed(files, "gw-site", own_pki)


def test_offline_without_a_pki_says_how_to_make_one(tmp_path: Path) -> None:
    argv = [
        "gateway", "enroll", "--gateway-id", "gw-site", "--dir", str(tmp_path / "tls"), "--offline",
        "--pki-dir", str(tmp_path / "none"),
    ]  # fmt: skip
    result = cli(argv)
    assert result.exit_code == ExitCode.USAGE
    assert "coldtrace certs init" in result.output


def test_offline_refuses_a_name_the_pki_gave_another_role(own_pki: Pki, tmp_path: Path) -> None:
    own_pki.issue(Role.DEVICE, "gw-site")
    files = GatewayFiles(tmp_path / "tls")
    argv = [
        "gateway", "enroll", "--gateway-id", "gw-site", "--dir", str(files.directory), "--offline",
        "--pki-dir", str(own_pki.directory), "--force",
    ]  # fmt: skip
    result = cli(argv)
    assert result.exit_code == ExitCode.USAGE
    assert "only one role" in result.output
    assert not files.chain.exists()


# --- local files ---------------------------------------------------------------------------------------


def test_keys_are_private_even_with_a_permissive_umask(tmp_path: Path) -> None:
    files = GatewayFiles(tmp_path / "tls")
    previous = os.umask(0)
    try:
        keys = prepare(files, "gw-1")
    finally:
        os.umask(previous)
    assert keys.created
    assert (mode(files.directory), mode(files.tls_key), mode(files.signing_key)) == (0o700, 0o600, 0o600)
    csr = x509.load_pem_x509_csr(files.csr.read_bytes())
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gw-1"
    public = csr.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(public.curve, ec.SECP256R1)
    assert not list(files.directory.glob("*.tmp"))


def test_existing_keys_are_reused_but_not_when_others_can_read_them(tmp_path: Path) -> None:
    files = GatewayFiles(tmp_path / "tls")
    first = prepare(files, "gw-1")
    second = prepare(files, "gw-1")
    assert not second.created
    assert (second.tls_key_sha256, second.signing_key_id) == (first.tls_key_sha256, first.signing_key_id)
    files.signing_key.chmod(0o640)
    with pytest.raises(EnrollUsage, match="chmod 600"):
        prepare(files, "gw-1")
    assert prepare(files, "gw-1", force=True).signing_key_id != first.signing_key_id
    assert mode(files.signing_key) == 0o600


def test_a_certificate_for_another_key_is_not_installed(own_pki: Pki, tmp_path: Path) -> None:
    files = GatewayFiles(tmp_path / "tls")
    keys = prepare(files, "gw-1")
    stranger = prepare(GatewayFiles(tmp_path / "other"), "gw-1")
    signed = own_pki.sign_csr(stranger.csr_pem, role=Role.GATEWAY, name="gw-1")
    with pytest.raises(EnrollError, match="not for the key"):
        install_certificate(files, keys, chain_pem=signed.chain_pem, ca_bundle_pem=signed.ca_bundle_pem)
    with pytest.raises(EnrollError, match="does not verify"):
        install_certificate(
            files,
            stranger,
            chain_pem=signed.chain_pem,
            ca_bundle_pem=Pki.init(tmp_path / "x").ca_bundle_path.read_bytes(),
        )
    assert not files.chain.exists()
