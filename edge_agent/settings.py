"""The edge agent's configuration: one TOML file, every key overridable from the environment.

Environment variables use the prefix ``COLDTRACE_AGENT_`` and ``__`` between nesting levels, e.g.
``COLDTRACE_AGENT_CLOUD__URL=mqtts://cloud.example:8883``. Values are validated once at start-up; an
invalid file names the key and the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from coldtrace.contract.limits import MAX_READINGS_PER_BATCH
from coldtrace.contract.reading import ID_PATTERN
from coldtrace.settings import BrokerSettings, TomlSettings


class AgentSettings(TomlSettings):
    """Everything an operator may tune on a gateway."""

    model_config = SettingsConfigDict(
        env_prefix="COLDTRACE_AGENT_", env_nested_delimiter="__", extra="forbid"
    )
    gateway_id: Annotated[str, Field(pattern=ID_PATTERN)]
    site_id: Annotated[str, Field(pattern=ID_PATTERN)]
    state_dir: Path
    """Outbox, registry and dead letters live here (owned by the agent's user, mode 0700)."""
    signing_key: Path
    """The gateway's Ed25519 batch-signing key (PEM, PKCS8, mode 0600)."""
    local: BrokerSettings
    """The gateway's own broker, where devices publish."""
    cloud: BrokerSettings
    """The cloud broker batches go to."""
    ingest_client: Literal["native", "paho"] = "native"
    """MQTT client reading device messages: ``native`` (coldtrace.mqtt_native, about three times less
    CPU per message, see BENCHMARKS.md) or ``paho`` (paho-mqtt, as the uplink uses)."""
    outbox_budget_bytes: Annotated[int, Field(ge=1024 * 1024)] = 512 * 1024 * 1024
    outbox_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    """FULL survives power loss; NORMAL survives a process crash only (see BENCHMARKS.md)."""
    batch_max_readings: Annotated[int, Field(ge=1, le=MAX_READINGS_PER_BATCH)] = 500
    batch_max_age_ms: Annotated[int, Field(ge=1)] = 250
    uplink_window: Annotated[int, Field(ge=1, le=256)] = 16
    """Signed batches in flight to the cloud broker at once. A draining backlog forms a group of them
    per outbox transaction (``FRAMES_PER_COMMIT`` in ``edge_agent.agent``) and may form one group
    ahead while the window is in flight. Formed batches cannot be thinned: a larger window, when the
    link fails silently, freezes more readings beyond the reach of the disk budget's thinning until
    the keepalive notices (at most the window plus one group)."""
    backfill_rate_per_s: Annotated[int, Field(ge=1)] = 20_000
    """Readings per second while draining a backlog, so a reconnecting fleet does not stampede."""
    live_window_ms: Annotated[int, Field(ge=0)] = 60_000
    """Readings received this recently count as live: after an outage they go before the backlog."""
    reconnect_initial_s: Annotated[float, Field(gt=0)] = 0.5
    reconnect_max_s: Annotated[float, Field(gt=0)] = 15.0
    skew_tolerance_ms: Annotated[int, Field(ge=0)] = 120_000
    jump_threshold_ms: Annotated[int, Field(ge=0)] = 300_000
    accept_unregistered: bool = True
    """Keep readings of devices missing from the manifest (flagged unbound) instead of dead-lettering them."""
    glitch_threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    model_dir: Path | None = None
    """A signed anomaly model package; None uses the one shipped with coldtrace."""
    model_trusted_keys: tuple[Path, ...] = ()
    feature_kernel: Literal["compiled", "jit"] = "compiled"
    """How the rolling-feature loop runs: ``compiled`` ahead of time by numba into ``kernel_dir`` (built
    on first start, about 10 s, needs a C compiler; the agent then never loads numba: about 65 MB less
    resident memory), or ``jit``: numba compiles it in the agent's process. Same numbers either way; a
    failed build falls back to ``jit`` and says why."""
    kernel_dir: Path | None = None
    """Where the compiled loop is kept (private to the agent's user); None: ``<state_dir>/kernels``."""
    kernel_build_timeout_s: Annotated[float, Field(gt=0)] = 300.0
    fallback_after_s: Annotated[float, Field(ge=0)] = 300.0
    """Raise local alerts for profile breaches once the cloud has been unreachable this long."""
    deadletter_max_rows: Annotated[int, Field(ge=100)] = 100_000
    metrics_host: str = "127.0.0.1"
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9464

    @property
    def kernel_path(self) -> Path:
        """The directory of the compiled feature loop."""
        return self.kernel_dir or self.state_dir / "kernels"

    @property
    def outbox_path(self) -> Path:
        """The SQLite outbox."""
        return self.state_dir / "outbox.db"

    @property
    def manifest_path(self) -> Path:
        """The persisted manifest."""
        return self.state_dir / "manifest.json"

    @property
    def deadletter_path(self) -> Path:
        """The dead-letter database."""
        return self.state_dir / "deadletter.db"
