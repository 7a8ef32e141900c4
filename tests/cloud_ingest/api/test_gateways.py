"""``/v1/gateways`` and ``/v1/devices``: signing keys, revocation, chain gaps, device state."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi.testclient import TestClient
from sqlalchemy import Engine, insert, select

from cloud_ingest.db.tables import chain_gaps, devices, gateway_keys
from cloud_ingest.keys import Role
from coldtrace.contract import key_id_of
from tests.cloud_ingest.api.conftest import FakeClock, Seed

Auth = dict[Role, dict[str, str]]


def _raw_b64(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def _pem(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def test_register_a_gateway_key_raw_or_pem(
    client: TestClient, auth: Auth, seed: Seed, clock: FakeClock
) -> None:
    first, second = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    answer = client.post(
        "/v1/gateways",
        json={"gateway_id": "gw-1", "site_id": "site-1", "public_key": _raw_b64(first)},
        headers=auth[Role.ADMIN],
    )
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert (body["gateway_id"], body["site_id"], body["status"], body["created_ms"]) == (
        "gw-1",
        "site-1",
        "active",
        clock(),
    )
    assert body["keys"] == [
        {"key_id": key_id_of(first.public_key()).hex(), "created_ms": clock(), "revoked_ms": None}
    ]
    stored = seed.rows(select(gateway_keys))
    assert stored[0].public_key == first.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    clock.advance(1000)
    rotated = client.post(
        "/v1/gateways", json={"gateway_id": "gw-1", "public_key": _pem(second)}, headers=auth[Role.ADMIN]
    )
    assert rotated.status_code == 201
    assert [k["key_id"] for k in rotated.json()["keys"]] == [
        key_id_of(first.public_key()).hex(),
        key_id_of(second.public_key()).hex(),
    ]
    listed = client.get("/v1/gateways", headers=auth[Role.AUDITOR]).json()["items"]
    assert [g["gateway_id"] for g in listed] == ["gw-1"]


def test_register_refuses_keys_of_other_gateways_and_bad_keys(client: TestClient, auth: Auth) -> None:
    key = Ed25519PrivateKey.generate()
    client.post(
        "/v1/gateways",
        json={"gateway_id": "gw-1", "site_id": "site-1", "public_key": _raw_b64(key)},
        headers=auth[Role.ADMIN],
    )
    reused = client.post(
        "/v1/gateways", json={"gateway_id": "gw-2", "public_key": _pem(key)}, headers=auth[Role.ADMIN]
    )
    assert reused.status_code == 409
    assert "gw-1" in reused.json()["detail"]
    same = client.post(
        "/v1/gateways", json={"gateway_id": "gw-1", "public_key": _pem(key)}, headers=auth[Role.ADMIN]
    )
    assert same.status_code == 201
    assert len(same.json()["keys"]) == 1
    rsa_pem = (
        generate_private_key(65537, 2048)
        .public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    for public_key in [
        base64.b64encode(b"\x01" * 31).decode(),
        "not base64!",
        rsa_pem.decode(),
        "-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----",
        "",
    ]:
        answer = client.post(
            "/v1/gateways", json={"gateway_id": "gw-3", "public_key": public_key}, headers=auth[Role.ADMIN]
        )
        assert answer.status_code == 422, public_key
    assert (
        client.post(
            "/v1/gateways", json={"gateway_id": "gw 3", "public_key": _raw_b64(key)}, headers=auth[Role.ADMIN]
        ).status_code
        == 422
    )


def test_revoke_a_gateway_and_its_keys(client: TestClient, auth: Auth, clock: FakeClock) -> None:
    client.post(
        "/v1/gateways",
        json={"gateway_id": "gw-1", "public_key": _raw_b64(Ed25519PrivateKey.generate())},
        headers=auth[Role.ADMIN],
    )
    clock.advance(10_000)
    revoked = client.post("/v1/gateways/gw-1/revoke", headers=auth[Role.ADMIN])
    assert revoked.status_code == 200
    assert (revoked.json()["status"], revoked.json()["revoked_ms"]) == ("revoked", clock())
    assert [k["revoked_ms"] for k in revoked.json()["keys"]] == [clock()]
    assert client.post("/v1/gateways/gw-1/revoke", headers=auth[Role.ADMIN]).status_code == 409
    again = client.post(
        "/v1/gateways",
        json={"gateway_id": "gw-1", "public_key": _raw_b64(Ed25519PrivateKey.generate())},
        headers=auth[Role.ADMIN],
    )
    assert again.status_code == 409
    assert client.post("/v1/gateways/gw-9/revoke", headers=auth[Role.ADMIN]).status_code == 404


def test_only_open_chain_gaps_are_shown(client: TestClient, auth: Auth, seed: Seed, engine: Engine) -> None:
    seed.gateway("gw-1")
    with engine.begin() as conn:
        conn.execute(
            insert(chain_gaps),
            [
                {
                    "gateway_id": "gw-1",
                    "seq_from": 5,
                    "seq_to": 7,
                    "detected_ms": 1,
                    "filled_ms": 2,
                    "alert_id": None,
                },
                {
                    "gateway_id": "gw-1",
                    "seq_from": 12,
                    "seq_to": 12,
                    "detected_ms": 3,
                    "filled_ms": None,
                    "alert_id": None,
                },
            ],
        )
    body = client.get("/v1/gateways/gw-1", headers=auth[Role.OPERATOR]).json()
    assert body["open_gaps"] == [{"seq_from": 12, "seq_to": 12, "detected_ms": 3, "alert_id": None}]
    assert (body["head_seq"], body["batches_accepted"], body["readings_accepted"], body["last_seen_ms"]) == (
        0,
        0,
        0,
        None,
    )
    assert client.get("/v1/gateways/gw-9", headers=auth[Role.OPERATOR]).status_code == 404


def _device(engine: Engine, device_id: str, gateway_id: str, site_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(devices).values(
                device_id=device_id, gateway_id=gateway_id, site_id=site_id, last_seen_ms=2_000,
                last_t_device_ms=1_900, last_seq=41, battery_v=3.1, temperature_c=4.2, clock="skewed",
                clock_skew_ms=-7_000, firmware="2.4.1", readings_total=42,
            )
        )  # fmt: skip


def test_devices_list_filter_and_read(client: TestClient, auth: Auth, engine: Engine) -> None:
    _device(engine, "d-1", "gw-1", "site-1")
    _device(engine, "d-2", "gw-2", "site-1")
    _device(engine, "d-3", "gw-2", "site-2")

    def ids(**params: str) -> list[str]:
        return [
            d["device_id"]
            for d in client.get("/v1/devices", params=params, headers=auth[Role.AUDITOR]).json()["items"]
        ]

    assert ids() == ["d-1", "d-2", "d-3"]
    assert ids(gateway_id="gw-2") == ["d-2", "d-3"]
    assert ids(site="site-1") == ["d-1", "d-2"]
    assert ids(gateway_id="gw-2", site="site-1") == ["d-2"]
    device = client.get("/v1/devices/d-1", headers=auth[Role.QUALITY]).json()
    assert device == {
        "device_id": "d-1", "gateway_id": "gw-1", "site_id": "site-1", "last_seen_ms": 2_000,
        "last_t_device_ms": 1_900, "last_seq": 41, "battery_v": 3.1, "temperature_c": 4.2,
        "firmware": "2.4.1", "clock": "skewed", "clock_skew_ms": -7_000, "readings_total": 42,
    }  # fmt: skip
    assert client.get("/v1/devices/d-9", headers=auth[Role.QUALITY]).status_code == 404
