"""OAuth2 access tokens (JWT, ES256) are accepted beside API keys, with the same role checks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from cloud_ingest.api import create_app
from cloud_ingest.settings import CloudSettings, OAuthSettings

ISSUER = "https://idp.example/realms/coldtrace"
AUDIENCE = "coldtrace-api"


@pytest.fixture
def provider_key(tmp_path: Path) -> tuple[ec.EllipticCurvePrivateKey, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "idp.pub.pem"
    path.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return key, path


@pytest.fixture
def client(engine: Engine, provider_key: tuple[ec.EllipticCurvePrivateKey, Path]) -> TestClient:
    oauth = OAuthSettings(issuer=ISSUER, audience=AUDIENCE, public_key_files=(provider_key[1],))
    return TestClient(create_app(engine=engine, settings=CloudSettings(oauth=oauth)))


def token(key: ec.EllipticCurvePrivateKey, **overrides: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER, "aud": AUDIENCE, "sub": "u-42", "preferred_username": "qa.lead",
        "coldtrace_role": "quality", "iat": now, "exp": now + 300, **overrides,
    }  # fmt: skip
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, key, algorithm="ES256")


def get(client: TestClient, bearer: str) -> int:
    return client.get("/v1/alerts", headers={"Authorization": f"Bearer {bearer}"}).status_code


def test_a_valid_token_is_a_principal_with_its_role(
    client: TestClient, provider_key: tuple[ec.EllipticCurvePrivateKey, Path]
) -> None:
    key = provider_key[0]
    assert get(client, token(key)) == 200
    # The role claim decides: an auditor may read but not place holds.
    auditor = token(key, coldtrace_role="auditor")
    assert get(client, auditor) == 200
    placed = client.post(
        "/v1/holds", json={"subject_type": "lot", "subject_id": "L", "reason": "x"},
        headers={"Authorization": f"Bearer {auditor}"},
    )  # fmt: skip
    assert placed.status_code == 403


@pytest.mark.parametrize(
    "overrides",
    [
        {"exp": int(time.time()) - 3600},
        {"aud": "someone-else"},
        {"iss": "https://evil.example"},
        {"coldtrace_role": "superuser"},
        {"coldtrace_role": None},
        {"sub": None},
    ],
)
def test_a_bad_token_is_refused(
    client: TestClient, provider_key: tuple[ec.EllipticCurvePrivateKey, Path], overrides: dict[str, Any]
) -> None:
    assert get(client, token(provider_key[0], **overrides)) == 401


def test_a_token_signed_by_another_key_is_refused(client: TestClient) -> None:
    assert get(client, token(ec.generate_private_key(ec.SECP256R1()))) == 401
