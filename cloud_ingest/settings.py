"""The cloud's configuration: one TOML file, every key overridable from the environment.

Environment variables use the prefix ``COLDTRACE_CLOUD_`` and ``__`` between nesting levels, e.g.
``COLDTRACE_CLOUD_DATABASE_URL=postgresql://ingest@db/coldtrace`` or
``COLDTRACE_CLOUD_TELEMETRY__URL=http://victoria:8428``. ``coldtrace cloud serve`` and
``coldtrace cloud worker`` read the same file, so the API and the workers cannot disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from coldtrace.contract.limits import MAX_BATCH_BYTES
from coldtrace.contract.reading import ID_PATTERN
from coldtrace.profiles import ProfileName
from coldtrace.settings import BrokerSettings as SharedBrokerSettings
from coldtrace.settings import TomlSettings


class BrokerSettings(SharedBrokerSettings):
    """The cloud broker and the service identity a worker presents to it."""

    client_id: Annotated[str, Field(pattern=ID_PATTERN)] = "svc-ingest"
    """Also the certificate's identity; each worker appends ``-<n>`` (see ``coldtrace cloud worker``)."""
    share_group: Annotated[str, Field(pattern=ID_PATTERN)] = "ingest"
    """Workers of one group split the gateways' batches (``$share/<group>/…``)."""
    session_expiry_s: Annotated[int, Field(ge=0)] = 3600
    """How long the broker keeps a stopped worker's queued batches; covers a restart or deploy."""
    group_max_frames: Annotated[int, Field(ge=1, le=1000)] = 32
    """Most batches a worker stores in one transaction. A worker takes whatever has arrived while it
    stored the previous group, so an idle worker stores each batch at once and a busy one pays the
    per-transaction cost once for many. Draining a backlog of 500-reading batches, 32 beat 64 in
    each of three alternating pairs (worker/bare-writer ratio 0.29-0.33 against 0.26-0.30, a third
    less memory) and matched 16: smaller groups keep a group's objects in cache and shorten the
    pipeline's ends (the first check and the last store, which nothing overlaps)."""
    group_max_bytes: Annotated[int, Field(ge=1)] = 16 * 1024 * 1024
    """Most frame bytes in one group (the frame that crosses it still joins)."""


class TelemetrySettings(BaseModel):
    """Where telemetry goes: an InfluxDB v2 write API (InfluxDB 2.x/3.x, or VictoriaMetrics)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = None
    """None keeps telemetry in the spool only (an embedded demo without a time-series server)."""
    token: SecretStr = SecretStr("")
    org: str = "coldtrace"
    bucket: str = "coldtrace"
    timeout_s: Annotated[float, Field(gt=0)] = 10.0
    chunk_points: Annotated[int, Field(ge=1)] = 20_000
    """Points per write request while draining the spool."""
    retry_initial_s: Annotated[float, Field(gt=0)] = 0.5
    retry_max_s: Annotated[float, Field(gt=0)] = 30.0
    lease_s: Annotated[float, Field(gt=0)] = 60.0
    """A worker that dies (or loses the database) mid-write leaves its chunk to others after this long."""
    poll_s: Annotated[float, Field(gt=0)] = 0.2
    """How often a drainer with nothing to write looks at the spool again (its own chunks it is
    handed as they commit)."""
    handoff_chunks: Annotated[int, Field(ge=0)] = 4
    """Committed chunks a worker hands to its own drainer in memory at most; 0 sends every chunk
    through the table."""


class RuleSettings(BaseModel):
    """Excursion rules per product profile. Durations in seconds, event time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    delay_s: dict[ProfileName, Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: {
            ProfileName.VACCINES: 900.0,
            ProfileName.FROZEN: 1800.0,
            ProfileName.FRESH_PRODUCE: 1800.0,
            ProfileName.AMBIENT_PHARMA: 3600.0,
        }
    )
    """A breach becomes an excursion once it lasts this long without a reading back in range."""
    critical_margin_c: Annotated[float, Field(gt=0)] = 5.0
    """A breach this far beyond the limit is critical rather than major."""
    budget_s: dict[ProfileName, Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: {
            ProfileName.VACCINES: 3600.0,
            ProfileName.FROZEN: 7200.0,
            ProfileName.FRESH_PRODUCE: 7200.0,
            ProfileName.AMBIENT_PHARMA: 14_400.0,
        }
    )
    """Cumulative time out of range a lot or shipment may spend over its life."""
    max_sample_gap_s: Annotated[float, Field(gt=0)] = 900.0
    """A silence longer than this counts no longer as out-of-range time (a dropout is not a breach)."""
    mkt_activation_k: Annotated[float, Field(gt=0)] = 10_000.0
    """ΔH/R in kelvin for mean kinetic temperature (83.144 kJ/mol, the ICH default)."""
    mkt_window_h: Annotated[int, Field(ge=1, le=24 * 30)] = 24
    mkt_min_coverage_h: Annotated[int, Field(ge=1, le=24 * 30)] = 12
    """Hours of the window that must hold readings before MKT is judged: over the first hour of a
    shipment, a ten-minute door opening would otherwise be most of the average and hold the product
    long before the threshold rule's delay says it is an excursion."""
    mkt_max_c: dict[ProfileName, float] = Field(
        default_factory=lambda: {
            ProfileName.VACCINES: 8.0,
            ProfileName.FROZEN: -15.0,
            ProfileName.FRESH_PRODUCE: 4.0,
            ProfileName.AMBIENT_PHARMA: 25.0,
        }
    )
    glitch_score: Annotated[float, Field(ge=0, le=1)] = 0.5
    """Edge anomaly scores at or above this mark a reading as a probable glitch."""
    recompute_lookback_s: Annotated[float, Field(gt=0)] = 86_400.0
    """How far back a late (backfilled) reading makes the engine re-read a device's history."""

    @model_validator(mode="after")
    def _coverage_fits_the_window(self) -> Self:
        if self.mkt_min_coverage_h > self.mkt_window_h:
            raise ValueError(
                f"mkt_min_coverage_h ({self.mkt_min_coverage_h}) cannot exceed "
                f"mkt_window_h ({self.mkt_window_h})"
            )
        return self


