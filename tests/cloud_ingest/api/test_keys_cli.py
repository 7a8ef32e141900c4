"""``coldtrace cloud keys``: create prints the key once, list never shows secrets, revoke refuses it."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from cloud_ingest.db.engine import open_database
from cloud_ingest.db.tables import api_keys
from cloud_ingest.keys import hash_key, verify_key
from cloud_ingest.keys_cli import app
from coldtrace.exitcodes import ExitCode

runner = CliRunner()


@pytest.fixture
def config(tmp_path: Path, db_url: str) -> Path:
    path = tmp_path / "cloud.toml"
    path.write_text(f'database_url = "{db_url}"\n')
    return path


def test_create_list_revoke(config: Path, db_url: str) -> None:
    created = runner.invoke(
        app, ["create", "--role", "quality", "--name", "qa-lead", "--config", str(config)]
    )
    assert created.exit_code == ExitCode.OK, created.output
    key = created.stdout.strip()
    assert key.startswith("ct_")
    assert "\n" not in key
    assert "shown only now" in created.stderr
    prefix = key.split("_")[1]

    engine = open_database(db_url)
    try:
        with engine.begin() as conn:
            row = conn.execute(select(api_keys)).one()
            assert (row.key_prefix, row.role, row.name, row.key_hash) == (
                prefix,
                "quality",
                "qa-lead",
                hash_key(key),
            )
            assert verify_key(conn, key, now_ms=row.created_ms) is not None

        listed = runner.invoke(app, ["list", "--config", str(config)], terminal_width=200)
        assert listed.exit_code == ExitCode.OK
        assert prefix in listed.stdout
        assert "qa-lead" in listed.stdout
        assert key not in listed.output

        revoked = runner.invoke(app, ["revoke", f"ct_{prefix}", "--config", str(config)])
        assert revoked.exit_code == ExitCode.OK, revoked.output
        with engine.begin() as conn:
            assert verify_key(conn, key, now_ms=row.created_ms) is None
        twice = runner.invoke(app, ["revoke", prefix, "--config", str(config)])
        assert twice.exit_code == ExitCode.OK
        assert "already revoked" in twice.stderr
    finally:
        engine.dispose()


def test_errors_exit_with_their_codes(config: Path, tmp_path: Path) -> None:
    unknown = runner.invoke(app, ["revoke", "00000000", "--config", str(config)])
    assert unknown.exit_code == ExitCode.FAILURE
    assert "no API key" in unknown.stderr
    bad_role = runner.invoke(app, ["create", "--role", "root", "--name", "x", "--config", str(config)])
    assert bad_role.exit_code == ExitCode.USAGE
    empty_name = runner.invoke(app, ["create", "--role", "admin", "--name", " ", "--config", str(config)])
    assert empty_name.exit_code == ExitCode.USAGE
    missing = runner.invoke(app, ["list", "--config", str(tmp_path / "nope.toml")])
    assert missing.exit_code == ExitCode.IO
    broken = tmp_path / "broken.toml"
    broken.write_text("database_url = \n")
    assert runner.invoke(app, ["list", "--config", str(broken)]).exit_code == ExitCode.INVALID_INPUT
