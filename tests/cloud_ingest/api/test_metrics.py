"""The API process's Prometheus metrics: every answer counted by route name and status, and timed."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from cloud_ingest.keys import Role


def _count(app: FastAPI, route: str, method: str, status: int) -> float:
    value = app.state.metrics.registry.get_sample_value(
        "coldtrace_api_requests_total", {"route": route, "method": method, "status": str(status)}
    )
    return value or 0.0


def test_answers_are_counted_by_route_name_and_status_not_by_path(
    app: FastAPI, client: TestClient, auth: dict[Role, dict[str, str]]
) -> None:
    assert client.get("/v1/lots/LOT-404", headers=auth[Role.AUDITOR]).status_code == 404
    assert client.get("/v1/lots/LOT-405", headers=auth[Role.AUDITOR]).status_code == 404
    assert client.get("/v1/lots").status_code == 401
    assert client.put("/v1/lots/LOT-1", json={}, headers=auth[Role.AUDITOR]).status_code == 403
    assert client.get("/v1/nowhere", headers=auth[Role.ADMIN]).status_code == 404

    assert _count(app, "lots.get", "GET", 404) == 2  # two ids, one series
    assert _count(app, "lots.list", "GET", 401) == 1
    assert _count(app, "lots.put", "PUT", 403) == 1
    assert _count(app, "unmatched", "GET", 404) == 1
    text = app.state.metrics.render().decode()
    assert "LOT-404" not in text
    timed = app.state.metrics.registry.get_sample_value(
        "coldtrace_api_request_seconds_count", {"route": "lots.get"}
    )
    assert timed == 2
