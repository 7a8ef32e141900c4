"""On-disk layout of a PKI directory, crash-safe writes and the writer lock.

This module (with :mod:`certs.index`, which reads and writes through it) is the only one that touches
the filesystem; every ``OSError`` is translated here into
:class:`~certs.errors.PkiPermissionError` (exit code 3) so callers never see a raw traceback.
See :mod:`certs.pki` for the directory layout.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from certs.errors import PkiCorrupt, PkiPermissionError

__all__ = [
    "CERT_MODE",
    "KEY_DIR_MODE",
    "KEY_MODE",
    "PUBLIC_DIR_MODE",
    "Layout",
    "ensure_dir",
    "filesystem",
    "locked",
    "read_bytes",
    "remove_pki",
    "write_files",
]

KEY_MODE = 0o600
CERT_MODE = 0o644
KEY_DIR_MODE = 0o700
PUBLIC_DIR_MODE = 0o755


@dataclass(frozen=True, slots=True)
class Layout:
    """Paths inside one PKI directory (see the layout in :mod:`certs.pki`)."""

    directory: Path

    @property
    def root_dir(self) -> Path:
        return self.directory / "root"

    @property
    def root_cert(self) -> Path:
        return self.root_dir / "ca.pem"

    @property
    def root_key(self) -> Path:
        return self.root_dir / "ca.key"

    @property
    def issuing_dir(self) -> Path:
        return self.directory / "issuing"

    @property
    def issuing_cert(self) -> Path:
        return self.issuing_dir / "ca.pem"

    @property
    def issuing_key(self) -> Path:
        return self.issuing_dir / "ca.key"

    @property
    def ca_bundle(self) -> Path:
        return self.directory / "ca-bundle.pem"

    @property
    def crl(self) -> Path:
        return self.directory / "crl.pem"

    @property
    def index(self) -> Path:
        return self.directory / "index.json"

    @property
    def lock(self) -> Path:
        return self.directory / ".lock"

    @property
    def issued_dir(self) -> Path:
        return self.directory / "issued"

    def identity_dir(self, role: str, name: str) -> Path:
        # One directory per identity (not <name>.pem/<name>.chain.pem side by side): otherwise the
        # chain file of "x" would be the certificate file of a legal name "x.chain".
        return self.issued_dir / role / name

    def cert(self, role: str, name: str) -> Path:
        return self.identity_dir(role, name) / "cert.pem"

    def key(self, role: str, name: str) -> Path:
        return self.identity_dir(role, name) / "key.pem"

    def chain(self, role: str, name: str) -> Path:
        return self.identity_dir(role, name) / "chain.pem"


@contextlib.contextmanager
def filesystem(action: str, path: Path) -> Iterator[None]:
    """Translate an OSError raised inside the block into PkiPermissionError naming the path."""
    try:
        yield
    except OSError as exc:
        where = exc.filename if exc.filename is not None else path
        raise PkiPermissionError(
            f"cannot {action} {where}: {exc.strerror or exc}; "
            "check that the path is a writable directory you own, or choose another with --dir"
        ) from exc


def ensure_dir(path: Path, mode: int | None = None) -> None:
    """Create ``path`` (and parents); with ``mode``, force it (mkdir's mode is filtered by the umask).

    Without ``mode`` an existing directory keeps its permissions: the top-level PKI directory may be
    one the operator chose and we should not chmod it behind their back.
    """
    with filesystem("create directory", path):
        path.mkdir(mode=0o777 if mode is None else mode, parents=True, exist_ok=True)
        if mode is not None:
            path.chmod(mode)


def read_bytes(path: Path) -> bytes:
    """Read a PKI file; a missing file means the PKI is damaged, other OSErrors are permission errors."""
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise PkiCorrupt(
            f"{path} is missing: the PKI directory is incomplete; restore it or re-create it with "
            "`coldtrace certs init --force` (this invalidates every issued certificate)"
        ) from exc
    except OSError as exc:
        raise PkiPermissionError(
            f"cannot read {path}: {exc.strerror or exc}; check its permissions or choose another --dir"
        ) from exc


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_files(files: Sequence[tuple[Path, bytes, int]]) -> None:
    """Write each ``(path, data, mode)`` atomically, staging all before replacing any.

    Each file goes to a fresh temp name created with O_EXCL and the final mode (a private key is
    never readable by others, not even for an instant), is fsynced, and only when every file is
    staged are they renamed into place, so a crash cannot pair a new key with an old certificate
    except in the window between consecutive renames.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data, mode in files:
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
            with filesystem("write", tmp):
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
                staged.append((tmp, path))
                try:
                    os.fchmod(fd, mode)  # the umask may have removed bits (e.g. 0644 -> 0600)
                    os.write(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
        for tmp, path in staged:
            with filesystem("replace", path):
                tmp.replace(path)
        for parent in {path.parent for _, path in staged}:
            with filesystem("sync directory", parent):
                _fsync_dir(parent)
    finally:
        for tmp, _ in staged:
            # Only leftovers of a failed write remain; best effort, the original error matters more.
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def locked(layout: Layout) -> Iterator[None]:
    """Hold an exclusive advisory lock on the PKI so concurrent CLI runs cannot lose index updates."""
    with filesystem("lock", layout.lock):
        fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with filesystem("lock", layout.lock):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def remove_pki(layout: Layout) -> None:
    """Delete everything ``init`` creates (used by ``init --force``); other files are left alone."""
    for directory in (layout.root_dir, layout.issuing_dir, layout.issued_dir):
        with filesystem("remove", directory):
            if directory.is_dir() and not directory.is_symlink():
                shutil.rmtree(directory)
            else:
                directory.unlink(missing_ok=True)
    for path in (layout.ca_bundle, layout.crl, layout.index):
        with filesystem("remove", path):
            path.unlink(missing_ok=True)
