"""The Alembic migrations build exactly the schema in ``cloud_ingest.db.tables``, on both engines."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.dialects import postgresql

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
        assert MigrationContext.configure(conn).get_current_revision() == head == "0007"


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


def _add_device(conn: Connection, device_id: str) -> None:
    """A device row with the columns every revision has."""
    conn.execute(
        text(
            "INSERT INTO devices (device_id, gateway_id, site_id, last_seen_ms, last_t_device_ms,"
            " last_seq, clock, clock_skew_ms) VALUES (:d, 'g', 's', 1, 1, 1, 'ok', 0)"
        ),
        {"d": device_id},
    )


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
            _add_device(conn, device)
    migrate(engine)
    with engine.connect() as conn:
        got = dict(conn.execute(text("SELECT device_id, max_seq FROM devices")).all())
    assert got == {"d-1": 7, "d-2": 1, "d-3": -1}


def test_revision_0004_moves_the_newest_time_to_the_device_and_keeps_only_open_runs(engine: Engine) -> None:
    command.downgrade(alembic_config(engine), "0003")
    with engine.begin() as conn:
        _add_device(conn, "d-1")
        for rule, last_t, start in [("temp_high", 500, 400), ("temp_low", 700, None), ("shock", 600, None)]:
            conn.execute(
                text(
                    "INSERT INTO rule_state (device_id, rule_id, last_t_ms, run_start_ms, run_count,"
                    " run_glitches, fired) VALUES ('d-1', :r, :t, :s, 0, 0, false)"
                ),
                {"r": rule, "t": last_t, "s": start},
            )
    migrate(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT rules_t_ms FROM devices")).scalar_one() == 700
        assert conn.execute(text("SELECT rule_id FROM rule_state")).scalars().all() == ["temp_high"]


def test_revision_0005_compresses_the_spools_line_protocol_with_lz4_on_postgresql(engine: Engine) -> None:
    query = text(
        "SELECT attcompression FROM pg_attribute"
        " WHERE attrelid = 'telemetry_spool'::regclass AND attname = 'lines'"
    )
    if engine.dialect.name != "postgresql":
        # SQLite has no per-column compression: the revision must leave its schema alone.
        test_migrated_schema_matches_the_tables(engine)
        return
    with engine.connect() as conn:
        assert conn.execute(query).scalar() == "l"
    command.downgrade(alembic_config(engine), "0004")
    with engine.connect() as conn:
        assert conn.execute(query).scalar() == "p"
    migrate(engine)
    with engine.connect() as conn:
        assert conn.execute(query).scalar() == "l"


def test_revision_0006_drops_rule_state_last_t_ms_and_back(engine: Engine) -> None:
    def columns() -> set[str]:
        return {str(c["name"]) for c in inspect(engine).get_columns("rule_state")}

    assert "last_t_ms" not in columns()
    with engine.begin() as conn:
        _add_device(conn, "d-1")
        conn.execute(text("UPDATE devices SET rules_t_ms = 900"))
        conn.execute(
            text(
                "INSERT INTO rule_state (device_id, rule_id, run_start_ms, run_count, run_glitches, fired)"
                " VALUES ('d-1', 'temp_high', 400, 0, 0, false)"
            )
        )
    command.downgrade(alembic_config(engine), "0005")
    assert "last_t_ms" in columns()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT last_t_ms FROM rule_state")).scalar_one() == 900
    migrate(engine)
    assert "last_t_ms" not in columns()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT run_start_ms FROM rule_state")).scalar_one() == 400


def _collations(engine: Engine) -> dict[tuple[str, str], str | None]:
    """PostgreSQL's collation of every character column of ours (None: the server's default)."""
    query = text(
        "SELECT table_name, column_name, collation_name FROM information_schema.columns"
        " WHERE table_schema = 'public' AND data_type IN ('character varying', 'text')"
        " AND table_name <> 'alembic_version'"
    )
    with engine.connect() as conn:
        return {(t, c): collation for t, c, collation in conn.execute(query)}


def test_revision_0007_makes_the_key_columns_bytewise_on_postgresql_and_back(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        test_migrated_schema_matches_the_tables(engine)  # SQLite compares bytes already: unchanged
        return
    # Alembic's comparison ignores collations: the tables module is the reference here.
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    migrated = _collations(engine)
    expected = {
        (table.name, column.name): getattr(column.type.dialect_impl(dialect), "collation", None)
        for table in metadata.sorted_tables
        for column in table.columns
        if (table.name, column.name) in migrated
    }
    assert sum(c == "C" for c in expected.values()) == 34  # as listed in the revision
    assert migrated == expected
    with engine.begin() as conn:
        _add_device(conn, "d-1")
    command.downgrade(alembic_config(engine), "0006")
    assert set(_collations(engine).values()) == {None}
    migrate(engine)
    assert _collations(engine) == expected
    with engine.connect() as conn:
        assert conn.execute(text("SELECT device_id FROM devices")).scalars().all() == ["d-1"]
