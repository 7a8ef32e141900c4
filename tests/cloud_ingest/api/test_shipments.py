"""``/v1/shipments``: status, lots, newest readings, excursion summary and mean kinetic temperature."""

from __future__ import annotations

import math

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, insert

from cloud_ingest.alerts import Severity, clear_alert
from cloud_ingest.db.tables import mkt_buckets, readings
from cloud_ingest.keys import Role
from tests.cloud_ingest.api.conftest import START_MS, FakeClock, Seed

Auth = dict[Role, dict[str, str]]
HOUR_MS = 3_600_000
T0 = START_MS - 10 * 60_000


def _reading(
    engine: Engine, device_id: str, seq: int, t_ms: int, temperature_c: float, shipment_id: str
) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(readings).values(
                device_id=device_id, seq=seq, gateway_id="gw-1", batch_seq=1, site_id="site-1",
                t_device_ms=t_ms, t_gateway_ms=t_ms, received_ms=t_ms + 500, clock="ok",
                temperature_c=temperature_c, battery_v=3.6, shipment_id=shipment_id,
                lot_ids="lot-1,lot-2", flags="backfill",
            )
        )  # fmt: skip


def _bucket(
    engine: Engine, subject: str, hour_ms: int, temperatures_c: list[float], activation_k: float
) -> None:
    # What the rules engine accumulates per hour: Σ exp(-ΔH/(R·T)) with T in kelvin, and the count.
    sum_exp = sum(math.exp(-activation_k / (t + 273.15)) for t in temperatures_c)
    with engine.begin() as conn:
        conn.execute(
            insert(mkt_buckets).values(
                subject=subject, hour_ms=hour_ms, sum_exp=sum_exp, n=len(temperatures_c)
            )
        )


@pytest.fixture
def shipment(seed: Seed, engine: Engine) -> None:
    seed.shipment("s-1")
    seed.shipment("s-2", profile="frozen")
    seed.lot("lot-1", "s-1", quantity=10)
    seed.lot("lot-2", "s-1", quantity=5)
    seed.binding("d-1", "s-1", "lot-1,lot-2")
    seed.binding("d-2", "s-1", "lot-1")
    seed.binding("d-3", "s-2")
    _reading(engine, "d-1", 1, T0, 4.0, "s-1")
    _reading(engine, "d-2", 1, T0 + 30_000, 5.0, "s-1")
    _reading(engine, "d-1", 2, T0 + 60_000, 4.5, "s-1")
    _reading(engine, "d-2", 2, T0 + 90_000, 5.5, "s-1")
    _reading(engine, "d-1", 3, T0 + 120_000, 6.0, "s-1")
    # d-1 moved to the other shipment afterwards: its newer reading belongs to s-2, not s-1.
    _reading(engine, "d-1", 4, T0 + 200_000, -18.0, "s-2")
    _reading(engine, "d-3", 1, T0 + 210_000, -19.0, "s-2")


@pytest.mark.usefixtures("shipment")
def test_newest_readings_per_device_and_overall(client: TestClient, auth: Auth) -> None:
    answer = client.get("/v1/shipments/s-1", params={"readings_limit": 3}, headers=auth[Role.AUDITOR])
    assert answer.status_code == 200
    body = answer.json()
    assert [(r["device_id"], r["seq"]) for r in body["latest_by_device"]] == [("d-1", 3), ("d-2", 2)]
    assert [(r["device_id"], r["seq"]) for r in body["latest_readings"]] == [
        ("d-1", 3),
        ("d-2", 2),
        ("d-1", 2),
    ]
    newest = body["latest_by_device"][0]
    assert (newest["temperature_c"], newest["t_device_ms"], newest["received_ms"]) == (
        6.0,
        T0 + 120_000,
        T0 + 120_500,
    )
    assert (newest["lot_ids"], newest["flags"]) == (["lot-1", "lot-2"], ["backfill"])
    assert [(lot["lot_id"], lot["quantity"]) for lot in body["lots"]] == [("lot-1", 10), ("lot-2", 5)]
    other = client.get("/v1/shipments/s-2", headers=auth[Role.AUDITOR]).json()
    assert [(r["device_id"], r["seq"]) for r in other["latest_by_device"]] == [("d-3", 1)]
    assert [(r["device_id"], r["seq"]) for r in other["latest_readings"]] == [("d-3", 1), ("d-1", 4)]
    assert (
        client.get(
            "/v1/shipments/s-1", params={"readings_limit": 1001}, headers=auth[Role.AUDITOR]
        ).status_code
        == 422
    )


