"""Value types of the coldtrace PKI: roles, issued identities, certificate summaries, name rules.

They live apart from :mod:`certs.pki` so the storage, issuing and CLI modules can share them without
import cycles; :mod:`certs.pki` re-exports all of them.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from certs.errors import InvalidName, InvalidOption

__all__ = [
    "NAME_PATTERN",
    "CertificateInfo",
    "CrlInfo",
    "IssuedIdentity",
    "Role",
    "check_days",
    "check_org",
    "coerce_role",
    "identity_uri",
    "serial_hex",
    "validate_name",
]

# Names become MQTT topic levels and the broker username (CN -> username), so no '/', '+', '#',
# whitespace or non-ASCII; the length cap keeps topics and X.509 CN (ub 64) within limits.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_NAME_RE = re.compile(NAME_PATTERN)
MAX_DAYS = 36500  # ~100 years; nothing in a PKI should live longer and X.509 dates get exotic past 9999


class Role(enum.StrEnum):
    """What an identity is allowed to do; decides the certificate's extended key usage."""

    SERVER = "server"  # MQTT brokers / HTTPS endpoints: serverAuth
    GATEWAY = "gateway"  # warehouse gateway: client of the cloud broker AND host of the local broker
    DEVICE = "device"  # sensors/loggers: clientAuth
    SERVICE = "service"  # cloud workers/agents talking to brokers: clientAuth


def validate_name(name: str) -> str:
    """Return ``name`` unchanged if it satisfies the identity naming rule, else raise InvalidName."""
    # fullmatch, not match+'$': '$' would accept a trailing newline.
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
        raise InvalidName(
            f"invalid identity name {name!r}: use 1-64 ASCII letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (the name becomes an MQTT topic level and broker username)"
        )
    return name


def coerce_role(role: Role | str) -> Role:
    """Accept a Role or its string value (callers outside Python typing pass strings)."""
    try:
        return Role(role)
    except ValueError as exc:
        choices = ", ".join(r.value for r in Role)
        raise InvalidOption(f"unknown role {role!r}: use one of {choices}") from exc


def check_days(value: int, option: str) -> int:
    """Validate a validity period in days (1..MAX_DAYS); InvalidOption naming ``option`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DAYS:
        raise InvalidOption(f"{option} must be a whole number of days from 1 to {MAX_DAYS}, got {value!r}")
    return value


def check_org(org: str) -> str:
    """Validate the organisation name put into every subject (X.509 caps O at 64 characters)."""
    if not 1 <= len(org) <= 64 or not org.isprintable():
        raise InvalidOption(f"invalid --org {org!r}: use 1-64 printable characters")
    return org


def serial_hex(serial: int) -> str:
    """Upper-case hex padded to whole bytes, as ``openssl x509 -serial`` prints it."""
    digits = f"{serial:X}"
    return digits.zfill(len(digits) + len(digits) % 2)


def identity_uri(role: Role, name: str) -> str:
    """The SAN URI that names an identity: ``urn:coldtrace:<role>:<name>``."""
    return f"urn:coldtrace:{role.value}:{name}"


@dataclass(frozen=True, slots=True)
class IssuedIdentity:
    """Where an issued identity's files are and what its current certificate is."""

    role: Role
    name: str
    cert_path: Path  # leaf certificate PEM
    key_path: Path  # private key PEM, PKCS8, unencrypted, mode 0600
    chain_path: Path  # leaf + issuing CA PEM (what a TLS server/client presents)
    serial: int
    not_after: datetime  # tz-aware UTC
    uri: str  # "urn:coldtrace:<role>:<name>"


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """A certificate summary, as ``coldtrace certs show`` renders it.

    ``role`` is None for the two CA certificates (their ``name`` is ``root-ca`` / ``issuing-ca``).
    """

    role: Role | None
    name: str
    subject_cn: str
    uris: tuple[str, ...]
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    serial: int
    not_before: datetime
    not_after: datetime
    revoked_at: datetime | None
    revocation_reason: str | None
    cert_path: Path

    @property
    def is_ca(self) -> bool:
        """True for the root and issuing CA certificates."""
        return self.role is None

    @property
    def serial_hex(self) -> str:
        """Serial as upper-case hex, the way ``openssl x509 -serial`` prints it."""
        return serial_hex(self.serial)

    def days_left(self, now: datetime | None = None) -> int:
        """Whole days until ``not_after`` (negative once expired)."""
        now = now or datetime.now(UTC)
        return (self.not_after - now).days


@dataclass(frozen=True, slots=True)
class CrlInfo:
    """The current CRL file: where it is, its CRLNumber and validity window."""

    path: Path
    number: int
    last_update: datetime
    next_update: datetime
    revoked_serials: tuple[int, ...]
