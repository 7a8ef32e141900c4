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
"""

from __future__ import annotations

import builtins
import ipaddress
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

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
    "REVOCATION_REASONS",
    "CertificateInfo",
    "CrlInfo",
    "IssuedIdentity",
    "Pki",
    "Role",
    "validate_name",
]

REVOCATION_REASONS: tuple[str, ...] = tuple(crl_mod.REVOCATION_REASONS)


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
        days: int = 397,
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
    ) -> tuple[x509.Certificate, bool]:
        """Issue one certificate into ``index`` (caller holds the lock and saves the index).

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
        key = issue_mod.new_key()
        cert = issue_mod.build_leaf(
            key.public_key(),
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
        store.write_files(
            [
                (layout.key(role.value, name), issue_mod.key_pem(key), store.KEY_MODE),
                (layout.cert(role.value, name), leaf_pem, store.CERT_MODE),
                (
                    layout.chain(role.value, name),
                    leaf_pem + issue_mod.cert_pem(issuer_cert),
                    store.CERT_MODE,
                ),
            ]
        )
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
