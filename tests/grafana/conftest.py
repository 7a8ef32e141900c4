"""Fixtures of the dashboard tests: the committed dashboards, and one scenario run on the real stack.

A service these tests need that is missing fails them, in CI and locally alike: "every panel returns
data from the real engines" is what they prove, and a skip would prove nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from certs.pki import IssuedIdentity
from tests.edge_agent.conftest import _broker
from tests.grafana.engines import Engines
from tests.grafana.scenario import DashboardScenario, Services, run_dashboard_scenario
from tests.harness.mosquitto import Mosquitto

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "grafana"
DASHBOARD_DIR = GRAFANA / "dashboards"


def load_dashboards() -> dict[str, dict[str, Any]]:
    """The committed dashboard files by uid (read at collection time to parametrize the tests)."""
    dashboards = {}
    for path in sorted(DASHBOARD_DIR.glob("*.json")):
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        dashboards[dashboard["uid"]] = dashboard
    return dashboards


def _required(get: Callable[[], T]) -> T:
    """``get()``, with a missing service turned from a skip into a failure."""
    try:
        return get()
    except pytest.skip.Exception as exc:
        pytest.fail(
            f"{exc} - the dashboard tests need every engine; install the test services with "
            "bash scripts/install-test-services.sh",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def grafana_gateway_broker(request: pytest.FixtureRequest) -> Iterator[Mosquitto]:
    """The scenario gateway's own Mosquitto (the session's ``mosquitto_tls`` is the cloud broker)."""
    pki = _required(lambda: request.getfixturevalue("pki"))
    server: IssuedIdentity = request.getfixturevalue("server_identity")
    broker = _required(lambda: _broker(pki, server))
    broker.start()
    yield broker
    broker.close()


@pytest.fixture(scope="session")
def dashboard_scenario(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    grafana_gateway_broker: Mosquitto,
) -> DashboardScenario:
    """The reefer-failure scenario run once through agent and worker, scraped, stored and written."""
    get: Callable[[str], Any] = request.getfixturevalue
    services = Services(
        pki=get("pki"),
        identity=get("identity"),
        gateway=get("enrolled_gateway"),
        gateway_broker=grafana_gateway_broker,
        cloud_broker=_required(lambda: get("mosquitto_tls")),
        postgres=_required(lambda: get("postgres")),
        influxdb=_required(lambda: get("influxdb1")),
        prometheus=_required(lambda: get("prometheus")),
    )
    return run_dashboard_scenario(services, tmp_path_factory.mktemp("grafana-scenario"))


@pytest.fixture(scope="session")
def engines(dashboard_scenario: DashboardScenario) -> Engines:
    """The engines, queried with the scenario's time range."""
    return Engines(dashboard_scenario)


@pytest.fixture(scope="session")
def variable_values(engines: Engines) -> dict[str, dict[str, list[str]]]:
    """Each dashboard's variables resolved in order against the scenario's data, "All" selected."""
    resolved: dict[str, dict[str, list[str]]] = {}
    for uid, dashboard in load_dashboards().items():
        values: dict[str, list[str]] = {}
        for variable in dashboard["templating"]["list"]:
            values[variable["name"]] = engines.variable_values(variable, values)
        resolved[uid] = values
    return resolved
