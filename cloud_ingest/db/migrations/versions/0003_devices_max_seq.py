"""devices.max_seq: the highest sequence stored per device

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 15:30:00

The ingest path tells new readings from stored ones by this column: a reading above its device's
highest stored sequence is new without a look-up in ``readings``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_seq", sa.BigInteger(), server_default="-1", nullable=False))
    op.execute(
        "UPDATE devices SET max_seq = COALESCE("
        "(SELECT max(r.seq) FROM readings r WHERE r.device_id = devices.device_id), -1)"
    )


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("max_seq")
