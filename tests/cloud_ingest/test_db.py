"""The Alembic migrations build exactly the schema in ``cloud_ingest.db.tables``, on both engines."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect

from cloud_ingest.db.engine import migrate, normalise_url
from cloud_ingest.db.tables import metadata


def test_migrated_schema_matches_the_tables(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    assert diff == []
    assert set(inspect(engine).get_table_names()) >= set(metadata.tables)


def test_migrating_twice_changes_nothing(engine: Engine) -> None:
    migrate(engine)
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == "0001"


def test_postgres_urls_use_psycopg3() -> None:
    assert normalise_url("postgresql://u@h:5/db").startswith("postgresql+psycopg://")
    assert normalise_url("sqlite:///x.db") == "sqlite:///x.db"
