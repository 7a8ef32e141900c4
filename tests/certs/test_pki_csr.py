"""``Pki.sign_csr``: certifying a key the CA never sees, with the profile ``issue`` gives; no mocks."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from certs.errors import IdentityExists, InvalidName, InvalidOption, PkiError
from certs.pki import DEFAULT_LEAF_DAYS, Pki, Role, SignedCertificate, check_csr

CLIENT_AUTH, SERVER_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH

CsrKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki.init(tmp_path / "pki")


def make_csr(
    key: CsrKey | None = None,
    *,
    cns: tuple[str, ...] = ("gw-1",),
    extensions: tuple[x509.ExtensionType, ...] = (),
) -> bytes:
    """A PEM CSR with the given subject CNs, signed by ``key`` (a fresh P-256 key by default)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    # _validate=False: a hostile CSR may carry a CN longer than X.509's 64 characters.
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, cn, _validate=False) for cn in cns]
    attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, "requested-org"))
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attributes))
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


def tampered(csr_pem: bytes) -> bytes:
    """The CSR with the last byte of its signature flipped: it still parses, it no longer verifies."""
    der = bytearray(x509.load_pem_x509_csr(csr_pem).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)


def load(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def index_serials(pki: Pki) -> list[str]:
    return [
        entry["serial"] for entry in json.loads((pki.directory / "index.json").read_text())["certificates"]
    ]


def extensions_without_key_ids(
    cert: x509.Certificate,
) -> dict[x509.ObjectIdentifier, x509.Extension[x509.ExtensionType]]:
    # The SKI differs by key; everything else in the profile must be identical.
    return {e.oid: e for e in cert.extensions if not isinstance(e.value, x509.SubjectKeyIdentifier)}


# --- the certificate -----------------------------------------------------------------------------------


@pytest.mark.parametrize("role", list(Role))
def test_profile_is_the_one_issue_gives(pki: Pki, role: Role) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    signed = pki.sign_csr(make_csr(key, cns=("by-csr",)), role=role, name="by-csr", days=30)
    issued = pki.issue(role, "by-issue", days=30)
    from_csr = load(signed.cert_pem)[0]
    from_issue = load(issued.cert_path.read_bytes())[0]

    assert from_csr.public_key() == key.public_key()
    assert from_csr.subject.rfc4514_string() == from_issue.subject.rfc4514_string().replace(
        "by-issue", "by-csr"
    )
    assert from_csr.issuer == from_issue.issuer
    csr_ext, issue_ext = extensions_without_key_ids(from_csr), extensions_without_key_ids(from_issue)
    assert set(csr_ext) == set(issue_ext)
    for oid, extension in issue_ext.items():
        if oid == x509.SubjectAlternativeName.oid:
            continue
        assert csr_ext[oid] == extension, oid
    san = csr_ext[x509.SubjectAlternativeName.oid].value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"urn:coldtrace:{role.value}:by-csr"]
    assert signed.uri == f"urn:coldtrace:{role.value}:by-csr"
    assert from_csr.not_valid_after_utc - from_csr.not_valid_before_utc == timedelta(days=30, minutes=5)
    assert isinstance(from_csr.signature_hash_algorithm, hashes.SHA256)


def test_result_carries_leaf_chain_and_ca_bundle(pki: Pki) -> None:
    signed = pki.sign_csr(make_csr(), role=Role.GATEWAY, name="gw-1")
    assert isinstance(signed, SignedCertificate)
    leaf = load(signed.cert_pem)[0]
    issuing = load(pki.issuing_cert_path.read_bytes())[0]
    root = load(pki.root_cert_path.read_bytes())[0]
    assert load(signed.chain_pem) == [leaf, issuing]
    assert load(signed.ca_bundle_pem) == [issuing, root]
    assert signed.ca_bundle_pem == pki.ca_bundle_path.read_bytes()
    assert signed.cert_path.read_bytes() == signed.cert_pem
    assert signed.chain_path.read_bytes() == signed.chain_pem
    assert (signed.serial, signed.not_after) == (leaf.serial_number, leaf.not_valid_after_utc)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(
        days=DEFAULT_LEAF_DAYS, minutes=5
    )


