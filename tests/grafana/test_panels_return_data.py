"""After a reefer-failure scenario on the real stack, every query of every dashboard - panels,
annotations, variables - returns data from the real engines: InfluxQL from InfluxDB 1.6 holding the
cloud's line protocol, SQL from the cloud's PostgreSQL, PromQL from a Prometheus that scraped the
running agent and worker. Variables are resolved from the scenario's data ("All" selected) and every
macro and variable is expanded as Grafana expands it (tests/grafana/expand.py).

A few panels are also checked for what they must show after this scenario (the failed reefer's
shipment held, the tampered batch refused, the gap marker counted), so that "returns data" cannot be
satisfied by the wrong data.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.grafana import yard
from tests.grafana.conftest import load_dashboards
from tests.grafana.engines import POSTGRES, Engines, Result
from tests.grafana.scenario import GATEWAY, SITE, DashboardScenario

pytestmark = pytest.mark.services

Json = dict[str, Any]
DASHBOARDS = load_dashboards()
Values = dict[str, dict[str, list[str]]]


def _cases() -> list[Any]:
    cases = []
    for uid, dashboard in DASHBOARDS.items():
        short = uid.removeprefix("coldtrace-")
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                where = f"{short}/{panel['id']} {panel['title']}/{target['refId']}"
                cases.append(pytest.param(uid, target, "panel", id=where))
        cases += [
            pytest.param(uid, a["target"], "annotation", id=f"{short}/annotation {a['name']}")
            for a in dashboard["annotations"]["list"]
            if "target" in a
        ]
    return cases


@pytest.mark.parametrize(("uid", "target", "role"), _cases())
def test_every_query_returns_data(
    uid: str, target: Json, role: str, engines: Engines, variable_values: Values
) -> None:
    result = engines.run(target, variable_values[uid])
    assert result.has_data, f"no data from:\n{result.query}\ncolumns {result.columns}, rows {result.rows[:5]}"
    if target["datasource"]["type"] == POSTGRES:
        if role == "annotation":
            assert {"time", "timeend", "text", "tags"} <= set(result.columns), result.columns
        elif target["format"] == "time_series":
            assert {"time", "metric", "value"} <= set(result.columns), result.columns
            times = result.column("time")
            assert times == sorted(times), "a time series must come ordered by time"


def test_variables_offer_the_scenarios_sites_gateways_shipments_and_lots(
    variable_values: Values, dashboard_scenario: DashboardScenario
) -> None:
    shipments = variable_values["coldtrace-shipment-temperature"]
    assert shipments["site"] == sorted([SITE, yard.SITE])
    assert shipments["gateway"] == sorted([GATEWAY, yard.GATEWAY])
    # Two shipments of eight sensors, two lots each; the yard gateway's readings are bound to none.
    assert len(shipments["shipment"]) == 2
    assert dashboard_scenario.held_shipments < set(shipments["shipment"])
    assert len(shipments["lot"]) == 4
    assert all(lot.startswith("LOT-") for lot in shipments["lot"])
    for uid, values in variable_values.items():
        assert values["gateway"] == shipments["gateway"], uid


class Dashboards:
    """Run one panel's query by dashboard, panel title and panel type."""

    def __init__(self, engines: Engines, values: Values) -> None:
        self.engines = engines
        self.values = values

    def run(self, uid: str, title: str, *, kind: str | None = None, ref: str = "A") -> Result:
        panels = [
            p
            for p in DASHBOARDS[uid]["panels"]
            if p["title"] == title and p["type"] != "row" and kind in (None, p["type"])
        ]
        assert len(panels) == 1, f"{uid}: {len(panels)} panels titled {title!r}"
        (target,) = [t for t in panels[0]["targets"] if t["refId"] == ref]
        return self.engines.run(target, self.values[uid])

    def annotation(self, uid: str, name: str) -> Result:
        (target,) = [a["target"] for a in DASHBOARDS[uid]["annotations"]["list"] if a["name"] == name]
        return self.engines.run(target, self.values[uid])


@pytest.fixture
def dashboards(engines: Engines, variable_values: Values) -> Dashboards:
    return Dashboards(engines, variable_values)


