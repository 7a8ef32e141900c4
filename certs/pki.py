"""The coldtrace PKI: a two-level ECDSA P-256 CA that issues TLS identities to brokers, gateways,
devices and cloud services, revokes them and publishes a CRL.

Directory layout (``<dir>`` is ``--dir``, by default ``./certs/dev``)::

    <dir>/
      index.json               serials, role, name, not_after, revoked_at, reason, crl_number (0644)
      ca-bundle.pem            issuing CA + root CA: what peers trust (mosquitto ``cafile``)
      crl.pem                  CRL signed by the issuing CA (mosquitto ``crlfile``)
      .lock                    advisory lock serialising concurrent writers
      root/          (0700)    ca.pem (root CA cert), ca.key (root CA key, 0600)
      issuing/       (0700)    ca.pem (issuing CA cert), ca.key (issuing CA key, 0600)
      issued/<role>/<name>/ (0700)
                               cert.pem  leaf certificate
                               key.pem   private key, PKCS8 PEM, unencrypted, 0600
                               chain.pem leaf + issuing CA (what the TLS peer presents)

Each identity gets its own directory because ``<name>.chain.pem`` next to ``<name>.pem`` would let
the legal name ``x.chain`` collide with the chain file of ``x``. Certificates are 0644, keys 0600,
and every file is written atomically (temp file created with O_EXCL and its final mode, then
``os.replace``). A name belongs to one role forever (compared case-insensitively), because the broker
maps the certificate CN to the MQTT username and its ACLs.

:meth:`Pki.sign_csr` certifies a key the CA never sees (a gateway enrolling itself): the identity
directory then holds ``cert.pem`` and ``chain.pem`` but no ``key.pem``.
"""

from __future__ import annotations

import builtins
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certs import crl as crl_mod
from certs import issue as issue_mod
from certs import store
from certs.certfiles import read_cert, read_key, summarise
from certs.errors import AlreadyRevoked, InvalidOption, PkiCorrupt, PkiExists, PkiNotInitialized
from certs.index import Index, IndexEntry, load_index, save_index
from certs.model import (
    CertificateInfo,
    CrlInfo,
    IssuedIdentity,
    Role,
    check_days,
    check_org,
    coerce_role,
    identity_uri,
    serial_hex,
    validate_name,
)

__all__ = [
    "DEFAULT_LEAF_DAYS",
    "REVOCATION_REASONS",
    "CertificateInfo",
    "CrlInfo",
    "IssuedIdentity",
    "Pki",
    "Role",
    "SignedCertificate",
    "check_csr",
    "validate_name",
]

REVOCATION_REASONS: tuple[str, ...] = tuple(crl_mod.REVOCATION_REASONS)
#: Validity of a leaf certificate unless the caller says otherwise: 397 days, the CA/B Forum maximum
#: for TLS server certificates, which a gateway also is (it hosts the warehouse broker).
DEFAULT_LEAF_DAYS = 397
# A CN longer than this is quoted only in part: the CSR comes from outside and messages reach logs.
_QUOTE_MAX = 80


@dataclass(frozen=True, slots=True)
class SignedCertificate:
    """A certificate issued for a CSR; the private key stayed with the requester."""

    role: Role
    name: str
    cert_pem: bytes  # the leaf
    chain_pem: bytes  # leaf + issuing CA: what the holder presents in TLS
    ca_bundle_pem: bytes  # issuing + root CA: what the holder trusts its peers by
    cert_path: Path
    chain_path: Path
    serial: int
    not_after: datetime  # tz-aware UTC
    uri: str  # "urn:coldtrace:<role>:<name>"


