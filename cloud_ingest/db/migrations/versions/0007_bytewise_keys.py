"""identifier and key columns compare byte by byte on PostgreSQL (COLLATE "C")

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25 01:00:00

Until now these columns took the database's default collation, which is the server's locale's.
Identifiers have no linguistic order, and under a locale such as en_US every B-tree insert and
look-up on them runs that locale's comparison. Measured on this project's machines (PostgreSQL 15,
COPY of 192,000 rows into a table shaped like ``readings`` with its three indexes, 12 transactions,
two runs each): ICU's en-US collation 1.81-1.87 s, "C" 1.22-1.25 s. A cluster initialised with
C.UTF-8, as the tests' are, showed no difference beyond the noise. glibc's en_US locale was not
installed there to measure.

Changing only the collation rewrites no table, but PostgreSQL rebuilds the indexes on these columns
and locks each table while it does: on a large ``readings`` table, plan the upgrade for a quiet
hour. SQLite compares bytes already and is left alone.
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# As of this revision (the tables module may change later): table → (column, varchar length).
COLUMNS: dict[str, list[tuple[str, int]]] = {
    "alerts": [("dedupe_key", 160), ("rule_id", 48), ("subject_id", 64), ("device_id", 64)],
    "batches": [("gateway_id", 64)],
    "bindings": [("gateway_id", 64), ("device_id", 64), ("shipment_id", 64)],
    "budgets": [("subject", 80), ("device_id", 64)],
    "chain_gaps": [("gateway_id", 64)],
    "devices": [("device_id", 64), ("gateway_id", 64), ("site_id", 64)],
    "enrollments": [("gateway_id", 64)],
    "gateways": [("gateway_id", 64), ("site_id", 64)],
    "gateway_keys": [("gateway_id", 64)],
    "holds": [("subject_id", 64)],
    "lots": [("lot_id", 64), ("shipment_id", 64)],
    "manifests": [("gateway_id", 64), ("site_id", 64)],
    "markers": [("gateway_id", 64), ("device_id", 64)],
    "mkt_buckets": [("subject", 80)],
    "readings": [("device_id", 64), ("gateway_id", 64), ("site_id", 64), ("shipment_id", 64)],
    "rule_state": [("device_id", 64), ("rule_id", 48), ("subject", 80)],
    "shipments": [("shipment_id", 64)],
}


def _collate(collation: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, columns in COLUMNS.items():
        changes = ", ".join(
            f'ALTER COLUMN {name} TYPE varchar({length}) COLLATE "{collation}"' for name, length in columns
        )
        op.execute(f"ALTER TABLE {table} {changes}")


def upgrade() -> None:
    """Apply this revision."""
    _collate("C")


def downgrade() -> None:
    """Revert this revision: the server's default collation again."""
    _collate("default")
