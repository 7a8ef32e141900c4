"""Gateway enrollment: a one-time token admits a new gateway's CSR and signing key; an admin decides.

Life of an enrollment (the ``status`` column)::

    open --gateway submits CSR + signing key--> submitted --admin approves--> approved
      \\__________________ admin rejects ____________________/ --> rejected

An admin creates the enrollment for a gateway id and hands its token to whoever installs the gateway.
The token (``secrets.token_urlsafe(32)``) is shown once; only its SHA-256 is stored and it is compared
in constant time. It authenticates the gateway, and only for its own enrollment, until ``expires_ms``:
to submit the CSR (CN = gateway id) with its Ed25519 batch-signing key, and to fetch the certificate.
Approval signs the CSR with the PKI and registers the signing key in one transaction; fetching the
certificate spends the token. A spent token's hash is replaced by a hash *of* it, so the token no
longer matches yet a replay is recognised and told "already used" (410) rather than "unknown" (401).

The CA never sees the gateway's private keys: they are created on the gateway (``coldtrace gateway
enroll``). Approval is the human check; the admin can compare the fingerprints the gateway printed
with :attr:`Enrollment.tls_key_sha256` and :attr:`Enrollment.signing_key_id` before approving.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import Connection, Row, insert, select, update

from certs.errors import IdentityExists, PkiError
from certs.pki import Pki, Role, check_csr
from cloud_ingest.db.tables import enrollments, gateway_keys, gateways
from cloud_ingest.errors import CloudError, Conflict, NotFound
from cloud_ingest.events import emit
from cloud_ingest.registry import register_gateway
from coldtrace.contract.batch import key_id_of

__all__ = [
    "DEFAULT_TTL_MS",
    "MAX_TTL_MS",
    "Delivery",
    "Enrollment",
    "EnrollmentError",
    "InvalidSubmission",
    "NewEnrollment",
    "PkiUnavailable",
    "Status",
    "TokenGone",
    "TokenRefused",
    "approve",
    "authenticate",
    "create",
    "deliver",
    "get",
    "hash_token",
    "reject",
    "submit",
    "tls_key_sha256",
]

logger = logging.getLogger(__name__)

TOKEN_BYTES = 32  # token_urlsafe(32): 43 characters, 256 bits
DEFAULT_TTL_MS = 24 * 3600 * 1000
MAX_TTL_MS = 7 * 24 * 3600 * 1000
# Prefix hashed with the token's hash once the token is spent (see the module docstring).
_SPENT = b"coldtrace-enrollment-spent:"


class Status(enum.StrEnum):
    """Where an enrollment is in its life."""

    OPEN = "open"  # waiting for the gateway's CSR
    SUBMITTED = "submitted"  # CSR and signing key in; waiting for an admin
    APPROVED = "approved"  # certificate issued, signing key registered
    REJECTED = "rejected"


_PENDING = (Status.OPEN, Status.SUBMITTED)


class EnrollmentError(CloudError):
    """Base of enrollment failures the API answers with its own status (see the route module)."""


class TokenRefused(EnrollmentError):
    """No token, or not this enrollment's token (401)."""


class TokenGone(EnrollmentError):
    """The right token, but it expired, was spent or its enrollment was rejected (410)."""


class InvalidSubmission(EnrollmentError):
    """The CSR or signing key cannot be accepted (422); the message says why."""


class PkiUnavailable(EnrollmentError):
    """The cloud's PKI directory is missing, damaged or refused the request for a server-side reason (503)."""


@dataclass(frozen=True, slots=True)
class NewEnrollment:
    """A created enrollment. ``token`` exists only here: hand it over once, then drop it."""

    id: int
    gateway_id: str
    expires_ms: int
    token: str = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Enrollment:
    """A stored enrollment, without its token."""

    id: int
    gateway_id: str
    status: Status
    created_ms: int
    expires_ms: int
    csr_pem: str | None
    signing_key: bytes | None  # raw Ed25519 public key
    chain_pem: str | None  # leaf + issuing CA once approved
    decided_by: str | None
    decided_ms: int | None

    def expired(self, now_ms: int) -> bool:
        """True once the token no longer admits the gateway."""
        return now_ms >= self.expires_ms

    @property
    def signing_key_id(self) -> str | None:
        """Hex id of the submitted signing key (the id batch frames carry)."""
        if self.signing_key is None:
            return None
        return key_id_of(Ed25519PublicKey.from_public_bytes(self.signing_key)).hex()

    @property
    def tls_key_sha256(self) -> str | None:
        """SHA-256 (hex) of the CSR's public key, as ``coldtrace gateway enroll`` prints it."""
        if self.csr_pem is None:
            return None
        return tls_key_sha256(check_csr(self.csr_pem.encode(), name=self.gateway_id))


