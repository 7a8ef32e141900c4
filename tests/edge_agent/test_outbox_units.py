"""The outbox's parts: the fast encoder, interval records and their table, batch selection, thinning."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Mapping, Sequence
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from coldtrace.contract import MarkerKind, Reading, decode_model
from edge_agent.outbox import Priority, batching, codec, tables, thinning
from edge_agent.outbox.batching import Query, Row, Span
from edge_agent.outbox.schema import MIGRATIONS
from edge_agent.outbox.seen import SeqRanges, cap, gaps_touching, runs, union
from edge_agent.outbox.thinning import Candidate, MarkerRun
from tests.coldtrace.contract.strategies import readings


@settings(max_examples=300)
@given(readings())
def test_stored_bodies_decode_to_the_reading(reading: Reading) -> None:
    body = codec.encode(reading)
    assert codec.decode(body) == reading == decode_model(Reading, body)


def test_runs_and_union() -> None:
    assert runs([1, 2, 2, 3, 7, 9, 10]) == [(1, 3), (7, 7), (9, 10)]
    assert runs([]) == []
    assert union([(0, 4), (10, 12)], [(5, 6), (11, 20), (30, 30)]) == [(0, 6), (10, 20), (30, 30)]
    assert union([], [(3, 3)]) == [(3, 3)]


@given(st.sets(st.integers(0, 200)), st.sets(st.integers(0, 200)))
def test_seq_ranges_hold_exactly_the_union(a: set[int], b: set[int]) -> None:
    merged = SeqRanges(union(runs(sorted(a)), runs(sorted(b))))
    assert {n for n in range(-5, 210) if n in merged} == a | b
    ivs = merged.intervals()
    assert all(x[1] + 1 < y[0] for x, y in itertools.pairwise(ivs))  # disjoint, not adjacent


def test_gaps_touching_lists_only_gaps_beside_new_intervals() -> None:
    intervals = [(0, 9), (12, 12), (20, 29), (40, 41)]
    assert gaps_touching(intervals, [(12, 12)]) == [(10, 11), (13, 19)]
    assert gaps_touching(intervals, [(40, 40)]) == [(30, 39)]
    assert gaps_touching(intervals, []) == []


def test_cap_fills_the_oldest_gaps_first() -> None:
    intervals = [(0, 1), (5, 6), (9, 9), (20, 21)]
    assert cap(intervals, 4) == intervals
    assert cap(intervals, 2) == [(0, 9), (20, 21)]
    assert cap(intervals, 1) == [(0, 21)]


def _absorb_reference(
    conn: sqlite3.Connection, seen: Mapping[str, SeqRanges], removed: Mapping[str, Sequence[int]]
) -> dict[str, SeqRanges]:
    """``tables.absorb`` as it was before its fast path and batched writes: the behaviour to keep."""
    out: dict[str, SeqRanges] = {}
    for device, seqs in removed.items():
        old = seen.get(device)
        before = old.intervals() if old is not None else []
        added = runs(sorted(seqs))
        merged = union(before, added)
        bridges = [
            (lo, hi)
            for lo, hi in gaps_touching(merged, added)
            if hi - lo + 1 <= tables.BRIDGE_MAX
            and conn.execute(
                "SELECT COUNT(*) FROM reading WHERE device_id = ? AND seq BETWEEN ? AND ?", (device, lo, hi)
            ).fetchone()[0]
            == hi - lo + 1
        ]
        after = cap(union(merged, bridges), tables.MAX_SEEN_INTERVALS)
        if after != before:
            starts = {lo for lo, _ in after}
            kept = set(before)
            conn.executemany(
                "DELETE FROM seen WHERE device_id = ? AND seq_from = ?",
                [(device, lo) for lo, _ in before if lo not in starts],
            )
            conn.executemany(
                "INSERT OR REPLACE INTO seen (device_id, seq_from, seq_to) VALUES (?, ?, ?)",
                [(device, lo, hi) for lo, hi in after if (lo, hi) not in kept],
            )
        out[device] = SeqRanges(after)
    return out


@st.composite
def _absorb_case(draw: st.DrawFn) -> tuple[set[int], set[int], list[int]]:
    """One device's record, its waiting seqs and the seqs that leave (any order, maybe already seen)."""
    if draw(st.booleans()):  # the common case: one interval (or none), extended by a run
        lo = draw(st.integers(0, 40))
        hi = draw(st.integers(lo, 50))
        seen = set(range(lo, hi + 1)) if draw(st.booleans()) else set()
        start = draw(st.integers(max(0, lo - 8), hi + 3))
        leaving = set(range(start, start + draw(st.integers(1, 6))))
    else:
        seen = draw(st.sets(st.integers(0, 60)))
        leaving = draw(st.sets(st.integers(0, 60), min_size=1))
    waiting = draw(st.sets(st.integers(0, 70))) - leaving
    return seen, waiting, draw(st.permutations(sorted(leaving)))


