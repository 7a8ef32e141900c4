"""Reading certificates and keys back from the PKI directory and summarising certificates.

Parse failures become :class:`~certs.errors.PkiCorrupt` naming the file (never its contents).
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certs.errors import PkiCorrupt
from certs.index import IndexEntry
from certs.model import CertificateInfo, Role
from certs.store import read_bytes

__all__ = ["read_cert", "read_key", "summarise"]


def read_cert(path: Path) -> x509.Certificate:
    """Load a PEM certificate from ``path``."""
    try:
        return x509.load_pem_x509_certificate(read_bytes(path))
    except ValueError as exc:
        raise PkiCorrupt(f"{path} is not a PEM certificate; restore it or re-issue it") from exc


def read_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Load an unencrypted PEM EC private key from ``path``."""
    try:
        key = serialization.load_pem_private_key(read_bytes(path), password=None)
    except (ValueError, TypeError) as exc:
        # The message names the path only: nothing derived from the key's contents is ever shown.
        raise PkiCorrupt(f"{path} is not an unencrypted private key in PEM; restore it from backup") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiCorrupt(f"{path} is not an EC key; this PKI only uses ECDSA P-256: restore it from backup")
    return key


def summarise(
    cert: x509.Certificate, path: Path, role: Role | None, name: str, entry: IndexEntry | None
) -> CertificateInfo:
    """Build the :class:`CertificateInfo` ``show`` renders; ``entry`` supplies the revocation state."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
        dns = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:  # CA certificates carry no SAN
        uris, dns, ips = (), (), ()
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return CertificateInfo(
        role=role,
        name=name,
        subject_cn=str(cns[0].value) if cns else "",
        uris=uris,
        dns_names=dns,
        ip_addresses=ips,
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        revoked_at=entry.revoked_at if entry else None,
        revocation_reason=entry.reason if entry else None,
        cert_path=path,
    )
