"""The canonical reading: one sensor sample, normalised to SI units and bound to what it protects.

Both the edge agent (which builds readings) and the cloud (which receives them inside signed batches)
use this model. Units are part of the field names, so a wrong-unit bug reads wrong in review.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic_core import PydanticCustomError

from coldtrace.contract.canonical import plain
from coldtrace.contract.limits import (
    DEVICE_TS_MIN_MS,
    GATEWAY_TS_MIN_MS,
    MAX_LOTS_PER_READING,
    MAX_SAFE_INT,
    TS_MAX_MS,
)

#: Identifiers become MQTT topic levels and certificate common names: no '/', '+', '#', spaces.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
#: A model reference: "<model id>@<first 16 hex digits of the model file's SHA-256>".
MODEL_REF_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}@[0-9a-f]{16}$"

Identifier = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
ModelRef = Annotated[str, StringConstraints(pattern=MODEL_REF_PATTERN)]
Sequence64 = Annotated[int, Field(ge=0, le=MAX_SAFE_INT)]
DeviceTimeMs = Annotated[int, Field(ge=DEVICE_TS_MIN_MS, lt=TS_MAX_MS)]
GatewayTimeMs = Annotated[int, Field(ge=GATEWAY_TS_MIN_MS, lt=TS_MAX_MS)]


class ClockQuality(enum.StrEnum):
    """How far the device clock can be trusted, judged by the gateway on receipt."""

    OK = "ok"  #: within the configured skew tolerance
    SKEWED = "skewed"  #: beyond tolerance: device time kept, the reading is flagged
    UNSET = "unset"  #: the device never set its clock (e.g. 1970 timestamps)
    JUMPED = "jumped"  #: the device clock stepped since its previous reading


class Flag(enum.StrEnum):
    """Quality flags the edge attaches; they annotate a reading, they never alter its values."""

    OUT_OF_ORDER = "out_of_order"  #: sequence lower than one already seen from this device
    DEVICE_BUFFERED = "device_buffered"  #: held on the device while it was offline
    BACKFILL = "backfill"  #: held in the gateway outbox through an uplink outage
    GLITCH = "glitch"  #: the anomaly filter judged it a sensor glitch, not a real excursion
    SENSOR_FAULT = "sensor_fault"  #: the device reported a sensor fault
    RULES_ONLY = "rules_only"  #: scored by the rules fallback: no valid model was loaded
    LOCAL_ALERT = "local_alert"  #: raised a local fallback alert while the cloud was unreachable


class SourceFormat(enum.StrEnum):
    """The vendor payload format the reading was decoded from (kept for audit)."""

    VENDOR_A_JSON = "vendor-a-json"
    VENDOR_B_BINARY = "vendor-b-binary"
    VENDOR_C_TEXT = "vendor-c-text"
    NATIVE = "native"


def _field_error(field: str, reason: str) -> PydanticCustomError:
    # A custom error type lets the decoder report the exact field of a cross-field rule.
    return PydanticCustomError("cross_field", "{field}: {reason}", {"field": field, "reason": reason})


def inconsistency(fields: Mapping[str, Any]) -> tuple[str, str] | None:  # noqa: PLR0911 - one per rule
    """The first cross-field rule of :class:`Reading` that ``fields`` (a reading's field values by
    name) break, as (field, reason); None when they keep every one.

    The model's validator and the cloud's fast batch decoder both apply these rules, so they are
    written once, over plain values. Runs for every reading the cloud decodes: plain comparisons,
    no temporaries on the common path.
    """
    lat, lon = fields["lat"], fields["lon"]
    if (lat is None) != (lon is None):
        return ("lon" if lon is None else "lat"), "lat and lon must be given together"
    if (
        fields["temperature_c"] is None and fields["humidity_pct"] is None and fields["shock_g"] is None
        and fields["battery_v"] is None and lat is None
    ):  # fmt: skip
        return "temperature_c", "a reading must carry at least one measured quantity"
    shipment_id, lot_ids = fields["shipment_id"], fields["lot_ids"]
    if fields["bound"]:
        if shipment_id is None and not lot_ids:
            return "bound", "a bound reading needs a shipment_id or lot_ids"
    elif shipment_id is not None or lot_ids:
        return "bound", "an unbound reading must not name a shipment or lots"
    if len(lot_ids) > 1 and list(lot_ids) != sorted(set(lot_ids)):
        return "lot_ids", "must be sorted and without repeats"
    flags = fields["flags"]
    if len(flags) > 1 and list(flags) != sorted(set(flags)):
        return "flags", "must be sorted and without repeats"
    if (fields["anomaly_score"] is None) != (fields["model"] is None):
        return "model", "anomaly_score and model must be given together"
    return None


@plain
class Reading(BaseModel):
    """One sensor sample in SI units, as the edge agent forwards it.

    Fields are declared in alphabetical order, which is also their canonical order on the wire.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    anomaly_score: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    """Probability-like glitch score in [0, 1] from the edge anomaly filter; None when not scored."""
    battery_v: Annotated[float, Field(ge=0.0, le=60.0)] | None = None
    bound: bool
    """True when the reading is bound to a shipment and/or lots; False means explicitly unbound."""
    clock: ClockQuality
    device_id: Identifier
    flags: tuple[Flag, ...] = ()
    """Sorted, without repeats."""
    humidity_pct: Annotated[float, Field(ge=0.0, le=100.0)] | None = None
    lat: Annotated[float, Field(ge=-90.0, le=90.0)] | None = None
    lon: Annotated[float, Field(ge=-180.0, le=180.0)] | None = None
    lot_ids: Annotated[tuple[Identifier, ...], Field(max_length=MAX_LOTS_PER_READING)] = ()
    """Sorted, without repeats."""
    manifest_version: Annotated[int, Field(ge=1, le=MAX_SAFE_INT)] | None = None
    """Version of the device registry manifest that produced the binding."""
    model: ModelRef | None = None
    """The model that produced ``anomaly_score``."""
    seq: Sequence64
    """The device's own monotonic sequence number."""
    shipment_id: Identifier | None = None
    shock_g: Annotated[float, Field(ge=0.0, le=500.0)] | None = None
    site_id: Identifier
    source_format: SourceFormat
    t_device_ms: DeviceTimeMs
    """The device's own timestamp, UTC milliseconds; never overwritten."""
    t_gateway_ms: GatewayTimeMs
    """When the gateway received the reading, UTC milliseconds."""
    temperature_c: Annotated[float, Field(ge=-100.0, le=150.0)] | None = None

    @model_validator(mode="after")
    def _check_consistency(self) -> Self:
        broken = inconsistency(self.__dict__)
        if broken is not None:
            raise _field_error(*broken)
        return self

    @property
    def skew_ms(self) -> int:
        """Gateway receive time minus device time: transit delay plus device clock error."""
        return self.t_gateway_ms - self.t_device_ms
