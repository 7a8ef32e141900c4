"""Values the outbox takes and returns."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Priority(enum.IntEnum):
    """What eviction protects: a low value is thinned first."""

    ROUTINE = 0
    """In range, not anomalous."""
    ANOMALOUS = 1
    """Scored as a glitch or otherwise flagged."""
    EXCURSION = 2
    """Outside its shipment profile: kept longest, never thinned while anything lower exists."""


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """A snapshot of the outbox for gauges and health reports."""

    readings: int
    """Readings not yet acknowledged by the cloud: waiting, plus those in formed frames."""
    bytes_on_disk: int
    """Main database file plus its write-ahead log."""
    oldest_gateway_ms: int | None
    """Receive time of the oldest unacknowledged reading (its order key, see the package docs)."""
    frames_pending: int
    thinned_total: int
    """Readings thinned under the disk budget over the outbox's lifetime."""
    next_batch_seq: int
    head_hash: str
    """Hash of the last formed frame (GENESIS_HASH before the first): the next batch's prev_hash."""


@dataclass(frozen=True, slots=True)
class PendingFrame:
    """A signed frame formed but not yet acknowledged; resent byte-identical until it is."""

    batch_seq: int
    frame: bytes
    reading_count: int
