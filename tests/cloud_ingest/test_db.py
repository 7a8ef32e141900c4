"""The Alembic migrations build exactly the schema in ``cloud_ingest.db.tables``, on both engines."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

from cloud_ingest.db.engine import alembic_config, migrate, normalise_url
from cloud_ingest.db.tables import metadata


def test_migrated_schema_matches_the_tables(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    assert diff == []
    assert set(inspect(engine).get_table_names()) >= set(metadata.tables)


def test_migrating_twice_changes_nothing(engine: Engine) -> None:
    migrate(engine)
    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == head == "0003"


def _reading_indexes(engine: Engine) -> set[str]:
    return {str(ix["name"]) for ix in inspect(engine).get_indexes("readings")}


def test_revision_0002_drops_the_readings_batch_index_and_back(engine: Engine) -> None:
    assert "ix_readings_gateway_id_batch_seq" not in _reading_indexes(engine)
    command.downgrade(alembic_config(engine), "0001")
    assert "ix_readings_gateway_id_batch_seq" in _reading_indexes(engine)
    migrate(engine)
    assert "ix_readings_gateway_id_batch_seq" not in _reading_indexes(engine)
    assert "ix_readings_device_id_t_device_ms" in _reading_indexes(engine)


def test_postgres_urls_use_psycopg3() -> None:
    assert normalise_url("postgresql://u@h:5/db").startswith("postgresql+psycopg://")
    assert normalise_url("sqlite:///x.db") == "sqlite:///x.db"


def test_revision_0003_sets_each_devices_highest_stored_sequence(engine: Engine) -> None:
    command.downgrade(alembic_config(engine), "0002")
    with engine.begin() as conn:
        for device, seq in [("d-1", 7), ("d-1", 3), ("d-2", 1)]:
            conn.execute(
                text(
                    "INSERT INTO readings (device_id, seq, gateway_id, batch_seq, site_id, t_device_ms,"
                    " t_gateway_ms, received_ms, clock) VALUES (:d, :s, 'g', 1, 's', 1, 1, 1, 'ok')"
                ),
                {"d": device, "s": seq},
            )
        for device in ("d-1", "d-2", "d-3"):
            conn.execute(
                text(
                    "INSERT INTO devices (device_id, gateway_id, site_id, last_seen_ms, last_t_device_ms,"
                    " last_seq, clock, clock_skew_ms) VALUES (:d, 'g', 's', 1, 1, 1, 'ok', 0)"
                ),
                {"d": device},
            )
    migrate(engine)
    with engine.connect() as conn:
        got = dict(conn.execute(text("SELECT device_id, max_seq FROM devices")).all())
    assert got == {"d-1": 7, "d-2": 1, "d-3": -1}
