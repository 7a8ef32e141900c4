"""``/v1/lots``: quantities on hold and sellable, and the ERP's quantity updates."""

from __future__ import annotations

from fastapi.testclient import TestClient

from cloud_ingest.keys import Role
from tests.cloud_ingest.api.conftest import FakeClock, Seed

Auth = dict[Role, dict[str, str]]


def _put(
    client: TestClient, auth: Auth, lot_id: str, body: dict[str, object], role: Role = Role.OPERATOR
) -> dict[str, object]:
    answer = client.put(f"/v1/lots/{lot_id}", json=body, headers=auth[role])
    assert answer.status_code == 200, answer.text
    result: dict[str, object] = answer.json()
    return result


def test_a_shipment_hold_holds_every_lot_in_it(client: TestClient, auth: Auth, seed: Seed) -> None:
    seed.shipment("s-1")
    seed.shipment("s-2")
    _put(
        client, auth, "lot-1", {"shipment_id": "s-1", "profile": "vaccines", "quantity": 120, "unit": "boxes"}
    )
    _put(client, auth, "lot-2", {"shipment_id": "s-1", "profile": "vaccines", "quantity": 30.5})
    _put(client, auth, "lot-3", {"shipment_id": "s-2", "profile": "vaccines", "quantity": 7}, role=Role.ADMIN)

    before = client.get("/v1/lots/lot-1", headers=auth[Role.AUDITOR]).json()
    assert (before["quantity"], before["on_hold"], before["sellable"], before["unit"]) == (
        120,
        0,
        120,
        "boxes",
    )
    assert before["holds"] == []
    assert before["hold_ids"] == []

    hold = client.post(
        "/v1/holds",
        json={"subject_type": "shipment", "subject_id": "s-1", "reason": "excursion"},
        headers=auth[Role.QUALITY],
    ).json()
    alert_id = seed.alert("s-1")

    after = client.get("/v1/lots/lot-1", headers=auth[Role.AUDITOR]).json()
    assert (after["on_hold"], after["sellable"], after["hold_ids"]) == (120, 0, [hold["id"]])
    assert [h["id"] for h in after["holds"]] == [hold["id"]]
    assert [a["id"] for a in after["alerts"]] == [alert_id]

    listed = {
        lot["lot_id"]: lot for lot in client.get("/v1/lots", headers=auth[Role.OPERATOR]).json()["items"]
    }
    assert (listed["lot-2"]["on_hold"], listed["lot-2"]["sellable"]) == (30.5, 0)
    assert (listed["lot-3"]["on_hold"], listed["lot-3"]["sellable"]) == (0, 7)
    # The list computes quantities in bulk; it must agree with the detail view (holds.lot_status).
    for lot_id, item in listed.items():
        detail = client.get(f"/v1/lots/{lot_id}", headers=auth[Role.OPERATOR]).json()
        assert {k: detail[k] for k in item} == item

    only_s2 = client.get("/v1/lots", params={"shipment_id": "s-2"}, headers=auth[Role.OPERATOR]).json()
    assert [lot["lot_id"] for lot in only_s2["items"]] == ["lot-3"]


def test_a_lot_hold_holds_only_that_lot(client: TestClient, auth: Auth, seed: Seed) -> None:
    seed.shipment("s-1")
    seed.lot("lot-1", "s-1", quantity=10)
    seed.lot("lot-2", "s-1", quantity=20)
    client.post(
        "/v1/holds",
        json={"subject_type": "lot", "subject_id": "lot-2", "reason": "r"},
        headers=auth[Role.OPERATOR],
    )
    lots = {lot["lot_id"]: lot for lot in client.get("/v1/lots", headers=auth[Role.OPERATOR]).json()["items"]}
    assert (lots["lot-1"]["on_hold"], lots["lot-1"]["sellable"]) == (0, 10)
    assert (lots["lot-2"]["on_hold"], lots["lot-2"]["sellable"]) == (20, 0)


def test_put_creates_updates_and_keeps_omitted_fields(
    client: TestClient, auth: Auth, seed: Seed, clock: FakeClock
) -> None:
    seed.shipment("s-1")
    created = _put(
        client, auth, "lot-1", {"shipment_id": "s-1", "profile": "frozen", "sku": "SKU-9", "quantity": 5}
    )
    assert (created["shipment_id"], created["profile"], created["sku"], created["unit"]) == (
        "s-1",
        "frozen",
        "SKU-9",
        "units",
    )
    updated = _put(client, auth, "lot-1", {"profile": "frozen", "quantity": 8, "unit": "kg"})
    assert (updated["shipment_id"], updated["sku"], updated["quantity"], updated["unit"]) == (
        "s-1",
        "SKU-9",
        8,
        "kg",
    )
    detached = _put(client, auth, "lot-1", {"shipment_id": None, "profile": "frozen", "quantity": 8})
    assert detached["shipment_id"] is None


def test_put_refuses_unknown_shipments_and_bad_bodies(client: TestClient, auth: Auth) -> None:
    unknown = client.put(
        "/v1/lots/lot-1",
        json={"shipment_id": "s-9", "profile": "vaccines", "quantity": 1},
        headers=auth[Role.OPERATOR],
    )
    assert unknown.status_code == 404
    for lot_id, body in [
        ("lot-1", {"profile": "vaccines", "quantity": -1}),
        ("lot-1", {"profile": "bananas", "quantity": 1}),
        ("lot-1", {"profile": "vaccines"}),
        ("lot-1", {"profile": "vaccines", "quantity": 1, "colour": "red"}),
        ("lot-1", {"profile": "vaccines", "quantity": "NaN"}),
        ("-bad", {"profile": "vaccines", "quantity": 1}),
    ]:
        answer = client.put(f"/v1/lots/{lot_id}", json=body, headers=auth[Role.OPERATOR])
        assert answer.status_code == 422, (lot_id, body)
    assert client.get("/v1/lots/lot-1", headers=auth[Role.OPERATOR]).status_code == 404
