"""What the HTTP API accepts and returns: pydantic models, one per resource view.

Request bodies forbid unknown fields, so a typo is a 422 rather than a silently ignored option.
Times are UTC milliseconds, as everywhere in coldtrace.
"""

from __future__ import annotations

import base64
import binascii
import enum
import ipaddress
from typing import Annotated, Any, Generic, TypeVar
from urllib.parse import urlsplit

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from cloud_ingest.alerts import Condition, Severity, Workflow
from cloud_ingest.holds import HoldSource, SubjectType
from coldtrace.contract.reading import Identifier
from coldtrace.profiles import ProfileName

T = TypeVar("T")

ED25519_RAW_BYTES = 32

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=4000)]
WebhookTopic = Annotated[str, StringConstraints(pattern=r"^(\*|[a-z][a-z_]*(\.[a-z][a-z_]*)*\.?)$")]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Response(BaseModel):
    model_config = ConfigDict(frozen=True)


class Page(_Response, Generic[T]):
    """One page of a list; pass ``next_cursor`` back as ``cursor`` for the next (None: last page)."""

    items: list[T]
    next_cursor: str | None


class ErrorOut(_Response):
    """The body of every 4xx answer except validation errors (those keep FastAPI's 422 shape)."""

    error: str
    detail: str


class Health(_Response):
    """Liveness."""

    status: str


# -- alerts -------------------------------------------------------------------------------------------
class AlertOut(_Response):
    """An alert (see :mod:`cloud_ingest.alerts` for the two axes)."""

    id: int
    rule_id: str
    kind: str
    subject_type: str
    subject_id: str
    severity: Severity
    condition: Condition
    workflow: Workflow
    title: str
    device_id: str | None
    started_ms: int
    raised_ms: int
    cleared_ms: int | None
    updated_ms: int
    escalation_level: int
    occurrences: int
    detail: dict[str, Any]


class AlertEventOut(_Response):
    """One entry of an alert's history."""

    id: int
    at_ms: int
    kind: str
    actor: str
    comment: str | None


class AlertDetail(AlertOut):
    """An alert with its history, oldest entry first."""

    events: list[AlertEventOut]


class AckIn(_Request):
    """Acknowledge an alert."""

    comment: Text | None = None


class CloseIn(_Request):
    """Close an alert whose condition has cleared."""

    comment: Text


class CommentIn(_Request):
    """Add a comment to an alert's history."""

    text: Text


# -- holds --------------------------------------------------------------------------------------------
class HoldStatus(enum.StrEnum):
    """A hold's state."""

    ACTIVE = "active"
    RELEASED = "released"


class HoldOut(_Response):
    """An inventory hold."""

    id: int
    subject_type: SubjectType
    subject_id: str
    status: HoldStatus
    source: HoldSource
    reason: str
    alert_id: int | None
    placed_by: str
    placed_ms: int
    released_by: str | None
    released_ms: int | None
    release_reason: str | None


class HoldDetail(HoldOut):
    """A hold and the lots it covers (a shipment hold covers the shipment's lots)."""

    lot_ids: list[str]


class HoldIn(_Request):
    """Place a manual hold on a lot or shipment the cloud knows."""

    subject_type: SubjectType
    subject_id: Identifier
    reason: Text


class ReleaseIn(_Request):
    """Release a hold (quality role), saying why."""

    reason: Text


# -- lots and shipments -------------------------------------------------------------------------------
class LotOut(_Response):
    """A lot's quantities: a lot under any active hold is on hold as a whole."""

    lot_id: str
    shipment_id: str | None
    profile: str
    sku: str | None
    quantity: float
    unit: str
    on_hold: float
    sellable: float
    hold_ids: list[int]


class LotDetail(LotOut):
    """A lot with the active holds covering it and the alerts on it or its shipment (newest first)."""

    holds: list[HoldOut]
    alerts: list[AlertOut]


class LotIn(_Request):
    """A lot as the ERP registers it. Omitting ``shipment_id`` or ``sku`` keeps the stored value."""

    shipment_id: Identifier | None = None
    profile: ProfileName
    sku: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    quantity: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    unit: Annotated[str, StringConstraints(min_length=1, max_length=16)] = "units"


class ShipmentStatus(enum.StrEnum):
    """``held`` wins over ``excursion``: a held shipment cannot be sold whatever its alerts say."""

    OK = "ok"
    EXCURSION = "excursion"
    HELD = "held"


class ShipmentOut(_Response):
    """A shipment and its overall status."""

    shipment_id: str
    profile: str
    created_ms: int
    status: ShipmentStatus


class ReadingOut(_Response):
    """One stored reading."""

    device_id: str
    seq: int
    gateway_id: str
    t_device_ms: int
    received_ms: int
    clock: str
    temperature_c: float | None
    humidity_pct: float | None
    shock_g: float | None
    battery_v: float | None
    anomaly_score: float | None
    flags: list[str]
    lot_ids: list[str]


class ExcursionGroup(_Response):
    """Alerts on a shipment of one rule and severity."""

    rule_id: str
    severity: Severity
    count: int
    first_started_ms: int


