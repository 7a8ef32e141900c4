"""The demo's knobs: one typed settings object, ``COLDTRACE_DEMO_…`` from the environment, CLI beats both."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class DemoSettings(BaseSettings):
    """What an operator may tune in ``coldtrace demo``."""

    model_config = SettingsConfigDict(env_prefix="COLDTRACE_DEMO_", extra="forbid", frozen=True)

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
