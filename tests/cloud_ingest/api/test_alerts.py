"""``/v1/alerts``: reading alerts and the acknowledge / close / comment workflow."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from cloud_ingest.alerts import Severity, clear_alert
from cloud_ingest.keys import Role
from tests.cloud_ingest.api.conftest import FakeClock, Seed

Auth = dict[Role, dict[str, str]]


def _clear(engine: Engine, clock: FakeClock, subject_id: str, rule_id: str = "excursion.high") -> None:
    with engine.begin() as conn:
        clear_alert(conn, f"{rule_id}|shipment|{subject_id}", now_ms=clock())


def test_an_alert_reads_with_its_history(client: TestClient, auth: Auth, seed: Seed) -> None:
    alert_id = seed.alert("s-1", severity=Severity.CRITICAL)
    answer = client.get(f"/v1/alerts/{alert_id}", headers=auth[Role.AUDITOR])
    assert answer.status_code == 200
    body = answer.json()
    assert body["subject_id"] == "s-1"
    assert (body["severity"], body["condition"], body["workflow"]) == ("critical", "active", "unacknowledged")
    assert [e["kind"] for e in body["events"]] == ["raised"]
    assert body["events"][0]["actor"] == "system"


def test_unknown_alert_is_404(client: TestClient, auth: Auth) -> None:
    answer = client.get("/v1/alerts/999", headers=auth[Role.AUDITOR])
    assert answer.status_code == 404
    assert answer.json() == {"error": "not_found", "detail": "alert 999 does not exist"}
    assert client.post("/v1/alerts/999/ack", json={}, headers=auth[Role.OPERATOR]).status_code == 404


def test_acknowledge_close_workflow(
    client: TestClient, auth: Auth, seed: Seed, engine: Engine, clock: FakeClock
) -> None:
    alert_id = seed.alert("s-1")
    clock.advance(60_000)
    acked = client.post(f"/v1/alerts/{alert_id}/ack", json={"comment": "on it"}, headers=auth[Role.OPERATOR])
    assert acked.status_code == 200
    assert acked.json()["workflow"] == "acknowledged"
    assert acked.json()["updated_ms"] == clock()
    event = acked.json()["events"][-1]
    assert (event["kind"], event["actor"], event["comment"]) == ("acknowledged", "operator-user", "on it")

    again = client.post(f"/v1/alerts/{alert_id}/ack", json={}, headers=auth[Role.QUALITY])
    assert again.status_code == 409
    assert again.json()["error"] == "conflict"

    still_active = client.post(
        f"/v1/alerts/{alert_id}/close", json={"comment": "ok"}, headers=auth[Role.QUALITY]
    )
    assert still_active.status_code == 409
    assert "still active" in still_active.json()["detail"]

    _clear(engine, clock, "s-1")
    no_comment = client.post(
        f"/v1/alerts/{alert_id}/close", json={"comment": "  "}, headers=auth[Role.QUALITY]
    )
    assert no_comment.status_code == 422
    closed = client.post(
        f"/v1/alerts/{alert_id}/close", json={"comment": "product checked"}, headers=auth[Role.QUALITY]
    )
    assert closed.status_code == 200
    assert closed.json()["workflow"] == "closed"
    assert [e["kind"] for e in closed.json()["events"]] == ["raised", "acknowledged", "cleared", "closed"]
    assert closed.json()["events"][-1]["actor"] == "quality-user"

    twice = client.post(f"/v1/alerts/{alert_id}/close", json={"comment": "again"}, headers=auth[Role.QUALITY])
    assert twice.status_code == 409
    assert client.post(f"/v1/alerts/{alert_id}/ack", json={}, headers=auth[Role.OPERATOR]).status_code == 409


def test_an_alert_is_latched_until_acknowledged_even_when_cleared(
    client: TestClient, auth: Auth, seed: Seed, engine: Engine, clock: FakeClock
) -> None:
    alert_id = seed.alert("s-2")
    _clear(engine, clock, "s-2")
    body = {"comment": "sensor was unplugged"}
    closed = client.post(f"/v1/alerts/{alert_id}/close", json=body, headers=auth[Role.QUALITY])
    assert closed.status_code == 409
    assert "acknowledge it" in closed.json()["detail"]
    assert client.post(f"/v1/alerts/{alert_id}/ack", json={}, headers=auth[Role.QUALITY]).status_code == 200
    closed = client.post(f"/v1/alerts/{alert_id}/close", json=body, headers=auth[Role.QUALITY])
    assert closed.status_code == 200


def test_comments_append_to_the_history(client: TestClient, auth: Auth, seed: Seed) -> None:
    alert_id = seed.alert("s-1")
    answer = client.post(
        f"/v1/alerts/{alert_id}/comments", json={"text": "driver called"}, headers=auth[Role.QUALITY]
    )
    assert answer.status_code == 201
    assert answer.json()["workflow"] == "unacknowledged"
    event = answer.json()["events"][-1]
    assert (event["kind"], event["actor"], event["comment"]) == ("commented", "quality-user", "driver called")


def test_malformed_workflow_bodies_are_422(client: TestClient, auth: Auth, seed: Seed) -> None:
    alert_id = seed.alert("s-1")
    for path, body in [
        ("comments", {}),
        ("comments", {"text": ""}),
        ("comments", {"text": "x", "extra": 1}),
        ("close", {}),
        ("ack", {"comment": 5}),
        ("ack", {"comments": "typo"}),
    ]:
        role = Role.QUALITY
        answer = client.post(f"/v1/alerts/{alert_id}/{path}", json=body, headers=auth[role])
        assert answer.status_code == 422, (path, body)
    assert client.post("/v1/alerts/abc/ack", json={}, headers=auth[Role.QUALITY]).status_code == 422
    broken = client.post(
        f"/v1/alerts/{alert_id}/ack",
        content=b"{not json",
        headers={**auth[Role.QUALITY], "Content-Type": "application/json"},
    )
    assert broken.status_code == 422


def test_list_filters(client: TestClient, auth: Auth, seed: Seed, clock: FakeClock) -> None:
    first = seed.alert("s-1", severity=Severity.MINOR)
    clock.advance(1000)
    second = seed.alert("s-2", rule_id="budget.vaccines", severity=Severity.CRITICAL)
    clock.advance(1000)
    third = seed.alert("lot-9", subject_type="lot")
    client.post(f"/v1/alerts/{third}/ack", json={}, headers=auth[Role.OPERATOR])

    def ids(**params: object) -> list[int]:
        answer = client.get("/v1/alerts", params=params, headers=auth[Role.AUDITOR])
        assert answer.status_code == 200, answer.text
        return [item["id"] for item in answer.json()["items"]]

    assert ids() == [third, second, first]
    assert ids(severity="critical") == [second]
    assert ids(workflow="acknowledged") == [third]
    assert ids(workflow="unacknowledged", condition="active") == [second, first]
    assert ids(subject_type="lot") == [third]
    assert ids(subject_id="s-1") == [first]
    assert ids(rule_id="budget.vaccines") == [second]
    assert ids(since_ms=clock() - 1000) == [third, second]
    answer = client.get("/v1/alerts", params={"severity": "apocalyptic"}, headers=auth[Role.AUDITOR])
    assert answer.status_code == 422
