"""``/v1/enrollments``: the token's life, the admin's decisions, and every refusal (SQLite and PostgreSQL).

The end-to-end flow with the real ``coldtrace gateway enroll`` against uvicorn, mutual TLS and batch
verification is in ``tests/gateway/test_enroll.py``; these tests drive the API with its test client.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, insert, select

from certs.pki import Pki, Role
from cloud_ingest.api import create_app
from cloud_ingest.api.routes.enrollments import enrollment_router
from cloud_ingest.db.tables import enrollments, gateway_keys, gateways, outbox_events
from cloud_ingest.enrollment import DEFAULT_TTL_MS
from cloud_ingest.keys import Role as KeyRole
from cloud_ingest.settings import CloudSettings
from coldtrace.contract.batch import key_id_of
from tests.cloud_ingest.api.conftest import FakeClock, RecordingPublisher, Seed
from tests.cloud_ingest.api.test_auth import v1_routes

Auth = dict[KeyRole, dict[str, str]]


@dataclass
class Gateway:
    """What a gateway creates locally: its TLS key, its CSR and its batch-signing key."""

    gateway_id: str
    tls_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    signing_key: ed25519.Ed25519PrivateKey = field(default_factory=ed25519.Ed25519PrivateKey.generate)
    cn: str | None = None  # the CSR's CN; the gateway id unless a test says otherwise

    def csr_pem(self) -> str:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.cn or self.gateway_id)])
        csr = (
            x509.CertificateSigningRequestBuilder().subject_name(subject).sign(self.tls_key, hashes.SHA256())
        )
        return csr.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def signing_raw(self) -> bytes:
        return self.signing_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def submission(self) -> dict[str, str]:
        return {"csr_pem": self.csr_pem(), "signing_public_key": base64.b64encode(self.signing_raw).decode()}

    @property
    def tls_fingerprint(self) -> str:
        spki = self.tls_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return hashlib.sha256(spki).hexdigest()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki.init(tmp_path / "pki")


@pytest.fixture
def app(
    engine: Engine, settings: CloudSettings, clock: FakeClock, publisher: RecordingPublisher, pki: Pki
) -> FastAPI:
    """The API with the enrollment routes, signing with a fresh PKI."""
    return create_app(
        engine=engine,
        settings=settings,
        publisher=publisher,
        now_ms=clock,
        extra_routers=[enrollment_router(pki.directory)],
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def open_enrollment(client: TestClient, auth: Auth, gateway_id: str = "gw-7", **extra: Any) -> dict[str, Any]:
    answer = client.post(
        "/v1/enrollments", json={"gateway_id": gateway_id, **extra}, headers=auth[KeyRole.ADMIN]
    )
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


def submit(client: TestClient, created: dict[str, Any], gateway: Gateway) -> Any:
    return client.post(
        f"/v1/enrollments/{created['id']}/csr", json=gateway.submission(), headers=bearer(created["token"])
    )


def approve(client: TestClient, auth: Auth, enrollment_id: int, **body: Any) -> Any:
    return client.post(f"/v1/enrollments/{enrollment_id}/approve", json=body, headers=auth[KeyRole.ADMIN])


def fetch(client: TestClient, created: dict[str, Any]) -> Any:
    return client.get(f"/v1/enrollments/{created['id']}/certificate", headers=bearer(created["token"]))


def events(seed: Seed, topic: str) -> list[dict[str, Any]]:
    rows = seed.rows(select(outbox_events).where(outbox_events.c.topic == topic))
    return [orjson.loads(row.payload) for row in rows]


# --- the flow ------------------------------------------------------------------------------------------


def test_enrollment_flow_from_token_to_certificate(
    client: TestClient, auth: Auth, pki: Pki, seed: Seed, clock: FakeClock
) -> None:
    gateway = Gateway("gw-7")
    created = open_enrollment(client, auth, ttl_s=3600)
    assert created["gateway_id"] == "gw-7"
    assert created["expires_ms"] == clock() + 3600 * 1000

    submitted = submit(client, created, gateway)
    assert submitted.status_code == 200, submitted.text
    signing_key_id = key_id_of(gateway.signing_key.public_key()).hex()
    assert submitted.json() == {
        "id": created["id"],
        "gateway_id": "gw-7",
        "status": "submitted",
        "expires_ms": created["expires_ms"],
        "tls_key_sha256": gateway.tls_fingerprint,
        "signing_key_id": signing_key_id,
    }
    pending = fetch(client, created)
    assert pending.status_code == 202
    assert pending.json()["status"] == "submitted"

    # The admin sees what to compare with the gateway's printout before approving.
    view = client.get(f"/v1/enrollments/{created['id']}", headers=auth[KeyRole.ADMIN]).json()
    assert (view["status"], view["tls_key_sha256"], view["signing_key_id"]) == (
        "submitted",
        gateway.tls_fingerprint,
        signing_key_id,
    )
    assert view["signing_public_key"] == base64.b64encode(gateway.signing_raw).decode()
    assert "token" not in view
    assert "token_hash" not in view

    approved = approve(client, auth, created["id"], site_id="site-3")
    assert approved.status_code == 200, approved.text
    assert (approved.json()["status"], approved.json()["decided_by"]) == ("approved", "admin-user")

    delivered = fetch(client, created)
    assert delivered.status_code == 200, delivered.text
    body = delivered.json()
    leaf, issuing = x509.load_pem_x509_certificates(body["chain_pem"].encode())
    assert body["ca_bundle_pem"] == pki.ca_bundle_path.read_text()
    assert body["chain_pem"] == approved.json()["chain_pem"]
    assert leaf.public_key() == gateway.tls_key.public_key()
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gw-7"
    assert set(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.CLIENT_AUTH,
        ExtendedKeyUsageOID.SERVER_AUTH,
    }
    trust = Store([x509.load_pem_x509_certificate(pki.root_cert_path.read_bytes())])
    verified = PolicyBuilder().store(trust).build_client_verifier().verify(leaf, [issuing])
    assert verified.subjects == [x509.UniformResourceIdentifier("urn:coldtrace:gateway:gw-7")]
    assert pki.info(Role.GATEWAY, "gw-7").serial == leaf.serial_number

    # The signing key is registered, in the same transaction as the approval.
    (gateway_row,) = seed.rows(select(gateways))
    assert (gateway_row.gateway_id, gateway_row.site_id, gateway_row.status) == ("gw-7", "site-3", "active")
    (key_row,) = seed.rows(select(gateway_keys))
    assert (key_row.key_id, key_row.public_key) == (signing_key_id, gateway.signing_raw)
    (event,) = events(seed, "enrollment.approved")
    assert event["gateway_id"] == "gw-7"
    assert event["signing_key_id"] == signing_key_id
    assert event["serial"] == f"{leaf.serial_number:X}"

    # The token is spent: the certificate is delivered once, and nothing else takes the token either.
    again = fetch(client, created)
    assert again.status_code == 410
    assert "already used" in again.json()["detail"]
    assert submit(client, created, gateway).status_code == 410


def test_only_the_token_hash_is_stored(client: TestClient, auth: Auth, seed: Seed) -> None:
    created = open_enrollment(client, auth)
    (row,) = seed.rows(select(enrollments))
    assert row.token_hash == hashlib.sha256(created["token"].encode()).hexdigest()
    assert created["token"] not in [str(value) for value in row]
    assert len(created["token"]) >= 43
    assert row.status == "open"
    assert row.expires_ms - row.created_ms == DEFAULT_TTL_MS


def test_a_lost_answer_is_retried_with_the_same_submission(client: TestClient, auth: Auth) -> None:
    gateway = Gateway("gw-7")
    created = open_enrollment(client, auth)
    first = submit(client, created, gateway)
    retried = submit(client, created, gateway)  # a fresh CSR (ECDSA signs randomly) of the same keys
    assert first.status_code == retried.status_code == 200
    assert retried.json() == first.json()
    for other in (
        Gateway("gw-7"),
        Gateway("gw-7", tls_key=gateway.tls_key),
        Gateway("gw-7", signing_key=gateway.signing_key),
    ):
        answer = submit(client, created, other)
        assert answer.status_code == 409
        assert "already holds other keys" in answer.json()["detail"]
    assert approve(client, auth, created["id"]).status_code == 200
    assert submit(client, created, gateway).status_code == 200  # still harmless after approval


# --- credentials and roles -----------------------------------------------------------------------------

ADMIN_ROUTES = [
    ("POST", "/v1/enrollments", {"gateway_id": "gw-9"}),
    ("GET", "/v1/enrollments/{enrollment_id}", None),
    ("POST", "/v1/enrollments/{enrollment_id}/approve", {}),
    ("POST", "/v1/enrollments/{enrollment_id}/reject", {"reason": "unknown box"}),
]
TOKEN_ROUTES = [
    ("POST", "/v1/enrollments/{enrollment_id}/csr", "submission"),
    ("GET", "/v1/enrollments/{enrollment_id}/certificate", None),
]


def test_every_route_is_in_one_of_the_two_lists(app: FastAPI) -> None:
    served = {
        (method, route.path)
        for route in v1_routes(app)
        if route.path.startswith("/v1/enrollments")
        for method in route.methods
    }
    assert served == {(method, path) for method, path, _ in [*ADMIN_ROUTES, *TOKEN_ROUTES]}


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
def test_admin_routes_refuse_missing_bad_and_wrong_role_credentials(
    client: TestClient, auth: Auth, method: str, path: str, body: dict[str, str] | None
) -> None:
    created = open_enrollment(client, auth)
    url = path.format(enrollment_id=created["id"])
    for headers in ({}, bearer("ct_00000000_" + "A" * 43), bearer(created["token"])):
        # No header, a forged key, and the enrollment token (it is not an API key).
        answer = client.request(method, url, json=body, headers=headers)
        assert answer.status_code == 401, (headers, answer.text)
        assert answer.headers["WWW-Authenticate"] == "Bearer"
    for role in (KeyRole.OPERATOR, KeyRole.QUALITY, KeyRole.AUDITOR):
        answer = client.request(method, url, json=body, headers=auth[role])
        assert answer.status_code == 403, (role, answer.text)
        assert answer.json()["error"] == "forbidden"


@pytest.mark.parametrize(("method", "path", "body"), TOKEN_ROUTES)
def test_token_routes_refuse_missing_wrong_and_api_key_credentials(
    client: TestClient, auth: Auth, seed: Seed, method: str, path: str, body: str | None
) -> None:
    created = open_enrollment(client, auth)
    other = open_enrollment(client, auth, gateway_id="gw-8")
    url = path.format(enrollment_id=created["id"])
    payload = Gateway("gw-7").submission() if body else None
    refusals = [
        {},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        bearer(created["token"][:-1] + ("A" if created["token"][-1] != "A" else "B")),
        bearer(other["token"]),  # a valid token, of another enrollment
        *(auth[role] for role in KeyRole),  # API keys, even the admin's, are not enrollment tokens
    ]
    for headers in refusals:
        answer = client.request(method, url, json=payload, headers=headers)
        assert answer.status_code == 401, (headers, answer.text)
        assert answer.headers["WWW-Authenticate"] == "Bearer"
    unknown = client.request(
        method, path.format(enrollment_id=9999), json=payload, headers=bearer(created["token"])
    )
    assert unknown.status_code == 401
    (row, _) = seed.rows(select(enrollments).order_by(enrollments.c.id))
    assert row.status == "open"


# --- token expiry, reuse and rejection -----------------------------------------------------------------


def test_an_expired_token_is_gone(client: TestClient, auth: Auth, clock: FakeClock) -> None:
    created = open_enrollment(client, auth, ttl_s=60)
    clock.advance(60_000)
    answer = submit(client, created, Gateway("gw-7"))
    assert answer.status_code == 410
    assert "expired" in answer.json()["detail"]
    assert fetch(client, created).status_code == 410


def test_an_approval_after_expiry_is_refused_and_the_fetch_too(
    client: TestClient, auth: Auth, clock: FakeClock, seed: Seed
) -> None:
    created = open_enrollment(client, auth, ttl_s=60)
    assert submit(client, created, Gateway("gw-7")).status_code == 200
    clock.advance(60_000)
    refused = approve(client, auth, created["id"])
    assert refused.status_code == 409
    assert "expired" in refused.json()["detail"]
    assert seed.rows(select(gateways)) == []
    view = client.get(f"/v1/enrollments/{created['id']}", headers=auth[KeyRole.ADMIN]).json()
    assert (view["status"], view["expired"]) == ("submitted", True)
    # Expired pending enrollments no longer block a new one for the gateway.
    open_enrollment(client, auth)


def test_a_token_expiring_between_approval_and_fetch_fetches_nothing(
    client: TestClient, auth: Auth, clock: FakeClock
) -> None:
    created = open_enrollment(client, auth, ttl_s=60)
    assert submit(client, created, Gateway("gw-7")).status_code == 200
    assert approve(client, auth, created["id"]).status_code == 200
    clock.advance(60_000)
    assert fetch(client, created).status_code == 410


def test_a_rejected_enrollment_ends_its_token(client: TestClient, auth: Auth, seed: Seed) -> None:
    created = open_enrollment(client, auth)
    assert submit(client, created, Gateway("gw-7")).status_code == 200
    rejected = client.post(
        f"/v1/enrollments/{created['id']}/reject",
        json={"reason": "  not our box  "},
        headers=auth[KeyRole.ADMIN],
    )
    assert rejected.status_code == 200, rejected.text
    assert (rejected.json()["status"], rejected.json()["decided_by"]) == ("rejected", "admin-user")
    assert events(seed, "enrollment.rejected") == [
        {
            "decided_by": "admin-user",
            "enrollment_id": created["id"],
            "gateway_id": "gw-7",
            "reason": "not our box",
        }
    ]
    gone = fetch(client, created)
    assert gone.status_code == 410
    assert "rejected" in gone.json()["detail"]
    assert submit(client, created, Gateway("gw-7")).status_code == 410
    assert approve(client, auth, created["id"]).status_code == 409
    again = client.post(
        f"/v1/enrollments/{created['id']}/reject", json={"reason": "x"}, headers=auth[KeyRole.ADMIN]
    )
    assert again.status_code == 409
    open_enrollment(client, auth)  # the gateway may be enrolled afresh


# --- what the gateway submits --------------------------------------------------------------------------


def _bad_signature(gateway: Gateway) -> dict[str, str]:
    submission = gateway.submission()
    der = bytearray(
        x509.load_pem_x509_csr(submission["csr_pem"].encode()).public_bytes(serialization.Encoding.DER)
    )
    der[-1] ^= 0x01
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()
    return {**submission, "csr_pem": tampered}


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("cn-mismatch", "must be exactly 'gw-7'"),
        ("bad-signature", "signature does not verify"),
        ("p384-key", "not ECDSA P-256"),
        ("not-a-csr", "not a PEM CSR"),
    ],
)
def test_a_csr_the_pki_would_refuse_is_refused_at_submission(
    client: TestClient, auth: Auth, seed: Seed, case: str, message: str
) -> None:
    created = open_enrollment(client, auth)
    gateway = Gateway("gw-7")
    submission = gateway.submission()
    if case == "cn-mismatch":
        submission = Gateway("gw-7", cn="gw-8").submission()
    elif case == "bad-signature":
        submission = _bad_signature(gateway)
    elif case == "p384-key":
        submission = Gateway("gw-7", tls_key=ec.generate_private_key(ec.SECP384R1())).submission()
    else:
        submission["csr_pem"] = "hello"
    answer = client.post(
        f"/v1/enrollments/{created['id']}/csr", json=submission, headers=bearer(created["token"])
    )
    assert answer.status_code == 422, answer.text
    assert message in answer.json()["detail"]
    (row,) = seed.rows(select(enrollments))
    assert (row.status, row.csr_pem, row.signing_key) == ("open", None, None)
    assert submit(client, created, gateway).status_code == 200  # the token still works for a good CSR


@pytest.mark.parametrize(
    "key", ["", "AAAA", base64.b64encode(b"x" * 33).decode(), "-----BEGIN PUBLIC KEY-----"]
)
def test_a_malformed_signing_key_is_refused(client: TestClient, auth: Auth, key: str) -> None:
    created = open_enrollment(client, auth)
    submission = {**Gateway("gw-7").submission(), "signing_public_key": key}
    answer = client.post(
        f"/v1/enrollments/{created['id']}/csr", json=submission, headers=bearer(created["token"])
    )
    assert answer.status_code == 422


@pytest.mark.parametrize("missing", ["csr_pem", "signing_public_key"])
def test_a_submission_missing_a_key_is_refused(
    client: TestClient, auth: Auth, seed: Seed, missing: str
) -> None:
    created = open_enrollment(client, auth)
    submission = Gateway("gw-7").submission()
    del submission[missing]
    answer = client.post(
        f"/v1/enrollments/{created['id']}/csr", json=submission, headers=bearer(created["token"])
    )
    assert answer.status_code == 422
    (row,) = seed.rows(select(enrollments))
    assert row.status == "open"


def test_a_signing_key_of_another_gateway_is_refused(client: TestClient, auth: Auth) -> None:
    first = Gateway("gw-7")
    created = open_enrollment(client, auth)
    assert submit(client, created, first).status_code == 200
    assert approve(client, auth, created["id"]).status_code == 200
    borrower = open_enrollment(client, auth, gateway_id="gw-8")
    answer = submit(client, borrower, Gateway("gw-8", signing_key=first.signing_key))
    assert answer.status_code == 409
    assert "gw-7" in answer.json()["detail"]


# --- the admin's side ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"gateway_id": "a/b"},
        {"gateway_id": "gw-7", "ttl_s": 59},
        {"gateway_id": "gw-7", "ttl_s": 8 * 86400},
    ],
)
def test_create_validates_its_input(client: TestClient, auth: Auth, body: dict[str, Any]) -> None:
    assert client.post("/v1/enrollments", json=body, headers=auth[KeyRole.ADMIN]).status_code == 422


def test_one_pending_enrollment_per_gateway_and_none_for_a_revoked_one(
    client: TestClient, auth: Auth, seed: Seed
) -> None:
    first = open_enrollment(client, auth)
    clash = client.post("/v1/enrollments", json={"gateway_id": "gw-7"}, headers=auth[KeyRole.ADMIN])
    assert clash.status_code == 409
    assert f"pending enrollment {first['id']}" in clash.json()["detail"]
    seed.gateway("gw-old", status="revoked")
    revoked = client.post("/v1/enrollments", json={"gateway_id": "gw-old"}, headers=auth[KeyRole.ADMIN])
    assert revoked.status_code == 409
    assert "revoked" in revoked.json()["detail"]


def test_approve_needs_a_submitted_enrollment(client: TestClient, auth: Auth) -> None:
    created = open_enrollment(client, auth)
    early = approve(client, auth, created["id"])
    assert early.status_code == 409
    assert "no CSR yet" in early.json()["detail"]
    assert approve(client, auth, 9999).status_code == 404
    assert client.get("/v1/enrollments/9999", headers=auth[KeyRole.ADMIN]).status_code == 404
    assert submit(client, created, Gateway("gw-7")).status_code == 200
    assert approve(client, auth, created["id"]).status_code == 200
    assert approve(client, auth, created["id"]).status_code == 409


def test_reenrolling_a_gateway_needs_replace_and_supersedes_its_certificate(
    client: TestClient, auth: Auth, pki: Pki, seed: Seed
) -> None:
    first = open_enrollment(client, auth)
    assert submit(client, first, Gateway("gw-7")).status_code == 200
    assert approve(client, auth, first["id"]).status_code == 200
    old_serial = pki.info(Role.GATEWAY, "gw-7").serial

    second = open_enrollment(client, auth)
    assert submit(client, second, Gateway("gw-7")).status_code == 200
    refused = approve(client, auth, second["id"])
    assert refused.status_code == 409
    assert "replace=true" in refused.json()["detail"]
    assert len(seed.rows(select(gateway_keys))) == 1  # the refusal registered nothing
    assert approve(client, auth, second["id"], replace=True).status_code == 200
    assert pki.crl_info().revoked_serials == (old_serial,)
    assert len(seed.rows(select(gateway_keys))) == 2  # rotation: the new key joins the old one


def test_approving_for_a_revoked_gateway_is_a_conflict(
    client: TestClient, auth: Auth, pki: Pki, seed: Seed
) -> None:
    created = open_enrollment(client, auth)
    assert submit(client, created, Gateway("gw-7")).status_code == 200
    with seed.engine.begin() as conn:
        conn.execute(insert(gateways).values(gateway_id="gw-7", status="revoked", created_ms=0, revoked_ms=1))
    answer = approve(client, auth, created["id"])
    assert answer.status_code == 409
    assert "revoked" in answer.json()["detail"]
    assert pki.list() == []  # refused before anything was issued


def test_the_openapi_document_describes_both_credentials(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    assert {"bearer", "enrollment-token"} <= set(document["components"]["securitySchemes"])
    submit_op = document["paths"]["/v1/enrollments/{enrollment_id}/csr"]["post"]
    assert submit_op["operationId"] == "enrollments.submit"
    assert submit_op["security"] == [{"enrollment-token": []}]
    fetch_op = document["paths"]["/v1/enrollments/{enrollment_id}/certificate"]["get"]
    assert {"200", "202", "401", "410"} <= set(fetch_op["responses"])


def test_a_name_the_pki_gave_another_role_is_a_conflict_and_nothing_is_registered(
    client: TestClient, auth: Auth, pki: Pki, seed: Seed
) -> None:
    pki.issue(Role.DEVICE, "gw-7")
    created = open_enrollment(client, auth)
    assert submit(client, created, Gateway("gw-7")).status_code == 200
    for replace in (False, True):
        answer = approve(client, auth, created["id"], replace=replace)
        assert answer.status_code == 409
        assert "only one role" in answer.json()["detail"]
    assert seed.rows(select(gateways)) == []


def test_a_missing_pki_is_503_and_the_approval_rolls_back(
    engine: Engine, settings: CloudSettings, clock: FakeClock, auth: Auth, seed: Seed, tmp_path: Path
) -> None:
    app = create_app(
        engine=engine, settings=settings, now_ms=clock, extra_routers=[enrollment_router(tmp_path / "no-pki")]
    )
    with TestClient(app) as client:
        created = open_enrollment(client, auth)
        assert submit(client, created, Gateway("gw-7")).status_code == 200
        answer = approve(client, auth, created["id"])
        assert answer.status_code == 503
        assert "coldtrace certs init" in answer.json()["detail"]
    assert seed.rows(select(gateways)) == []
    (row,) = seed.rows(select(enrollments))
    assert row.status == "submitted"
