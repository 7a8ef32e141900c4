"""Enrol this gateway: create its keys here, get its certificate signed, install it beside them.

Both private keys are created on the gateway and never leave it: the CA (the cloud's, or an offline
one run with ``coldtrace certs``) only ever sees the CSR. Files in the enrollment directory (0700)::

    gateway.key        ECDSA P-256 TLS key, PKCS8 PEM, 0600    agent.toml [cloud] key_file
    gateway.csr        CSR, CN = gateway id, 0644
    gateway.pem        the issued certificate, 0644
    gateway-chain.pem  certificate + issuing CA, 0644           agent.toml [cloud] cert_file
    ca-bundle.pem      issuing + root CA, 0644                  agent.toml [cloud] ca_file
    signing.key        Ed25519 batch-signing key, PKCS8 PEM, 0600   agent.toml signing_key
    signing.pub        its public key, PEM, 0644

The names are the ones ``coldtrace gateway install`` writes into agent.toml. Every file takes the
owner and group of the directory: ``coldtrace gateway install`` creates ``/etc/coldtrace/tls`` for the
agent's user, so an enrollment run as root there leaves keys only the agent's user can read (the
agent refuses a key its group or others may read). Keys found in the directory are reused, so an
interrupted enrollment resumes with the same keys (the cloud accepts the same submission twice);
``force`` replaces them. Every file is written atomically with its final mode
(:func:`certs.store.write_files`), so a key is never readable by others, not even briefly.

The cloud client uses the standard library only (a gateway install has no HTTP client library). It
refuses redirects (the token must not follow one to another host) and plain HTTP beyond loopback.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import ssl
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from certs import store
from certs.model import validate_name
from certs.pki import Pki, Role
from coldtrace.contract.batch import key_id_of
from coldtrace.exitcodes import ExitCode

__all__ = [
    "CloudEnrollment",
    "CloudUnreachable",
    "Delivered",
    "EnrollError",
    "EnrollRefused",
    "EnrollUsage",
    "GatewayFiles",
    "LocalKeys",
    "install_certificate",
    "prepare",
    "sign_offline",
]

MAX_RESPONSE_BYTES = 1024 * 1024  # a chain and a bundle are a few KiB
_PRIVATE_BITS = stat.S_IRWXG | stat.S_IRWXO


class EnrollError(Exception):
    """An enrollment step failed; the message says what to do. ``exit_code`` is the CLI's status."""

    exit_code: ClassVar[int] = ExitCode.FAILURE


class EnrollUsage(EnrollError):
    """The command line or the directory's state forbids the step (already enrolled, bad URL)."""

    exit_code: ClassVar[int] = ExitCode.USAGE


class EnrollRefused(EnrollError):
    """The cloud answered with an error status; ``status`` is the HTTP status."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"the cloud refused ({status}): {detail}")
        self.status = status


class CloudUnreachable(EnrollError):
    """No answer from the cloud (network, DNS, TLS, timeout): worth retrying."""


@dataclass(frozen=True, slots=True)
class GatewayFiles:
    """Where the enrollment keeps a gateway's keys and certificates (see the module docstring)."""

    directory: Path

    @property
    def tls_key(self) -> Path:
        """The TLS private key."""
        return self.directory / "gateway.key"

    @property
    def csr(self) -> Path:
        """The certificate request."""
        return self.directory / "gateway.csr"

    @property
    def cert(self) -> Path:
        """The issued certificate."""
        return self.directory / "gateway.pem"

    @property
    def chain(self) -> Path:
        """Certificate + issuing CA: what the agent presents."""
        return self.directory / "gateway-chain.pem"

    @property
    def ca_bundle(self) -> Path:
        """Issuing + root CA: what the agent trusts brokers by."""
        return self.directory / "ca-bundle.pem"

    @property
    def signing_key(self) -> Path:
        """The Ed25519 batch-signing private key."""
        return self.directory / "signing.key"

    @property
    def signing_pub(self) -> Path:
        """The batch-signing public key (PEM)."""
        return self.directory / "signing.pub"


@dataclass(frozen=True, slots=True)
class LocalKeys:
    """What the gateway submits, and the fingerprints an admin compares before approving."""

    gateway_id: str
    csr_pem: bytes
    signing_public_raw: bytes
    tls_key_sha256: str
    signing_key_id: str
    created: bool  # False when existing keys were reused
    tls_public_key: ec.EllipticCurvePublicKey = field(repr=False)