def _seen_db(cases: Mapping[str, tuple[set[int], set[int], list[int]]]) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    for migrate in MIGRATIONS:
        migrate(conn, "gw-1")
    for device, (seen, waiting, _) in cases.items():
        conn.executemany(
            "INSERT INTO seen (device_id, seq_from, seq_to) VALUES (?, ?, ?)",
            [(device, lo, hi) for lo, hi in runs(sorted(seen))],
        )
        conn.executemany(
            "INSERT INTO reading (device_id, seq, okey, priority, t_device_ms, crc, body)"
            " VALUES (?, ?, 0, 0, 0, 0, x'')",
            [(device, seq) for seq in sorted(waiting)],
        )
    return conn


@settings(max_examples=300)
@given(
    st.dictionaries(st.sampled_from(["d-0", "d-1", "d-2", "d-3"]), _absorb_case(), min_size=1),
    st.sampled_from([tables.MAX_SEEN_INTERVALS, 2, 3]),
    st.sampled_from([tables.BRIDGE_MAX, 1, 3]),
)
def test_absorb_records_exactly_what_it_did_device_by_device(
    cases: dict[str, tuple[set[int], set[int], list[int]]], max_intervals: int, bridge_max: int
) -> None:
    seen = {device: SeqRanges(runs(sorted(case[0]))) for device, case in cases.items() if case[0]}
    removed = {device: case[2] for device, case in list(cases.items())[1:]}  # the first only looks on
    fast, slow = _seen_db(cases), _seen_db(cases)
    with (
        mock.patch.object(tables, "MAX_SEEN_INTERVALS", max_intervals),
        mock.patch.object(tables, "BRIDGE_MAX", bridge_max),
    ):
        got = tables.absorb(fast, seen, removed)
        expected = _absorb_reference(slow, seen, removed)
    assert {d: r.intervals() for d, r in got.items()} == {d: r.intervals() for d, r in expected.items()}
    table = "SELECT device_id, seq_from, seq_to FROM seen ORDER BY device_id, seq_from"
    assert fast.execute(table).fetchall() == slow.execute(table).fetchall()


def _row(okey: int, device: str, seq: int, size: int = 10, priority: Priority = Priority.ROUTINE) -> Row:
    return Row(okey, device, seq, priority, okey, 0, b"x" * size)


def test_select_fills_stream_by_stream_as_prefixes() -> None:
    live = [[_row(100, "a", 9), _row(101, "b", 1)], [_row(100, "c", 1)]]
    backfill = [[_row(1, "a", 1), _row(2, "a", 2), _row(3, "a", 3)]]
    chosen = batching.select([live, backfill], max_readings=5, byte_budget=10_000)
    assert [(r.device_id, r.seq) for r in chosen] == [("a", 1), ("a", 2), ("a", 9), ("c", 1), ("b", 1)]
    # The byte budget stops a stream at the first reading that does not fit (each costs size + 1).
    small = batching.select(
        [[[_row(1, "a", 1), _row(2, "a", 2, 500), _row(3, "a", 3)]]], max_readings=9, byte_budget=100
    )
    assert [r.seq for r in small] == [1]


def test_spans_cover_each_query_of_the_plan_separately() -> None:
    routine = [_row(1, "a", 1), _row(2, "b", 1), _row(3, "a", 2)]
    # A backlog batch of one priority is one range, first to last.
    assert batching.spans(routine, None) == [Span(Priority.ROUTINE, routine[0], routine[-1], 3)]
    # With live_after_ms each priority splits there; excursions never do.
    mixed = sorted(
        [*routine, _row(7, "c", 1, priority=Priority.EXCURSION), _row(9, "c", 2, priority=Priority.EXCURSION),
         _row(8, "d", 5, priority=Priority.ANOMALOUS)]
    )  # fmt: skip
    got = {(s.priority, s.first.okey, s.last.okey, s.readings) for s in batching.spans(mixed, 3)}
    assert got == {
        (Priority.ROUTINE, 1, 2, 2), (Priority.ROUTINE, 3, 3, 1), (Priority.EXCURSION, 7, 9, 2),
        (Priority.ANOMALOUS, 8, 8, 1),
    }  # fmt: skip
    assert batching.spans([], 3) == batching.spans([], None) == []


