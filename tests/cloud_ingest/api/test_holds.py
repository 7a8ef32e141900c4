"""``/v1/holds``: manual holds, and release by the quality role only, with a reason."""

from __future__ import annotations

import orjson
from fastapi.testclient import TestClient
from sqlalchemy import select

from cloud_ingest.db.tables import outbox_events
from cloud_ingest.keys import Role
from tests.cloud_ingest.api.conftest import FakeClock, Seed

Auth = dict[Role, dict[str, str]]


def _place(
    client: TestClient, auth: Auth, subject_type: str, subject_id: str, role: Role = Role.OPERATOR
) -> int:
    answer = client.post(
        "/v1/holds",
        json={"subject_type": subject_type, "subject_id": subject_id, "reason": "pallet damaged"},
        headers=auth[role],
    )
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


def test_a_shipment_hold_covers_its_lots(
    client: TestClient, auth: Auth, seed: Seed, clock: FakeClock
) -> None:
    seed.shipment("s-1")
    seed.lot("lot-b", "s-1")
    seed.lot("lot-a", "s-1")
    seed.lot("lot-other", None)
    hold_id = _place(client, auth, "shipment", "s-1")
    body = client.get(f"/v1/holds/{hold_id}", headers=auth[Role.AUDITOR]).json()
    assert body["lot_ids"] == ["lot-a", "lot-b"]
    assert (body["status"], body["source"], body["placed_by"], body["placed_ms"]) == (
        "active", "manual", "operator-user", clock()
    )  # fmt: skip
    assert body["reason"] == "pallet damaged"


def test_a_hold_needs_a_subject_the_cloud_knows(client: TestClient, auth: Auth, seed: Seed) -> None:
    seed.shipment("s-1")
    for subject_type, subject_id in [("lot", "s-1"), ("shipment", "lot-x"), ("lot", "nope")]:
        answer = client.post(
            "/v1/holds",
            json={"subject_type": subject_type, "subject_id": subject_id, "reason": "r"},
            headers=auth[Role.QUALITY],
        )
        assert answer.status_code == 404, (subject_type, subject_id)
        assert answer.json()["error"] == "not_found"


def test_malformed_hold_bodies_are_422(client: TestClient, auth: Auth, seed: Seed) -> None:
    seed.shipment("s-1")
    for body in [
        {"subject_type": "pallet", "subject_id": "s-1", "reason": "r"},
        {"subject_type": "shipment", "subject_id": "s/1", "reason": "r"},
        {"subject_type": "shipment", "subject_id": "s-1"},
        {"subject_type": "shipment", "subject_id": "s-1", "reason": "   "},
        {"subject_type": "shipment", "subject_id": "s-1", "reason": "r", "source": "rule"},
        [],
    ]:
        assert client.post("/v1/holds", json=body, headers=auth[Role.OPERATOR]).status_code == 422, body


def test_release_is_for_quality_with_a_reason(
    client: TestClient, auth: Auth, seed: Seed, clock: FakeClock
) -> None:
    seed.shipment("s-1")
    seed.lot("lot-1", "s-1")
    hold_id = _place(client, auth, "shipment", "s-1")
    url = f"/v1/holds/{hold_id}/release"

    assert client.post(url, json={"reason": "fine"}, headers=auth[Role.OPERATOR]).status_code == 403
    assert client.post(url, json={"reason": "fine"}, headers=auth[Role.ADMIN]).status_code == 403
    assert client.post(url, json={}, headers=auth[Role.QUALITY]).status_code == 422
    assert client.post(url, json={"reason": " "}, headers=auth[Role.QUALITY]).status_code == 422
    assert client.get(f"/v1/holds/{hold_id}", headers=auth[Role.AUDITOR]).json()["status"] == "active"

    clock.advance(3_600_000)
    released = client.post(
        url, json={"reason": "logger data reviewed: within range"}, headers=auth[Role.QUALITY]
    )
    assert released.status_code == 200
    body = released.json()
    assert (body["status"], body["released_by"], body["released_ms"]) == ("released", "quality-user", clock())
    assert body["release_reason"] == "logger data reviewed: within range"
    event = seed.rows(select(outbox_events).where(outbox_events.c.topic == "hold.released"))
    assert len(event) == 1
    assert event[0].aggregate_id == str(hold_id)
    assert orjson.loads(event[0].payload)["lot_ids"] == ["lot-1"]

    again = client.post(url, json={"reason": "again"}, headers=auth[Role.QUALITY])
    assert again.status_code == 409
    assert (
        client.post("/v1/holds/999/release", json={"reason": "x"}, headers=auth[Role.QUALITY]).status_code
        == 404
    )


def test_list_filters(client: TestClient, auth: Auth, seed: Seed) -> None:
    seed.shipment("s-1")
    seed.lot("lot-1", "s-1")
    on_shipment = _place(client, auth, "shipment", "s-1")
    on_lot = _place(client, auth, "lot", "lot-1", role=Role.QUALITY)
    client.post(f"/v1/holds/{on_shipment}/release", json={"reason": "ok"}, headers=auth[Role.QUALITY])

    def ids(**params: str) -> list[int]:
        answer = client.get("/v1/holds", params=params, headers=auth[Role.OPERATOR])
        assert answer.status_code == 200
        return [h["id"] for h in answer.json()["items"]]

    assert ids() == [on_lot, on_shipment]
    assert ids(status="active") == [on_lot]
    assert ids(status="released", subject_type="shipment") == [on_shipment]
    assert ids(subject_id="lot-1", source="manual") == [on_lot]
    assert ids(source="rule") == []
    assert client.get("/v1/holds", params={"status": "gone"}, headers=auth[Role.OPERATOR]).status_code == 422
