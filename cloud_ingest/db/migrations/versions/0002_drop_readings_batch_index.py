"""drop the readings (gateway_id, batch_seq) index

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 15:00:00

Nothing reads readings by batch (the batches table holds each batch's row), and keeping the index
cost PostgreSQL 1-2 us of every stored reading.
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("readings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_readings_gateway_id_batch_seq"))


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("readings", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_readings_gateway_id_batch_seq"), ["gateway_id", "batch_seq"], unique=False
        )
