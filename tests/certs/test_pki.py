"""Library tests for certs.pki: real keys, real certificates, real files; no mocks."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import stat
import subprocess
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certs.errors import (
    AlreadyRevoked,
    IdentityExists,
    InvalidName,
    InvalidOption,
    PkiCorrupt,
    PkiError,
    PkiExists,
    PkiNotInitialized,
    PkiPermissionError,
    UnknownIdentity,
)
from certs.model import NAME_PATTERN
from certs.pki import REVOCATION_REASONS, IssuedIdentity, Pki, Role, validate_name

BAD_NAMES = ["", "a/b", "a+b", "#", "x" * 65, "é", "-lead", ".hidden", "a b", "gw\n", "a\x00b", "../up", "ä1"]
CLIENT_AUTH, SERVER_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki.init(tmp_path / "pki")


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def load_crl(pki: Pki) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(pki.crl_path.read_bytes())


def crl_number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def chain_of(identity: IssuedIdentity) -> tuple[x509.Certificate, list[x509.Certificate]]:
    leaf, *intermediates = x509.load_pem_x509_certificates(identity.chain_path.read_bytes())
    return leaf, intermediates


def trust_store(pki: Pki) -> Store:
    # Trust only the root: the issuing CA must come from the presented chain, as in TLS.
    return Store([load_cert(pki.root_cert_path)])


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- init and CA certificates ------------------------------------------------------------------


def test_init_writes_layout_with_modes(pki: Pki) -> None:
    d = pki.directory
    for key in (d / "root" / "ca.key", d / "issuing" / "ca.key"):
        assert mode(key) == 0o600
        assert mode(key.parent) == 0o700
    for cert in (
        pki.root_cert_path,
        pki.issuing_cert_path,
        pki.ca_bundle_path,
        pki.crl_path,
        d / "index.json",
    ):
        assert mode(cert) == 0o644
    bundle = x509.load_pem_x509_certificates(pki.ca_bundle_path.read_bytes())
    assert bundle == [load_cert(pki.issuing_cert_path), load_cert(pki.root_cert_path)]
    index = json.loads((d / "index.json").read_text())
    assert index["crl_number"] == 1
    assert index["certificates"] == []
    assert not list(d.rglob("*.tmp"))


def test_ca_certificates_are_a_two_level_p256_hierarchy(pki: Pki) -> None:
    root, issuing = load_cert(pki.root_cert_path), load_cert(pki.issuing_cert_path)
    root.verify_directly_issued_by(root)
    issuing.verify_directly_issued_by(root)
    for cert, path_length in ((root, 1), (issuing, 0)):
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        assert bc.critical
        assert (bc.value.ca, bc.value.path_length) == (True, path_length)
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
        assert ku.critical
        assert ku.value.key_cert_sign
        assert ku.value.crl_sign
        assert not ku.value.digital_signature
        public_key = cert.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        assert public_key.curve.name == "secp256r1"
        assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        assert ski == x509.SubjectKeyIdentifier.from_public_key(public_key)
    aki = issuing.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    root_ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == root_ski.digest
    assert root.not_valid_after_utc - root.not_valid_before_utc == timedelta(days=3650, minutes=5)
    assert issuing.not_valid_after_utc - issuing.not_valid_before_utc == timedelta(days=1825, minutes=5)


def test_init_twice_needs_force(tmp_path: Path) -> None:
    first = Pki.init(tmp_path / "pki", org="Acme Cold")
    first.issue(Role.DEVICE, "d1")
    old_root = first.root_cert_path.read_bytes()
    with pytest.raises(PkiExists, match="--force"):
        Pki.init(tmp_path / "pki")
    assert first.root_cert_path.read_bytes() == old_root  # untouched by the refused attempt

    second = Pki.init(tmp_path / "pki", force=True)
    assert second.root_cert_path.read_bytes() != old_root
    assert second.list() == []  # identities of the old CA are gone with it
    assert not (tmp_path / "pki" / "issued" / "device").exists()
    with pytest.raises(UnknownIdentity):
        second.identity(Role.DEVICE, "d1")
    subject = load_cert(second.root_cert_path).subject
    assert subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "coldtrace"


def test_init_org_lands_in_every_subject(tmp_path: Path) -> None:
    pki = Pki.init(tmp_path / "pki", org="Acme Cold")
    leaf = load_cert(pki.issue(Role.SERVICE, "ingest").cert_path)
    for cert in (leaf, load_cert(pki.root_cert_path), load_cert(pki.issuing_cert_path)):
        assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Acme Cold"


def test_open_requires_init(tmp_path: Path) -> None:
    with pytest.raises(PkiNotInitialized, match="coldtrace certs init --dir"):
        Pki.open(tmp_path / "nothing-here")
    Pki.init(tmp_path / "pki")
    assert Pki.open(tmp_path / "pki").directory == tmp_path / "pki"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"root_days": 0},
        {"issuing_days": 4000},  # longer than the root
        {"crl_days": -1},
        {"org": ""},
        {"org": "x" * 65},
    ],
)
def test_init_rejects_bad_options(tmp_path: Path, kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidOption):
        Pki.init(tmp_path / "pki", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "pki" / "index.json").exists()


# --- issuing leaves ----------------------------------------------------------------------------

EXPECTED_EKU = {
    Role.SERVER: {SERVER_AUTH},
    Role.GATEWAY: {CLIENT_AUTH, SERVER_AUTH},
    Role.DEVICE: {CLIENT_AUTH},
    Role.SERVICE: {CLIENT_AUTH},
}


@pytest.mark.parametrize("role", list(Role))
def test_leaf_profile_per_role(pki: Pki, role: Role) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    identity = pki.issue(role, "unit-7", days=30)
    cert = load_cert(identity.cert_path)
    issuing = load_cert(pki.issuing_cert_path)

    assert identity.uri == f"urn:coldtrace:{role.value}:unit-7"
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "unit-7"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [identity.uri]
    assert san.get_values_for_type(x509.DNSName) == []
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == EXPECTED_EKU[role]
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical
    assert bc.value.ca is False
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert ku.value.digital_signature
    assert not ku.value.key_cert_sign
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert (
        aki.key_identifier
        == issuing.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    )
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    cert.verify_directly_issued_by(issuing)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)

    assert 0 < cert.serial_number < 2**159
    assert identity.serial == cert.serial_number
    assert identity.not_after == cert.not_valid_after_utc
    assert identity.not_after.tzinfo is not None
    assert before - timedelta(minutes=5) <= cert.not_valid_before_utc <= before - timedelta(minutes=4)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=30, minutes=5)


def test_server_chain_verifies_for_dns_and_ip(pki: Pki) -> None:
    identity = pki.issue(
        Role.SERVER, "broker", dns_names=["localhost", "Broker.Local"], ip_addresses=["127.0.0.1"]
    )
    leaf, intermediates = chain_of(identity)
    store = trust_store(pki)
    for subject in (
        DNSName("localhost"),
        DNSName("broker.local"),
        IPAddress(ipaddress.ip_address("127.0.0.1")),
    ):
        chain = PolicyBuilder().store(store).build_server_verifier(subject).verify(leaf, intermediates)
        assert [c.subject for c in chain] == [
            leaf.subject,
            load_cert(pki.issuing_cert_path).subject,
            load_cert(pki.root_cert_path).subject,
        ]
    with pytest.raises(VerificationError):
        PolicyBuilder().store(store).build_server_verifier(DNSName("evil.example")).verify(
            leaf, intermediates
        )
    info = pki.info(Role.SERVER, "broker")
    assert info.dns_names == ("localhost", "broker.local")
    assert info.ip_addresses == ("127.0.0.1",)


@pytest.mark.parametrize("role", [Role.DEVICE, Role.SERVICE, Role.GATEWAY])
def test_client_roles_verify_as_clients(pki: Pki, role: Role) -> None:
    identity = pki.issue(role, "client-1")
    leaf, intermediates = chain_of(identity)
    verified = PolicyBuilder().store(trust_store(pki)).build_client_verifier().verify(leaf, intermediates)
    assert verified.subjects == [x509.UniformResourceIdentifier(identity.uri)]
    assert len(verified.chain) == 3


def test_server_cannot_act_as_client(pki: Pki) -> None:
    leaf, intermediates = chain_of(pki.issue(Role.SERVER, "broker", dns_names=["localhost"]))
    with pytest.raises(VerificationError):
        PolicyBuilder().store(trust_store(pki)).build_client_verifier().verify(leaf, intermediates)


@pytest.mark.parametrize("role", [Role.DEVICE, Role.SERVICE])
def test_client_only_roles_cannot_serve_tls(pki: Pki, role: Role) -> None:
    # Same DNS SAN as a server would have: only the missing serverAuth EKU can make this fail.
    leaf, intermediates = chain_of(pki.issue(role, "sneaky", dns_names=["broker.local"]))
    with pytest.raises(VerificationError):
        PolicyBuilder().store(trust_store(pki)).build_server_verifier(DNSName("broker.local")).verify(
            leaf, intermediates
        )


def test_gateway_hosts_the_local_broker(pki: Pki) -> None:
    leaf, intermediates = chain_of(pki.issue(Role.GATEWAY, "gw-1", dns_names=["gw-1.local"]))
    PolicyBuilder().store(trust_store(pki)).build_server_verifier(DNSName("gw-1.local")).verify(
        leaf, intermediates
    )


def test_chain_is_leaf_then_issuing_ca(pki: Pki) -> None:
    identity = pki.issue(Role.DEVICE, "d1")
    certs = x509.load_pem_x509_certificates(identity.chain_path.read_bytes())
    assert certs == [load_cert(identity.cert_path), load_cert(pki.issuing_cert_path)]


def test_private_key_file_is_private_pkcs8_and_matches(pki: Pki) -> None:
    identity = pki.issue(Role.DEVICE, "d1")
    assert mode(identity.key_path) == 0o600
    assert mode(identity.key_path.parent) == 0o700
    assert mode(identity.cert_path) == 0o644
    assert mode(identity.chain_path) == 0o644
    pem = identity.key_path.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8, not "EC PRIVATE KEY"
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == load_cert(identity.cert_path).public_key()
    assert not list(pki.directory.rglob("*.tmp"))


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_file_modes_do_not_depend_on_umask(pki: Pki, umask: int) -> None:
    previous = os.umask(umask)
    try:
        identity = pki.issue(Role.DEVICE, "d1")
    finally:
        os.umask(previous)
    assert mode(identity.key_path) == 0o600
    assert mode(identity.key_path.parent) == 0o700
    assert mode(identity.cert_path) == 0o644


def test_loose_key_directory_is_tightened(pki: Pki) -> None:
    # E.g. restored from a backup or created by hand: issuing must not leave the key world-listable.
    loose = pki.directory / "issued" / "device" / "d1"
    loose.mkdir(parents=True)
    loose.chmod(0o777)
    identity = pki.issue(Role.DEVICE, "d1")
    assert identity.key_path.parent == loose
    assert mode(loose) == 0o700


def test_identity_returns_what_issue_returned(pki: Pki) -> None:
    issued = pki.issue(Role.GATEWAY, "gw-1")
    assert pki.identity(Role.GATEWAY, "gw-1") == issued
    assert pki.identity("gateway", "gw-1") == issued  # type: ignore[arg-type]
    with pytest.raises(UnknownIdentity, match="coldtrace certs issue device gw-2"):
        pki.identity(Role.DEVICE, "gw-2")


def test_reissue_needs_force_and_supersedes(pki: Pki) -> None:
    first = pki.issue(Role.DEVICE, "d1")
    first_key = first.key_path.read_bytes()
    number_before = crl_number(load_crl(pki))
    with pytest.raises(IdentityExists, match="--force"):
        pki.issue(Role.DEVICE, "d1")
    assert first.key_path.read_bytes() == first_key

    second = pki.issue(Role.DEVICE, "d1", force=True)
    assert second.serial != first.serial
    assert second.key_path.read_bytes() != first_key
    assert pki.identity(Role.DEVICE, "d1") == second
    crl = load_crl(pki)
    assert crl_number(crl) == number_before + 1
    entry = crl.get_revoked_certificate_by_serial_number(first.serial)
    assert entry is not None
    assert (
        entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.superseded
    )
    assert crl.get_revoked_certificate_by_serial_number(second.serial) is None
    assert [i.serial for i in pki.list()] == [second.serial]


@pytest.mark.parametrize(("owner", "intruder"), [(Role.GATEWAY, Role.DEVICE), (Role.DEVICE, Role.GATEWAY)])
def test_one_name_one_role(pki: Pki, owner: Role, intruder: Role) -> None:
    pki.issue(owner, "gw-1")
    for force in (False, True):
        with pytest.raises(IdentityExists, match="only one role"):
            pki.issue(intruder, "gw-1", force=force)
    pki.revoke(owner, "gw-1")
    with pytest.raises(IdentityExists):  # revocation does not free the name for another role
        pki.issue(intruder, "gw-1")
    assert not (pki.directory / "issued" / intruder.value / "gw-1").exists()


def test_names_differing_only_in_case_clash(pki: Pki) -> None:
    pki.issue(Role.GATEWAY, "gw-1")
    with pytest.raises(IdentityExists, match="letter case"):
        pki.issue(Role.GATEWAY, "GW-1")
    with pytest.raises(IdentityExists):
        pki.issue(Role.DEVICE, "Gw-1")


def test_issue_validates_san_values_and_days(pki: Pki) -> None:
    with pytest.raises(InvalidOption, match="IP"):
        pki.issue(Role.SERVER, "s", ip_addresses=["300.1.1.1"])
    with pytest.raises(InvalidOption, match="DNS"):
        pki.issue(Role.SERVER, "s", dns_names=["bad_host"])
    with pytest.raises(InvalidOption):
        pki.issue(Role.SERVER, "s", days=0)
    with pytest.raises(InvalidOption, match="outlive the issuing CA"):
        pki.issue(Role.SERVER, "s", days=2000)
    with pytest.raises(InvalidOption, match="role"):
        pki.issue("admin", "s")  # type: ignore[arg-type]
    assert pki.list() == []


# --- names -------------------------------------------------------------------------------------


@given(st.from_regex(NAME_PATTERN, fullmatch=True))
def test_names_matching_the_rule_are_accepted(name: str) -> None:
    assert validate_name(name) == name


@given(st.text(max_size=80).filter(lambda s: re.fullmatch(NAME_PATTERN, s) is None))
def test_names_not_matching_the_rule_are_rejected(name: str) -> None:
    with pytest.raises(InvalidName):
        validate_name(name)


@pytest.fixture(scope="module")
def shared_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.init(tmp_path_factory.mktemp("shared") / "pki")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.from_regex(NAME_PATTERN, fullmatch=True))
def test_any_valid_name_can_be_issued(shared_pki: Pki, name: str) -> None:
    # force: hypothesis may replay a name. A case variant of an earlier name is refused by design.
    taken = {info.name for info in shared_pki.list()}
    if any(other.casefold() == name.casefold() and other != name for other in taken):
        with pytest.raises(IdentityExists, match="letter case"):
            shared_pki.issue(Role.DEVICE, name, force=True)
        return
    identity = shared_pki.issue(Role.DEVICE, name, force=True)
    cert = load_cert(identity.cert_path)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
    assert identity.cert_path.parent.name == name


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_rejected_everywhere(pki: Pki, name: str) -> None:
    with pytest.raises(InvalidName, match="1-64 ASCII"):
        pki.issue(Role.DEVICE, name)
    with pytest.raises(InvalidName):
        pki.identity(Role.DEVICE, name)
    with pytest.raises(InvalidName):
        pki.revoke(Role.DEVICE, name)
    assert pki.list() == []


def test_name_of_64_characters_is_fine(pki: Pki) -> None:
    assert pki.issue(Role.DEVICE, "a" * 64).name == "a" * 64


# --- revocation and CRL ------------------------------------------------------------------------


def test_initial_crl_is_empty_and_signed_by_issuing_ca(pki: Pki) -> None:
    crl = load_crl(pki)
    assert len(crl) == 0
    assert crl_number(crl) == 1
    assert crl.issuer == load_cert(pki.issuing_cert_path).subject
    assert crl.is_signature_valid(load_cert(pki.issuing_cert_path).public_key())  # type: ignore[arg-type]
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - crl.last_update_utc == timedelta(days=7)


def test_revoke_lists_serial_with_reason(pki: Pki) -> None:
    victim = pki.issue(Role.DEVICE, "d1")
    bystander = pki.issue(Role.DEVICE, "d2")
    before = crl_number(load_crl(pki))
    pki.revoke(Role.DEVICE, "d1", reason="key_compromise")

    crl = load_crl(pki)
    issuing, root = load_cert(pki.issuing_cert_path), load_cert(pki.root_cert_path)
    assert crl.is_signature_valid(issuing.public_key())  # type: ignore[arg-type]
    assert not crl.is_signature_valid(root.public_key())  # type: ignore[arg-type]
    assert crl_number(crl) == before + 1
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert (
        aki.key_identifier
        == issuing.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    )
    entry = crl.get_revoked_certificate_by_serial_number(victim.serial)
    assert entry is not None
    assert (
        entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        == x509.ReasonFlags.key_compromise
    )
    assert crl.get_revoked_certificate_by_serial_number(bystander.serial) is None

    info = pki.info(Role.DEVICE, "d1")
    assert info.revoked_at is not None
    assert info.revocation_reason == "key_compromise"
    assert abs(info.revoked_at - entry.revocation_date_utc) < timedelta(seconds=1)
    assert pki.crl_info().revoked_serials == (victim.serial,)


def test_revoke_unspecified_omits_reason_code(pki: Pki) -> None:
    identity = pki.issue(Role.SERVICE, "ingest")
    pki.revoke(Role.SERVICE, "ingest")
    entry = load_crl(pki).get_revoked_certificate_by_serial_number(identity.serial)
    assert entry is not None
    with pytest.raises(x509.ExtensionNotFound):  # RFC 5280 5.3.1: absent rather than "unspecified"
        entry.extensions.get_extension_for_class(x509.CRLReason)
    assert pki.info(Role.SERVICE, "ingest").revocation_reason == "unspecified"


def test_revoke_errors(pki: Pki) -> None:
    pki.issue(Role.DEVICE, "d1")
    with pytest.raises(InvalidOption, match="key_compromise"):
        pki.revoke(Role.DEVICE, "d1", reason="bored")
    with pytest.raises(UnknownIdentity):
        pki.revoke(Role.DEVICE, "d2")
    with pytest.raises(UnknownIdentity):
        pki.revoke(Role.GATEWAY, "d1")
    pki.revoke(Role.DEVICE, "d1", reason="cessation_of_operation")
    number = crl_number(load_crl(pki))
    with pytest.raises(AlreadyRevoked):
        pki.revoke(Role.DEVICE, "d1")
    assert crl_number(load_crl(pki)) == number


def test_revoked_identity_can_be_reissued_without_force(pki: Pki) -> None:
    old = pki.issue(Role.DEVICE, "d1")
    pki.revoke(Role.DEVICE, "d1", reason="key_compromise")
    new = pki.issue(Role.DEVICE, "d1")
    crl = load_crl(pki)
    assert crl.get_revoked_certificate_by_serial_number(old.serial) is not None
    assert crl.get_revoked_certificate_by_serial_number(new.serial) is None
    assert pki.info(Role.DEVICE, "d1").revoked_at is None


def test_write_crl_bumps_number_and_uses_days(pki: Pki) -> None:
    numbers = []
    for days in (1, 30):
        assert pki.write_crl(days=days) == pki.crl_path
        crl = load_crl(pki)
        numbers.append(crl_number(crl))
        assert crl.next_update_utc is not None
        assert crl.next_update_utc - crl.last_update_utc == timedelta(days=days)
    assert numbers == [2, 3]
    pki.issue(Role.DEVICE, "d1")
    pki.revoke(Role.DEVICE, "d1")  # re-signs with the remembered validity
    crl = load_crl(pki)
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - crl.last_update_utc == timedelta(days=30)
    assert crl_number(crl) == 4
    with pytest.raises(InvalidOption):
        pki.write_crl(days=0)


def test_revocation_reasons_are_the_documented_ones() -> None:
    assert set(REVOCATION_REASONS) == {
        "unspecified",
        "key_compromise",
        "superseded",
        "cessation_of_operation",
    }


# --- listing and expiry ------------------------------------------------------------------------


def test_list_shows_current_certificates_sorted(pki: Pki) -> None:
    pki.issue(Role.SERVER, "broker")
    pki.issue(Role.DEVICE, "d2")
    pki.issue(Role.DEVICE, "d1")
    pki.issue(Role.DEVICE, "d1", force=True)
    infos = pki.list()
    assert [(i.role, i.name) for i in infos] == [
        (Role.DEVICE, "d1"),
        (Role.DEVICE, "d2"),
        (Role.SERVER, "broker"),
    ]
    assert all(i.subject_cn == i.name for i in infos)
    cas = pki.ca_certificates()
    assert [(c.role, c.name, c.is_ca) for c in cas] == [(None, "root-ca", True), (None, "issuing-ca", True)]


def test_expiring_finds_short_lived_certificates(pki: Pki) -> None:
    pki.issue(Role.DEVICE, "short", days=10)
    pki.issue(Role.DEVICE, "long", days=365)
    assert [i.name for i in pki.expiring(within_days=30)] == ["short"]
    assert pki.expiring(within_days=5) == []
    pki.revoke(Role.DEVICE, "short")
    assert pki.expiring(within_days=30) == []  # revoked certificates need no renewal reminder
    names = {i.name for i in pki.expiring(within_days=3650)}
    assert names == {"root-ca", "issuing-ca", "long"}
    with pytest.raises(InvalidOption):
        pki.expiring(within_days=-1)


def test_expiring_includes_ca_certificates(tmp_path: Path) -> None:
    pki = Pki.init(tmp_path / "pki", root_days=20, issuing_days=15)
    assert {i.name for i in pki.expiring(within_days=16)} == {"issuing-ca"}
    assert {i.name for i in pki.expiring(within_days=30)} == {"root-ca", "issuing-ca"}


def test_concurrent_writers_do_not_lose_index_updates(pki: Pki) -> None:
    # Each issue re-reads index.json under the lock; without it most of these entries vanish.
    names = [f"d{i}" for i in range(32)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        issued = list(pool.map(lambda name: pki.issue(Role.DEVICE, name), names))
    assert sorted(i.name for i in pki.list()) == sorted(names)
    assert {i.serial for i in pki.list()} == {i.serial for i in issued}


# --- filesystem failures -----------------------------------------------------------------------


def test_unusable_directory_is_a_permission_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(PkiPermissionError, match="--dir") as caught:
        Pki.init(tmp_path / "file" / "pki")
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.exit_code == 3


def test_blocked_identity_directory_is_a_permission_error(pki: Pki) -> None:
    # A regular file where the role directory should be: fails even for root, unlike chmod.
    (pki.directory / "issued" / "device").write_text("in the way")
    with pytest.raises(PkiPermissionError) as caught:
        pki.issue(Role.DEVICE, "d1")
    assert isinstance(caught.value.__cause__, OSError)
    assert "d1" not in {
        e["name"] for e in json.loads((pki.directory / "index.json").read_text())["certificates"]
    }


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory_is_a_permission_error(tmp_path: Path) -> None:
    target = tmp_path / "ro"
    target.mkdir()
    target.chmod(0o500)
    try:
        with pytest.raises(PkiPermissionError):
            Pki.init(target / "pki")
    finally:
        target.chmod(0o700)


def test_damaged_index_is_reported(pki: Pki) -> None:
    index = pki.directory / "index.json"
    index.write_text("{not json")
    with pytest.raises(PkiCorrupt, match=r"index\.json"):
        Pki.open(pki.directory)
    # A hand-edited name must not be able to point outside the PKI directory.
    index.write_text(
        json.dumps(
            {
                "org": "x",
                "certificates": [
                    {
                        "serial": "AB",
                        "role": "device",
                        "name": "../../etc",
                        "not_after": "2030-01-01T00:00:00Z",
                    }
                ],
            }
        )
    )
    with pytest.raises(PkiCorrupt):
        Pki.open(pki.directory)


def test_missing_issuing_key_is_reported(pki: Pki) -> None:
    (pki.directory / "issuing" / "ca.key").unlink()
    with pytest.raises(PkiCorrupt, match=r"ca\.key"):
        pki.issue(Role.DEVICE, "d1")


def test_every_error_is_a_pki_error_with_guidance(pki: Pki) -> None:
    with pytest.raises(PkiError) as caught:
        pki.issue(Role.DEVICE, "a/b")
    assert caught.value.exit_code == 2
    assert "starting with a letter or digit" in caught.value.message


# --- interoperability with OpenSSL (what mosquitto uses) -----------------------------------------


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_openssl_accepts_chain_and_honours_crl(pki: Pki) -> None:
    def verify(cert: Path, purpose: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "openssl", "verify", "-x509_strict", "-purpose", purpose,
                "-CAfile", str(pki.ca_bundle_path), "-crl_check", "-CRLfile", str(pki.crl_path), str(cert),
            ],
            capture_output=True, text=True, check=False, timeout=30,
        )  # fmt: skip

    server = pki.issue(Role.SERVER, "broker", dns_names=["localhost"])
    device = pki.issue(Role.DEVICE, "d1")
    gateway = pki.issue(Role.GATEWAY, "gw-1")
    for cert, purpose in ((server.cert_path, "sslserver"), (device.cert_path, "sslclient")):
        result = verify(cert, purpose)
        assert result.returncode == 0, result.stdout + result.stderr
    for purpose in ("sslserver", "sslclient"):
        assert verify(gateway.cert_path, purpose).returncode == 0
    assert verify(device.cert_path, "sslserver").returncode != 0  # EKU enforced by OpenSSL too

    pki.revoke(Role.DEVICE, "d1", reason="key_compromise")
    result = verify(device.cert_path, "sslclient")
    assert result.returncode != 0
    assert "certificate revoked" in result.stdout + result.stderr


def test_ensure_issued_enrols_only_the_missing_in_one_index_write(pki: Pki) -> None:
    pki.issue(Role.DEVICE, "fleet-0")
    calls: list[int] = []
    issued = pki.ensure_issued(Role.DEVICE, [f"fleet-{i}" for i in range(5)], progress=calls.append)
    assert issued == [f"fleet-{i}" for i in range(1, 5)]
    assert calls == [1, 2, 3, 4]
    for i in range(5):
        identity = pki.identity(Role.DEVICE, f"fleet-{i}")
        assert stat.S_IMODE(identity.key_path.stat().st_mode) == 0o600
    assert pki.ensure_issued(Role.DEVICE, ["fleet-1", "fleet-4"]) == []
    with pytest.raises(IdentityExists):
        pki.ensure_issued(Role.GATEWAY, ["fleet-2"])  # a name holds one role only