@dataclass(frozen=True, slots=True)
class Delivery:
    """What an approved gateway installs: its chain and the CA bundle to trust its peers by."""

    gateway_id: str
    chain_pem: str
    ca_bundle_pem: str


def hash_token(token: str) -> str:
    """SHA-256 hex of a token: the only form stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def _spent(token_hash: str) -> str:
    return hashlib.sha256(_SPENT + token_hash.encode()).hexdigest()


def tls_key_sha256(public_key: ec.EllipticCurvePublicKey) -> str:
    """SHA-256 hex of a key's SubjectPublicKeyInfo: a fingerprint people can compare out of band."""
    return hashlib.sha256(
        public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    ).hexdigest()


def _record(row: Row[Any]) -> Enrollment:
    return Enrollment(
        id=row.id,
        gateway_id=row.gateway_id,
        status=Status(row.status),
        created_ms=row.created_ms,
        expires_ms=row.expires_ms,
        csr_pem=row.csr_pem,
        signing_key=row.signing_key,
        chain_pem=row.cert_pem,
        decided_by=row.decided_by,
        decided_ms=row.decided_ms,
    )


def _row(conn: Connection, enrollment_id: int, *, lock: bool) -> Row[Any] | None:
    query = select(enrollments).where(enrollments.c.id == enrollment_id)
    # Locked by every writer, so two approvals (or a fetch racing a reject) serialise on PostgreSQL.
    return conn.execute(query.with_for_update() if lock else query).one_or_none()


def get(conn: Connection, enrollment_id: int, *, lock: bool = False) -> Enrollment:
    """The enrollment (NotFound if there is none); ``lock`` holds its row until the transaction ends."""
    row = _row(conn, enrollment_id, lock=lock)
    if row is None:
        raise NotFound(f"enrollment {enrollment_id} does not exist")
    return _record(row)


def create(conn: Connection, *, gateway_id: str, ttl_ms: int, now_ms: int) -> NewEnrollment:
    """Open an enrollment for ``gateway_id`` whose token admits the gateway for ``ttl_ms``.

    Conflict when the gateway is revoked (a replacement needs a new id) or already has a pending,
    unexpired enrollment (reject that one first), so one gateway id never has two live tokens.
    """
    if not 0 < ttl_ms <= MAX_TTL_MS:
        raise ValueError(f"ttl_ms must be within 1..{MAX_TTL_MS}, got {ttl_ms}")
    status = conn.execute(
        select(gateways.c.status).where(gateways.c.gateway_id == gateway_id)
    ).scalar_one_or_none()
    if status == "revoked":
        raise Conflict(f"gateway {gateway_id!r} is revoked; enrol a replacement under a new id")
    pending = conn.execute(
        select(enrollments.c.id).where(
            enrollments.c.gateway_id == gateway_id,
            enrollments.c.status.in_(_PENDING),
            enrollments.c.expires_ms > now_ms,
        )
    ).first()
    if pending is not None:
        raise Conflict(
            f"gateway {gateway_id!r} already has pending enrollment {pending.id}; "
            "reject it or let it expire before opening another"
        )
    token = secrets.token_urlsafe(TOKEN_BYTES)
    expires_ms = now_ms + ttl_ms
    enrollment_id = conn.execute(
        insert(enrollments)
        .values(
            gateway_id=gateway_id, token_hash=hash_token(token), status=Status.OPEN,
            created_ms=now_ms, expires_ms=expires_ms,
        )
        .returning(enrollments.c.id)
    ).scalar_one()  # fmt: skip
    return NewEnrollment(id=int(enrollment_id), gateway_id=gateway_id, expires_ms=expires_ms, token=token)