def test_gateway_certificate_verifies_as_client_and_as_local_broker(pki: Pki) -> None:
    signed = pki.sign_csr(
        make_csr(), role=Role.GATEWAY, name="gw-1", dns_names=["gw-1.local"], ip_addresses=["10.0.0.5"]
    )
    leaf, *intermediates = load(signed.chain_pem)
    store = Store([load(pki.root_cert_path.read_bytes())[0]])
    client = PolicyBuilder().store(store).build_client_verifier().verify(leaf, intermediates)
    assert x509.UniformResourceIdentifier("urn:coldtrace:gateway:gw-1") in (client.subjects or [])
    for subject in (DNSName("gw-1.local"), IPAddress(ipaddress.ip_address("10.0.0.5"))):
        PolicyBuilder().store(store).build_server_verifier(subject).verify(leaf, intermediates)


def test_what_the_csr_asks_for_is_ignored(pki: Pki) -> None:
    greedy = make_csr(
        extensions=(
            x509.BasicConstraints(ca=True, path_length=None),
            x509.SubjectAlternativeName(
                [x509.DNSName("evil.example"), x509.UniformResourceIdentifier("urn:x")]
            ),
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]),
        )
    )
    leaf = load(pki.sign_csr(greedy, role=Role.DEVICE, name="gw-1").cert_pem)[0]
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier("urn:coldtrace:device:gw-1")]
    assert set(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == {CLIENT_AUTH}
    orgs = leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert [o.value for o in orgs] == ["coldtrace"]  # the PKI's org, not the requested one


# --- files and index -----------------------------------------------------------------------------------


def test_no_private_key_reaches_the_pki_and_the_index_records_it(pki: Pki) -> None:
    signed = pki.sign_csr(make_csr(), role=Role.GATEWAY, name="gw-1")
    identity_dir = pki.directory / "issued" / "gateway" / "gw-1"
    assert sorted(p.name for p in identity_dir.iterdir()) == ["cert.pem", "chain.pem"]
    assert not list(pki.directory.rglob("*.tmp"))
    info = pki.info(Role.GATEWAY, "gw-1")
    assert (info.serial, info.subject_cn, info.revoked_at) == (signed.serial, "gw-1", None)
    assert [i.name for i in pki.list()] == ["gw-1"]
    assert index_serials(pki) == [info.serial_hex]


def test_revoke_and_crl_work_for_a_csr_certificate(pki: Pki) -> None:
    signed = pki.sign_csr(make_csr(), role=Role.GATEWAY, name="gw-1")
    pki.revoke(Role.GATEWAY, "gw-1", reason="key_compromise")
    assert pki.crl_info().revoked_serials == (signed.serial,)


def test_second_certificate_needs_force_and_supersedes(pki: Pki) -> None:
    first = pki.sign_csr(make_csr(), role=Role.GATEWAY, name="gw-1")
    with pytest.raises(IdentityExists, match="--force"):
        pki.sign_csr(make_csr(), role=Role.GATEWAY, name="gw-1")
    assert pki.info(Role.GATEWAY, "gw-1").serial == first.serial

    second = pki.sign_csr(make_csr(), role=Role.GATEWAY, name="gw-1", force=True)
    assert pki.crl_info().revoked_serials == (first.serial,)
    assert pki.info(Role.GATEWAY, "gw-1").serial == second.serial


def test_replacing_an_issued_identity_removes_its_now_stale_key(pki: Pki) -> None:
    issued = pki.issue(Role.GATEWAY, "gw-1")
    assert issued.key_path.is_file()
    pki.sign_csr(make_csr(), role=Role.GATEWAY, name="gw-1", force=True)
    assert not issued.key_path.exists()
    # And back: `issue --force` writes a key again.
    again = pki.issue(Role.GATEWAY, "gw-1", force=True)
    assert again.key_path.is_file()


def test_name_ownership_rules_apply(pki: Pki) -> None:
    pki.issue(Role.DEVICE, "dev-1")
    with pytest.raises(IdentityExists, match="only one role"):
        pki.sign_csr(make_csr(cns=("dev-1",)), role=Role.GATEWAY, name="dev-1", force=True)
    with pytest.raises(IdentityExists, match="letter case"):
        pki.sign_csr(make_csr(cns=("DEV-1",)), role=Role.DEVICE, name="DEV-1", force=True)


# --- refusals ------------------------------------------------------------------------------------------


REFUSALS: dict[str, tuple[Callable[[], bytes], str]] = {
    "cn-mismatch": (lambda: make_csr(cns=("gw-2",)), r"CN \('gw-2'\) must be exactly 'gw-1'"),
    "cn-missing": (lambda: make_csr(cns=()), r"CN \(none\)"),
    "cn-twice": (lambda: make_csr(cns=("gw-1", "gw-1")), r"CN \('gw-1', 'gw-1'\)"),
    "cn-case": (lambda: make_csr(cns=("GW-1",)), "must be exactly 'gw-1'"),
    # Quoted in part only: the CN comes from outside and the message reaches logs.
    "cn-long": (lambda: make_csr(cns=("x" * 200,)), "'" + "x" * 80 + "'\\)"),
    "bad-signature": (lambda: tampered(make_csr()), "signature does not verify"),
    "rsa": (
        lambda: make_csr(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "not ECDSA P-256",
    ),
    "p384": (lambda: make_csr(ec.generate_private_key(ec.SECP384R1())), "not ECDSA P-256"),
    "ed25519": (lambda: make_csr(ed25519.Ed25519PrivateKey.generate()), "not ECDSA P-256"),
    "not-pem": (lambda: b"hello", "not a PEM CSR"),
    "certificate": (
        lambda: b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        "not a PEM CSR",
    ),
}


# cryptography warns (rightly) about the over-long CN of the "cn-long" case when building and parsing it.
@pytest.mark.filterwarnings("ignore:Attribute's length must be:UserWarning")
@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refused_csr_issues_nothing(pki: Pki, case: str) -> None:
    build, message = REFUSALS[case]
    csr_pem = build()
    with pytest.raises(InvalidOption, match=message) as refused:
        pki.sign_csr(csr_pem, role=Role.GATEWAY, name="gw-1")
    assert isinstance(refused.value, PkiError)
    assert refused.value.exit_code == 2
    with pytest.raises(InvalidOption, match=message):
        check_csr(csr_pem, name="gw-1")
    assert index_serials(pki) == []
    assert not (pki.directory / "issued" / "gateway").exists()


def test_the_name_and_options_are_validated_before_anything_is_written(pki: Pki) -> None:
    with pytest.raises(InvalidName):
        pki.sign_csr(make_csr(cns=("a/b",)), role=Role.GATEWAY, name="a/b")
    with pytest.raises(InvalidOption, match="days"):
        pki.sign_csr(make_csr(), role=Role.GATEWAY, name="gw-1", days=0)
    with pytest.raises(InvalidOption, match="outlive the issuing CA"):
        pki.sign_csr(make_csr(), role=Role.GATEWAY, name="gw-1", days=5000)
    with pytest.raises(InvalidOption, match="invalid DNS name"):
        pki.sign_csr(make_csr(), role=Role.GATEWAY, name="gw-1", dns_names=["bad name"])
    with pytest.raises(InvalidOption, match="unknown role"):
        pki.sign_csr(make_csr(), role="overlord", name="gw-1")  # type: ignore[arg-type]
    assert index_serials(pki) == []


def test_check_csr_returns_the_key_to_certify() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    assert check_csr(make_csr(key), name="gw-1") == key.public_key()
