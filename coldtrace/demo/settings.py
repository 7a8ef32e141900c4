"""The demo's knobs: one typed settings object from an optional TOML file, ``COLDTRACE_DEMO_…`` from the
environment (``__`` between nesting levels), CLI beats both."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from coldtrace.settings import TomlSettings


class TelemetryEngine(enum.StrEnum):
    """How the demo reads telemetry back to check it: the write API is the same (InfluxDB v2)."""

    VICTORIAMETRICS = "victoriametrics"
    """``/api/v1/export`` (VictoriaMetrics keeps ``reading`` field ``seq`` as series ``reading_seq``)."""
    INFLUXDB = "influxdb"
    """InfluxQL over ``/query`` with ``db`` = bucket (InfluxDB 1.8+, 2.x with a DBRP mapping, 3.x)."""


class ServiceSettings(BaseModel):
    """``coldtrace demo --services``: the real servers to run the same demo against.

    Mosquitto cannot trust a throwaway PKI without being configured for it, so the demo starts its own
    Mosquitto processes (the installed binary, with configuration, ACL and certificates it writes);
    PostgreSQL and the time-series server are the operator's, reached by URL.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mosquitto: str = "mosquitto"
    """The Mosquitto 2.x binary: a path, or a name looked up on PATH and in /usr/sbin."""
    database_url: str | None = None
    """A PostgreSQL server (SQLAlchemy URL, e.g. ``postgresql+psycopg://user:pw@host/postgres``). The role
    must be allowed to create databases: each run gets a new ``coldtrace_demo_<hex>`` database there,
    dropped at exit unless the run's files are kept."""
    telemetry_url: str | None = None
    """Base URL of an InfluxDB v2 write API: VictoriaMetrics, InfluxDB 2.x/3.x (or 1.8+)."""
    telemetry_engine: TelemetryEngine = TelemetryEngine.VICTORIAMETRICS
    telemetry_token: SecretStr = SecretStr("")
    telemetry_org: str = "coldtrace"
    telemetry_bucket: str = "coldtrace"

    @field_validator("database_url")
    @classmethod
    def _postgres(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            backend = make_url(value).get_backend_name()
        except ArgumentError as exc:
            raise ValueError(f"not a database URL: {exc}") from exc
        if backend != "postgresql":
            raise ValueError("must be a PostgreSQL URL (postgresql+psycopg://…): the embedded demo is SQLite")
        return value

    def missing(self) -> list[str]:
        """The settings ``--services`` needs that are not set, as environment variable names."""
        need = {"database_url": self.database_url, "telemetry_url": self.telemetry_url}
        return [f"COLDTRACE_DEMO_SERVICES__{name.upper()}" for name, value in need.items() if value is None]


class DemoSettings(TomlSettings):
    """What an operator may tune in ``coldtrace demo``."""

    model_config = SettingsConfigDict(
        env_prefix="COLDTRACE_DEMO_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    host: str = "127.0.0.1"
    """Where the API listens (HTTPS with the demo PKI's server certificate)."""
    port: Annotated[int, Field(ge=0, le=65535)] = 8443
    """The API's port; 0 picks a free one."""
    workdir: Path | None = None
    """PKI, databases, outboxes, logs and the summary; None: a new temporary directory, removed at exit."""
    devices: Annotated[int, Field(ge=16, le=400, multiple_of=8)] = 32
    """Simulated devices: half reefers, a quarter cold rooms, a quarter pallets (eight to a shipment)."""
    speed: Annotated[float, Field(gt=0, le=1000)] = 150.0
    """Simulated seconds per wall-clock second (the scenario covers two simulated hours)."""
    seed: int = 7
    """The same seed gives the same fleet, faults and ground truth."""
    settle_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    """After the fleet has published everything: how long the cloud may take to store it all."""
    use_services: bool = False
    """``--services``: Mosquitto, PostgreSQL and a time-series server instead of the embedded ones."""
    services: ServiceSettings = ServiceSettings()
