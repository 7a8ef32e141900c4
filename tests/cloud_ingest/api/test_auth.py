"""Authentication and the permission table: every /v1 route, every role, keys from creation to revocation."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import pytest
from fastapi import APIRouter, Depends, FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import Engine, insert, select

from cloud_ingest.api import PERMISSIONS, create_app, require
from cloud_ingest.api.auth import Authorized, Principal
from cloud_ingest.db.tables import api_keys
from cloud_ingest.errors import Conflict, NotFound
from cloud_ingest.keys import Role, create_key, hash_key, list_keys, revoke_key, verify_key
from cloud_ingest.settings import CloudSettings
from tests.cloud_ingest.api.conftest import FakeClock, Seed

KEY_FORMAT = re.compile(r"^ct_[0-9a-f]{8}_[A-Za-z0-9_-]{32,}$")


@dataclass(frozen=True)
class V1Route:
    name: str
    path: str
    methods: frozenset[str]


def v1_routes(app: FastAPI) -> list[V1Route]:
    """Every API route the app serves under /v1, however its routers are nested.

    ``app.routes`` holds included routers as opaque entries since FastAPI 0.137; this walks them the
    way FastAPI's own OpenAPI generator does.
    """
    routes = [
        V1Route(name=ctx.name or "", path=ctx.path or "", methods=frozenset(ctx.methods or ()))
        for ctx in iter_route_contexts(app.routes)
        if isinstance(ctx.original_route, APIRoute) and (ctx.path or "").startswith("/v1/")
    ]
    assert routes, "found no /v1 routes: the enumeration itself is broken"
    return routes


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


def test_every_v1_route_has_exactly_one_rule(app: FastAPI) -> None:
    names = [r.name for r in v1_routes(app)]
    assert len(names) == len(set(names)), "route names must be unique: they key the permission table"
    missing = sorted(set(names) - set(PERMISSIONS))
    assert missing == [], f"routes without a permission rule: {missing}"
    assert sorted(set(PERMISSIONS) - set(names)) == [], "rules for routes that do not exist"


def test_every_v1_route_refuses_missing_bad_and_wrong_role_keys(
    app: FastAPI, client: TestClient, auth: dict[Role, dict[str, str]]
) -> None:
    routes = v1_routes(app)
    assert len(routes) == len(PERMISSIONS)
    for route in routes:
        allowed = PERMISSIONS[route.name]
        for method in sorted(route.methods):
            url = _concrete(route.path)
            anonymous = client.request(method, url, json={})
            assert anonymous.status_code == 401, (method, url)
            assert anonymous.headers["WWW-Authenticate"] == "Bearer"
            assert anonymous.json()["error"] == "unauthorized"
            forged = client.request(
                method, url, json={}, headers={"Authorization": "Bearer ct_00000000_" + "A" * 43}
            )
            assert forged.status_code == 401, (method, url)
            for role in Role:
                answer = client.request(method, url, json={}, headers=auth[role])
                if role in allowed:
                    assert answer.status_code not in {401, 403}, (method, url, role, answer.text)
                else:
                    assert answer.status_code == 403, (method, url, role)
                    assert answer.json()["error"] == "forbidden"


def test_admin_is_not_a_superuser() -> None:
    assert Role.ADMIN not in PERMISSIONS["alerts.close"]
    assert Role.ADMIN not in PERMISSIONS["holds.release"]
    assert PERMISSIONS["holds.release"] == {Role.QUALITY}
    assert PERMISSIONS["webhooks.create"] == {Role.ADMIN}


def test_a_route_missing_from_the_table_is_refused_to_everyone(
    engine: Engine, clock: FakeClock, auth: dict[Role, dict[str, str]]
) -> None:
    extra = APIRouter(prefix="/extra")

    @extra.get("/unlisted", name="extra.unlisted")
    def unlisted(principal: Authorized) -> dict[str, str]:
        return {"name": principal.name}

    @extra.get("/admins")
    def admins(principal: Principal = Depends(require(Role.ADMIN))) -> dict[str, str]:  # noqa: B008
        return {"name": principal.name}

    app = create_app(engine=engine, settings=CloudSettings(), extra_routers=[extra], now_ms=clock)
    with TestClient(app) as client:
        for role in Role:
            assert client.get("/v1/extra/unlisted", headers=auth[role]).status_code == 403
        assert client.get("/v1/extra/admins", headers=auth[Role.ADMIN]).json() == {"name": "admin-user"}
        assert client.get("/v1/extra/admins", headers=auth[Role.OPERATOR]).status_code == 403
        assert client.get("/v1/extra/admins").status_code == 401


@pytest.mark.parametrize(
    "header",
    ["", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer not-a-key", "Bearer ct_zzzzzzzz_" + "a" * 40],
)
def test_malformed_authorization_is_401(client: TestClient, header: str) -> None:
    answer = client.get("/v1/alerts", headers={"Authorization": header} if header else {})
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == "Bearer"


def test_a_key_is_shown_once_and_only_its_hash_is_stored(engine: Engine) -> None:
    with engine.begin() as conn:
        new = create_key(conn, role=Role.QUALITY, name="  qa-lead  ", now_ms=1000)
    assert KEY_FORMAT.fullmatch(new.key)
    assert new.key.startswith(f"ct_{new.prefix}_")
    with engine.begin() as conn:
        row = conn.execute(select(api_keys)).one()
    assert row.key_hash == hashlib.sha256(new.key.encode()).hexdigest() == hash_key(new.key)
    assert new.key not in [str(v) for v in row]
    assert (row.key_prefix, row.role, row.name, row.created_ms) == (new.prefix, "quality", "qa-lead", 1000)


def test_create_refuses_empty_or_long_names(engine: Engine) -> None:
    with engine.begin() as conn, pytest.raises(ValueError, match="1 to 64"):
        create_key(conn, role=Role.AUDITOR, name="   ", now_ms=0)
    with engine.begin() as conn, pytest.raises(ValueError, match="1 to 64"):
        create_key(conn, role=Role.AUDITOR, name="x" * 65, now_ms=0)


def test_verify_accepts_the_key_and_nothing_like_it(engine: Engine) -> None:
    with engine.begin() as conn:
        new = create_key(conn, role=Role.OPERATOR, name="dock-1", now_ms=0)
        other = create_key(conn, role=Role.OPERATOR, name="dock-2", now_ms=0)
    with engine.begin() as conn:
        key = verify_key(conn, new.key, now_ms=10)
        assert key is not None
        assert (key.name, key.role, key.prefix) == ("dock-1", Role.OPERATOR, new.prefix)
        # The right prefix with another key's secret, a truncated key, a flipped character: refused.
        assert verify_key(conn, f"ct_{new.prefix}_{other.key.split('_', 2)[2]}", now_ms=10) is None
        assert verify_key(conn, new.key[:-1], now_ms=10) is None
        flipped = new.key[:-1] + ("A" if new.key[-1] != "A" else "B")
        assert verify_key(conn, flipped, now_ms=10) is None


def test_last_used_is_written_at_most_once_a_minute(engine: Engine) -> None:
    with engine.begin() as conn:
        new = create_key(conn, role=Role.AUDITOR, name="audit", now_ms=0)

    def last_used() -> int | None:
        with engine.begin() as conn:
            return conn.execute(select(api_keys.c.last_used_ms)).scalar_one()

    assert last_used() is None
    for now_ms, expected in [(1_000, 1_000), (31_000, 1_000), (60_999, 1_000), (61_000, 61_000)]:
        with engine.begin() as conn:
            assert verify_key(conn, new.key, now_ms=now_ms) is not None
        assert last_used() == expected


def test_a_revoked_key_is_refused_by_the_api(
    engine: Engine, client: TestClient, keys: dict[Role, str], auth: dict[Role, dict[str, str]]
) -> None:
    assert client.get("/v1/alerts", headers=auth[Role.AUDITOR]).status_code == 200
    prefix = keys[Role.AUDITOR].split("_")[1]
    with engine.begin() as conn:
        revoked = revoke_key(conn, f"ct_{prefix}", now_ms=5)
    assert revoked.revoked_ms == 5
    answer = client.get("/v1/alerts", headers=auth[Role.AUDITOR])
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert client.get("/v1/alerts", headers=auth[Role.OPERATOR]).status_code == 200
    with engine.begin() as conn, pytest.raises(Conflict):
        revoke_key(conn, prefix, now_ms=6)
    with engine.begin() as conn, pytest.raises(NotFound):
        revoke_key(conn, "00000000", now_ms=6)
    with engine.begin() as conn:
        listed = {k.prefix: k for k in list_keys(conn)}
    assert listed[prefix].revoked_ms == 5
    assert len(listed) == len(Role)


def test_a_key_with_an_unknown_role_is_refused(engine: Engine, client: TestClient) -> None:
    with engine.begin() as conn:
        new = create_key(conn, role=Role.AUDITOR, name="x", now_ms=0)
        conn.execute(api_keys.update().where(api_keys.c.key_prefix == new.prefix).values(role="intern"))
        conn.execute(
            insert(api_keys).values(
                key_prefix="ffffffff", key_hash="0" * 64, role="admin", name="y", created_ms=0
            )
        )
    assert client.get("/v1/alerts", headers={"Authorization": f"Bearer {new.key}"}).status_code == 401


def test_the_actor_is_the_key_name(client: TestClient, auth: dict[Role, dict[str, str]], seed: Seed) -> None:
    seed.shipment("s-1")
    answer = client.post(
        "/v1/holds",
        json={"subject_type": "shipment", "subject_id": "s-1", "reason": "damaged"},
        headers=auth[Role.OPERATOR],
    )
    assert answer.status_code == 201
    assert answer.json()["placed_by"] == "operator-user"
