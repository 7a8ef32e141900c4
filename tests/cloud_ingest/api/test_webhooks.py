"""``/v1/webhooks``: admin-only subscriptions; the secret is shown once."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select

from cloud_ingest.db.tables import webhooks
from cloud_ingest.keys import Role
from tests.cloud_ingest.api.conftest import FakeClock, Seed

Auth = dict[Role, dict[str, str]]


def test_create_list_delete(client: TestClient, auth: Auth, seed: Seed, clock: FakeClock) -> None:
    created = client.post(
        "/v1/webhooks",
        json={"url": "https://erp.example/hooks", "topics": ["hold.", "alert.raised"]},
        headers=auth[Role.ADMIN],
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["url"], body["topics"], body["active"], body["created_ms"]) == (
        "https://erp.example/hooks", ["hold.", "alert.raised"], True, clock()
    )  # fmt: skip
    assert len(body["secret"]) >= 40
    assert seed.rows(select(webhooks.c.secret, webhooks.c.topics)) == [(body["secret"], "hold.,alert.raised")]

    listed = client.get("/v1/webhooks", headers=auth[Role.ADMIN]).json()["items"]
    assert [w["id"] for w in listed] == [body["id"]]
    assert "secret" not in listed[0]

    dev = client.post("/v1/webhooks", json={"url": "http://127.0.0.1:8080/hook"}, headers=auth[Role.ADMIN])
    assert dev.status_code == 201
    assert dev.json()["topics"] == ["*"]

    assert client.delete(f"/v1/webhooks/{body['id']}", headers=auth[Role.ADMIN]).status_code == 204
    assert client.delete(f"/v1/webhooks/{body['id']}", headers=auth[Role.ADMIN]).status_code == 204

    def listed(**params: str) -> list[tuple[int, bool]]:
        items = client.get("/v1/webhooks", params=params, headers=auth[Role.ADMIN]).json()["items"]
        return [(w["id"], w["active"]) for w in items]

    assert listed() == [(body["id"], False), (dev.json()["id"], True)]
    assert listed(active="true") == [(dev.json()["id"], True)]
    assert listed(active="false") == [(body["id"], False)]
    # The row stays (deliveries refer to it), inactive: the dispatcher sends it nothing more.
    assert seed.rows(select(webhooks.c.active).where(webhooks.c.id == body["id"])) == [(False,)]
    assert client.delete("/v1/webhooks/999", headers=auth[Role.ADMIN]).status_code == 404


def test_urls_and_topics_are_checked(client: TestClient, auth: Auth) -> None:
    for body in [
        {"url": "http://erp.example/hooks"},
        {"url": "ftp://erp.example/hooks"},
        {"url": "/relative"},
        {"url": "http://localhost.evil.example/"},
        {"url": "https://erp.example/hooks", "topics": []},
        {"url": "https://erp.example/hooks", "topics": ["Hold*"]},
        {"url": "https://erp.example/hooks", "topics": ["hold..x"]},
        {"url": "https://erp.example/hooks", "secret": "mine"},
    ]:
        assert client.post("/v1/webhooks", json=body, headers=auth[Role.ADMIN]).status_code == 422, body