def _private_key_pem(key: ec.EllipticCurvePrivateKey | Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_private(path: Path) -> ec.EllipticCurvePrivateKey | Ed25519PrivateKey:
    """An existing key of ours; refused when others may read it or it is not what we write."""
    with store.filesystem("read", path):
        mode = path.stat().st_mode
    if mode & _PRIVATE_BITS:
        raise EnrollUsage(
            f"{path} is accessible to other users; run: chmod 600 {path} (or enrol with --force)"
        )
    try:
        key = serialization.load_pem_private_key(store.read_bytes(path), password=None)
    except (ValueError, TypeError) as exc:
        # Only the path is named: nothing derived from the key's contents is ever shown.
        raise EnrollUsage(
            f"{path} is not an unencrypted PEM private key; remove it or enrol with --force"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | Ed25519PrivateKey):
        raise EnrollUsage(f"{path} holds an unexpected key type; remove it or enrol with --force")
    return key


def _give_to_directory_owner(directory: Path, paths: list[Path]) -> None:
    """As root, hand ``paths`` to the owner and group of ``directory`` (the agent's, after install).

    Without root nothing changes hands: the files already belong to whoever runs the enrollment.
    """
    if os.geteuid() != 0:
        return
    with store.filesystem("inspect", directory):
        owner = directory.stat()
    for path in paths:
        with store.filesystem("change the owner of", path):
            os.chown(path, owner.st_uid, owner.st_gid)


def _tls_key(files: GatewayFiles, *, force: bool) -> tuple[ec.EllipticCurvePrivateKey, bool]:
    if not force and files.tls_key.exists():
        key = _load_private(files.tls_key)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise EnrollUsage(f"{files.tls_key} is not an ECDSA P-256 key; enrol with --force to replace it")
        return key, False
    return ec.generate_private_key(ec.SECP256R1()), True


def _signing_key(files: GatewayFiles, *, force: bool) -> tuple[Ed25519PrivateKey, bool]:
    if not force and files.signing_key.exists():
        key = _load_private(files.signing_key)
        if not isinstance(key, Ed25519PrivateKey):
            raise EnrollUsage(f"{files.signing_key} is not an Ed25519 key; enrol with --force to replace it")
        return key, False
    return Ed25519PrivateKey.generate(), True


def prepare(files: GatewayFiles, gateway_id: str, *, force: bool = False) -> LocalKeys:
    """Create (or reuse) the TLS and signing keys and write a CSR with CN = ``gateway_id``.

    EnrollUsage when the directory already holds an installed certificate and ``force`` is false:
    enrolling again means new keys, and the running agent uses the old ones.
    """
    validate_name(gateway_id)
    if not force and files.chain.exists():
        raise EnrollUsage(
            f"{files.directory} already holds an enrolled identity ({files.chain.name}); pass --force to "
            "create new keys and enrol again, or use another --dir to rotate without downtime"
        )
    store.ensure_dir(files.directory, store.KEY_DIR_MODE)
    tls_key, tls_new = _tls_key(files, force=force)
    signing_key, signing_new = _signing_key(files, force=force)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gateway_id)])
    csr_pem = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .sign(tls_key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    signing_public = signing_key.public_key()
    writes: list[tuple[Path, bytes, int]] = [(files.csr, csr_pem, store.CERT_MODE)]
    if tls_new:
        writes.append((files.tls_key, _private_key_pem(tls_key), store.KEY_MODE))
    if signing_new:
        writes.append((files.signing_key, _private_key_pem(signing_key), store.KEY_MODE))
        public_pem = signing_public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        writes.append((files.signing_pub, public_pem, store.CERT_MODE))
    store.write_files(writes)
    _give_to_directory_owner(files.directory, [path for path, _, _ in writes])
    spki = tls_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return LocalKeys(
        gateway_id=gateway_id,
        csr_pem=csr_pem,
        signing_public_raw=signing_public.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        ),
        tls_key_sha256=hashlib.sha256(spki).hexdigest(),
        signing_key_id=key_id_of(signing_public).hex(),
        created=tls_new or signing_new,
        tls_public_key=tls_key.public_key(),
    )