def authenticate(conn: Connection, enrollment_id: int, token: str, *, now_ms: int) -> Enrollment:
    """The enrollment ``token`` belongs to, locked for this transaction.

    TokenRefused when the enrollment does not exist or the token is not its own; TokenGone when the
    token is right but spent, expired, or its enrollment was rejected.
    """
    row = _row(conn, enrollment_id, lock=True)
    presented = hash_token(token)
    # The id is not secret (ids are sequential); only the token is, and it is compared in constant time.
    if row is None:
        raise TokenRefused(f"the token is not valid for enrollment {enrollment_id}")
    if hmac.compare_digest(row.token_hash, _spent(presented)):
        raise TokenGone(
            f"the token of enrollment {enrollment_id} was already used to fetch the certificate; "
            "ask an admin for a new enrollment if the certificate was lost"
        )
    if not hmac.compare_digest(row.token_hash, presented):
        raise TokenRefused(f"the token is not valid for enrollment {enrollment_id}")
    enrollment = _record(row)
    if enrollment.status == Status.REJECTED:
        raise TokenGone(
            f"enrollment {enrollment_id} was rejected by {enrollment.decided_by}; ask an admin why"
        )
    if enrollment.expired(now_ms):
        raise TokenGone(f"the token of enrollment {enrollment_id} expired; ask an admin for a new enrollment")
    return enrollment


def submit(conn: Connection, enrollment: Enrollment, *, csr_pem: str, signing_key: bytes) -> Enrollment:
    """Record the gateway's CSR and raw Ed25519 signing key; the enrollment becomes ``submitted``.

    Submitting the same two keys again (even in a fresh CSR: ECDSA signatures differ every time) is
    accepted and changes nothing, so a gateway that lost the answer can simply retry; other keys
    after the first submission are a Conflict. InvalidSubmission when the CSR does not pass
    :func:`certs.pki.check_csr` for the gateway id or the signing key is not an Ed25519 key.
    """
    try:
        tls_key = check_csr(csr_pem.encode(), name=enrollment.gateway_id)
        public_key = Ed25519PublicKey.from_public_bytes(signing_key)
    except PkiError as exc:
        raise InvalidSubmission(str(exc)) from exc
    except ValueError as exc:
        raise InvalidSubmission("the signing key is not a raw 32-byte Ed25519 public key") from exc
    if enrollment.status != Status.OPEN:
        if enrollment.signing_key == signing_key and enrollment.tls_key_sha256 == tls_key_sha256(tls_key):
            return enrollment
        raise Conflict(
            f"enrollment {enrollment.id} already holds other keys ({enrollment.status}); "
            "ask an admin to reject it and open a new enrollment"
        )
    owner = conn.execute(
        select(gateway_keys.c.gateway_id).where(gateway_keys.c.key_id == key_id_of(public_key).hex())
    ).scalar_one_or_none()
    if owner is not None and owner != enrollment.gateway_id:
        # Refused now rather than at approval: a gateway must never borrow another one's key.
        raise Conflict(f"this signing key is already registered to gateway {owner!r}; create a new key")
    conn.execute(
        update(enrollments)
        .where(enrollments.c.id == enrollment.id)
        .values(status=Status.SUBMITTED, csr_pem=csr_pem, signing_key=signing_key)
    )
    logger.info("enrollment %s: gateway %s submitted its CSR", enrollment.id, enrollment.gateway_id)
    return get(conn, enrollment.id)


