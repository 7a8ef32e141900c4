"""``/v1/rejects``: the dead letters by reason and sender, their counts, and the refused bytes."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from cloud_ingest.ingest import Ingestor, Outcome
from cloud_ingest.keys import Role
from cloud_ingest.metrics import CloudMetrics
from cloud_ingest.settings import CloudSettings
from tests.cloud_ingest.builders import T0, GatewaySim, reading

Auth = dict[Role, dict[str, str]]


def _refuse(engine: Engine) -> tuple[bytes, bytes]:
    """A tampered frame from gw-1 and a frame from an unregistered gateway, both refused."""
    gw = GatewaySim()
    gw.register(engine)
    ingestor = Ingestor(engine, CloudSettings(deadletter_max_raw_bytes=100_000), metrics=CloudMetrics(),
                        clock=lambda: T0)  # fmt: skip
    tampered = bytearray(gw.frame([reading("dev-1", 1, T0, 4.0)]))
    tampered[-5] ^= 0x01
    stranger = GatewaySim(gateway_id="gw-x").frame([reading("dev-9", 1, T0, 4.0)])
    for frame, gateway in ((bytes(tampered), "gw-1"), (stranger, "gw-x"), (stranger, "gw-x")):
        result = ingestor.ingest(frame, topic_gateway=gateway, identity=gateway, transport="mqtt")
        assert result.outcome is Outcome.REJECTED
    return bytes(tampered), stranger


def test_rejects_are_listed_newest_first_filtered_and_counted_by_reason(
    client: TestClient, auth: Auth, engine: Engine
) -> None:
    tampered, _ = _refuse(engine)
    page = client.get("/v1/rejects", params={"limit": 2}, headers=auth[Role.AUDITOR]).json()
    assert [r["reason"] for r in page["items"]] == ["unknown_gateway", "unknown_gateway"]
    rest = client.get("/v1/rejects", params={"limit": 2, "cursor": page["next_cursor"]},
                      headers=auth[Role.AUDITOR]).json()  # fmt: skip
    assert [(r["reason"], r["identity"]) for r in rest["items"]] == [("bad_signature", "gw-1")]
    assert rest["next_cursor"] is None
    only = client.get("/v1/rejects", params={"reason": "bad_signature"}, headers=auth[Role.OPERATOR]).json()
    assert len(only["items"]) == 1
    assert only["items"][0]["raw_kept"] is True
    assert only["items"][0]["size"] == len(tampered)
    summary = client.get("/v1/rejects/summary", headers=auth[Role.QUALITY]).json()
    assert summary == {"total": 3, "by_reason": {"bad_signature": 1, "unknown_gateway": 2}}
    from_gw1 = client.get("/v1/rejects/summary", params={"identity": "gw-1"}, headers=auth[Role.QUALITY])
    assert from_gw1.json() == {"total": 1, "by_reason": {"bad_signature": 1}}


def test_the_refused_bytes_are_served_as_received_to_roles_that_may_see_them(
    client: TestClient, auth: Auth, engine: Engine
) -> None:
    tampered, _ = _refuse(engine)
    [item] = client.get("/v1/rejects", params={"reason": "bad_signature"}, headers=auth[Role.ADMIN]).json()[
        "items"
    ]
    raw = client.get(f"/v1/rejects/{item['id']}/raw", headers=auth[Role.AUDITOR])
    assert raw.status_code == 200
    assert raw.headers["content-type"] == "application/octet-stream"
    assert raw.content == tampered
    assert client.get(f"/v1/rejects/{item['id']}/raw", headers=auth[Role.QUALITY]).status_code == 403
    assert client.get("/v1/rejects/999999/raw", headers=auth[Role.AUDITOR]).status_code == 404
    assert (
        client.get("/v1/rejects", params={"reason": "nonsense"}, headers=auth[Role.AUDITOR]).status_code
        == 422
    )
