"""devices.rules_t_ms; rule_state keeps open runs only

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 16:40:00

The rules took each device's newest device time from its rule_state rows, so every batch rewrote
four rows per device even when all its readings were in range. That time now lives on the device
row (written by the upsert each batch already makes), and rule_state holds only runs under way.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rules_t_ms", sa.BigInteger(), server_default="-1", nullable=False))
    op.execute(
        "UPDATE devices SET rules_t_ms = COALESCE("
        "(SELECT max(r.last_t_ms) FROM rule_state r WHERE r.device_id = devices.device_id), -1)"
    )
    op.execute("DELETE FROM rule_state WHERE run_start_ms IS NULL")


def downgrade() -> None:
    """Revert this revision (the deleted idle states are not needed by the older code either: a
    device without stored states starts fresh)."""
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("rules_t_ms")
