"""Building keys and X.509 certificates: the root CA, the issuing CA and role-specific leaves.

Pure functions over ``cryptography`` objects: no filesystem access, no clock (callers pass ``now``),
which keeps them easy to reason about and to test.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.errors import InvalidOption
from certs.model import Role, identity_uri

__all__ = [
    "CLOCK_SKEW",
    "ROLE_EKU",
    "build_issuing_ca",
    "build_leaf",
    "build_root_ca",
    "cert_pem",
    "key_pem",
    "new_key",
    "parse_dns_names",
    "parse_ip_addresses",
]

# Backdate not_before so a device whose clock lags a little still accepts a fresh certificate.
CLOCK_SKEW = timedelta(minutes=5)

ROLE_EKU: dict[Role, tuple[x509.ObjectIdentifier, ...]] = {
    Role.SERVER: (ExtendedKeyUsageOID.SERVER_AUTH,),
    # A gateway is a client of the cloud broker and also hosts the warehouse's local broker.
    Role.GATEWAY: (ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH),
    Role.DEVICE: (ExtendedKeyUsageOID.CLIENT_AUTH,),
    Role.SERVICE: (ExtendedKeyUsageOID.CLIENT_AUTH,),
}

_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
_LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,  # ECDHE-ECDSA TLS needs nothing else
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS8 PEM, unencrypted: mosquitto and paho load it without a passphrase prompt."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    """PEM encoding of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


def parse_dns_names(values: Sequence[str]) -> tuple[str, ...]:
    """Validate DNS SAN values (LDH labels, optional leading ``*.``); InvalidOption otherwise."""
    names: list[str] = []
    for value in values:
        host = value.removeprefix("*.")
        labels = host.split(".")
        if len(value) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
            raise InvalidOption(
                f"invalid DNS name {value!r}: use dot-separated labels of ASCII letters, digits and '-' "
                "(e.g. --dns broker.local)"
            )
        names.append(value.lower())
    return tuple(dict.fromkeys(names))


def parse_ip_addresses(values: Sequence[str]) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    """Validate IP SAN values; InvalidOption otherwise."""
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for value in values:
        try:
            addresses.append(ipaddress.ip_address(value))
        except ValueError as exc:
            raise InvalidOption(f"invalid IP address {value!r}: use e.g. --ip 127.0.0.1 or --ip ::1") from exc
    return tuple(dict.fromkeys(addresses))


def _name(org: str, common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
        ]
    )


def _ski(cert: x509.Certificate) -> x509.SubjectKeyIdentifier:
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value


def _base(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, now: datetime, days: int
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())  # 159 random bits: unguessable, RFC 5280 sized
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def build_root_ca(key: ec.EllipticCurvePrivateKey, *, org: str, days: int, now: datetime) -> x509.Certificate:
    """Self-signed root: may sign one level of CA below it (the issuing CA) and nothing deeper."""
    name = _name(org, f"{org} Root CA")
    return (
        _base(name, name, key.public_key(), now, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .sign(key, hashes.SHA256())
    )


def build_issuing_ca(
    key: ec.EllipticCurvePrivateKey,
    *,
    root_cert: x509.Certificate,
    root_key: ec.EllipticCurvePrivateKey,
    org: str,
    days: int,
    now: datetime,
) -> x509.Certificate:
    """Issuing CA signed by the root; path_length=0 so it can only sign leaves."""
    return (
        _base(_name(org, f"{org} Issuing CA"), root_cert.subject, key.public_key(), now, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(_ski(root_cert)), critical=False
        )
        .sign(root_key, hashes.SHA256())
    )


def build_leaf(
    public_key: ec.EllipticCurvePublicKey,
    *,
    role: Role,
    name: str,
    org: str,
    issuer_cert: x509.Certificate,
    issuer_key: ec.EllipticCurvePrivateKey,
    dns_names: Sequence[str],
    ip_addresses: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address],
    days: int,
    now: datetime,
) -> x509.Certificate:
    """End-entity certificate for ``role``/``name``; the SAN URI always identifies it."""
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity_uri(role, name))]
    sans += [x509.DNSName(dns) for dns in dns_names]
    sans += [x509.IPAddress(ip) for ip in ip_addresses]
    return (
        _base(_name(org, name), issuer_cert.subject, public_key, now, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_LEAF_KEY_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(ROLE_EKU[role])), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(_ski(issuer_cert)), critical=False
        )
        .sign(issuer_key, hashes.SHA256())
    )