def check_csr(csr_pem: bytes, *, name: str) -> ec.EllipticCurvePublicKey:
    """Check that a PEM CSR may be signed for ``name`` and return the key it asks to certify.

    Refuses (InvalidOption) anything but an ECDSA P-256 key (the only algorithm of this PKI), a CSR
    whose self-signature does not verify (no proof that the requester holds the private key), and a
    subject without exactly one CN equal to ``name``. Everything else a CSR may ask for (extensions,
    SANs, other subject attributes) is ignored: the CA alone decides what a certificate says.
    """
    validate_name(name)
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise InvalidOption(
            "the certificate request is not a PEM CSR (-----BEGIN CERTIFICATE REQUEST-----)"
        ) from exc
    try:
        key = csr.public_key()
        signature_valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InvalidOption(
            "the CSR's key or signature algorithm is not supported: use an ECDSA P-256 key"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise InvalidOption("the CSR's key is not ECDSA P-256, the only key type this PKI certifies")
    if not signature_valid:
        raise InvalidOption(
            "the CSR's signature does not verify: it was altered or not signed with its own key; "
            "create the CSR again"
        )
    common_names = [attr.value for attr in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if common_names != [name]:
        shown = ", ".join(repr(str(cn)[:_QUOTE_MAX]) for cn in common_names) or "none"
        raise InvalidOption(
            f"the CSR's subject CN ({shown}) must be exactly {name!r}, the name being certified; "
            "create the CSR again with that CN"
        )
    return key


def _now() -> datetime:
    # X.509 stores whole seconds; dropping microseconds keeps index.json and certificates identical.
    return datetime.now(UTC).replace(microsecond=0)


class Pki:
    """A PKI directory. Create one with :meth:`init`, use an existing one with :meth:`open`."""

    __slots__ = ("_layout",)

    def __init__(self, layout: store.Layout) -> None:
        """Internal: use :meth:`init` or :meth:`open`."""
        self._layout = layout

    @classmethod
    def init(
        cls,
        directory: Path,
        *,
        org: str = "coldtrace",
        force: bool = False,
        root_days: int = 3650,
        issuing_days: int = 1825,
        crl_days: int = 7,
    ) -> Pki:
        """Create root + issuing CA, the CA bundle, an empty CRL and ``index.json`` in ``directory``.

        Refuses (PkiExists) if a PKI is already there unless ``force``; forcing deletes the old CAs
        and every issued identity, which makes all previously issued certificates untrusted.
        """
        check_org(org)
        check_days(root_days, "root_days")
        check_days(issuing_days, "issuing_days")
        check_days(crl_days, "crl_days")
        if issuing_days > root_days:
            raise InvalidOption(f"issuing_days ({issuing_days}) must not exceed root_days ({root_days})")
        layout = store.Layout(Path(directory))
        store.ensure_dir(layout.directory)
        with store.locked(layout):
            with store.filesystem("inspect", layout.directory):
                exists = any(p.exists() for p in (layout.index, layout.root_cert, layout.root_key))
            if exists and not force:
                raise PkiExists(
                    f"{layout.directory} already holds a PKI; refusing to overwrite its CA. Pass --force to "
                    "replace it (every certificate it issued stops being trusted) or choose another --dir"
                )
            if exists:
                store.remove_pki(layout)
            now = _now()
            root_key = issue_mod.new_key()
            root_cert = issue_mod.build_root_ca(root_key, org=org, days=root_days, now=now)
            issuing_key = issue_mod.new_key()
            issuing_cert = issue_mod.build_issuing_ca(
                issuing_key, root_cert=root_cert, root_key=root_key, org=org, days=issuing_days, now=now
            )
            for directory_ in (layout.root_dir, layout.issuing_dir):
                store.ensure_dir(directory_, store.KEY_DIR_MODE)
            store.ensure_dir(layout.issued_dir, store.PUBLIC_DIR_MODE)
            root_pem, issuing_pem = issue_mod.cert_pem(root_cert), issue_mod.cert_pem(issuing_cert)
            store.write_files(
                [
                    (layout.root_key, issue_mod.key_pem(root_key), store.KEY_MODE),
                    (layout.root_cert, root_pem, store.CERT_MODE),
                    (layout.issuing_key, issue_mod.key_pem(issuing_key), store.KEY_MODE),
                    (layout.issuing_cert, issuing_pem, store.CERT_MODE),
                    (layout.ca_bundle, issuing_pem + root_pem, store.CERT_MODE),
                ]
            )
            pki = cls(layout)
            pki._write_crl_locked(Index(org=org, crl_days=crl_days), crl_days)
        return pki

    @classmethod
    def open(cls, directory: Path) -> Pki:
        """Open an initialised PKI directory (PkiNotInitialized if there is none)."""
        layout = store.Layout(Path(directory))
        with store.filesystem("inspect", layout.directory):
            initialised = layout.index.is_file()
        if not initialised:
            raise PkiNotInitialized(
                f"no PKI in {layout.directory}: run `coldtrace certs init --dir {layout.directory}` first"
            )
        load_index(layout)  # fail now, not halfway through a command, if it is damaged
        return cls(layout)

    @property
    def directory(self) -> Path:
        """The PKI directory."""
        return self._layout.directory

    @property
    def ca_bundle_path(self) -> Path:
        """Issuing CA + root CA PEM: what peers use to verify each other (mosquitto ``cafile``)."""
        return self._layout.ca_bundle

    @property
    def root_cert_path(self) -> Path:
        """Root CA certificate PEM."""
        return self._layout.root_cert

    @property
    def issuing_cert_path(self) -> Path:
        """Issuing CA certificate PEM."""
        return self._layout.issuing_cert

    @property
    def crl_path(self) -> Path:
        """PEM CRL signed by the issuing CA (mosquitto ``crlfile``)."""
        return self._layout.crl

    def issue(
        self,
        role: Role,
        name: str,
        *,
        days: int = DEFAULT_LEAF_DAYS,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        force: bool = False,
    ) -> IssuedIdentity:
        """Issue a key and certificate for ``role``/``name``.

        IdentityExists if the name belongs to another role, or this role+name already has an
        unrevoked certificate and ``force`` is false. With ``force`` the old certificate is revoked
        as ``superseded`` and the CRL is rewritten.
        """
        role = coerce_role(role)
        validate_name(name)
        check_days(days, "days")
        dns = issue_mod.parse_dns_names(dns_names)
        ips = issue_mod.parse_ip_addresses(ip_addresses)
        with store.locked(self._layout):
            index = load_index(self._layout)
            cert, superseded = self._issue_locked(index, role, name, days=days, dns=dns, ips=ips, force=force)
            if superseded:
                self._write_crl_locked(index, index.crl_days)
            else:
                save_index(self._layout, index)
        return self._identity(role, name, cert.serial_number, cert.not_valid_after_utc)

    def sign_csr(
        self,
        csr_pem: bytes,
        *,
        role: Role,
        name: str,
        days: int | None = None,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        force: bool = False,
    ) -> SignedCertificate:
        """Certify the key of a PEM CSR as ``role``/``name``; the private key never reaches the CA.

        The CSR must pass :func:`check_csr` (P-256 key, valid self-signature, CN == ``name``). The
        certificate has exactly the profile :meth:`issue` gives (CN, SAN URI, key usages, EKU of the
        role); DNS/IP SANs come from the arguments, never from the CSR. ``days`` defaults to
        :data:`DEFAULT_LEAF_DAYS`. Name ownership, ``force`` and the index behave as in :meth:`issue`;
        a ``key.pem`` left by an earlier :meth:`issue` of the name is deleted, as it no longer matches.
        """
        role = coerce_role(role)
        public_key = check_csr(csr_pem, name=name)
        days = check_days(DEFAULT_LEAF_DAYS if days is None else days, "days")
        dns = issue_mod.parse_dns_names(dns_names)
        ips = issue_mod.parse_ip_addresses(ip_addresses)
        layout = self._layout
        with store.locked(layout):
            index = load_index(layout)
            cert, superseded = self._issue_locked(
                index, role, name, days=days, dns=dns, ips=ips, force=force, public_key=public_key
            )
            if superseded:
                self._write_crl_locked(index, index.crl_days)
            else:
                save_index(layout, index)
            chain_pem = store.read_bytes(layout.chain(role.value, name))
            ca_bundle_pem = store.read_bytes(layout.ca_bundle)
        return SignedCertificate(
            role=role,
            name=name,
            cert_pem=issue_mod.cert_pem(cert),
            chain_pem=chain_pem,
            ca_bundle_pem=ca_bundle_pem,
            cert_path=layout.cert(role.value, name),
            chain_path=layout.chain(role.value, name),
            serial=cert.serial_number,
            not_after=cert.not_valid_after_utc,
            uri=identity_uri(role, name),
        )

    def ensure_issued(
        self,
        role: Role,
        names: Sequence[str],
        *,
        days: int = 397,
        progress: Callable[[int], None] | None = None,
    ) -> list[str]:
        """Issue certificates for those of ``names`` that have none yet; returns the names issued.

        One lock and one index write for the lot, so a fleet of thousands is enrolled in seconds
        (issuing one by one rewrites the index each time). ``progress`` is called with the number
        issued so far.
        """
        role = coerce_role(role)
        for name in names:
            validate_name(name)
        check_days(days, "days")
        issued: list[str] = []
        with store.locked(self._layout):
            index = load_index(self._layout)
            have = {e.name for e in index.certificates if e.role == role and e.current}
            for name in names:
                if name in have:
                    continue
                self._issue_locked(index, role, name, days=days, dns=(), ips=(), force=False)
                have.add(name)
                issued.append(name)
                if progress is not None:
                    progress(len(issued))
            if issued:
                save_index(self._layout, index)
        return issued

    def _issue_locked(
        self,
        index: Index,
        role: Role,
        name: str,
        *,
        days: int,
        dns: Sequence[str],
        ips: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address],
        force: bool,
        public_key: ec.EllipticCurvePublicKey | None = None,
    ) -> tuple[x509.Certificate, bool]:
        """Issue one certificate into ``index`` (caller holds the lock and saves the index).

        With ``public_key`` (a checked CSR's) that key is certified and no key file is written;
        otherwise a fresh key is generated and stored beside the certificate.
        Returns the certificate and whether it superseded a live one (the CRL must be rewritten).
        """
        layout = self._layout
        previous = index.claim(role, name, force=force)
        issuer_cert, issuer_key = self._issuing_ca()
        now = _now()
        if now + timedelta(days=days) > issuer_cert.not_valid_after_utc:
            left = (issuer_cert.not_valid_after_utc - now).days
            raise InvalidOption(
                f"a {days}-day certificate would outlive the issuing CA (expires "
                f"{issuer_cert.not_valid_after_utc:%Y-%m-%d}); use --days {left} or less"
            )
        key: ec.EllipticCurvePrivateKey | None = None
        if public_key is None:
            key = issue_mod.new_key()
            public_key = key.public_key()
        cert = issue_mod.build_leaf(
            public_key,
            role=role,
            name=name,
            org=index.org,
            issuer_cert=issuer_cert,
            issuer_key=issuer_key,
            dns_names=dns,
            ip_addresses=ips,
            days=days,
            now=now,
        )
        store.ensure_dir(layout.issued_dir / role.value, store.PUBLIC_DIR_MODE)
        store.ensure_dir(layout.identity_dir(role.value, name), store.KEY_DIR_MODE)
        leaf_pem = issue_mod.cert_pem(cert)
        files = [
            (layout.cert(role.value, name), leaf_pem, store.CERT_MODE),
            (layout.chain(role.value, name), leaf_pem + issue_mod.cert_pem(issuer_cert), store.CERT_MODE),
        ]
        if key is not None:
            files.insert(0, (layout.key(role.value, name), issue_mod.key_pem(key), store.KEY_MODE))
        store.write_files(files)
        if key is None:
            # The requester keeps its key; one left by an earlier `issue` would pair with the wrong cert.
            stale = layout.key(role.value, name)
            with store.filesystem("remove", stale):
                stale.unlink(missing_ok=True)
        superseded = previous is not None and previous.revoked_at is None
        if previous is not None:
            previous.current = False
            if superseded:
                previous.revoked_at, previous.reason = now, "superseded"
        index.certificates.append(
            IndexEntry(
                serial=serial_hex(cert.serial_number),
                role=role,
                name=name,
                not_after=cert.not_valid_after_utc,
            )
        )
        return cert, superseded

    def identity(self, role: Role, name: str) -> IssuedIdentity:
        """The current certificate of ``role``/``name`` (UnknownIdentity if never issued).

        A revoked identity is still returned; check :meth:`info` for ``revoked_at``.
        """
        role = coerce_role(role)
        entry = load_index(self._layout).current(role, validate_name(name))
        identity = self._identity(role, name, entry.serial_number, entry.not_after)
        with store.filesystem("inspect", identity.cert_path):
            complete = identity.cert_path.is_file() and identity.key_path.is_file()
        if not complete:
            raise PkiCorrupt(
                f"files of {role} {name} are missing under {identity.cert_path.parent}; "
                f"re-issue with `coldtrace certs issue {role} {name} --force`"
            )
        return identity

    def revoke(self, role: Role, name: str, *, reason: str = "unspecified") -> None:
        """Revoke the current certificate of ``role``/``name`` and rewrite the CRL."""
        role = coerce_role(role)
        validate_name(name)
        crl_mod.validate_reason(reason)
        with store.locked(self._layout):
            index = load_index(self._layout)
            entry = index.current(role, name)
            if entry.revoked_at is not None:
                raise AlreadyRevoked(
                    f"{role} {name} (serial {entry.serial}) was already revoked at "
                    f"{entry.revoked_at:%Y-%m-%d %H:%M} UTC ({entry.reason}); "
                    f"issue a new certificate with `coldtrace certs issue {role} {name}`"
                )
            entry.revoked_at, entry.reason = _now(), reason
            self._write_crl_locked(index, index.crl_days)

    def write_crl(self, *, days: int = 7) -> Path:
        """Re-sign the CRL with the next CRLNumber, valid for ``days``; returns its path.

        ``days`` is remembered and used when ``revoke`` or a forced re-issue rewrites the CRL.
        """
        check_days(days, "days")
        with store.locked(self._layout):
            index = load_index(self._layout)
            index.crl_days = days
            self._write_crl_locked(index, days)
        return self._layout.crl

    def crl_info(self) -> CrlInfo:
        """Number, validity window and revoked serials of the CRL on disk."""
        path = self._layout.crl
        try:
            parsed = x509.load_pem_x509_crl(store.read_bytes(path))
        except ValueError as exc:
            raise PkiCorrupt(f"{path} is not a PEM CRL; regenerate it with `coldtrace certs crl`") from exc
        return crl_mod.describe_crl(parsed, path)

    def info(self, role: Role, name: str) -> CertificateInfo:
        """Summary of the current certificate of ``role``/``name`` including its revocation state."""
        role = coerce_role(role)
        entry = load_index(self._layout).current(role, validate_name(name))
        path = self._layout.cert(role.value, name)
        return summarise(read_cert(path), path, role, name, entry)

    def ca_certificates(self) -> builtins.list[CertificateInfo]:
        """Summaries of the root and issuing CA certificates (``role`` is None)."""
        return [
            summarise(read_cert(path), path, None, name, None)
            for path, name in ((self._layout.root_cert, "root-ca"), (self._layout.issuing_cert, "issuing-ca"))
        ]

    def expiring(self, *, within_days: int) -> builtins.list[CertificateInfo]:
        """Unrevoked certificates (CA certificates included) whose not_after is within ``within_days``.

        Already expired certificates are included: they need attention even more.
        """
        if isinstance(within_days, bool) or not isinstance(within_days, int) or within_days < 0:
            raise InvalidOption(f"within_days must be a non-negative whole number, got {within_days!r}")
        cutoff = datetime.now(UTC) + timedelta(days=within_days)
        return [
            info
            for info in [*self.ca_certificates(), *self.list()]
            if info.revoked_at is None and info.not_after <= cutoff
        ]

    # --- internals -------------------------------------------------------------------------------

    def _identity(self, role: Role, name: str, serial: int, not_after: datetime) -> IssuedIdentity:
        layout = self._layout
        return IssuedIdentity(
            role=role,
            name=name,
            cert_path=layout.cert(role.value, name),
            key_path=layout.key(role.value, name),
            chain_path=layout.chain(role.value, name),
            serial=serial,
            not_after=not_after,
            uri=identity_uri(role, name),
        )

    def _issuing_ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        return read_cert(self._layout.issuing_cert), read_key(self._layout.issuing_key)

    def _write_crl_locked(self, index: Index, days: int) -> None:
        """Bump the CRL number, save the index, then write the CRL (caller holds the lock).

        The index is saved first: if we crash in between, the next CRL still lists every revocation;
        the reverse order could publish a revocation the index then forgets.
        """
        issuer_cert, issuer_key = self._issuing_ca()
        signed = crl_mod.build_crl(
            issuer_cert=issuer_cert,
            issuer_key=issuer_key,
            revoked=index.revoked(),
            number=index.crl_number + 1,
            now=_now(),
            days=days,
        )
        index.crl_number += 1
        save_index(self._layout, index)
        store.write_files([(self._layout.crl, crl_mod.crl_pem(signed), store.CERT_MODE)])

    # Defined last and annotated with builtins.list: in the class body `list` now names this method.
    def list(self) -> builtins.list[CertificateInfo]:
        """Summaries of every identity's current certificate (revoked ones included), by role and name."""
        index = load_index(self._layout)
        entries = sorted((e for e in index.certificates if e.current), key=lambda e: (e.role, e.name))
        infos = []
        for entry in entries:
            path = self._layout.cert(entry.role, entry.name)
            infos.append(summarise(read_cert(path), path, entry.role, entry.name, entry))
        return infos
