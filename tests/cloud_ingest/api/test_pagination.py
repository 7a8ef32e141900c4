"""Keyset pagination: following ``next_cursor`` visits every item exactly once, in order."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cloud_ingest.keys import Role
from tests.cloud_ingest.api.conftest import Seed

Auth = dict[Role, dict[str, str]]


def _walk(
    client: TestClient, url: str, headers: dict[str, str], limit: int, **params: Any
) -> list[list[Any]]:
    pages: list[list[Any]] = []
    cursor = None
    while True:
        query = {**params, "limit": limit} | ({"cursor": cursor} if cursor is not None else {})
        answer = client.get(url, params=query, headers=headers)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 50, "the cursor does not advance"


def test_alerts_newest_first_each_exactly_once(client: TestClient, auth: Auth, seed: Seed) -> None:
    ids = [seed.alert(f"s-{n}") for n in range(7)]
    pages = _walk(client, "/v1/alerts", auth[Role.AUDITOR], 3)
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [a["id"] for page in pages for a in page] == sorted(ids, reverse=True)
    # A page size that divides the count exactly ends on a full page, then the cursor is None.
    assert [len(p) for p in _walk(client, "/v1/alerts", auth[Role.AUDITOR], 7)] == [7]


def test_a_cursor_survives_inserts_between_pages(client: TestClient, auth: Auth, seed: Seed) -> None:
    for n in range(4):
        seed.lot(f"lot-{n}", None)
    first = client.get("/v1/lots", params={"limit": 2}, headers=auth[Role.OPERATOR]).json()
    seed.lot("lot-0a", None)  # sorts into the page already read: must not shift the next page
    second = client.get(
        "/v1/lots", params={"limit": 2, "cursor": first["next_cursor"]}, headers=auth[Role.OPERATOR]
    ).json()
    assert [lot["lot_id"] for lot in first["items"] + second["items"]] == ["lot-0", "lot-1", "lot-2", "lot-3"]
    assert second["next_cursor"] is None


def test_filters_apply_across_pages(client: TestClient, auth: Auth, seed: Seed) -> None:
    for n in range(5):
        seed.alert("s-1", rule_id=f"rule.{n}")
        seed.alert("s-2", rule_id=f"rule.{n}")
    pages = _walk(client, "/v1/alerts", auth[Role.AUDITOR], 2, subject_id="s-2")
    assert [a["subject_id"] for page in pages for a in page] == ["s-2"] * 5


def test_manifests_page_on_a_composite_key(client: TestClient, auth: Auth, seed: Seed) -> None:
    for gateway_id in ("gw-b", "gw-a"):
        seed.gateway(gateway_id)
        for version in (1, 2, 10):
            manifest = {
                "devices": [],
                "gateway_id": gateway_id,
                "issued_ms": 1_750_000_000_000,
                "site_id": "site-1",
                "version": version,
            }
            assert client.post("/v1/manifests", json=manifest, headers=auth[Role.OPERATOR]).status_code == 201
    pages = _walk(client, "/v1/manifests", auth[Role.AUDITOR], 1)
    seen = [(m["gateway_id"], m["version"]) for page in pages for m in page]
    assert seen == [("gw-a", 1), ("gw-a", 2), ("gw-a", 10), ("gw-b", 1), ("gw-b", 2), ("gw-b", 10)]


@pytest.mark.parametrize(
    "cursor",
    [
        "not-base64-%%",
        base64.urlsafe_b64encode(b"{}").decode(),
        base64.urlsafe_b64encode(b'["lot-1"]').decode(),  # a lot cursor used on alerts
        base64.urlsafe_b64encode(b"[1,2]").decode(),
        base64.urlsafe_b64encode(b"[true]").decode(),
    ],
)
def test_a_cursor_this_api_did_not_issue_is_422(client: TestClient, auth: Auth, cursor: str) -> None:
    answer = client.get("/v1/alerts", params={"cursor": cursor}, headers=auth[Role.AUDITOR])
    assert answer.status_code == 422
    assert answer.json()["error"] == "invalid"


@pytest.mark.parametrize("limit", [0, -1, 1001, "ten"])
def test_limit_is_bounded(client: TestClient, auth: Auth, limit: object) -> None:
    assert client.get("/v1/holds", params={"limit": limit}, headers=auth[Role.AUDITOR]).status_code == 422