def approve(
    conn: Connection,
    enrollment_id: int,
    *,
    pki_dir: Path,
    site_id: str | None,
    replace: bool,
    actor: str,
    now_ms: int,
) -> Enrollment:
    """Issue the gateway's certificate and register its signing key, in the caller's transaction.

    The certificate is issued last, after everything that can refuse (state, revoked gateway, key
    owned by another gateway), so a refusal leaves no certificate behind. ``replace`` supersedes a
    live certificate of the gateway (key rotation); without it that is a Conflict.
    """
    enrollment = get(conn, enrollment_id, lock=True)
    if enrollment.status != Status.SUBMITTED:
        what = "has no CSR yet" if enrollment.status == Status.OPEN else f"is already {enrollment.status}"
        raise Conflict(f"enrollment {enrollment_id} {what}; only a submitted enrollment can be approved")
    if enrollment.expired(now_ms):
        raise Conflict(
            f"enrollment {enrollment_id} expired, so the gateway could no longer fetch its certificate; "
            "reject it and open a new one"
        )
    if enrollment.csr_pem is None or enrollment.signing_key is None:  # a submitted row always has both
        raise Conflict(f"enrollment {enrollment_id} is missing its CSR or signing key")
    key_id = register_gateway(
        conn,
        enrollment.gateway_id,
        Ed25519PublicKey.from_public_bytes(enrollment.signing_key),
        site_id=site_id,
        now_ms=now_ms,
    )
    try:
        signed = Pki.open(pki_dir).sign_csr(
            enrollment.csr_pem.encode(), role=Role.GATEWAY, name=enrollment.gateway_id, force=replace
        )
    except IdentityExists as exc:
        raise Conflict(f"{exc}; approve with replace=true to supersede the gateway's certificate") from exc
    except PkiError as exc:
        logger.exception("enrollment %s: the PKI could not sign", enrollment_id)
        raise PkiUnavailable(f"the PKI could not sign the certificate: {exc}") from exc
    conn.execute(
        update(enrollments)
        .where(enrollments.c.id == enrollment_id)
        .values(
            status=Status.APPROVED, cert_pem=signed.chain_pem.decode(), decided_by=actor, decided_ms=now_ms
        )
    )
    emit(
        conn, topic="enrollment.approved", aggregate_type="enrollment", aggregate_id=str(enrollment_id),
        payload={
            "enrollment_id": enrollment_id, "gateway_id": enrollment.gateway_id, "site_id": site_id,
            "signing_key_id": key_id, "serial": f"{signed.serial:X}",
            "not_after_ms": int(signed.not_after.timestamp() * 1000), "decided_by": actor,
        },
        now_ms=now_ms,
    )  # fmt: skip
    logger.info(
        "enrollment %s approved by %s: gateway %s, certificate %X, signing key %s",
        enrollment_id, actor, enrollment.gateway_id, signed.serial, key_id,
    )  # fmt: skip
    return get(conn, enrollment_id)


def reject(conn: Connection, enrollment_id: int, *, reason: str, actor: str, now_ms: int) -> Enrollment:
    """Close a pending enrollment; its token stops working. The reason goes to the event log."""
    enrollment = get(conn, enrollment_id, lock=True)
    if enrollment.status not in _PENDING:
        raise Conflict(f"enrollment {enrollment_id} is already {enrollment.status}")
    conn.execute(
        update(enrollments)
        .where(enrollments.c.id == enrollment_id)
        .values(status=Status.REJECTED, decided_by=actor, decided_ms=now_ms)
    )
    # The table has no reason column: the event is the record (and webhooks announce it).
    emit(
        conn, topic="enrollment.rejected", aggregate_type="enrollment", aggregate_id=str(enrollment_id),
        payload={
            "enrollment_id": enrollment_id, "gateway_id": enrollment.gateway_id, "reason": reason,
            "decided_by": actor,
        },
        now_ms=now_ms,
    )  # fmt: skip
    logger.info("enrollment %s of gateway %s rejected by %s", enrollment_id, enrollment.gateway_id, actor)
    return get(conn, enrollment_id)


def deliver(conn: Connection, enrollment: Enrollment, *, token: str, pki_dir: Path) -> Delivery | None:
    """The approved gateway's chain and CA bundle, spending the token; None while not yet approved.

    ``enrollment`` comes from :func:`authenticate` with ``token`` in this transaction.
    """
    if enrollment.status != Status.APPROVED or enrollment.chain_pem is None:
        return None
    try:
        ca_bundle = Pki.open(pki_dir).ca_bundle_path.read_bytes()
    except (PkiError, OSError) as exc:
        logger.exception("enrollment %s: cannot read the CA bundle", enrollment.id)
        raise PkiUnavailable("the PKI's CA bundle cannot be read; try again later") from exc
    current = hash_token(token)
    spent = conn.execute(
        update(enrollments)
        .where(enrollments.c.id == enrollment.id, enrollments.c.token_hash == current)
        .values(token_hash=_spent(current))
    )
    if spent.rowcount != 1:  # a concurrent fetch won; the token is gone for this one
        raise TokenGone(f"the token of enrollment {enrollment.id} was already used")
    logger.info("enrollment %s: gateway %s fetched its certificate", enrollment.id, enrollment.gateway_id)
    return Delivery(
        gateway_id=enrollment.gateway_id, chain_pem=enrollment.chain_pem, ca_bundle_pem=ca_bundle.decode()
    )
