"""API keys: create, verify, list and revoke the bearer keys people and systems use on the HTTP API.

A key reads ``ct_<prefix>_<secret>``: an 8-hex-digit prefix that names the key in listings and logs,
and at least 32 random URL-safe characters. Only the SHA-256 of the whole key is stored; the key itself
is shown once, when it is created. Verification looks the row up by prefix and compares hashes in
constant time. A revoked key stays in the table (so its name still explains old audit entries) but is
never accepted again.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Connection, Row, insert, or_, select, update

from cloud_ingest.db.tables import api_keys
from cloud_ingest.errors import Conflict, NotFound

logger = logging.getLogger(__name__)

KEY_SCHEME = "ct"
PREFIX_CHARS = 8
SECRET_BYTES = 32  # token_urlsafe(32) writes 43 characters
MIN_SECRET_CHARS = 32
MAX_NAME_CHARS = 64
#: ``last_used_ms`` is a hint for audits, not a log: one write a minute per key is enough.
LAST_USED_RESOLUTION_MS = 60_000
_PREFIX_ATTEMPTS = 8


class Role(enum.StrEnum):
    """What a key may do; the API's permission table (``cloud_ingest.api.auth``) maps routes to roles."""

    OPERATOR = "operator"
    QUALITY = "quality"
    AUDITOR = "auditor"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class NewKey:
    """A freshly created key. ``key`` exists only here: show it once, then drop it."""

    prefix: str
    key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiKey:
    """A stored key, without its secret."""

    prefix: str
    name: str
    role: Role
    created_ms: int
    revoked_ms: int | None
    last_used_ms: int | None


def hash_key(key: str) -> str:
    """SHA-256 hex of a whole key.

    A fast hash is right here, unlike for passwords: the secret carries 256 bits of randomness, so
    nobody can guess it from the hash however many guesses per second they afford.
    """
    return hashlib.sha256(key.encode()).hexdigest()


def parse_prefix(key: str) -> str | None:
    """The prefix of a well-formed key, or None when ``key`` is not shaped like one of ours."""
    scheme, sep1, rest = key.partition("_")
    prefix, sep2, secret = rest.partition("_")
    well_formed = (
        scheme == KEY_SCHEME
        and sep1
        and sep2
        and len(prefix) == PREFIX_CHARS
        and all(c in "0123456789abcdef" for c in prefix)
        and len(secret) >= MIN_SECRET_CHARS
    )
    return prefix if well_formed else None


def normalise_prefix(text: str) -> str:
    """Accept a prefix as listed (``1a2b3c4d``) or as the key starts (``ct_1a2b3c4d``)."""
    return text.strip().removeprefix(f"{KEY_SCHEME}_").rstrip("_")


def _record(row: Row[Any]) -> ApiKey:
    return ApiKey(
        prefix=row.key_prefix,
        name=row.name,
        role=Role(row.role),
        created_ms=row.created_ms,
        revoked_ms=row.revoked_ms,
        last_used_ms=row.last_used_ms,
    )


def create_key(conn: Connection, *, role: Role, name: str, now_ms: int) -> NewKey:
    """Create a key for ``name`` with ``role``; the returned key is the only copy there will be."""
    name = name.strip()
    if not name or len(name) > MAX_NAME_CHARS:
        raise ValueError(f"a key name has 1 to {MAX_NAME_CHARS} characters")
    for _ in range(_PREFIX_ATTEMPTS):
        # 2**32 prefixes make a collision rare, but the column is unique: draw again rather than fail.
        prefix = secrets.token_hex(PREFIX_CHARS // 2)
        taken = conn.execute(select(api_keys.c.id).where(api_keys.c.key_prefix == prefix)).first()
        if taken is None:
            break
    else:
        raise Conflict("could not draw an unused key prefix; try again")
    key = f"{KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(SECRET_BYTES)}"
    conn.execute(
        insert(api_keys).values(
            key_prefix=prefix, key_hash=hash_key(key), role=role, name=name, created_ms=now_ms
        )
    )
    logger.info("API key %s created for %s (%s)", prefix, name, role)
    return NewKey(prefix=prefix, key=key)


def verify_key(conn: Connection, key: str, *, now_ms: int) -> ApiKey | None:
    """The stored key matching ``key``, or None when it is malformed, unknown, wrong or revoked."""
    prefix = parse_prefix(key)
    if prefix is None:
        return None
    # The prefix is an identifier, not a secret (it is listed and logged), so looking it up first
    # leaks nothing; the secret part is only ever compared as a hash, in constant time.
    row = conn.execute(select(api_keys).where(api_keys.c.key_prefix == prefix)).one_or_none()
    if row is None or not hmac.compare_digest(row.key_hash, hash_key(key)):
        return None
    if row.revoked_ms is not None:
        logger.info("revoked API key %s (%s) was presented", prefix, row.name)
        return None
    if row.role not in Role.__members__.values():
        logger.error("API key %s has unknown role %r; refusing it", prefix, row.role)
        return None
    if row.last_used_ms is None or now_ms - row.last_used_ms >= LAST_USED_RESOLUTION_MS:
        # The WHERE repeats the check so concurrent requests on one key write at most once.
        conn.execute(
            update(api_keys)
            .where(
                api_keys.c.id == row.id,
                or_(
                    api_keys.c.last_used_ms.is_(None),
                    api_keys.c.last_used_ms <= now_ms - LAST_USED_RESOLUTION_MS,
                ),
            )
            .values(last_used_ms=now_ms)
        )
    return _record(row)


def list_keys(conn: Connection) -> list[ApiKey]:
    """Every key, revoked ones included, oldest first."""
    return [_record(row) for row in conn.execute(select(api_keys).order_by(api_keys.c.id))]


def revoke_key(conn: Connection, prefix: str, *, now_ms: int) -> ApiKey:
    """Revoke the key with ``prefix``; it is refused from the next request on."""
    prefix = normalise_prefix(prefix)
    row = conn.execute(
        select(api_keys).where(api_keys.c.key_prefix == prefix).with_for_update()
    ).one_or_none()
    if row is None:
        raise NotFound(f"no API key has prefix {prefix!r}")
    if row.revoked_ms is not None:
        raise Conflict(f"API key {prefix} was already revoked")
    conn.execute(update(api_keys).where(api_keys.c.id == row.id).values(revoked_ms=now_ms))
    logger.info("API key %s (%s) revoked", prefix, row.name)
    return replace(_record(row), revoked_ms=now_ms)
