"""Exceptions raised by the coldtrace PKI tooling.

Every message says what went wrong *and* what to do next, because the CLI prints it verbatim to an
operator. ``exit_code`` is the process exit status the CLI uses: 2 for usage/state errors (the command
line or the PKI state must change), 3 for filesystem/permission errors (the environment must change).
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AlreadyRevoked",
    "IdentityExists",
    "InvalidName",
    "InvalidOption",
    "PkiCorrupt",
    "PkiError",
    "PkiExists",
    "PkiNotInitialized",
    "PkiPermissionError",
    "UnknownIdentity",
]


class PkiError(Exception):
    """Base class: an expected PKI failure whose message tells the operator what to do next."""

    exit_code: ClassVar[int] = 2

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class PkiNotInitialized(PkiError):
    """The directory holds no PKI (no ``index.json``)."""


class PkiExists(PkiError):
    """``init`` would overwrite an existing CA; it needs ``force``."""


class PkiCorrupt(PkiError):
    """The PKI directory is only partially there or ``index.json`` does not parse."""


class IdentityExists(PkiError):
    """The name is already taken: by the same role (re-issue needs ``force``) or by another role."""


class UnknownIdentity(PkiError):
    """No certificate was ever issued for this role and name."""


class AlreadyRevoked(PkiError):
    """The identity's current certificate is already revoked."""


class InvalidName(PkiError):
    """The identity name breaks the naming rule (it becomes an MQTT topic level and broker username)."""


class InvalidOption(PkiError):
    """Some other argument is out of range: validity days, SAN values, revocation reason, org."""


class PkiPermissionError(PkiError):
    """A file or directory could not be read or written (bad path, permissions, full disk)."""

    exit_code: ClassVar[int] = 3
