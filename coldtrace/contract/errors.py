"""Typed errors of the wire contract.

Every rejection names what was wrong (a field path such as ``readings[3].temperature_c``) and why, with
a stable reason ``code`` that consumers count and store with dead-lettered input.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class RejectCode(enum.StrEnum):
    """Why a payload was refused; stable strings, used as metric labels and dead-letter reasons."""

    OVERSIZED = "oversized"
    BAD_FRAME = "bad_frame"
    MALFORMED_JSON = "malformed_json"
    INVALID_FIELD = "invalid_field"
    UNSUPPORTED_SCHEMA = "unsupported_schema"
    NON_CANONICAL = "non_canonical"
    BAD_SIGNATURE = "bad_signature"
    BAD_TOPIC = "bad_topic"
    IDENTITY_MISMATCH = "identity_mismatch"


def field_path(loc: tuple[int | str, ...]) -> str:
    """A validation location as a path: ``("readings", 3, "t")`` becomes ``readings[3].t``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


@dataclass(frozen=True, slots=True)
class FieldError:
    """One invalid field: its path in the document and a human-readable reason."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field or '<document>'}: {self.reason}"


class ContractError(ValueError):
    """Input that does not satisfy the wire contract.

    ``code`` classifies the rejection; ``errors`` lists every offending field (at least one).
    """

    def __init__(self, code: RejectCode, errors: list[FieldError] | FieldError) -> None:
        self.code = code
        self.errors: tuple[FieldError, ...] = (errors,) if isinstance(errors, FieldError) else tuple(errors)
        if not self.errors:
            raise ValueError("a ContractError needs at least one FieldError")
        shown = "; ".join(str(e) for e in self.errors[:5])
        more = f" (+{len(self.errors) - 5} more)" if len(self.errors) > 5 else ""
        super().__init__(f"{code.value}: {shown}{more}")

    @property
    def field(self) -> str:
        """Path of the first offending field."""
        return self.errors[0].field

    @property
    def reason(self) -> str:
        """Reason of the first offending field."""
        return self.errors[0].reason