class ExcursionSummary(_Response):
    """All alerts ever raised on a shipment, grouped."""

    total: int
    open: int
    first_started_ms: int | None
    groups: list[ExcursionGroup]


class MktOut(_Response):
    """Mean kinetic temperature over the newest ``window_h`` hourly buckets."""

    mkt_c: float
    window_h: int
    from_ms: int
    """Start of the oldest bucket in the window."""
    to_ms: int
    """End of the newest bucket."""
    readings: int


class ShipmentDetail(ShipmentOut):
    """Everything known about one shipment."""

    hold_ids: list[int]
    lots: list[LotOut]
    latest_by_device: list[ReadingOut]
    """The newest reading of each device bound to the shipment."""
    latest_readings: list[ReadingOut]
    """The newest readings of the shipment overall (``readings_limit``)."""
    excursions: ExcursionSummary
    mkt: MktOut | None


# -- gateways and devices -----------------------------------------------------------------------------
class GatewayKeyOut(_Response):
    """A batch-signing key of a gateway."""

    key_id: str
    created_ms: int
    revoked_ms: int | None


class ChainGapOut(_Response):
    """Batches missing from a gateway's hash chain."""

    seq_from: int
    seq_to: int
    detected_ms: int
    alert_id: int | None


class GatewayOut(_Response):
    """A gateway, its chain head and what it has delivered."""

    gateway_id: str
    site_id: str | None
    status: str
    created_ms: int
    revoked_ms: int | None
    last_seen_ms: int | None
    head_seq: int
    batches_accepted: int
    readings_accepted: int
    open_gaps: list[ChainGapOut]
    keys: list[GatewayKeyOut]


class GatewayIn(_Request):
    """Register a gateway's batch-signing key (a gateway registered before gets the key added)."""

    gateway_id: Identifier
    site_id: Identifier | None = None
    public_key: Annotated[str, StringConstraints(min_length=1, max_length=4096)]
    """Ed25519 public key: base64 of the raw 32 bytes, or a PEM ``PUBLIC KEY`` block."""

    @field_validator("public_key")
    @classmethod
    def _public_key(cls, value: str) -> str:
        # Normalised to base64 of the raw key, so the route sees one form whatever was sent.
        return base64.b64encode(ed25519_public_bytes(value)).decode()


class DeviceOut(_Response):
    """A device as its newest reading left it."""

    device_id: str
    gateway_id: str
    site_id: str
    last_seen_ms: int
    last_t_device_ms: int
    last_seq: int
    battery_v: float | None
    temperature_c: float | None
    firmware: str | None
    clock: str
    clock_skew_ms: int
    readings_total: int


# -- rejects ------------------------------------------------------------------------------------------
class RejectOut(_Response):
    """A refused frame (dead letter): why, from whom, and whether its bytes were kept."""

    id: int
    received_ms: int
    reason: str
    detail: str
    identity: str | None
    topic: str | None
    transport: str
    frame_sha256: str
    size: int
    raw_kept: bool
    """False when the frame was above the dead-letter byte cap: only its hash was kept."""


class RejectSummary(_Response):
    """Refused frames counted by reason code."""

    total: int
    by_reason: dict[str, int]


# -- manifests ----------------------------------------------------------------------------------------
class ManifestOut(_Response):
    """A stored manifest version."""

    gateway_id: str
    version: int
    site_id: str
    issued_ms: int
    created_by: str
    published_ms: int | None
    """When it was handed to the broker; None until then (``POST …/publish`` retries)."""


class ManifestDetail(ManifestOut):
    """A manifest version with its document, exactly as pushed to the gateway."""

    manifest: dict[str, Any]


# -- webhooks -----------------------------------------------------------------------------------------
class WebhookOut(_Response):
    """A webhook subscription (its secret is shown only once, on creation)."""

    id: int
    url: str
    topics: list[str]
    active: bool
    created_ms: int


class WebhookCreated(WebhookOut):
    """A new subscription and the secret its deliveries are signed with: store it now."""

    secret: str


class WebhookIn(_Request):
    """Subscribe a URL to event topics (``*``, an exact topic, or a prefix ending in ``.``)."""

    url: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    topics: Annotated[list[WebhookTopic], Field(min_length=1, max_length=50)] = ["*"]

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if not parts.hostname:
            raise ValueError("must be an absolute URL")
        if parts.scheme == "https":
            return value
        if parts.scheme == "http" and _is_loopback(parts.hostname):
            # Plain HTTP only to this host, for development receivers: events carry inventory data.
            return value
        raise ValueError("must be https:// (http:// only to 127.0.0.1 for development)")


def ed25519_public_bytes(text: str) -> bytes:
    """The raw 32 bytes of an Ed25519 public key given as base64 of those bytes or as PEM."""
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        try:
            key = load_pem_public_key(stripped.encode())
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ValueError("not a readable PEM public key") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("the PEM key is not an Ed25519 key")
        return key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    try:
        raw = base64.b64decode(stripped, validate=True)
    except binascii.Error as exc:
        raise ValueError("neither a PEM block nor base64") from exc
    if len(raw) != ED25519_RAW_BYTES:
        raise ValueError(f"a raw Ed25519 public key has {ED25519_RAW_BYTES} bytes, not {len(raw)}")
    return raw


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
