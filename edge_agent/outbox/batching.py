"""Which waiting readings go into the next batch, in which order, within the frame size limit.

Pure functions: the store runs the queries this module plans and hands the rows back.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import orjson

from coldtrace.contract import SCHEMA_VERSION
from edge_agent.outbox.models import Priority

#: Bounds standing in for "no bound" on the order key (SQLite integers are 64-bit).
OKEY_MIN = -(2**63)
OKEY_MAX = 2**63 - 1


class Row(NamedTuple):
    """A waiting reading as stored; tuples compare by (okey, device_id, seq): the send order."""

    okey: int
    device_id: str
    seq: int
    priority: int
    t_device_ms: int
    crc: int
    body: bytes


class Span(NamedTuple):
    """``readings`` chosen rows of one priority: every waiting reading from ``first`` to ``last``."""

    priority: int
    first: Row
    last: Row
    readings: int


class Query(NamedTuple):
    """Waiting readings of one priority with ``okey_from <= okey < okey_below``, in send order."""

    priority: Priority
    okey_from: int = OKEY_MIN
    okey_below: int = OKEY_MAX


def plan(live_after_ms: int | None) -> list[list[Query]]:
    """The streams to fill a batch from, first stream first; each stream is merged from its queries.

    Without ``live_after_ms`` there is one stream, all waiting readings oldest first. With it, the
    first stream holds live readings (order key at or after ``live_after_ms``) and every excursion,
    the second the rest of the backlog; both oldest first.
    """
    if live_after_ms is None:
        return [[Query(p) for p in Priority]]
    return [
        [
            Query(Priority.ROUTINE, okey_from=live_after_ms),
            Query(Priority.ANOMALOUS, okey_from=live_after_ms),
            Query(Priority.EXCURSION),
        ],
        [
            Query(Priority.ROUTINE, okey_below=live_after_ms),
            Query(Priority.ANOMALOUS, okey_below=live_after_ms),
        ],
    ]


def select(streams: Sequence[Sequence[Iterable[Row]]], *, max_readings: int, byte_budget: int) -> list[Row]:
    """Fill a batch from ``streams`` in turn, up to ``max_readings`` and ``byte_budget`` body bytes.

    Each stream is the merge (in send order) of its already ordered row sources. A stream is taken
    as a prefix: it stops at the first reading that does not fit, so no device's reading is sent
    ahead of a lower-keyed one of the same stream. The result is in send order.
    """
    chosen: list[Row] = []
    used = contributed = 0
    for sources in streams:
        taken = len(chosen)
        for row in _merged(sources):
            cost = len(row.body) + 1  # the reading plus its separating comma
            if len(chosen) >= max_readings or used + cost > byte_budget:
                break
            chosen.append(row)
            used += cost
        contributed += len(chosen) > taken
    if contributed > 1:  # each stream comes in send order; only streams together need sorting
        chosen.sort()
    return chosen


def spans(rows: Sequence[Row], live_after_ms: int | None) -> list[Span]:
    """The chosen ``rows`` (in send order) as key ranges, one per query of ``plan`` they came from.

    A batch takes a prefix of each query's rows (see :func:`select`), so each range holds exactly
    the chosen rows of its query and nothing else: the store removes it with one range delete.
    """
    if live_after_ms is None and len({row.priority for row in rows}) == 1:
        return [Span(rows[0].priority, rows[0], rows[-1], len(rows))]  # a backlog's usual batch
    groups: dict[tuple[int, bool], list[Row]] = {}
    for row in rows:
        # The plan's queries split each priority at live_after_ms (excursions are never split).
        live = live_after_ms is not None and row.priority != Priority.EXCURSION and row.okey >= live_after_ms
        groups.setdefault((row.priority, live), []).append(row)
    return [Span(priority, group[0], group[-1], len(group)) for (priority, _), group in groups.items()]


def _merged(sources: Sequence[Iterable[Row]]) -> Iterator[Row]:
    """The sources' rows in send order. A backlog is mostly one priority, so usually one source has
    rows: it is passed through, without a heap comparing every row (a tenth of a drain's CPU)."""
    started: list[Iterator[Row]] = []
    for source in sources:
        rows = iter(source)
        first = next(rows, None)
        if first is not None:
            started.append(itertools.chain((first,), rows))
    if len(started) == 1:
        return started[0]
    return heapq.merge(*started)


def body_overhead(*, gateway_id: str, batch_seq: int, created_ms: int, prev_hash: str) -> int:
    """Bytes of a batch body with empty ``markers`` and ``readings`` arrays.

    Each reading or marker then adds its canonical encoding plus one separating comma, so the body
    size of any selection is known before it is signed.
    """
    skeleton = {
        "batch_seq": batch_seq,
        "created_ms": created_ms,
        "gateway_id": gateway_id,
        "markers": [],
        "prev_hash": prev_hash,
        "readings": [],
        "schema_version": SCHEMA_VERSION,
    }
    return len(orjson.dumps(skeleton, option=orjson.OPT_SORT_KEYS))
