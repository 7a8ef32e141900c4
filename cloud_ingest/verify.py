"""Who sent this batch, and may it be believed: identity, key, signature, schema and limits.

Checks run cheapest first and before anything in the frame is parsed: size and header, the sender's
identity against the topic (the broker's ACL binds the topic to the certificate; over HTTPS the
certificate is checked here), the key id against the keys registered for that gateway, the Ed25519
signature over the bytes as received, then the strict, canonical decode of the body. Chain
continuity and revocation are checked in the storing transaction (:mod:`cloud_ingest.ingest`),
where they are consistent with what other workers commit.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Engine, select

from cloud_ingest.batch_decode import decode_batch
from cloud_ingest.db.tables import gateway_keys, gateways
from coldtrace.contract import ContractError, RejectCode
from coldtrace.contract.batch import Batch, frame_hash, open_frame
from coldtrace.contract.limits import Limits


class IngestReject(enum.StrEnum):
    """Why the cloud refused a batch: the contract's codes plus what only the cloud can know."""

    OVERSIZED = RejectCode.OVERSIZED.value
    BAD_FRAME = RejectCode.BAD_FRAME.value
    MALFORMED_JSON = RejectCode.MALFORMED_JSON.value
    INVALID_FIELD = RejectCode.INVALID_FIELD.value
    UNSUPPORTED_SCHEMA = RejectCode.UNSUPPORTED_SCHEMA.value
    NON_CANONICAL = RejectCode.NON_CANONICAL.value
    BAD_SIGNATURE = RejectCode.BAD_SIGNATURE.value
    BAD_TOPIC = RejectCode.BAD_TOPIC.value
    IDENTITY_MISMATCH = RejectCode.IDENTITY_MISMATCH.value
    UNKNOWN_GATEWAY = "unknown_gateway"
    UNKNOWN_KEY = "unknown_key"
    REVOKED = "revoked"
    REPLAYED_SEQUENCE = "replayed_sequence"
    """A different frame under a batch sequence already accepted: a forged or forked chain."""
    CHAIN_MISMATCH = "chain_mismatch"
    """prev_hash does not match the stored neighbour: the chain was altered."""


class Rejected(Exception):
    """A batch the cloud refuses; ``code`` is counted and stored with the dead-lettered frame."""

    def __init__(self, code: IngestReject, detail: str, *, gateway_id: str | None = None) -> None:
        super().__init__(f"{code.value}: {detail}")
        self.code = code
        self.detail = detail
        self.gateway_id = gateway_id

    @classmethod
    def from_contract(cls, exc: ContractError, gateway_id: str | None) -> Rejected:
        """Wrap a contract error, keeping its reason code."""
        return cls(IngestReject(exc.code.value), str(exc), gateway_id=gateway_id)


@dataclass(frozen=True, slots=True)
class GatewayKey:
    """A registered batch-signing key."""

    key_id: bytes
    gateway_id: str
    public_key: Ed25519PublicKey
    revoked: bool


@dataclass(frozen=True, slots=True)
class Verified:
    """A batch whose sender and signature check out, not yet stored."""

    batch: Batch
    key_id: bytes
    frame_hash: str
    frame: bytes


class KeyRing:
    """Registered gateway keys by key id, cached; a miss re-reads the database.

    Revocation of a key or gateway is re-checked in the storing transaction, so the cache never lets a
    revoked gateway's batch in - it only saves a query per batch.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._keys: dict[bytes, GatewayKey] = {}
        self._known_gateways: set[str] = set()
        self._lock = threading.Lock()  # ingest runs in worker threads (asyncio.to_thread)

    def _load(self, key_id: bytes) -> GatewayKey | None:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(gateway_keys).where(gateway_keys.c.key_id == key_id.hex())
            ).one_or_none()
        if row is None:
            return None
        return GatewayKey(
            key_id=key_id,
            gateway_id=row.gateway_id,
            public_key=Ed25519PublicKey.from_public_bytes(row.public_key),
            revoked=row.revoked_ms is not None,
        )

    def get(self, key_id: bytes) -> GatewayKey | None:
        """The key registered under ``key_id``, or None."""
        with self._lock:
            key = self._keys.get(key_id)
        if key is None:
            key = self._load(key_id)
            if key is not None:
                with self._lock:
                    self._keys[key_id] = key
        return key

    def gateway_known(self, gateway_id: str) -> bool:
        """True when the gateway is registered (cached once seen)."""
        if gateway_id in self._known_gateways:
            return True
        with self._engine.connect() as conn:
            found = conn.execute(
                select(gateways.c.gateway_id).where(gateways.c.gateway_id == gateway_id)
            ).one_or_none()
        if found is not None:
            self._known_gateways.add(gateway_id)
        return found is not None

    def forget(self) -> None:
        """Drop the cache (after keys were registered or revoked)."""
        with self._lock:
            self._keys.clear()
            self._known_gateways.clear()


def verify(frame: bytes, *, topic_gateway: str, identity: str, keys: KeyRing, limits: Limits) -> Verified:
    """Check a frame from ``identity`` received for ``topic_gateway``; Rejected says why not."""
    if topic_gateway != identity:
        raise Rejected(
            IngestReject.IDENTITY_MISMATCH,
            f"sender {identity!r} may not publish for gateway {topic_gateway!r}",
            gateway_id=identity,
        )
    try:
        parts = open_frame(frame, limits=limits)
    except ContractError as exc:
        raise Rejected.from_contract(exc, topic_gateway) from exc
    key = keys.get(parts.key_id)
    if key is None:
        if not keys.gateway_known(topic_gateway):
            raise Rejected(
                IngestReject.UNKNOWN_GATEWAY,
                f"gateway {topic_gateway!r} is not registered: enrol it (POST /v1/gateways or enrollments)",
                gateway_id=topic_gateway,
            )
        raise Rejected(
            IngestReject.UNKNOWN_KEY,
            f"key {parts.key_id.hex()} is not registered for gateway {topic_gateway!r}",
            gateway_id=topic_gateway,
        )
    if key.gateway_id != topic_gateway:
        raise Rejected(
            IngestReject.IDENTITY_MISMATCH,
            f"frame is signed with a key of gateway {key.gateway_id!r}, not {topic_gateway!r}",
            gateway_id=topic_gateway,
        )
    try:
        key.public_key.verify(parts.signature, parts.signed_message)
    except InvalidSignature as exc:
        raise Rejected(
            IngestReject.BAD_SIGNATURE,
            "Ed25519 signature does not verify with the gateway's registered key",
            gateway_id=topic_gateway,
        ) from exc
    try:
        batch = decode_batch(parts.body, limits=limits)
    except ContractError as exc:
        raise Rejected.from_contract(exc, topic_gateway) from exc
    if batch.gateway_id != topic_gateway:
        raise Rejected(
            IngestReject.IDENTITY_MISMATCH,
            f"batch names gateway {batch.gateway_id!r} but was sent by {topic_gateway!r}",
            gateway_id=topic_gateway,
        )
    return Verified(batch=batch, key_id=parts.key_id, frame_hash=frame_hash(frame), frame=frame)
