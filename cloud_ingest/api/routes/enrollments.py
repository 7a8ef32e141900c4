"""``/v1/enrollments``: admins open, approve and reject gateway enrollments; gateways submit and fetch.

Mounted with ``create_app(..., extra_routers=[enrollment_router(pki_dir)])``, outside the permission
table, because half of it is not for API keys at all:

========================================  ===========================================================
route                                     caller
========================================  ===========================================================
POST /v1/enrollments                      admin: opens one; answers the one-time token, shown once
GET  /v1/enrollments/{id}                 admin
POST /v1/enrollments/{id}/approve         admin: signs the CSR, registers the signing key
POST /v1/enrollments/{id}/reject          admin
POST /v1/enrollments/{id}/csr             the gateway, ``Authorization: Bearer <enrollment token>``
GET  /v1/enrollments/{id}/certificate     the gateway, same token: 202 until approved, then 200 once
========================================  ===========================================================

An API key is not an enrollment token and the other way round: each half refuses the other's
credential with 401. See :mod:`cloud_ingest.enrollment` for the token's life.
"""

from __future__ import annotations

import base64
import contextlib
import logging
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from cloud_ingest import enrollment
from cloud_ingest.api.auth import Principal, require
from cloud_ingest.api.models import ErrorOut, ed25519_public_bytes
from cloud_ingest.api.routes import Db, NowMs
from cloud_ingest.enrollment import Enrollment, Status
from cloud_ingest.keys import Role
from coldtrace.contract.reading import Identifier

__all__ = ["enrollment_router"]

logger = logging.getLogger(__name__)

MAX_CSR_CHARS = 16 * 1024  # a P-256 CSR is under 1 KiB; this leaves room and bounds the work

# auto_error=False: a missing header must be our 401 with WWW-Authenticate, not FastAPI's 403.
_token_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="enrollment-token",
    description="The one-time token `POST /v1/enrollments` answered (not an API key).",
)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Response(BaseModel):
    model_config = ConfigDict(frozen=True)


