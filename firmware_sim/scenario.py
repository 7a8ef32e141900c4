"""Named scenarios: what a simulated fleet is made of and what happens to it, as TOML data files.

A scenario is deterministic for a given seed. Shares of the fleet are fractions of ``--devices``;
event and fault timing is in simulated seconds from the start of the run.
"""

from __future__ import annotations

import enum
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from coldtrace.contract import SourceFormat
from coldtrace.contract.errors import field_path
from coldtrace.profiles import ProfileName
from firmware_sim.errors import ScenarioError, UnknownScenario

Share = Annotated[float, Field(gt=0.0, le=1.0)]
Rate = Annotated[float, Field(ge=0.0, le=1.0)]
Seconds = Annotated[float, Field(ge=0.0)]


class DeviceKind(enum.StrEnum):
    """What a device is attached to, which decides its physics."""

    REEFER = "reefer"
    COLD_ROOM = "cold_room"
    PALLET = "pallet"


class EventKind(enum.StrEnum):
    """Scripted things that happen to part of the fleet at a given simulated time."""

    COMPRESSOR_FAILURE = "compressor_failure"  #: reefers and cold rooms lose cooling for good
    DOOR_OPEN = "door_open"  #: door held open for ``duration_s``
    UPLINK_PARTITION = "uplink_partition"  #: a gateway loses its uplink (recorded for drills to enact)
    GATEWAY_REBOOT = "gateway_reboot"  #: the local broker is gone for ``duration_s``: devices buffer
    TRANSFER = "transfer"  #: devices move from ``gateway`` to ``to_gateway`` (a shipment changes hands)
    CLOCK_JUMP = "clock_jump"  #: device clocks step by ``jump_s``
    GLITCH_STORM = "glitch_storm"  #: sensor-fault rates multiplied by ``multiplier`` for ``duration_s``


_NEEDS_DURATION = {
    EventKind.DOOR_OPEN,
    EventKind.UPLINK_PARTITION,
    EventKind.GATEWAY_REBOOT,
    EventKind.GLITCH_STORM,
}


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FleetGroup(_Strict):
    """A share of the fleet with one kind of device, one vendor format and one product profile."""

    share: Share
    kind: DeviceKind
    format: SourceFormat = SourceFormat.VENDOR_A_JSON
    profile: ProfileName = ProfileName.VACCINES
    truck: bool = False
    """Devices travel on a truck route and report GPS positions."""
    samples_per_message: Annotated[int, Field(ge=1, le=64)] = 1

    @model_validator(mode="after")
    def _vendor_format(self) -> Self:
        if self.format is SourceFormat.NATIVE:
            raise ValueError("format must be one of the vendor formats, not 'native'")
        return self


class Event(_Strict):
    """One scripted event; which fields apply depends on ``kind``."""

    kind: EventKind
    at_s: Seconds
    duration_s: Annotated[float, Field(gt=0.0)] | None = None
    share: Share = 1.0
    """Fraction of the targeted devices (chosen by seed) the event applies to."""
    kinds: tuple[DeviceKind, ...] = ()
    """Device kinds targeted; empty means every kind."""
    gateway: Annotated[int, Field(ge=0)] | None = None
    """Gateway index targeted (or moved from, for a transfer); None means every gateway."""
    to_gateway: Annotated[int, Field(ge=0)] | None = None
    jump_s: float | None = None
    multiplier: Annotated[float, Field(ge=1.0)] | None = None

    @model_validator(mode="after")
    def _fields_for_kind(self) -> Self:
        if self.kind in _NEEDS_DURATION and self.duration_s is None:
            raise ValueError(f"a {self.kind.value} event needs duration_s")
        if self.kind is EventKind.TRANSFER and (self.to_gateway is None or self.gateway is None):
            raise ValueError("a transfer event needs gateway and to_gateway")
        if self.kind is EventKind.CLOCK_JUMP and self.jump_s is None:
            raise ValueError("a clock_jump event needs jump_s")
        if self.kind is EventKind.GLITCH_STORM and self.multiplier is None:
            raise ValueError("a glitch_storm event needs multiplier")
        return self


class FaultRates(_Strict):
    """Probability per sample (sensor faults) or per message (transport faults)."""

    spike: Rate = 0.0
    stuck: Rate = 0.0
    drift: Rate = 0.0
    dropout: Rate = 0.0
    wrong_units: Rate = 0.0
    duplicate: Rate = 0.0
    out_of_order: Rate = 0.0
    replay: Rate = 0.0
    malformed: Rate = 0.0


class Scenario(_Strict):
    """A named, deterministic fleet scenario."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")]
    description: Annotated[str, Field(min_length=1, max_length=200)]
    duration_s: Annotated[float, Field(gt=0.0)]
    sample_interval_s: Annotated[float, Field(gt=0.0)] = 10.0
    gateways: Annotated[int, Field(ge=1, le=1000)] = 1
    device_buffer_samples: Annotated[int, Field(ge=1)] = 1000
    """On-device memory while the broker is unreachable; the oldest samples are dropped when full."""
    unset_clock_share: Rate = 0.0
    ambient_mean_c: float = 22.0
    ambient_amplitude_k: Annotated[float, Field(ge=0.0)] = 6.0
    fleet: Annotated[tuple[FleetGroup, ...], Field(min_length=1)]
    events: tuple[Event, ...] = ()
    faults: FaultRates = FaultRates()

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        total = sum(g.share for g in self.fleet)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"fleet shares must add up to 1 (they add up to {total:g})")
        for event in self.events:
            for index in (event.gateway, event.to_gateway):
                if index is not None and index >= self.gateways:
                    raise ValueError(
                        f"event at {event.at_s:g} s names gateway {index}, but gateways = {self.gateways}"
                    )
        return self


def parse_scenario(text: str, *, source: Path | str) -> Scenario:
    """Parse and validate scenario TOML; ScenarioError names ``source``, the key and the reason."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(source, "", f"not valid TOML: {exc}") from exc
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        reason = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        if first["type"] == "missing":
            reason = "required key is missing"
        raise ScenarioError(
            source, field_path(tuple(first["loc"])), reason.removeprefix("Value error, ")
        ) from exc


def load_scenario(path: Path) -> Scenario:
    """Read a scenario file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(path, "", f"cannot read the file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ScenarioError(path, "", "the file is not UTF-8 text") from exc
    return parse_scenario(text, source=path)


def builtin_scenarios() -> dict[str, Scenario]:
    """The scenarios shipped in ``firmware_sim/scenarios``, by name."""
    found: dict[str, Scenario] = {}
    for entry in sorted(resources.files("firmware_sim.scenarios").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            scenario = parse_scenario(
                entry.read_text(encoding="utf-8"), source=f"firmware_sim/scenarios/{entry.name}"
            )
            found[scenario.name] = scenario
    return found


def resolve_scenario(name_or_path: str) -> Scenario:
    """A built-in scenario by name, or a scenario file by path."""
    if name_or_path.endswith(".toml"):
        return load_scenario(Path(name_or_path))
    known = builtin_scenarios()
    if name_or_path not in known:
        raise UnknownScenario(name_or_path, sorted(known))
    return known[name_or_path]
