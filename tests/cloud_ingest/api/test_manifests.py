"""``/v1/manifests``: a new version is stored with its bindings, shipments and lots, then published."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from cloud_ingest.api import create_app
from cloud_ingest.db.tables import bindings, lots, manifests, shipments
from cloud_ingest.keys import Role
from cloud_ingest.settings import CloudSettings
from coldtrace.contract import Manifest, canonical_bytes
from tests.cloud_ingest.api.conftest import FakeClock, RecordingPublisher, Seed

Auth = dict[Role, dict[str, str]]
ISSUED_MS = 1_750_000_000_000


def _manifest(version: int = 1, gateway_id: str = "gw-1", site_id: str = "site-1") -> dict[str, Any]:
    return {
        "devices": [
            {
                "device_id": "d-1",
                "bindings": [
                    {
                        "lot_ids": ["lot-1", "lot-2"],
                        "profile": "vaccines",
                        "shipment_id": "s-1",
                        "valid_from_ms": 1_000,
                        "valid_to_ms": 5_000,
                    },
                    {"lot_ids": ["lot-3"], "profile": "frozen", "shipment_id": "s-2", "valid_from_ms": 5_000},
                ],
            },
            {
                "device_id": "d-2",
                "bindings": [{"lot_ids": ["lot-4"], "profile": "fresh-produce", "valid_from_ms": 0}],
            },
            {"device_id": "d-3", "bindings": []},
        ],
        "gateway_id": gateway_id,
        "issued_ms": ISSUED_MS,
        "site_id": site_id,
        "version": version,
    }


def test_a_manifest_is_stored_bound_and_published(
    client: TestClient, auth: Auth, seed: Seed, publisher: RecordingPublisher, clock: FakeClock
) -> None:
    seed.gateway("gw-1")
    seed.shipment("s-2", profile="frozen")
    seed.lot("lot-3", "s-2", quantity=40, profile="frozen")
    answer = client.post("/v1/manifests", json=_manifest(), headers=auth[Role.OPERATOR])
    assert answer.status_code == 201, answer.text
    assert answer.json() == {
        "gateway_id": "gw-1", "version": 1, "site_id": "site-1", "issued_ms": ISSUED_MS,
        "created_by": "operator-user", "published_ms": clock(),
    }  # fmt: skip
    expected_body = canonical_bytes(Manifest.model_validate_json(orjson.dumps(_manifest())))
    assert publisher.sent == [("gw-1", expected_body)]

    stored = seed.rows(select(manifests))
    assert [(m.gateway_id, m.version, m.body, m.published_ms) for m in stored] == [
        ("gw-1", 1, expected_body, clock())
    ]
    rows = seed.rows(select(bindings).order_by(bindings.c.device_id, bindings.c.valid_from_ms))
    assert [
        (b.device_id, b.shipment_id, b.lot_ids, b.profile, b.valid_from_ms, b.valid_to_ms) for b in rows
    ] == [
        ("d-1", "s-1", "lot-1,lot-2", "vaccines", 1_000, 5_000),
        ("d-1", "s-2", "lot-3", "frozen", 5_000, None),
        ("d-2", None, "lot-4", "fresh-produce", 0, None),
    ]
    assert {b.manifest_version for b in rows} == {1}
    assert {(s.shipment_id, s.profile) for s in seed.rows(select(shipments))} == {
        ("s-1", "vaccines"),
        ("s-2", "frozen"),
    }
    assert sorted(
        (lot.lot_id, lot.shipment_id, lot.profile, lot.quantity) for lot in seed.rows(select(lots))
    ) == [
        ("lot-1", "s-1", "vaccines", 0),
        ("lot-2", "s-1", "vaccines", 0),
        ("lot-3", "s-2", "frozen", 40),  # known before: left as the ERP registered it
        ("lot-4", None, "fresh-produce", 0),
    ]

    detail = client.get("/v1/manifests/gw-1/1", headers=auth[Role.AUDITOR]).json()
    assert detail["manifest"] == orjson.loads(expected_body)
    assert detail["published_ms"] == clock()
    assert client.get("/v1/manifests/gw-1/2", headers=auth[Role.AUDITOR]).status_code == 404


def test_only_a_higher_version_is_accepted(
    client: TestClient, auth: Auth, seed: Seed, publisher: RecordingPublisher
) -> None:
    seed.gateway("gw-1")
    assert client.post("/v1/manifests", json=_manifest(3), headers=auth[Role.ADMIN]).status_code == 201
    for version in (3, 2):
        stale = client.post("/v1/manifests", json=_manifest(version), headers=auth[Role.OPERATOR])
        assert stale.status_code == 409
        assert stale.json()["error"] == "conflict"
        assert "version 3" in stale.json()["detail"]
    assert client.post("/v1/manifests", json=_manifest(4), headers=auth[Role.OPERATOR]).status_code == 201
    assert [version for _, version in [(g, orjson.loads(b)["version"]) for g, b in publisher.sent]] == [3, 4]
    listed = client.get("/v1/manifests", params={"gateway_id": "gw-1"}, headers=auth[Role.QUALITY]).json()
    assert [m["version"] for m in listed["items"]] == [3, 4]


def test_the_gateway_must_be_registered_active_and_at_the_site(
    client: TestClient, auth: Auth, seed: Seed
) -> None:
    assert client.post("/v1/manifests", json=_manifest(), headers=auth[Role.OPERATOR]).status_code == 404
    seed.gateway("gw-1", site_id="site-9")
    assert client.post("/v1/manifests", json=_manifest(), headers=auth[Role.OPERATOR]).status_code == 409
    seed.gateway("gw-2", status="revoked")
    assert (
        client.post(
            "/v1/manifests", json=_manifest(gateway_id="gw-2"), headers=auth[Role.OPERATOR]
        ).status_code
        == 409
    )
    assert seed.rows(select(manifests)) == []


def test_malformed_manifests_are_422_and_store_nothing(
    client: TestClient, auth: Auth, seed: Seed, publisher: RecordingPublisher
) -> None:
    seed.gateway("gw-1")
    overlapping = _manifest()
    overlapping["devices"][0]["bindings"][1]["valid_from_ms"] = 4_000
    unsorted_lots = _manifest()
    unsorted_lots["devices"][0]["bindings"][0]["lot_ids"] = ["lot-2", "lot-1"]
    cases: list[tuple[bytes, str]] = [
        (b"", ""),
        (b"{not json", ""),
        (b"[]", ""),
        (orjson.dumps({**_manifest(), "version": "2"}), "version"),
        (orjson.dumps({**_manifest(), "version": 0}), "version"),
        (orjson.dumps({**_manifest(), "colour": "red"}), "colour"),
        (orjson.dumps({k: v for k, v in _manifest().items() if k != "site_id"}), "site_id"),
        (orjson.dumps({**_manifest(), "gateway_id": "gw/1"}), "gateway_id"),
        (orjson.dumps(overlapping), "bindings"),
        (orjson.dumps(unsorted_lots), "lot_ids"),
    ]
    for raw, field in cases:
        answer = client.post(
            "/v1/manifests", content=raw, headers={**auth[Role.OPERATOR], "Content-Type": "application/json"}
        )
        assert answer.status_code == 422, raw
        locations = [error["loc"] for error in answer.json()["detail"]]
        assert all(loc[0] == "body" for loc in locations)
        assert any(field in map(str, loc) for loc in locations) or not field, (raw, locations)
    assert seed.rows(select(manifests)) == []
    assert publisher.sent == []


def test_a_failed_publish_keeps_the_manifest_for_a_retry(
    client: TestClient, auth: Auth, seed: Seed, publisher: RecordingPublisher, clock: FakeClock
) -> None:
    seed.gateway("gw-1")
    publisher.fail = True
    answer = client.post("/v1/manifests", json=_manifest(), headers=auth[Role.OPERATOR])
    assert answer.status_code == 201
    assert answer.json()["published_ms"] is None
    assert client.post("/v1/manifests/gw-1/1/publish", headers=auth[Role.OPERATOR]).status_code == 503

    publisher.fail = False
    clock.advance(5_000)
    retried = client.post("/v1/manifests/gw-1/1/publish", headers=auth[Role.ADMIN])
    assert retried.status_code == 200
    assert retried.json()["published_ms"] == clock()
    assert [g for g, _ in publisher.sent] == ["gw-1"]
    assert seed.rows(select(manifests.c.published_ms)) == [(clock(),)]

    assert client.post("/v1/manifests", json=_manifest(2), headers=auth[Role.OPERATOR]).status_code == 201
    older = client.post("/v1/manifests/gw-1/1/publish", headers=auth[Role.OPERATOR])
    assert older.status_code == 409
    assert client.post("/v1/manifests/gw-1/7/publish", headers=auth[Role.OPERATOR]).status_code == 404


def test_without_a_publisher_manifests_are_stored_only(
    engine: Engine, clock: FakeClock, auth: Auth, seed: Seed
) -> None:
    seed.gateway("gw-1")
    app = create_app(engine=engine, settings=CloudSettings(), now_ms=clock)
    with TestClient(app) as client:
        answer = client.post("/v1/manifests", json=_manifest(), headers=auth[Role.OPERATOR])
        assert answer.status_code == 201
        assert answer.json()["published_ms"] is None
        assert client.post("/v1/manifests/gw-1/1/publish", headers=auth[Role.OPERATOR]).status_code == 503
