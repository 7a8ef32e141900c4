"""Fixtures of the API tests: the app over a fresh database (SQLite and PostgreSQL), keys per role."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, insert

from cloud_ingest.alerts import AlertSpec, Severity, raise_alert
from cloud_ingest.api import PublishFailed, create_app
from cloud_ingest.db.tables import bindings, gateways, lots, shipments
from cloud_ingest.keys import Role, create_key
from cloud_ingest.settings import CloudSettings

START_MS = 1_750_000_000_000


class FakeClock:
    """The app's clock, moved by the test."""

    def __init__(self, now_ms: int = START_MS) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, ms: int) -> None:
        self.now_ms += ms


class RecordingPublisher:
    """A ManifestPublisher that remembers what it was given, or fails when told to."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.fail = False

    def publish_manifest(self, gateway_id: str, body: bytes) -> None:
        if self.fail:
            raise PublishFailed("broker unreachable")
        self.sent.append((gateway_id, body))


class Seed:
    """Rows the API reads, written straight into the tables."""

    def __init__(self, engine: Engine, clock: FakeClock) -> None:
        self.engine = engine
        self.clock = clock

    def shipment(self, shipment_id: str, profile: str = "vaccines") -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(shipments).values(shipment_id=shipment_id, profile=profile, created_ms=self.clock())
            )

    def lot(
        self, lot_id: str, shipment_id: str | None, *, quantity: float = 0.0, profile: str = "vaccines"
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(lots).values(
                    lot_id=lot_id, shipment_id=shipment_id, profile=profile, quantity=quantity,
                    created_ms=self.clock(),
                )
            )  # fmt: skip

    def gateway(self, gateway_id: str, *, site_id: str | None = "site-1", status: str = "active") -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(gateways).values(
                    gateway_id=gateway_id, site_id=site_id, status=status, created_ms=self.clock()
                )
            )

    def binding(
        self, device_id: str, shipment_id: str | None, lot_ids: str = "", gateway_id: str = "gw-1"
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(bindings).values(
                    gateway_id=gateway_id, manifest_version=1, device_id=device_id, shipment_id=shipment_id,
                    lot_ids=lot_ids, profile="vaccines", valid_from_ms=0,
                )
            )  # fmt: skip

    def alert(
        self,
        subject_id: str,
        *,
        subject_type: str = "shipment",
        rule_id: str = "excursion.high",
        severity: Severity = Severity.MAJOR,
        started_ms: int | None = None,
    ) -> int:
        spec = AlertSpec(
            rule_id=rule_id, kind="excursion", subject_type=subject_type, subject_id=subject_id,
            severity=severity, title=f"{rule_id} on {subject_id}",
            started_ms=self.clock() if started_ms is None else started_ms,
        )  # fmt: skip
        with self.engine.begin() as conn:
            alert_id, _ = raise_alert(conn, spec, now_ms=self.clock())
        return alert_id

    def rows(self, statement: Any) -> list[Any]:
        with self.engine.begin() as conn:
            return list(conn.execute(statement).all())


@pytest.fixture
def clock() -> FakeClock:
    """The app's clock."""
    return FakeClock()


@pytest.fixture
def publisher() -> RecordingPublisher:
    """The app's manifest publisher."""
    return RecordingPublisher()


@pytest.fixture
def settings() -> CloudSettings:
    """Default cloud settings (the engine is passed separately)."""
    return CloudSettings()


@pytest.fixture
def app(engine: Engine, settings: CloudSettings, clock: FakeClock, publisher: RecordingPublisher) -> FastAPI:
    """The API over the test database."""
    return create_app(engine=engine, settings=settings, publisher=publisher, now_ms=clock)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    """An HTTP client of ``app``; server errors fail the test instead of becoming 500s."""
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def keys(engine: Engine, clock: FakeClock) -> dict[Role, str]:
    """One API key per role, named ``<role>-user``."""
    with engine.begin() as conn:
        return {role: create_key(conn, role=role, name=f"{role}-user", now_ms=clock()).key for role in Role}


@pytest.fixture
def auth(keys: dict[Role, str]) -> dict[Role, dict[str, str]]:
    """Authorization headers per role."""
    return {role: {"Authorization": f"Bearer {key}"} for role, key in keys.items()}


@pytest.fixture
def seed(engine: Engine, clock: FakeClock) -> Seed:
    """Writes rows straight into the tables."""
    return Seed(engine, clock)
