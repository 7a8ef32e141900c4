"""Who is calling, and may they: bearer authentication and the API's one permission table.

Callers present ``Authorization: Bearer <token>``. Today the token is an API key (``cloud_ingest.keys``);
OAuth2 access tokens travel in the same header, so a JWT verifier can be added later as one more
:class:`TokenVerifier` in ``app.state.token_verifiers`` without touching any route. Every verifier
turns a token into a :class:`Principal` (name and role) or declines it.

A missing or refused token is 401 with ``WWW-Authenticate: Bearer``; a role the route does not allow
is 403. Every ``/v1`` router carries :func:`authorize` as a dependency, which looks the matched
route's name up in :data:`PERMISSIONS`; routes that need the caller also declare :data:`Authorized`
(FastAPI resolves it once per request). A route without an entry is refused to everyone, and the
test suite fails on it. Routers mounted from elsewhere may use :func:`require` instead.
``admin`` is not a super-user: it administers keys, gateways and webhooks, and reads like the others.

=========================  ===========================================
route name                 roles
=========================  ===========================================
alerts.list, alerts.get    operator, quality, auditor, admin
alerts.ack, alerts.comment operator, quality
alerts.close               quality
holds.list, holds.get      operator, quality, auditor, admin
holds.place                operator, quality (manual holds)
holds.release              quality (``holds.release_hold`` checks too)
shipments.list, .get       operator, quality, auditor, admin
lots.list, lots.get        operator, quality, auditor, admin
lots.put                   operator, admin (quantities from the ERP)
devices.list, devices.get  operator, quality, auditor, admin
gateways.list, .get        operator, quality, auditor, admin
gateways.register, .revoke admin
manifests.list, .get       operator, quality, auditor, admin
manifests.create, .publish operator, admin
rejects.list, .summary     operator, quality, auditor, admin
rejects.raw                operator, auditor, admin (the refused bytes)
webhooks.list/create/del.  admin
=========================  ===========================================
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Protocol

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine

from cloud_ingest.keys import Role, verify_key

logger = logging.getLogger(__name__)

_ALL = frozenset(Role)
_OPERATOR_QUALITY = frozenset({Role.OPERATOR, Role.QUALITY})
_OPERATOR_ADMIN = frozenset({Role.OPERATOR, Role.ADMIN})
_QUALITY = frozenset({Role.QUALITY})
_ADMIN = frozenset({Role.ADMIN})
_OPERATOR_AUDITOR_ADMIN = frozenset({Role.OPERATOR, Role.AUDITOR, Role.ADMIN})

#: Route name -> roles allowed to call it. The single source of the API's permissions.
PERMISSIONS: Mapping[str, frozenset[Role]] = {
    "alerts.list": _ALL,
    "alerts.get": _ALL,
    "alerts.ack": _OPERATOR_QUALITY,
    "alerts.comment": _OPERATOR_QUALITY,
    "alerts.close": _QUALITY,
    "holds.list": _ALL,
    "holds.get": _ALL,
    "holds.place": _OPERATOR_QUALITY,
    "holds.release": _QUALITY,
    "shipments.list": _ALL,
    "shipments.get": _ALL,
    "lots.list": _ALL,
    "lots.get": _ALL,
    "lots.put": _OPERATOR_ADMIN,
    "devices.list": _ALL,
    "devices.get": _ALL,
    "gateways.list": _ALL,
    "gateways.get": _ALL,
    "gateways.register": _ADMIN,
    "gateways.revoke": _ADMIN,
    "manifests.list": _ALL,
    "manifests.get": _ALL,
    "manifests.create": _OPERATOR_ADMIN,
    "manifests.publish": _OPERATOR_ADMIN,
    "rejects.list": _ALL,
    "rejects.summary": _ALL,
    "rejects.raw": _OPERATOR_AUDITOR_ADMIN,
    "webhooks.list": _ADMIN,
    "webhooks.create": _ADMIN,
    "webhooks.delete": _ADMIN,
}


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: ``name`` is the actor recorded in histories."""

    name: str
    role: Role


class TokenVerifier(Protocol):
    """Turns a bearer token into a Principal, or returns None when it does not accept the token."""

    def __call__(self, token: str) -> Principal | None:
        """The caller ``token`` proves, or None."""
        ...


class ApiKeyVerifier:
    """Accepts the API keys stored in ``api_keys`` (see :mod:`cloud_ingest.keys`)."""

    def __init__(self, engine: Engine, now_ms: Callable[[], int]) -> None:
        self._engine = engine
        self._now_ms = now_ms

    def __call__(self, token: str) -> Principal | None:
        """The key's name and role, or None for a malformed, unknown, wrong or revoked key."""
        with self._engine.begin() as conn:
            key = verify_key(conn, token, now_ms=self._now_ms())
        return None if key is None else Principal(name=key.name, role=key.role)


def verify_bearer(token: str, verifiers: Sequence[TokenVerifier]) -> Principal | None:
    """The Principal of the first verifier that accepts ``token``, or None if none does."""
    for verifier in verifiers:
        principal = verifier(token)
        if principal is not None:
            return principal
    return None


# auto_error=False: a missing header must be our 401 with WWW-Authenticate, not FastAPI's 403.
_bearer = HTTPBearer(
    auto_error=False, scheme_name="bearer", description="An API key (`ct_…`) or an OAuth2 access token (JWT)."
)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"}
    )


def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, from the bearer token; 401 when it is missing or refused."""
    if credentials is None:
        raise _unauthorized("an Authorization: Bearer <key> header is required")
    verifiers: Sequence[TokenVerifier] = request.app.state.token_verifiers
    principal = verify_bearer(credentials.credentials, verifiers)
    if principal is None:
        raise _unauthorized("the bearer token is not valid")
    return principal


def _check(principal: Principal, roles: frozenset[Role], what: str) -> Principal:
    if principal.role not in roles:
        allowed = ", ".join(sorted(roles)) or "no role"
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN,
            detail=f"{what} is for {allowed}; {principal.name!r} has role {principal.role}",
        )
    return principal


def require(*roles: Role) -> Callable[[Principal], Principal]:
    """A dependency admitting callers with one of ``roles`` (for routes outside the table)."""
    allowed = frozenset(roles)

    def dependency(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        return _check(principal, allowed, "this operation")

    return dependency


def authorize(request: Request, principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
    """Admit the caller if :data:`PERMISSIONS` allows their role on the matched route."""
    name = getattr(request.scope.get("route"), "name", None)
    roles = PERMISSIONS.get(name) if isinstance(name, str) else None
    if roles is None:
        # Fail closed: a route somebody forgot to add to the table is nobody's.
        logger.error("route %r has no entry in the permission table; refusing %s", name, principal.name)
        roles = frozenset()
    return _check(principal, roles, str(name))


#: Declare ``principal: Authorized`` on a route to authenticate and authorise by the table.
Authorized = Annotated[Principal, Depends(authorize)]