class EnrollmentIn(_Request):
    """Open an enrollment for a gateway id (its certificate CN and broker username)."""

    gateway_id: Identifier
    ttl_s: Annotated[int, Field(ge=60, le=enrollment.MAX_TTL_MS // 1000)] = enrollment.DEFAULT_TTL_MS // 1000
    """How long the token admits the gateway, for submitting and for fetching the certificate."""


class EnrollmentCreated(_Response):
    """The new enrollment. ``token`` is shown this once: hand it to the gateway's installer."""

    id: int
    gateway_id: str
    token: str
    expires_ms: int


class CsrIn(_Request):
    """The gateway's certificate request (CN = gateway id) and its Ed25519 batch-signing public key."""

    csr_pem: Annotated[str, StringConstraints(min_length=1, max_length=MAX_CSR_CHARS)]
    signing_public_key: Annotated[str, StringConstraints(min_length=1, max_length=4096)]
    """Base64 of the raw 32 bytes (or a PEM ``PUBLIC KEY`` block)."""

    @field_validator("signing_public_key")
    @classmethod
    def _signing_key(cls, value: str) -> str:
        # Normalised to base64 of the raw key, so a PEM and a base64 submission compare equal.
        return base64.b64encode(ed25519_public_bytes(value)).decode()


class ApproveIn(_Request):
    """Approve a submitted enrollment."""

    site_id: Identifier | None = None
    """The site the gateway serves, recorded when the gateway is registered (kept if it already is)."""
    replace: bool = False
    """Supersede (revoke) the gateway's live certificate: a re-enrollment for key rotation."""


class RejectIn(_Request):
    """Reject a pending enrollment."""

    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]


class EnrollmentOut(_Response):
    """An enrollment as an admin sees it (never its token)."""

    id: int
    gateway_id: str
    status: Status
    created_ms: int
    expires_ms: int
    expired: bool
    csr_pem: str | None
    tls_key_sha256: str | None
    """SHA-256 of the CSR's public key: compare it with what `coldtrace gateway enroll` printed."""
    signing_public_key: str | None
    """Base64 of the raw Ed25519 key."""
    signing_key_id: str | None
    """The key id batch frames carry: compare it with what `coldtrace gateway enroll` printed."""
    chain_pem: str | None
    decided_by: str | None
    decided_ms: int | None


class SubmittedOut(_Response):
    """What the gateway learns after submitting: the state and the fingerprints the cloud recorded."""

    id: int
    gateway_id: str
    status: Status
    expires_ms: int
    tls_key_sha256: str
    signing_key_id: str


class CertificateOut(_Response):
    """The approved gateway's certificate chain (leaf first) and the CA bundle it trusts peers by."""

    gateway_id: str
    chain_pem: str
    ca_bundle_pem: str


class PendingOut(_Response):
    """The certificate is not issued yet; ask again later."""

    status: Status
    detail: str


def _view(item: Enrollment, now_ms: int) -> EnrollmentOut:
    return EnrollmentOut(
        id=item.id,
        gateway_id=item.gateway_id,
        status=item.status,
        created_ms=item.created_ms,
        expires_ms=item.expires_ms,
        expired=item.expired(now_ms),
        csr_pem=item.csr_pem,
        tls_key_sha256=item.tls_key_sha256,
        signing_public_key=None if item.signing_key is None else base64.b64encode(item.signing_key).decode(),
        signing_key_id=item.signing_key_id,
        chain_pem=item.chain_pem,
        decided_by=item.decided_by,
        decided_ms=item.decided_ms,
    )


@contextlib.contextmanager
def _answers(enrollment_id: int) -> Iterator[None]:
    """Turn the enrollment errors into HTTP answers; the cloud's own errors pass to the app's handler."""
    try:
        yield
    except enrollment.TokenRefused as exc:
        logger.warning("enrollment %s: refused a token", enrollment_id)
        raise _unauthorized(str(exc)) from exc
    except enrollment.TokenGone as exc:
        logger.warning("enrollment %s: %s", enrollment_id, exc)
        raise HTTPException(status_code=HTTPStatus.GONE, detail=str(exc)) from exc
    except enrollment.InvalidSubmission as exc:
        # 422 as a number: its HTTPStatus name changed in Python 3.13.
        raise HTTPException(status_code=422, detail=str(exc)) from exc
    except enrollment.PkiUnavailable as exc:
        raise HTTPException(status_code=HTTPStatus.SERVICE_UNAVAILABLE, detail=str(exc)) from exc


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status_code=HTTPStatus.UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"}
    )


def enrollment_token(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_token_bearer)],
) -> str:
    """The enrollment token from ``Authorization: Bearer``; 401 when there is none."""
    if credentials is None:
        raise _unauthorized("an Authorization: Bearer <enrollment token> header is required")
    return credentials.credentials


Admin = Annotated[Principal, Depends(require(Role.ADMIN))]
Token = Annotated[str, Depends(enrollment_token)]
_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorOut} for code in (401, 403, 404, 409, 410, 422, 503)
}


