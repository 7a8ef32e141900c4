"""rule_state.last_t_ms dropped

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24 19:40:00

Since 0004 each device's newest device time lives in ``devices.rules_t_ms`` and rule_state holds
open runs only; nothing read ``last_t_ms`` any more, yet every evaluation kept it up to date.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("rule_state", schema=None) as batch_op:
        batch_op.drop_column("last_t_ms")


def downgrade() -> None:
    """Revert this revision: the column comes back with each device's newest time."""
    with op.batch_alter_table("rule_state", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_t_ms", sa.BigInteger(), server_default="-1", nullable=False))
    op.execute(
        "UPDATE rule_state SET last_t_ms = COALESCE("
        "(SELECT d.rules_t_ms FROM devices d WHERE d.device_id = rule_state.device_id), -1)"
    )
