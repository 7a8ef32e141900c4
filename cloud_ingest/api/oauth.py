"""OAuth2 bearer tokens: JWT access tokens from the organisation's identity provider.

The provider signs access tokens (RS256 or ES256); the cloud holds its public keys (PEM files, from
the provider's JWKS), checks signature, ``exp``/``nbf``, issuer and audience, and reads the caller's
role from a claim. A token that is not a JWT is left to the next verifier (API keys), so both kinds of
bearer credential share the ``Authorization`` header.
"""

from __future__ import annotations

import logging

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from cloud_ingest.api.auth import Principal
from cloud_ingest.keys import Role
from cloud_ingest.settings import OAuthSettings

logger = logging.getLogger(__name__)


class OAuthVerifier:
    """Accepts JWT access tokens signed by one of the configured provider keys."""

    def __init__(self, settings: OAuthSettings) -> None:
        self.settings = settings
        self._keys = [load_pem_public_key(path.read_bytes()) for path in settings.public_key_files]

    def __call__(self, token: str) -> Principal | None:
        """The token's subject and role, or None when it is not a valid token of this provider."""
        if token.count(".") != 2:  # not a JWT: perhaps an API key
            return None
        s = self.settings
        for key in self._keys:
            try:
                claims = jwt.decode(
                    token, key=key, algorithms=list(s.algorithms), audience=s.audience, issuer=s.issuer,  # type: ignore[arg-type]
                    leeway=s.leeway_s, options={"require": ["exp", "iss", "aud", "sub"]},
                )  # fmt: skip
            except jwt.InvalidSignatureError:
                continue  # another configured key may have signed it (key rotation)
            except jwt.PyJWTError as exc:
                logger.info("refused an OAuth2 token: %s", exc)
                return None
            role = claims.get(s.role_claim)
            if role not in set(Role):
                logger.info(
                    "refused an OAuth2 token of %r: claim %r is %r", claims["sub"], s.role_claim, role
                )
                return None
            return Principal(name=str(claims.get(s.name_claim, claims["sub"])), role=Role(role))
        return None