def install_certificate(
    files: GatewayFiles, keys: LocalKeys, *, chain_pem: bytes, ca_bundle_pem: bytes
) -> None:
    """Check the chain is for our key and name and verifies against the bundle, then install the three.

    Nothing is written when a check fails, so a wrong answer cannot replace a working identity.
    """
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
        bundle = x509.load_pem_x509_certificates(ca_bundle_pem)
    except ValueError as exc:
        raise EnrollError("the certificate or CA bundle received is not PEM; nothing was installed") from exc
    leaf, intermediates = chain[0], chain[1:]
    if leaf.public_key() != keys.tls_public_key:
        raise EnrollError(
            f"the certificate received is not for the key in {files.tls_key}; nothing was installed"
        )
    common_names = [a.value for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if common_names != [keys.gateway_id]:
        raise EnrollError(
            f"the certificate received is not for gateway {keys.gateway_id}; nothing was installed"
        )
    roots = [cert for cert in bundle if cert.subject == cert.issuer]
    try:
        PolicyBuilder().store(Store(roots)).build_client_verifier().verify(leaf, intermediates)
    except (VerificationError, ValueError) as exc:
        raise EnrollError(
            f"the certificate does not verify against the CA bundle ({exc}); nothing was installed"
        ) from exc
    store.write_files(
        [
            (files.cert, leaf.public_bytes(serialization.Encoding.PEM), store.CERT_MODE),
            (files.chain, chain_pem, store.CERT_MODE),
            (files.ca_bundle, ca_bundle_pem, store.CERT_MODE),
        ]
    )
    _give_to_directory_owner(files.directory, [files.cert, files.chain, files.ca_bundle])


def sign_offline(files: GatewayFiles, keys: LocalKeys, *, pki_dir: Path, force: bool = False) -> None:
    """Sign the CSR with the PKI in ``pki_dir`` (a site without the cloud) and install the result.

    ``force`` supersedes a live certificate of the gateway in that PKI. PkiError propagates.
    """
    signed = Pki.open(pki_dir).sign_csr(keys.csr_pem, role=Role.GATEWAY, name=keys.gateway_id, force=force)
    install_certificate(files, keys, chain_pem=signed.chain_pem, ca_bundle_pem=signed.ca_bundle_pem)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Turn every redirect into an error: the bearer token must not follow one to another host."""

    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        """Follow nothing."""
        return


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivered:
    """The chain and CA bundle the cloud handed out."""

    chain_pem: bytes
    ca_bundle_pem: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class CloudEnrollment:
    """One enrollment on the cloud API, authenticated by its one-time token."""

    base_url: str
    enrollment_id: int
    token: str = field(repr=False)
    ca_file: Path | None = None
    """Trust for the API's HTTPS certificate; None trusts the system's CAs."""
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if parts.scheme not in {"https", "http"} or not parts.hostname:
            raise EnrollUsage(f"{self.base_url!r} is not a cloud URL like https://cloud.example.com")
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            raise EnrollUsage(
                f"{self.base_url} is plain HTTP beyond this host: the token would cross the network in "
                "clear; use https://"
            )

    def _url(self, suffix: str) -> str:
        return f"{self.base_url.rstrip('/')}/v1/enrollments/{self.enrollment_id}{suffix}"

    def _request(
        self, method: str, suffix: str, body: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        try:
            context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise EnrollUsage(f"cannot use --ca-file {self.ca_file}: {exc}") from exc
        opener = urllib.request.build_opener(_NoRedirect(), urllib.request.HTTPSHandler(context=context))
        request = urllib.request.Request(  # noqa: S310 - the scheme was checked in __post_init__
            self._url(suffix),
            data=None if body is None else orjson.dumps(body),
            method=method,
            headers={
                "Authorization": f"Bearer {self.token}",
                "Accept": "application/json",
                "Content-Type": "application/json",
            },
        )
        try:
            with opener.open(request, timeout=self.timeout_s) as response:
                return response.status, _json(response.read(MAX_RESPONSE_BYTES))
        except urllib.error.HTTPError as exc:
            detail = _json(exc.read(MAX_RESPONSE_BYTES)).get("detail") or exc.reason
            raise EnrollRefused(exc.code, str(detail)) from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CloudUnreachable(f"no answer from {self.base_url}: {reason}") from exc

    def submit(self, keys: LocalKeys) -> dict[str, Any]:
        """Send the CSR and the signing public key; returns the cloud's record of them."""
        _, answer = self._request(
            "POST",
            "/csr",
            {
                "csr_pem": keys.csr_pem.decode(),
                "signing_public_key": base64.b64encode(keys.signing_public_raw).decode(),
            },
        )
        return answer

    def fetch(self) -> Delivered | None:
        """The chain and CA bundle once approved (this spends the token); None while still pending."""
        status, answer = self._request("GET", "/certificate")
        if status == HTTPStatus.ACCEPTED:  # not approved yet
            return None
        try:
            return Delivered(
                chain_pem=str(answer["chain_pem"]).encode(),
                ca_bundle_pem=str(answer["ca_bundle_pem"]).encode(),
            )
        except KeyError as exc:
            raise EnrollError(
                f"the cloud's answer lacks {exc}; is {self.base_url} a coldtrace cloud?"
            ) from exc

    def wait(
        self,
        *,
        timeout_s: float,
        poll_interval_s: float,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> Delivered:
        """Ask for the certificate until an admin approved it or ``timeout_s`` passed.

        Approval is a human step with no push channel to the gateway, so this polls. Network errors and
        5xx answers are retried until the deadline; any other refusal (rejected, expired) ends it.
        """
        deadline = clock() + timeout_s
        while True:
            try:
                delivered = self.fetch()
            except EnrollRefused as exc:
                if exc.status < HTTPStatus.INTERNAL_SERVER_ERROR:  # 5xx is the server's trouble: retry
                    raise
                delivered = None
            except CloudUnreachable:
                delivered = None
            if delivered is not None:
                return delivered
            left = deadline - clock()
            if left <= 0:
                raise EnrollError(
                    f"enrollment {self.enrollment_id} was not approved within {timeout_s:g} s; run the same "
                    "command again later (the keys are kept and the token stays valid until it expires)"
                )
            sleep(min(poll_interval_s, left))


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
