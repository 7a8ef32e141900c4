"""The OpenAPI document: every route, the bearer scheme on every /v1 operation, resolvable refs."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from cloud_ingest.api import PERMISSIONS
from coldtrace import __version__
from tests.cloud_ingest.api.test_auth import v1_routes

METHODS = {"get", "post", "put", "delete", "patch"}


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def test_the_document_lists_every_route_with_bearer_security(app: FastAPI, client: TestClient) -> None:
    answer = client.get("/openapi.json")
    assert answer.status_code == 200
    document = answer.json()
    assert document["info"] == {
        "title": "coldtrace cloud API",
        "version": __version__,
        "description": document["info"]["description"],
    }
    scheme = document["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")

    operations = {
        (method.upper(), path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    }
    routes = {(method, route.path): route.name for route in v1_routes(app) for method in route.methods}
    assert set(routes) <= set(operations)
    assert {key for key in operations if key[1].startswith("/v1/")} == set(routes)
    for key, name in routes.items():
        operation = operations[key]
        assert operation["operationId"] == name
        assert operation["security"] == [{"bearer": []}], key
    assert {operations[key]["operationId"] for key in routes} == set(PERMISSIONS)
    assert "security" not in operations[("GET", "/healthz")]


def test_every_reference_resolves(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    refs = set(_refs(document))
    assert "#/components/schemas/Manifest" in refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    manifest_body = document["paths"]["/v1/manifests"]["post"]["requestBody"]
    assert manifest_body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Manifest"}
    assert set(schemas["Manifest"]["required"]) >= {"devices", "gateway_id", "site_id", "version"}


def test_healthz_needs_no_key(client: TestClient, engine: Engine) -> None:
    answer = client.get("/healthz")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok"}
    engine.dispose()  # the next request opens a fresh connection: still fine
    assert client.get("/healthz").status_code == 200
