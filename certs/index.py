"""``index.json``: the PKI's record of every certificate it issued, revocations and the CRL counter.

The file is the source of truth for "who holds which name" and for the CRL; certificates on disk are
only the current artefacts. It is re-read under the writer lock before every change and replaced
atomically, so concurrent CLI runs cannot lose updates.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, StringConstraints, ValidationError, field_validator

from certs.errors import IdentityExists, PkiCorrupt, UnknownIdentity
from certs.model import NAME_PATTERN, Role
from certs.store import CERT_MODE, Layout, read_bytes, write_files

__all__ = ["Index", "IndexEntry", "load_index", "save_index"]


class IndexEntry(BaseModel):
    """One certificate ever issued to an identity (``current`` marks the one whose files are on disk)."""

    model_config = ConfigDict(extra="forbid")

    # Upper-case hex: a 159-bit int does not survive JSON readers that parse numbers as doubles.
    serial: Annotated[str, StringConstraints(pattern=r"^[0-9A-F]{1,40}$")]
    role: Role
    # Re-validated on load: the name becomes a path component, a hand-edited "../x" must not escape.
    name: Annotated[str, StringConstraints(pattern=rf"^{NAME_PATTERN}$")]
    not_after: AwareDatetime
    revoked_at: AwareDatetime | None = None
    reason: str | None = None
    current: bool = True

    @field_validator("not_after", "revoked_at")
    @classmethod
    def _as_utc(cls, value: datetime | None) -> datetime | None:
        # pydantic parses "Z" into its own TzInfo; normalise so callers compare and print plain UTC.
        return value.astimezone(UTC) if value is not None else None

    @property
    def serial_number(self) -> int:
        """The serial as an int."""
        return int(self.serial, 16)


class Index(BaseModel):
    """The whole ``index.json`` document."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    org: str
    crl_number: int = 0  # last CRLNumber written; only ever grows
    crl_days: int = 7  # validity of CRLs re-signed implicitly by revoke / forced re-issue
    certificates: list[IndexEntry] = []

    def current(self, role: Role, name: str) -> IndexEntry:
        """The entry whose files are on disk for ``role``/``name``; UnknownIdentity if never issued."""
        for entry in self.certificates:
            if entry.current and entry.role == role and entry.name == name:
                return entry
        raise UnknownIdentity(
            f"no {role} named {name!r} was ever issued here; "
            f"issue one with `coldtrace certs issue {role} {name}` or check --dir"
        )

    def claim(self, role: Role, name: str, *, force: bool) -> IndexEntry | None:
        """Check ``name`` may be issued to ``role``; return the current entry it replaces, if any.

        Names are compared case-insensitively so "GW-1" cannot shadow "gw-1" (and the two cannot
        share one directory on a case-insensitive filesystem).
        """
        folded, current = name.casefold(), None
        for entry in self.certificates:
            if entry.name.casefold() != folded:
                continue
            if entry.role != role:
                # Never hand one name to two roles, not even after revocation: the broker maps
                # CN -> username -> ACLs, so a device named like a gateway would get its permissions.
                raise IdentityExists(
                    f"the name {entry.name!r} already belongs to the {entry.role} identity; one name can "
                    "hold only one role (the broker maps the certificate CN to its username): "
                    "choose another name"
                )
            if entry.name != name:
                raise IdentityExists(
                    f"{name!r} differs only in letter case from the existing {role} {entry.name!r}; "
                    f"names are unique regardless of case: use {entry.name!r} or another name"
                )
            if entry.current:
                current = entry
        if current is not None and current.revoked_at is None and not force:
            raise IdentityExists(
                f"{role} {name} already has a valid certificate (serial {current.serial}, expires "
                f"{current.not_after:%Y-%m-%d}); pass --force to re-issue it "
                "(the old one is revoked as superseded)"
            )
        return current

    def revoked(self) -> list[tuple[int, datetime, str]]:
        """``(serial, revoked_at, reason)`` of every revoked certificate, for the CRL."""
        return [
            (entry.serial_number, entry.revoked_at, entry.reason or "unspecified")
            for entry in self.certificates
            if entry.revoked_at is not None
        ]


def load_index(layout: Layout) -> Index:
    """Parse ``index.json``; PkiCorrupt if it does not match the schema."""
    raw = read_bytes(layout.index)
    try:
        return Index.model_validate_json(raw)
    except ValidationError as exc:
        raise PkiCorrupt(
            f"{layout.index} is not a valid coldtrace PKI index ({exc.error_count()} problems); "
            "restore it from backup or re-create the PKI with `coldtrace certs init --force`"
        ) from exc


def save_index(layout: Layout, index: Index) -> None:
    """Atomically replace ``index.json``."""
    data = index.model_dump_json(indent=2).encode() + b"\n"
    write_files([(layout.index, data, CERT_MODE)])
