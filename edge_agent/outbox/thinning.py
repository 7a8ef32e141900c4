"""Which readings to thin when the outbox is over its disk budget, and the markers that record them.

Pure functions: the store reads the candidate window and applies the result in one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

from coldtrace.contract import Marker, MarkerKind

#: Thinning works in rounds of at most this many readings (one transaction each), which bounds
#: how far the write-ahead log grows while space is being freed.
ROUND_MAX = 5000
#: A round thins at least this many readings, so a nearly met budget does not take many rounds.
ROUND_MIN = 16
#: Victims further apart than this many rows (in send order) are packed as separate regions.
REGION_GAP = 64
#: A region is packed only if at least this fraction of its rows were thinned: packing moves the
#: surviving rows, and moving many to free few pages is not worth the writes.
REGION_MIN_DENSITY = 0.125


class Candidate(NamedTuple):
    """A waiting reading considered for thinning; tuples compare by (okey, device_id, seq)."""

    okey: int
    device_id: str
    seq: int
    t_device_ms: int


@dataclass(frozen=True, slots=True)
class MarkerRun:
    """A stored gap marker: ``count`` readings of one device within ``seq_from..seq_to``."""

    kind: MarkerKind
    device_id: str
    seq_from: int
    seq_to: int
    count: int
    t_from_ms: int
    t_to_ms: int

    def touches(self, other: MarkerRun) -> bool:
        """Same kind and device, and the sequence ranges overlap or are adjacent."""
        return (
            self.kind == other.kind
            and self.device_id == other.device_id
            and self.seq_from <= other.seq_to + 1
            and other.seq_from <= self.seq_to + 1
        )

    def merged(self, other: MarkerRun) -> MarkerRun:
        """One marker covering both (their readings are disjoint, so the counts add)."""
        return replace(
            self,
            seq_from=min(self.seq_from, other.seq_from),
            seq_to=max(self.seq_to, other.seq_to),
            count=self.count + other.count,
            t_from_ms=min(self.t_from_ms, other.t_from_ms),
            t_to_ms=max(self.t_to_ms, other.t_to_ms),
        )

    def to_marker(self) -> Marker:
        """The contract marker."""
        return Marker(
            count=self.count,
            device_id=self.device_id,
            kind=self.kind,
            seq_from=self.seq_from,
            seq_to=self.seq_to,
            t_from_ms=self.t_from_ms,
            t_to_ms=self.t_to_ms,
        )


def round_size(excess_bytes: int, bytes_per_reading: int) -> int:
    """How many readings one round should thin to win back ``excess_bytes`` (10 % margin)."""
    wanted = -(-excess_bytes * 11 // 10 // max(1, bytes_per_reading))
    return max(ROUND_MIN, min(ROUND_MAX, wanted))


def choose_victims(window: Sequence[Candidate], *, target: int, every_other: bool) -> list[Candidate]:
    """The readings to thin from ``window`` (the oldest waiting readings of one priority, in order).

    With ``every_other`` each device keeps its first, third, fifth... reading of the window and loses
    the others, so the series keeps its shape at half the resolution; a device with a single reading
    in the window keeps it. If that frees nothing (every device has one reading in the window), or
    without ``every_other``, the oldest ``target`` readings go.
    """
    if every_other:
        by_device: dict[str, list[Candidate]] = {}
        for row in window:
            by_device.setdefault(row.device_id, []).append(row)
        victims = [row for rows in by_device.values() for row in rows[1::2]]
        if victims:
            return sorted(victims)
    return list(window[:target])


def runs_of(victims: Iterable[Candidate], kind: MarkerKind) -> list[MarkerRun]:
    """One marker per device covering its victims (a round's victims of a device form one run)."""
    spans: dict[str, MarkerRun] = {}
    for v in victims:
        run = MarkerRun(kind, v.device_id, v.seq, v.seq, 1, v.t_device_ms, v.t_device_ms)
        previous = spans.get(v.device_id)
        spans[v.device_id] = run if previous is None else previous.merged(run)
    return list(spans.values())


def regions(positions: Sequence[int]) -> list[tuple[int, int, int]]:
    """Ascending victim positions grouped into (first, last, victims) regions to pack."""
    out: list[tuple[int, int, int]] = []
    start = prev = count = 0
    for i, position in enumerate(positions):
        if i and position - prev <= REGION_GAP:
            prev, count = position, count + 1
            continue
        if i:
            out.append((start, prev, count))
        start = prev = position
        count = 1
    if positions:
        out.append((start, prev, count))
    return out
