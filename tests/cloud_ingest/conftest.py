"""Fixtures of the cloud tests: a fresh, migrated database per test, on SQLite and on PostgreSQL."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Engine

from cloud_ingest.db.engine import open_database
from tests.harness.postgres import Postgres

_numbers = itertools.count()


def fresh_postgres_url(server: Postgres) -> str:
    """A new, empty database on ``server``; returns its URL."""
    name = f"ct_{next(_numbers)}"
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql://{server.user}@{server.host}:{server.port}/{name}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """URL of an empty database, once on SQLite and once on PostgreSQL (the suite runs on both)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('db') / 'cloud.db'}"
    server: Postgres = request.getfixturevalue("postgres")
    return fresh_postgres_url(server)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """A migrated engine on ``db_url``."""
    engine = open_database(db_url)
    try:
        yield engine
    finally:
        engine.dispose()