def test_plan_puts_live_readings_and_excursions_first() -> None:
    assert batching.plan(None) == [[Query(p) for p in Priority]]
    live, backfill = batching.plan(5000)
    assert {(q.priority, q.okey_from, q.okey_below) for q in live} == {
        (Priority.ROUTINE, 5000, batching.OKEY_MAX),
        (Priority.ANOMALOUS, 5000, batching.OKEY_MAX),
        (Priority.EXCURSION, batching.OKEY_MIN, batching.OKEY_MAX),
    }
    assert {(q.priority, q.okey_below) for q in backfill} == {
        (Priority.ROUTINE, 5000),
        (Priority.ANOMALOUS, 5000),
    }


def test_body_overhead_matches_an_empty_batch() -> None:
    assert batching.body_overhead(gateway_id="g", batch_seq=12, created_ms=34, prev_hash="0" * 64) == len(
        b'{"batch_seq":12,"created_ms":34,"gateway_id":"g","markers":[],"prev_hash":"'
        + b"0" * 64
        + b'","readings":[],"schema_version":1}'
    )


def _cand(device: str, seq: int) -> Candidate:
    return Candidate(seq, device, seq, seq * 10)


def test_every_other_reading_per_device_is_thinned() -> None:
    window = sorted([_cand("a", s) for s in range(6)] + [_cand("b", s) for s in range(3)] + [_cand("c", 0)])
    victims = thinning.choose_victims(window, target=5, every_other=True)
    assert sorted((v.device_id, v.seq) for v in victims) == [("a", 1), ("a", 3), ("a", 5), ("b", 1)]
    # Nothing to halve (one reading per device): the oldest go.
    singles = [_cand("a", 0), _cand("b", 1), _cand("c", 2)]
    assert thinning.choose_victims(singles, target=2, every_other=True) == singles[:2]
    assert thinning.choose_victims(window, target=3, every_other=False) == window[:3]


def test_marker_runs_merge_per_device() -> None:
    victims = [_cand("a", 1), _cand("a", 3), _cand("b", 7), _cand("a", 5)]
    by_device = {r.device_id: r for r in thinning.runs_of(victims, MarkerKind.THINNED)}
    assert by_device["a"] == MarkerRun(MarkerKind.THINNED, "a", 1, 5, 3, 10, 50)
    assert by_device["b"] == MarkerRun(MarkerKind.THINNED, "b", 7, 7, 1, 70, 70)
    later = MarkerRun(MarkerKind.THINNED, "a", 6, 8, 2, 60, 80)
    assert by_device["a"].touches(later)
    assert by_device["a"].merged(later) == MarkerRun(MarkerKind.THINNED, "a", 1, 8, 5, 10, 80)
    assert not by_device["a"].touches(MarkerRun(MarkerKind.THINNED, "a", 7, 9, 1, 0, 0))
    assert not by_device["a"].touches(MarkerRun(MarkerKind.MISSING, "a", 2, 2, 1, 0, 0))
    assert by_device["a"].merged(later).to_marker().count == 5


def test_round_size_and_regions() -> None:
    assert thinning.round_size(0, 500) == thinning.ROUND_MIN
    assert thinning.round_size(10**12, 500) == thinning.ROUND_MAX
    assert thinning.round_size(100_000, 500) == 220
    assert thinning.regions([1, 3, 5, 200, 201, 1000]) == [(1, 5, 3), (200, 201, 2), (1000, 1000, 1)]
    assert thinning.regions([]) == []


@given(
    st.binary(max_size=600),
    st.text(min_size=1, max_size=12),
    st.integers(0, 2**40),
    st.integers(1, 2**32 - 1),
)
def test_a_stored_crc_fails_for_any_other_seq_of_its_device(
    body: bytes, device: str, seq: int, delta: int
) -> None:
    # The same bytes under another key of the same device: a different seed, so a different CRC.
    assert codec.stored_crc(body, device, seq) != codec.stored_crc(body, device, seq + delta)