class ApiSettings(BaseModel):
    """The HTTPS API. Without TLS files it serves plain HTTP on loopback (development only)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8443
    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None
    """Trust anchor for gateways' client certificates on ``POST /v1/ingest/batches``."""
    client_crl_file: Path | None = None
    """The PKI's CRL: a revoked gateway certificate fails the ingest handshake (re-read when it changes)."""
    ingest_port: Annotated[int, Field(ge=0, le=65535)] | None = 8444
    """Gateways' HTTPS ingest listener (mutual TLS; needs cert_file, key_file, client_ca_file). None: off."""
    metrics_port: Annotated[int, Field(ge=0, le=65535)] | None = 9464
    """Prometheus ``/metrics`` and ``/health`` of the API process, on ``metrics_host`` (workers count
    up from ``metrics_port``, 9465). None: off."""


class OAuthSettings(BaseModel):
    """OAuth2 access tokens (JWT) from an identity provider, accepted beside API keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str
    audience: str
    public_key_files: Annotated[tuple[Path, ...], Field(min_length=1)]
    """The provider's signing keys as PEM files (several during a key rotation)."""
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    role_claim: str = "coldtrace_role"
    """Claim holding one of operator, quality, auditor, admin."""
    name_claim: str = "preferred_username"
    """Claim recorded as the actor in histories (falls back to ``sub``)."""
    leeway_s: Annotated[float, Field(ge=0, le=300)] = 30.0


class CloudSettings(TomlSettings):
    """Everything an operator may tune in the cloud."""

    model_config = SettingsConfigDict(
        env_prefix="COLDTRACE_CLOUD_", env_nested_delimiter="__", extra="forbid"
    )
    database_url: str = "sqlite:///coldtrace-cloud.db"
    """SQLAlchemy URL; ``postgresql://user@host/db`` in production (psycopg 3 is used)."""
    broker: BrokerSettings | None = None
    telemetry: TelemetrySettings = TelemetrySettings()
    rules: RuleSettings = RuleSettings()
    api: ApiSettings = ApiSettings()
    oauth: OAuthSettings | None = None
    pki_dir: Path | None = None
    """The issuing CA (``coldtrace certs``) that signs enrolled gateways' CSRs; None: enrollment off."""
    max_batch_bytes: Annotated[int, Field(ge=1024, le=MAX_BATCH_BYTES)] = MAX_BATCH_BYTES
    deadletter_max_raw_bytes: Annotated[int, Field(ge=0)] = 64 * 1024
    """Rejected frames up to this size are kept whole; larger ones only by hash."""
    chain_gap_grace_s: Annotated[float, Field(ge=0)] = 60.0
    """A missing batch may still be in flight on another worker; alert only after this long."""
    escalate_after_s: Annotated[float, Field(gt=0)] = 1800.0
    """An alert unacknowledged this long is escalated (one level per period)."""
    housekeeping_interval_s: Annotated[float, Field(gt=0)] = 5.0
    webhook_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    webhook_max_attempts: Annotated[int, Field(ge=1)] = 8
    webhook_retry_initial_s: Annotated[float, Field(gt=0)] = 2.0
    webhook_retry_max_s: Annotated[float, Field(gt=0)] = 600.0
    gc_young_threshold: Annotated[int, Field(ge=100)] = 200_000
    """Allocations between the garbage collector's young-generation passes (Python's default: 700).
    A group of batches builds hundreds of thousands of objects: at 700 their passes and the
    promotions they cause took about a third of a worker's CPU, at 50,000 a tenth."""
    metrics_host: str = "127.0.0.1"
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9465
