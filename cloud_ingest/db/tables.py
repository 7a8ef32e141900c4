"""The cloud's SQL schema (SQLAlchemy Core), one table per concern.

Core, not the ORM: the ingest path inserts and upserts in bulk, one statement per batch, and the API
reads with plain selects. Times are UTC milliseconds (``*_ms``, BIGINT) like the wire contract, so
event time (device clocks) and wall time (``received_ms``) compare without conversions. The schema
changes only through Alembic revisions in ``cloud_ingest/db/migrations``; a test checks the two agree.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.types import TypeEngine

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def bytewise(length: int) -> TypeEngine[str]:
    """``String(length)`` that PostgreSQL compares byte by byte (``COLLATE "C"``), for keys.

    Identifiers and the keys built from them (``[A-Za-z0-9._:-]``) have no linguistic order, but a
    column takes the database's default collation, which is the server's locale (often
    ``en_US.UTF-8``), and every B-tree insert and look-up on it then runs that locale's comparison.
    Byte order is also the same on every server. SQLite compares bytes already. See migration 0007.
    """
    return String(length).with_variant(String(length, collation="C"), "postgresql")


ID = bytewise(64)
#: A rule's subject, ``shipment:<id>`` or ``lot:<id>`` (see ``cloud_ingest.rules``).
SUBJECT = bytewise(80)
RULE_ID = bytewise(48)

# -- gateways and their chains ----------------------------------------------------------------------
gateways = Table(
    "gateways",
    metadata,
    Column("gateway_id", ID, primary_key=True),
    Column("site_id", ID, nullable=True),
    Column("status", String(16), nullable=False, server_default="active"),  # active | revoked
    Column("created_ms", BigInteger, nullable=False),
    Column("revoked_ms", BigInteger, nullable=True),
    Column("last_seen_ms", BigInteger, nullable=True),
    # Highest batch sequence accepted; the chain may still have gaps below it (see chain_gaps).
    Column("head_seq", BigInteger, nullable=False, server_default="0"),
    Column("head_hash", String(64), nullable=True),
    Column("batches_accepted", BigInteger, nullable=False, server_default="0"),
    Column("readings_accepted", BigInteger, nullable=False, server_default="0"),
)

gateway_keys = Table(
    "gateway_keys",
    metadata,
    Column("key_id", String(16), primary_key=True),  # hex of the frame's 8-byte key id
    Column("gateway_id", ID, ForeignKey("gateways.gateway_id"), nullable=False, index=True),
    Column("public_key", LargeBinary(32), nullable=False),  # raw Ed25519
    Column("created_ms", BigInteger, nullable=False),
    Column("revoked_ms", BigInteger, nullable=True),
)

batches = Table(
    "batches",
    metadata,
    Column("gateway_id", ID, primary_key=True),
    Column("batch_seq", BigInteger, primary_key=True),
    Column("frame_hash", String(64), nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("received_ms", BigInteger, nullable=False),
    Column("readings", Integer, nullable=False),
    # Readings new to the cloud; the rest were already stored under their (device, seq).
    Column("accepted", Integer, nullable=False),
    Column("markers", Integer, nullable=False),
    Column("transport", String(8), nullable=False),  # mqtt | http
)

chain_gaps = Table(
    "chain_gaps",
    metadata,
    Column("gateway_id", ID, primary_key=True),
    Column("seq_from", BigInteger, primary_key=True),
    Column("seq_to", BigInteger, nullable=False),
    Column("detected_ms", BigInteger, nullable=False),
    Column("filled_ms", BigInteger, nullable=True),
    Column("alert_id", BigInteger, nullable=True),
)

# -- readings and devices ------------------------------------------------------------------------------
readings = Table(
    "readings",
    metadata,
    Column("device_id", ID, primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("gateway_id", ID, nullable=False),
    Column("batch_seq", BigInteger, nullable=False),
    Column("site_id", ID, nullable=False),
    Column("t_device_ms", BigInteger, nullable=False),
    Column("t_gateway_ms", BigInteger, nullable=False),
    Column("received_ms", BigInteger, nullable=False),
    Column("clock", String(8), nullable=False),
    Column("temperature_c", Float, nullable=True),
    Column("humidity_pct", Float, nullable=True),
    Column("shock_g", Float, nullable=True),
    Column("battery_v", Float, nullable=True),
    Column("anomaly_score", Float, nullable=True),
    Column("flags", String(255), nullable=False, server_default=""),
    Column("shipment_id", ID, nullable=True),
    Column("lot_ids", Text, nullable=False, server_default=""),  # comma-joined, sorted
    Index(None, "device_id", "t_device_ms"),
    Index(None, "shipment_id", "t_device_ms"),
)

devices = Table(
    "devices",
    metadata,
    Column("device_id", ID, primary_key=True),
    Column("gateway_id", ID, nullable=False, index=True),
    Column("site_id", ID, nullable=False),
    Column("last_seen_ms", BigInteger, nullable=False),  # gateway receive time of the newest reading
    Column("last_t_device_ms", BigInteger, nullable=False),
    Column("last_seq", BigInteger, nullable=False),
    Column("battery_v", Float, nullable=True),
    Column("temperature_c", Float, nullable=True),
    Column("clock", String(8), nullable=False),
    Column("clock_skew_ms", BigInteger, nullable=False),
    Column("firmware", String(64), nullable=True),
    Column("readings_total", BigInteger, nullable=False, server_default="0"),
    # The highest sequence stored: newer readings need no look-up to be known new (see ingest).
    Column("max_seq", BigInteger, nullable=False, server_default="-1"),
    # The newest device time of its readings: a reading older than this is late, and the rules
    # replay the device's history around it (see rules.engine).
    Column("rules_t_ms", BigInteger, nullable=False, server_default="-1"),
)

markers = Table(
    "markers",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("gateway_id", ID, nullable=False),
    Column("batch_seq", BigInteger, nullable=False),
    Column("device_id", ID, nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("seq_from", BigInteger, nullable=False),
    Column("seq_to", BigInteger, nullable=False),
    Column("count", BigInteger, nullable=False),
    Column("t_from_ms", BigInteger, nullable=False),
    Column("t_to_ms", BigInteger, nullable=False),
)

rejects = Table(
    "rejects",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("received_ms", BigInteger, nullable=False, index=True),
    Column("reason", String(32), nullable=False, index=True),
    Column("detail", Text, nullable=False),
    Column("identity", String(128), nullable=True),
    Column("topic", String(255), nullable=True),
    Column("transport", String(8), nullable=False),
    Column("frame_sha256", String(64), nullable=False),
    Column("raw", LargeBinary, nullable=True),  # None when larger than the dead-letter byte cap
    Column("size", Integer, nullable=False),
)

# -- what readings protect: shipments, lots, manifests ----------------------------------------------
shipments = Table(
    "shipments",
    metadata,
    Column("shipment_id", ID, primary_key=True),
    Column("profile", String(32), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
)

lots = Table(
    "lots",
    metadata,
    Column("lot_id", ID, primary_key=True),
    Column("shipment_id", ID, nullable=True, index=True),
    Column("profile", String(32), nullable=False),
    Column("sku", String(64), nullable=True),
    Column("quantity", Float, nullable=False, server_default="0"),
    Column("unit", String(16), nullable=False, server_default="units"),
    Column("created_ms", BigInteger, nullable=False),
)

manifests = Table(
    "manifests",
    metadata,
    Column("gateway_id", ID, primary_key=True),
    Column("version", BigInteger, primary_key=True),
    Column("site_id", ID, nullable=False),
    Column("issued_ms", BigInteger, nullable=False),
    Column("body", LargeBinary, nullable=False),  # canonical JSON, as pushed to the gateway
    Column("created_by", String(64), nullable=False),
    Column("published_ms", BigInteger, nullable=True),
)

bindings = Table(
    "bindings",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("gateway_id", ID, nullable=False),
    Column("manifest_version", BigInteger, nullable=False),
    Column("device_id", ID, nullable=False),
    Column("shipment_id", ID, nullable=True),
    Column("lot_ids", Text, nullable=False, server_default=""),
    Column("profile", String(32), nullable=False),
    Column("valid_from_ms", BigInteger, nullable=False),
    Column("valid_to_ms", BigInteger, nullable=True),
    Index(None, "device_id", "valid_from_ms"),
)

# -- rule state ------------------------------------------------------------------------------------------
rule_state = Table(
    "rule_state",
    metadata,
    Column("device_id", ID, primary_key=True),
    Column("rule_id", RULE_ID, primary_key=True),
    Column("run_start_ms", BigInteger, nullable=True),
    Column("run_last_ms", BigInteger, nullable=True),
    Column("run_count", Integer, nullable=False, server_default="0"),
    Column("run_glitches", Integer, nullable=False, server_default="0"),
    Column("run_peak", Float, nullable=True),  # worst distance beyond the limit during the run
    Column("subject", SUBJECT, nullable=True),  # what the open run's alert is about
    Column("fired", Boolean, nullable=False, server_default=text("false")),
    Index(None, "rule_id", "subject"),
)

mkt_buckets = Table(
    "mkt_buckets",
    metadata,
    Column("subject", SUBJECT, primary_key=True),  # "shipment:<id>" or "lot:<id>"
    Column("hour_ms", BigInteger, primary_key=True),
    Column("sum_exp", Float, nullable=False),  # sum of exp(-ΔH/(R·T)) over the bucket's readings
    Column("n", BigInteger, nullable=False),
)

# Out-of-range time per (subject, device): the worst sensor's total is the subject's, since summing
# the sensors of one shipment would count the same minutes several times.
budgets = Table(
    "budgets",
    metadata,
    Column("subject", SUBJECT, primary_key=True),
    Column("device_id", ID, primary_key=True),
    Column("out_of_range_ms", BigInteger, nullable=False),
    Column("fired", Boolean, nullable=False, server_default=text("false")),
)

# -- alerts, holds, events ---------------------------------------------------------------------------
alerts = Table(
    "alerts",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("dedupe_key", bytewise(160), nullable=False),
    Column("rule_id", RULE_ID, nullable=False),
    Column("kind", String(16), nullable=False),  # excursion | budget | mkt | gateway
    Column("subject_type", String(16), nullable=False),  # shipment | lot | gateway | device
    Column("subject_id", ID, nullable=False),
    Column("severity", String(16), nullable=False),
    Column("condition", String(16), nullable=False),  # active | cleared
    Column("workflow", String(16), nullable=False),  # unacknowledged | acknowledged | closed
    Column("title", String(255), nullable=False),
    Column("device_id", ID, nullable=True),
    Column("started_ms", BigInteger, nullable=False),  # event time the condition truly began
    Column("raised_ms", BigInteger, nullable=False),  # wall time the cloud raised it
    Column("cleared_ms", BigInteger, nullable=True),
    Column("updated_ms", BigInteger, nullable=False),
    Column("escalation_level", Integer, nullable=False, server_default="0"),
    Column("occurrences", Integer, nullable=False, server_default="1"),
    Column("detail", Text, nullable=False, server_default="{}"),
    # One open alert per (rule, subject): a repeat breach updates it instead of raising another.
    Index(
        "uq_alerts_open_dedupe",
        "dedupe_key",
        unique=True,
        sqlite_where=text("workflow != 'closed'"),
        postgresql_where=text("workflow != 'closed'"),
    ),
    Index(None, "workflow", "condition"),
    Index(None, "subject_type", "subject_id"),
)

alert_events = Table(
    "alert_events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("alert_id", BigInteger, ForeignKey("alerts.id"), nullable=False, index=True),
    Column("at_ms", BigInteger, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("comment", Text, nullable=True),
)

holds = Table(
    "holds",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("subject_type", String(16), nullable=False),  # lot | shipment
    Column("subject_id", ID, nullable=False),
    Column("status", String(16), nullable=False),  # active | released
    Column("source", String(16), nullable=False),  # rule | manual
    Column("reason", Text, nullable=False),
    Column("alert_id", BigInteger, ForeignKey("alerts.id"), nullable=True),
    Column("placed_by", String(64), nullable=False),
    Column("placed_ms", BigInteger, nullable=False),
    Column("released_by", String(64), nullable=True),
    Column("released_ms", BigInteger, nullable=True),
    Column("release_reason", Text, nullable=True),
    # A rule places at most one active hold per subject; people may add manual ones beside it.
    Index(
        "uq_holds_active_rule_subject",
        "subject_type",
        "subject_id",
        unique=True,
        sqlite_where=text("status = 'active' AND source = 'rule'"),
        postgresql_where=text("status = 'active' AND source = 'rule'"),
    ),
    Index(None, "status"),
)

outbox_events = Table(
    "outbox_events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("at_ms", BigInteger, nullable=False),
    Column("topic", String(48), nullable=False),  # e.g. hold.placed, alert.raised
    Column("aggregate_type", String(16), nullable=False),
    Column("aggregate_id", String(80), nullable=False),
    Column("payload", Text, nullable=False),  # JSON
    Column("erp_done_ms", BigInteger, nullable=True),
    Column("ledger_done_ms", BigInteger, nullable=True),
    Index(None, "erp_done_ms"),
    Index(None, "ledger_done_ms"),
)

webhooks = Table(
    "webhooks",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("url", Text, nullable=False),
    Column("secret", String(128), nullable=False),
    Column("topics", Text, nullable=False, server_default="*"),  # comma-separated prefixes, or *
    Column("active", Boolean, nullable=False, server_default=text("true")),
    Column("created_ms", BigInteger, nullable=False),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("webhook_id", BigInteger, ForeignKey("webhooks.id"), nullable=False),
    Column("event_id", BigInteger, ForeignKey("outbox_events.id"), nullable=False),
    Column("status", String(16), nullable=False),  # pending | delivered | dead
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_ms", BigInteger, nullable=False),
    Column("last_status", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("delivered_ms", BigInteger, nullable=True),
    Index(None, "status", "next_attempt_ms"),
)

# -- access ---------------------------------------------------------------------------------------------
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("key_prefix", String(16), nullable=False, unique=True),
    Column("key_hash", String(64), nullable=False),  # SHA-256 hex of the whole key
    Column("role", String(16), nullable=False),
    Column("name", String(64), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("revoked_ms", BigInteger, nullable=True),
    Column("last_used_ms", BigInteger, nullable=True),
)

enrollments = Table(
    "enrollments",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("gateway_id", ID, nullable=False, index=True),
    Column("token_hash", String(64), nullable=False),
    Column("status", String(16), nullable=False),  # open | submitted | approved | rejected
    Column("created_ms", BigInteger, nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    Column("csr_pem", Text, nullable=True),
    Column("signing_key", LargeBinary(32), nullable=True),  # the gateway's Ed25519 batch key, raw
    Column("cert_pem", Text, nullable=True),
    Column("decided_by", String(64), nullable=True),
    Column("decided_ms", BigInteger, nullable=True),
)

# -- telemetry spool --------------------------------------------------------------------------------------
telemetry_spool = Table(
    "telemetry_spool",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("created_ms", BigInteger, nullable=False),
    Column("lines", Text, nullable=False),
    Column("points", Integer, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_ms", BigInteger, nullable=False, server_default="0"),
    Column("last_error", Text, nullable=True),
)