def enrollment_router(pki_dir: Path) -> APIRouter:
    """The enrollment routes, signing with the PKI in ``pki_dir`` (``coldtrace certs init --dir``).

    The PKI is opened per approval, not here: the CLI may change its index between requests.
    """
    router = APIRouter(prefix="/enrollments", tags=["enrollments"], responses=_ERRORS)

    @router.post("", name="enrollments.create", status_code=HTTPStatus.CREATED)
    def create_enrollment(
        *, principal: Admin, engine: Db, now_ms: NowMs, body: EnrollmentIn
    ) -> EnrollmentCreated:
        """Open an enrollment for a gateway; the answer holds its one-time token (shown only here)."""
        with engine.begin() as conn:
            new = enrollment.create(conn, gateway_id=body.gateway_id, ttl_ms=body.ttl_s * 1000, now_ms=now_ms)
        logger.info(
            "enrollment %s for gateway %s opened by %s, expires at %s",
            new.id, new.gateway_id, principal.name, new.expires_ms,
        )  # fmt: skip
        return EnrollmentCreated(
            id=new.id, gateway_id=new.gateway_id, token=new.token, expires_ms=new.expires_ms
        )

    @router.get("/{enrollment_id}", name="enrollments.get", dependencies=[Depends(require(Role.ADMIN))])
    def get_enrollment(*, engine: Db, now_ms: NowMs, enrollment_id: int) -> EnrollmentOut:
        """An enrollment: status, CSR and key fingerprints to check before approving, chain once approved."""
        with engine.begin() as conn:
            return _view(enrollment.get(conn, enrollment_id), now_ms)

    @router.post("/{enrollment_id}/approve", name="enrollments.approve")
    def approve_enrollment(
        *, principal: Admin, engine: Db, now_ms: NowMs, enrollment_id: int, body: ApproveIn
    ) -> EnrollmentOut:
        """Sign the gateway's CSR and register its signing key, in one transaction.

        409 when the enrollment is not submitted or expired, the gateway is revoked, or it already
        has a live certificate and ``replace`` is false; 503 when the PKI cannot sign.
        """
        with _answers(enrollment_id), engine.begin() as conn:
            approved = enrollment.approve(
                conn, enrollment_id, pki_dir=pki_dir, site_id=body.site_id, replace=body.replace,
                actor=principal.name, now_ms=now_ms,
            )  # fmt: skip
            return _view(approved, now_ms)

    @router.post("/{enrollment_id}/reject", name="enrollments.reject")
    def reject_enrollment(
        *, principal: Admin, engine: Db, now_ms: NowMs, enrollment_id: int, body: RejectIn
    ) -> EnrollmentOut:
        """Reject a pending enrollment: its token stops working. 409 once decided."""
        with engine.begin() as conn:
            rejected = enrollment.reject(
                conn, enrollment_id, reason=body.reason, actor=principal.name, now_ms=now_ms
            )
            return _view(rejected, now_ms)

    @router.post("/{enrollment_id}/csr", name="enrollments.submit")
    def submit_csr(
        *, token: Token, engine: Db, now_ms: NowMs, enrollment_id: int, body: CsrIn
    ) -> SubmittedOut:
        """The gateway submits its CSR and signing key (enrollment token, not an API key).

        Repeating the same submission is harmless; a different one is 409. 422 when the CSR is
        unsigned, altered, not P-256 or its CN is not the gateway id.
        """
        with _answers(enrollment_id), engine.begin() as conn:
            found = enrollment.authenticate(conn, enrollment_id, token, now_ms=now_ms)
            submitted = enrollment.submit(
                conn, found, csr_pem=body.csr_pem, signing_key=base64.b64decode(body.signing_public_key)
            )
        return SubmittedOut(
            id=submitted.id,
            gateway_id=submitted.gateway_id,
            status=submitted.status,
            expires_ms=submitted.expires_ms,
            tls_key_sha256=submitted.tls_key_sha256 or "",
            signing_key_id=submitted.signing_key_id or "",
        )

    @router.get(
        "/{enrollment_id}/certificate",
        name="enrollments.certificate",
        response_model=CertificateOut,  # the 202 answer is a JSONResponse, documented below
        responses={HTTPStatus.ACCEPTED.value: {"model": PendingOut}},
    )
    def fetch_certificate(
        *, token: Token, engine: Db, now_ms: NowMs, enrollment_id: int
    ) -> CertificateOut | JSONResponse:
        """The gateway fetches its chain and the CA bundle once approved; this spends the token.

        202 while the enrollment waits for its CSR or an admin; 410 after a fetch, a rejection or expiry.
        """
        with _answers(enrollment_id), engine.begin() as conn:
            found = enrollment.authenticate(conn, enrollment_id, token, now_ms=now_ms)
            delivery = enrollment.deliver(conn, found, token=token, pki_dir=pki_dir)
        if delivery is None:
            waiting = "its CSR" if found.status == Status.OPEN else "an admin's approval"
            pending = PendingOut(
                status=found.status, detail=f"enrollment {enrollment_id} is waiting for {waiting}"
            )
            return JSONResponse(pending.model_dump(mode="json"), status_code=HTTPStatus.ACCEPTED)
        return CertificateOut(
            gateway_id=delivery.gateway_id, chain_pem=delivery.chain_pem, ca_bundle_pem=delivery.ca_bundle_pem
        )

    return router