@pytest.mark.usefixtures("shipment")
def test_mkt_over_the_newest_window(client: TestClient, auth: Auth, engine: Engine) -> None:
    k = 10_000.0  # the default ΔH/R
    newest = START_MS // HOUR_MS * HOUR_MS
    window_h = 24
    _bucket(engine, "shipment:s-1", newest, [2.0, 12.0], k)
    _bucket(engine, "shipment:s-1", newest - (window_h - 1) * HOUR_MS, [8.0], k)
    _bucket(engine, "shipment:s-1", newest - window_h * HOUR_MS, [40.0] * 5, k)  # one hour too old
    _bucket(engine, "shipment:s-2", newest, [90.0], k)
    mkt = client.get("/v1/shipments/s-1", headers=auth[Role.QUALITY]).json()["mkt"]
    # By hand: (10000 K) / -ln((e^(-10000/275.15) + e^(-10000/285.15) + e^(-10000/281.15)) / 3) - 273.15
    # = 8.2783 °C; above the arithmetic mean of 7.33 °C, as MKT weights warm readings up.
    assert mkt["mkt_c"] == pytest.approx(8.2783, abs=1e-3)
    assert (mkt["window_h"], mkt["readings"]) == (24, 3)
    assert (mkt["from_ms"], mkt["to_ms"]) == (newest - 23 * HOUR_MS, newest + HOUR_MS)


@pytest.mark.usefixtures("shipment")
def test_mkt_is_absent_without_buckets(client: TestClient, auth: Auth) -> None:
    assert client.get("/v1/shipments/s-1", headers=auth[Role.QUALITY]).json()["mkt"] is None


@pytest.mark.usefixtures("shipment")
def test_status_follows_alerts_and_holds(
    client: TestClient, auth: Auth, seed: Seed, engine: Engine, clock: FakeClock
) -> None:
    def status(shipment_id: str = "s-1") -> str:
        return str(client.get(f"/v1/shipments/{shipment_id}", headers=auth[Role.OPERATOR]).json()["status"])

    def listed() -> dict[str, str]:
        items = client.get("/v1/shipments", headers=auth[Role.OPERATOR]).json()["items"]
        return {s["shipment_id"]: s["status"] for s in items}

    assert status() == "ok"
    seed.alert("lot-1", subject_type="lot")  # an alert on a lot does not put the shipment in excursion
    seed.alert("s-2")
    assert status() == "ok"
    seed.alert("s-1", started_ms=T0)
    assert status() == "excursion"
    assert listed() == {"s-1": "excursion", "s-2": "excursion"}
    with engine.begin() as conn:
        clear_alert(conn, "excursion.high|shipment|s-1", now_ms=clock())
    assert status() == "ok"

    hold = client.post(
        "/v1/holds",
        json={"subject_type": "lot", "subject_id": "lot-2", "reason": "r"},
        headers=auth[Role.OPERATOR],
    ).json()
    body = client.get("/v1/shipments/s-1", headers=auth[Role.OPERATOR]).json()
    assert (body["status"], body["hold_ids"]) == ("held", [hold["id"]])
    assert listed() == {"s-1": "held", "s-2": "excursion"}


@pytest.mark.usefixtures("shipment")
def test_excursion_summary_groups_alerts(client: TestClient, auth: Auth, seed: Seed) -> None:
    seed.alert("s-1", started_ms=T0 + 5_000, severity=Severity.MAJOR)
    seed.alert("s-1", rule_id="budget.vaccines", started_ms=T0 + 9_000, severity=Severity.MAJOR)
    seed.alert("s-1", rule_id="mkt.vaccines", started_ms=T0 + 1_000, severity=Severity.CRITICAL)
    first = client.get("/v1/shipments/s-1", headers=auth[Role.AUDITOR]).json()["excursions"]
    assert (first["total"], first["open"], first["first_started_ms"]) == (3, 3, T0 + 1_000)
    assert [(g["rule_id"], g["severity"], g["count"]) for g in first["groups"]] == [
        ("budget.vaccines", "major", 1), ("excursion.high", "major", 1), ("mkt.vaccines", "critical", 1)
    ]  # fmt: skip
    empty = client.get("/v1/shipments/s-2", headers=auth[Role.AUDITOR]).json()["excursions"]
    assert empty == {"total": 0, "open": 0, "first_started_ms": None, "groups": []}


def test_unknown_shipment_is_404(client: TestClient, auth: Auth) -> None:
    assert client.get("/v1/shipments/nope", headers=auth[Role.AUDITOR]).status_code == 404
