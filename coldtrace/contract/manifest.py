"""Manifests: which shipment and lots each device travels with, pushed by the cloud to its gateways.

Sent on ``ct/v1/gw/<gateway>/cmd/manifest`` as canonical JSON; versioned, so a gateway keeps the
newest and can say which version bound each reading (``Reading.manifest_version``). A binding holds
over a validity interval in event time, so a reading is bound by *when it was taken*, and a device
moved to another shipment mid-trip binds its earlier readings to the earlier shipment.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from coldtrace.contract.limits import GATEWAY_TS_MIN_MS, MAX_LOTS_PER_READING, MAX_SAFE_INT, TS_MAX_MS
from coldtrace.contract.reading import Identifier, _field_error
from coldtrace.profiles import ProfileName

MAX_DEVICES_PER_MANIFEST = 50_000
TimeMs = Annotated[int, Field(ge=0, lt=TS_MAX_MS)]


class Binding(BaseModel):
    """A device bound to a shipment and/or lots from ``valid_from_ms`` to ``valid_to_ms`` (None: open)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    lot_ids: Annotated[tuple[Identifier, ...], Field(max_length=MAX_LOTS_PER_READING)] = ()
    profile: ProfileName
    shipment_id: Identifier | None = None
    valid_from_ms: TimeMs
    valid_to_ms: TimeMs | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.shipment_id is None and not self.lot_ids:
            raise _field_error("shipment_id", "a binding needs a shipment_id or lot_ids")
        if list(self.lot_ids) != sorted(set(self.lot_ids)):
            raise _field_error("lot_ids", "must be sorted and without repeats")
        if self.valid_to_ms is not None and self.valid_to_ms <= self.valid_from_ms:
            raise _field_error("valid_to_ms", "must be later than valid_from_ms")
        return self

    def covers(self, t_ms: int) -> bool:
        """True when the binding holds at event time ``t_ms``."""
        return self.valid_from_ms <= t_ms and (self.valid_to_ms is None or t_ms < self.valid_to_ms)


class DeviceEntry(BaseModel):
    """One registered device of a gateway and its bindings over time."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    bindings: tuple[Binding, ...] = ()
    device_id: Identifier

    @model_validator(mode="after")
    def _no_overlap(self) -> Self:
        ordered = sorted(self.bindings, key=lambda b: b.valid_from_ms)
        for earlier, later in itertools.pairwise(ordered):
            if earlier.valid_to_ms is None or earlier.valid_to_ms > later.valid_from_ms:
                raise _field_error("bindings", "validity intervals of one device must not overlap")
        return self


class Manifest(BaseModel):
    """The device registry of one gateway, as of ``version``."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    devices: Annotated[tuple[DeviceEntry, ...], Field(max_length=MAX_DEVICES_PER_MANIFEST)]
    gateway_id: Identifier
    issued_ms: Annotated[int, Field(ge=GATEWAY_TS_MIN_MS, lt=TS_MAX_MS)]
    site_id: Identifier
    version: Annotated[int, Field(ge=1, le=MAX_SAFE_INT)]

    @model_validator(mode="after")
    def _unique_devices(self) -> Self:
        ids = [d.device_id for d in self.devices]
        if len(ids) != len(set(ids)):
            raise _field_error("devices", "a device may appear only once")
        return self
