"""Certificate revocation lists signed by the issuing CA (mosquitto's ``crlfile``).

Pure functions: the caller supplies the revoked entries, the next CRLNumber and the clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certs.errors import InvalidOption
from certs.model import CrlInfo

__all__ = ["REVOCATION_REASONS", "build_crl", "crl_pem", "describe_crl", "entry_reason", "validate_reason"]

# The reasons an operator of this PKI can state; the CLI offers exactly these.
REVOCATION_REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key_compromise": x509.ReasonFlags.key_compromise,
    "superseded": x509.ReasonFlags.superseded,
    "cessation_of_operation": x509.ReasonFlags.cessation_of_operation,
}


def validate_reason(reason: str) -> str:
    """Return ``reason`` if it is one of :data:`REVOCATION_REASONS`, else raise InvalidOption."""
    if reason not in REVOCATION_REASONS:
        raise InvalidOption(
            f"unknown revocation reason {reason!r}: use one of {', '.join(REVOCATION_REASONS)}"
        )
    return reason


def build_crl(
    *,
    issuer_cert: x509.Certificate,
    issuer_key: ec.EllipticCurvePrivateKey,
    revoked: Iterable[tuple[int, datetime, str]],
    number: int,
    now: datetime,
    days: int,
) -> x509.CertificateRevocationList:
    """Sign a CRL listing ``(serial, revoked_at, reason)`` entries, valid from ``now`` for ``days``."""
    ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_cert.subject)
        .last_update(now)
        .next_update(now + timedelta(days=days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    )
    for serial, revoked_at, reason in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(revoked_at)
        flag = REVOCATION_REASONS[reason]
        # RFC 5280 5.3.1: the reasonCode extension SHOULD be absent rather than say "unspecified".
        if flag is not x509.ReasonFlags.unspecified:
            entry = entry.add_extension(x509.CRLReason(flag), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(issuer_key, hashes.SHA256())


def crl_pem(crl: x509.CertificateRevocationList) -> bytes:
    """PEM encoding of a CRL (mosquitto and OpenSSL read PEM)."""
    return crl.public_bytes(serialization.Encoding.PEM)


def entry_reason(entry: x509.RevokedCertificate) -> str:
    """The reason name of a CRL entry; an absent reasonCode means ``unspecified``."""
    try:
        flag = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        return "unspecified"
    return flag.name


def describe_crl(crl: x509.CertificateRevocationList, path: Path) -> CrlInfo:
    """Summarise a parsed CRL for display."""
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    next_update = crl.next_update_utc
    if next_update is None:  # we always set it; a foreign file without it is treated as already stale
        next_update = crl.last_update_utc
    return CrlInfo(
        path=path,
        number=number,
        last_update=crl.last_update_utc,
        next_update=next_update,
        revoked_serials=tuple(entry.serial_number for entry in crl),
    )
