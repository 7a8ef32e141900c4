"""telemetry_spool.lines compressed with LZ4 on PostgreSQL

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 19:10:00

A group's spool row carries its line protocol, megabytes of text that PostgreSQL compresses when
it moves it out of line. With the default (pglz), compressing it was about a tenth of the server's
CPU while a worker drained a backlog (perf, scripts/bench_cloud.py); LZ4 compresses several times
faster. Servers built without LZ4 keep pglz. SQLite has no such setting.
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _has_lz4() -> bool:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return False
    # The setting lists lz4 only when the server was built with it.
    found = bind.exec_driver_sql(
        "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
    ).scalar()
    return bool(found)


def upgrade() -> None:
    """Apply this revision."""
    if _has_lz4():
        op.execute("ALTER TABLE telemetry_spool ALTER COLUMN lines SET COMPRESSION lz4")


def downgrade() -> None:
    """Revert this revision (rows already compressed stay readable either way)."""
    if _has_lz4():
        op.execute("ALTER TABLE telemetry_spool ALTER COLUMN lines SET COMPRESSION pglz")
