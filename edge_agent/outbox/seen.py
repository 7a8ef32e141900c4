"""Per-device sets of sequence numbers, kept as sorted closed intervals.

The outbox remembers, per device, which sequence numbers have left its reading table (sent in a
frame, thinned or quarantined), so that a reading the broker delivers again is not stored a second
time. Kept as intervals the record stays compact: a device whose readings all arrived is one interval.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence

Interval = tuple[int, int]


def runs(seqs: Iterable[int]) -> list[Interval]:
    """Maximal runs of consecutive numbers in ascending ``seqs`` (repeats allowed)."""
    out: list[Interval] = []
    for seq in seqs:
        if out and seq <= out[-1][1] + 1:
            if seq > out[-1][1]:
                out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return out


class SeqRanges:
    """Disjoint, non-adjacent closed intervals in ascending order; immutable (replace it to change it).

    Being immutable, a new value can be computed inside a transaction and swapped in only once the
    transaction has committed.
    """

    __slots__ = ("_ends", "_starts")

    def __init__(self, intervals: Iterable[Interval] = ()) -> None:
        merged = union((), sorted(intervals))
        self._starts = [a for a, _ in merged]
        self._ends = [b for _, b in merged]

    @classmethod
    def normalised(cls, intervals: Sequence[Interval]) -> SeqRanges:
        """The set of ``intervals`` that are already disjoint, non-adjacent and ascending.

        What :func:`union` and :func:`cap` return; skips the sort and merge of the constructor.
        """
        ranges = cls.__new__(cls)
        ranges._starts = [a for a, _ in intervals]
        ranges._ends = [b for _, b in intervals]
        return ranges

    def __contains__(self, seq: object) -> bool:
        if not isinstance(seq, int) or not self._ends or seq > self._ends[-1]:
            return False  # the common case: a new reading above everything seen
        i = bisect_right(self._starts, seq) - 1
        return i >= 0 and seq <= self._ends[i]

    def __len__(self) -> int:
        return len(self._starts)

    def __repr__(self) -> str:
        return f"SeqRanges({self.intervals()!r})"

    def intervals(self) -> list[Interval]:
        """The intervals, ascending."""
        return list(zip(self._starts, self._ends, strict=True))


def union(a: Sequence[Interval], b: Sequence[Interval]) -> list[Interval]:
    """Union of two ascending interval lists, merging overlapping and adjacent intervals."""
    out: list[Interval] = []
    i = j = 0
    while i < len(a) or j < len(b):
        if j >= len(b) or (i < len(a) and a[i][0] <= b[j][0]):
            nxt = a[i]
            i += 1
        else:
            nxt = b[j]
            j += 1
        if out and nxt[0] <= out[-1][1] + 1:
            if nxt[1] > out[-1][1]:
                out[-1] = (out[-1][0], nxt[1])
        else:
            out.append(nxt)
    return out


def gaps_touching(intervals: Sequence[Interval], touched: Sequence[Interval]) -> list[Interval]:
    """Inner gaps of ``intervals`` (as closed intervals) that border an interval overlapping ``touched``.

    ``touched`` must be ascending; both lists are disjoint within themselves.
    """
    marked = [False] * len(intervals)
    j = 0
    for i, (a, b) in enumerate(intervals):
        while j < len(touched) and touched[j][1] < a:
            j += 1
        marked[i] = j < len(touched) and touched[j][0] <= b
    return [
        (intervals[i][1] + 1, intervals[i + 1][0] - 1)
        for i in range(len(intervals) - 1)
        if marked[i] or marked[i + 1]
    ]


def cap(intervals: Sequence[Interval], max_intervals: int) -> list[Interval]:
    """Merge the lowest intervals until at most ``max_intervals`` remain.

    Filling the oldest gaps is the price of a bounded record: a never-seen reading whose sequence
    number lies in such a gap would afterwards be taken for a duplicate.
    """
    if len(intervals) <= max_intervals:
        return list(intervals)
    cut = len(intervals) - max_intervals
    return [(intervals[0][0], intervals[cut][1]), *intervals[cut + 1 :]]
