"""What every coldtrace component's settings share: a broker connection and TOML-plus-environment loading.

Each component (edge agent, cloud) has one typed settings class with its own environment prefix
(``COLDTRACE_AGENT_``, ``COLDTRACE_CLOUD_``), ``__`` between nesting levels, read once at start-up from
one TOML file; explicit arguments beat the environment, which beats the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Self

from pydantic import BaseModel, ConfigDict, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, TomlConfigSettingsSource

from coldtrace.mqtt import BrokerUrl, TlsFiles


class BrokerSettings(BaseModel):
    """One MQTT broker and the certificate identity presented to it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    """``mqtts://host:port`` (``mqtt://`` only for development)."""
    ca_file: Path
    cert_file: Path
    key_file: Path

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        BrokerUrl.parse(value)
        return value

    @property
    def broker(self) -> BrokerUrl:
        """The parsed URL."""
        return BrokerUrl.parse(self.url)

    @property
    def tls(self) -> TlsFiles:
        """The TLS files."""
        return TlsFiles(ca_file=self.ca_file, cert_file=self.cert_file, key_file=self.key_file)


class TomlSettings(BaseSettings):
    """Settings read from one TOML file with environment overrides (subclasses set the prefix)."""

    _toml_file: ClassVar[Path | None] = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003 - one file, one environment
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003 - keys are files we name
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Precedence: explicit arguments, then the environment, then the TOML file."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls._toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls._toml_file))
        return tuple(sources)

    @classmethod
    def load(cls, path: Path | None) -> Self:
        """Settings from ``path`` (TOML) with environment overrides."""
        bound = type(f"{cls.__name__}FromFile", (cls,), {"_toml_file": path})
        return cls.model_validate(bound().model_dump())