def _by_series(result: Result) -> dict[str, list[float]]:
    series: dict[str, list[float]] = {}
    for name, _, value in result.rows:
        series.setdefault(name, []).append(value)
    return series


def test_fleet_health_shows_the_gateways_and_the_silent_device(
    dashboards: Dashboards, dashboard_scenario: DashboardScenario
) -> None:
    uid = "coldtrace-fleet-health"
    assert dashboards.run(uid, "Uplinks up").values == [1.0]  # the one real agent
    assert dashboards.run(uid, "Agents answering scrapes").values == [1.0]
    assert dashboards.run(uid, "Gateways heard from in the last 15 min").values == [2]
    # The yard's cold room last reported an hour of simulated time before the end; the reefers now.
    assert dashboards.run(uid, "Devices silent for 15 min or more").values == [1]
    gateways = dashboards.run(uid, "Gateway registry")
    assert sorted(gateways.column("gateway")) == [GATEWAY, yard.GATEWAY]
    assert sum(gateways.column("readings")) == dashboard_scenario.stored_readings
    models = dashboards.run(uid, "Anomaly model per gateway")
    assert len(models.series) == 1
    assert "rules_only" in models.series[0]


def test_shipment_temperature_shows_the_failed_reefer_beyond_its_limit(
    dashboards: Dashboards, dashboard_scenario: DashboardScenario
) -> None:
    uid = "coldtrace-shipment-temperature"
    (held,) = dashboard_scenario.held_shipments
    temperature = dashboards.run(uid, "Temperature by shipment and lots")
    assert {name.split("'shipment': ")[1].split("'")[1] for name in temperature.series} >= {held}
    warmest = max(row[1] for row in temperature.rows if row[1] is not None)
    assert warmest > 8.0, "the failed reefer's shipment should run above the vaccines' 8 °C limit"
    limits = dashboards.run(uid, "Temperature by shipment and lots", ref="B")
    assert set(limits.column("value")) == {2.0, 8.0}
    assert {m.split(" ")[0] for m in limits.column("metric")} == set(dashboards.values[uid]["shipment"])
    holds = dashboards.annotation(uid, "Holds")
    assert [text for text in holds.column("text") if held in text], holds.rows
    excursions = dashboards.annotation(uid, "Excursions")
    assert any("temp_high" in tags for tags in excursions.column("tags")), excursions.rows


def test_alerts_and_holds_shows_the_hold_on_the_failed_reefers_shipment(
    dashboards: Dashboards, dashboard_scenario: DashboardScenario
) -> None:
    uid = "coldtrace-alerts-holds"
    assert dashboards.run(uid, "Active holds", kind="stat").rows == (("shipment", 1),)
    table = dashboards.run(uid, "Active holds", kind="table")
    assert set(table.column("subject_id")) == dashboard_scenario.held_shipments
    assert all("LOT-" in lots for lots in table.column("lots"))
    workers = dashboards.run(uid, "As the workers count them", ref="B")
    assert workers.values == [1.0]


def test_ingest_pipeline_shows_the_reject_the_duplicate_and_the_gap(dashboards: Dashboards) -> None:
    uid = "coldtrace-ingest-pipeline"
    assert dashboards.run(uid, "Rejected batches by reason").rows == (("bad_signature", 1),)
    totals = dashboards.run(uid, "Rejected and chain gaps since the workers started")
    assert [(name, value) for name, _, value in totals.rows] == [("{'reason': 'bad_signature'}", 1.0)]
    readings = _by_series(dashboards.run(uid, "Readings stored and duplicates"))
    assert max(readings["{'result': 'duplicate'}"]) > 0
    assert max(readings["{'result': 'accepted'}"]) > 0
    refused = dashboards.run(uid, "Device messages refused, by reason")
    assert any("malformed" in name for name in refused.series), refused.series
    assert max(refused.values) > 0
    assert sum(dashboards.run(uid, "Readings that will never arrive").values) == yard.GAP
    lag = dashboards.run(uid, "Batch lag by gateway")
    assert len(lag.series) == 2  # both gateways' batches
